"""The Ray engine: generator actors (one model replica per GPU, or per CPU slot) draw pools and
finish images; a selection stage picks the candidates; the driver plans, dispatches and writes.

    driver                                   actors (any actor can take any call)
    canonical batches --pool(batch)------->  prefix r_0..r_{k-1} + n candidates r_k
                      <--compact codes-----  (numpy through the object store)
    selection (a 1-CPU Ray task reading the pool where it lies, or the driver itself)
                      --finish(batch, maps)> teacher-forced re-entry (model.resume), the
    write PNG bytes   <--PNG bytes---------  remaining scales, decode, PNG encoding

A search across scales (`job.search`, engine.multiscale) is one `search(batch)` call per batch
instead: its population's states stay in the actor from the first scale to the images.

Why this shape: the prefix is under 1% of an image, so a continuation rebuilds its state from
the token maps instead of pinning a KV cache to the actor that drew the pool. Calls are then
pure functions of (batch, maps): any actor can run them, a call lost with its actor is simply
submitted again (to a replacement actor), and the images do not depend on the number of actors
or on which one ran what. Batches are the plan's canonical batches, so every image is computed
in the same company; the shared stage functions of `vardist.engine.pipeline` do the work and
`vardist.engine.results.Recorder` writes, exactly as in the local engine.

Flow control: each actor has at most `depth` calls queued (so it never idles while a batch is
being selected), finishing goes before new pools (finished images leave memory first), and at
most actors x (depth + 1) batches are open at once, so the object store and the driver hold a
bounded amount whatever the run's size. The actors encode the PNGs (in parallel, on their own
CPUs: a 1024x1024 PNG takes ~0.4 s, which on the driver alone capped an 8-GPU run); the driver
only writes the bytes, on a helper thread. In-memory runs (no output folder) get the uint8
images and token maps instead.
"""

from __future__ import annotations

import itertools
import os
import socket
import sys
import time
import uuid
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, fields, replace
from typing import Any, Callable, Iterable

import numpy as np


