"""Pool drawing + KDE + selection at Infinity's search scale (3, the 6x6 map), on infinity-tiny
(fixture weights + tiny random T5, CPU), for n = 500, 3000, 10000, next to the time of making the
image itself (prefix scales 0-2, then scales 3-6 and the VAE decode).

    python benchmarks/infinity_pool.py                 # n = 500 3000 10000, one prompt
    python benchmarks/infinity_pool.py --n 3000 --repeats 3
    python benchmarks/infinity_pool.py --n 3000 --e2e 16   # + vardist.search end to end, 16 prompts
    python benchmarks/infinity_pool.py --model infinity-8b-tiny --n 3000 10000   # 56-bit tokens

Columns: seconds to draw the pool (CFG-mixed logits computed once, bits drawn in chunks), the KDE
(vardist.selection.kde_density, method auto) and the rule (strategy "infinity"), their sum as a
share of the image time, and the extra peak resident memory of the search step (VmHWM reset
through /proc/self/clear_refs; "n/a" where the kernel does not allow it). Each n runs in a fresh
process so that peaks do not hide each other. Goal (issue 7): the search adds under 5% at n = 3000.
With --e2e, also the wall time of whole `vardist.search` runs with and without the search: the
local engine selects on a helper thread while the model works on the neighbouring batches.

The tiny model's transformer is ~1000x cheaper than Infinity-2B while the pool/KDE cost depends
only on n, P = 36 and d = 32, so on the tiny model the share is an upper bound of the 2B share
(docs/infinity.md works out the 2B numbers). --model infinity-8b-tiny runs the 8B path's fixture
(56 bits per token, 14-bit VAE; its transformer read from the two-shard folder).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import time

PROMPT = "a photo of a red car and a blue bench"


def _rss_kb(field: str) -> int | None:
    try:
        for line in open("/proc/self/status"):
            if line.startswith(field):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def measure(name: str, n: int, repeats: int, chunk: int, queue) -> None:
    import numpy as np
    import torch

    from vardist.models import get_spec, load
    from vardist.models.interface import Sampling
    from vardist.selection import kde_density, select

    torch.manual_seed(0)
    model = load(name, device="cpu")
    d = get_spec(name).defaults
    smp = Sampling(cfg=d.cfg, top_k=d.top_k, top_p=d.top_p, tau=d.tau)
    rows = []
    for r in range(repeats):
        t0 = time.perf_counter()
        state = model.start([PROMPT], [r], smp)
        model.run_scales(state, d.scale)
        t_prefix = time.perf_counter() - t0

        rss0, can_peak = _rss_kb("VmRSS"), _reset_peak()
        t0 = time.perf_counter()
        pool = model.draw_pool(state, n, chunk=chunk)
        t_pool = time.perf_counter() - t0
        t0 = time.perf_counter()
        x = model.embed(pool[0]).numpy()
        dens = kde_density(x)
        t_kde = time.perf_counter() - t0
        t0 = time.perf_counter()
        choice = select(dens, x, strategy=d.strategy, k=d.k, rng=np.random.default_rng(r))
        t_sel = time.perf_counter() - t0
        peak = _rss_kb("VmHWM")
        extra_mb = (peak - rss0) / 1024 if can_peak and peak is not None and rss0 is not None else None

        t0 = time.perf_counter()
        model.advance(state, pool[:, choice.index])
        model.finish(state)
        t_finish = time.perf_counter() - t0
        rows.append((t_prefix, t_pool, t_kde, t_sel, t_finish, extra_mb))
    queue.put(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=("infinity-tiny", "infinity-8b-tiny"), default="infinity-tiny")
    ap.add_argument("--n", type=int, nargs="+", default=[500, 3000, 10000])
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--chunk", type=int, default=1024)
    ap.add_argument("--e2e", type=int, default=0, metavar="PROMPTS",
                    help="also time vardist.search end to end on this many GenEval prompts, "
                         "strategy infinity at n = 3000 vs none")
    args = ap.parse_args()
    ctx = mp.get_context("spawn")
    bits = 56 if args.model == "infinity-8b-tiny" else 32
    print(f"{args.model}, scale 3 (6x6 = 36 positions x {bits} bits), cfg 4, top_p 0.97, strategy infinity, "
          f"one prompt, best of {args.repeats}")
    head = (f"{'n':>6} {'pool s':>8} {'kde s':>8} {'select s':>9} {'search s':>9} {'image s':>8} "
            f"{'search/image':>13} {'extra peak MB':>14}")
    print(head)
    print("-" * len(head))
    for n in args.n:
        q = ctx.Queue()
        p = ctx.Process(target=measure, args=(args.model, n, args.repeats, args.chunk, q))
        p.start()
        rows = q.get()
        p.join()
        best = min(rows, key=lambda r: r[1] + r[2] + r[3])
        t_prefix, t_pool, t_kde, t_sel, t_finish, extra = best
        search, image = t_pool + t_kde + t_sel, t_prefix + t_finish
        mem = f"{extra:.1f}" if extra is not None else "n/a"
        print(f"{n:>6} {t_pool:>8.3f} {t_kde:>8.3f} {t_sel:>9.4f} {search:>9.3f} {image:>8.3f} "
              f"{100 * search / image:>12.1f}% {mem:>14}")
    print("image s = prefix (scales 0-2) + finishing (scales 3-6 from the chosen map, VAE decode)")
    if args.e2e:
        end_to_end(args.model, args.e2e, 3000, args.repeats)


def end_to_end(name: str, prompts: int, n: int, repeats: int) -> None:
    """Wall time of `vardist.search` (local engine, GenEval layout written) with the search
    against plain sampling: the engine selects on a helper thread while the model draws the next
    batch's pool and finishes the previous batch, so this is what the search adds to a run."""
    import json
    import tempfile
    from pathlib import Path

    import vardist
    from vardist.models import load

    model = load(name, device="cpu")
    shared = Path(os.environ.get("VARDIST_SHARED", Path(__file__).resolve().parents[2] / "shared"))
    geneval = shared / "data" / "geneval.jsonl"
    lines = [json.loads(x)["prompt"] for x in geneval.read_text().splitlines()[:prompts]] \
        if geneval.exists() else [f"{PROMPT} {i}" for i in range(prompts)]

    def run(strategy: str, m: int) -> float:
        with tempfile.TemporaryDirectory() as out:
            t0 = time.perf_counter()
            vardist.search(model, prompts=lines, samples=1, n=m, strategy=strategy, out=out,
                           batch_size=4)
            return time.perf_counter() - t0

    run("infinity", n)  # warm-up
    best = {key: min(run(*key) for _ in range(max(1, repeats))) for key in (("none", 1), ("infinity", n))}
    base = best["none", 1]
    print(f"\nend to end: vardist.search, local engine, {prompts} GenEval prompts x 1 image, batch 4")
    print(f"{'strategy':<10} {'n':>5} {'wall s':>8} {'vs none':>8}")
    for (strategy, m), wall in best.items():
        print(f"{strategy:<10} {m:>5} {wall:>8.2f} {wall / base:>7.3f}x")


if __name__ == "__main__":
    main()
