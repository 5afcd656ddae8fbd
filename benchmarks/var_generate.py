"""VAR generation speed and memory: plain generation vs generation with a candidate pool.

For each model and batch size it times
  plain: start -> finish (every scale sampled, decoded to uint8), and
  pool:  start -> run_scales(k) -> draw_pool(n) -> embed -> advance(candidate 0) -> finish,
and prints images/s, peak memory and the ratio pool / plain (goal: pooling adds < 5%). The pool
run's extra work is only draw_pool + embed (the scale-k forward pass is shared), so the table also
shows that part alone, which is not affected by timing noise of the rest.

Models: `d16` (VAR-d16 size, 310M + VAE 109M parameters, random weights) and `fixture` (the tiny
reference fixture, ../shared/fixtures/var-tiny). Defaults keep a 2-core CPU run near 2 minutes:

    python3 benchmarks/var_generate.py                              # d16, batch 1
    python3 benchmarks/var_generate.py --models d16,fixture --batches 1,4,16
    python3 benchmarks/var_generate.py --device cuda --batches 1,4,16,64

CPU memory is the peak resident set size above the level before the run, sampled every 2 ms
(approximate: the allocator may reuse memory freed by an earlier run); CUDA memory is torch's
peak allocation.
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from pathlib import Path

import torch

from vardist.models import Sampling
from vardist.models.var import VARGenerator, VARTransformer, VQVAE, from_fixture
from vardist.models.var.specs import official_configs

FIXTURE = Path(os.environ.get("VARDIST_SHARED", Path(__file__).resolve().parents[2] / "shared")) / "fixtures" / "var-tiny"


def random_d16(device: str) -> VARGenerator:
    vae_cfg, var_cfg = official_configs(16)
    with torch.device("meta"):
        vae, var = VQVAE(vae_cfg), VARTransformer(var_cfg)
    vae, var = vae.to_empty(device=device), var.to_empty(device=device)
    g = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():  # small random weights: timing does not depend on their values
        for p in list(vae.parameters()) + list(var.parameters()):
            p.normal_(0, 0.02, generator=g)
    var.reset_buffers()
    return VARGenerator(vae, var, device)


class PeakMemory:
    """Peak memory above the starting level while the block runs, in MiB."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")
        self.peak = 0.0

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._max = max(self._max, self._rss())
            time.sleep(0.002)

    def __enter__(self) -> "PeakMemory":
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
        else:
            self._base = self._max = self._rss()
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            top = torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            self._thread.join()
            top = max(self._max, self._rss())
        self.peak = (top - self._base) / 2**20


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_plain(model: VARGenerator, conds, seeds, sampling, device) -> dict:
    t0 = time.perf_counter()
    model.generate_images(conds, seeds, sampling)
    sync(device)
    return {"total": time.perf_counter() - t0}


def run_pool(model: VARGenerator, conds, seeds, sampling, device, scale: int, n: int) -> dict:
    t0 = time.perf_counter()
    state = model.start(conds, seeds, sampling)
    model.run_scales(state, scale)
    model._logits(state)  # the scale-k forward, which plain generation runs too
    sync(device)
    t1 = time.perf_counter()
    pool = model.draw_pool(state, n)
    model.embed(pool)
    sync(device)
    t2 = time.perf_counter()
    model.advance(state, pool[:, 0])
    model.finish(state)
    sync(device)
    return {"total": time.perf_counter() - t0, "pool_part": t2 - t1}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="d16", help="comma list of d16, fixture")
    ap.add_argument("--batches", default="1", help="comma list of batch sizes")
    ap.add_argument("--n", type=int, default=50, help="pool size")
    ap.add_argument("--scale", type=int, default=1, help="scale k of the pool")
    ap.add_argument("--repeats", type=int, default=1, help="timed runs per cell (the best is kept)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sampling = Sampling(cfg=1.0, top_k=900, top_p=0.96)
    print(f"device {args.device}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads, "
          f"pool n={args.n} at scale {args.scale}, cfg 1.0 top_k 900 top_p 0.96, best of {args.repeats}")
    header = (f"{'model':8} {'batch':>5} {'plain s':>9} {'plain img/s':>11} {'plain MiB':>9} "
              f"{'pool s':>9} {'pool img/s':>10} {'pool MiB':>9} {'pool/plain':>10} {'draw+embed %':>12}")
    print(header)
    print("-" * len(header))
    for name in args.models.split(","):
        t = time.perf_counter()
        model = random_d16(args.device) if name == "d16" else from_fixture(FIXTURE, args.device)
        print(f"# {name}: built in {time.perf_counter() - t:.1f} s")
        warm = model.start([0], [0], sampling)  # warm-up (allocator, kernels), a few scales only
        model.run_scales(warm, min(model.num_scales, args.scale + 2))
        for B in (int(b) for b in args.batches.split(",")):
            conds, seeds = [i % model.num_classes for i in range(B)], list(range(B))
            plain, pool = [], []
            for _ in range(args.repeats):  # alternate so that load changes hit both alike
                with PeakMemory(args.device) as m1:
                    plain.append(run_plain(model, conds, seeds, sampling, args.device))
                with PeakMemory(args.device) as m2:
                    pool.append(run_pool(model, conds, seeds, sampling, args.device, args.scale, args.n))
            p = min(plain, key=lambda r: r["total"])
            q = min(pool, key=lambda r: r["total"])
            print(f"{name:8} {B:5d} {p['total']:9.2f} {B / p['total']:11.3f} {m1.peak:9.0f} "
                  f"{q['total']:9.2f} {B / q['total']:10.3f} {m2.peak:9.0f} {q['total'] / p['total']:10.3f} "
                  f"{100 * q['pool_part'] / p['total']:11.2f}%")


if __name__ == "__main__":
    main()
