"""The Ray engine: generator actors (one model replica per GPU, or per CPU slot) draw pools and
finish images; the driver plans, selects and writes.

    driver                                   actors (any actor can take any task)
    canonical batches --pool(batch)------->  prefix r_0..r_{k-1} + n candidates r_k
    select per item  <---compact codes-----  (numpy through the object store)
                     --finish(batch, maps)->  teacher-forced re-entry (model.resume), the
    write images     <---uint8 images------  remaining scales, decode

Why this shape: the prefix is under 1% of an image, so a continuation rebuilds its state from
the token maps instead of pinning a KV cache to the actor that drew the pool. Tasks are then
pure functions of (batch, maps): any actor can run them, a task lost with its actor is simply
submitted again, and the images do not depend on the number of actors or on which one ran what.
Batches are the plan's canonical batches, so every image is computed in the same company.

Flow control: each actor has at most `depth` tasks queued (so it never idles while the driver
selects), finishing work goes before new pools (so finished images leave the driver quickly), and
the driver holds only the pools and images of in-flight batches: memory is bounded by
actors x depth batches whatever the run's size.
"""

from __future__ import annotations

import os
import time
import uuid
from collections import deque
from dataclasses import dataclass, fields, replace
from typing import Any, Callable

import numpy as np

@dataclass(frozen=True)
class RayOptions:
    """How the run is spread. actors None: one per GPU, or one CPU actor where there are none."""

    address: str | None = None   # None: a local Ray instance; "auto"; "ray://HOST:PORT"
    actors: int | None = None
    cpus_per_actor: float = 1.0  # CPU actors only; also the actor's torch thread count
    depth: int = 2               # tasks queued per actor
    max_replacements: int | None = None  # actors replaced before the run gives up (None: 2 x actors)
    placement_timeout_s: float = 600.0   # wait this long for the cluster to fit every actor

    def check(self) -> None:
        from vardist.io.conditions import InputError

        if self.actors is not None and self.actors < 1:
            raise InputError(f"actors must be >= 1, got {self.actors}", param="actors")
        if self.cpus_per_actor <= 0:
            raise InputError(f"cpus_per_actor must be > 0, got {self.cpus_per_actor}",
                             param="cpus_per_actor")
        if self.depth < 1:
            raise InputError(f"depth must be >= 1, got {self.depth}", param="depth")
        a = self.address
        if a is not None and a != "auto" and not (a.startswith("ray://") or ":" in a):
            raise InputError(f"address {a!r} is not a Ray address; use auto, HOST:PORT or "
                             f"ray://HOST:PORT (leave it out for a local Ray instance)",
                             param="address")


# --- compact transport --------------------------------------------------------------------
# Pools cross the object store as the smallest faithful numpy form: token ids as uint16 (or
# uint32), 0/1 bit codes packed 8 per byte. The selection stage measures candidates by their
# embeddings, which the driver cannot compute without the model, so the actor ships the
# embeddings of the distinct codes of the batch (a VAR pool of any n has at most 4096) and the
# driver looks them up.

@dataclass
class Packed:
    """An integer code array in compact form; `unpack()` restores it exactly."""

    data: np.ndarray
    dtype: str
    shape: tuple[int, ...]
    bits: bool  # 0/1 values along the last axis, packed with np.packbits

    @classmethod
    def pack(cls, a: np.ndarray) -> "Packed":
        a = np.asarray(a)
        if a.size == 0:
            return cls(a, a.dtype.str, a.shape, False)
        lo, hi = int(a.min()), int(a.max())
        if a.ndim and lo >= 0 and hi <= 1 and a.shape[-1] % 8 == 0 and a.shape[-1] > 1:
            return cls(np.packbits(a.astype(np.uint8), axis=-1), a.dtype.str, a.shape, True)
        small = next((t for t in (np.uint8, np.uint16, np.uint32)
                      if lo >= 0 and hi <= np.iinfo(t).max), a.dtype)
        return cls(a.astype(small), a.dtype.str, a.shape, False)

    def unpack(self) -> np.ndarray:
        a = np.unpackbits(self.data, axis=-1) if self.bits else self.data
        return a.astype(np.dtype(self.dtype)).reshape(self.shape)

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes)


def _keys(codes: np.ndarray, code_ndim: int) -> np.ndarray:
    """One sortable key per position: the code itself for ids, the row's bytes for vectors."""
    if code_ndim == 0:
        return codes.reshape(-1)
    rows = np.ascontiguousarray(codes.reshape(-1, int(np.prod(codes.shape[-code_ndim:]))))
    return rows.view(np.dtype((np.void, rows.dtype.itemsize * rows.shape[1]))).reshape(-1)


