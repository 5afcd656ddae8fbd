"""Reading official checkpoint files safely and loading them key for key with clear errors."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Mapping

import torch
from torch import nn


class CheckpointMismatch(ValueError):
    """A state dict that does not fit the module it is loaded into."""


def read_state_dict(path: str | Path, unwrap: Iterable[str] = ()) -> dict[str, torch.Tensor]:
    """Read a .safetensors or .pth/.pt state dict without unpickling arbitrary objects.

    `unwrap`: keys of a wrapping dict to descend into when present (e.g. "model", "state_dict").
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd = load_file(str(path))
    else:
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # not a weights-only pickle: refuse rather than execute it
            raise CheckpointMismatch(
                f"{path} could not be read as a weights-only checkpoint ({e}); vardist never "
                f"unpickles arbitrary objects. Convert it to safetensors.") from e
    for key in unwrap:
        if isinstance(sd, Mapping) and key in sd and isinstance(sd[key], Mapping):
            sd = sd[key]
    if not isinstance(sd, Mapping):
        raise CheckpointMismatch(f"{path} does not hold a state dict (got {type(sd).__name__})")
    return dict(sd)


def load_exact(module: nn.Module, state_dict: Mapping[str, torch.Tensor], *, what: str,
               optional: Iterable[str] = ()) -> None:
    """Load `state_dict` into `module`, every key and shape, or raise CheckpointMismatch listing
    the missing, unexpected and mis-shaped keys. Keys matching a name in `optional` (recomputable
    buffers, matched by suffix) may be absent from the file."""
    optional = tuple(optional)
    own = module.state_dict()
    missing = [k for k in own if k not in state_dict and not k.endswith(optional)]
    unexpected = [k for k in state_dict if k not in own]
    misshaped = [f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
                 for k in own if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or misshaped:
        lines = [f"checkpoint does not fit {what}:"]
        for title, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
            if keys:
                shown = keys[:20] + ([f"... and {len(keys) - 20} more"] if len(keys) > 20 else [])
                lines.append(f"  {len(keys)} {title} keys: " + ", ".join(shown))
        lines.append("  (is this the right file for this model size?)")
        raise CheckpointMismatch("\n".join(lines))
    present = {k: v for k, v in state_dict.items() if k in own}
    module.load_state_dict(present, strict=False)
