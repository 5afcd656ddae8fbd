"""Reading official checkpoint files safely and loading them key for key with clear errors."""

from __future__ import annotations

import pickle
import types
from pathlib import Path
from typing import Iterable, Mapping

import torch
from torch import nn


class CheckpointMismatch(ValueError):
    """A state dict that does not fit the module it is loaded into."""


def read_state_dict(path: str | Path, unwrap: Iterable[str] = ()) -> dict[str, torch.Tensor]:
    """Read a .safetensors or .pth/.pt state dict without running code from the file.

    `unwrap`: keys of a wrapping dict to descend into when present (e.g. "model", "state_dict",
    or "trainer" then "var_wo_ddp" for a trainer checkpoint). A .pth is read with
    `torch.load(weights_only=True)`; a trainer checkpoint that also pickles other objects
    (argument namespaces, configs) is re-read with an inert unpickler that turns every object
    it does not know into a placeholder instead of constructing it.
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
        except pickle.UnpicklingError:
            try:
                sd = torch.load(path, map_location="cpu", weights_only=False,
                                pickle_module=_inert_pickle)
            except Exception as e:
                raise CheckpointMismatch(f"{path} is not a readable PyTorch checkpoint ({e})") from e
    for key in unwrap:
        if isinstance(sd, Mapping) and key in sd and isinstance(sd[key], Mapping):
            sd = sd[key]
    if not isinstance(sd, Mapping):
        raise CheckpointMismatch(f"{path} does not hold a state dict (got {type(sd).__name__})")
    return dict(sd)


class InertObject:
    """Stands in for any pickled object outside tensors and plain containers: it records what
    the file named and ignores the arguments, so nothing from the file is ever executed."""

    origin = "?"

    def __init__(self, *args, **kwargs) -> None:
        pass

    def __setstate__(self, state) -> None:
        pass

    def __repr__(self) -> str:
        return f"<inert {self.origin}>"


def _allowed_global(module: str, name: str):
    """The globals a tensor state dict needs; None for everything else."""
    if module == "collections" and name == "OrderedDict":
        import collections

        return collections.OrderedDict
    if module == "torch._utils" and name.startswith("_rebuild_"):
        import torch._utils

        return getattr(torch._utils, name)
    if module == "torch":
        obj = getattr(torch, name, None)
        if isinstance(obj, (torch.dtype, type)) and (
                isinstance(obj, torch.dtype) or name.endswith("Storage") or name in ("Size", "device")):
            return obj
    return None


class _InertUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        allowed = _allowed_global(module, name)
        if allowed is not None:
            return allowed
        return type(name, (InertObject,), {"origin": f"{module}.{name}"})


# torch.load takes a pickle *module*; this one only swaps in the inert Unpickler.
_inert_pickle = types.SimpleNamespace(Unpickler=_InertUnpickler, load=pickle.load,
                                      __name__="vardist_inert_pickle")


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
