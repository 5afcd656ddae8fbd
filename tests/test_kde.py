import math

import numpy as np
import pytest

from vardist.selection import METHODS, kde_density, log_kde_density, pooled_bandwidth
from vardist.selection import grouping, hamming, kde
from vardist.selection.synthetic import bit_pool, token_pool


def loop_density(x, h=None):
    """The authors' formula, transcribed with plain loops (h: None or one value per position)."""
    n, P, d = x.shape
    out = [0.0] * n
    for i in range(P):
        if h is None:
            sig = 0.0
            for c in range(d):
                mu = sum(float(x[m, i, c]) for m in range(n)) / n
                sig += math.sqrt(sum((float(x[m, i, c]) - mu) ** 2 for m in range(n)) / n)
            hi = (sig / d) * (n * (d + 2) / 4) ** (-1 / (d + 4)) + 1e-6
        else:
            hi = float(h[i])
        for j in range(n):
            for m in range(n):
                dist2 = sum((float(x[j, i, c]) - float(x[m, i, c])) ** 2 for c in range(d))
                out[j] += math.exp(-dist2 / (2 * hi * hi))
    return np.array(out)


def authors_torch(x, dtype=np.float32):
    """The authors' code path: torch.cdist per position (float32 in their code), Silverman h."""
    torch = pytest.importorskip("torch")
    xt = torch.from_numpy(np.asarray(x, dtype)).permute(1, 0, 2)
    n, d = x.shape[0], x.shape[2]
    total = torch.zeros(n, dtype=xt.dtype)
    for xi in xt:
        xi = xi[None]
        d2 = torch.cdist(xi, xi, p=2) ** 2
        h = ((n * (d + 2) / 4.0) ** (-1.0 / (d + 4)) * xi.std(dim=1, unbiased=False)).mean() + 1e-6
        total += torch.exp(-d2 / (2 * h**2)).sum(-1)[0]
    return total.numpy().astype(np.float64)


def small_pool(seed=0, n=9, P=3, d=4):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, P, d)) * 0.7
    x[3] = x[1]            # duplicates, so grouping has something to group
    x[5, 0] = x[2, 0]
    return x


@pytest.mark.parametrize("method", METHODS)
def test_every_method_matches_the_plain_loop(method):
    x = small_pool()
    np.testing.assert_allclose(kde_density(x, method), loop_density(x), rtol=1e-10)


def test_bandwidth_override_matches_the_loop():
    x = small_pool(1)
    h = np.array([0.3, 1.1, 2.0])
    np.testing.assert_allclose(kde_density(x, "exact", bandwidth=h), loop_density(x, h), rtol=1e-10)
    np.testing.assert_allclose(kde_density(x, "grouped", bandwidth=0.5), loop_density(x, [0.5] * 3),
                               rtol=1e-10)


def test_exact_matches_the_authors_code_path():
    x = token_pool(300, 4, seed=3)
    # their float32 cdist rounds ||a||^2 + ||b||^2 - 2ab; run in float64 the numbers are ours
    np.testing.assert_allclose(kde_density(x, "exact"), authors_torch(x), rtol=2e-5)
    np.testing.assert_allclose(kde_density(x, "grouped"), authors_torch(x, np.float64), rtol=1e-9)


def test_exact_is_blocked_without_changing_numbers(monkeypatch):
    x = small_pool(2, n=40)
    whole = kde_density(x, "exact")
    monkeypatch.setattr(kde, "_BLOCK", 64)  # 1 row per block
    np.testing.assert_allclose(kde_density(x, "exact"), whole, rtol=1e-12)


def only_plan(monkeypatch, name):
    """Make the Hamming planner offer just one plan (which must apply)."""
    offered = hamming._plans

    def plans(*args):
        kept = [p for p in offered(*args) if p[1] == name]
        assert kept, f"plan {name} does not apply to {args}"
        return kept

    monkeypatch.setattr(hamming, "_plans", plans)


def uniform_bits(n, P, d, seed=0):
    return (np.random.default_rng(seed).random((n, P, d)) < 0.5).astype(np.float32)


