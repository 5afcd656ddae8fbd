"""What a population costs to branch: `model.fork` (copying KV-cache rows) vs re-running the
shared prefix for every member, on the fixture models.

    python benchmarks/fork_cost.py          # toy-digits, var-tiny, flexvar-tiny, infinity-tiny
    python benchmarks/fork_cost.py --models var-tiny --members 16 --scale 3
    python benchmarks/fork_cost.py --device cuda

Setting: 2 items generated up to scale k (the prefix), a pool drawn at scale k, and a population
of M members (M/2 per item, each with its own candidate). Each way ends with the same thing, a
population state whose next step is scale k + 1:
- fork:   fork(state, index) + advance(population, candidates): copies the rows of the cache
          (KV, latent, pending logits) the pool already filled; no transformer pass;
- resume: resume(members' maps 0..k): one teacher-forced pass over the prefix for all M members
          (what the interface's default fork does, and what a remote worker does);
- replay: start + advance(map s) for s = 0..k: the prefix re-run scale by scale for M members.
Times are medians of --repeat rounds in milliseconds; "prefix" is the cost of generating the
2 items' prefix in the first place. "same" says whether the members' next-scale tokens equal
the fork's (resume may differ by float rounding; replay is the same computation as fork).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch

from vardist.models import Sampling, ScaleWiseGenerator, load

FIXTURES = Path(os.environ.get("VARDIST_SHARED", Path(__file__).resolve().parents[2] / "shared")) / "fixtures"
PROMPTS = ["a photo of a red car", "two dogs"]


def build(name: str, device: str) -> ScaleWiseGenerator:
    if name == "var-tiny":
        from vardist.models.var import from_fixture

        return from_fixture(FIXTURES / name, device=device)
    if name == "flexvar-tiny":
        from vardist.models.flexvar import from_fixture

        return from_fixture(FIXTURES / name, device=device)
    return load(name, device=device)


def timed(fn, repeat: int, device: str):
    """(median milliseconds, the last result) of fn() over `repeat` rounds."""
    times, out = [], None
    for _ in range(repeat):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), out


def measure(model: ScaleWiseGenerator, k: int, members: int, repeat: int, device: str) -> dict:
    conds = PROMPTS if model.condition_kind == "prompt" else [3, 7]
    seeds, smp = [5, 6], Sampling(cfg=1.5)

    def prefix():
        state = model.start(conds, seeds, smp)
        model.run_scales(state, k)
        return state

    t_prefix, state = timed(prefix, repeat, device)
    per = members // 2
    pool = model.draw_pool(state, per)
    index = [b for b in range(2) for _ in range(per)]
    codes = pool.reshape(members, *pool.shape[2:])  # member i: item i // per, candidate i % per
    m_conds, m_seeds = [conds[i] for i in index], [seeds[i] for i in index]
    maps = [m[index] for m in state.maps] + [codes]

    def by_fork():
        pop = model.fork(state, index)
        model.advance(pop, codes)
        return pop

    def by_replay():
        pop = model.start(m_conds, m_seeds, smp)
        for m in maps:
            model.advance(pop, m)
        return pop

    row = {"prefix": t_prefix}
    nxt = {}
    for name, fn in (("fork", by_fork), ("resume", lambda: model.resume(m_conds, m_seeds, smp, maps)),
                     ("replay", by_replay)):
        row[name], pop = timed(fn, repeat, device)
        model.run_scales(pop, k + 2)
        nxt[name] = pop.maps[k + 1]
    row["same"] = "/".join("yes" if torch.equal(nxt[n], nxt["fork"]) else "no" for n in ("resume", "replay"))
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="toy-digits,var-tiny,flexvar-tiny,infinity-tiny")
    p.add_argument("--members", type=int, default=8, help="population size M (even)")
    p.add_argument("--scale", type=int, default=None,
                   help="prefix scales k (default: the second-to-last scale, where a prefix is longest)")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: steady on a shared box)")
    args = p.parse_args()
    if args.members < 2 or args.members % 2:
        p.error(f"--members must be an even number >= 2, got {args.members}")
    torch.set_num_threads(args.threads)
    print(f"device {args.device}, {args.threads} thread(s), M = {args.members} members from 2 items, "
          f"median of {args.repeat} (ms)")
    print(f"{'model':<15}{'k':>3}{'prefix':>10}{'fork':>10}{'resume':>10}{'replay':>10}"
          f"{'resume/fork':>13}{'replay/fork':>13}  same (resume/replay)")
    for name in args.models.split(","):
        model = build(name, args.device)
        k = args.scale if args.scale is not None else model.num_scales - 2
        if not 1 <= k <= model.num_scales - 2:
            p.error(f"--scale must be in 1..{model.num_scales - 2} for {name}, got {k}")
        r = measure(model, k, args.members, args.repeat, args.device)
        print(f"{name:<15}{k:>3}{r['prefix']:>10.1f}{r['fork']:>10.2f}{r['resume']:>10.1f}"
              f"{r['replay']:>10.1f}{r['resume'] / r['fork']:>12.1f}x{r['replay'] / r['fork']:>12.1f}x  "
              f"{r['same']}")


if __name__ == "__main__":
    main()
