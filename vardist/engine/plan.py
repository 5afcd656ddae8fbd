"""What a search run does, decided before any model loads: settings, work items, canonical batches.

A work item is one output image: (condition, sample index) with its own seed. Everything random
about an item follows from that seed alone, and items are grouped into batches by a rule that
only looks at the item list and the batch size, never at the number of workers or at what an
earlier, interrupted run already finished. So any engine, any worker count and any resume give
the same images.
"""

from __future__ import annotations

import numbers
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Sequence

import numpy as np

from vardist.io.conditions import InputError
from vardist.models.interface import Sampling
from vardist.selection import METHODS as KDE_METHODS
from vardist.selection import METRICS, STRATEGIES

BANDWIDTHS = ("item", "batch")  # per-item bandwidth, or pooled over the batch as the authors do

_SELECT_KEY = 0x5E1EC7  # spawn key separating an item's selection rng from its sampling streams


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

    def __post_init__(self) -> None:
        # numpy scalars and the like become plain ints / floats (run.json compares them)
        for f in fields(self):
            v = getattr(self, f.name)
            if f.type == "int" and not isinstance(v, bool) and hasattr(v, "__index__"):
                object.__setattr__(self, f.name, int(v))
            elif f.type == "float" and isinstance(v, numbers.Real) and not isinstance(v, bool):
                object.__setattr__(self, f.name, float(v))

    def sampling(self) -> Sampling:
        return Sampling(cfg=self.cfg, top_k=self.top_k, top_p=self.top_p, tau=self.tau)

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


def plan_items(conditions: Sequence[tuple[int, Any]], samples: int, run_seed: int) -> list[WorkItem]:
    """Condition-major item list: conditions as (condition_index, condition) pairs."""
    if samples < 1:
        raise InputError(f"samples must be >= 1 (images per condition), got {samples}",
                         param="samples")
    items = []
    for ci, cond in conditions:
        for s in range(samples):
            items.append(WorkItem(len(items), ci, s, cond, item_seed(run_seed, ci, s)))
    return items


def canonical_batches(items: Sequence[WorkItem], batch_size: int) -> list[list[WorkItem]]:
    """Consecutive runs of `batch_size` items of the full plan. A resumed run recomputes a
    partly finished batch whole, so every image is computed in the same company every time."""
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}", param="batch_size")
    return [list(items[i:i + batch_size]) for i in range(0, len(items), batch_size)]


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

    def __post_init__(self) -> None:
        self.items = plan_items(self.conditions, self.samples, self.seed)

    def batches(self) -> list[list[WorkItem]]:
        return canonical_batches(self.items, self.batch_size)

    @property
    def model_name(self) -> str:
        return self.model if isinstance(self.model, str) else type(self.model).__name__

    def fingerprint(self) -> dict[str, Any]:
        """What must match for a rerun on the same output folder to continue this run."""
        return {"model": self.model_name, **asdict(self.settings), **self.model_options,
                "batch_size": self.batch_size,
                "seed": self.seed, "samples": self.samples, "condition_kind": self.condition_kind,
                "conditions": [[ci, c] for ci, c in self.conditions]}
