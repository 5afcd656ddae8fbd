import numpy as np
import pytest
from scipy.stats import chisquare

from vardist.selection import STRATEGIES, Selection, kde_density, select
from vardist.selection.synthetic import token_pool

SEEDS = range(1200)


def spread(n, d=2, gap=10.0):
    """n embeddings [n, 1, d] all >= gap apart, so the conflict filter rejects nothing."""
    x = np.zeros((n, 1, d))
    x[:, 0, 0] = gap * np.arange(n)
    return x


def fits(counts, expected):
    """Chi-square goodness of fit at the 1e-3 level (fixed seeds: the outcome is deterministic)."""
    keep = expected > 0
    assert counts[~keep].sum() == 0, "picked a candidate that has probability 0"
    return chisquare(counts[keep], expected[keep] * counts.sum() / expected[keep].sum()).pvalue > 1e-3


def test_branch_rule_at_its_boundary():
    density = np.array([2.0, 1.0, 1.0, 0.0])  # max 2, mean 1
    x = spread(4)
    rng = np.random.default_rng(0)
    assert select(density, x, alpha=2.0, rng=rng).branch == "high"        # max == alpha * mean
    assert select(density, x, alpha=2.0 + 1e-9, rng=rng).branch == "low"  # max < alpha * mean
    assert select(density, x, alpha=1.0, rng=rng).branch == "high"


def test_high_branch_visits_by_density_and_low_branch_at_random():
    density = np.array([1.0, 5.0, 3.0, 4.0, 2.0])
    x = spread(5)
    high = select(density, x, alpha=1.0, rep=5, rng=np.random.default_rng(1))
    np.testing.assert_array_equal(high.shortlist, [1, 3, 2, 4, 0])
    lows = {tuple(select(density, x, alpha=10.0, rep=5, rng=np.random.default_rng(s)).shortlist)
            for s in range(30)}
    assert len(lows) > 10 and all(sorted(s) == [0, 1, 2, 3, 4] for s in lows)


