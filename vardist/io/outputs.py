"""Images out, in the layouts evaluation harnesses read unchanged, written atomically.

Prompts (GenEval): OUT/00000/metadata.jsonl (the prompt file's line), OUT/00000/samples/0000.png,
optional OUT/00000/grid.png. Classes (ImageNet FID/IS): OUT/images/class_0007/0003.png, and
`pack_npz(OUT)` turns them into the .npz (uint8 `arr_0` [N, H, W, 3]) the evaluators take.
Every file goes to a temporary name first and is renamed into place, so a killed run never
leaves a truncated PNG that a resume would take for finished; a prompt's folder appears whole
(metadata.jsonl and its first image together), so GenEval's evaluator, which opens the
metadata and the samples/ of every numbered folder, can read an interrupted run. One run at a
time holds an output folder (`folder_lock`); a run that holds it removes the temporary files a
killed run left (`remove_stale_temps`).
"""

from __future__ import annotations

import errno
import io
import json
import math
import os
import re
import secrets
import shutil
import socket
import time
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import filelock
import numpy as np
from PIL import Image

from vardist.io.conditions import InputError

LOCK_FILE = ".vardist.lock"            # flock'ed for the whole run (released by the kernel on exit)
HOLDER_FILE = ".vardist.lock.holder"   # who holds it: pid, host, since (for the refusal message)
# Our temporary names: ".NAME.<pid>-<8 hex>.tmp"; older versions wrote ".NAME.<8 chars>.tmp"
# (mkstemp) and pack ".NAME.tmp". The pid lets a process tell its own live temps from stale ones.
_TEMP_RE = re.compile(r"^\.(?P<name>.+?)(?:\.(?:(?P<pid>\d+)-[0-9a-f]{8}|[A-Za-z0-9_]{8}))?\.tmp$")


class DiskFull(OSError):
    """No space left for an output file: names the file, the space it needed and what was free
    (and what the rest of the run needs, when the writer knows)."""

    def __init__(self, path: str | Path, needed: int, free: int, rest: str = "") -> None:
        super().__init__(errno.ENOSPC, f"no space left on the device writing {path}: it needs "
                         f"{human_size(needed)}, {human_size(free)} free there{rest}. Free "
                         f"space or choose another --out, then rerun the same command to "
                         f"resume", str(path))
        self.path, self.needed, self.free = Path(path), needed, free


class FolderBusy(InputError):
    """Another live process holds the output folder's lock."""


def _temp_name(name: str) -> str:
    return f".{name}.{os.getpid()}-{secrets.token_hex(4)}.tmp"


def _disk_full(path: Path, needed: int) -> DiskFull:
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        free = 0
    return DiskFull(path, needed, free)


def human_size(n: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to a temporary name beside `path`, then rename it into place. The file is
    created with mode 0o666 less the umask (0644 under umask 022), like any file a program
    writes, so an evaluator under another account can read the images. A full disk raises
    DiskFull naming the path and the space needed; the temporary file is removed on any
    failure, and an existing `path` keeps its old content."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / _temp_name(path.name)
    try:
        _write_fd(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), data)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if e.errno in (errno.ENOSPC, errno.EDQUOT) and not isinstance(e, DiskFull):
            raise _disk_full(path, len(data)) from e
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_fd(fd: int, data: bytes) -> None:
    """Write all of `data` to `fd` and close it (the one place output bytes hit the disk)."""
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def remove_stale_temps(folder: str | Path, *, recursive: bool = True, name: str | None = None,
                       all_but_ours: bool = True) -> list[Path]:
    """Remove the temporary files (and prompt-folder staging folders) that a killed writer
    left in `folder`; returns what was removed. all_but_ours=True (the caller holds the folder's
    lock, so no other process writes there) removes every temp not made by this process;
    False removes only those whose process is gone (pack's temps beside the folder, which
    another pack may be writing). `name` restricts it to the temps of that file name."""
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    walk = os.walk(folder) if recursive else [(str(folder), [], [])]
    for root, dirs, _files in walk:
        entries = list(os.scandir(root))
        for e in entries:
            m = _TEMP_RE.match(e.name)
            if not m or (name is not None and m["name"] != name):
                continue
            pid = int(m["pid"]) if m["pid"] else None
            if pid == os.getpid() or (not all_but_ours and pid is not None and _pid_alive(pid)):
                continue
            p = Path(e.path)
            if e.is_dir(follow_symlinks=False):
                shutil.rmtree(p, ignore_errors=True)
                if e.name in dirs:
                    dirs.remove(e.name)
            else:
                p.unlink(missing_ok=True)
            removed.append(p)
    return removed


