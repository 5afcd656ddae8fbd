"""Reading checkpoint files without running code from them, and loading them key for key.

Every `.pth`/`.pt` file, zip or legacy (pre-1.6) format, goes through torch's weights-only
unpickler: it builds tensors, storages, dtypes and plain containers and numbers, and refuses
every other global before anything is called or constructed. The one extension is ALLOW_LIST
below: the argument namespaces that official trainer checkpoints pickle beside their weights
become inert placeholders. A `.safetensors` file holds only tensors by construction.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

if TYPE_CHECKING:  # torch is imported where a file is read: the error classes need none of it
    import torch
    from torch import nn


class CheckpointError(ValueError):
    """A weights or model-config file that cannot be used: unreadable, refused, or not fitting
    its model. The message names the file and what to do."""


class CheckpointMismatch(CheckpointError):
    """A state dict that does not fit the module it is loaded into."""


class UnsafeCheckpoint(CheckpointError):
    """A file whose pickle would construct or call something outside the allow-list. It is
    refused before that happens."""


class InertArguments:
    """Stands in for a pickled argument namespace: it ignores its arguments and its state, so
    nothing the file says about it is executed or kept."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def __repr__(self) -> str:
        return "<inert argument namespace>"


# Globals the official checkpoints reference beyond what torch's weights-only unpickler already
# allows (tensors, storages, dtypes, OrderedDict, plain containers and numbers), each mapped to
# the inert object that replaces it. argparse.Namespace: the `args` entry that LlamaGen's
# tokenizer trainer (tokenizer_image/vq_train.py; FlexVAE's tokenizer is of that kind) saves
# beside "model". Its values are plain (strings, numbers), and still pass the unpickler's checks.
ALLOW_LIST: tuple[tuple[type, str], ...] = (
    (InertArguments, "argparse.Namespace"),
)

# Phrases of torch's weights-only unpickler when a file asks for something it does not allow.
_REFUSAL_MARKS = ("GLOBAL", "reduce", "Can only")


def read_state_dict(path: str | Path, unwrap: Iterable[str] = ()) -> dict[str, torch.Tensor]:
    """Read a .safetensors or .pth/.pt state dict without running code from the file.

    `unwrap`: keys of a wrapping dict to descend into when present (e.g. "model", "state_dict",
    or "trainer" then "var_wo_ddp" for a trainer checkpoint). Raises FileNotFoundError for a
    missing file, UnsafeCheckpoint for a file that would construct anything outside the
    allow-list, and CheckpointError for an empty, truncated or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes), e.g. from an interrupted download or "
                              f"copy: download or copy it again")
    sd = _read_safetensors(path) if path.suffix == ".safetensors" else _read_torch(path, size)
    for key in unwrap:
        if isinstance(sd, Mapping) and key in sd and isinstance(sd[key], Mapping):
            sd = sd[key]
    if not isinstance(sd, Mapping):
        raise CheckpointMismatch(f"{path} does not hold a state dict (got {type(sd).__name__}); "
                                 f"is it the right file for this model?")
    return dict(sd)


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except SafetensorError as e:
        raise CheckpointError(f"{path} is not a readable safetensors file ({e}): it is truncated "
                              f"or in another format; download or copy it again") from e


def _read_torch(path: Path, size: int) -> Any:
    import torch

    try:
        with torch.serialization.safe_globals(list(ALLOW_LIST)), warnings.catch_warnings():
            # torch warns about a pickle protocol it may not read; the error below says it all
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError, ... here
        reason = _torch_reason(e)
        if any(mark in reason for mark in _REFUSAL_MARKS):
            raise UnsafeCheckpoint(
                f"{path} was refused: reading it would build or call something other than "
                f"tensors, storages and plain containers and numbers ({reason}). vardist never "
                f"runs code from a weights file. Use the official file (download it again if "
                f"this one was altered), or convert it to .safetensors where you trust it") from e
        raise CheckpointError(
            f"{path} ({size} bytes) is not a readable PyTorch checkpoint ({reason}): it is "
            f"truncated or not a torch.save file; download or copy it again") from e


def _torch_reason(e: BaseException) -> str:
    """The one line of torch's error that says what went wrong, without torch's advice (which
    is to trust the file: exactly what must not happen here)."""
    if isinstance(e, EOFError):
        return "the file ends early"
    boilerplate = ("Weights only load failed", "(1)", "(2)", "Check the documentation",
                   "Please file an issue", "In PyTorch 2.6")
    lines = [line.strip().removeprefix("WeightsUnpickler error:").strip()
             for line in str(e).splitlines()]
    lines = [line for line in lines if line and not line.startswith(boilerplate)]
    reason = lines[-1] if lines else type(e).__name__
    for cut in (" was not an allowed global", ". Please use", ". This is an internal"):
        reason = reason.split(cut)[0]
    if reason.startswith("Unsupported operand"):  # e.g. a protocol-4 pickle, or text
        reason = f"pickle opcode {reason.split()[-1]}, which torch's weights-only format lacks"
    return reason.rstrip(".")


def read_json_config(path: str | Path) -> dict[str, Any]:
    """A model's config.json as a dict, or CheckpointError naming the file and the first
    syntax error (a config that is not JSON is as unusable as a truncated weights file)."""
    path = Path(path)
    try:
        value = json.loads(path.read_text())
    except UnicodeDecodeError as e:
        raise CheckpointError(f"{path} is not a JSON text file ({e}); restore the config.json "
                              f"that came with the weights") from e
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}, column "
                              f"{e.colno}); restore the config.json that came with the "
                              f"weights") from e
    if not isinstance(value, dict):
        raise CheckpointError(f"{path} holds a JSON {type(value).__name__}, not the object of "
                              f"settings a model config is; restore the config.json that came "
                              f"with the weights")
    return value


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