def test_ties_are_visited_in_index_order():
    density = np.array([1.0, 3.0, 3.0, 1.0, 3.0])
    sel = select(density, spread(5), alpha=1.0, rep=5, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(sel.shortlist, [1, 2, 4, 0, 3])


def test_conflict_filter_rejects_close_and_duplicate_candidates():
    x = np.zeros((5, 2, 1))
    x[1, 0, 0] = 1.0              # 1.0 from candidate 0: conflict
    x[2, 0, 0] = 2.0              # exactly 2.0 from candidate 0: accepted (>= thresh)
    x[3] = x[2]                   # duplicate of 2: rejected
    x[4, 1, 0] = 1.5              # 1.5 from 0, 2.5 from 2: conflict with 0
    density = np.array([5.0, 4.0, 3.0, 2.0, 1.0])
    sel = select(density, x, alpha=1.0, rep=10, conflict_thresh=2.0, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(sel.shortlist, [0, 2])
    assert sel.index in (0, 2)
    # everything passes at threshold 0 except nothing: duplicates are at distance 0 >= 0
    assert len(select(density, x, alpha=1.0, conflict_thresh=0.0, rng=np.random.default_rng(0)).shortlist) == 5


def test_rep_caps_the_shortlist_and_a_short_pool_gives_a_short_one():
    density = np.arange(10, 0, -1, dtype=float)
    x = spread(10)
    sel = select(density, x, alpha=1.0, rep=3, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(sel.shortlist, [0, 1, 2])
    assert len(select(density, x, alpha=1.0, rep=50, rng=np.random.default_rng(0)).shortlist) == 10
    # a huge threshold: the first visited is always accepted, nothing else
    lone = select(density, x, alpha=1.0, conflict_thresh=1e9, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(lone.shortlist, [0])
    assert lone.index == 0


def test_same_seed_same_choice():
    x = token_pool(200, 4, seed=5)
    density = kde_density(x)
    for strategy in STRATEGIES:
        a = select(density, x, strategy, rng=np.random.default_rng(42))
        b = select(density, x, strategy, rng=np.random.default_rng(42))
        assert isinstance(a, Selection) and a.index == b.index
        np.testing.assert_array_equal(a.shortlist, b.shortlist)
        assert 0 <= a.index < 200 and a.index in a.shortlist


def pick_counts(density, x, strategy, n, **kw):
    counts = np.zeros(n)
    expected = np.zeros(n)
    for s in SEEDS:
        sel = select(density, x, strategy, rng=np.random.default_rng(s), **kw)
        counts[sel.index] += 1
        expected[sel.shortlist] += sel.probs  # conditional on the shortlist drawn
    return counts, expected


DENSITY = np.array([9.0, 1.0, 4.0, 6.0, 2.0, 3.0, 5.0, 8.0])


@pytest.mark.parametrize("strategy, kw, members", [
    ("var-scaling", {"alpha": 1.0, "rep": 4}, [0, 7, 3, 6]),       # high: top 4 by density
    ("var-scaling", {"alpha": 100.0, "rep": 8}, list(range(8))),   # low: all, random order
    ("top-k", {"k": 3}, [0, 7, 3]),
    ("small-k", {"k": 3}, [1, 4, 5]),
])
def test_pick_follows_density_within_the_shortlist(strategy, kw, members):
    counts, _ = pick_counts(DENSITY, spread(8), strategy, 8, **kw)
    want = np.zeros(8)
    want[members] = DENSITY[members]
    assert fits(counts, want)
    assert not fits(counts, (want > 0).astype(float))  # the test can tell density from uniform


def test_random_k_picks_by_density_within_its_random_subset():
    counts, expected = pick_counts(DENSITY, None, "random-k", 8, k=3)
    np.testing.assert_allclose(expected.sum(), len(SEEDS))
    assert fits(counts, expected)
    assert (counts > 0).all()  # every candidate lands in some subset
    assert not fits(counts, np.ones(8))


def test_var_scaling_low_branch_with_the_conflict_filter():
    # candidates 0 and 1 conflict; whichever is visited first shadows the other
    x = spread(6)
    x[1] = x[0] + 0.5
    counts, expected = pick_counts(DENSITY[:6], x, "var-scaling", 6, alpha=100.0, rep=6)
    assert fits(counts, expected)


def test_infinity_picks_by_rank_weights():
    counts, _ = pick_counts(DENSITY, None, "infinity", 8, k=4)
    want = np.zeros(8)
    want[[0, 7, 3, 6]] = [4, 3, 2, 1]
    assert fits(counts, want)
    assert not fits(counts, np.where(want > 0, DENSITY, 0.0))  # ranks, not densities


def test_none_is_candidate_zero():
    sel = select(DENSITY, None, "none")
    assert sel.index == 0 and sel.branch is None
    np.testing.assert_array_equal(sel.shortlist, [0])


def test_k_larger_than_the_pool_takes_the_whole_pool():
    sel = select(DENSITY, None, "infinity", k=100, rng=np.random.default_rng(0))
    assert len(sel.shortlist) == 8
    np.testing.assert_allclose(sel.probs, np.arange(8, 0, -1) / 36)


def test_zero_densities_fall_back_to_uniform():
    sel = select(np.zeros(4), spread(4), alpha=1.0, rng=np.random.default_rng(0))
    np.testing.assert_allclose(sel.probs, 0.25)


@pytest.mark.parametrize("args, kwargs, match", [
    ((DENSITY, spread(8)), {"alpha": 0.0}, "alpha must be > 0, got 0.0"),
    ((DENSITY, spread(8)), {"alpha": -1.0}, "alpha must be > 0"),
    ((DENSITY, spread(8)), {"rep": 0}, "rep must be an integer >= 1, got 0"),
    ((DENSITY, spread(8)), {"k": 0}, "k must be an integer >= 1, got 0"),
    ((DENSITY, spread(8)), {"conflict_thresh": -1.0}, "conflict_thresh must be >= 0"),
    ((DENSITY, spread(8), "greedy"), {}, "unknown selection strategy 'greedy'"),
    ((DENSITY, spread(7)), {}, "x has 7 candidates but density has 8"),
    ((DENSITY, None), {}, "'var-scaling' needs x"),
    ((DENSITY, spread(8)), {"rng": None}, r"needs rng=np.random.default_rng\(seed\)"),
    ((DENSITY, spread(8)), {"rng": 3}, "needs rng="),
    ((np.array([1.0, np.nan]), spread(2)), {}, "non-finite value nan at index 1"),
    ((np.array([1.0, -2.0]), spread(2)), {}, "density must be >= 0, got -2.0 at index 1"),
    ((np.ones((2, 2)), spread(2)), {}, r"1-D \[n\], got shape \(2, 2\)"),
    ((np.array([]), None), {}, "n >= 1"),
    ((DENSITY, np.full((8, 1, 2), np.inf)), {}, "non-finite value inf"),
    ((DENSITY, np.zeros(8)), {}, r"embeddings \[n, ...\]"),
])
def test_bad_input_is_refused(args, kwargs, match):
    kwargs.setdefault("rng", np.random.default_rng(0))
    with pytest.raises(ValueError, match=match):
        select(*args, **kwargs)


def test_blocked_conflict_filter_equals_the_one_at_a_time_loop():
    """The vectorised filter must accept exactly what the plain greedy loop accepts."""
    from vardist.selection.strategies import _diverse

    def plain(flat, order, rep, thresh):
        chosen = []
        for j in order:
            if all(np.sqrt(((flat[c] - flat[j]) ** 2).sum()) >= thresh for c in chosen):
                chosen.append(int(j))
                if len(chosen) == rep:
                    break
        return chosen

    rng = np.random.default_rng(3)
    for _ in range(60):
        n, D = int(rng.integers(1, 600)), int(rng.integers(1, 12))
        base = rng.normal(size=(int(rng.integers(1, 15)), D))
        flat = base[rng.integers(0, len(base), n)] + rng.normal(size=(n, D)) * rng.choice([0, 0.3])
        order, rep, thresh = rng.permutation(n), int(rng.integers(1, 40)), float(rng.uniform(0, 2))
        assert _diverse(flat, order, rep, thresh, block=int(rng.integers(1, 300))).tolist() == \
            plain(flat, order, rep, thresh)
