"""Toy quality metrics for generated digits, scored by the zoo's judge (`judge.py`).

These are TOY ANALOGUES of the ImageNet metrics, not the metrics themselves: the same formulas,
but computed with a 64-feature digit classifier instead of Inception-v3, on 32x32 digits instead
of ImageNet. Their numbers are comparable only with each other (same judge, same reference set),
never with published IS / FID values.

- `class_accuracy`: the share of images the judge assigns to the class that was asked for.
- `inception_score` (IS analogue): exp(mean_x KL(p(y|x) || p(y))), p(y) the mean of p(y|x) over
  the set. It is 1 for a set the judge finds uninformative and at most 10 (the class count) for
  confidently classified images spread evenly over the classes.
- `frechet_distance` (FID analogue): ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) between
  Gaussians fitted to the judge's penultimate features of two sets; `evaluate` compares
  generated images against all 1,797 real digits.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import numpy as np
import torch

from vardist.zoo.data import load_digits
from vardist.zoo.judge import DigitJudge, load_judge, shipped_judge


def class_accuracy(probs: torch.Tensor | np.ndarray, labels: Sequence[int] | torch.Tensor) -> float:
    """Share of rows whose most probable class is the requested label."""
    p = np.asarray(probs)
    y = np.asarray(labels)
    if p.ndim != 2 or len(p) != len(y):
        raise ValueError(f"probs must be [N, classes] with N = len(labels) = {len(y)}, "
                         f"got shape {p.shape}")
    return float((p.argmax(1) == y).mean())


def inception_score(probs: torch.Tensor | np.ndarray, eps: float = 1e-12) -> float:
    """exp(mean KL(p(y|x) || p(y))) over the rows of probs [N, classes] (toy IS analogue)."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or len(p) < 1:
        raise ValueError(f"probs must be a non-empty [N, classes] array, got shape {p.shape}")
    marginal = p.mean(0, keepdims=True)
    kl = (p * (np.log(p + eps) - np.log(marginal + eps))).sum(1)
    return float(np.exp(kl.mean()))


def gaussian_stats(features: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean [D], covariance [D, D]) of features [N, D], N >= 2."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise ValueError(f"features must be [N, D] with N >= 2, got shape {f.shape}")
    return f.mean(0), np.cov(f, rowvar=False)


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(stats_a: tuple[np.ndarray, np.ndarray],
                     stats_b: tuple[np.ndarray, np.ndarray]) -> float:
    """Frechet distance between two Gaussians given as (mean, covariance) (toy FID analogue).

    Tr((S_a S_b)^(1/2)) is computed as the sum of square roots of the eigenvalues of the symmetric
    PSD matrix S_a^(1/2) S_b S_a^(1/2), which has the same spectrum and needs no general sqrtm."""
    (mu_a, s_a), (mu_b, s_b) = stats_a, stats_b
    if mu_a.shape != mu_b.shape:
        raise ValueError(f"feature sizes differ: {mu_a.shape} vs {mu_b.shape}")
    r = _psd_sqrt(s_a)
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(r @ s_b @ r), 0, None)).sum()
    d = float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * cross)
    return max(d, 0.0)


@lru_cache(maxsize=1)
def _real_stats_shipped() -> tuple[np.ndarray, np.ndarray]:
    return real_stats(shipped_judge())


def real_stats(judge: DigitJudge) -> tuple[np.ndarray, np.ndarray]:
    """Feature statistics of all 1,797 real digits (no augmentation) under `judge`."""
    _, feats = judge.predict(load_digits("all").images)
    return gaussian_stats(feats.numpy())


def evaluate(images: torch.Tensor, labels: Sequence[int] | torch.Tensor,
             judge: DigitJudge | None = None) -> dict[str, float]:
    """Score generated digits (uint8 [B, H, W, 3] or float [B, C, H, W] in [0, 1]) against the
    classes they were asked for: accuracy, IS analogue, FD analogue vs the real digits."""
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    shipped = judge is None
    judge = judge or shipped_judge()
    probs, feats = judge.predict(images)
    ref = _real_stats_shipped() if shipped else real_stats(judge)
    out = {"accuracy": class_accuracy(probs.numpy(), labels),
           "is_toy": inception_score(probs.numpy())}
    if len(images) >= 2:
        out["fd_toy"] = frechet_distance(gaussian_stats(feats.numpy()), ref)
    return out
