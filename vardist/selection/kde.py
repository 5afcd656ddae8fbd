"""Kernel density of a candidate pool, scored the way VAR-Scaling's released code scores it.

A pool is x [n, P, d]: n candidates, P positions of the token map, d dims per position (VAR:
codebook vectors, Infinity: 0/1 bits). Each position i is estimated on its own and summed:

    density[j] = sum_i  sum_m exp(-||x[j,i] - x[m,i]||^2 / (2 h_i^2))       (self included)
    h_i        = mean_c std_m(x[m,i,c]) * (n (d+2) / 4) ** (-1/(d+4)) + 1e-6  (population std)

Unnormalised, not in log space, self term = 1: exactly the authors' numbers (their code pools the
std mean over the batch of items too: `pooled_bandwidth`). Methods, per position:
- exact:   all n x n pairs, blocked so memory stays bounded for any n.
- grouped: the same sums over the U distinct vectors of the position with their counts.
           Dense: O(U^2 d), float64 exp only on terms that can matter (the skipped ones are
           certified to add up to < 1e-9 of a score); VAR tokens give U <= #codebook rows
           whatever n is. Binary vectors (Infinity's bits; 0/1 pools are grouped through packed
           integer codes): Hamming-distance plans with a kernel lookup table, see hamming.py.
- faiss:   per distinct vector, its k nearest distinct vectors from a FAISS index (flat; IVF for
           many distinct vectors; on the GPU when faiss has GPUs), kernel weighted by counts and
           computed from exact float64 distances. A lower bound: the dropped tail is at most
           (n - found) * exp(-D_k / (2 h^2)), zero once k covers the non-negligible neighbours.
- auto:    grouped, unless a continuous position's dense plan costs more than AUTO_COST_MAX
           (many distinct continuous vectors): then faiss with an IVF index for that position
           (approximate).
Large pools are scored on several threads, whole positions each (_sum_positions).
metric="cosine" L2-normalises every per-position vector first (zero vectors stay zero), so
||a - b||^2 = 2 - 2 cos(a, b); the bandwidth is then computed on the normalised vectors.
"""

from __future__ import annotations

import operator
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache, reduce
from typing import Sequence

import numpy as np

from vardist.selection.grouping import sorted_runs
from vardist.selection.hamming import (BLOCK, DROP_REL, binary_bits, hamming_kernel_sums, pool_codes,
                                       unique_codes)

METHODS = ("auto", "exact", "grouped", "faiss")
METRICS = ("l2", "cosine")

BANDWIDTH_FLOOR = 1e-6      # added to h, as the authors do (keeps h > 0 for identical candidates)
AUTO_COST_MAX = 8192**2 * 32  # auto: a dense exact position costing more than this -> faiss IVF
IVF_MIN = 50_000            # faiss: flat index below this many distinct vectors, IVF above
_BLOCK = BLOCK              # elements of one distance block (32 MiB of float64)


def silverman_factor(n: int, d: int) -> float:
    """Silverman's multivariate rule-of-thumb factor (n (d+2) / 4) ** (-1/(d+4))."""
    return (n * (d + 2) / 4.0) ** (-1.0 / (d + 4))


def kde_density(x: np.ndarray, method: str = "auto", bandwidth: float | np.ndarray | None = None,
                metric: str = "l2", *, k_neighbors: int = 128, nprobe: int = 16) -> np.ndarray:
    """Authors' KDE density of every candidate, float64 [n].

    x: float array [n, P, d]. bandwidth: None (per-position Silverman h, the authors' rule), a
    scalar, or one h per position [P] (e.g. from `pooled_bandwidth`). k_neighbors / nprobe: the
    faiss method's neighbours per distinct vector and IVF lists probed.
    """
    x = _check_x(x)
    if method not in METHODS:
        raise ValueError(f"unknown KDE method {method!r}; use one of {METHODS}")
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; use one of {METRICS}")
    if int(k_neighbors) < 1:
        raise ValueError(f"k_neighbors must be >= 1, got {k_neighbors}")
    n, P, d = x.shape
    hs = _bandwidth_arg(bandwidth, P)
    if method in ("auto", "exact") and n * n * P * d <= SMALL_POOL_MAX:
        return _small_pool_sums(x, hs, metric)
    # 0/1 pools (Infinity's bits) are grouped through packed integer codes: one pass over the
    # pool instead of a projection, a sort and a verification per position
    codes = pool_codes(x) if method in ("auto", "grouped") and metric == "l2" else None

    def position(i: int) -> np.ndarray:
        xi, h = _position(x, i, metric), None if hs is None else hs[i]
        if method == "exact":
            xi = np.ascontiguousarray(xi, dtype=np.float64)
            return _kernel_sums(xi, xi, None, _silverman(xi) if h is None else h)
        groups = _unique_rows(xi) if codes is None else unique_codes(codes[i], d)
        return _grouped_sums(*groups, h, method, int(k_neighbors), int(nprobe))

    return _sum_positions(position, P, parallel=n * P * d >= PARALLEL_MIN)


