"""Model registry: names -> how to build the model, which files it needs, its search defaults.

Each family registers its entries in its own `specs.py` (pure data plus a builder function), so
the registry knows names without importing torch model code until a model is loaded.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

# Modules whose import registers specs. vardist.zoo ships the project's own tiny models.
_SPEC_MODULES = (
    "vardist.models.var.specs",
    "vardist.models.infinity.specs",
    "vardist.models.flexvar.specs",
    "vardist.zoo.specs",
)


@dataclass(frozen=True)
class SearchDefaults:
    """The paper's settings for a model (DESIGN.md steps 4-6)."""

    scale: int
    n: int
    strategy: str = "var-scaling"
    alpha: float = 2.3
    rep: int = 10
    conflict_thresh: float = 1.8
    k: int = 100
    cfg: float = 1.0
    top_k: int = 900
    top_p: float = 0.96
    tau: float = 1.0


@dataclass(frozen=True)
class ModelSpec:
    name: str
    family: str
    description: str
    defaults: SearchDefaults
    # Files looked up in the weights dir (official names). Empty: weights ship with vardist.
    files: tuple[str, ...] = ()
    source: str = ""  # where the files are published, for the missing-weights error
    # What the engine checks user input against before loading anything (None: unknown until
    # the model is loaded, then checked against the model itself).
    num_scales: int | None = None          # length of the scale schedule
    condition_kind: str | None = None      # "class" or "prompt"
    num_classes: int | None = None         # class-conditional models
    # builder(spec, files: dict[official file name -> Path], device: str) -> ScaleWiseGenerator
    builder: Callable = field(default=None, compare=False, repr=False)
    # configs() -> the family's config objects (e.g. (VARConfig, VQVAEConfig)), read without
    # weights: vardist.models.memory plans GPU memory from them before anything loads.
    configs: Callable[[], tuple] | None = field(default=None, compare=False, repr=False)
    # fixture_dir() -> the folder a test model's weights are read from instead of --weights
    # (raises FileNotFoundError when absent): `vardist models` says "fixture", not "bundled".
    fixture_dir: Callable[[], Path] | None = field(default=None, compare=False, repr=False)


_REGISTRY: dict[str, ModelSpec] = {}
_loaded = False


def register(spec: ModelSpec) -> ModelSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"model {spec.name!r} is registered twice")
    _REGISTRY[spec.name] = spec
    return spec


def _ensure_loaded() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for mod in _SPEC_MODULES:
            try:
                importlib.import_module(mod)
            except ModuleNotFoundError as e:  # a family not written yet
                if e.name != mod:
                    raise


def specs() -> dict[str, ModelSpec]:
    _ensure_loaded()
    return dict(sorted(_REGISTRY.items()))


def get_spec(name: str) -> ModelSpec:
    all_specs = specs()
    if name not in all_specs:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(all_specs)} "
                         f"(`vardist models` lists them)")
    return all_specs[name]


def weights_env_dir() -> Path | None:
    d = os.environ.get("VARDIST_WEIGHTS")
    return Path(d) if d else None


def find_weight_files(spec: ModelSpec, weights_dir: str | Path | None) -> dict[str, Path] | None:
    """Locate every file of `spec` in weights_dir (or $VARDIST_WEIGHTS), also inside a Hugging
    Face cache layout (models--ORG--NAME/snapshots/REV/FILE). None when any file is missing."""
    if not spec.files:
        return {}
    roots = [Path(weights_dir)] if weights_dir else []
    env = weights_env_dir()
    if env and env not in roots:
        roots.append(env)
    found: dict[str, Path] = {}
    for fname in spec.files:
        for root in roots:
            hit = _find_in(root, fname)
            if hit:
                found[fname] = hit
                break
    return found if len(found) == len(spec.files) else None


def _find_in(root: Path, fname: str) -> Path | None:
    direct = root / fname
    if direct.is_file() or _is_model_folder(direct):  # a file, or a model folder (T5, shards)
        return direct
    # Hugging Face hub cache: ROOT[/hub]/models--ORG--NAME/snapshots/<rev>/FILE
    for hub in (root, root / "hub"):
        if hub.is_dir():
            for snap in sorted(hub.glob(f"models--*/snapshots/*/{fname}")):
                if snap.is_file() or _is_model_folder(snap):
                    return snap
            # a whole repository as the folder: models--ORG--FNAME/snapshots/<rev>/
            for cfg in sorted(hub.glob(f"models--*--{fname}/snapshots/*/config.json")):
                return cfg.parent
    return None


def _is_model_folder(path: Path) -> bool:
    """A folder that holds a model: a transformers folder (config.json) or a sharded
    safetensors checkpoint (an index json beside its shards, e.g. Infinity-8B's)."""
    return path.is_dir() and ((path / "config.json").is_file() or any(path.glob("*.safetensors.index.json")))


def missing_weights_error(spec: ModelSpec, weights_dir: str | Path | None) -> FileNotFoundError:
    where = weights_dir or os.environ.get("VARDIST_WEIGHTS") or "(none given)"
    files = ", ".join(spec.files)
    return FileNotFoundError(
        f"model {spec.name!r} needs the files {files} in the weights directory {where}; "
        f"download them from {spec.source} and pass --weights DIR (or set VARDIST_WEIGHTS)")


def load(name: str, weights_dir: str | Path | None = None, device: str | None = None,
         **build_options):
    """Build a registered model with its weights: `load("var-d16", "/ckpt")`.

    build_options go to the family's builder, e.g. `schedule=(1, 2, 3, ...)` for FlexVAR."""
    spec = get_spec(name)
    files = find_weight_files(spec, weights_dir)
    if files is None:
        raise missing_weights_error(spec, weights_dir)
    dev = device or ("cuda" if _cuda_available() else "cpu")
    model = spec.builder(spec, files, dev, **build_options)
    if getattr(model, "search_defaults", None) is None:  # vardist.search(model) uses them
        model.search_defaults = spec.defaults
    return model


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()
