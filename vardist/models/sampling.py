"""Shared token sampling: reference-exact logit filters and batch-independent random draws.

Every family samples through `sample_tokens(logits, uniforms)`: an inverse-CDF draw whose only
randomness is a uniform number per (candidate, position), taken from the item's own stream.
That is what makes an item's images independent of its batch, its worker and the pool size:

- `item_stream(seed, scale)` is keyed by nothing else (numpy Philox, counter-based).
- Rows of the stream are candidates: plain sampling uses row 0, a pool of n uses rows 0..n-1,
  so candidate 0 of any pool is the plain sample and the first n' candidates are the n'-pool.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch


class ItemStream:
    """Uniform numbers in [0, 1) for one item at one scale, drawn row by row (candidate-major)."""

    def __init__(self, seed: int, scale: int) -> None:
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self._gen = np.random.Generator(np.random.Philox(np.random.SeedSequence([seed, scale])))
        self.rows_drawn = 0

    def rows(self, m: int, width: int, out: np.ndarray | None = None) -> np.ndarray:
        """The next m rows of `width` uniforms each, float64 [m, width] (written into `out`, a
        C-contiguous float64 [m, width] array, when given)."""
        if out is None:
            out = np.empty((m, width))
        self._gen.random(out=out)
        self.rows_drawn += m
        return out


def item_stream(seed: int, scale: int) -> ItemStream:
    return ItemStream(seed, scale)


def batch_uniforms(streams: Sequence[ItemStream], m: int, width: int,
                   device: torch.device | str = "cpu") -> torch.Tensor:
    """The next m rows of every item's stream, float64 [B, m, width] on `device`."""
    u = np.empty((len(streams), m, width))
    for s, rows in zip(streams, u):
        s.rows(m, width, out=rows)
    return torch.from_numpy(u).to(device)


def filter_top_k_top_p(logits: torch.Tensor, top_k: int = 0, top_p: float = 0.0) -> torch.Tensor:
    """Mask logits [..., V] to -inf outside the top-k / nucleus, as the reference samplers do.

    top-k: every logit strictly below the k-th largest is dropped (ties with it are kept).
    top-p: sort ascending, softmax, cumulative sum; entries whose cumulative probability is
    <= 1 - top_p are dropped, the largest entry always survives. Returns a new tensor.
    """
    V = logits.shape[-1]
    out = logits.clone()
    if top_k > 0:
        kth = out.topk(min(top_k, V), dim=-1, largest=True, sorted=False).values.amin(-1, keepdim=True)
        out.masked_fill_(out < kth, float("-inf"))
    if top_p > 0:
        sorted_logits, order = out.sort(dim=-1, descending=False)
        cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop_sorted = cum <= (1 - top_p)
        drop_sorted[..., -1] = False
        drop = torch.zeros_like(drop_sorted).scatter_(-1, order, drop_sorted)
        out.masked_fill_(drop, float("-inf"))
    return out


SMALL_VOCAB = 4  # vocabularies this small are sampled by comparisons instead of a binary search


def sample_tokens(logits: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF draws: logits [B, P, V] (already filtered), uniforms [B, m, P] in [0, 1)
    -> token ids int64 [B, m, P]. A one-hot distribution (top_k=1) always gives its argmax."""
    B, P, V = logits.shape
    probs = torch.softmax(logits.double(), dim=-1)
    cdf = probs.cumsum(dim=-1)
    uniforms = uniforms.to(cdf.device, torch.float64)
    if V <= SMALL_VOCAB:
        # count the cdf entries <= target among the first V - 1: the same index as the clamped
        # searchsorted below, in V - 1 vector compares over [B, m, P] (no transposes); the
        # Infinity bitwise classifier has V = 2: one compare
        targets = uniforms * cdf[:, None, :, -1]
        idx = (targets >= cdf[:, None, :, 0]).long()
        for k in range(1, V - 1):
            idx += targets >= cdf[:, None, :, k]
        return idx
    targets = uniforms.transpose(1, 2) * cdf[..., -1:]
    idx = torch.searchsorted(cdf, targets.contiguous(), right=True).clamp_(max=V - 1)
    return idx.transpose(1, 2)