def pooled_bandwidth(xs: np.ndarray | Sequence[np.ndarray], metric: str = "l2") -> np.ndarray:
    """Per-position bandwidth pooled over a batch of pools, float64 [P], as the authors' code does.

    xs: [B, n, P, d] (or a list of B pools [n, P, d] of one shape). The std over each item's n
    candidates is averaged over channels and over the B items, then scaled by Silverman's factor.
    Use as `kde_density(xs[b], bandwidth=pooled_bandwidth(xs))`.
    """
    if not isinstance(xs, np.ndarray):
        xs = list(xs)
        if not xs:
            raise ValueError("pooled_bandwidth needs at least one pool, got an empty list")
        shapes = {np.shape(p) for p in xs}
        if len(shapes) != 1:
            raise ValueError(f"pools to pool a bandwidth over must share one shape, got {sorted(shapes)}")
        xs = np.stack([np.asarray(p) for p in xs])
    if xs.ndim != 4:
        raise ValueError(f"xs must be [B, n, P, d] (items, candidates, positions, dims), got shape {xs.shape}")
    pools = [_check_x(p) for p in xs]
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; use one of {METRICS}")
    _, n, P, d = xs.shape
    sig = np.array([[_mean_std(_position(p, i, metric)) for i in range(P)] for p in pools])
    return silverman_factor(n, d) * sig.mean(axis=0) + BANDWIDTH_FLOOR


def log_kde_density(x: np.ndarray, bandwidth: float | None = None) -> np.ndarray:
    """Paper eq. 2 on whole maps, in log space: log f(x_j), float64 [n].

    Every candidate is one vector of D = P*d dims (x [n, D] or [n, P, d]); isotropic Gaussian
    kernel normalised by n (2 pi)^(D/2) h^D, h = Silverman on D dims (eq. 3) unless given. This is
    the textbook estimator (what scikit-learn's KernelDensity computes), not the authors' score.
    """
    x = np.asarray(x)
    if x.ndim == 2:
        x = x[:, None, :]
    x = _check_x(x)
    flat = np.ascontiguousarray(x.reshape(len(x), -1), dtype=np.float64)
    n, D = flat.shape
    h = _silverman(flat) if bandwidth is None else float(_bandwidth_arg(bandwidth, 1)[0])
    out = np.empty(n)
    for rows, e in _exponent_blocks(flat, flat, 0.5 / h**2):
        top = e.max(axis=1, keepdims=True)
        out[rows] = top[:, 0] + np.log(np.exp(e - top).sum(axis=1))
    return out - np.log(n) - 0.5 * D * np.log(2 * np.pi) - D * np.log(h)


# --- per-position kernels -------------------------------------------------------------------



SMALL_POOL_MAX = 1 << 22   # n^2 P d at most this: every position at once in one batched GEMM


def _small_pool_sums(x: np.ndarray, hs: np.ndarray | None, metric: str) -> np.ndarray:
    """Exact densities of a small pool (e.g. VAR's n = 50-100 at scale 1) in a few whole-array
    operations: per-position planning would cost more than the arithmetic itself."""
    n, P, _ = x.shape
    xs = np.stack([_position(x, i, metric) for i in range(P)], axis=1).astype(np.float64)
    if hs is None:
        hs = np.array([_silverman(xs[:, i]) for i in range(P)])
    xc = (xs - xs.mean(axis=0)).transpose(1, 0, 2)             # [P, n, d], centred: small norms
    norms = np.einsum("pnd,pnd->pn", xc, xc)
    sq = norms[:, :, None] + norms[:, None, :] - 2.0 * (xc @ xc.transpose(0, 2, 1))
    np.maximum(sq, 0.0, out=sq)                                # [P, n, n] squared distances
    sq *= (-0.5 / hs**2)[:, None, None]
    return np.exp(sq, out=sq).sum(axis=(0, 2))


