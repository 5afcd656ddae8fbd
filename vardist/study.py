"""Scaling studies: many search settings on the same work items, at the cost of a few.

    study = vardist.Study("toy-digits", conditions="0-9", seeds=8,
                          sweep={"n": [10, 100, 1000], "strategy": ["none", "top-k", "var-scaling"],
                                 "alpha": [1.5, 2.3]},
                          metrics=["accuracy", "is_toy", "fd_toy", "diversity"])
    res = study.run("runs/study")     # res.rows, res.summary (pyarrow), Parquet + PNG plots in out

Why it is cheap: candidate j of an item's pool at scale k is row j of the item's own random
stream, so the first n' candidates of an n-pool ARE the n'-pool. For each work item and each
distinct pool (scale and sampling knobs), the study draws one pool at the largest n of the sweep
and gives each setting its first n candidates; each setting then selects exactly as
`vardist.search` does (`pipeline.select_batch`, same per-item rng), so its choice is the one a
plain search with that setting makes. Continuations are cached by (item, pool, chosen token map):
a choice shared by several settings (every "none", a top-k that keeps its winner as n grows, the
same map at two candidate indices) is finished once. Cost: one pool per item and pool key, plus
one continuation per distinct choice, plus selection (cheap) per setting.

Verifier-guided search (`rerank`, `verifier` in the sweep) shares the same cache: a setting
that reranks K finishes its first K shortlisted candidates, those already finished for another
setting are reused (rerank 10 after rerank 4 pays for 6 per item), each verifier scores each
image once, and each setting keeps what search() keeps (`engine.rerank.keep_best`). The summary
reports `continuations_per_image`, what a setting costs on its own.

Images: a continuation is rebuilt from its token maps (teacher-forced, `model.resume`) in batches
of distinct choices, so its pixels may differ from a search's by one level where CPU float
kernels differ between batch shapes (the token maps, hence the choices, are identical).

Metrics are plug-ins (`Metric`): per image (averaged per setting) or per set (computed on all of a
setting's images). Built in: the toy judge's "accuracy", "is_toy", "fd_toy", "diversity" (see
vardist.zoo.metrics), and `TorchFidelity` (FID / IS through torch-fidelity, for real models;
its Inception weights must already be on disk). GenEval runs its own harness on the per-setting
layouts `run(out, layouts=True)` writes (docs/study.md).
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol, Sequence, runtime_checkable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vardist.api import ENGINES, _check_loaded, plan_search
from vardist.engine import pipeline
from vardist.engine.results import COMPUTE_COLUMNS  # per image (run-log columns)
from vardist.engine.plan import (SELECTION_SETTINGS, STRATEGY_USES, SearchSettings, WorkItem,
                                 canonical_batches, item_seed)
from vardist.engine.ray import CodeTable
from vardist.io import outputs
from vardist.io.conditions import InputError
from vardist.models.interface import ScaleWiseGenerator

VERIFY_KEYS = ("verifier", "rerank")  # verifier-guided search (vardist.engine.rerank)
SEARCH_KEY = "search"  # a search schedule (engine.schedule); None: the one-scale search
SWEEP_KEYS = tuple(f.name for f in fields(SearchSettings)) + VERIFY_KEYS + (SEARCH_KEY,)
POOL_KEYS = ("scale", "cfg", "top_k", "top_p", "tau")  # what an item's pool depends on
# Selection knobs each strategy reads (see _collapse).
USES, _SELECTION_KEYS = STRATEGY_USES, SELECTION_SETTINGS

ROWS_FILE, SUMMARY_FILE, CONFIG_FILE = "study.parquet", "summary.parquet", "study.json"
# plot()'s x axes: the settings field along each line (then one line per strategy), the label
_PLOT_AXES = {"n": ("n", "n (candidates per item)"),
              "continuations_per_image": ("rerank", "continuations per image"),
              "forward_tokens_per_image": ("search", "forward tokens per image")}
PLOT_X = tuple(_PLOT_AXES)


# --- metrics ------------------------------------------------------------------------------

@runtime_checkable
class Metric(Protocol):
    """A quality measure. per_image: compute returns one value per image ([N]) and the summary
    averages them; otherwise it returns one float for the whole set (a setting's images)."""

    name: str
    per_image: bool

    def compute(self, images: np.ndarray, conditions: Sequence) -> np.ndarray | float:
        """images: uint8 [N, H, W, 3]; conditions: the N items' class labels or prompts."""


class _Judge:
    """Shared lazy access to the zoo's toy judge (class probabilities + features)."""

    def predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import torch

        from vardist.zoo.judge import shipped_judge

        probs, feats = shipped_judge().predict(torch.from_numpy(np.ascontiguousarray(images)))
        return probs.numpy(), feats.numpy()


class JudgeAccuracy(_Judge):
    """1 when the toy judge assigns the image to the class asked for, else 0."""

    name, per_image = "accuracy", True

    def compute(self, images, conditions):
        probs, _ = self.predict(images)
        return (probs.argmax(1) == np.asarray(conditions)).astype(np.float64)


class JudgeIS(_Judge):
    """Inception-Score analogue under the toy judge (vardist.zoo.metrics.inception_score)."""

    name, per_image = "is_toy", False

    def compute(self, images, conditions):
        from vardist.zoo.metrics import inception_score

        return inception_score(self.predict(images)[0])


class JudgeFD(_Judge):
    """Frechet-distance analogue vs all real digits under the toy judge (NaN below 2 images)."""

    name, per_image = "fd_toy", False

    def compute(self, images, conditions):
        from vardist.zoo.metrics import _real_stats_shipped, frechet_distance, gaussian_stats

        if len(images) < 2:
            return float("nan")
        return frechet_distance(gaussian_stats(self.predict(images)[1]), _real_stats_shipped())


class JudgeDiversity(_Judge):
    """Mean pairwise L2 distance between the toy judge's features of the set's images, within
    each condition (a search that collapses every sample of a class onto one mode scores low),
    averaged over conditions with at least two images."""

    name, per_image = "diversity", False

    def compute(self, images, conditions):
        feats = self.predict(images)[1].astype(np.float64)
        conds = np.asarray([str(c) for c in conditions])
        per_cond = []
        for c in dict.fromkeys(conds):
            f = feats[conds == c]
            if len(f) >= 2:
                d = np.sqrt(((f[:, None] - f[None]) ** 2).sum(-1))
                per_cond.append(d[np.triu_indices(len(f), 1)].mean())
        return float(np.mean(per_cond)) if per_cond else float("nan")


# torch-fidelity's Inception-v3 weights, as its feature extractor names them in the torch hub
# cache. The study never downloads them: they must be there (or passed as weights=).
FIDELITY_WEIGHTS = "weights-inception-2015-12-05-6726825d.pth"


@dataclass
class TorchFidelity:
    """FID or IS (torch-fidelity's Inception-v3) over a setting's images, for real models.

    metric: "fid" (needs ref: a folder of real images or a torch-fidelity registered input
    name whose statistics are cached) or "isc". weights: the Inception weights file; default
    $TORCH_HOME's hub checkpoints. Checked when the study starts: missing package or weights
    raise a clear error instead of a download."""

    metric: str = "fid"
    ref: str | None = None
    weights: str | None = None
    per_image: bool = False

    @property
    def name(self) -> str:
        return self.metric

    def check(self) -> Path:
        import importlib.util

        if self.metric not in ("fid", "isc"):
            raise InputError(f"TorchFidelity metric must be 'fid' or 'isc', got {self.metric!r}",
                             param="metrics")
        if self.metric == "fid" and not self.ref:
            raise InputError("TorchFidelity('fid') needs ref=, a folder of reference images",
                             param="metrics")
        if importlib.util.find_spec("torch_fidelity") is None:
            raise InputError("TorchFidelity needs the torch-fidelity package: "
                             "pip install torch-fidelity", param="metrics")
        if self.weights:
            path = Path(self.weights)
        else:
            import torch

            path = Path(torch.hub.get_dir()) / "checkpoints" / FIDELITY_WEIGHTS
        if not path.is_file():
            raise FileNotFoundError(
                f"torch-fidelity's Inception weights are not at {path}; vardist does not "
                f"download them: put {FIDELITY_WEIGHTS} there or pass TorchFidelity(weights=...)")
        return path

    def compute(self, images, conditions):
        import torch
        import torch_fidelity

        class _Images(torch.utils.data.Dataset):  # torch-fidelity wants uint8 [3, H, W] items
            def __len__(self):
                return len(images)

            def __getitem__(self, i):
                return torch.from_numpy(np.ascontiguousarray(images[i].transpose(2, 0, 1)))

        out = torch_fidelity.calculate_metrics(
            input1=_Images(), input2=self.ref, fid=self.metric == "fid",
            isc=self.metric == "isc", feature_extractor_weights_path=str(self.check()),
            cuda=torch.cuda.is_available(), verbose=False)
        key = "frechet_inception_distance" if self.metric == "fid" else "inception_score_mean"
        return float(out[key])


class VerifierMetric:
    """A verifier (`vardist.verifiers`: "clip", "pickscore", "toy-judge", ...) as a per-image
    metric: its reward of each image. Its weights are looked up when the study is made (from
    `weights`, $VARDIST_WEIGHTS or the Hugging Face cache) and it loads at the first use."""

    per_image = True

    def __init__(self, name: str, weights: str | Path | None = None,
                 device: str | None = None) -> None:
        self.name, self.weights, self.device = name, weights, device
        self._verifier = None

    def check(self) -> None:
        import vardist.verifiers as verifiers

        verifiers.find_weights(verifiers.get_spec(self.name), self.weights)

    def compute(self, images, conditions):
        if self._verifier is None:
            from vardist.verifiers import load

            self._verifier = load(self.name, self.weights, self.device)
        return self._verifier.score(np.ascontiguousarray(images), list(conditions))


BUILTIN_METRICS = {m.name: m for m in (JudgeAccuracy, JudgeIS, JudgeFD, JudgeDiversity)}


def _metric(m: str | Metric, verifier_weights: str | Path | None = None,
            device: str | None = None) -> Metric:
    if isinstance(m, str):
        from vardist.verifiers import specs as verifier_specs

        if m in verifier_specs() and m not in BUILTIN_METRICS:
            m = VerifierMetric(m, verifier_weights, device)
        elif m not in BUILTIN_METRICS:
            raise InputError(f"unknown metric {m!r}; built in: {', '.join(BUILTIN_METRICS)}, "
                             f"and the verifiers {', '.join(verifier_specs())} (or pass a "
                             f"Metric object)", param="metrics")
        else:
            return BUILTIN_METRICS[m]()
    if not isinstance(m, Metric):
        raise InputError(f"metrics must be names or Metric objects (name, per_image, "
                         f"compute), got {type(m).__name__}", param="metrics")
    if hasattr(m, "check"):
        m.check()
    return m


# --- the study ----------------------------------------------------------------------------

@dataclass(frozen=True)
class StudySetting(SearchSettings):
    """A search setting plus verifier-guided search: `verifier` scores the kept image (a
    `reward` column); with `rerank` = K >= 1 it picks the best of the first K shortlisted
    candidates, as `vardist.search(verifier=, rerank=)` does. `search`: the canonical text of
    a search schedule (`vardist.search(search=)`), None for the one-scale search of
    strategy / scale / n; `multiscale`: whether it runs the multi-scale engine (any schedule
    but "density:1@K", which is the one-scale search at scale K)."""

    verifier: str | None = None
    rerank: int = 0
    search: str | None = None
    multiscale: bool = False

    def search_settings(self) -> SearchSettings:
        """The plain SearchSettings (what the engines' model calls read)."""
        return SearchSettings(**{f.name: getattr(self, f.name) for f in fields(SearchSettings)})


@dataclass
class StudyResults:
    """rows: one row per (setting, item); summary: one row per setting; images: the distinct
    continuations (key -> uint8 [H, W, 3], the rows' image_key); stats: what it cost."""

    rows: pa.Table
    summary: pa.Table
    images: dict[int, np.ndarray] = field(repr=False)
    stats: dict[str, Any]
    paths: dict[str, Path] = field(default_factory=dict)


class Study:
    """A sweep of search settings over the same work items (conditions x seeds).

    model: a registry name or a ScaleWiseGenerator. conditions: class labels ("0-9", a list of
    ints) or prompts (a list of strings, a GenEval JSONL file). seeds: sample indices per
    condition (an int S means 0..S-1); item (condition, s) gets the seed `vardist.search(...,
    seed=seed)` gives sample s of that condition, so seeds=S reproduces search(samples=S).
    sweep: {setting name: list of values} over SearchSettings fields (scale, n, strategy, alpha,
    rep, conflict_thresh, k, cfg, top_k, top_p, tau, bandwidth, kde_method, metric) and
    verifier-guided search's `verifier` and `rerank` (0: no rerank), and `search`: a search
    schedule (docs/search.md, "Search across scales"; None or "": the one-scale search), whose
    rows are the images vardist.search(search=) makes (docs/study.md); every combination is a
    setting, unset fields take the model's defaults (verifier= and rerank= given outside the
    sweep hold for every setting; "none" ignores rerank: its shortlist is candidate 0).
    verifier_weights: where the verifiers' weights are (as search()'s). metrics: names of
    built-in metrics or verifiers, or Metric objects. engine: "local" or "ray" (engine_options:
    RayOptions fields). Everything is checked here, before a model loads.

    Reranking reuses continuations: a candidate is finished once per item and token map, so
    rerank 10 after rerank 4 over the same shortlist finishes only the 6 new ones, and each
    verifier scores each finished image once. The summary's `continuations_per_image` is what
    each setting costs on its own (1 for plain search, up to K with rerank); stats'
    "continuations" is what the study computed.
    """

    def __init__(self, model: str | ScaleWiseGenerator, conditions: Any, seeds: int | Sequence[int],
                 sweep: dict[str, Sequence] | None = None, metrics: Sequence[str | Metric] = (),
                 *, engine: str = "local", seed: int = 0, batch_size: int = 8,
                 finish_batch: int | None = None, weights: str | Path | None = None,
                 device: str | None = None, verifier_weights: str | Path | None = None,
                 **engine_options: Any) -> None:
        sweep = dict(sweep or {})
        fixed = {k: engine_options.pop(k) for k in (*VERIFY_KEYS, SEARCH_KEY)
                 if k in engine_options}
        for key, values in sweep.items():
            if key not in SWEEP_KEYS:
                raise InputError(f"unknown sweep key {key!r}; sweep over {', '.join(SWEEP_KEYS)}",
                                 param="sweep")
            if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
                raise InputError(f"sweep[{key!r}] must be a non-empty list of values, got "
                                 f"{values!r}", param="sweep")
        if isinstance(seeds, bool) or not isinstance(seeds, (int, Sequence)):
            raise InputError(f"seeds must be a count or a list of sample indices, got {seeds!r}",
                             param="seeds")
        samples = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
        if not samples or any(isinstance(s, bool) or not isinstance(s, int) or s < 0
                              for s in samples) or len(set(samples)) != len(samples):
            raise InputError(f"seeds must be a count >= 1 or distinct sample indices >= 0, got "
                             f"{seeds!r}", param="seeds")
        finish_batch = 4 * batch_size if finish_batch is None else finish_batch
        if isinstance(finish_batch, bool) or not isinstance(finish_batch, int) or finish_batch < 1:
            raise InputError(f"finish_batch must be an integer >= 1, got {finish_batch!r}",
                             param="finish_batch")
        if engine not in ENGINES:
            raise InputError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}",
                             param="engine")
        if SEARCH_KEY in sweep and "scale" in sweep:
            raise InputError("sweep over 'scale' and 'search' together: a schedule names its "
                             "own scales; sweep one-scale searches as search values "
                             "'density:1@K' (the one-scale search at scale K) instead",
                             param="sweep")
        if "schedule" in engine_options:
            raise InputError("studies run the model's own scale schedule; search a flexible "
                             "schedule with vardist.search(schedule=...)", param="schedule")
        prompts = isinstance(conditions, Path) or (
            isinstance(conditions, str) and conditions.endswith((".jsonl", ".txt"))) or (
            isinstance(conditions, Sequence) and not isinstance(conditions, str)
            and any(isinstance(c, str) for c in conditions))
        cond_arg = {"prompts" if prompts else "classes": conditions}

        # One plan_search per setting: the same defaults, merging and checks as search().
        self.settings: list[StudySetting] = []
        self._jobs = []  # one checked Job per setting, for the checks that need the model
        keys = list(sweep)
        common = dict(cond_arg, samples=1, seed=seed, batch_size=batch_size, weights=weights,
                      device=device, engine=engine, **engine_options)
        for combo in itertools.product(*(sweep[k] for k in keys)):
            given = {**fixed, **dict(zip(keys, combo))}
            verify = {k: given.pop(k) for k in VERIFY_KEYS if k in given}
            search = given.pop(SEARCH_KEY, None) or None  # None / "": the one-scale search
            # a schedule with a reward rule needs its verifier from the first check on
            vkw = (dict(verifier=verify["verifier"], verifier_weights=verifier_weights)
                   if search is not None and verify.get("verifier") is not None else {})
            job, config = plan_search(model, **common, **given, search=search, **vkw)
            s = _collapse(job.settings, sweep)
            # rerank 0 (or a strategy without a shortlist, or a multi-scale schedule, which
            # keeps by its rules and refuses rerank) is plain search
            multi = job.search is not None
            rerank = 0 if s.strategy == "none" or multi else verify.get("rerank") or 0
            if not multi and (verify.get("verifier") is not None or rerank):
                job, config = plan_search(
                    model, **common, **given, search=search, verifier=verify.get("verifier"),
                    verifier_weights=verifier_weights, rerank=rerank or None)
            self._config = config
            s = StudySetting(**asdict(s), verifier=job.verifier, rerank=job.rerank,
                             search=config["search"], multiscale=multi)
            if s not in self.settings:
                self.settings.append(s)
                self._jobs.append(replace(job, settings=s.search_settings()))
        self.metrics = [_metric(m, verifier_weights, device if engine == "local" else None)
                        for m in metrics]
        names = [m.name for m in self.metrics]
        if len(set(names)) != len(names):
            raise InputError(f"metric names must be distinct, got {names}", param="metrics")
        self.model, self.engine, self.seed, self.batch_size = model, engine, seed, batch_size
        self.finish_batch = finish_batch
        self.weights, self.device, self.engine_options = weights, device, engine_options
        self.verifier_weights = verifier_weights
        # one scorer per verifier, shared by reranking and the metric of the same name, and
        # the last run's rewards: verifier -> image key -> reward
        self._scorers = {m.name: m for m in self.metrics if isinstance(m, VerifierMetric)}
        self._rewards: dict[str, dict[int, float]] = {}
        for name in dict.fromkeys(s.verifier for s in self.settings if s.verifier):
            self._scorers.setdefault(name, VerifierMetric(name, verifier_weights,
                                                          device if engine == "local" else None))
        verifiers = {s.verifier for s in self.settings if s.multiscale}
        if engine == "ray" and len(verifiers) > 1:
            raise InputError(f"engine='ray' runs a study's search schedules on actors that hold "
                             f"one verifier, and this sweep gives them {len(verifiers)} "
                             f"({', '.join(map(str, sorted(verifiers, key=str)))}): give its "
                             f"schedules one verifier (or none), or use engine='local'",
                             param="verifier")
        self._search_verifier = next(iter(verifiers), None)  # the Ray actors' verifier
        self.sweep = sweep
        self.condition_kind = job.condition_kind
        self.prompt_lines = job.prompt_lines
        self.items = [WorkItem(i, ci, s, cond, item_seed(seed, ci, s)) for i, ((ci, cond), s)
                      in enumerate(itertools.product(job.conditions, samples))]

    def pool_groups(self) -> dict[tuple, list[SearchSettings]]:
        """Settings grouped by what their pools depend on (one pool per item and group); the
        multi-scale schedules run their own search per item and are in no group."""
        groups: dict[tuple, list[SearchSettings]] = {}
        for s in self.settings:
            if s.multiscale:
                continue
            groups.setdefault(tuple(getattr(s, k) for k in POOL_KEYS), []).append(s)
        return groups

    def run(self, out: str | Path | None = None, *, layouts: bool = False,
            plots: bool = True, progress: Callable[[int, int], None] | None = None
            ) -> StudyResults:
        """Run the sweep. out: write study.parquet (rows), summary.parquet, study.json, one
        PNG per metric (metric vs n, a line per strategy; with several rerank values also
        metric vs continuations per image) and the distinct images
        (out/continuations/); layouts=True also writes each setting's images in search()'s
        layout under out/settings/<setting id>/ (hard links), e.g. for the GenEval harness.
        progress: called as progress(done, total) as the work advances, counting an item's
        pool (shared by the settings that draw alike) or an item's search-schedule run as one
        unit each (a long study shows where it is; `vardist.search` takes the same callback)."""
        if progress is not None and not callable(progress):
            raise InputError(f"progress must be a function of (done, total), got "
                             f"{type(progress).__name__} {progress!r}", param="progress")
        out = outputs.check_writable(out) if out is not None else None
        if out is not None and plots:
            try:
                import matplotlib  # noqa: F401
            except ModuleNotFoundError as e:
                raise ModuleNotFoundError("plots need matplotlib: pip install 'vardist[study]' "
                                          "(or run(out, plots=False))") from e
        runner = _RayRunner(self) if self.engine == "ray" else _LocalRunner(self)
        t0 = time.perf_counter()
        try:
            rows, images, stats = self._sweep(runner, progress)
        finally:
            runner.close()
        stats["seconds"] = time.perf_counter() - t0
        table, summary = self._tables(rows, images)
        res = StudyResults(table, summary, images, stats)
        if out is not None:
            res.paths = self._write(out, res, layouts, plots)
        return res

    # The sweep: pools at the largest n, selection per setting, one continuation per distinct
    # (item, pool, token map) a setting keeps or reranks; then rewards, then each rerank's pick.
    def _sweep(self, runner: "_Runner", progress: Callable[[int, int], None] | None = None
               ) -> tuple[list[dict], dict[int, np.ndarray], dict]:
        cache: dict[tuple, int] = {}   # (pool key, item index, candidate map bytes) -> image key
        images: dict[int, np.ndarray] = {}
        rows: list[dict] = []
        finishing: list[tuple[list[int], Callable[[], np.ndarray]]] = []  # (image keys, result)
        stats = {"settings": len(self.settings), "items": len(self.items), "pools": 0,
                 "candidates_drawn": 0, "continuations": 0, "selections": 0, "scored": 0,
                 "searches": 0, "pool_seconds": 0.0, "select_seconds": 0.0,
                 "finish_seconds": 0.0, "score_seconds": 0.0, "search_seconds": 0.0}
        batches = canonical_batches(self.items, self.batch_size)
        groups = self.pool_groups()
        total = len(self.items) * (len(groups) + sum(s.multiscale for s in self.settings))
        done = [0]

        def advance(units: int) -> None:
            done[0] += units
            if progress:
                progress(done[0], total)

        if progress:
            progress(0, total)
        searching = self._search(runner, batches, rows, images, stats, advance)
        tasks = [(key, group, batch) for key, group in groups.items() for batch in batches]
        draw = [_draw_settings(group) for _, group, _ in tasks]
        for (key, group, batch), pool in zip(tasks, runner.pools(
                [(batch, s) for (_, _, batch), s in zip(tasks, draw)])):
            stats["pools"] += len(batch)
            stats["candidates_drawn"] += len(batch) * pool.codes.shape[1]
            stats["pool_seconds"] += pool.seconds
            seeds = [it.seed for it in batch]
            todo: dict[tuple, tuple[int, int]] = {}   # new cache key -> (batch row, candidate)
            t0 = time.perf_counter()
            for s in group:
                codes = pool.codes[:, :s.pool_size]
                choices = pipeline.select_batch(codes, pool.embed, seeds, s.search_settings(),
                                                keep_density=s.rerank > 0)  # rerank's ties
                stats["selections"] += len(batch)
                for b, (it, ch) in enumerate(zip(batch, choices)):
                    # rerank: the first K of the shortlist, as engine.rerank finishes them
                    cands = ch.shortlist[:s.rerank] if s.rerank else [ch.index]
                    keys = []
                    for j in cands:
                        ck = (key, it.index, codes[b, j].tobytes())
                        if ck not in cache:
                            cache[ck] = len(cache)
                            todo[ck] = (b, j)
                        keys.append(cache[ck])
                    row = _row(s, it, ch, keys[0])
                    if s.rerank:
                        row["_rerank"] = (ch, keys)  # decided once the rewards are in
                    rows.append(row)
            stats["select_seconds"] += time.perf_counter() - t0
            # Finish the new distinct choices in chunks of finish_batch (the same item may
            # appear with several choices: each row is its own continuation).
            pending = list(todo.items())
            for i in range(0, len(pending), self.finish_batch):
                part = pending[i:i + self.finish_batch]
                rows_b = np.array([b for _, (b, _) in part])
                t0 = time.perf_counter()
                finishing.append(([cache[ck] for ck, _ in part], runner.finish(
                    [batch[b] for b in rows_b], group[0].search_settings(),
                    [m[rows_b] for m in pool.prefix],
                    pool.codes[rows_b, [j for _, (_, j) in part]])))
                stats["finish_seconds"] += time.perf_counter() - t0
                stats["continuations"] += len(part)
            advance(len(batch))
        for image_keys, result in finishing:
            images.update(zip(image_keys, result()))
        searching()
        self._verify(rows, images, stats)
        for r in rows:  # one-scale rows' compute, once rerank has decided their continuations
            if r["forward_tokens"] is None:
                st = r["_settings"]
                r.update(pipeline.one_scale_compute(
                    runner.positions, st.scale, r["continuations"], len(r["reranked"]),
                    bool(st.verifier)))
        stats["continuations_separately"] = sum(r["continuations"] for r in rows)
        return rows, images, stats

    # Search schedules (multi-scale): each setting searches every canonical batch itself, as
    # vardist.search(search=) does (same batches, same replica threads: the same bytes); its
    # images are its own (no cache: another schedule's token maps reached another way could
    # differ by a level), and the verifier that guided it gave the kept image's reward.
    def _search(self, runner: "_Runner", batches: Sequence[list[WorkItem]], rows: list[dict],
                images: dict[int, np.ndarray], stats: dict,
                advance: Callable[[int], None]) -> Callable[[], None]:
        """Start every multi-scale setting's batches; the call collects them into rows and
        images (keys after the one-scale images', so those keep their numbering)."""
        started = []
        t0 = time.perf_counter()  # the local runner searches here, the Ray one on its actors
        for s in (s for s in self.settings if s.multiscale):
            for batch in batches:
                started.append((s, batch, runner.search(batch, s.search_settings(), s.search,
                                                        s.verifier)))
                stats["searches"] += len(batch)
                if runner.eager:  # searched just now (the local runner): count it now
                    advance(len(batch))
        stats["search_seconds"] += time.perf_counter() - t0

        def collect() -> None:
            key = max(images, default=-1) + 1
            for s, batch, result in started:
                t0 = time.perf_counter()
                batch_images, choices = result()
                stats["search_seconds"] += time.perf_counter() - t0
                for it, image, ch in zip(batch, batch_images, choices):
                    images[key] = image
                    row = _row(s, it, ch, key)
                    row.update(lineage=ch.lineage, **ch.compute)
                    if s.verifier:
                        row["_reward"] = ch.reward  # scored by the verifier that searched
                    rows.append(row)
                    key += 1
                if not runner.eager:  # searched on the actors: done when collected
                    advance(len(batch))
        return collect

    def _verify(self, rows: list[dict], images: dict[int, np.ndarray], stats: dict) -> None:
        """Each verifier scores each image it is asked about once; rerank rows keep their
        best candidate (engine.rerank.keep_best: search()'s rule), every row with a verifier
        gets the kept image's reward."""
        from vardist.engine.rerank import keep_best

        conds = {it.index: it.condition for it in self.items}
        wanted: dict[str, dict[int, Any]] = {}   # verifier -> image key -> condition
        self._rewards = {}
        for r in rows:
            v = r["_settings"].verifier
            if v and "_reward" in r:  # a schedule's kept image, already scored
                self._rewards.setdefault(v, {})[r["image_key"]] = r.pop("_reward")
            elif v:
                keys = r["_rerank"][1] if "_rerank" in r else [r["image_key"]]
                wanted.setdefault(v, {}).update((k, conds[r["item"]]) for k in keys)
        t0 = time.perf_counter()
        for v, todo in wanted.items():
            keys = list(todo)
            vals = self._scorers[v].compute(np.stack([images[k] for k in keys]),
                                            [todo[k] for k in keys])
            self._rewards.setdefault(v, {}).update(
                zip(keys, np.asarray(vals, np.float64).tolist()))
            stats["scored"] += len(keys)
        stats["score_seconds"] += time.perf_counter() - t0
        for r in rows:
            v = r["_settings"].verifier
            if "_rerank" in r:
                ch, keys = r.pop("_rerank")
                kept = keep_best(ch, ch.shortlist[:len(keys)], [self._rewards[v][k] for k in keys])
                r.update(chosen=kept.index, density_chosen=kept.density_chosen,
                         image_key=keys[kept.reranked.index(kept.index)], reward=kept.reward,
                         reranked=kept.reranked, rerank_rewards=kept.rewards,
                         continuations=kept.continuations)
            elif v:
                r["reward"] = self._rewards[v][r["image_key"]]

    def _tables(self, rows: list[dict], images: dict[int, np.ndarray]) -> tuple[pa.Table, pa.Table]:
        ids = {s: f"s{i:03d}" for i, s in enumerate(self.settings)}
        conds = {it.index: it.condition for it in self.items}
        order = {s: i for i, s in enumerate(self.settings)}
        rows.sort(key=lambda r: (order[r["_settings"]], r["item"]))  # setting-major, item order
        for r in rows:
            r["setting"] = ids[r.pop("_settings")]
        # Per-image metrics once per distinct kept image (a verifier's rewards reused); set
        # metrics per setting.
        owner = {}
        for r in rows:
            owner.setdefault(r["image_key"], conds[r["item"]])
        rewards = self._rewards
        per_image = {}
        for m in self.metrics:
            if not m.per_image:
                continue
            known = rewards.get(m.name, {}) if isinstance(m, VerifierMetric) else {}
            keys = sorted(k for k in owner if k not in known)
            vals = dict(known)
            if keys:
                vals.update(zip(keys, np.asarray(m.compute(
                    np.stack([images[k] for k in keys]), [owner[k] for k in keys]), np.float64)))
            per_image[m.name] = vals
        for r in rows:
            for name, vals in per_image.items():
                r[name] = float(vals[r["image_key"]])
        table = pa.Table.from_pylist(rows)
        summary = []
        for s in self.settings:
            mine = [r for r in rows if r["setting"] == ids[s]]
            row = {"setting": ids[s], **asdict(s), "items": len(mine),
                   "distinct_images": len({r["image_key"] for r in mine}),
                   # what this setting costs alone: 1 per image, up to K with rerank
                   "continuations_per_image": float(np.mean([r["continuations"] for r in mine])),
                   "reward_mean": float(np.mean([r["reward"] for r in mine]))
                   if s.verifier else float("nan"),
                   "density_chosen_mean": float(np.nanmean([r["density_chosen"] for r in mine]))
                   if s.strategy != "none" and not s.multiscale else float("nan"),
                   # compute per image, as the run log counts it (score vs compute)
                   **{f"{k}_per_image": float(np.mean([r[k] for r in mine]))
                      for k in COMPUTE_COLUMNS}}
            for m in self.metrics:
                if m.per_image:
                    row[m.name] = float(np.mean([r[m.name] for r in mine]))
                else:
                    row[m.name] = float(m.compute(np.stack([images[r["image_key"]] for r in mine]),
                                                  [conds[r["item"]] for r in mine]))
            summary.append(row)
        return table, pa.Table.from_pylist(summary)

    def _write(self, out: Path, res: StudyResults, layouts: bool, plots: bool) -> dict[str, Path]:
        paths = {"rows": out / ROWS_FILE, "summary": out / SUMMARY_FILE,
                 "config": out / CONFIG_FILE}
        items = {it.index: it for it in self.items}
        key_path = {}
        for r in res.rows.to_pylist():
            it = items[r["item"]]
            key_path.setdefault(r["image_key"], f"continuations/{it.condition_index:05d}_"
                                                f"{it.sample_index:04d}_{r['image_key']:06d}.png")
        for k, rel in key_path.items():
            outputs.save_png(out / rel, res.images[k])
        rows = res.rows.append_column("image", pa.array([key_path[k] for k in
                                                         res.rows["image_key"].to_pylist()]))
        res.rows = rows
        pq.write_table(rows, paths["rows"])
        pq.write_table(res.summary, paths["summary"])
        if layouts:
            for r in rows.to_pylist():
                it = items[r["item"]]
                dest = out / "settings" / r["setting"] / outputs.image_relpath(
                    self.condition_kind, it.condition_index, it.sample_index)
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.unlink(missing_ok=True)
                try:
                    os.link(out / r["image"], dest)
                except OSError:  # no hard links on this file system
                    shutil.copyfile(out / r["image"], dest)
            for sid in res.summary["setting"].to_pylist():
                for ci, line in self.prompt_lines.items():
                    outputs.write_prompt_metadata(out / "settings" / sid, ci, line)
        if plots:
            for m in self.metrics:
                paths[f"plot_{m.name}"] = plot(res.summary, m.name, out / f"{m.name}_vs_n.png")
                if len({s.rerank for s in self.settings}) > 1:  # quality against compute
                    paths[f"plot_{m.name}_compute"] = plot(
                        res.summary, m.name, out / f"{m.name}_vs_continuations.png",
                        x="continuations_per_image")
                if len({s.search for s in self.settings}) > 1:  # schedules at equal compute
                    paths[f"plot_{m.name}_tokens"] = plot(
                        res.summary, m.name, out / f"{m.name}_vs_forward_tokens.png",
                        x="forward_tokens_per_image")
        config = {"model": self.model if isinstance(self.model, str) else type(self.model).__name__,
                  "sweep": self.sweep, "seed": self.seed, "batch_size": self.batch_size,
                  "engine": self.engine, "metrics": [m.name for m in self.metrics],
                  "verifier_weights": str(self.verifier_weights) if self.verifier_weights
                  else None,
                  "condition_kind": self.condition_kind,
                  "conditions": sorted({str(it.condition) for it in self.items}),
                  "samples": sorted({it.sample_index for it in self.items}), "stats": res.stats}
        outputs.atomic_write_bytes(paths["config"], json.dumps(config, indent=1).encode())
        return paths


