"""The three stages of a search, as plain functions any engine can call (the local engine in one
process, the Ray engine in actors and a selection stage):

    pool = prefix_and_pool(model, batch, settings)          # prefix r_0..r_{k-1} + n candidates r_k
    choices = select_batch(pool.codes, embedder(model), pool.seeds, settings)
    images, maps = continue_batch(model, batch, settings, pool.prefix, chosen_codes(pool.codes, choices))

Between stages everything is numpy (codes, not embeddings: a pool is small), so it can travel
through an object store. `continue_batch` takes the generator state when the same process drew
the pool (no recomputation) and otherwise rebuilds it from the codes in one teacher-forced pass.

Numerics: CPU float kernels split their reductions by the intra-op thread count, so a replica
with 2 torch threads and one with 1 thread differ by one level on a few pixels. Every engine
runs its model replicas with `REPLICA_THREADS` (`replica_threads`), and `replica_numerics`
says what else the bytes depend on (device, torch, CPU kernel level), for run.json.
"""

from __future__ import annotations

import contextlib
import platform
import time
from concurrent.futures import Executor
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from vardist.engine.plan import SearchSettings, WorkItem, selection_rng
from vardist.models import sampling
from vardist.models.interface import GenState, ScaleWiseGenerator

Embed = Callable[[np.ndarray], np.ndarray]  # codes [n, P, *code_shape] -> float32 [n, P, d]


@dataclass
class Pool:
    """Prefix and candidate pool of one batch of items."""

    seeds: list[int]
    prefix: list[np.ndarray]     # codes of scales 0..k-1, each [B, P_s, *code_shape]
    codes: np.ndarray            # candidates at scale k, [B, n, P_k, *code_shape]
    seconds: float
    state: GenState | None = field(default=None, repr=False)  # kept only when asked


@dataclass
class Choice:
    """The selection stage's verdict for one item."""

    index: int                   # chosen candidate
    branch: str | None           # "high" / "low" density (var-scaling), else None
    shortlist: list[int]
    density_max: float
    density_mean: float
    density_chosen: float
    seconds: float
    density: np.ndarray | None = field(default=None, repr=False)  # [n], for the candidate table
    # with a verifier (engine.rerank): the kept image's reward, the candidates finished and
    # scored (empty without rerank) with their rewards, and the continuations spent on the item
    reward: float | None = None
    reranked: list[int] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    continuations: int = 1
    # search across scales (engine.multiscale): the kept candidate at each searched scale; and
    # what the item cost (forward_tokens, previews, verifier_calls), every search fills it
    # (one-scale: the engines with `one_scale_compute` once the image is finished)
    lineage: list[int] | None = None
    compute: dict[str, int] | None = None


# torch intra-op threads of every model replica, in every engine: the bytes of a CPU replica
# depend on it. 1 because more replicas beat more threads per replica (benchmarks/
# ray_scaling.py: a 2-thread CPU actor ran 5x slower than a 1-thread one on the 2-core box).
# The local engine's other cores select, encode PNGs and draw uniforms ahead; a CPU run that
# wants every core for the model uses more replicas (--engine ray --actors N on one machine).
REPLICA_THREADS = 1


@contextlib.contextmanager
def replica_threads(threads: int | None = None) -> Iterator[int]:
    """Run the enclosed model work with `threads` torch intra-op threads (REPLICA_THREADS by
    default); the process's previous setting comes back on exit."""
    threads = threads or REPLICA_THREADS
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        torch.set_num_threads(before)


def model_device(model: Any) -> torch.device:
    """The device a replica computes on: its `device` attribute, else its first parameter's."""
    dev = getattr(model, "device", None)
    if dev is not None:
        return torch.device(dev)
    for value in vars(model).values():
        if isinstance(value, torch.nn.Module):
            for p in value.parameters():
                return p.device
    return torch.device("cpu")


