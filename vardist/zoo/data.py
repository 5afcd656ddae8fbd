"""The toy data set: scikit-learn's bundled handwritten digits, upsampled, with light augmentation.

`sklearn.datasets.load_digits` ships inside the scikit-learn package (1,797 grey 8x8 images of
the digits 0-9, ink values 0..16), so training needs no download. Ink is the high value, which
gives the look the zoo keeps: light strokes on a dark background.

Images are float32 [N, 1, S, S] in [0, 1]. The split is fixed (a seeded permutation) so the judge
is always scored on digits neither it nor the generator saw.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F

IMAGE_SIZE = 16
NUM_CLASSES = 10
SPLIT_SEED = 0
TEST_FRACTION = 0.15


@dataclass(frozen=True)
class Digits:
    images: torch.Tensor  # float32 [N, 1, S, S] in [0, 1]
    labels: torch.Tensor  # int64 [N]

    def __len__(self) -> int:
        return len(self.labels)


@lru_cache(maxsize=1)
def _source():
    try:
        from sklearn.datasets import load_digits as _sk_load
    except ImportError as e:  # the zoo extra
        raise ImportError("the toy digits need scikit-learn: pip install 'vardist[zoo]'") from e
    raw = _sk_load()
    return raw.images, raw.target


def load_digits(split: str = "train", size: int = IMAGE_SIZE) -> Digits:
    """The digits at `size` x `size`: split "train" (85%), "test" (15%) or "all"."""
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    if size < 8:
        raise ValueError(f"size must be >= 8 (the source images are 8x8), got {size}")
    images8, target = _source()
    x = torch.from_numpy(images8).float().div_(16.0)[:, None]  # [N,1,8,8]
    y = torch.from_numpy(target).long()
    # One dark pixel of margin so strokes do not touch the border (and survive small shifts),
    # then a smooth upsampling: bicubic overshoots a little, hence the clamp.
    x = F.pad(x, (1, 1, 1, 1))
    x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False).clamp_(0, 1)
    if split != "all":
        perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(SPLIT_SEED))
        n_test = int(round(len(y) * TEST_FRACTION))
        idx = perm[:n_test] if split == "test" else perm[n_test:]
        idx = idx.sort().values
        x, y = x[idx], y[idx]
    return Digits(x.contiguous(), y)


def augment(images: torch.Tensor, gen: torch.Generator, *, degrees: float = 10.0,
            shift: float = 0.08, scale: tuple[float, float] = (0.9, 1.1)) -> torch.Tensor:
    """Random small rotation, scale and shift of [B, C, S, S] images (deterministic given `gen`).

    `shift` is a fraction of the half-width (affine_grid's [-1, 1] coordinates)."""
    B = images.shape[0]
    u = torch.rand(B, 4, generator=gen)
    ang = (u[:, 0] * 2 - 1) * math.radians(degrees)
    s = scale[0] + u[:, 1] * (scale[1] - scale[0])
    tx, ty = (u[:, 2] * 2 - 1) * shift, (u[:, 3] * 2 - 1) * shift
    cos, sin = torch.cos(ang) / s, torch.sin(ang) / s
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def batches(data: Digits, batch_size: int, seed: int, *, aug: bool = True):
    """Endless deterministic stream of (images, labels) batches: reshuffled every epoch from a
    generator seeded with `seed`, so a run is reproducible from its seed alone."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    gen = torch.Generator().manual_seed(seed)
    n = len(data)
    while True:
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n - batch_size + 1, batch_size):
            idx = perm[i:i + batch_size]
            x = data.images[idx]
            yield (augment(x, gen) if aug else x), data.labels[idx]


def to_grey(images: torch.Tensor, size: int = IMAGE_SIZE) -> torch.Tensor:
    """Generated images -> the data's form: uint8 [B, H, W, 3] (what generators return) or
    float [B, C, H, W] in [0, 1] -> float32 [B, 1, size, size] in [0, 1]."""
    if images.ndim != 4:
        raise ValueError(f"expected a 4-d image batch, got shape {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        if images.shape[-1] not in (1, 3):
            raise ValueError(f"uint8 images must be [B, H, W, 1 or 3], got {tuple(images.shape)}")
        x = images.permute(0, 3, 1, 2).float().div(255.0)
    else:
        if images.shape[1] not in (1, 3):
            raise ValueError(f"float images must be [B, 1 or 3, H, W], got {tuple(images.shape)}")
        x = images.float()
    x = x.mean(1, keepdim=True)
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                          antialias=True)
    return x
