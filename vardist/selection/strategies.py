"""Selection rules: from a pool's densities (and embeddings) to the one candidate that continues.

- var-scaling (the authors' VAR code): "low" density when max < alpha * mean, then candidates are
  visited in random order; otherwise "high", visited by density, highest first. A visited candidate
  is accepted when its flattened embedding is at L2 distance >= conflict_thresh from every accepted
  one, until rep are accepted or the pool runs out (so the shortlist may be shorter than rep; the
  first visited is always accepted, exact duplicates of an accepted one never are). One accepted
  candidate is picked with probability density / sum(density) over the shortlist.
- infinity (the authors' Infinity code): the top min(k, n) by density, picked with rank weights
  (k, k-1, ..., 1) / sum; no alpha, no diversity filter.
- top-k / random-k / small-k (paper Sec. 3.3 baselines): the k highest / k random / k lowest
  density candidates, picked with probability proportional to density.
- none: candidate 0, i.e. plain sampling (candidate 0 of a pool is the plain sample).
Ties in density are ordered by candidate index (stable sort; torch's sort does not promise one).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

STRATEGIES = ("var-scaling", "infinity", "top-k", "random-k", "small-k", "none")


@dataclass(frozen=True)
class Selection:
    index: int                  # the chosen candidate
    shortlist: np.ndarray       # int64, accepted candidates in visiting order
    branch: str | None          # "high" / "low" for var-scaling, None elsewhere
    probs: np.ndarray           # pick probability of each shortlist entry


def select(density: np.ndarray, x: np.ndarray | None = None, strategy: str = "var-scaling", *,
           alpha: float = 2.3, rep: int = 10, conflict_thresh: float = 1.8, k: int = 100,
           rng: np.random.Generator | None = None) -> Selection:
    """Choose one candidate of a pool. density: [n] (from `kde_density`); x: the pool's
    embeddings [n, ...] (needed by var-scaling's conflict filter); rng: numpy Generator, so the
    same seed gives the same choice (strategy "none" needs none)."""
    density = _check_density(density)
    n = len(density)
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown selection strategy {strategy!r}; use one of {STRATEGIES}")
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    if int(rep) != rep or rep < 1:
        raise ValueError(f"rep must be an integer >= 1, got {rep}")
    if int(k) != k or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k}")
    if not conflict_thresh >= 0:
        raise ValueError(f"conflict_thresh must be >= 0, got {conflict_thresh}")
    flat = None if x is None else _check_embeddings(x, n)
    if strategy == "none":
        return Selection(0, np.zeros(1, np.int64), None, np.ones(1))
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"strategy {strategy!r} needs rng=np.random.default_rng(seed), got {rng!r}")

    kk = min(int(k), n)
    by_density = np.argsort(-density, kind="stable")
    branch = None
    if strategy == "var-scaling":
        if flat is None:
            raise ValueError("strategy 'var-scaling' needs x, the pool's embeddings [n, ...], "
                             "for its conflict filter")
        branch = "low" if density.max() < alpha * density.mean() else "high"
        order = rng.permutation(n) if branch == "low" else by_density
        shortlist = _diverse(flat, order, int(rep), float(conflict_thresh))
        weights = density[shortlist]
    elif strategy == "infinity":
        shortlist = by_density[:kk]
        weights = np.arange(kk, 0, -1, dtype=np.float64)
    else:
        shortlist = {"top-k": by_density[:kk],
                     "small-k": np.argsort(density, kind="stable")[:kk],
                     "random-k": rng.permutation(n)[:kk]}[strategy]
        weights = density[shortlist]
    total = weights.sum()
    # all-zero scores (never from kde_density: the self term is >= 1) fall back to uniform
    probs = weights / total if total > 0 else np.full(len(shortlist), 1.0 / len(shortlist))
    pick = rng.choice(len(shortlist), p=probs)
    return Selection(int(shortlist[pick]), shortlist.astype(np.int64), branch, probs)


def _diverse(flat: np.ndarray, order: np.ndarray, rep: int, thresh: float,
             block: int = 256) -> np.ndarray:
    """Greedy: accept order[j] when it is >= thresh (L2) from every accepted row, up to rep.

    Visits the order in blocks: one vectorised pass per accepted row gives every candidate of the
    block its distance to the rows accepted before the block, and each acceptance inside the
    block folds into a running minimum over the rest of it. The arithmetic per pair is that of
    the one-at-a-time loop, so the result is identical, with no Python step per rejection."""
    accepted: list[np.ndarray] = []
    chosen: list[int] = []
    for start in range(0, len(order), block):
        ids = order[start:start + block]
        cand = flat[ids]
        nearest = np.full(len(ids), np.inf)
        for row in accepted:
            np.minimum(nearest, _dist(cand, row), out=nearest)
        j = 0
        while len(chosen) < rep:
            free = np.flatnonzero(nearest[j:] >= thresh)
            if not len(free):
                break
            j += int(free[0])
            chosen.append(int(ids[j]))
            accepted.append(cand[j])
            np.minimum(nearest[j + 1:], _dist(cand[j + 1:], cand[j]), out=nearest[j + 1:])
            j += 1
        if len(chosen) == rep:
            break
    return np.asarray(chosen, np.int64)


def _dist(rows: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.sqrt(((rows - v) ** 2).sum(axis=1))


def _check_density(density) -> np.ndarray:
    d = np.asarray(density, dtype=np.float64)
    if d.ndim != 1:
        raise ValueError(f"density must be 1-D [n], got shape {d.shape}")
    if len(d) < 1:
        raise ValueError("density is empty: a pool needs n >= 1 candidates")
    if not np.isfinite(d).all():
        bad = int(np.argmin(np.isfinite(d)))
        raise ValueError(f"density holds a non-finite value {d[bad]} at index {bad}")
    if (d < 0).any():
        bad = int(np.argmin(d))
        raise ValueError(f"density must be >= 0, got {d[bad]} at index {bad}")
    return d


def _check_embeddings(x, n: int) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim < 2:
        raise ValueError(f"x must be the pool's embeddings [n, ...], got shape {x.shape}")
    if len(x) != n:
        raise ValueError(f"x has {len(x)} candidates but density has {n}; pass the same pool")
    flat = x.reshape(n, -1).astype(np.float64)
    if not np.isfinite(flat).all():
        bad = tuple(int(v) for v in np.argwhere(~np.isfinite(x))[0])
        raise ValueError(f"x holds a non-finite value {x[bad]} at index {bad}; embeddings must be finite")
    return flat
