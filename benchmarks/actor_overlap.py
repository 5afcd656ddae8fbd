"""A Ray generator actor's device busy fraction, with its CPU work on and off the critical path.

    python3 benchmarks/actor_overlap.py [--batches 6] [--device-s 0.8] [--side 1024] [--quick]

The actor class (`vardist.engine.ray.Generator`) is driven directly, without Ray, around a
stand-in model: toy-digits whose device work is a sleep (--pool-s per batch for the prefix and
the scale-k logits, --device-s per image for the continuation and the decode, as on a GPU),
whose pool draws Infinity's uniforms (n x 36 positions x 32 bits from the items' numpy Philox
streams, ~35 ms at n = 3000) and whose images are --side x --side textured RGB, so encoding
each PNG costs what a real one does. Two ways to drive the same actor:

- one call at a time: each call returns before the next is sent, which is what the actor did
  before its methods were coroutines (Ray ran one call at a time): the device waits while
  the pool's uniforms are drawn and while the PNGs are encoded;
- pipelined: the next batch's pool call is sent while the previous finish call is running, as
  the Ray engine's driver does (up to --depth calls queued per actor): the uniforms are drawn
  when the call arrives and the PNGs are encoded on the actor's CPU threads while the device
  runs the next call.

Device busy = seconds of model work on the actor's device thread (the sleeps and the toy's own
compute) / wall seconds; the first pool's uniforms and the last batch's PNGs can never
overlap. Both ways must give the same PNG bytes.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import time
from collections import deque
from typing import Any, Callable

import numpy as np

from vardist.engine.plan import SearchSettings, plan_items
from vardist.engine.ray import Generator, Packed
from vardist.io import outputs
from vardist.models import registry, sampling

INFINITY_UNIFORMS = 36 * 32   # per candidate at Infinity's scale 3: 36 positions x 32 bits


class SlowDevice:
    """toy-digits with a GPU's timings: device work sleeps, pools draw Infinity-sized uniform
    streams, images are large and textured. Everything else is the toy's. `busy`: seconds of
    model work (the toy's compute and the sleeps); the uniforms are CPU work, not counted."""

    DEVICE_METHODS = ("start", "run_scales", "advance", "resume")

    def __init__(self, model: Any, pool_s: float, device_s: float, side: int) -> None:
        self.model, self.pool_s, self.device_s, self.side = model, pool_s, device_s, side
        self.busy = 0.0

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.model, name)
        return functools.partial(self._timed, attr) if name in self.DEVICE_METHODS else attr

    def _timed(self, fn: Callable, *args: Any, **kw: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*args, **kw)
        finally:
            self.busy += time.perf_counter() - t0

    def positions(self, scale: int) -> int:
        # what pipeline.prefetch_uniforms sizes the draw by: Infinity's count per candidate
        return INFINITY_UNIFORMS

    def draw_pool(self, state: Any, n: int, **kw: Any) -> Any:
        for seed in state.seeds:  # the CPU draw of an Infinity pool (served if drawn ahead)
            sampling.item_stream(seed, state.next_scale).rows(n, INFINITY_UNIFORMS)
        return self._timed(self._pool_on_device, state, n, **kw)

    def _pool_on_device(self, state: Any, n: int, **kw: Any) -> Any:
        time.sleep(self.pool_s)
        return self.model.draw_pool(state, n, **kw)

    def finish(self, state: Any) -> Any:
        return self._timed(self._finish_on_device, state)

    def _finish_on_device(self, state: Any) -> Any:
        import torch

        self.model.finish(state)
        time.sleep(self.device_s * len(state.seeds))
        return torch.from_numpy(np.stack([textured(seed, self.side) for seed in state.seeds]))