def _collapse(s: SearchSettings, sweep: dict) -> SearchSettings:
    """Knobs the setting's strategy ignores take their first swept value, so "top-k x 3
    alphas" is one setting, not three identical ones."""
    return replace(s, **{k: sweep[k][0] for k in _SELECTION_KEYS
                         if k in sweep and k not in USES[s.strategy]})


def _draw_settings(group: Sequence[StudySetting]) -> SearchSettings:
    """Settings that draw the group's largest pool (any non-"none" strategy draws n)."""
    n = max(s.pool_size for s in group)
    return replace(group[0].search_settings(), n=n, strategy="none" if n == 1 else "top-k")


def _row(s: SearchSettings, it: WorkItem, ch: pipeline.Choice, image_key: int) -> dict:
    return {"_settings": s, **{k: getattr(s, k) for k in SWEEP_KEYS}, "item": it.index,
            "condition_index": it.condition_index, "condition": str(it.condition),
            "sample_index": it.sample_index, "seed": it.seed, "chosen": ch.index,
            "branch": ch.branch, "shortlist": len(ch.shortlist), "density_max": ch.density_max,
            "density_mean": ch.density_mean, "density_chosen": ch.density_chosen,
            "image_key": image_key, "reward": None, "reranked": [], "rerank_rewards": [],
            "continuations": 1, "lineage": None, **dict.fromkeys(COMPUTE_COLUMNS)}


