"""The toy judge: a small CNN digit classifier trained on the same digits, shipped with the zoo.

It plays the part the Inception network plays for ImageNet models: `vardist.zoo.metrics` uses
its class probabilities (class accuracy, the Inception-Score analogue) and its penultimate
features (the Frechet-distance analogue). It is trained by `vardist.zoo.train` and reaches about
99% on the held-out digits.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from vardist.models.checkpoint import load_exact, read_state_dict
from vardist.zoo.data import IMAGE_SIZE, NUM_CLASSES, to_grey
from vardist.zoo.specs import JUDGE_FILE, WEIGHTS_DIR

FEATURE_DIM = 64


class DigitJudge(nn.Module):
    """grey [B, 1, 16, 16] in [0, 1] -> logits [B, 10]; `features` is the 64-d penultimate layer."""

    def __init__(self, width: int = 16, feature_dim: int = FEATURE_DIM) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout),
                                 nn.ReLU(), nn.MaxPool2d(2))

        w = width
        self.body = nn.Sequential(block(1, w), block(w, 2 * w), block(2 * w, 4 * w),
                                  nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                                  nn.Linear(16 * w, feature_dim), nn.ReLU())
        self.head = nn.Linear(feature_dim, NUM_CLASSES)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        # Centre the [0, 1] input so the first conv sees zero-mean data.
        return self.body(x * 2 - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    @torch.no_grad()
    def predict(self, images: torch.Tensor, batch_size: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
        """Any image batch `to_grey` accepts -> (probabilities [B, 10], features [B, 64])."""
        was_training = self.training
        self.eval()
        x = to_grey(images, IMAGE_SIZE)
        probs, feats = [], []
        for i in range(0, len(x), batch_size):
            f = self.features(x[i:i + batch_size])
            feats.append(f)
            probs.append(self.head(f).softmax(-1))
        self.train(was_training)
        return torch.cat(probs), torch.cat(feats)


def load_judge(path: str | Path | None = None) -> DigitJudge:
    """The shipped judge (or one saved by `vardist.zoo.train` at `path`), in eval mode on the CPU."""
    path = Path(path) if path else WEIGHTS_DIR / JUDGE_FILE
    if path.is_dir():
        path = path / JUDGE_FILE
    judge = DigitJudge()
    load_exact(judge, read_state_dict(path), what=f"the toy digit judge ({path})")
    return judge.eval()


@lru_cache(maxsize=1)
def shipped_judge() -> DigitJudge:
    """The shipped judge, loaded once per process (metrics and studies share it; never train it)."""
    return load_judge()