@dataclass
class CodeTable:
    """Embeddings of the distinct codes of a pool, as a numpy `embed` function: the driver
    measures candidates without the model. code_ndim: len(model.code_shape)."""

    codes: np.ndarray   # [U, *code_shape], sorted by key
    vectors: np.ndarray  # [U, d] float32
    code_ndim: int

    @classmethod
    def build(cls, codes: np.ndarray, code_ndim: int,
              embed: Callable[[np.ndarray], np.ndarray]) -> "CodeTable":
        keys = _keys(codes, code_ndim)
        _, first = np.unique(keys, return_index=True)  # sorted by key
        flat = codes.reshape(-1, *codes.shape[codes.ndim - code_ndim:])
        uniq = flat[first]
        return cls(uniq, embed(uniq[None])[0].astype(np.float32, copy=False), code_ndim)

    def __call__(self, codes: np.ndarray) -> np.ndarray:
        lead = codes.shape[:codes.ndim - self.code_ndim]
        pos = np.searchsorted(_keys(self.codes, self.code_ndim), _keys(codes, self.code_ndim))
        return self.vectors[pos].reshape(*lead, self.vectors.shape[-1])


@dataclass
class PoolMsg:
    """What an actor returns for a batch's pool: compact, numpy only."""

    prefix: list[Packed]
    codes: Packed         # [B, n, P, *code_shape]
    table: CodeTable
    seconds: float


# --- the generator actor ------------------------------------------------------------------

class Generator:
    """One model replica. Stateless between calls: every task carries what it needs."""

    def __init__(self, model: Any, weights: str | None, device: str | None,
                 threads: int | None) -> None:
        import torch

        if threads:
            torch.set_num_threads(threads)
        if isinstance(model, str):
            from vardist.models import registry

            model = registry.load(model, weights, device)
        self.model = model
        self.code_ndim = len(model.code_shape)

    def pool(self, items: list, settings: Any) -> PoolMsg:
        from vardist.engine import pipeline

        pool = pipeline.prefix_and_pool(self.model, items, settings)
        table = CodeTable.build(pool.codes, self.code_ndim, pipeline.embedder(self.model))
        return PoolMsg([Packed.pack(m) for m in pool.prefix], Packed.pack(pool.codes), table,
                       pool.seconds)

    def finish(self, items: list, settings: Any, prefix: list[Packed], chosen: Packed
               ) -> tuple[np.ndarray, list[np.ndarray], float]:
        from vardist.engine import pipeline

        t0 = time.perf_counter()
        images, maps = pipeline.continue_batch(self.model, items, settings,
                                               [p.unpack() for p in prefix], chosen.unpack())
        return images, [Packed.pack(m) for m in maps], time.perf_counter() - t0

    def pid(self) -> int:
        return os.getpid()


# --- the driver ---------------------------------------------------------------------------

@dataclass
class _Task:
    kind: str                 # "pool" or "finish"
    bi: int                   # canonical batch index
    batch: list               # its work items
    args: tuple               # finish: (prefix, chosen); pool: ()
    choices: list | None = None
    pool_seconds: float = 0.0


class _ActorSet:
    """N generator actors, each in its own placement-group bundle; a dead one is replaced in
    its bundle (up to a budget, so a model that cannot load does not loop forever)."""

    def __init__(self, ray: Any, cls: Any, init: tuple, n: int, bundle: dict[str, float],
                 budget: int, timeout_s: float) -> None:
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        self.ray, self.cls, self.init, self.budget = ray, cls, init, budget
        self.tag = uuid.uuid4().hex[:8]  # actor names: vardist-<run tag>-<slot>.<generation>
        self.generation = [0] * n
        self.pg = placement_group([dict(bundle)] * n, strategy="PACK")
        ready, _ = ray.wait([self.pg.ready()], timeout=timeout_s)
        if not ready:
            ray.util.remove_placement_group(self.pg)
            from vardist.io.conditions import InputError

            raise InputError(
                f"the Ray cluster cannot place {n} generator actors of {bundle} each within "
                f"{timeout_s:.0f} s (cluster resources: {ray.cluster_resources()}); lower "
                f"--actors or add nodes", param="actors")
        self._strategy = lambda i: PlacementGroupSchedulingStrategy(
            self.pg, placement_group_bundle_index=i)
        self.handles = [self._spawn(i) for i in range(n)]
        self.replaced = 0

    def _spawn(self, i: int) -> Any:
        # No Ray-side restarts: whether the process crashed or was killed, the driver sees
        # RayActorError for every call the actor held, replaces it and resubmits those calls.
        return self.cls.options(
            name=f"vardist-{self.tag}-{i}.{self.generation[i]}",
            scheduling_strategy=self._strategy(i), max_restarts=0).remote(*self.init)

    def replace(self, slot: int, dead: Any, error: BaseException) -> None:
        if self.handles[slot] is not dead:  # another of its tasks already triggered this
            return
        self.replaced += 1
        if self.replaced > self.budget:
            raise RuntimeError(f"generator actors died {self.replaced} times (budget "
                               f"{self.budget}); last error: {error}") from error
        try:
            self.ray.kill(dead, no_restart=True)
        except Exception:  # already gone
            pass
        self.generation[slot] += 1
        self.handles[slot] = self._spawn(slot)

    def close(self) -> None:
        for h in self.handles:
            try:
                self.ray.kill(h, no_restart=True)
            except Exception:
                pass
        self.ray.util.remove_placement_group(self.pg)


