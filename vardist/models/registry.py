"""Model registry: names -> how to build the model, which files it needs, its search defaults.

Each family registers its entries in its own `specs.py` (pure data plus a builder function), so
the registry knows names without importing torch model code until a model is loaded.
"""

from __future__ import annotations

import hashlib
import importlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

# Modules whose import registers specs. vardist.zoo ships the project's own tiny models.
_SPEC_MODULES = (
    "vardist.models.var.specs",
    "vardist.models.infinity.specs",
    "vardist.models.flexvar.specs",
    "vardist.zoo.specs",
    "vardist.zoo.shapes_specs",
)


@dataclass(frozen=True)
class SearchDefaults:
    """The paper's search settings for a model: the searched scale, the pool, the rule and
    the sampling options (`vardist models` shows them)."""

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
    # bundled_dir() -> the folder inside the package holding `files` (weights shipped with
    # vardist); a weights folder given instead holds a retrained model with the same files.
    bundled_dir: Callable[[], Path] | None = field(default=None, compare=False, repr=False)
    # Hugging Face repositories that publish `files`, looked up in the local Hugging Face cache
    # (offline). A file named like a repository (flan-t5-xl) is that whole repository.
    hf_repos: tuple[str, ...] = ()
    # Other names a file of `files` may be held under, {official name: (other names, ...)}: in
    # each place the official name is tried first, then these (Infinity-8B's transformer: the
    # sharded folder, else one .pth). The builder still gets it under the official name.
    alternates: Mapping[str, tuple[str, ...]] = field(default_factory=dict, compare=False)


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
    """Locate every file of `spec`, each in the first place that has it: the weights folder
    given (weights_dir), then $VARDIST_WEIGHTS, each flat or holding a Hugging Face cache
    (DIR/models--ORG--NAME or DIR/hub/...), then the Hugging Face cache itself ($HF_HUB_CACHE,
    else $HF_HOME/hub). Cache lookups are offline, through huggingface_hub, at the revision
    `refs/main` points to. A file with `spec.alternates` is found under its official name or
    an alternate one, the official one first in each place. A model with bundled weights reads
    the folder given, else the bundled one, and nothing else. None when any file is missing."""
    found = _resolve(spec, weights_dir)
    return None if found is None else {fname: path for fname, (_, path) in found.items()}


def _resolve(spec: ModelSpec, weights_dir: str | Path | None) -> dict[str, tuple[str, Path]] | None:
    """find_weight_files' lookup: official name -> (the name it was found under, its path)."""
    if not spec.files:
        return {}
    if spec.bundled_dir is not None:
        root = Path(weights_dir) if weights_dir else spec.bundled_dir()
        found = {f: (f, root / f) for f in spec.files if (root / f).is_file()}
        return found if len(found) == len(spec.files) else None
    roots = [Path(weights_dir)] if weights_dir else []
    env = weights_env_dir()
    if env and env not in roots:
        roots.append(env)
    found = {}
    for fname in spec.files:
        hit = _locate(spec, fname, roots)
        if hit is not None:
            found[fname] = hit
    return found if len(found) == len(spec.files) else None


def _locate(spec: ModelSpec, fname: str, roots: list[Path]) -> tuple[str, Path] | None:
    """(name, path) of `fname` or one of its alternates. A place earlier in the search order wins
    over a preferred name later (the folder a user names beats a cache), and within one place the
    official name wins (a weights folder holding both forms is read in the official one)."""
    names = (fname, *spec.alternates.get(fname, ()))
    for root in roots:
        for name in names:
            hit = _find_in_roots([root], name)
            if hit is not None:
                return name, hit
    for name in names:
        hit = find_in_hf_cache(spec.hf_repos, name, roots)
        if hit is not None:
            return name, hit
    return None


def _find_in_roots(roots: list[Path], fname: str) -> Path | None:
    for root in roots:
        direct = root / fname
        if direct.is_file() or _is_model_folder(direct):  # a file, or a model folder (T5, shards)
            return direct
    return None


def find_in_hf_cache(repos: tuple[str, ...], fname: str, roots: list[Path]) -> Path | None:
    """`fname` from the cached snapshot (refs/main) of one of `repos`: in a weights folder of
    `roots` that is (or holds, under hub/) a Hugging Face cache, then in the user's own cache.
    Offline; None when not cached. (Model and verifier weights are both found through it.)"""
    if not repos:
        return None
    caches: list[Path | None] = [c for root in roots for c in (root, root / "hub")
                                 if c.is_dir() and next(c.glob("models--*"), None) is not None]
    for cache in (*caches, None):  # None: huggingface_hub's default ($HF_HUB_CACHE, $HF_HOME)
        for repo in repos:
            hit = _from_hf_snapshot(repo, fname, cache)
            if hit is not None:
                return hit
    return None