PARALLEL_MIN = 1 << 20     # pools with n P d at least this score positions on several threads


def _sum_positions(score, P: int, parallel: bool) -> np.ndarray:
    """sum_i score(i) over the positions. Positions are independent and mostly small GEMMs and
    sorts, which parallelise far better across positions than inside one BLAS call: with
    `parallel`, as many threads as BLAS may use each take whole positions, with BLAS and OpenMP
    (FAISS) held to one thread meanwhile. Summed in position order either way, so the result does
    not depend on the thread count."""
    workers = min(P, _blas_threads()) if parallel else 1
    if workers <= 1:
        parts = map(score, range(P))
    else:
        # BLAS's thread count is process-wide; OpenMP's (FAISS) is per calling thread, so each
        # worker sets its own
        with _thread_controller().limit(limits=1, user_api="blas"), \
                ThreadPoolExecutor(workers, initializer=_one_openmp_thread) as pool:
            parts = list(pool.map(score, range(P)))
    return reduce(operator.add, parts)


@lru_cache(maxsize=1)
def _thread_controller():
    from vardist.selection.faiss_flavour import load_faiss

    load_faiss()  # loaded first, so that its OpenMP and BLAS are under control too
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def _one_openmp_thread() -> None:
    from vardist.selection.faiss_flavour import load_faiss

    load_faiss().omp_set_num_threads(1)


def _blas_threads() -> int:
    """Threads BLAS may use now (the user's or threadpoolctl's limit, else its default)."""
    counts = [lib["num_threads"] for lib in _thread_controller().info() if lib["user_api"] == "blas"]
    return max(counts, default=1)


def _grouped_sums(u: np.ndarray, inv: np.ndarray, counts: np.ndarray, h: float | None, method: str,
                  k: int, nprobe: int) -> np.ndarray:
    """Scores at one position from its grouping: distinct rows u (float64), inverse, counts."""
    if h is None:
        h = _silverman(u, counts)
    if method == "faiss":
        return _faiss_sums(u, counts, h, k, nprobe, ivf=len(u) >= IVF_MIN)[inv]
    binary = binary_bits(u)
    if binary is not None:  # bits: Hamming-distance plans, no exp per pair (hamming.py)
        return hamming_kernel_sums(*binary, counts, h)[inv]
    if method == "grouped" or len(u) ** 2 * u.shape[1] <= AUTO_COST_MAX:
        # n terms below DROP_REL / n each add up to < DROP_REL of a score (>= 1, its self term)
        return _kernel_sums(u, u, counts, h, skip_below=DROP_REL / len(inv))[inv]
    # a flat index would cost the same U^2 as the exact plan: only IVF makes the fallback cheaper
    return _faiss_sums(u, counts, h, k, nprobe, ivf=True)[inv]


def _centred(q: np.ndarray, db: np.ndarray, h: float):
    """Centre both sets on db's mean (the kernel is translation invariant; it keeps norms small)
    and say whether the fast factorised form e^(-g|q|^2) e^(2g q.db) e^(-g|db|^2), g = 1/(2h^2),
    stays inside float64's exp range; otherwise distances are formed first (_exponent_blocks)."""
    c = db.mean(axis=0)
    q, db = q - c, db - c
    g = 0.5 / h**2
    sq_q, sq_db = np.einsum("ij,ij->i", q, q), np.einsum("ij,ij->i", db, db)
    return q, db, g, sq_q, sq_db, g * max(sq_q.max(), sq_db.max()) <= 300.0


