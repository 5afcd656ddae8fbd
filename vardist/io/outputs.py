"""Images out, in the layouts evaluation harnesses read unchanged, written atomically.

Prompts (GenEval): OUT/00000/metadata.jsonl (the prompt file's line), OUT/00000/samples/0000.png,
optional OUT/00000/grid.png. Classes (ImageNet FID/IS): OUT/images/class_0007/0003.png, and
`pack_npz(OUT)` turns them into the .npz (uint8 `arr_0` [N, H, W, 3]) the evaluators take.
Every file goes to a temporary name first and is renamed into place, so a killed run never
leaves a truncated PNG that a resume would take for finished.
"""

from __future__ import annotations

import io
import math
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from vardist.io.conditions import InputError


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def png_bytes(image: np.ndarray) -> bytes:
    """uint8 [H, W, 3] (or [H, W]) -> PNG bytes, deterministic for equal pixels."""
    if image.dtype != np.uint8:
        raise ValueError(f"images must be uint8, got {image.dtype}")
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def save_png(path: str | Path, image: np.ndarray) -> None:
    atomic_write_bytes(path, png_bytes(image))


def read_png(path: str | Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def image_relpath(condition_kind: str, condition_index: int, sample_index: int) -> str:
    """Where an item's image goes, relative to OUT."""
    if condition_kind == "prompt":
        return f"{condition_index:05d}/samples/{sample_index:04d}.png"
    return f"images/class_{condition_index:04d}/{sample_index:04d}.png"


def write_prompt_metadata(out: str | Path, condition_index: int, raw_line: str) -> None:
    """OUT/00000/metadata.jsonl: the prompt file's line, as GenEval reads it (json.load)."""
    path = Path(out) / f"{condition_index:05d}" / "metadata.jsonl"
    data = (raw_line.rstrip("\n") + "\n").encode("utf-8")
    if not path.is_file() or path.read_bytes() != data:
        atomic_write_bytes(path, data)


def image_grid(images: list[np.ndarray], cols: int | None = None) -> np.ndarray:
    """Tile equally sized uint8 images into one (rows filled left to right)."""
    if not images:
        raise ValueError("image_grid needs at least one image")
    cols = cols or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    h, w, c = images[0].shape
    grid = np.zeros((rows * h, cols * w, c), np.uint8)
    for i, im in enumerate(images):
        r, q = divmod(i, cols)
        grid[r * h:(r + 1) * h, q * w:(q + 1) * w] = im
    return grid


def write_grid(out: str | Path, condition_index: int, sample_paths: list[Path]) -> None:
    """OUT/00000/grid.png from the condition's samples (once all of them exist)."""
    save_png(Path(out) / f"{condition_index:05d}" / "grid.png",
             image_grid([read_png(p) for p in sample_paths]))


def check_writable(out: str | Path) -> Path:
    """Create OUT if needed and prove a file can be written there, before any model loads."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"output folder {out} exists and is not a folder", param="out")
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=out, prefix=".write-test.")
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise InputError(f"output folder {out} is not writable ({e.strerror}); choose another "
                         f"--out", param="out") from e
    return out


def class_image_paths(out: str | Path) -> list[Path]:
    """Class-layout PNGs in (class, sample) order."""
    return sorted((Path(out) / "images").glob("class_*/*.png"))


def pack_npz(out: str | Path, dest: str | Path | None = None) -> tuple[Path, tuple[int, ...]]:
    """Pack OUT/images/class_*/*.png into DEST (default OUT.npz) as uint8 `arr_0` [N, H, W, 3],
    the input of the ImageNet FID/IS evaluators. Streams image by image, so 50,000 x 256 x 256
    never sits in memory. Returns the path and the array shape."""
    out = Path(out)
    paths = class_image_paths(out)
    if not paths:
        raise InputError(f"{out} holds no class-layout images (images/class_*/*.png) to pack",
                         param="out")
    first = read_png(paths[0])
    shape = (len(paths), *first.shape)
    dest = Path(dest) if dest else out.with_name(out.name + ".npz")
    header = io.BytesIO()
    np.lib.format.write_array_header_2_0(
        header, {"descr": "|u1", "fortran_order": False, "shape": shape})
    tmp = dest.with_name(f".{dest.name}.tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        with zf.open("arr_0.npy", "w", force_zip64=True) as f:
            f.write(header.getvalue())
            for p in paths:
                im = read_png(p)
                if im.shape != first.shape:
                    raise ValueError(f"{p} is {im.shape}, the first image is {first.shape}: "
                                     f"cannot pack images of different sizes")
                f.write(np.ascontiguousarray(im).tobytes())
    os.replace(tmp, dest)
    return dest, shape