def replica_numerics(model: Any) -> dict[str, Any]:
    """What a replica's bytes depend on beyond the run's settings: device type, the GPU model
    and CUDA version (GPU kernels differ between them) or the CPU kernel level torch dispatches
    to (AVX2 vs AVX512 sum in other orders) and the intra-op thread count, and the torch
    version. Two replicas with equal numerics write equal bytes for equal settings."""
    dev = model_device(model)
    out: dict[str, Any] = {"device": dev.type, "torch": torch.__version__}
    if dev.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(dev)
        out["cuda"] = torch.version.cuda
    else:
        out["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
        out["machine"] = platform.machine()
    out["threads"] = torch.get_num_threads()
    return out


def pool_uniform_count(model: ScaleWiseGenerator, settings: SearchSettings) -> int:
    """Uniform numbers one item's pool draws at the searched scale: one per candidate, position
    and code element (a token id: 1, Infinity's 32 bits: 32)."""
    return settings.pool_size * model.positions(settings.scale) * int(np.prod(model.code_shape))


def prefetch_uniforms(model: ScaleWiseGenerator, items: Sequence[WorkItem],
                      settings: SearchSettings, executor: Executor | None = None) -> None:
    """Draw the pool uniforms of a batch ahead (on `executor`, e.g. while the device runs the
    batch before): `prefix_and_pool` then finds them ready, with the same numbers."""
    count = pool_uniform_count(model, settings)
    for it in items:
        sampling.prefetch_stream(it.seed, settings.scale, count, executor)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def prefix_and_pool(model: ScaleWiseGenerator, items: Sequence[WorkItem], settings: SearchSettings,
                    *, keep_state: bool = False, chunk: int = 1024) -> Pool:
    """Sample scales 0..k-1 of a batch and draw `settings.pool_size` candidates at scale k."""
    t0 = time.perf_counter()
    seeds = [it.seed for it in items]
    with torch.inference_mode():
        state = model.start([it.condition for it in items], seeds, settings.sampling())
        model.run_scales(state, settings.scale)
        codes = model.draw_pool(state, settings.pool_size, chunk=chunk)
    prefix = [_np(m) for m in state.maps]
    return Pool(seeds, prefix, _np(codes), time.perf_counter() - t0,
                state if keep_state else None)


def embedder(model: ScaleWiseGenerator) -> Embed:
    """model.embed as a numpy function (what the selection stage measures candidates by)."""
    def embed(codes: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return _np(model.embed(torch.from_numpy(np.ascontiguousarray(codes)))).astype(
                np.float32, copy=False)
    return embed


def select_batch(codes: np.ndarray, embed: Embed, seeds: Sequence[int], settings: SearchSettings,
                 *, keep_density: bool = False) -> list[Choice]:
    """Densities and one choice per item of a pool batch. Each item's rng comes from its own
    seed; only `bandwidth="batch"` (the authors' pooling) lets batch mates affect an item."""
    if settings.strategy == "none":  # plain sampling: candidate 0, nothing to measure
        nan = float("nan")
        return [Choice(0, None, [0], nan, nan, nan, 0.0) for _ in seeds]
    from vardist.selection import kde_density, pooled_bandwidth, select

    xs = [embed(codes[b]) for b in range(len(seeds))]
    pooled = pooled_bandwidth(xs, settings.metric) if settings.bandwidth == "batch" else None
    choices = []
    for x, seed in zip(xs, seeds):
        t0 = time.perf_counter()
        density = kde_density(x, settings.kde_method, pooled, settings.metric)
        sel = select(density, x, settings.strategy, alpha=settings.alpha, rep=settings.rep,
                     conflict_thresh=settings.conflict_thresh, k=settings.k,
                     rng=selection_rng(seed))
        idx = int(sel.index)
        choices.append(Choice(idx, sel.branch, [int(i) for i in sel.shortlist],
                              float(density.max()), float(density.mean()), float(density[idx]),
                              time.perf_counter() - t0, density if keep_density else None))
    return choices


def one_scale_compute(positions: Sequence[int], scale: int, continuations: int,
                      reranked: int, verified: bool) -> dict[str, int]:
    """What a one-scale search (plain sampling included) spent on one image, counted as
    engine.multiscale counts a search across scales: the transformer's token positions, scales
    0..`scale` once (the pool at `scale` is drawn from those logits, so it adds none: the
    search costs plain generation's tokens) and each continuation (rerank K: K of them) the
    scales after `scale`; no previews; the verifier scored the `reranked` images, or else
    (`verified`: a run with a verifier) the kept one. Work an engine repeats to move a state
    (the Ray engine's teacher-forced rebuild of the prefix) is not the search's and is not
    counted, so both engines log the same figures."""
    tokens = sum(positions[:scale + 1]) + continuations * sum(positions[scale + 1:])
    return dict(forward_tokens=tokens, previews=0, verifier_calls=reranked or int(verified))


def with_compute(choices: Sequence[Choice], positions: Sequence[int], scale: int,
                 verified: bool) -> list[Choice]:
    """The choices, each with its compute (`one_scale_compute`) where it has none yet."""
    return [c if c.compute is not None else replace(c, compute=one_scale_compute(
                positions, scale, c.continuations, len(c.reranked), verified))
            for c in choices]


def model_positions(model: ScaleWiseGenerator) -> list[int]:
    """Token positions of each of the model's scales (what compute accounting counts)."""
    return [model.positions(s) for s in range(model.num_scales)]


def chosen_codes(codes: np.ndarray, choices: Sequence[Choice]) -> np.ndarray:
    """The chosen candidate of every item of a pool batch's codes [B, n, P_k, *code_shape]:
    [B, P_k, *code_shape]."""
    return codes[np.arange(len(choices)), [c.index for c in choices]]


def continue_batch(model: ScaleWiseGenerator, items: Sequence[WorkItem], settings: SearchSettings,
                   prefix: Sequence[np.ndarray], chosen: np.ndarray,
                   state: GenState | None = None) -> tuple[np.ndarray, list[np.ndarray]]:
    """Feed the chosen candidates as scale k, sample the remaining scales, decode. With no
    `state`, rebuild it from prefix + chosen (teacher-forced), so any worker can do this.
    Returns uint8 images [B, H, W, 3] and the final token maps (one array per scale)."""
    with torch.inference_mode():
        if state is None:
            maps = [torch.from_numpy(np.ascontiguousarray(m)) for m in (*prefix, chosen)]
            state = model.resume([it.condition for it in items], [it.seed for it in items],
                                 settings.sampling(), maps=maps)
        else:
            model.advance(state, torch.from_numpy(np.ascontiguousarray(chosen)))
        images = model.finish(state)
    return _np(images).astype(np.uint8, copy=False), [_np(m) for m in state.maps]
