"""Shared token sampling: reference-exact logit filters and batch-independent random draws.

Every family samples through `sample_tokens(logits, uniforms)`: an inverse-CDF draw whose only
randomness is a uniform number per (candidate, position), taken from the item's own stream.
That is what makes an item's images independent of its batch, its worker and the pool size:

- `item_stream(seed, scale)` is keyed by nothing else (numpy Philox, counter-based).
- Rows of the stream are candidates: plain sampling uses row 0, a pool of n uses rows 0..n-1,
  so candidate 0 of any pool is the plain sample and the first n' candidates are the n'-pool.
- A stream is one flat sequence of doubles whatever the row widths asked for, so its start can
  be drawn ahead (`prefetch_stream`, off the device's critical path) and served later: the
  numbers are the same either way.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from concurrent.futures import Executor, Future
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
        self._ahead: np.ndarray | Future | None = None  # the stream's next doubles, drawn ahead
        self._pos = 0

    def rows(self, m: int, width: int, out: np.ndarray | None = None) -> np.ndarray:
        """The next m rows of `width` uniforms each, float64 [m, width] (written into `out`, a
        C-contiguous float64 [m, width] array, when given)."""
        if out is None:
            out = np.empty((m, width))
        flat, k = out.reshape(-1), 0  # a view: out is C-contiguous
        if self._ahead is not None:  # serve what was drawn ahead first, then continue the stream
            if isinstance(self._ahead, Future):
                self._ahead = self._ahead.result()
            k = min(flat.size, self._ahead.size - self._pos)
            flat[:k] = self._ahead[self._pos:self._pos + k]
            self._pos += k
            if self._pos == self._ahead.size:
                self._ahead = None
        if k < flat.size:
            self._gen.random(out=flat[k:])
        self.rows_drawn += m
        return out

    def _draw_ahead(self, count: int) -> np.ndarray:
        return self._gen.random(count)


# Streams whose start was drawn ahead, by (seed, scale): taken by the next item_stream() call
# for that key. Bounded: the oldest are dropped (a dropped one is simply drawn again). An
# Infinity pool of 3000 at scale 3 is 3000 x 36 x 32 doubles (28 MB) per item.
_AHEAD: "OrderedDict[tuple[int, int], tuple[ItemStream, int]]" = OrderedDict()
_AHEAD_LOCK = threading.Lock()
AHEAD_MAX_DOUBLES = 1 << 26  # 512 MB


def prefetch_stream(seed: int, scale: int, count: int, executor: Executor | None = None) -> None:
    """Draw the first `count` uniforms of item_stream(seed, scale) now (on `executor` when given,
    e.g. while the device runs another batch); the next item_stream(seed, scale) serves them.
    Same numbers as drawing them on demand: a stream is one sequence of doubles."""
    stream = ItemStream(seed, scale)
    stream._ahead = (executor.submit(stream._draw_ahead, count) if executor is not None
                     else stream._draw_ahead(count))
    with _AHEAD_LOCK:
        _AHEAD[(seed, scale)] = stream, count
        _AHEAD.move_to_end((seed, scale))
        while len(_AHEAD) > 1 and sum(c for _, c in _AHEAD.values()) > AHEAD_MAX_DOUBLES:
            _AHEAD.popitem(last=False)


def item_stream(seed: int, scale: int) -> ItemStream:
    with _AHEAD_LOCK:
        ahead = _AHEAD.pop((seed, scale), None)
    return ahead[0] if ahead is not None else ItemStream(seed, scale)


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


# How a pool's candidates are drawn from the scale-k logits: "iid" (every candidate from the
# same filtered distribution) or "authors" (the released VAR-Scaling code's narrowing sampler).
POOL_SAMPLINGS = ("iid", "authors")


class NarrowingDraws:
    """The authors' VAR candidate sampler, transcribed as a rule: their code calls the in-place
    top-k / top-p sampler once per candidate on the same logits tensor, so candidate j is drawn
    after j + 1 successive cuts (top-k is idempotent, top-p is not: each cut renormalises over
    the survivors and drops another tail of <= 1 - top_p).

    `logits` are the once-filtered logits (candidate 0's distribution, the plain sample's).
    Candidates are drawn in order, any number per call, each with its own uniforms row, so the
    streams, candidate 0 and nested pools behave as with i.i.d. draws."""

    def __init__(self, logits: torch.Tensor, top_k: int, top_p: float) -> None:
        self.logits, self.top_k, self.top_p = logits, top_k, top_p
        self.drawn = 0          # candidates drawn so far; self.logits is candidate `drawn`'s
        self.fixed = top_p <= 0  # a cut that drops nothing drops nothing ever after

    def draw(self, uniforms: torch.Tensor) -> torch.Tensor:
        """The next m candidates: uniforms [B, m, P] -> token ids [B, m, P]."""
        out = []
        for j in range(uniforms.shape[1]):
            if self.fixed:  # the rest share one distribution: draw them in one call
                out.append(sample_tokens(self.logits, uniforms[:, j:]))
                self.drawn += uniforms.shape[1] - j
                break
            out.append(sample_tokens(self.logits, uniforms[:, j:j + 1]))
            self.drawn += 1
            cut = filter_top_k_top_p(self.logits, self.top_k, self.top_p)
            self.fixed = torch.equal(cut.isneginf(), self.logits.isneginf())
            self.logits = cut
        return torch.cat(out, 1)


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