def textured(seed: int, side: int) -> np.ndarray:
    """A photo-like image: smooth gradients plus grain (compresses like a textured photo)."""
    rng = np.random.default_rng(seed % 2**32)
    y, x = np.mgrid[0:side, 0:side] / side
    base = np.stack([np.sin(6 * x + c) * np.cos(5 * y - c) for c in range(3)], -1) * 90 + 128
    return np.clip(base + rng.normal(0, 12, (side, side, 3)), 0, 255).astype(np.uint8)


async def one_at_a_time(gen: Generator, batches: list, settings: SearchSettings) -> list[bytes]:
    pngs = []
    for items in batches:
        msg = await gen.pool(items, settings)
        done = await gen.finish(items, settings, msg.prefix, _first(msg), True)
        pngs += done.pngs
    return pngs


async def pipelined(gen: Generator, batches: list, settings: SearchSettings,
                    depth: int) -> list[bytes]:
    pending: deque = deque()
    pngs: list[bytes] = []
    for items in batches:
        msg = await gen.pool(items, settings)
        pending.append(asyncio.ensure_future(
            gen.finish(items, settings, msg.prefix, _first(msg), True)))
        while len(pending) >= depth:
            pngs += (await pending.popleft()).pngs
    while pending:
        pngs += (await pending.popleft()).pngs
    return pngs


def _first(msg: Any) -> Packed:
    """Candidate 0 of every item (selection is not the actor's work)."""
    return Packed.pack(msg.codes.unpack()[:, 0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--n", type=int, default=3000, help="pool size (Infinity's paper setting)")
    ap.add_argument("--pool-s", type=float, default=0.05, help="device seconds per pool call")
    ap.add_argument("--device-s", type=float, default=0.8,
                    help="device seconds per image (infinity-2b on an H100 at batch 1: 0.8)")
    ap.add_argument("--side", type=int, default=1024, help="image side in pixels")
    ap.add_argument("--depth", type=int, default=2, help="calls in flight (the Ray default)")
    ap.add_argument("--quick", action="store_true", help="3 batches of 512x512 images")
    args = ap.parse_args()
    if args.quick:
        args.batches, args.side = 3, 512
    d = registry.get_spec("toy-digits").defaults
    settings = SearchSettings(scale=1, n=args.n, strategy=d.strategy, alpha=d.alpha, rep=d.rep,
                              conflict_thresh=d.conflict_thresh, k=d.k, cfg=d.cfg,
                              top_k=d.top_k, top_p=d.top_p, tau=d.tau)
    items = plan_items([(c % 10, c % 10) for c in range(args.batches * args.batch_size)], 1, 0)
    batches = [items[i:i + args.batch_size] for i in range(0, len(items), args.batch_size)]
    t0 = time.perf_counter()
    outputs.png_bytes(textured(0, args.side))
    encode_s = time.perf_counter() - t0
    print(f"{args.batches} batches of {args.batch_size}, n {args.n}, device {args.pool_s} s per "
          f"pool + {args.device_s} s per image, {args.side}x{args.side} PNGs ({encode_s:.2f} s "
          f"each to encode here), {Generator.CPU_THREADS} actor CPU threads, depth {args.depth}")
    head = f"{'driven':32} {'wall s':>7} {'img/s':>6} {'device busy %':>13}"
    print(head + "\n" + "-" * len(head))
    results = {}
    for name, drive in (("one call at a time (before)", one_at_a_time),
                        ("pipelined calls (after)", pipelined)):
        model = SlowDevice(registry.load("toy-digits", device="cpu"), args.pool_s,
                           args.device_s, args.side)
        gen = Generator(model, None, None, None)
        extra = (args.depth,) if drive is pipelined else ()
        t0 = time.perf_counter()
        results[name] = asyncio.run(drive(gen, batches, settings, *extra))
        wall = time.perf_counter() - t0
        print(f"{name:32} {wall:7.2f} {len(items) / wall:6.2f} {100 * model.busy / wall:13.1f}")
    same = len(set(map(tuple, results.values()))) == 1
    print(f"PNG bytes identical: {'yes' if same else 'NO'}")


if __name__ == "__main__":
    main()