@pytest.mark.parametrize("pool", ["tokens", "bits", "bits-cube", "bits-join", "bits-flat", "continuous"])
def test_grouped_equals_exact(pool, monkeypatch):
    if pool.startswith("bits-"):
        only_plan(monkeypatch, pool[5:])
    x = {"tokens": lambda: token_pool(500, 4, seed=1),
         "continuous": lambda: np.random.default_rng(1).normal(size=(300, 2, 8))}.get(
        pool, lambda: bit_pool(600, 3, seed=1))()
    exact = kde_density(x, "exact")
    np.testing.assert_allclose(kde_density(x, "grouped"), exact, rtol=1e-6)
    np.testing.assert_allclose(kde_density(x, "auto"), exact, rtol=1e-6)


@pytest.mark.parametrize("plan", ["cube", "flat"])
@pytest.mark.parametrize("bandwidth", [None, 0.5, 2.0])
def test_hamming_plans_equal_exact_on_uniform_bits(monkeypatch, plan, bandwidth):
    # uniform bits with Silverman's h put real weight at Hamming 1-5, a wide h on every pair
    only_plan(monkeypatch, plan)
    x = uniform_bits(700, 2, 12, seed=2)
    exact = kde_density(x, "exact", bandwidth=bandwidth)
    got = kde_density(x, "grouped", bandwidth=bandwidth)
    assert np.abs(got / exact - 1).max() <= hamming.DROP_REL  # certified truncation bound
    if plan == "cube":  # no truncation at all
        np.testing.assert_allclose(got, exact, rtol=1e-12)


@pytest.mark.parametrize("radius", [1, 2])
def test_join_is_the_sum_within_its_radius(radius):
    # a wide kernel (r = 0.3) makes every dropped term visible: exactly Hamming <= radius counts
    rng = np.random.default_rng(radius)
    bits = np.unique(rng.random((400, 10)) < 0.5, axis=0)
    counts = rng.integers(1, 5, len(bits)).astype(np.float64)
    table = 0.3 ** np.arange(11)
    ham = (bits[:, None, :] != bits[None, :, :]).sum(-1)
    want = ((ham <= radius) * table[ham] * counts[None, :]).sum(1)
    got = hamming._join_sums(hamming._pack_int(bits), counts, table, radius)
    np.testing.assert_allclose(got, want, rtol=1e-13)


def test_sort_order_with_and_without_packed_indices():
    keys = np.random.default_rng(0).integers(0, 1 << 20, 5000).astype(np.uint64)
    for bits in (20, 60):  # 20 + 13 index bits fit one uint64; 60 + 13 do not
        order, sorted_keys = grouping.sort_order(keys, bits)
        np.testing.assert_array_equal(sorted_keys, np.sort(keys))
        np.testing.assert_array_equal(keys[order], sorted_keys)


def test_bits_take_the_hamming_plans_and_tokens_do_not():
    bits = kde._unique_rows(kde._position(bit_pool(2000, 1, seed=2), 0, "l2"))[0]
    toks = kde._unique_rows(kde._position(token_pool(2000, 1, seed=2), 0, "l2"))[0]
    found = hamming.binary_bits(bits)
    assert found is not None and found[1] == 1.0 and found[0].shape[1] < 32  # fixed bits dropped
    np.testing.assert_array_equal(found[0], bits[:, bits.min(0) != bits.max(0)] == 1)
    assert hamming.binary_bits(toks) is None


@pytest.mark.parametrize("values, gap", [
    ([[0, 0], [1, 1], [0, 1]], 1.0),
    ([[-1, 5], [1, 7], [1, 5]], 2.0),                      # own low value per dim, one gap
    ([[0, 0], [1, 2], [0, 2]], None),                      # two gaps
    ([[0, 0], [1, 1], [2, 1]], None),                      # a third value
    ([[3, 3], [3, 3]], 0.0),                               # nothing varies
])
def test_binary_detection(values, gap):
    found = hamming.binary_bits(np.array(values, dtype=np.float64))
    assert (found is None) == (gap is None)
    if gap is not None:
        assert found[1] == gap


def test_scaled_sign_codes_use_the_gap():
    # BSQ-style codes +-1/sqrt(d): ||a - b||^2 = (2/sqrt(d))^2 Hamming(a, b)
    x = (2 * uniform_bits(500, 2, 16, seed=3) - 1) / 4.0
    np.testing.assert_allclose(kde_density(x, "grouped"), kde_density(x, "exact"), rtol=1e-9)


