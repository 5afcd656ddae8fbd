"""Population rules of a search across scales (pure numpy / scikit-learn, no models): from the
scores of one item's candidates to the candidates that continue as its next population.

Every rule returns candidate positions (into the item's pooled candidate list). Ties and orders
are fixed so a rule's output depends on its inputs and its seed alone:

- `keep_top(scores, pop)`: the `pop` highest scores, ties to the lower position (density and
  reward beam search);
- `keep_cluster(features, pop, seed)`: KMeans into `pop` clusters, the candidate nearest each
  centre (TTS-VAR's coarse-scale pruning); returned in position order;
- `keep_resample(rewards, pop, rng)`: `pop` draws with replacement, probability proportional
  to exp(RESAMPLE_LAMBDA * reward) (TTS-VAR's fine-scale resampling); a candidate may repeat.
"""

from __future__ import annotations

import numpy as np

# Sharpness of the resampling potential exp(lambda * reward): rewards of the shipped verifiers
# are probabilities or similarities in about [0, 1], where lambda 10 makes a 0.1 better reward
# e times likelier (the scale of the exponential potentials of Feynman-Kac particle samplers
# for diffusion models and of TTS-VAR).
RESAMPLE_LAMBDA = 10.0


def keep_top(scores: np.ndarray, pop: int) -> list[int]:
    """Positions of the `pop` highest scores, highest first; equal scores keep position order."""
    scores = np.asarray(scores, np.float64)
    order = np.argsort(-scores, kind="stable")
    return [int(i) for i in order[:pop]]


def keep_cluster(features: np.ndarray, pop: int, seed: int) -> list[int]:
    """KMeans of the candidates' features [n, f] into `pop` clusters; for each centre the
    nearest candidate not kept yet, returned in position order. With fewer distinct feature
    vectors than `pop` (identical previews), one cluster per distinct vector and the rest of
    the population filled with the first candidates not kept, so the population (and the
    compute it spends) keeps its size. `seed` fixes KMeans' initialisation."""
    x = np.asarray(features, np.float64).reshape(len(features), -1)
    n = len(x)
    if pop >= n:
        return list(range(n))
    clusters = min(pop, len(np.unique(x, axis=0)))
    kept: list[int] = []
    if clusters > 1:
        from sklearn.cluster import KMeans

        km = KMeans(n_clusters=clusters, n_init=4, random_state=seed % (2 ** 32)).fit(x)
        dist = ((x[:, None, :] - km.cluster_centers_[None]) ** 2).sum(-1)  # [n, clusters]
        for c in range(clusters):  # centres in label order; a candidate serves one centre only
            for i in np.argsort(dist[:, c], kind="stable"):
                if int(i) not in kept:
                    kept.append(int(i))
                    break
    kept += [i for i in range(n) if i not in kept][:pop - len(kept)]
    return sorted(kept)


def keep_resample(rewards: np.ndarray, pop: int, rng: np.random.Generator) -> list[int]:
    """`pop` positions drawn with replacement, probability ~ exp(RESAMPLE_LAMBDA * reward),
    sorted (a position drawn twice appears twice)."""
    r = np.asarray(rewards, np.float64)
    w = np.exp(RESAMPLE_LAMBDA * (r - r.max()))  # shifted: no overflow, same probabilities
    picks = rng.choice(len(r), size=pop, replace=True, p=w / w.sum())
    return sorted(int(i) for i in picks)
