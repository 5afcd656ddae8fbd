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

    def timed(fn) -> tuple[float, float, object]:
        """(wall seconds, CPU seconds of this process, result): on a shared machine the CPU
        time is the steadier measure of the work done."""
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        return time.perf_counter() - t0, time.process_time() - c0, out

    def single(n: int, strategy: str) -> tuple[float, float]:
        return timed(lambda: vardist.search(model, n=n, strategy=strategy, **common))[:2]

    def sweep() -> tuple[float, float, dict]:
        sw = {"n": ns, "strategy": strategies, **({"scale": [scale]} if scale is not None else {})}
        wall, cpu, res = timed(lambda: Study(model, args.classes, args.samples, sw,
                                             batch_size=args.batch_size).run())
        return wall, cpu, res.stats

    single(ns[0], strategies[-1])  # warm-up: lazy imports, allocations
    inf = (float("inf"), float("inf"))
    best_single, best_sweep, stats = inf, inf, {}
    for _ in range(args.repeat):  # interleaved rounds: machine load hits both alike
        best_single = min(best_single, single(max(ns), strategies[-1]))
        *t, stats = sweep()
        best_sweep = min(best_sweep, tuple(t))
    items = stats["items"]
    print(f"model {args.model}, {items} items, n in {ns}, strategies {strategies}, "
          f"best of {args.repeat} (by wall time)\n")
    print(f"{'run':<34} {'settings':>8} {'pools':>6} {'finished':>8} {'wall s':>7} "
          f"{'cpu s':>7} {'ratio wall':>10} {'ratio cpu':>9}")

    def line(name: str, settings: int, pools: int, finished: int, t: tuple[float, float]):
        print(f"{name:<34} {settings:>8} {pools:>6} {finished:>8} {t[0]:>7.2f} {t[1]:>7.2f} "
              f"{t[0] / best_single[0]:>10.2f} {t[1] / best_single[1]:>9.2f}")

    line(f"search n={max(ns)} {strategies[-1]} alone", 1, items, items, best_single)
    line("Study sweep", stats["settings"], stats["pools"], stats["continuations"], best_sweep)
    if args.separate:
        runs = [single(n, s) for n in ns for s in strategies]
        k = len(runs)
        line("the settings searched one by one", k, items * k, items * k,
             (sum(r[0] for r in runs), sum(r[1] for r in runs)))
    print(f"\ndistinct continuations per item: {stats['continuations'] / items:.2f} "
          f"(of {stats['settings']} settings); last sweep's wall time: pools "
          f"{stats['pool_seconds']:.2f} s, selection {stats['select_seconds']:.2f} s, "
          f"continuations {stats['finish_seconds']:.2f} s")
    print(f"cost ratio sweep / largest setting alone: {best_sweep[0] / best_single[0]:.2f}x wall, "
          f"{best_sweep[1] / best_single[1]:.2f}x CPU (goal <= 1.5x)")


if __name__ == "__main__":
    main()