def test_hamming_blocks_do_not_change_numbers(monkeypatch):
    x = uniform_bits(600, 1, 13, seed=4)
    want = {plan: None for plan in ("cube", "flat")}
    for plan in want:
        with monkeypatch.context() as m:
            only_plan(m, plan)
            want[plan] = kde_density(x, "grouped")
            m.setattr(hamming, "BLOCK", 1000)   # many small blocks
            m.setattr(hamming, "CUBE_CHUNK_BITS", 5)  # and a ragged last cube chunk
            np.testing.assert_allclose(kde_density(x, "grouped"), want[plan], rtol=1e-13)


def test_hamming_planner_prices_the_plans():
    plans = lambda *a: min(hamming._plans(*a))[1]
    assert plans(20_000, 18, 1, 1e-8) == "cube"      # many codes over few varying bits
    assert plans(2_000, 32, 8, 1e-2) == "flat"       # few codes, wide radius
    assert plans(30_000, 40, 1, 1e-8) == "join"      # too many bits for a cube, narrow kernel
    assert "join" not in [p[1] for p in hamming._plans(100, 22, 3, 1e-3)]  # radius 3
    assert "cube" not in [p[1] for p in hamming._plans(100, 22, 1, 1e-40)]  # r^v subnormal


def test_far_apart_data_uses_the_overflow_safe_kernel():
    x = small_pool(5) * 1e4  # |x|^2 / h^2 far beyond float64's exp range in the fast form
    np.testing.assert_allclose(kde_density(x, "exact"), loop_density(x), rtol=1e-10)
    np.testing.assert_allclose(kde_density(x, "exact", bandwidth=50.0),
                               loop_density(x, [50.0] * 3), rtol=1e-10)


def test_unique_rows_groups_negative_zero_and_matches_numpy():
    x = np.array([[0.0, 1.0], [-0.0, 1.0], [2.0, 3.0], [0.0, 1.0], [2.0, 3.0]])
    u, inv, counts = kde._unique_rows(kde._position(x[:, None, :], 0, "l2"))
    assert len(u) == 2 and sorted(counts.tolist()) == [2.0, 3.0]
    np.testing.assert_array_equal(u[inv], np.abs(x))


def top_agree(approx, exact, k=10):
    """Top-k by approx carry the same exact densities as the true top-k (ties may swap)."""
    ours = np.sort(exact[np.argsort(-approx, kind="stable")[:k]])
    best = np.sort(exact)[-k:]
    return np.allclose(ours, best, rtol=1e-9)


@pytest.mark.parametrize("pool", ["tokens", "bits"])
def test_faiss_matches_exact_on_token_like_data(pool):
    x = token_pool(1500, 4, seed=7) if pool == "tokens" else bit_pool(1500, 4, seed=7)
    exact = kde_density(x, "exact")
    approx = kde_density(x, "faiss", k_neighbors=64)
    assert np.abs(approx / exact - 1).max() < 1e-6
    assert top_agree(approx, exact, 10) and top_agree(approx, exact, 50)


def test_faiss_ivf_index_on_many_distinct_vectors(monkeypatch):
    monkeypatch.setattr(kde, "IVF_MIN", 100)  # force the IVF index on a small pool
    x = token_pool(2000, 2, seed=8)
    exact = kde_density(x, "exact")
    approx = kde_density(x, "faiss", k_neighbors=32, nprobe=8)
    assert np.abs(approx / exact - 1).max() < 1e-3
    assert top_agree(approx, exact, 10)


def test_faiss_is_a_lower_bound_within_its_tail_bound():
    # continuous data with a few neighbours: truncation error is real and bounded
    x = np.random.default_rng(9).normal(size=(400, 1, 3))
    exact = kde_density(x, "exact")
    k = 20
    approx = kde_density(x, "faiss", k_neighbors=k)
    assert (approx <= exact * (1 + 1e-12)).all() and (approx < exact * (1 - 1e-6)).any()
    xi = kde._position(x, 0, "l2")
    h = kde._silverman(xi)
    d2 = ((xi[:, None] - xi[None]) ** 2).sum(-1)
    kth = np.sort(d2, axis=1)[:, k - 1]
    assert (exact - approx <= (400 - k) * np.exp(-kth / (2 * h * h)) + 1e-9).all()
    np.testing.assert_allclose(kde_density(x, "faiss", k_neighbors=400), exact, rtol=1e-10)


