"""What every verifier shares: the protocol, the registry of built-in verifiers, and where their
weights are found (offline, before anything loads).

Weights come from three places, in order: the folder given (`--verifier-weights DIR`),
$VARDIST_WEIGHTS, and the Hugging Face cache, through the same lookups as model weights
(`vardist.models.registry`): a Hugging Face model folder is DIR/<repo name> (e.g.
DIR/clip-vit-large-patch14) or the repository's cached snapshot; a single file is DIR/<file>.
Nothing is downloaded. A verifier with shipped weights (the toy judge) reads the folder given,
else the shipped one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol, Sequence, runtime_checkable

import numpy as np

# torch is imported where a verifier loads or scores: finding weights (a run's checks before
# anything loads) and the CLI's error classes need none of it
if TYPE_CHECKING:
    import torch

CONDITION_KINDS = ("class", "prompt", "any")


@runtime_checkable
class Verifier(Protocol):
    """An image-level reward: higher is better."""

    name: str
    condition_kind: str          # "class", "prompt" or "any" (the conditions are not read)
    device: torch.device

    def score(self, images: np.ndarray, conditions: Sequence[Any]) -> np.ndarray:
        """images: uint8 [N, H, W, 3]; conditions: N class labels or prompts -> float64 [N]."""
        ...


class MissingVerifierWeights(FileNotFoundError):
    """A verifier's weights file or folder is not found; the message names it and where it is
    published."""


@dataclass(frozen=True)
class Requirement:
    """One thing a verifier reads. `repo` set: a Hugging Face model folder named after the
    repository, holding one of each group of `needs` (alternatives, e.g. model.safetensors or
    pytorch_model.bin). No `repo`: the single file `name`, published at `source`."""

    name: str
    source: str
    repo: str | None = None
    needs: tuple[tuple[str, ...], ...] = ()

    @staticmethod
    def hf(repo: str, *needs: tuple[str, ...]) -> "Requirement":
        return Requirement(repo.rsplit("/", 1)[-1], f"https://huggingface.co/{repo}", repo,
                           tuple(needs))


@dataclass(frozen=True)
class VerifierSpec:
    name: str
    description: str
    condition_kind: str
    build: Callable[[dict[str, Path], torch.device], Verifier]
    requires: tuple[Requirement, ...] = ()
    bundled_dir: Callable[[], Path] | None = None   # shipped weights: read here unless DIR given
    models: tuple[str, ...] = ()                     # the models it is meant for (empty: any)
    # raises ValueError for conditions it cannot score (checked before any model loads)
    check_conditions: Callable[[Sequence[Any]], None] | None = None
    # the loaded verifier has an image tower, `verifier.embed.images(uint8 [N, H, W, 3]) ->
    # [N, f]`, that a `cluster` search step measures previews by (else it reads the latent)
    image_tower: bool = False


_REGISTRY: dict[str, VerifierSpec] = {}


def register(spec: VerifierSpec) -> VerifierSpec:
    if spec.condition_kind not in CONDITION_KINDS:
        raise ValueError(f"condition_kind must be one of {CONDITION_KINDS}, got "
                         f"{spec.condition_kind!r}")
    _REGISTRY[spec.name] = spec
    return spec


def specs() -> dict[str, VerifierSpec]:
    # the built-ins' entries: data and lazy builders, so listing or checking imports no torch
    import vardist.verifiers.builtin  # noqa: F401

    return dict(sorted(_REGISTRY.items()))


def get_spec(name: str) -> VerifierSpec:
    all_specs = specs()
    if name not in all_specs:
        raise ValueError(f"unknown verifier {name!r}; built in: {', '.join(all_specs)} "
                         f"(`vardist verifiers` lists them)")
    return all_specs[name]


def _roots(weights: str | Path | None) -> list[Path]:
    from vardist.models.registry import weights_env_dir

    roots = [Path(weights)] if weights else []
    env = weights_env_dir()
    if env and env not in roots:
        roots.append(env)
    return roots


def _where(weights: str | Path | None) -> str:
    from vardist.models.registry import weights_env_dir

    env = weights_env_dir()
    return (f"--verifier-weights {weights if weights else '(not given)'}, $VARDIST_WEIGHTS "
            f"{env if env else '(not set)'} and the Hugging Face cache")


def _locate(req: Requirement, roots: list[Path]) -> Path | None:
    from vardist.models.registry import find_in_hf_cache

    for root in roots:  # a folder's content is checked against `needs` by the caller
        path = root / req.name
        if path.is_dir() if req.repo is not None else path.is_file():
            return path
    if req.repo is not None:
        return find_in_hf_cache((req.repo,), req.name, roots)
    return None


def find_weights(spec: VerifierSpec, weights: str | Path | None) -> dict[str, Path]:
    """The path of every requirement of `spec`, by name; raises MissingVerifierWeights naming
    the first missing file or folder (and the file missing inside a found folder) and where it
    is published. Reads no weights."""
    if spec.bundled_dir is not None:
        root = Path(weights) if weights else spec.bundled_dir()
        found = {}
        for req in spec.requires:
            if not (root / req.name).is_file():
                raise MissingVerifierWeights(
                    f"verifier {spec.name!r} needs {req.name} in {root}, which lacks it; "
                    f"{req.source} (or drop --verifier-weights for the file shipped with "
                    f"vardist)")
            found[req.name] = root / req.name
        return found
    roots, found = _roots(weights), {}
    for req in spec.requires:
        hit = _locate(req, roots)
        if hit is None:
            what = (f"the Hugging Face model folder {req.name} (repository {req.repo})"
                    if req.repo else f"the file {req.name}")
            fetch = (f"`huggingface-cli download {req.repo}` (into the cache) or a copy of "
                     f"the repository at DIR/{req.name}" if req.repo
                     else f"a copy at DIR/{req.name}")
            raise MissingVerifierWeights(
                f"verifier {spec.name!r} needs {what}, not found in {_where(weights)}; it is "
                f"published at {req.source}: get it with {fetch} and pass --verifier-weights "
                f"DIR (or set VARDIST_WEIGHTS). Nothing is downloaded.")
        for group in req.needs:
            if not any((hit / f).is_file() for f in group):
                raise MissingVerifierWeights(
                    f"verifier {spec.name!r}: the folder {hit} lacks {' or '.join(group)}; "
                    f"copy it from {req.source}")
        found[req.name] = hit
    return found


def weights_identity(spec: VerifierSpec, weights: str | Path | None) -> dict[str, str]:
    """"verifier weights NAME" -> size and sampled hash of each file or folder the verifier
    reads (for a run's resume fingerprint: other weights, other rewards)."""
    from vardist.models.registry import describe_weights

    return {f"verifier weights {name}": describe_weights(path)
            for name, path in find_weights(spec, weights).items()}


def load(name: str, weights: str | Path | None = None, device: str | torch.device | None = None
         ) -> Verifier:
    """A built-in verifier with its weights on `device` (default: CUDA when there is one)."""
    import torch

    spec = get_spec(name)
    files = find_weights(spec, weights)  # before anything loads: a missing file is named here
    dev = torch.device(device if device is not None else
                       ("cuda" if torch.cuda.is_available() else "cpu"))
    return spec.build(files, dev)


@dataclass(frozen=True)
class VerifierStatus:
    name: str
    description: str
    condition_kind: str
    found: bool
    detail: str          # where the weights are, or what is missing


def status(weights: str | Path | None = None) -> list[VerifierStatus]:
    """Every built-in verifier with whether its weights are found (the `vardist verifiers`
    listing)."""
    out = []
    for spec in specs().values():
        try:
            files = find_weights(spec, weights)
            detail = ", ".join(str(p) for p in files.values()) or "needs no weights"
            found = True
        except MissingVerifierWeights as e:
            detail, found = str(e), False
        out.append(VerifierStatus(spec.name, spec.description, spec.condition_kind, found,
                                  detail))
    return out


class BatchedVerifier:
    """Checks the inputs once and scores in chunks of `batch_size`; subclasses implement
    `_score(images uint8 [b, H, W, 3], conditions) -> [b]`."""

    def __init__(self, name: str, condition_kind: str, device: torch.device,
                 batch_size: int = 32) -> None:
        import torch

        self.name, self.condition_kind = name, condition_kind
        self.device, self.batch_size = torch.device(device), batch_size

    def __repr__(self) -> str:
        return f"<verifier {self.name} on {self.device}>"

    def score(self, images: np.ndarray, conditions: Sequence[Any]) -> np.ndarray:
        images = check_images(images)
        conditions = list(conditions)
        if len(conditions) != len(images):
            raise ValueError(f"verifier {self.name!r}: {len(images)} images but "
                             f"{len(conditions)} conditions; give one condition per image")
        out = [np.asarray(self._score(images[i:i + self.batch_size],
                                      conditions[i:i + self.batch_size]), np.float64)
               for i in range(0, len(images), self.batch_size)]
        return np.concatenate(out) if out else np.zeros(0)

    def _score(self, images: np.ndarray, conditions: list[Any]) -> np.ndarray:
        raise NotImplementedError


def check_images(images: Any) -> np.ndarray:
    """uint8 [N, H, W, 3] as a numpy array, or ValueError naming what was given."""
    import torch

    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"a verifier scores uint8 images [N, H, W, 3], got {images.dtype} "
                         f"{images.shape}")
    return images