@dataclass(frozen=True)
class RayOptions:
    """How the run is spread. actors None: one per GPU, or one CPU actor where there are none."""

    # None: $RAY_ADDRESS if set (Ray's convention), else a new local Ray instance; "auto";
    # "HOST:PORT"; "ray://HOST:PORT" (Ray Client)
    address: str | None = None
    actors: int | None = None
    cpus_per_actor: float = 1.0  # CPU actors only
    # torch threads per CPU actor. 1 by default: more actors beat more threads per actor, and
    # on a shared 2-core box 2 threads in one actor ran 10x slower (benchmarks/ray_scaling.py).
    threads: int = 1
    depth: int = 2               # tasks queued per actor
    max_replacements: int | None = None  # replacements before giving up (None: 2 x actors)
    placement_timeout_s: float = 600.0   # wait this long for the cluster to fit every actor
    report_every_s: float = 15.0         # while waiting, say what is missing this often
    connect_timeout_s: float = 10.0      # a cluster address that does not answer fails after this
    select_on: str = "auto"  # "driver", "tasks" (1-CPU Ray tasks), auto: tasks on GPU clusters

    def check(self) -> None:
        from vardist.io.conditions import InputError

        if self.actors is not None and self.actors < 1:
            raise InputError(f"actors must be >= 1, got {self.actors}", param="actors")
        if self.cpus_per_actor <= 0:
            raise InputError(f"cpus_per_actor must be > 0, got {self.cpus_per_actor}",
                             param="cpus_per_actor")
        if self.threads < 1:
            raise InputError(f"threads must be >= 1, got {self.threads}", param="threads")
        if self.select_on not in ("auto", "driver", "tasks"):
            raise InputError(f"select_on must be auto, driver or tasks, got {self.select_on!r}",
                             param="select_on")
        if self.depth < 1:
            raise InputError(f"depth must be >= 1, got {self.depth}", param="depth")
        for name in ("placement_timeout_s", "report_every_s", "connect_timeout_s"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and 0 < v < float("inf")):
                raise InputError(f"{name} must be a finite number of seconds > 0, got {v!r}",
                                 param=name)
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
        if a.ndim and lo >= 0 and hi <= 1 and a.shape[-1] > 1:  # any width: 32 (2B), 56 (8B)
            return cls(np.packbits(a.astype(np.uint8), axis=-1), a.dtype.str, a.shape, True)
        small = next((t for t in (np.uint8, np.uint16, np.uint32)
                      if lo >= 0 and hi <= np.iinfo(t).max), a.dtype)
        return cls(a.astype(small), a.dtype.str, a.shape, False)

    def unpack(self) -> np.ndarray:
        a = np.unpackbits(self.data, axis=-1, count=self.shape[-1]) if self.bits else self.data
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
    measures candidates without the model. code_ndim: len(model.code_shape). When the
    embedding is the code itself as floats (Infinity's bits), nothing is shipped: a pool of
    n = 3000 at scale 3 has nearly as many distinct bit rows as positions."""

    codes: np.ndarray | None    # [U, *code_shape], sorted by key; None: identity embedding
    vectors: np.ndarray | None  # [U, d] float32
    code_ndim: int

    @classmethod
    def build(cls, codes: np.ndarray, code_ndim: int,
              embed: Callable[[np.ndarray], np.ndarray]) -> "CodeTable":
        keys = _keys(codes, code_ndim)
        _, first = np.unique(keys, return_index=True)  # sorted by key
        flat = codes.reshape(-1, *codes.shape[codes.ndim - code_ndim:])
        uniq = flat[first]
        vectors = embed(uniq[None])[0].astype(np.float32, copy=False)
        if code_ndim == 1 and vectors.shape == uniq.shape and np.array_equal(vectors, uniq):
            return cls(None, None, code_ndim)
        return cls(uniq, vectors, code_ndim)

    def __call__(self, codes: np.ndarray) -> np.ndarray:
        if self.vectors is None:
            return codes.astype(np.float32)
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


@dataclass
class FinishMsg:
    """What an actor returns for a finished batch: PNG bytes when the run writes a folder (the
    driver only writes them; the maps are not needed there), else the arrays themselves."""

    pngs: list[bytes] | None      # outputs.png_bytes of each image
    images: np.ndarray | None     # uint8 [B, H, W, 3]
    maps: list[Packed]            # token maps of every scale (in-memory runs only)
    seconds: float                # continuation, decode and encoding
    choices: list | None = None   # with a verifier: the choices with rewards (engine.rerank)


# --- the generator actor ------------------------------------------------------------------

class Generator:
    """One model replica. Stateless between calls: every task carries what it needs.

    The methods are coroutines, so Ray runs the actor's calls concurrently on one event loop:
    model work goes to one "device" thread, in arrival order, and the CPU work of a call (PNG
    encoding, drawing the pool's uniforms) to a small pool beside it. A call's PNGs are then
    encoded while the next call computes, and a pool call draws its uniforms as soon as it
    arrives (while the device still runs the call before), off the device's critical path and
    with the same bytes. Memory stays bounded: the driver queues at most `depth` calls here."""

    CPU_THREADS = 2  # PNG encoding and uniforms (a 1024x1024 PNG: ~0.4 s, zlib drops the GIL)

    def __init__(self, model: Any, weights: str | None, device: str | None,
                 threads: int | None, verify: tuple | None = None) -> None:
        import torch

        from vardist.engine import pipeline

        # Every replica, in every engine, computes with the same intra-op thread count: CPU
        # float kernels split their sums by it, and the bytes would follow.
        self.threads = threads or pipeline.REPLICA_THREADS
        torch.set_num_threads(self.threads)
        self.load_error: Exception | None = None
        if isinstance(model, str):
            from vardist.models import registry
            from vardist.models.checkpoint import CheckpointError

            try:
                model = registry.load(model, weights, device)
            except CheckpointError as e:
                # A weights file refused or unreadable: every replacement would fail alike, so
                # the actor stays up and info() hands the error to the driver, once.
                self.load_error = e
                return
        self.model = model
        from vardist.engine import rerank
        from vardist.models.checkpoint import CheckpointError

        try:  # the verifier beside the model, on its device (rerank.verify_args)
            self.verify = rerank.load_verify(verify, model)
        except (FileNotFoundError, CheckpointError) as e:  # handed to the driver, as above
            self.load_error = e
            return
        self.code_ndim = len(model.code_shape)
        self._device = ThreadPoolExecutor(1, "vardist-device", initializer=torch.set_num_threads,
                                          initargs=(self.threads,))
        self._cpu = ThreadPoolExecutor(self.CPU_THREADS, "vardist-cpu")

    async def _on(self, executor: ThreadPoolExecutor, fn: Callable, *args: Any) -> Any:
        import asyncio

        return await asyncio.wrap_future(executor.submit(fn, *args))

    def _pool(self, items: list, settings: Any) -> PoolMsg:
        from vardist.engine import pipeline

        pool = pipeline.prefix_and_pool(self.model, items, settings)
        table = CodeTable.build(pool.codes, self.code_ndim, pipeline.embedder(self.model))
        return PoolMsg([Packed.pack(m) for m in pool.prefix], Packed.pack(pool.codes), table,
                       pool.seconds)

    async def pool(self, items: list, settings: Any) -> PoolMsg:
        """Prefix + pool of a batch, compact, with the embeddings of its distinct codes."""
        from vardist.engine import pipeline

        pipeline.prefetch_uniforms(self.model, items, settings, self._cpu)
        return await self._on(self._device, self._pool, items, settings)

    async def finish(self, items: list, settings: Any, prefix: list[Packed], chosen: Packed,
                     encode: bool, choices: list | None = None) -> FinishMsg:
        """The batch's images: encoded as PNGs (encode), else uint8 arrays with their maps.
        With a verifier, `choices` come along and go back with their rewards; with rerank,
        `chosen` is the whole pool and only the kept images come back."""
        from vardist.engine import pipeline

        t0 = time.perf_counter()
        prefix_np, codes = [p.unpack() for p in prefix], chosen.unpack()
        if self.verify is None or choices is None:  # (a Study's actors verify searches only)
            images, maps = await self._on(self._device, pipeline.continue_batch, self.model,
                                          items, settings, prefix_np, codes)
        else:
            images, maps, choices = await self._on(self._device, self._verified, items,
                                                   settings, prefix_np, codes, choices)
        return await self._message(images, maps, encode, t0, choices)

    async def _message(self, images: np.ndarray, maps: list, encode: bool, t0: float,
                       choices: list | None) -> FinishMsg:
        import asyncio

        from vardist.io import outputs

        if encode:  # the device thread is free for the next call meanwhile
            pngs = await asyncio.gather(*(self._on(self._cpu, outputs.png_bytes, im)
                                          for im in images))
            return FinishMsg(list(pngs), None, [], time.perf_counter() - t0, choices)
        return FinishMsg(None, images, [Packed.pack(m) for m in maps], time.perf_counter() - t0,
                         choices)

    def _search(self, items: list, settings: Any, search: str) -> tuple:
        from vardist.engine import multiscale, pipeline
        from vardist.engine.schedule import parse_search

        return multiscale.search_batch(self.model, items, settings,
                                       parse_search(search, self.model.num_scales), self.verify,
                                       pipeline.embedder(self.model))

    async def search(self, items: list, settings: Any, search: str, encode: bool) -> FinishMsg:
        """A batch of a search across scales (engine.multiscale), whole on this actor: its
        members' states stay here between scales; the final images (or PNGs), token maps and
        choices leave. A batch lost with its actor is searched again from its items (every
        draw is keyed by seeds, so the bytes are the same)."""
        t0 = time.perf_counter()
        images, maps, choices = await self._on(self._device, self._search, items, settings,
                                               search)
        return await self._message(images, maps, encode, t0, choices)

    def _verified(self, items: list, settings: Any, prefix: list[np.ndarray], codes: np.ndarray,
                  choices: list) -> tuple[np.ndarray, list[np.ndarray], list]:
        from vardist.engine import pipeline, rerank

        if self.verify.rerank:  # no kept generator state here: rebuilt from the codes
            return rerank.finish_batch(self.model, items, settings, prefix, codes, choices,
                                       None, self.verify)
        images, maps = pipeline.continue_batch(self.model, items, settings, prefix, codes)
        return images, maps, rerank.score_chosen(self.verify, items, images, choices)

    async def info(self) -> dict[str, Any]:
        """Where this replica runs: process, GPUs Ray gave it, torch threads, and what its
        bytes depend on (pipeline.replica_numerics, measured on its device thread)."""
        import ray

        from vardist.engine import pipeline

        if self.load_error is not None:
            raise self.load_error
        numerics = await self._on(self._device, pipeline.replica_numerics, self.model)
        return {"pid": os.getpid(), "gpu_ids": ray.get_gpu_ids(),
                "threads": numerics["threads"], "numerics": numerics,
                "positions": pipeline.model_positions(self.model)}  # compute accounting


# --- the selection stage ------------------------------------------------------------------

@dataclass
class Selected:
    """A batch's choices and what its continuation needs (all small)."""

    choices: list
    prefix: list[Packed]
    chosen: Packed
    pool_seconds: float


def select_pool(msg: PoolMsg, seeds: list[int], settings: Any, keep_density: bool,
                whole: bool = False) -> Selected:
    """Densities and choices for one pool batch: on the driver, or as a Ray task next to the
    object (pipeline.select_batch does the work; the table stands in for model.embed).
    whole: the continuation gets the whole pool (rerank finishes several candidates)."""
    from vardist.engine import pipeline

    codes = msg.codes.unpack()
    choices = pipeline.select_batch(codes, msg.table, seeds, settings, keep_density=keep_density)
    if whole:
        return Selected(choices, msg.prefix, msg.codes, msg.seconds)
    chosen = pipeline.chosen_codes(codes, choices)
    return Selected(choices, msg.prefix, Packed.pack(chosen), msg.seconds)


# --- the driver ---------------------------------------------------------------------------

@dataclass
class _Task:
    kind: str                 # "pool", "select", "finish", or "search" (across scales)
    bi: int                   # canonical batch index
    batch: list               # its work items
    selected: Selected | None = None


class _ActorSet:
    """N generator actors, each in its own placement-group bundle; a dead one is replaced in
    its bundle (up to a budget, so a model that cannot load does not loop forever)."""

    def __init__(self, ray: Any, cls: Any, init: tuple, n: int, bundle: dict[str, float],
                 budget: int, timeout_s: float, report_every_s: float = 15.0,
                 before_spawn: Callable[[Any], None] | None = None) -> None:
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        self.ray, self.cls, self.init, self.budget = ray, cls, init, budget
        self.bundle = bundle
        self.tag = uuid.uuid4().hex[:8]  # actor names: vardist-<run tag>-<slot>.<generation>
        self.generation = [0] * n
        # The pending placement group is the autoscaler's demand: it adds the nodes it needs.
        self.pg = placement_group([dict(bundle)] * n, strategy="PACK")
        wait_for_placement(ray, self.pg, n, bundle, timeout_s, report_every_s)
        self._strategy = lambda i: PlacementGroupSchedulingStrategy(
            self.pg, placement_group_bundle_index=i)
        if before_spawn is not None:
            try:
                before_spawn(self._strategy(0))
            except BaseException:
                ray.util.remove_placement_group(self.pg)
                raise
        self.handles = [self._spawn(i) for i in range(n)]
        self.replaced = 0

    def _spawn(self, i: int) -> Any:
        # No Ray-side restarts: whether the process crashed or was killed, the driver sees
        # RayActorError for every call the actor held, replaces it and resubmits those calls.
        # The actor claims its whole bundle: Ray then sets CUDA_VISIBLE_DEVICES to its GPU and
        # OMP_NUM_THREADS to its CPUs (an actor that names no resources runs on 0 CPUs, where
        # extra torch threads only fight each other).
        return self.cls.options(
            name=f"vardist-{self.tag}-{i}.{self.generation[i]}",
            num_cpus=self.bundle.get("CPU", 0), num_gpus=self.bundle.get("GPU", 0),
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


def _say(message: str) -> None:
    """One line for the person running the job (stderr: stdout may carry --json)."""
    print(message, file=sys.stderr, flush=True)


def resolve_address(address: str | None) -> tuple[str, str]:
    """Ray's convention: --address overrides, else $RAY_ADDRESS, else a new local instance.
    Returns (address for ray.init, where it came from: "--address", "RAY_ADDRESS" or "")."""
    if address:
        return address, "--address"
    env = os.environ.get("RAY_ADDRESS", "").strip()
    if env:
        return env, "RAY_ADDRESS"
    return "local", ""


def _which(address: str, source: str) -> str:
    """The first line of a Ray run: which Ray it runs on, and why."""
    if not source:
        return ("Ray: starting a local Ray instance on this machine (no --address, RAY_ADDRESS "
                "unset)")
    return f"Ray: joining the cluster at {address} (from {source})"


def check_reachable(address: str, source: str, timeout_s: float) -> None:
    """A HOST:PORT or ray://HOST:PORT address must accept a TCP connection within timeout_s:
    ray.init itself retries an unreachable GCS for minutes. "local" and "auto" are Ray's own
    to resolve (auto fails at once when no cluster runs here). source: where the address came
    from ("--address" or "RAY_ADDRESS"), named in the error."""
    if address in ("local", "auto"):
        return
    from vardist.io.conditions import InputError

    scheme, _, hostport = address.rpartition("://")
    if scheme not in ("", "ray"):  # e.g. the dashboard's http://HOST:8265 from `ray job` docs
        raise InputError(
            f"Ray address {address} (from {source}) is a {scheme}:// URL: that is the "
            f"dashboard's Jobs API, which `ray job submit` takes, not a cluster to join. Use "
            f"auto (on a cluster node or inside a Ray job), HOST:6379 (the GCS) or "
            f"ray://HOST:10001 (Ray Client)", param="address")
    host, _, port = hostport.split("/", 1)[0].rpartition(":")
    try:
        port_no = int(port)
    except ValueError:
        raise InputError(f"Ray address {address!r} (from {source}) has no port: use HOST:PORT "
                         f"(the GCS, 6379 by default), ray://HOST:PORT (Ray Client, 10001) or "
                         f"auto", param="address") from None
    try:
        socket.create_connection((host.strip("[]"), port_no), timeout=timeout_s).close()
    except OSError as e:
        raise InputError(
            f"cannot reach the Ray cluster at {address} (from {source}): "
            f"{e.strerror or e.__class__.__name__} (waited at most {timeout_s:g} s). Check that "
            f"the cluster is up (`ray status` on its head node) and that the host and port are "
            f"right (the GCS listens on 6379, Ray Client on 10001); on a cluster node use "
            f"--address auto, or leave --address and RAY_ADDRESS unset to start a local Ray "
            f"instance", param="address") from None


def connect(opts: RayOptions) -> bool:
    """Join the cluster the options name (--address, else $RAY_ADDRESS) or start a local Ray
    instance, saying which first. Returns whether this call started Ray (the caller then shuts
    it down). A process already connected (ray.init done by the caller) keeps its instance."""
    import ray

    if ray.is_initialized():
        _say("Ray: using the Ray instance this process has already joined (ray.init was called "
             "before vardist)")
        return False
    address, source = resolve_address(opts.address)
    _say(_which(address, source))
    check_reachable(address, source, opts.connect_timeout_s)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # "local": always a new instance of our own, never a cluster another process started here
    ray.init(address=address, logging_level="WARNING", log_to_driver=False)
    return True


def preflight(engine_options: dict[str, Any]) -> None:
    """The checks of a Ray run that need no Ray: its options, and that the cluster address
    answers. search() calls it before it takes the output folder, so a bad address leaves
    nothing behind (and fails in seconds instead of ray.init's minutes of retries)."""
    opts = _options(None, engine_options)
    check_reachable(*resolve_address(opts.address), opts.connect_timeout_s)


def _options(options: RayOptions | None, overrides: dict[str, Any]) -> RayOptions:
    """RayOptions with keyword overrides (None: not given), checked."""
    known = {f.name for f in fields(RayOptions)}
    for key in overrides:
        if key not in known:
            from vardist.io.conditions import InputError

            raise InputError(f"unknown Ray engine option {key!r}; known: "
                             f"{', '.join(sorted(known))}", param=key)
    opts = replace(options or RayOptions(), **{k: v for k, v in overrides.items() if v is not None})
    opts.check()
    return opts


def wait_for_placement(ray: Any, pg: Any, n: int, bundle: dict[str, float], timeout_s: float,
                       report_every_s: float, say: Callable[[str], None] = _say,
                       clock: Callable[[], float] = time.monotonic) -> None:
    """Wait (bounded) until the placement group of n actors is placed, saying every
    report_every_s what is missing; on timeout remove the group and raise InputError."""
    key = "GPU" if bundle.get("GPU") else "CPU"
    need = n * bundle.get(key, 0)
    start = clock()
    while True:
        left = timeout_s - (clock() - start)
        ready, _ = ray.wait([pg.ready()], timeout=max(0.0, min(report_every_s, left)))
        if ready:
            return
        elapsed = clock() - start
        free = ray.available_resources().get(key, 0)
        if elapsed >= timeout_s:
            ray.util.remove_placement_group(pg)
            from vardist.io.conditions import InputError

            raise InputError(
                f"the Ray cluster cannot place {n} generator actors of {bundle} each within "
                f"{timeout_s:.0f} s: {need:g} {key}s needed, {free:g} free (cluster resources: "
                f"{ray.cluster_resources()}). On an autoscaling cluster check that a node type "
                f"offers {key}s and that max_workers and the cloud quota allow {need:g} "
                f"(`ray status` shows pending demands); else lower --actors or add nodes",
                param="actors")
        say(f"waiting for {need:g} {key}s, {free:g} available, {max(need - free, 0):g} "
            f"requested from the autoscaler ({elapsed:.0f} s of {timeout_s:.0f} s)")


def _actor_shape(ray: Any, opts: RayOptions, device: str | None = None,
                 gpu_model: bool = False, can_scale: bool = True
                 ) -> tuple[int, dict[str, float], int | None]:
    """(number of actors, resources of one, torch threads). GPU actors ({"GPU": 1} each, one
    per GPU when actors is None) when the run asks for a GPU device, or when it names none and
    either the cluster has GPUs now or the model is a GPU model (memory.wants_gpu) on a cluster
    that can grow (an autoscaler adds GPU nodes for the pending actors); else CPU actors of
    cpus_per_actor each. --device cpu always gives CPU actors."""
    gpus = int(ray.cluster_resources().get("GPU", 0))
    kind = (device or "").split(":")[0]
    if kind == "cuda" or (not kind and (gpus or (gpu_model and can_scale))):
        return opts.actors or max(gpus, 1), {"GPU": 1.0, "CPU": 1.0}, None
    return (opts.actors or 1, {"CPU": float(opts.cpus_per_actor)},
            opts.threads)


def model_footprint(model: Any) -> Any:
    """The memory Footprint of a registry model (vardist.models.memory); None for a model
    instance or a model without one (fixtures)."""
    if not isinstance(model, str):
        return None
    from vardist.models import memory

    return memory.footprint(model)


def actors_for(ray: Any, opts: RayOptions, fp: Any, device: str | None, started: bool
               ) -> tuple[int, dict[str, float], int | None]:
    """_actor_shape for a model of footprint fp (model_footprint) on the Ray this process joined
    (started: by connect()). A local instance of our own cannot grow; a cluster may have an
    autoscaler, which the pending GPU actors make add GPU nodes."""
    from vardist.models import memory

    local = started and not resolve_address(opts.address)[1]
    return _actor_shape(ray, opts, device, memory.wants_gpu(fp), can_scale=not local)


def _gpu_capacity() -> int | None:
    """Total memory of the GPU this task was given (None where torch sees no CUDA device)."""
    import torch

    if not torch.cuda.is_available():
        return None
    return int(torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory)


def _memory_check(ray: Any, job: Any, fp: Any, bundle: dict[str, float]
                  ) -> Callable[[Any], None] | None:
    """Before any actor loads: ask one placed GPU for its size and refuse a batch the plan
    (vardist.models.memory) says cannot fit, naming the batch that does."""
    if fp is None or not bundle.get("GPU"):
        return None

    def check(strategy: Any) -> None:
        from vardist.io.conditions import InputError
        from vardist.models import memory

        probe = ray.remote(num_gpus=bundle["GPU"], num_cpus=bundle.get("CPU", 0))(_gpu_capacity)
        capacity = ray.get(probe.options(scheduling_strategy=strategy).remote())
        if capacity is None:
            return
        s = job.settings
        try:
            memory.check_fits(fp, capacity, batch=job.batch_size, n=s.pool_size, scale=s.scale,
                              cfg=s.cfg, where="each actor's GPU", model=job.model_name)
        except memory.MemoryPlanError as e:
            raise InputError(str(e), param="batch_size") from None

    return check


def run(job: Any, model: Any = None, recorder: Any = None, progress: Any = None, *,
        options: RayOptions | None = None, **overrides: Any) -> Any:
    """Run `job` on Ray. Same contract as `vardist.engine.local.run` (results in item order,
    outputs through `recorder`), plus where to run, as RayOptions fields (`options` and/or
    keyword overrides): address None joins $RAY_ADDRESS if set, else starts a local Ray
    instance (stopped at the end); "auto", HOST:PORT or "ray://HOST:PORT" joins a cluster
    (connect() says which first). Actors need a GPU each when the run asks for cuda, when the
    cluster has GPUs, or when the model is a GPU model on a cluster that can grow (then the
    pending actors make the autoscaler add GPU nodes; the wait is bounded and reported);
    actors None puts one on every GPU (one CPU actor where there are none).

    model: a loaded model is shipped to the actors through the object store (fine for small
    models); None makes every actor load `job.model` by name from `job.weights` on its own
    device (the way for real checkpoints: nothing heavy passes through the driver). The
    returned results carry `.stats` (actors, replaced, redone)."""
    import ray

    from vardist.engine import rerank
    from vardist.engine.results import Recorder, SearchResults

    opts = _options(options, overrides)
    recorder = recorder or Recorder(job, {})
    total = len(job.items)
    todo_batches, results = recorder.plan()
    if not todo_batches:
        if progress:
            progress(len(results), total)
        recorder.close()
        return SearchResults(results[i] for i in sorted(results))

    started = connect(opts)  # first: its line says which Ray the run uses
    try:
        if progress:
            progress(len(results), total)
        src = job.model if model is None else model
        model_arg = src if isinstance(src, str) else ray.put(src)  # put once, shared by all
        fp = model_footprint(src)
        n, bundle, threads = actors_for(ray, opts, fp, job.device, started)
        cls = ray.remote(Generator)
        init = (model_arg, job.weights, job.device, threads, rerank.verify_args(job))
        pool = _ActorSet(ray, cls, init, n, bundle,
                         opts.max_replacements if opts.max_replacements is not None else 2 * n,
                         opts.placement_timeout_s, opts.report_every_s,
                         before_spawn=_memory_check(ray, job, fp, bundle))
    except BaseException:
        if started:
            ray.shutdown()
        raise
    on_tasks = opts.select_on == "tasks" or (opts.select_on == "auto" and bundle.get("GPU"))
    stage = _Stage(ray, job, pool, opts.depth, on_tasks, recorder, results, progress, total)
    try:
        kind = "search" if job.search else "pool"  # search across scales: one call a batch
        stage.drive(_Task(kind, bi, batch) for bi, batch in todo_batches)  # made as needed
        recorder.close()
    finally:
        pool.close()
        if started:
            ray.shutdown()
    out = SearchResults(results[i] for i in sorted(results))
    out.stats = {"actors": n, "replaced": pool.replaced, "redone": stage.redone,
                 "select_on": "tasks" if on_tasks else "driver"}
    return out


class _Stage:
    """The dispatch loop. Actors get at most `depth` calls each, finishing first; at most
    actors x (depth + 1) batches are open (pool submitted, images not yet written), which bounds
    the object store and the driver's memory however long the run is."""

    def __init__(self, ray: Any, job: Any, actors: _ActorSet, depth: int, on_tasks: bool,
                 recorder: Any, results: dict, progress: Any, total: int) -> None:
        self.ray, self.job, self.actors, self.depth = ray, job, actors, depth
        self.recorder, self.results, self.progress, self.total = recorder, results, progress, total
        self.select_task = ray.remote(num_cpus=1)(select_pool) if on_tasks else None
        self.load = [0] * len(actors.handles)
        self.max_open = len(actors.handles) * (depth + 1)
        self.redone = 0
        self.positions: list[int] = []  # per scale, from the actors (_pin_numerics)

    def drive(self, batches: Iterable[_Task]) -> None:
        # PNG writes (encoded by the actors) and log parts run on one helper thread, in order,
        # while the loop keeps the actors fed; at most one write per actor waits in its queue.
        self._pin_numerics()
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="vardist-write") as writer:
            self._drive(batches, writer)
            for f in self.writes:
                f.result()

    def _pin_numerics(self) -> None:
        """Every replica must compute alike (same device kind, torch, threads), and like the
        replicas that made the images already in the folder: otherwise bytes would differ."""
        from vardist.models.checkpoint import CheckpointError

        try:
            infos = self.ray.get([h.info.remote() for h in self.actors.handles])
        except (CheckpointError, FileNotFoundError) as e:  # Ray's wrapper of an actor's error
            # is also its type (FileNotFoundError: a verifier's weights missing on that node)
            raise getattr(e, "cause", e) from None  # the file and why, without Ray's traceback
        numerics = [i["numerics"] for i in infos]
        self.positions = infos[0]["positions"]  # the run log's compute columns (_record)
        odd = next((i for i, n in enumerate(numerics) if n != numerics[0]), None)
        if odd is not None:
            from vardist.io.conditions import InputError

            raise InputError(f"the generator actors would not write the same bytes: actor 0 "
                             f"runs with {numerics[0]}, actor {odd} with {numerics[odd]}; run "
                             f"on nodes of one kind (same GPU model, torch and threads)",
                             param="actors")
        self.recorder.pin_numerics(numerics[0])

    def _drive(self, batches: Iterable[_Task], writer: ThreadPoolExecutor) -> None:
        ray = self.ray
        self.writes: deque[Future] = deque()
        # `waiting` holds one fresh batch at most (a plan's batches are made as actors free
        # up, not all first) and the lost ones to redo; it is empty once `fresh` is.
        fresh = iter(batches)
        waiting, finishing = deque(itertools.islice(fresh, 1)), deque()
        inflight: dict[Any, tuple[_Task, int, Any]] = {}
        open_batches = 0
        while waiting or finishing or inflight:
            while min(self.load) < self.depth and (
                    finishing or (waiting and open_batches < self.max_open)):
                task = finishing.popleft() if finishing else waiting.popleft()
                if not waiting:
                    waiting.extend(itertools.islice(fresh, 1))
                open_batches += task.kind in ("pool", "search")
                ref, slot, h = self._submit(task)
                inflight[ref] = task, slot, h
            first, rest = ray.wait(list(inflight), num_returns=1)
            ready = first + (ray.wait(rest, num_returns=len(rest), timeout=0)[0] if rest else [])
            for ref in ready:
                task, slot, h = inflight.pop(ref)
                if slot >= 0:
                    self.load[slot] -= 1
                try:
                    out = ray.get(ref)
                except (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError) as e:
                    # Lost with its actor (or the pool it read): redo from the last good step.
                    if slot >= 0:
                        self.actors.replace(slot, h, e)
                    self.redone += 1
                    if task.kind == "finish":
                        finishing.appendleft(task)
                    else:
                        waiting.appendleft(_Task("search" if task.kind == "search" else "pool",
                                                 task.bi, task.batch))
                        open_batches -= 1
                    continue
                if task.kind == "pool" and self.select_task:  # select next to the object
                    sel = self.select_task.remote(ref, self._seeds(task), self.job.settings,
                                                  *self._select_flags())
                    inflight[sel] = _Task("select", task.bi, task.batch), -1, None
                elif task.kind in ("pool", "select"):
                    selected = out if task.kind == "select" else select_pool(
                        out, self._seeds(task), self.job.settings, *self._select_flags())
                    finishing.append(_Task("finish", task.bi, task.batch, selected))
                else:
                    while self.writes and (len(self.writes) >= len(self.load)
                                           or self.writes[0].done()):
                        self.writes.popleft().result()  # re-raises a failed write
                    self.writes.append(writer.submit(self._record, task, out))
                    open_batches -= 1

    def _submit(self, task: _Task) -> tuple[Any, int, Any]:
        """Give a pool or finish call to the least loaded actor: (ref, slot, actor)."""
        slot = self.load.index(min(self.load))
        h = self.actors.handles[slot]
        self.load[slot] += 1
        if task.kind == "pool":
            return h.pool.remote(task.batch, self.job.settings), slot, h
        if task.kind == "search":
            return h.search.remote(task.batch, self.job.settings, self.job.search,
                                   self.job.out is not None), slot, h
        sel = task.selected
        return h.finish.remote(task.batch, self.job.settings, sel.prefix, sel.chosen,
                               self.job.out is not None,
                               sel.choices if self.job.verifier else None), slot, h

    def _select_flags(self) -> tuple[bool, bool]:
        """select_pool's keep_density (rerank breaks reward ties by density) and whole."""
        return self.job.log_candidates or self.job.rerank > 0, self.job.rerank > 0

    @staticmethod
    def _seeds(task: _Task) -> list[int]:
        return [it.seed for it in task.batch]

    def _record(self, task: _Task, msg: FinishMsg) -> None:
        from vardist.engine import pipeline

        sel = task.selected  # None for a search across scales: its choices come with msg
        choices = msg.choices if msg.choices is not None else sel.choices
        choices = pipeline.with_compute(choices, self.positions, self.job.settings.scale,
                                        bool(self.job.verifier))
        for r in self.recorder.record(task.bi, task.batch, choices, msg.images,
                                      [m.unpack() for m in msg.maps],
                                      sel.pool_seconds if sel else 0.0, msg.seconds,
                                      pngs=msg.pngs):
            self.results[r.item.index] = r
        if self.progress:
            self.progress(len(self.results), self.total)
