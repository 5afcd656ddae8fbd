"""What the Ray driver saves per image now that the actors encode PNGs: encoding a 1024x1024
image (outputs.png_bytes, what each actor now does) against writing its bytes atomically
(outputs.atomic_write_bytes, all the driver still does). One run, best of `--repeats`.

    python benchmarks/png_write.py
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from vardist.io import outputs


def images(side: int) -> dict[str, np.ndarray]:
    """A smooth image (a gradient) and a textured one (the gradient plus noise), like the two
    ends of what a generator draws."""
    y, x = np.mgrid[0:side, 0:side]
    smooth = (np.stack([x / 4, y / 4, (x + y) / 8], -1) % 256).astype(np.uint8)
    noise = np.random.default_rng(0).integers(0, 40, smooth.shape)
    return {"smooth": smooth, "textured": (smooth + noise).clip(0, 255).astype(np.uint8)}


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--side", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    print(f"{'image':10} {'PNG MB':>7} {'encode s':>9} {'write s':>8} {'encode/write':>13}")
    with tempfile.TemporaryDirectory() as d:
        for name, im in images(a.side).items():
            data = outputs.png_bytes(im)
            enc = best(lambda: outputs.png_bytes(im), a.repeats)
            wr = best(lambda: outputs.atomic_write_bytes(Path(d) / f"{name}.png", data), a.repeats)
            print(f"{name:10} {len(data) / 1e6:7.2f} {enc:9.3f} {wr:8.4f} {enc / wr:12.0f}x")


if __name__ == "__main__":
    main()