def test_auto_falls_back_to_faiss_ivf_for_expensive_continuous_positions(monkeypatch):
    monkeypatch.setattr(kde, "AUTO_COST_MAX", 1)
    monkeypatch.setattr(kde, "SMALL_POOL_MAX", 0)  # test the per-position planner, not small pools
    x = np.random.default_rng(10).normal(size=(300, 1, 3))
    auto = kde_density(x, "auto", k_neighbors=10)
    assert not np.allclose(auto, kde_density(x, "exact"), rtol=1e-6)  # it did leave the exact path
    monkeypatch.setattr(kde, "IVF_MIN", 1)
    np.testing.assert_array_equal(auto, kde_density(x, "faiss", k_neighbors=10))


def test_log_kde_density_matches_sklearn():
    sk = pytest.importorskip("sklearn.neighbors")
    x = token_pool(200, 4, d=8, seed=11)
    flat = x.reshape(200, -1).astype(np.float64)
    n, D = flat.shape
    h = (n * (D + 2) / 4) ** (-1 / (D + 4)) * flat.std(axis=0).mean() + 1e-6
    ref = sk.KernelDensity(bandwidth=h).fit(flat).score_samples(flat)
    np.testing.assert_allclose(log_kde_density(x), ref, rtol=1e-10)
    np.testing.assert_allclose(log_kde_density(flat, bandwidth=0.9),
                               sk.KernelDensity(bandwidth=0.9).fit(flat).score_samples(flat), rtol=1e-10)


def test_authors_score_is_sklearn_density_rescaled_per_position():
    sk = pytest.importorskip("sklearn.neighbors")
    x = bit_pool(300, 3, seed=12).astype(np.float64)
    n, P, d = x.shape
    want = np.zeros(n)
    for i in range(P):
        h = kde._silverman(x[:, i])
        logp = sk.KernelDensity(bandwidth=h).fit(x[:, i]).score_samples(x[:, i])
        want += np.exp(logp + np.log(n) + d / 2 * np.log(2 * np.pi) + d * np.log(h))
    np.testing.assert_allclose(kde_density(x), want, rtol=1e-9)


def test_cosine_is_l2_on_normalised_vectors():
    x = small_pool(13)
    unit = x / np.linalg.norm(x, axis=2, keepdims=True)
    np.testing.assert_allclose(kde_density(x, metric="cosine"), loop_density(unit), rtol=1e-10)
    scaled = x * np.random.default_rng(0).uniform(0.5, 3.0, size=(9, 3, 1))  # per-vector scale
    np.testing.assert_allclose(kde_density(scaled, metric="cosine"),
                               kde_density(x, metric="cosine"), rtol=1e-9)
    x[0, 0] = 0.0  # a zero vector stays zero instead of dividing by zero
    assert np.isfinite(kde_density(x, metric="cosine")).all()


def test_pooled_bandwidth_follows_the_authors_batch_mean():
    xs = np.stack([token_pool(60, 4, d=8, seed=s) for s in range(3)]).astype(np.float64)
    B, n, P, d = xs.shape
    want = (n * (d + 2) / 4) ** (-1 / (d + 4)) * xs.std(axis=1).mean(axis=(0, 2)) + 1e-6
    np.testing.assert_allclose(pooled_bandwidth(xs), want, rtol=1e-12)
    np.testing.assert_allclose(pooled_bandwidth(list(xs)), want, rtol=1e-12)
    np.testing.assert_allclose(kde_density(xs[1], bandwidth=pooled_bandwidth(xs)),
                               loop_density(xs[1], want), rtol=1e-10)
    # a batch of one is the per-item rule
    np.testing.assert_allclose(kde_density(xs[0], bandwidth=pooled_bandwidth(xs[:1])),
                               kde_density(xs[0]), rtol=1e-12)


def test_single_candidate_scores_one_per_position():
    x = np.random.default_rng(0).normal(size=(1, 5, 4))
    for method in METHODS:
        np.testing.assert_allclose(kde_density(x, method), [5.0])