@contextmanager
def folder_lock(out: str | Path, *, required: bool = True) -> Iterator[Path]:
    """Hold OUT exclusively while the body runs: a second run on the same folder (another
    process, or the same one) is refused with FolderBusy naming the folder and the holder's
    pid. The lock is an flock on OUT/.vardist.lock, so it is released on any exit, a kill
    included (the kernel drops it with the process): a lock file left by a dead process is
    stale and taken over. OUT must exist. required=False (pack, which only reads OUT): a
    folder where the lock file cannot be created (read-only, another account's) is read
    without the lock."""
    out = Path(out)
    lock = filelock.FileLock(out / LOCK_FILE, timeout=0)
    try:
        lock.acquire()
    except PermissionError:
        if required:
            raise
        yield out
        return
    except filelock.Timeout:
        raise FolderBusy(f"output folder {out} is in use by another vardist run "
                         f"({_holder(out)}); wait for it to finish or stop it, or choose "
                         f"another --out", param="out") from None
    try:
        holder = {"pid": os.getpid(), "host": socket.gethostname(),
                  "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        atomic_write_bytes(out / HOLDER_FILE, json.dumps(holder).encode())
        yield out
    finally:
        (out / HOLDER_FILE).unlink(missing_ok=True)
        lock.release()


def _holder(out: Path) -> str:
    try:
        h = json.loads((out / HOLDER_FILE).read_text())
        return f"pid {h['pid']} on {h['host']}, since {h['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "pid unknown: it is just starting"


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
    data = _metadata_bytes(raw_line)
    if not path.is_file() or path.read_bytes() != data:
        atomic_write_bytes(path, data)


def _metadata_bytes(raw_line: str) -> bytes:
    return (raw_line.rstrip("\n") + "\n").encode("utf-8")


def write_prompt_image(out: str | Path, condition_index: int, sample_index: int, raw_line: str,
                       png: bytes) -> Path:
    """One prompt image in the GenEval layout. The prompt's first image brings its folder:
    metadata.jsonl and samples/NNNN.png are staged in a temporary folder that is renamed into
    place, so every numbered folder GenEval's evaluator walks has both (an interrupted run is
    evaluable as it stands). Later images go into the existing folder. Returns the PNG path."""
    out = Path(out)
    folder = out / f"{condition_index:05d}"
    rel = Path("samples") / f"{sample_index:04d}.png"
    if not folder.is_dir():
        stage = out / _temp_name(folder.name)
        try:
            (stage / "samples").mkdir(parents=True)
            atomic_write_bytes(stage / "metadata.jsonl", _metadata_bytes(raw_line))
            atomic_write_bytes(stage / rel, png)
            os.rename(stage, folder)  # atomic; fails if the folder appeared meanwhile
            return folder / rel
        except OSError:
            shutil.rmtree(stage, ignore_errors=True)
            if not folder.is_dir():
                raise
    write_prompt_metadata(out, condition_index, raw_line)
    atomic_write_bytes(folder / rel, png)
    return folder / rel


def remove_empty_prompt_folders(out: str | Path, condition_indices) -> list[Path]:
    """Drop numbered prompt folders that hold no image (metadata.jsonl alone: earlier versions
    wrote it for every prompt at the start), on which GenEval's evaluator fails. Call only
    while holding the folder's lock."""
    removed = []
    for ci in condition_indices:
        folder = Path(out) / f"{ci:05d}"
        if folder.is_dir() and not any((folder / "samples").glob("*.png")):
            shutil.rmtree(folder)
            removed.append(folder)
    return removed


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
        probe = out / _temp_name("write-test")
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        probe.unlink()
    except OSError as e:
        raise InputError(f"output folder {out} is not writable ({e.strerror}); choose another "
                         f"--out", param="out") from e
    return out


def class_image_paths(out: str | Path) -> list[Path]:
    """Class-layout PNGs in (class, sample) order."""
    return sorted((Path(out) / "images").glob("class_*/*.png"))


# The ImageNet FID/IS protocol (ADM evaluator, VAR's and VAR-Scaling's tables): 50 images per
# class for all 1000 classes.
IMAGENET_PER_CLASS, IMAGENET_CLASSES = 50, 1000
IMAGENET_NOTE = (f"the ImageNet FID/IS protocol expects {IMAGENET_PER_CLASS} images per class "
                 f"for all {IMAGENET_CLASSES} classes ({IMAGENET_PER_CLASS * IMAGENET_CLASSES:,})")


def expected_class_images(out: str | Path) -> tuple[dict[int, int], str]:
    """What a class-layout folder should hold: {class: images} and where that comes from.
    From run.json (the classes and the samples per class its run asked for) when there is
    one; else every class folder present is expected to hold as many images as the fullest."""
    out = Path(out)
    run_json = out / "run.json"
    if run_json.is_file():
        try:
            fp = json.loads(run_json.read_text()).get("fingerprint", {})
            kind, samples = fp.get("condition_kind"), int(fp["samples"])
            classes = [int(ci) for ci, _ in fp["conditions"]]
        except (ValueError, KeyError, TypeError) as e:
            raise InputError(f"{run_json} is not a vardist run.json ({e}); move it away to "
                             f"pack the images as they are", param="out") from None
        if kind == "prompt":
            raise InputError(f"{out} holds a prompt (GenEval) run; pack takes the class layout "
                             f"(images/class_*/*.png) of a class-conditional run", param="out")
        return {c: samples for c in classes}, f"its run ({run_json})"
    counts: dict[int, int] = {}
    for c, s in _class_samples(out):
        counts[c] = max(counts.get(c, 0), s + 1)
    most = max(counts.values(), default=0)
    return {c: most for c in counts}, "the fullest class folder (no run.json)"


def class_counts(out: str | Path) -> dict[int, int]:
    """{class: PNGs present} of a class-layout folder."""
    counts: dict[int, int] = {}
    for c, _ in _class_samples(out):
        counts[c] = counts.get(c, 0) + 1
    return counts


def _class_samples(out: str | Path) -> Iterator[tuple[int, int]]:
    """(class, sample index) of the layout's PNGs (names that are not ours are skipped)."""
    for p in class_image_paths(out):
        cls = p.parent.name.removeprefix("class_")
        if cls.isdigit() and p.stem.isdigit():
            yield int(cls), int(p.stem)


def missing_class_images(out: str | Path) -> tuple[list[str], int, str]:
    """(missing image paths relative to OUT, images expected, where the expectation comes from)."""
    out = Path(out)
    expected, source = expected_class_images(out)
    missing = [rel for c, k in sorted(expected.items()) for s in range(k)
               if not (out / (rel := image_relpath("class", c, s))).is_file()]
    return missing, sum(expected.values()), source


def _describe_missing(missing: list[str], limit: int = 8) -> str:
    by_class: dict[str, list[str]] = {}
    for rel in missing:
        cls, name = rel.split("/")[1:]
        by_class.setdefault(cls.removeprefix("class_").lstrip("0") or "0", []).append(
            name.removesuffix(".png").lstrip("0") or "0")
    parts = [f"class {c}: sample{'s' if len(v) > 1 else ''} {', '.join(v[:6])}"
             + (f" and {len(v) - 6} more" if len(v) > 6 else "")
             for c, v in list(by_class.items())[:limit]]
    more = len(by_class) - limit
    return "; ".join(parts) + (f"; and {more} more classes" if more > 0 else "")


def pack_npz(out: str | Path, dest: str | Path | None = None, *, allow_partial: bool = False
             ) -> tuple[Path, tuple[int, ...]]:
    """Pack OUT/images/class_*/*.png into DEST (default OUT.npz) as uint8 `arr_0` [N, H, W, 3],
    the input of the ImageNet FID/IS evaluators. Streams image by image, so 50,000 x 256 x 256
    never sits in memory. Returns the path and the array shape.

    An incomplete run (fewer images than its run.json asked for) is refused, naming what is
    missing, unless allow_partial. Holds OUT's lock (a search still writing there is refused),
    writes to a temporary name unique to this process and renames it into place, so a corrupt
    PNG or a kill leaves no half-written DEST; temporary files of dead packs are removed."""
    out = Path(out)
    paths = class_image_paths(out)
    if not paths:
        raise InputError(f"{out} holds no class-layout images (images/class_*/*.png) to pack",
                         param="out")
    dest = Path(dest) if dest else out.with_name(out.name + ".npz")
    with folder_lock(out, required=False):
        missing, expected, source = missing_class_images(out)
        if missing and not allow_partial:
            raise InputError(
                f"{out} is incomplete: {expected - len(missing)} of the {expected} images "
                f"{source} asked for are there; missing {_describe_missing(missing)}. Rerun the "
                f"same `vardist search` command to finish it, or pack what is there with "
                f"--allow-partial (allow_partial=True). Note: {IMAGENET_NOTE}.", param="out")
        paths = class_image_paths(out)
        first = _read_for_pack(paths[0])
        shape = (len(paths), *first.shape)
        header = io.BytesIO()
        np.lib.format.write_array_header_2_0(
            header, {"descr": "|u1", "fortran_order": False, "shape": shape})
        dest.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(dest.parent, recursive=False, name=dest.name, all_but_ours=False)
        tmp = dest.with_name(_temp_name(dest.name))
        try:
            with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED,
                                 allowZip64=True) as zf:
                with zf.open("arr_0.npy", "w", force_zip64=True) as f:
                    f.write(header.getvalue())
                    for p in paths:
                        im = _read_for_pack(p)
                        if im.shape != first.shape:
                            raise InputError(f"{p} is {im.shape}, the first image is "
                                             f"{first.shape}: cannot pack images of different "
                                             f"sizes", param="out")
                        f.write(np.ascontiguousarray(im).tobytes())
            os.replace(tmp, dest)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise _disk_full(dest, math.prod(shape) + len(paths) * 64) from e
            raise
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    return dest, shape


def _read_for_pack(path: Path) -> np.ndarray:
    try:
        return read_png(path)
    except (OSError, ValueError, SyntaxError) as e:  # PIL: UnidentifiedImageError, truncation
        raise InputError(f"{path} is not a readable PNG ({e}); delete it and rerun the same "
                         f"`vardist search` command to redo that image", param="out") from None
