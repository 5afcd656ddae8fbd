"""Measure the toy model's quality with plain sampling: the judge's class accuracy, the toy IS and
FD analogues (vardist.zoo.metrics), for one or several CFG strengths, next to real digits.

    python benchmarks/zoo_quality.py                        # 1,000 images at the spec's defaults
    python benchmarks/zoo_quality.py --cfg 0,1,2,3 --per-class 50
    python benchmarks/zoo_quality.py --grid docs/img/toy-digits.png
    python benchmarks/zoo_quality.py --weights DIR          # weights written by vardist.zoo.train
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from vardist.models import Sampling, get_spec
from vardist.zoo import metrics
from vardist.zoo.data import load_digits
from vardist.zoo.specs import WEIGHTS_DIR, load_generator


def generate(gen, per_class: int, sampling: Sampling, batch: int) -> tuple[torch.Tensor, list[int]]:
    """per_class images of each class 0-9, item i with seed i (plain sampling)."""
    labels = [c for c in range(10) for _ in range(per_class)]
    out = [gen.generate_images(labels[i:i + batch], list(range(i, min(i + batch, len(labels)))), sampling)
           for i in range(0, len(labels), batch)]
    return torch.cat(out), labels


def save_grid(images: torch.Tensor, per_class: int, path: Path, cols: int = 12, zoom: int = 4) -> None:
    """One row per class (the first `cols` images of each), upscaled `zoom` times, 2 px gaps."""
    from PIL import Image

    cols = min(cols, per_class)
    n, h, w, _ = images.shape
    gap = 2
    canvas = np.full((10 * (h * zoom + gap) + gap, cols * (w * zoom + gap) + gap, 3), 40, np.uint8)
    for c in range(10):
        for j in range(cols):
            tile = images[c * per_class + j].numpy().repeat(zoom, 0).repeat(zoom, 1)
            y, x = gap + c * (h * zoom + gap), gap + j * (w * zoom + gap)
            canvas[y:y + h * zoom, x:x + w * zoom] = tile
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(canvas).save(path)


def main() -> None:
    d = get_spec("toy-digits").defaults
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", default=str(WEIGHTS_DIR), help="folder with the toy model's files")
    p.add_argument("--per-class", type=int, default=100)
    p.add_argument("--cfg", default=str(d.cfg), help="comma-separated CFG strengths")
    p.add_argument("--top-k", type=int, default=d.top_k)
    p.add_argument("--top-p", type=float, default=d.top_p)
    p.add_argument("--batch", type=int, default=250)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--grid", default=None, help="write a PNG grid (one row per class) of the first cfg")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    gen = load_generator(a.weights)
    judge = metrics.load_judge(a.weights)

    rows = []
    test = load_digits("test")
    real = metrics.evaluate(test.images, test.labels, judge)
    rows.append(("real digits (held-out)", len(test), real, float("nan")))
    for i, cfg in enumerate(float(c) for c in a.cfg.split(",")):
        s = Sampling(cfg=cfg, top_k=a.top_k, top_p=a.top_p)
        t0 = time.perf_counter()
        imgs, labels = generate(gen, a.per_class, s, a.batch)
        secs = time.perf_counter() - t0
        rows.append((f"toy-digits cfg={cfg:g} top_k={a.top_k} top_p={a.top_p:g}", len(labels),
                     metrics.evaluate(imgs, labels, judge), secs))
        if a.grid and i == 0:
            save_grid(imgs, a.per_class, Path(a.grid))
            print(f"grid written to {a.grid}")

    print(f"\n{'images':<44} {'n':>5} {'accuracy':>9} {'IS (toy)':>9} {'FD (toy)':>9} {'gen s':>7}")
    for name, n, m, secs in rows:
        print(f"{name:<44} {n:>5} {m['accuracy']:>9.3f} {m['is_toy']:>9.2f} {m['fd_toy']:>9.2f} {secs:>7.1f}")
    print("\nIS / FD are toy analogues computed with the zoo's digit judge, not Inception-v3 values.")


if __name__ == "__main__":
    main()