@pytest.mark.parametrize("bad, match", [
    (np.full((4, 2, 3), np.nan), "non-finite value nan at index"),
    (np.array([[[0.0, np.inf]]]), r"non-finite value inf at index \(0, 0, 1\)"),
    (np.zeros((4, 3)), r"\[n, P, d\].*shape \(4, 3\)"),
    (np.zeros((2, 4, 3, 1)), r"\[n, P, d\]"),
    (np.zeros((0, 2, 3)), "n >= 1"),
    (np.zeros((3, 2, 3), dtype=bool), "dtype bool"),
])
def test_bad_pools_are_refused(bad, match):
    with pytest.raises(ValueError, match=match):
        kde_density(bad)


@pytest.mark.parametrize("kwargs, match", [
    ({"method": "kdtree"}, "unknown KDE method 'kdtree'"),
    ({"metric": "manhattan"}, "unknown metric 'manhattan'"),
    ({"bandwidth": -1.0}, "bandwidth must be finite and > 0"),
    ({"bandwidth": [1.0, 2.0]}, r"one value per position \(3\)"),
    ({"k_neighbors": 0}, "k_neighbors must be >= 1, got 0"),
])
def test_bad_options_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        kde_density(np.zeros((4, 3, 2)), **kwargs)


def test_pooled_bandwidth_refuses_mixed_shapes():
    with pytest.raises(ValueError, match="share one shape"):
        pooled_bandwidth([np.zeros((4, 2, 3)), np.zeros((5, 2, 3))])
    with pytest.raises(ValueError, match=r"\[B, n, P, d\]"):
        pooled_bandwidth(np.zeros((4, 2, 3)))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_unique_rows_survives_projection_collisions(monkeypatch, dtype):
    x = small_pool(6).astype(dtype)
    want = kde_density(x, "exact")
    monkeypatch.setattr(kde, "_projection", lambda d, m: np.zeros((d, m)))  # every row collides
    np.testing.assert_allclose(kde_density(x, "grouped"), want, rtol=1e-10)


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_small_pool_path_equals_the_per_position_path(monkeypatch, metric):
    rng = np.random.default_rng(11)
    x = rng.normal(size=(60, 5, 32)).astype(np.float32)
    x[30:] = x[:30]  # shared codes, as in real pools
    small = kde_density(x, "auto", metric=metric)
    assert 60 * 60 * 5 * 32 <= kde.SMALL_POOL_MAX
    monkeypatch.setattr(kde, "SMALL_POOL_MAX", 0)
    np.testing.assert_allclose(small, kde_density(x, "exact", metric=metric), rtol=1e-9)
    np.testing.assert_allclose(kde_density(x, "auto", bandwidth=0.5, metric=metric),
                               kde_density(x, "grouped", bandwidth=0.5, metric=metric), rtol=1e-9)


@pytest.mark.parametrize("pool", ["tokens", "bits"])
def test_thread_count_does_not_change_a_bit(monkeypatch, pool):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    monkeypatch.setattr(kde, "PARALLEL_MIN", 0)  # positions on threads even for a small pool
    monkeypatch.setattr(kde, "SMALL_POOL_MAX", 0)
    monkeypatch.setattr(kde, "_blas_threads", lambda: 3)  # more threads than this box has cores
    x = token_pool(400, 7, seed=5) if pool == "tokens" else bit_pool(400, 7, seed=5)
    threaded = kde_density(x)
    with threadpoolctl.threadpool_limits(1):
        monkeypatch.setattr(kde, "_blas_threads", lambda: 1)
        np.testing.assert_array_equal(kde_density(x), threaded)


# -- codes of any width up to 64 bits (Infinity-8B's tokens carry 56) ------------------------------
WIDTHS = [32, 56, 63, 64]


