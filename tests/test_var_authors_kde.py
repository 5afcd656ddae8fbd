"""Identical candidates (docs/selection.md): when every candidate has the same codebook vector
at a position, the bandwidth falls to its 1e-6 floor; vardist's density is then exactly n there,
while the authors' float32 `torch.cdist` path can lose every kernel, self terms included."""

import numpy as np
import pytest
import torch

from vardist.selection import kde_density

N, D = 50, 32


def authors_position_scores(x: torch.Tensor) -> torch.Tensor:
    """One position of the authors' KDE, as their code computes it: x [1, n, d] float32."""
    n, d = x.shape[1], x.shape[2]
    dist_sq = torch.cdist(x, x, p=2) ** 2
    h = ((n * (d + 2) / 4.0) ** (-1.0 / (d + 4)) * x.std(dim=1, unbiased=False)).mean() + 1e-6
    return torch.exp(-dist_sq / (2 * h**2)).sum(-1)[0]


@pytest.fixture(scope="module")
def codebook() -> torch.Tensor:
    return torch.randn(4096, D, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("method", ["exact", "grouped", "auto"])
def test_identical_position_adds_exactly_n(codebook, method):
    rng = np.random.default_rng(0)
    x = codebook[rng.integers(0, 4096, size=(N, 3))].numpy()  # [n, P=3, d]
    x[:, 1] = x[0, 1]                                           # position 1: all identical
    base = kde_density(np.delete(x, 1, axis=1), method=method)
    np.testing.assert_allclose(kde_density(x, method=method) - base, N, rtol=0, atol=1e-9)


def test_authors_float32_path_can_lose_every_kernel(codebook):
    scores = [authors_position_scores(codebook[i].expand(1, N, D).contiguous()) for i in range(30)]
    lost = [bool((s == 0).all()) for s in scores]
    kept = [bool((s == N).all()) for s in scores]
    # all or nothing per vector (every row computes the same residue), and both happen
    assert all(a or b for a, b in zip(lost, kept)) and any(lost) and any(kept)
    # a shortlist whose densities all vanished cannot be picked from by torch.multinomial
    probs = scores[lost.index(True)][:1] / (scores[lost.index(True)][:1].sum() + 1e-6)
    with pytest.raises(RuntimeError):
        torch.multinomial(probs, 1)