def progress_lines(label: str = "study", every: float = 30.0,
                   stream: Any = None) -> Callable[[int, int], None]:
    """A `progress` callback for Study.run that prints "label: done/total (pct), elapsed" at
    most every `every` seconds and at the end, one line each (readable in a log file, where a
    redrawn bar is not)."""
    import sys

    t0, last = time.perf_counter(), [-float("inf")]

    def report(done: int, total: int) -> None:
        now = time.perf_counter()
        if done < total and now - last[0] < every:
            return
        last[0] = now
        pct = 100.0 * done / total if total else 100.0
        print(f"{label}: {done}/{total} ({pct:.0f}%), {now - t0:.0f} s",
              file=stream or sys.stderr, flush=True)
    return report


def plot(summary: pa.Table, metrics: str | Sequence[str], path: str | Path,
         x: str = "n") -> Path:
    """metric vs n (log axis), one line per strategy (and per value of any other swept knob the
    strategy uses); several metrics give one panel each. x="continuations_per_image" plots
    quality against compute instead (a rerank sweep: one line per strategy and n);
    x="forward_tokens_per_image" against forward tokens (a search-schedule sweep: one line per
    strategy, each point labelled with its schedule)."""
    if x not in PLOT_X:
        raise ValueError(f"plot x must be one of {', '.join(PLOT_X)}, got {x!r}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [metrics] if isinstance(metrics, str) else list(metrics)
    rows = summary.to_pylist()
    along = (_PLOT_AXES[x][0], "strategy")  # the x axis, the lines
    varying = [k for k in SWEEP_KEYS if k not in along and len({r[k] for r in rows}) > 1]
    cols = min(len(metrics), 2)
    nrows = -(-len(metrics) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(6 * cols, 4 * nrows), squeeze=False)
    for ax, metric in zip(axes.flat, metrics):
        lines: dict[str, list[tuple[float, float, str]]] = {}
        for r in rows:
            shown = [k for k in varying if k not in _SELECTION_KEYS or k in USES[r["strategy"]]]
            label = ", ".join([r["strategy"]] + [f"{k}={r[k]}" for k in shown])
            lines.setdefault(label, []).append((r[x], r[metric], r["search"] or "one-scale"))
        for label, pts in lines.items():
            pts.sort(key=lambda p: p[:2])
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
            if x == "forward_tokens_per_image":  # which schedule each point is
                for px, py, note in pts:
                    ax.annotate(note, (px, py), fontsize=6, xytext=(3, 3),
                                textcoords="offset points")
        ax.set_xscale("log")
        ax.set_xlabel(_PLOT_AXES[x][1])
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(metrics):]:
        ax.set_visible(False)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --- engines ------------------------------------------------------------------------------

