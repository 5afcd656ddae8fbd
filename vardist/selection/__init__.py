"""Selection core (pure numpy / faiss): KDE densities of candidate pools and selection rules.

    density = kde_density(x)                       # x [n, P, d] -> [n]
    choice = select(density, x, rng=np.random.default_rng(seed))
    choice.index, choice.shortlist, choice.branch

Pooling the bandwidth over a batch of items as the authors' code does:
    h = pooled_bandwidth(xs)                       # xs [B, n, P, d] -> [P]
    densities = [kde_density(x, bandwidth=h) for x in xs]

See docs/selection.md for the formula, the methods and their cost, and measured timings.
"""

from vardist.selection.kde import METHODS, METRICS, kde_density, log_kde_density, pooled_bandwidth
from vardist.selection.strategies import STRATEGIES, Selection, select

__all__ = ["kde_density", "pooled_bandwidth", "log_kde_density", "select", "Selection",
           "METHODS", "METRICS", "STRATEGIES"]