def _from_hf_snapshot(repo: str, fname: str, cache: Path | None) -> Path | None:
    from huggingface_hub import snapshot_download, try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        if repo.rsplit("/", 1)[-1] == fname:  # the whole repository is the folder
            folder = Path(snapshot_download(repo, cache_dir=cache, local_files_only=True))
            return folder if _is_model_folder(folder) else None
        hit = try_to_load_from_cache(repo, fname, cache_dir=cache)
        if isinstance(hit, str):
            return Path(hit)
        folder = Path(snapshot_download(repo, cache_dir=cache, local_files_only=True,
                                        allow_patterns=[f"{fname}/*"])) / fname
    except (LocalEntryNotFoundError, HFValidationError, OSError):
        return None  # not cached (or an incomplete snapshot): not found here
    return folder if _is_model_folder(folder) else None


def _is_model_folder(path: Path) -> bool:
    """A folder that holds a model: a transformers folder (config.json) or a sharded
    safetensors checkpoint (an index json beside its shards, e.g. Infinity-8B's)."""
    return path.is_dir() and ((path / "config.json").is_file() or any(path.glob("*.safetensors.index.json")))


# A content hash that stays cheap for multi-GB checkpoints: the first and last MiB (a
# safetensors header and a zip's central directory, which holds every entry's CRC-32) and
# SAMPLE_BLOCKS blocks spread evenly between, plus the size.
SAMPLE_EDGE = 1 << 20
SAMPLE_BLOCK = 1 << 16
SAMPLE_BLOCKS = 16


def sampled_digest(path: str | Path) -> str:
    """sha256 of a file's size, first and last MiB and evenly spaced blocks (hex, 16 chars):
    any truncation, re-save or other file changes it; reads about 3 MiB whatever the size."""
    path = Path(path)
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with path.open("rb") as f:
        if size <= 2 * SAMPLE_EDGE + SAMPLE_BLOCKS * SAMPLE_BLOCK:
            h.update(f.read())
        else:
            offsets = [0] + [SAMPLE_EDGE + i * (size - 2 * SAMPLE_EDGE) // SAMPLE_BLOCKS
                             for i in range(SAMPLE_BLOCKS)] + [size - SAMPLE_EDGE]
            for i, off in enumerate(offsets):
                f.seek(off)
                h.update(f.read(SAMPLE_EDGE if i in (0, len(offsets) - 1) else SAMPLE_BLOCK))
    return h.hexdigest()[:16]


def describe_weights(path: Path) -> str:
    """'SIZE bytes, sampled sha256 HEX' of a weights file; for a folder (T5, shards), the same
    over every file in it, by relative path: what a run's fingerprint records of each file
    (model weights here, verifier weights in vardist.verifiers)."""
    if path.is_file():
        return f"{path.stat().st_size} bytes, sampled sha256 {sampled_digest(path)}"
    files = sorted(p for p in path.rglob("*") if p.is_file())
    h = hashlib.sha256()
    for p in files:
        h.update(f"{p.relative_to(path)}\0{p.stat().st_size}\0{sampled_digest(p)}\n".encode())
    total = sum(p.stat().st_size for p in files)
    return f"{len(files)} files, {total} bytes, sampled sha256 {h.hexdigest()[:16]}"


def weights_identity(spec: ModelSpec, weights_dir: str | Path | None) -> dict[str, str]:
    """What identifies the weights a run of `spec` loads, one entry per file ("weights NAME":
    size and sampled hash): a run's fingerprint holds it, so that a resume with other weights
    is refused naming the file that changed. A fixture model: its fixture folder."""
    if spec.fixture_dir is not None:
        folder = spec.fixture_dir()
        return {f"weights (fixture) {p.name}": describe_weights(p)
                for p in sorted(folder.iterdir())
                if p.is_dir() or p.suffix in (".pth", ".safetensors", ".json")}
    found = _resolve(spec, weights_dir)
    if found is None:
        raise missing_weights_error(spec, weights_dir)
    # keyed by the name found under: a switch between a file's forms is a change of weights
    return {f"weights {name}": describe_weights(path) for name, path in found.values()}


def missing_weights_error(spec: ModelSpec, weights_dir: str | Path | None) -> FileNotFoundError:
    files = ", ".join(f + "".join(f" (or {alt})" for alt in spec.alternates.get(f, ()))
                      for f in spec.files)
    if spec.bundled_dir is not None:  # only a folder given can lack them
        lacks = ", ".join(f for f in spec.files if not (Path(str(weights_dir)) / f).is_file())
        return FileNotFoundError(
            f"model {spec.name!r} reads a retrained model from the weights directory "
            f"{weights_dir}, which lacks {lacks}; {spec.source} (or drop --weights for the "
            f"weights shipped with vardist)")
    where = weights_dir or os.environ.get("VARDIST_WEIGHTS") or "(none given)"
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