def clustered_bits(n, P, d, seed=0, centres=12, flip=0.04):
    """0/1 pools whose codes sit near a few centres (a bit flipped with probability `flip`), so
    pairs at Hamming 1, 2, 3... all occur; the top bit is always varying (bit 63 at d = 64)."""
    rng = np.random.default_rng(seed)
    c = rng.random((P, centres, d)) < 0.5
    pick = rng.integers(0, centres, (n, P))
    x = c[np.arange(P)[None, :], pick] ^ (rng.random((n, P, d)) < flip)
    x[: n // 2, :, -1] ^= True
    return x.astype(np.float32)


@pytest.mark.parametrize("width", WIDTHS)
def test_pool_codes_round_trip_at_every_width(width):
    x = clustered_bits(400, 3, width, seed=width)
    x[0, 0] = 1.0  # all ones: 2^width - 1, the largest code (every bit of a uint64 at 64)
    codes = hamming.pool_codes(x)
    assert codes.dtype == np.uint64 and codes.shape == (3, 400)
    assert int(codes[0, 0]) == (1 << width) - 1
    weights = 2 ** np.arange(width, dtype=object)  # Python ints: no overflow, no sign
    for i in range(3):
        assert [int(c) for c in codes[i]] == [int((x[m, i].astype(int) * weights).sum()) for m in range(400)]
        rows, inv, counts = hamming.unique_codes(codes[i], width)
        np.testing.assert_array_equal(rows[inv], x[:, i])
        want = np.unique(x[:, i], axis=0, return_counts=True)[1]
        assert sorted(counts.tolist()) == sorted(want.tolist())


def test_sort_order_is_unsigned_at_64_bits():
    top = np.uint64(1) << np.uint64(63)
    keys = np.array([top, 1, top | np.uint64(5), 0, np.uint64(2**64 - 1), top, 7], dtype=np.uint64)
    for bits in (64, 3):  # the argsort path; 3 + 3 index bits would fit, but keys exceed 3 bits
        if bits == 3:
            keys = keys & np.uint64(7)
        order, sorted_keys = grouping.sort_order(keys, bits)
        np.testing.assert_array_equal(sorted_keys, np.sort(keys))
        np.testing.assert_array_equal(keys[order], sorted_keys)
        starts, inv, counts = grouping.sorted_runs(order, sorted_keys)
        np.testing.assert_array_equal(sorted_keys[starts][inv], keys)


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("radius", [1, 2])
def test_join_is_the_sum_within_its_radius_at_every_width(width, radius):
    rng = np.random.default_rng(width + radius)
    bits = np.unique(clustered_bits(600, 1, width, seed=width)[:, 0] == 1, axis=0)
    assert bits[:, -1].any() and not bits[:, -1].all()
    counts = rng.integers(1, 5, len(bits)).astype(np.float64)
    table = 0.3 ** np.arange(width + 1)
    ham = (bits[:, None, :] != bits[None, :, :]).sum(-1)
    assert ((ham == 1).sum(), (ham == 2).sum()) > (0, 0)  # the test sees both radii
    want = ((ham <= radius) * table[ham] * counts[None, :]).sum(1)
    got = hamming._join_sums(hamming._pack_int(bits), counts, table, radius)
    np.testing.assert_allclose(got, want, rtol=1e-13)


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("plan, bandwidth", [("flat", None), ("flat", 0.6), ("join", 0.2), ("cube", 0.6)])
def test_hamming_plans_equal_exact_at_every_width(monkeypatch, width, plan, bandwidth):
    """The same exactness as for 32 bits: each plan against the float64 all-pairs sums, within
    the certified truncation bound (the cube plan: no truncation). The cube plan needs <= 24
    varying bits, so there the other bits are fixed, including the low ones."""
    only_plan(monkeypatch, plan)
    planned, offered = [], hamming._plans
    monkeypatch.setattr(hamming, "_plans", lambda *a: planned.append(a) or offered(*a))
    monkeypatch.setattr(kde, "SMALL_POOL_MAX", 0)  # the per-position (packed-code) path
    x = clustered_bits(500, 2, width, seed=width)
    if plan == "cube":
        x[:, :, : width - 18] = x[0, :, : width - 18]
    if plan == "join":  # h = 0.2 gives radius 2 at n = 500
        assert hamming._radius(np.exp(-np.arange(width + 1) / (2 * 0.2**2)), 500) == 2
    exact = kde_density(x, "exact", bandwidth=bandwidth)
    got = kde_density(x, "grouped", bandwidth=bandwidth)
    assert len(planned) == 2  # both positions went through the plan (no radius-0 shortcut)
    assert np.abs(got / exact - 1).max() <= hamming.DROP_REL
    if plan == "cube":
        np.testing.assert_allclose(got, exact, rtol=1e-12)
    np.testing.assert_allclose(kde_density(x, "auto", bandwidth=bandwidth), got, rtol=1e-12)


def test_wider_than_64_bits_is_grouped_without_packed_codes():
    x = clustered_bits(300, 2, 70, seed=3)
    assert hamming.pool_codes(x) is None
    np.testing.assert_allclose(kde_density(x, "grouped"), kde_density(x, "exact"), rtol=1e-9)
