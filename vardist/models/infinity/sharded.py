"""Infinity-8B's transformer checkpoint: a sharded folder (`infinity_8b_weights/`) of safetensors
shards listed by `model.safetensors.index.json` (`{"metadata": {"total_size": ...},
"weight_map": {key: shard file}}`), the layout `transformers.save_pretrained` writes. Read
without executing code (safetensors holds only tensors) and without `transformers` (version 5
dropped its `load_sharded_checkpoint`); every shard is merged into one state dict before the
strict key-for-key load, because each shard holds only a subset of the keys.

`read_transformer_weights` takes either form a user may have: the folder (or its index json), or a
single `.pth` / `.safetensors` state dict (read through vardist.models.checkpoint.read_state_dict).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from vardist.models.checkpoint import CheckpointError, UnsafeCheckpoint

INDEX_FILE = "model.safetensors.index.json"


def _index_path(path: Path) -> Path:
    if path.is_dir():
        found = sorted(path.glob("*.safetensors.index.json"))
        if not found:
            raise FileNotFoundError(f"{path} holds no safetensors index (expected {INDEX_FILE} beside "
                                    f"the model-0000k-of-0000n.safetensors shards)")
        if len(found) > 1:
            raise CheckpointError(f"{path} holds several indexes ({', '.join(p.name for p in found)}); "
                                  f"pass the one to use")
        return found[0]
    return path


def read_sharded_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a sharded safetensors checkpoint (its folder or its index json), merged in
    the index's key order. Raises UnsafeCheckpoint for a shard name that leaves the folder or is
    not a safetensors file, FileNotFoundError for a missing shard, and CheckpointError for an
    unreadable index or shard, a key the index does not place where it says (or a shard holding
    keys the index puts elsewhere), or a size that disagrees with the index's total_size."""
    from safetensors import SafetensorError, safe_open

    index = _index_path(Path(path))
    if not index.is_file():
        raise FileNotFoundError(f"sharded checkpoint index {index} does not exist")
    try:
        meta = json.loads(index.read_text())
        weight_map = meta["weight_map"]
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{index} is not a safetensors index (needs a 'weight_map' of key -> shard "
                         f"file): {e}") from e
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise CheckpointError(f"{index}: 'weight_map' must map every key to a shard file name, got "
                         f"{type(weight_map).__name__}")
    by_shard: dict[str, list[str]] = {}
    for key, shard in weight_map.items():
        # plain names only: the index must not make the loader read files outside its folder
        # (the shards themselves may be symlinks, as in a Hugging Face cache snapshot)
        if Path(shard).name != shard or shard in ("", ".", ".."):
            raise UnsafeCheckpoint(f"{index}: shard name {shard!r} of {key!r} is not a plain file name in "
                             f"the checkpoint folder")
        if not shard.endswith(".safetensors"):
            raise UnsafeCheckpoint(f"{index}: shard {shard!r} is not a .safetensors file; only safetensors "
                             f"shards are read (a pickled .bin shard could run code when loaded)")
        by_shard.setdefault(shard, []).append(key)
    tensors: dict[str, torch.Tensor] = {}
    for shard, keys in by_shard.items():
        file = index.parent / shard
        if not file.is_file():
            raise FileNotFoundError(f"shard {shard} listed in {index.name} is missing from {index.parent}")
        try:
            with safe_open(str(file), framework="pt", device="cpu") as f:
                present = set(f.keys())
                absent = [k for k in keys if k not in present]
                if absent:
                    raise CheckpointError(f"{file.name} lacks {len(absent)} key(s) the index puts there, e.g. "
                                     f"{absent[0]!r}; the folder is incomplete or mixed from two downloads")
                stray = sorted(present.difference(keys))
                if stray:
                    raise CheckpointError(f"{file.name} holds {len(stray)} key(s) the index does not put there, "
                                     f"e.g. {stray[0]!r} (index: {weight_map.get(stray[0], 'no entry')}); "
                                     f"the folder is mixed from two downloads")
                for k in keys:
                    tensors[k] = f.get_tensor(k)
        except SafetensorError as e:
            raise CheckpointError(f"shard {file} is not a readable safetensors file ({e}); download it "
                             f"again") from e
    total = meta.get("metadata", {}).get("total_size")
    size = sum(t.numel() * t.element_size() for t in tensors.values())
    if total is not None and int(total) != size:
        raise CheckpointError(f"{index.name} says total_size {int(total)} bytes but its shards hold {size}; "
                         f"a shard is truncated or from another checkpoint")
    return {k: tensors[k] for k in weight_map}


def is_sharded(path: str | Path) -> bool:
    path = Path(path)
    return (path.is_dir() and any(path.glob("*.safetensors.index.json"))) or path.name.endswith(".index.json")


def read_transformer_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """An Infinity transformer state dict from a sharded folder / index json, or from one
    `.pth` / `.safetensors` file."""
    from vardist.models.checkpoint import read_state_dict

    path = Path(path)
    if is_sharded(path):
        return read_sharded_state_dict(path)
    if path.is_dir():
        raise FileNotFoundError(f"{path} is a folder without a safetensors index; point at the "
                                f"sharded checkpoint folder (with {INDEX_FILE}) or a .pth file")
    return read_state_dict(path)
