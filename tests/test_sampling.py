"""Shared sampling: reference filter semantics and batch-independent, nested draws."""

import numpy as np
import pytest
import torch

from vardist.models.sampling import batch_uniforms, filter_top_k_top_p, item_stream, sample_tokens


def test_top_k_keeps_ties_and_drops_strictly_smaller():
    logits = torch.tensor([[3.0, 1.0, 3.0, 2.0, 0.5]])
    out = filter_top_k_top_p(logits, top_k=2)
    assert torch.isfinite(out).tolist() == [[True, False, True, False, False]]
    out = filter_top_k_top_p(logits, top_k=3)
    assert torch.isfinite(out).tolist() == [[True, False, True, True, False]]


def test_top_p_drops_tail_at_or_below_one_minus_p_and_keeps_the_top():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log()
    # ascending cumulative: 0.05, 0.20, 0.50, 1.0 -> with top_p 0.8 drop cum <= 0.2
    kept = torch.isfinite(filter_top_k_top_p(logits, top_p=0.8))
    assert kept.tolist() == [[True, True, False, False]]
    kept = torch.isfinite(filter_top_k_top_p(logits, top_p=1e-6))
    assert kept.tolist() == [[True, False, False, False]]
    assert torch.equal(filter_top_k_top_p(logits), logits)


def test_sample_tokens_follows_the_distribution():
    probs = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    logits = probs.log().float().view(1, 1, 4)
    u = batch_uniforms([item_stream(7, 0)], 40000, 1)
    idx = sample_tokens(logits, u).flatten()
    freq = torch.bincount(idx, minlength=4).double() / idx.numel()
    assert torch.allclose(freq, probs, atol=0.01)


@pytest.mark.parametrize("V", [2, 3, 4])
def test_small_vocab_comparisons_equal_the_binary_search(monkeypatch, V):
    from vardist.models import sampling

    logits = torch.randn(2, 300, V)
    logits[0, :50, 0] = float("-inf")  # a masked entry: a flat step in the cdf
    logits[1, :50, -1] = float("-inf")
    u = batch_uniforms([item_stream(s, 4) for s in range(2)], 64, 300)
    u[:, 0] = 0.0  # the lower edge
    u[:, 1] = np.nextafter(1.0, 0.0)  # the upper edge, where the target can round up to the total
    fast = sample_tokens(logits, u)
    monkeypatch.setattr(sampling, "SMALL_VOCAB", 0)
    assert torch.equal(fast, sample_tokens(logits, u))


def test_greedy_is_argmax_and_masked_tokens_never_drawn():
    logits = torch.randn(3, 5, 50)
    u = batch_uniforms([item_stream(s, 1) for s in range(3)], 200, 5)
    idx = sample_tokens(filter_top_k_top_p(logits, top_k=1), u)
    assert torch.equal(idx, logits.argmax(-1)[:, None, :].expand_as(idx))
    idx = sample_tokens(filter_top_k_top_p(logits, top_k=5), u)
    allowed = logits.topk(5, -1).indices
    assert all(int(t) in allowed[b, p] for b in range(3) for p in range(5) for t in idx[b, :, p])


def test_streams_are_nested_keyed_and_batch_independent():
    a = item_stream(11, 2).rows(10, 4)
    s = item_stream(11, 2)
    b = np.concatenate([s.rows(3, 4), s.rows(7, 4)])
    assert np.array_equal(a, b)  # chunked draws == one draw: first n' rows are the n'-pool
    assert not np.array_equal(a, item_stream(11, 3).rows(10, 4))
    assert not np.array_equal(a, item_stream(12, 2).rows(10, 4))
    alone = batch_uniforms([item_stream(5, 1)], 4, 3)
    mixed = batch_uniforms([item_stream(9, 1), item_stream(5, 1)], 4, 3)
    assert torch.equal(alone[0], mixed[1])


def test_negative_seed_is_refused():
    with pytest.raises(ValueError, match="seed"):
        item_stream(-1, 0)
