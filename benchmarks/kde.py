"""KDE timings: the authors' formulation against vardist's methods, on VAR- and Infinity-shaped pools.

    python3 benchmarks/kde.py [--quick] [--threads 2] [--repeat 1]
    python3 benchmarks/kde.py --width 56 --data bits --P 36 --n 3000 10000   # Infinity-8B pools

Rows: P = 36 (Infinity scale 3) and P = 4 (VAR scale 1), d = 32, token-like pools (peaked
categorical over a random 4096 x 32 codebook) and bit pools (see vardist/selection/synthetic.py),
n in {1e3, 3e3, 1e4, 1e5} (--quick: 1e3, 3e3). --width sets d (Infinity-8B's tokens carry 56
bits: 2x2 VAE cells of 14); --data, --P and --n restrict the rows. Columns: seconds for the
authors' formulation (float32 torch.cdist over all n x n pairs per position, their code path)
and for each method, the speed-up of auto over the authors' code, the max relative difference
of each method against exact (float64; rows marked * compare against grouped where exact is
skipped), and the mean number of distinct vectors per position (U/pos). Every ratio comes from
one run on one machine; both sides get the same thread count.
"""

from __future__ import annotations

import argparse
import contextlib
import time

import numpy as np

from vardist.selection import kde_density
from vardist.selection.synthetic import bit_pool, token_pool

AUTHORS_MAX_N = 10_000   # n x n float32 per position: 1e5 would need 40 GB
EXACT_MAX_N = 10_000     # float64 n x n blocks: 1e5 would take hours on 2 cores
FAISS_MAX_PAIRS = 5e8    # flat FAISS over U distinct vectors is U^2 work: skip beyond this


def authors_density(x: np.ndarray) -> np.ndarray:
    """The released code's KDE (B = 1): per position full cdist**2, Silverman h, exp, row sums."""
    import torch

    xt = torch.from_numpy(np.ascontiguousarray(x, np.float32)).permute(1, 0, 2)
    n, d = x.shape[0], x.shape[2]
    total = torch.zeros(1, n)
    for xi in xt:
        xi = xi[None]
        dist_sq = torch.cdist(xi, xi, p=2) ** 2
        h = (n * (d + 2) / 4.0) ** (-1.0 / (d + 4)) * torch.std(xi, dim=1, unbiased=False)
        bw = h.mean() + 1e-6
        total += torch.exp(-dist_sq / (2 * bw**2)).sum(dim=-1)
    return total[0].double().numpy()


def timed(fn, repeat: int):
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def distinct_counts(x: np.ndarray) -> list[int]:
    """Distinct vectors U at each position (what the grouped plans and FAISS work on)."""
    return [len(np.unique(x[:, i], axis=0)) for i in range(x.shape[1])]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="n in {1e3, 3e3} only")
    ap.add_argument("--threads", type=int, default=2, help="threads for torch, BLAS and faiss")
    ap.add_argument("--repeat", type=int, default=1, help="best of this many runs per cell")
    ap.add_argument("--width", type=int, default=32, help="dims per position d (56: Infinity-8B bits)")
    ap.add_argument("--data", choices=("tokens", "bits"), nargs="+", default=["tokens", "bits"])
    ap.add_argument("--P", type=int, nargs="+", default=[36, 4], help="positions per pool")
    ap.add_argument("--n", type=int, nargs="+", help="pool sizes (default: see --quick)")
    args = ap.parse_args()
    if args.width < 1:
        ap.error(f"--width must be >= 1, got {args.width}")

    import faiss
    import torch

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    try:  # numpy's BLAS pool: threadpoolctl ships with scikit-learn (test extra)
        from threadpoolctl import threadpool_limits
        limits = threadpool_limits(args.threads)
    except ImportError:
        limits = contextlib.nullcontext()

    ns = args.n or ([1_000, 3_000] if args.quick else [1_000, 3_000, 10_000, 100_000])
    cols = ["authors", "exact", "grouped", "faiss", "auto"]
    print(f"threads={args.threads} repeat={args.repeat} d={args.width}  (seconds; '-' = skipped, see notes)")
    print(f"{'P':>3} {'data':>6} {'n':>7} | " + " ".join(f"{c:>8}" for c in cols)
          + f" | {'authors/auto':>12} | max rel diff vs exact: {'grouped':>8} {'faiss':>8} {'auto':>8} {'authors':>8}"
          + f" | {'U/pos':>6}")
    with limits:
        for P in args.P:
            for kind in args.data:
                make = token_pool if kind == "tokens" else bit_pool
                for n in ns:
                    x = make(n, P, args.width, seed=n + P)
                    t, out = {}, {}
                    if n <= AUTHORS_MAX_N:
                        t["authors"], out["authors"] = timed(lambda: authors_density(x), args.repeat)
                    if n <= EXACT_MAX_N:
                        t["exact"], out["exact"] = timed(lambda: kde_density(x, "exact"), args.repeat)
                    t["grouped"], out["grouped"] = timed(lambda: kde_density(x, "grouped"), args.repeat)
                    distinct = distinct_counts(x)
                    if sum(u * u for u in distinct) <= FAISS_MAX_PAIRS:
                        t["faiss"], out["faiss"] = timed(lambda: kde_density(x, "faiss"), args.repeat)
                    t["auto"], out["auto"] = timed(lambda: kde_density(x, "auto"), args.repeat)
                    ref_name = "exact" if "exact" in out else "grouped"
                    ref = out[ref_name]
                    diff = {m: (f"{np.abs(out[m] / ref - 1).max():8.1e}" if m in out and m != ref_name
                                else f"{'-':>8}") for m in ("grouped", "faiss", "auto", "authors")}
                    speed = f"{t['authors'] / t['auto']:11.1f}x" if "authors" in t else f"{'-':>12}"
                    mark = "*" if ref_name == "grouped" else " "
                    print(f"{P:>3} {kind:>6} {n:>7} | "
                          + " ".join(f"{t[c]:8.3f}" if c in t else f"{'-':>8}" for c in cols)
                          + f" | {speed} |{mark}                      "
                          + " ".join(diff[m] for m in ("grouped", "faiss", "auto", "authors"))
                          + f" | {np.mean(distinct):6.0f}", flush=True)
    print(f"notes: authors skipped for n > {AUTHORS_MAX_N} (n x n float32 per position does not fit), "
          f"exact for n > {EXACT_MAX_N} (hours), faiss where the distinct-vector pairs exceed "
          f"{FAISS_MAX_PAIRS:.0e} (flat index: U^2 work).")


if __name__ == "__main__":
    main()