def _actor_shape(ray: Any, opts: RayOptions) -> tuple[int, dict[str, float], int | None]:
    """(number of actors, resources of one, torch threads): one actor per GPU where the cluster
    has GPUs, else CPU actors of cpus_per_actor each."""
    gpus = int(ray.cluster_resources().get("GPU", 0))
    if gpus:
        return opts.actors or gpus, {"GPU": 1.0, "CPU": 1.0}, None
    return (opts.actors or 1, {"CPU": float(opts.cpus_per_actor)},
            max(1, int(opts.cpus_per_actor)))


def run(job: Any, model: Any = None, recorder: Any = None, progress: Any = None, *,
        options: RayOptions | None = None, **overrides: Any) -> Any:
    """Run `job` on Ray. Same contract as `vardist.engine.local.run` (results in item order,
    outputs through `recorder`), plus where to run, as RayOptions fields (`options` and/or
    keyword overrides): address None starts a local Ray instance (stopped at the end), "auto"
    or "ray://HOST:PORT" joins a cluster; actors None puts one generator actor on every GPU
    (one CPU actor where there are none).

    model: a loaded model is shipped to the actors through the object store (fine for small
    models); None makes every actor load `job.model` by name from `job.weights` on its own
    device (the way for real checkpoints: nothing heavy passes through the driver). The
    returned results carry `.stats` (actors, replaced, redone)."""
    import ray

    from vardist.engine import pipeline
    from vardist.engine.results import Recorder, Result, SearchResults

    known = {f.name for f in fields(RayOptions)}
    for key in overrides:
        if key not in known:
            from vardist.io.conditions import InputError

            raise InputError(f"unknown Ray engine option {key!r}; known: {', '.join(sorted(known))}",
                             param=key)
    opts = replace(options or RayOptions(), **{k: v for k, v in overrides.items() if v is not None})
    opts.check()
    recorder = recorder or Recorder(job, {})
    total = len(job.items)
    results: dict[int, Result] = {}
    todo_batches, skipped = [], []
    for bi, batch in enumerate(job.batches()):
        todo = recorder.todo(batch)
        if todo:
            todo_batches.append((bi, batch))
        skipped += [it for it in batch if it not in todo]
    for r in recorder.earlier(skipped):
        results[r.item.index] = r
    if progress:
        progress(len(results), total)
    if not todo_batches:
        recorder.close()
        return SearchResults(results[i] for i in sorted(results))

    started = not ray.is_initialized()
    if started:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        ray.init(address=opts.address, logging_level="WARNING", log_to_driver=False)
    src = job.model if model is None else model
    model_arg = src if isinstance(src, str) else ray.put(src)  # put once, shared by all actors
    n, bundle, threads = _actor_shape(ray, opts)
    cls = ray.remote(Generator)
    pool = _ActorSet(ray, cls, (model_arg, job.weights, job.device, threads), n, bundle,
                     opts.max_replacements if opts.max_replacements is not None else 2 * n,
                     opts.placement_timeout_s)
    settings = job.settings
    try:
        waiting = deque(_Task("pool", bi, batch, ()) for bi, batch in todo_batches)
        finishing: deque[_Task] = deque()
        inflight: dict[Any, tuple[_Task, int, Any]] = {}
        load = [0] * n
        redone = 0
        while waiting or finishing or inflight:
            # Fill every actor up to `depth`, finishing work first: it frees driver memory.
            while (finishing or waiting) and min(load) < opts.depth:
                slot = load.index(min(load))
                task = finishing.popleft() if finishing else waiting.popleft()
                h = pool.handles[slot]
                if task.kind == "pool":
                    ref = h.pool.remote(task.batch, settings)
                else:
                    ref = h.finish.remote(task.batch, settings, *task.args)
                inflight[ref] = (task, slot, h)
                load[slot] += 1
            first, rest = ray.wait(list(inflight), num_returns=1)
            ready = first + (ray.wait(rest, num_returns=len(rest), timeout=0)[0] if rest else [])
            for ref in ready:
                task, slot, h = inflight.pop(ref)
                load[slot] -= 1
                try:
                    out = ray.get(ref)
                except ray.exceptions.RayActorError as e:  # lost with its actor: redo it
                    pool.replace(slot, h, e)
                    redone += 1
                    (waiting if task.kind == "pool" else finishing).appendleft(task)
                    continue
                if task.kind == "pool":
                    codes = out.codes.unpack()
                    choices = pipeline.select_batch(codes, out.table, [it.seed for it in task.batch],
                                                    settings, keep_density=job.log_candidates)
                    chosen = codes[np.arange(len(choices)), [c.index for c in choices]]
                    finishing.append(_Task("finish", task.bi, task.batch,
                                           (out.prefix, Packed.pack(chosen)), choices, out.seconds))
                else:
                    images, maps, secs = out
                    for r in recorder.record(task.bi, task.batch, task.choices, images,
                                             [m.unpack() for m in maps], task.pool_seconds, secs):
                        results[r.item.index] = r
                    if progress:
                        progress(len(results), total)
        recorder.close()
    finally:
        pool.close()
        if started:
            ray.shutdown()
    out = SearchResults(results[i] for i in sorted(results))
    out.stats = {"actors": n, "replaced": pool.replaced, "redone": redone}
    return out