@dataclass
class _Pool:
    prefix: list[np.ndarray]
    codes: np.ndarray
    embed: CodeTable      # embeddings of the pool's distinct codes (one model call per pool)
    seconds: float


class _Runner(Protocol):
    eager: bool  # search() runs before it returns (local), or on actors until collected (Ray)

    def pools(self, tasks: list[tuple[list[WorkItem], SearchSettings]]) -> Iterator[_Pool]: ...

    def finish(self, items: list[WorkItem], settings: SearchSettings, prefix: list[np.ndarray],
               chosen: np.ndarray) -> Callable[[], np.ndarray]:
        """Start continuing `items` from prefix + chosen; the call returns their images."""

    def search(self, items: list[WorkItem], settings: SearchSettings, schedule: str,
               verifier: str | None) -> Callable[[], tuple[np.ndarray, list]]:
        """Start a search across scales of `items` (engine.multiscale, guided by `verifier`);
        the call returns their images and choices."""

    def close(self) -> None: ...


class _LocalRunner:
    """Everything in this process, pool by pool (memory: one pool at a time)."""

    eager = True

    def __init__(self, study: Study) -> None:
        from vardist.models import registry

        model = study.model if isinstance(study.model, ScaleWiseGenerator) else \
            registry.load(study.model, study.weights, study.device)
        for job in study._jobs:
            _check_loaded(model, job)
        self.model = model
        self.code_ndim = len(model.code_shape)
        self.positions = pipeline.model_positions(model)
        self.verifier_weights = study.verifier_weights
        self._verify: dict[str, Any] = {}  # a schedule's verifier, loaded once beside the model

    def pools(self, tasks):
        embed = pipeline.embedder(self.model)
        for batch, s in tasks:
            pool = pipeline.prefix_and_pool(self.model, batch, s)
            yield _Pool(pool.prefix, pool.codes, CodeTable.build(pool.codes, self.code_ndim, embed),
                        pool.seconds)

    def finish(self, items, settings, prefix, chosen):
        images = pipeline.continue_batch(self.model, items, settings, prefix, chosen)[0]
        return lambda: images

    def search(self, items, settings, schedule, verifier):
        from vardist.engine import multiscale, rerank
        from vardist.engine.schedule import parse_search

        if verifier is not None and verifier not in self._verify:  # as search() loads it
            self._verify[verifier] = rerank.load_verify(
                (verifier, str(self.verifier_weights) if self.verifier_weights else None, 0),
                self.model)
        with pipeline.replica_threads():  # search()'s threads: its bytes
            images, _, choices = multiscale.search_batch(
                self.model, items, settings, parse_search(schedule, self.model.num_scales),
                self._verify.get(verifier), pipeline.embedder(self.model))
        return lambda: (images, choices)

    def close(self) -> None:
        pass


