"""What a search run does, decided before any model loads: settings, work items, canonical batches.

A work item is one output image: (condition, sample index) with its own seed. Everything random
about an item follows from that seed alone, and items are grouped into batches by a rule that
only looks at the item list and the batch size, never at the number of workers or at what an
earlier, interrupted run already finished. So any engine, any worker count and any resume give
the same images.
"""

from __future__ import annotations

import glob
import math
import numbers
import os
import sys
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Sequence

import numpy as np

from vardist.engine import BANDWIDTHS, POOL_SAMPLINGS  # the torch-free copy (engine/__init__)
from vardist.engine.schedule import PREVIEW_PIXELS
from vardist.io.conditions import InputError
from vardist.io.outputs import human_size
from vardist.models.interface import Sampling
from vardist.selection import METHODS as KDE_METHODS
from vardist.selection import METRICS, STRATEGIES


_SELECT_KEY = 0x5E1EC7  # spawn key separating an item's selection rng from its sampling streams

# The settings each selection strategy reads beyond its pool (n, scale, sampling); one it does
# not read changes no image. "none" (plain sampling: candidate 0) reads none of them, nor n.
KDE_SETTINGS = ("bandwidth", "kde_method", "metric")
SELECTION_SETTINGS = ("alpha", "rep", "conflict_thresh", "k", *KDE_SETTINGS)
STRATEGY_USES: dict[str, tuple[str, ...]] = {
    "var-scaling": ("alpha", "rep", "conflict_thresh", *KDE_SETTINGS),
    "infinity": ("k", *KDE_SETTINGS), "top-k": ("k", *KDE_SETTINGS),
    "random-k": ("k", *KDE_SETTINGS), "small-k": ("k", *KDE_SETTINGS), "none": ()}


def unused_settings(strategy: str, given: dict[str, Any]) -> dict[str, Any]:
    """Of the settings a caller gave explicitly, those `strategy` does not read."""
    uses = STRATEGY_USES[strategy]
    return {k: v for k, v in given.items()
            if (k in SELECTION_SETTINGS and k not in uses) or (k == "n" and strategy == "none")}


@dataclass(frozen=True)
class SearchSettings:
    """Every knob that changes an image: the model's SearchDefaults with the caller's overrides,
    plus how densities are computed."""

    scale: int
    n: int
    strategy: str
    alpha: float
    rep: int
    conflict_thresh: float
    k: int
    cfg: float
    top_k: int
    top_p: float
    tau: float
    bandwidth: str = "item"
    kde_method: str = "auto"
    metric: str = "l2"
    # "authors": the released VAR code's narrowing candidate sampler (VAR models only)
    pool_sampling: str = "iid"

    def __post_init__(self) -> None:
        # numpy scalars and the like become plain ints / floats (run.json compares them)
        for f in fields(self):
            v = getattr(self, f.name)
            if f.type == "int" and not isinstance(v, bool) and hasattr(v, "__index__"):
                object.__setattr__(self, f.name, int(v))
            elif f.type == "float" and isinstance(v, numbers.Real) and not isinstance(v, bool):
                object.__setattr__(self, f.name, float(v))

    def sampling(self) -> Sampling:
        # only a non-default sampler is passed on: families without the option see no extras
        options = {} if self.pool_sampling == "iid" else {"pool_sampling": self.pool_sampling}
        return Sampling(cfg=self.cfg, top_k=self.top_k, top_p=self.top_p, tau=self.tau,
                        options=options)

    @property
    def pool_size(self) -> int:
        # "none" is plain sampling: candidate 0 of any pool, so draw only that one.
        return 1 if self.strategy == "none" else self.n

    def check(self, num_scales: int | None) -> None:
        """Raise InputError naming the first bad setting and how to fix it."""
        for name in ("scale", "n", "rep", "k", "top_k"):
            v = getattr(self, name)
            _need(isinstance(v, int) and not isinstance(v, bool), name,
                  f"{name} must be an integer, got {v!r}")
        # inf / nan pass every comparison below one way or the other (cfg inf made identical
        # images and an `Infinity` that is not JSON in run.json): every float must be finite
        for name in ("alpha", "conflict_thresh", "cfg", "top_p", "tau"):
            v = getattr(self, name)
            _need(isinstance(v, float), name, f"{name} must be a number, got {v!r}")
            _need(math.isfinite(v), name, f"{name} must be a finite number, got {v}")
        for name in ("strategy", "bandwidth", "kde_method", "metric"):
            v = getattr(self, name)
            _need(isinstance(v, str), name, f"{name} must be a string, got {v!r}")
        _need(self.strategy in STRATEGIES, "strategy",
              f"unknown strategy {self.strategy!r}; choose one of {', '.join(STRATEGIES)}")
        _need(self.n >= 1, "n", f"n must be >= 1 (the pool size), got {self.n}")
        _need(self.scale >= 0, "scale", f"scale must be >= 0, got {self.scale}")
        if num_scales is not None:
            _need(self.scale < num_scales, "scale",
                  f"scale {self.scale} is beyond this model's schedule of {num_scales} scales; "
                  f"use 0..{num_scales - 1}")
        _need(self.alpha > 0, "alpha", f"alpha must be > 0, got {self.alpha}")
        _need(self.rep >= 1, "rep", f"rep must be >= 1, got {self.rep}")
        _need(self.conflict_thresh >= 0, "conflict_thresh",
              f"conflict_thresh must be >= 0, got {self.conflict_thresh}")
        _need(self.k >= 1, "k", f"k must be >= 1, got {self.k}")
        _need(self.cfg >= 0, "cfg", f"cfg must be >= 0, got {self.cfg}")
        _need(self.top_k >= 0, "top_k", f"top_k must be >= 0 (0 disables it), got {self.top_k}")
        _need(0 <= self.top_p <= 1, "top_p",
              f"top_p must be in [0, 1] (0 disables it), got {self.top_p}")
        _need(self.tau > 0, "tau", f"tau must be > 0, got {self.tau}")
        _need(self.bandwidth in BANDWIDTHS, "bandwidth",
              f"bandwidth must be one of {', '.join(BANDWIDTHS)}, got {self.bandwidth!r}")
        _need(self.kde_method in KDE_METHODS, "kde_method",
              f"kde_method must be one of {', '.join(KDE_METHODS)}, got {self.kde_method!r}")
        _need(self.metric in METRICS, "metric",
              f"metric must be one of {', '.join(METRICS)}, got {self.metric!r}")
        _need(self.pool_sampling in POOL_SAMPLINGS, "pool_sampling",
              f"pool_sampling must be one of {', '.join(POOL_SAMPLINGS)}, got {self.pool_sampling!r}")


