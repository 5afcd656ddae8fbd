"""Synthetic candidate pools shaped like the real ones, for tests, benchmarks and docs.

- token_pool: VAR-like. Each position draws tokens from a peaked categorical (top-900 of 4096
  logits, as VAR's top_k=900) and looks them up in a random Gaussian 4096 x d codebook.
- bit_pool: Infinity-like. Each bit of each position is an independent Bernoulli whose logit is
  N(0, spread^2); bits whose minority value has probability <= 0.03 are fixed, as Infinity's
  top_p=0.97 does. spread=4.5 gives ~1500 distinct codes per position at n=3000 (d=32), close to
  the ~1525 of the Infinity-like pools the method comparisons were first measured on.
"""

from __future__ import annotations

import numpy as np


def token_pool(n: int, P: int, d: int = 32, *, vocab: int = 4096, top_k: int = 900,
               peak: float = 2.0, seed: int = 0) -> np.ndarray:
    """Float32 [n, P, d] codebook vectors of n sampled token maps of P positions."""
    rng = np.random.default_rng(seed)
    codebook = rng.standard_normal((vocab, d)).astype(np.float32)
    out = np.empty((n, P, d), np.float32)
    for i in range(P):
        logits = peak * rng.standard_normal(vocab)
        keep = np.argsort(-logits)[:top_k]
        p = np.exp(logits[keep] - logits[keep].max())
        out[:, i] = codebook[keep[rng.choice(top_k, size=n, p=p / p.sum())]]
    return out


def bit_pool(n: int, P: int, d: int = 32, *, spread: float = 4.5, top_p: float = 0.97,
             seed: int = 0) -> np.ndarray:
    """Float32 [n, P, d] 0/1 bit labels of n sampled bit maps of P positions."""
    rng = np.random.default_rng(seed)
    p = 1.0 / (1.0 + np.exp(-spread * rng.standard_normal((P, d))))
    p = np.where(np.minimum(p, 1.0 - p) <= 1.0 - top_p, np.round(p), p)
    return (rng.random((n, P, d)) < p).astype(np.float32)