class _RayRunner:
    """The Ray engine's generator actors (vardist.engine.ray.Generator): every pool is drawn
    on the actors at once, selection runs on the driver (select_on is not used), continuations
    go back to the actors; a search schedule's batch is one actor `search` call, as in
    search(), guided by the one verifier the actors hold (Study refuses schedules with several
    verifiers on Ray). A lost actor fails the study (search()'s actor replacement is not
    wired in here: rerun it)."""

    eager = False

    def __init__(self, study: Study) -> None:
        import ray

        from vardist.engine import ray as ray_engine

        # engine_options also holds the settings fixed for every setting (n=, cfg=, ...)
        ray_fields = {f.name for f in fields(ray_engine.RayOptions)}
        opts = replace(ray_engine.RayOptions(), **{k: v for k, v in study.engine_options.items()
                                                   if k in ray_fields})
        opts.check()
        # as search(): --address, else $RAY_ADDRESS, else an instance of our own
        self.ray, self.started = ray, ray_engine.connect(opts)
        model = study.model if isinstance(study.model, str) else ray.put(study.model)
        fp = ray_engine.model_footprint(study.model)
        n, bundle, threads = ray_engine.actors_for(ray, opts, fp, study.device, self.started)
        v = study._search_verifier  # loaded beside each replica, for search calls only
        verify = (v, str(study.verifier_weights) if study.verifier_weights else None, 0) \
            if v is not None else None
        self.actors = ray_engine._ActorSet(ray, ray.remote(ray_engine.Generator),
                                           (model, study.weights, study.device, threads,
                                            verify), n,
                                           bundle, 0, opts.placement_timeout_s,
                                           opts.report_every_s)
        self.next = 0
        self.positions = ray.get(self.actors.handles[0].info.remote())["positions"]

    def _actor(self):
        self.next += 1
        return self.actors.handles[self.next % len(self.actors.handles)]

    def pools(self, tasks):
        refs = [self._actor().pool.remote(batch, s) for batch, s in tasks]
        for ref in refs:
            msg = self.ray.get(ref)
            yield _Pool([p.unpack() for p in msg.prefix], msg.codes.unpack(), msg.table,
                        msg.seconds)

    def finish(self, items, settings, prefix, chosen):
        from vardist.engine.ray import Packed

        ref = self._actor().finish.remote(items, settings, [Packed.pack(p) for p in prefix],
                                          Packed.pack(chosen), False)  # arrays, not PNGs
        return lambda: self.ray.get(ref).images

    def search(self, items, settings, schedule, verifier):
        ref = self._actor().search.remote(items, settings, schedule, False)  # arrays

        def result():
            msg = self.ray.get(ref)
            return msg.images, msg.choices
        return result

    def close(self) -> None:
        self.actors.close()
        if self.started:
            self.ray.shutdown()