def _need(ok: bool, param: str, msg: str) -> None:
    if not ok:
        raise InputError(msg, param=param)


@dataclass(frozen=True)
class WorkItem:
    """One output image. `condition_index` is the condition's identity: the class label for
    classes, the line index for prompt files, so an item's seed does not change when other
    classes or prompts are added to the run."""

    index: int              # position in the run's item list
    condition_index: int
    sample_index: int
    condition: Any          # int class label or prompt string
    seed: int


def item_seed(run_seed: int, condition_index: int, sample_index: int) -> int:
    """A 63-bit seed that depends on (run seed, condition, sample) and nothing else."""
    if run_seed < 0:
        raise InputError(f"seed must be >= 0, got {run_seed}", param="seed")
    ss = np.random.SeedSequence([run_seed, condition_index, sample_index])
    return int(ss.generate_state(1, np.uint64)[0] >> np.uint64(1))


def selection_rng(seed: int) -> np.random.Generator:
    """The item's rng for the selection rule, independent of its sampling streams."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_SELECT_KEY,)))


# The most images one run plans: a run keeps a record per image in memory (the results it
# returns, its resume state), about a kilobyte each. 200 ImageNet evaluations (50 x 1000).
MAX_IMAGES = 10_000_000


def check_plan_size(num_conditions: int, samples: int, kind: str = "class") -> int:
    """The number of images of a run, refused by arithmetic (before any item exists) above
    MAX_IMAGES."""
    total = num_conditions * samples
    if total > MAX_IMAGES:
        kinds = "classes" if kind == "class" else "prompts"
        raise InputError(
            f"{num_conditions} {kinds} x {samples} samples = {total:,} images is more than one "
            f"run plans (at most {MAX_IMAGES:,}: a run keeps a record per image in memory); "
            f"lower samples (images per {kind}) or split the {kinds} over several runs, each "
            f"with its own out folder", param="samples")
    return total


# Device files that exist wherever torch can see a GPU through its CUDA API: the NVIDIA driver's
# (/dev/nvidia0.., /proc/driver/nvidia; /dev/nvhost-* on Jetson/Tegra boards), ROCm's (/dev/kfd)
# and WSL 2's GPU bridge (/dev/dxg).
_GPU_DEVICE_FILES = ("/dev/nvidia[0-9]*", "/proc/driver/nvidia", "/dev/nvhost-ctrl-gpu",
                     "/dev/nvhost-gpu", "/dev/kfd", "/dev/dxg")


def cuda_ruled_out() -> bool:
    """True when torch.cuda.is_available() must be False here, known without importing torch
    (2 s, most of a refusal's time): macOS, or Linux with none of the GPU device files. False
    means only "ask torch"."""
    if sys.platform == "darwin":
        return True
    return sys.platform.startswith("linux") and not any(glob.glob(p) for p in _GPU_DEVICE_FILES)


def device_type(device: str | None) -> str:
    """The type of the device a run uses ("cuda:1" -> "cuda"); for None, what a model load
    picks: cuda when torch sees a GPU, else cpu. torch is imported only where a GPU may be."""
    if device is not None:
        return device.split(":")[0]
    if cuda_ruled_out():
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def local_gpu(device: str | None) -> tuple[int, str, int] | None:
    """(total bytes, name, index) of the CUDA device a local run uses (device None: cuda when
    torch sees a GPU), else None. torch is imported only where a GPU may be (device_type)."""
    if device_type(device) != "cuda":
        return None
    import torch

    if not torch.cuda.is_available():
        return None
    index = torch.device(device or "cuda").index or 0
    props = torch.cuda.get_device_properties(index)
    return props.total_memory, props.name, index


def memory_budget(device: str | None) -> tuple[int, str]:
    """(bytes, what they are) a run may use on `device`: a CUDA device's total memory, else
    the machine's physical memory. Read before any model loads; without torch for the CPU."""
    gpu = local_gpu(device)
    if gpu is not None:
        return gpu[0], f"the {human_size(gpu[0])} of GPU {gpu[1]}"
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return total, f"the {human_size(total)} of this machine's memory"


def check_pool_memory(settings: SearchSettings, batch_size: int, tokens: int,
                      budget: tuple[int, str], dim: int = 1) -> int:
    """Refuse a candidate pool that cannot fit, by arithmetic. A batch's pool is held whole
    (the selection needs every candidate at once): batch_size x pool_size candidates of `tokens` codes at the searched
    scale, as int64 codes and their float32 embeddings (`dim` coordinates a token; 1 when
    unknown, so the figure is a lower bound and a pool that fits is never refused)."""
    per = tokens * (8 + 4 * dim)
    need = batch_size * settings.pool_size * per
    limit, where = budget
    if need > limit:
        fit = max(limit // (batch_size * per), 0)
        raise InputError(
            f"n={settings.n} needs at least {human_size(need)} for one batch's candidate pool "
            f"({batch_size} items x {settings.n:,} candidates x {tokens} tokens at scale "
            f"{settings.scale}, as codes and embeddings), more than {where}; lower n (about "
            f"{fit:,} at most at batch_size {batch_size}) or batch_size", param="n")
    return need


def schedule_bytes(sides: Sequence[int], batch_size: int, *, depth: int, width: int,
                   vocab: int, downsample: int, decoder_ch: int) -> int:
    """A lower bound on what sampling one batch along a scale schedule holds: the KV cache of
    every layer over all tokens (the conditional and unconditional rows of classifier-free
    guidance, float32) with the last scale's logits, or else the decoder's full-resolution
    activation (`decoder_ch` channels, float32) while the batch is decoded."""
    tokens = sum(s * s for s in sides)
    rows = 2 * batch_size  # CFG: conditional + unconditional
    sampling = rows * 2 * depth * tokens * width * 4 + rows * sides[-1] ** 2 * vocab * 4
    decoding = batch_size * decoder_ch * (sides[-1] * downsample) ** 2 * 4
    return max(sampling, decoding)


def check_schedule_memory(sides: Sequence[int], batch_size: int, budget: tuple[int, str],
                          **sizes: int) -> int:
    need = schedule_bytes(sides, batch_size, **sizes)
    limit, where = budget
    if need > limit:
        px = sides[-1] * sizes["downsample"]
        raise InputError(
            f"schedule {','.join(map(str, sides))} needs at least {human_size(need)} for a batch "
            f"of {batch_size} ({sum(s * s for s in sides):,} tokens of KV cache in "
            f"{sizes['depth']} layers, then {px}x{px} images to decode), more than {where}; "
            f"use smaller side lengths (the released models are trained up to 16) or a smaller "
            f"batch_size", param="schedule")
    return need


class WorkItems(Sequence):
    """The condition-major item list of a plan, made on demand: item i is condition
    i // samples, sample i % samples. Nothing is built (and no seed derived) until an item is
    read, so a large plan costs nothing to check and hold."""

    def __init__(self, conditions: Sequence[tuple[int, Any]], samples: int, run_seed: int) -> None:
        if samples < 1:
            raise InputError(f"samples must be >= 1 (images per condition), got {samples}",
                             param="samples")
        self.conditions, self.samples, self.run_seed = conditions, samples, run_seed

    def __len__(self) -> int:
        return len(self.conditions) * self.samples

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"item {i} of a plan of {len(self)}")
        ci, cond = self.conditions[i // self.samples]
        s = i % self.samples
        return WorkItem(i, ci, s, cond, item_seed(self.run_seed, ci, s))

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def __eq__(self, other) -> bool:
        return isinstance(other, Sequence) and len(self) == len(other) and list(self) == list(other)


class Batches(Sequence):
    """Canonical batches of a WorkItems list, made on demand (a list of WorkItems each)."""

    def __init__(self, items: Sequence[WorkItem], batch_size: int) -> None:
        self.items, self.batch_size = items, batch_size

    def __len__(self) -> int:
        return -(-len(self.items) // self.batch_size)

    def __getitem__(self, b):
        if isinstance(b, slice):
            return [self[j] for j in range(*b.indices(len(self)))]
        if b < 0:
            b += len(self)
        if not 0 <= b < len(self):
            raise IndexError(f"batch {b} of {len(self)}")
        return list(self.items[b * self.batch_size:(b + 1) * self.batch_size])

    def __iter__(self):
        return (self[b] for b in range(len(self)))


def plan_items(conditions: Sequence[tuple[int, Any]], samples: int, run_seed: int) -> list[WorkItem]:
    """Condition-major item list: conditions as (condition_index, condition) pairs."""
    return list(WorkItems(conditions, samples, run_seed))


def canonical_batches(items: Sequence[WorkItem], batch_size: int) -> list[list[WorkItem]]:
    """Consecutive runs of `batch_size` items of the full plan. A resumed run recomputes a
    partly finished batch whole, so every image is computed in the same company every time."""
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}", param="batch_size")
    return list(Batches(items, batch_size))


@dataclass
class Job:
    """A fully checked run, handed to an engine (local or Ray)."""

    model: Any                         # registry name or a ScaleWiseGenerator instance
    settings: SearchSettings
    conditions: list[tuple[int, Any]]  # (condition_index, class label or prompt)
    samples: int                       # images per condition
    seed: int                          # the run seed
    batch_size: int
    weights: str | None = None
    device: str | None = None
    out: str | None = None
    condition_kind: str = "class"
    prompt_lines: dict[int, str] = field(default_factory=dict)  # prompt files: index -> raw line
    grid: bool = False
    log_candidates: bool = False
    options: dict[str, Any] = field(default_factory=dict)     # engine-specific (ray: address, actors)
    model_options: dict[str, Any] = field(default_factory=dict)  # builder options (schedule=)
    # "weights FILE" -> size and sampled hash of each file loaded (registry.weights_identity)
    weights_identity: dict[str, str] = field(default_factory=dict)
    # verifier-guided search (engine.rerank): the reward's name, where its weights are, how
    # many shortlisted candidates to finish and score (0: score the chosen image only), and
    # "verifier weights NAME" -> size and sampled hash of what it reads
    verifier: str | None = None
    verifier_weights: str | None = None
    rerank: int = 0
    verifier_identity: dict[str, str] = field(default_factory=dict)
    # search across scales (engine.schedule): the canonical schedule; None for one-scale search
    search: str | None = None

    def __post_init__(self) -> None:
        # made on demand: a plan of millions of images is checked and held without building it
        self.items = WorkItems(self.conditions, self.samples, self.seed)

    def batches(self) -> Batches:
        if self.batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {self.batch_size}",
                             param="batch_size")
        return Batches(self.items, self.batch_size)

    @property
    def model_name(self) -> str:
        return self.model if isinstance(self.model, str) else type(self.model).__name__

    def fingerprint(self) -> dict[str, Any]:
        """What must match for a rerun on the same output folder to continue this run."""
        return {"model": self.model_name, **asdict(self.settings), **self.model_options,
                "batch_size": self.batch_size,
                "seed": self.seed, "samples": self.samples, "condition_kind": self.condition_kind,
                # a log with candidate rows for only part of the images would mislead
                "log_candidates": self.log_candidates, **self.weights_identity,
                # only when set: folders of runs without a verifier resume as before
                **({"verifier": self.verifier, "rerank": self.rerank, **self.verifier_identity}
                   if self.verifier else {}),
                # the preview batch shape the rewards were computed under (its rule may change)
                **({"search": self.search, "preview_pixels": PREVIEW_PIXELS}
                   if self.search else {}),
                "conditions": [[ci, c] for ci, c in self.conditions]}