def _exp_gram_blocks(q: np.ndarray, db: np.ndarray, g: float):
    """Yield (row slice, e^(2g q.db) [rows, len(db)]) in blocks of bounded size."""
    step = max(1, _BLOCK // max(1, len(db)))
    for s in range(0, len(q), step):
        rows = slice(s, s + step)
        k = q[rows] @ db.T
        k *= 2.0 * g
        yield rows, np.exp(k, out=k)


def _exponent_blocks(q: np.ndarray, db: np.ndarray, g: float):
    """Yield (row slice, -g * ||q_j - db_m||^2 [rows, len(db)]) in blocks of bounded size."""
    sq_q, sq_db = np.einsum("ij,ij->i", q, q), np.einsum("ij,ij->i", db, db)
    step = max(1, _BLOCK // max(1, len(db)))
    for s in range(0, len(q), step):
        rows = slice(s, s + step)
        e = q[rows] @ db.T
        e *= 2.0
        e -= sq_q[rows, None]
        e -= sq_db[None, :]
        np.minimum(e, 0.0, out=e)  # squared distances are >= 0
        e *= g
        yield rows, e


def _kernel_sums(q: np.ndarray, db: np.ndarray, weights: np.ndarray | None, h: float,
                 skip_below: float | None = None) -> np.ndarray:
    """sum_m w_m exp(-||q_j - db_m||^2 / (2 h^2)) for every row of q (w = 1 when None).

    skip_below: leave out terms below this value (an absolute bound on each dropped term). Distinct
    codebook vectors are mostly far apart, so few terms survive and float64 exp (the slow part,
    ~10x the cost of float32's) runs on those only."""
    w = np.ones(len(db)) if weights is None else weights
    q, db, g, sq_q, sq_db, fast = _centred(q, db, h)
    out = np.empty(len(q))
    if skip_below is not None:
        cut = np.log(skip_below)
        for rows, e in _exponent_blocks(q, db, g):
            k = np.exp(e, out=np.zeros_like(e), where=e >= cut)  # exp only where it matters
            out[rows] = k @ w
        return out
    if fast:  # one GEMM + one exp pass per block; the row/column factors fold into vectors
        v = w * np.exp(-g * sq_db)
        for rows, k in _exp_gram_blocks(q, db, g):
            out[rows] = np.exp(-g * sq_q[rows]) * (k @ v)
    else:
        for rows, e in _exponent_blocks(q, db, g):
            out[rows] = np.exp(e, out=e) @ w
    return out


def _unique_rows(xi: np.ndarray):
    """Distinct rows of xi (as float64) with inverse and counts. Rows are keyed by a random
    projection (a GEMV and a 1-D sort, ~10x faster than np.unique(axis=0)), then the grouping is
    checked element by element, so a key collision can only cost time, never correctness.
    float32 rows get two float32 projections read as one int64 key (48 significant bits), so
    the rows are never cast."""
    if xi.dtype == np.float32:
        key = np.ascontiguousarray(xi @ _projection(xi.shape[1], 2).astype(np.float32)).view(np.int64)[:, 0]
    else:
        key = np.asarray(xi, dtype=np.float64) @ _projection(xi.shape[1], 1)[:, 0]
    order = np.argsort(key)  # unstable is fine: any member of a group can represent it
    starts, inv, counts = sorted_runs(order, key[order])
    first = order[starts]
    if not np.array_equal(xi[first][inv], xi):
        _, first, inv, counts = np.unique(xi, axis=0, return_index=True, return_inverse=True,
                                          return_counts=True)
        inv = inv.reshape(-1)
    return np.asarray(xi[first], dtype=np.float64), inv, counts.astype(np.float64)


def _projection(d: int, m: int) -> np.ndarray:
    """[d, m] fixed random weights of mixed sign (a fixed seed: groupings are reproducible)."""
    return np.random.default_rng(0x5EED).uniform(0.5, 1.5, (d, m)) * np.where(np.arange(d) % 2, 1, -1)[:, None]


def _faiss_sums(u: np.ndarray, counts: np.ndarray, h: float, k: int, nprobe: int,
                ivf: bool) -> np.ndarray:
    """Kernel sums over each distinct vector's k nearest distinct vectors (FAISS finds them; the
    kernel uses exact float64 distances so found pairs carry no float32 rounding)."""
    from vardist.selection.faiss_flavour import load_faiss

    faiss = load_faiss()  # lazy: only this method needs it

    U, d = u.shape
    kk = min(k, U)
    uf = np.ascontiguousarray(u, dtype=np.float32)
    if not ivf:
        index = faiss.IndexFlatL2(d)
    else:
        nlist = max(1, int(2 * np.sqrt(U)))
        index = faiss.IndexIVFFlat(faiss.IndexFlatL2(d), d, nlist)
        index.cp.niter = 10  # coarse centroids only route queries: a rough k-means is enough
        sample = np.random.default_rng(0).choice(U, size=min(U, 32 * nlist), replace=False)
        index.train(uf[np.sort(sample)])
        index.nprobe = nprobe
    if getattr(faiss, "get_num_gpus", lambda: 0)() > 0:
        kk = min(kk, 2048)  # the GPU k-selection limit
        res = faiss.StandardGpuResources()  # must outlive the GPU index
        index = faiss.index_cpu_to_gpu(res, 0, index)
    index.add(uf)
    _, nbr = index.search(uf, kk)
    found = nbr >= 0
    nbr = np.where(found, nbr, 0)
    out = np.empty(U)
    step = max(1, _BLOCK // (kk * d))
    for s in range(0, U, step):
        b = slice(s, s + step)
        d2 = ((u[b, None, :] - u[nbr[b]]) ** 2).sum(axis=2)
        out[b] = (np.exp(-d2 / (2.0 * h * h)) * counts[nbr[b]] * found[b]).sum(axis=1)
    return out


# --- input handling -------------------------------------------------------------------------

def _check_x(x) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 3:
        raise ValueError(f"x must be [n, P, d] (candidates, positions, dims), got shape {x.shape}; "
                         f"reshape a flat [n, D] pool to [n, 1, D]")
    if x.dtype == bool or not np.issubdtype(x.dtype, np.number) or np.iscomplexobj(x):
        raise ValueError(f"x must hold real numbers, got dtype {x.dtype}; cast with x.astype(np.float32)")
    n, P, d = x.shape
    if n < 1 or P < 1 or d < 1:
        raise ValueError(f"x needs n >= 1 candidates, P >= 1 positions and d >= 1 dims, got shape {x.shape}")
    # one float64 sum propagates any NaN/inf (and cannot overflow on finite float32 input);
    # only when it is not finite is the elementwise scan paid for
    if not np.isfinite(x.sum(dtype=np.float64)):
        finite = np.isfinite(x)
        if not finite.all():
            bad = tuple(int(v) for v in np.argwhere(~finite)[0])
            raise ValueError(f"x holds a non-finite value {x[bad]} at index {bad}; embeddings must be finite")
    return x


def _position(x: np.ndarray, i: int, metric: str) -> np.ndarray:
    """The n vectors at position i: a view for l2 (grouping reads it without a copy), float64
    L2-normalised vectors for cosine."""
    xi = x[:, i, :]
    if metric == "cosine":
        xi = np.array(xi, dtype=np.float64)
        norm = np.linalg.norm(xi, axis=1, keepdims=True)
        xi /= np.where(norm > 0, norm, 1.0)
    return xi


def _mean_std(xi: np.ndarray, counts: np.ndarray | None = None) -> float:
    """Population std over the candidates, per channel, averaged over channels (the authors'
    sigma); with counts, xi holds distinct rows with their multiplicities."""
    w = np.ones(len(xi)) if counts is None else counts
    n = w.sum()
    mean = w @ xi / n
    return float(np.sqrt(w @ (xi - mean) ** 2 / n).mean())


def _silverman(xi: np.ndarray, counts: np.ndarray | None = None) -> float:
    n = len(xi) if counts is None else int(counts.sum())
    return silverman_factor(n, xi.shape[1]) * _mean_std(xi, counts) + BANDWIDTH_FLOOR


def _bandwidth_arg(bandwidth, P: int) -> np.ndarray | None:
    if bandwidth is None:
        return None
    h = np.asarray(bandwidth, dtype=np.float64)
    if h.ndim == 0:
        h = np.full(P, float(h))
    if h.shape != (P,):
        raise ValueError(f"bandwidth must be a scalar or one value per position ({P}), got shape {h.shape}")
    if not (np.isfinite(h).all() and (h > 0).all()):
        raise ValueError(f"bandwidth must be finite and > 0, got {bandwidth}")
    return h
