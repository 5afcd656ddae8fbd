"""What a sweep costs: a Study over 4 pool sizes x 3 strategies (12 settings) vs the largest
setting searched on its own, and vs the 12 settings searched one by one, same items, one process.

    python benchmarks/study_sweep.py                       # toy-digits
    python benchmarks/study_sweep.py --model var-fixture   # the tiny VAR of shared/fixtures

Goal (issue 8): the sweep costs at most 1.5x the single largest setting. Why it can: one pool per
item at the largest n serves every n (nested pools), selection is cheap, and a continuation is
computed once per distinct chosen map (top-k keeps its winner as n grows). What it cannot
share: settings that choose different maps need their own continuations, so the ratio grows
with the number of distinct choices per item (printed) and with the continuation's share of
an image's cost.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

import vardist
from vardist.study import Study

FIXTURES = Path(os.environ.get("VARDIST_SHARED",
                               Path(__file__).resolve().parents[2] / "shared")) / "fixtures"


def build(name: str):
    """A registry model with bundled weights, or the tiny VAR of the shared fixtures."""
    if name == "var-fixture":
        from vardist.models.var import from_fixture

        return from_fixture(FIXTURES / "var-tiny")
    return vardist.models.load(name)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="toy-digits")
    p.add_argument("--classes", default="0-9")
    p.add_argument("--samples", type=int, default=4, help="images per class")
    p.add_argument("--ns", default="10,50,200,1000", help="the 4 pool sizes of the sweep")
    p.add_argument("--strategies", default="top-k,random-k,var-scaling")
    p.add_argument("--scale", type=int, default=None, help="scale searched (model default)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--repeat", type=int, default=2, help="rounds; the best time of each counts")
    p.add_argument("--separate", action="store_true", help="also time the 12 settings one by one")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = build(args.model)
    ns = [int(x) for x in args.ns.split(",")]
    strategies = args.strategies.split(",")
    scale = args.scale if args.scale is not None else (1 if args.model == "var-fixture" else None)
    common = dict(classes=args.classes, samples=args.samples, batch_size=args.batch_size,
                  scale=scale)

    def single(n: int, strategy: str) -> float:
        t0 = time.perf_counter()
        vardist.search(model, n=n, strategy=strategy, **common)
        return time.perf_counter() - t0

    def sweep() -> tuple[float, dict]:
        sw = {"n": ns, "strategy": strategies, **({"scale": [scale]} if scale is not None else {})}
        t0 = time.perf_counter()
        res = Study(model, args.classes, args.samples, sw, batch_size=args.batch_size).run()
        return time.perf_counter() - t0, res.stats

    single(ns[0], strategies[-1])  # warm-up: lazy imports, allocations
    best_single, best_sweep, stats = float("inf"), float("inf"), {}
    for _ in range(args.repeat):  # interleaved rounds: machine load hits both alike
        best_single = min(best_single, single(max(ns), strategies[-1]))
        t, stats = sweep()
        best_sweep = min(best_sweep, t)
    items = stats["items"]
    print(f"model {args.model}, {items} items, n in {ns}, strategies {strategies}, "
          f"best of {args.repeat}\n")
    print(f"{'run':<40} {'settings':>8} {'pools':>6} {'finished':>8} {'seconds':>8} {'ratio':>6}")
    print(f"{f'search n={max(ns)} {strategies[-1]} alone':<40} {1:>8} {items:>6} {items:>8} "
          f"{best_single:>8.2f} {1.0:>6.2f}")
    print(f"{'Study sweep':<40} {stats['settings']:>8} {stats['pools']:>6} "
          f"{stats['continuations']:>8} {best_sweep:>8.2f} {best_sweep / best_single:>6.2f}")
    if args.separate:
        total = sum(single(n, s) for n in ns for s in strategies)
        print(f"{'the settings searched one by one':<40} {len(ns) * len(strategies):>8} "
              f"{items * len(ns) * len(strategies):>6} {items * len(ns) * len(strategies):>8} "
              f"{total:>8.2f} {total / best_single:>6.2f}")
    print(f"\ndistinct continuations per item: {stats['continuations'] / items:.2f} "
          f"(of {stats['settings']} settings); sweep time: pools {stats['pool_seconds']:.2f} s, "
          f"selection {stats['select_seconds']:.2f} s, continuations "
          f"{stats['finish_seconds']:.2f} s")
    print(f"cost ratio sweep / largest setting alone: {best_sweep / best_single:.2f}x "
          f"(goal <= 1.5x)")


if __name__ == "__main__":
    main()
