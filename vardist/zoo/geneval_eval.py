"""An exact GenEval for toy-shapes images: finds the objects by colour and geometry, then applies
GenEval's per-tag rules and prints its summary.

Reads a GenEval-layout folder (OUT/00000/metadata.jsonl, OUT/00000/samples/0000.png, as
`vardist search --prompts toy-geneval.jsonl` writes it). Detection, in place of GenEval's object
detector and CLIP colour classifier:
- each pixel is read as one of the four COLORS mixed with black; it belongs to that colour
  when it is at least half of it (so a blurred shape keeps its outline) and close to it in hue;
  everything else is background;
- 8-connected regions of one colour are objects; regions under MIN_AREA pixels are specks;
- the shape comes from the region's geometry: an upward triangle holds ~3/4 of its area in the
  lower half of its bounding box; of the others, a square fills its box (~1), a circle ~pi/4.
  A region that is too small, too elongated or fits no band is not any class (GenEval's
  detector would not report it either).
GenEval's rules per record (its evaluator's logic): every `include` entry needs at least `count`
objects of its class, with its `color` when named, each in its `position` relation (GenEval's
rule, `shapes.relations`, on region centroids) to every object matched by the entry it points
to; an `exclude` entry (counting) fails when `count` or more objects of its class are present.
Where GenEval takes its detector's most confident objects of a class, we take those with the
named colour first, then the largest: the exact analogue, independent of a confidence score.
The summary is GenEval's: accuracy per tag over images, and the overall score is the mean of
the per-tag accuracies.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from vardist.zoo.shapes import CLASSES, COLORS, IMAGE_SIZE, TAGS, relations

# A pixel is read as a palette colour c mixed with black: p ~ t * c. It belongs to c's object
# when the mix is at least half c (t >= MIN_COVER: the shape's edge under blur is where it covers
# half the pixel), not much brighter than c, and off c's line by at most COLOR_TOLERANCE.
MIN_COVER, MAX_COVER = 0.5, 1.35
COLOR_TOLERANCE = 70.0      # RGB distance from the line black -> c
MIN_AREA = 16               # pixels (at IMAGE_SIZE); smaller regions are noise
MIN_EXTENT = 7              # pixels (at IMAGE_SIZE); objects are drawn >= 9 across
MAX_ASPECT = 1.4            # the shapes' boxes are square; allow this much stretch
# Shape from the region (bands set between what drawn shapes measure, sharp or blurred with a
# Gaussian of radius <= 1 px: squares fill >= 0.95, circles 0.78-0.85, triangles 0.50-0.72 with
# a lower-half share >= 0.65): an upward triangle has ~3/4 of its area in the lower half of its box
# (a circle or square 1/2) and fills ~1/2 of its box; a square fills ~1, a circle ~pi/4.
TRIANGLE_LOWER = 0.6        # lower-half share from which a region is a triangle
TRIANGLE_FILL = (0.35, 0.8)
SQUARE_FILL = 0.9           # symmetric regions: at least this fill is a square
CIRCLE_FILL = 0.68          # ... from this up to SQUARE_FILL a circle

_COLORS = np.array(list(COLORS.values()), float)
_COLOR_NAMES = tuple(COLORS)
_FOLDER_RE = re.compile(r"^\d{5}$")


@dataclass(frozen=True)
class Detection:
    cls: str | None                 # None: a region no class fits
    color: str
    centroid: tuple[float, float]   # (x, y), pixel centres at i + 0.5
    dims: tuple[int, int]           # bounding box (w, h)
    area: int
    fill: float                     # area / bounding-box area


def _label(mask: np.ndarray) -> list[np.ndarray]:
    """8-connected regions of a boolean mask, as arrays of (y, x) pixel coordinates."""
    h, w = mask.shape
    seen = ~mask
    regions = []
    for y0, x0 in zip(*np.nonzero(mask)):
        if seen[y0, x0]:
            continue
        seen[y0, x0] = True
        stack, pixels = [(y0, x0)], []
        while stack:
            y, x = stack.pop()
            pixels.append((y, x))
            for yy in (y - 1, y, y + 1):
                for xx in (x - 1, x, x + 1):
                    if 0 <= yy < h and 0 <= xx < w and not seen[yy, xx]:
                        seen[yy, xx] = True
                        stack.append((yy, xx))
        regions.append(np.array(pixels))
    return regions


def classify(mask: np.ndarray, scale: float = 1.0) -> str | None:
    """The class of a region (a boolean mask cropped to its bounding box) from its geometry
    (see the constants above), or None: too small, too elongated, or no class fits."""
    h, w = mask.shape
    if min(w, h) < MIN_EXTENT * scale or max(w, h) > MAX_ASPECT * min(w, h):
        return None
    area = mask.sum()
    fill = area / (w * h)
    rows = mask.sum(1)
    # Share of the area below the box's middle (a middle row, with odd h, counts half).
    lower = (rows[(h + 1) // 2:].sum() + (rows[h // 2] / 2 if h % 2 else 0)) / area
    if lower >= TRIANGLE_LOWER:
        return "triangle" if TRIANGLE_FILL[0] <= fill <= TRIANGLE_FILL[1] else None
    if fill >= SQUARE_FILL:
        return "square"
    return "circle" if fill >= CIRCLE_FILL else None


def segment(image: np.ndarray) -> np.ndarray:
    """int [H, W]: each pixel's palette colour index (into COLORS), -1 for background."""
    p = np.asarray(image, float)
    t = p @ _COLORS.T / (_COLORS ** 2).sum(1)                      # [H, W, K] mix per colour
    off = np.linalg.norm(p[:, :, None, :] - t[..., None] * _COLORS, axis=-1)
    off[(t < MIN_COVER) | (t > MAX_COVER) | (off > COLOR_TOLERANCE)] = np.inf
    label = off.argmin(-1)
    label[np.isinf(off.min(-1))] = -1
    return label


def detect(image: np.ndarray) -> list[Detection]:
    """The objects in a uint8 [H, W, 3] image, largest first (specks dropped)."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an RGB image [H, W, 3], got shape {image.shape}")
    scale = min(image.shape[:2]) / IMAGE_SIZE
    label = segment(image)
    found = []
    for k, name in enumerate(_COLOR_NAMES):
        for pix in _label(label == k):
            if len(pix) < MIN_AREA * scale * scale:
                continue
            ys, xs = pix[:, 0], pix[:, 1]
            box = np.zeros((ys.max() - ys.min() + 1, xs.max() - xs.min() + 1), bool)
            box[ys - ys.min(), xs - xs.min()] = True
            dims = (box.shape[1], box.shape[0])
            found.append(Detection(classify(box, scale), name,
                                   (float(xs.mean() + 0.5), float(ys.mean() + 0.5)), dims,
                                   len(pix), len(pix) / box.size))
    return sorted(found, key=lambda d: -d.area)


def check(record: dict, detections: list[Detection]) -> tuple[bool, str]:
    """(correct, reason) for one image's detections against a GenEval record."""
    reasons: list[str] = []
    matched: list[list[Detection] | None] = []
    for req in record.get("include", []):
        cls, count, color = req["class"], int(req["count"]), req.get("color")
        of_class = [d for d in detections if d.cls == cls]
        ok = len(of_class) >= count
        if not ok:
            reasons.append(f"expected {cls}>={count}, found {len(of_class)}")
        chosen = sorted(of_class, key=lambda d: d.color != color)[:count]  # stable: by area
        if ok and color is not None:
            right = sum(d.color == color for d in chosen)
            if right < count:
                ok = False
                reasons.append(f"expected {color} {cls}>={count}, found {right} {color} of "
                               f"{len(of_class)} {cls}")
        if ok and "position" in req:
            rel, target = req["position"]
            others = matched[target] if 0 <= target < len(matched) else None
            if others is None:
                ok = False
                reasons.append(f"no target for {cls} to be {rel}")
            else:
                for d in chosen:
                    for o in others:
                        found = relations(d.centroid, d.dims, o.centroid, o.dims)
                        if ok and rel not in found:
                            ok = False
                            reasons.append(f"expected {cls} {rel} {o.cls}, found "
                                           f"{', '.join(sorted(found)) or 'no relation'}")
        matched.append(chosen if ok else None)
    for req in record.get("exclude", []):
        cls, count = req["class"], int(req["count"])
        n = sum(d.cls == cls for d in detections)
        if n >= count:
            reasons.append(f"expected {cls}<{count}, found {n}")
    return not reasons, "; ".join(reasons)


def evaluate_image(image: np.ndarray, record: dict) -> tuple[bool, str]:
    """(correct, reason) for one image and its GenEval record."""
    return check(record, detect(image))


@dataclass(frozen=True)
class ImageResult:
    folder: int          # the prompt's folder number (OUT/00000 -> 0)
    filename: str
    tag: str
    prompt: str
    correct: bool
    reason: str


@dataclass
class Scores:
    """Per-image results of a folder and GenEval's summary numbers."""
    results: list[ImageResult] = field(default_factory=list)

    @property
    def tags(self) -> list[str]:
        present = {r.tag for r in self.results}
        return [t for t in TAGS if t in present] + sorted(present - set(TAGS))

    def tag_counts(self) -> dict[str, tuple[int, int]]:
        """{tag: (correct images, images)}."""
        return {t: (sum(r.correct for r in self.results if r.tag == t),
                    sum(r.tag == t for r in self.results)) for t in self.tags}

    def tag_accuracy(self) -> dict[str, float]:
        return {t: c / n for t, (c, n) in self.tag_counts().items()}

    @property
    def overall(self) -> float:
        """GenEval's overall score: the mean of the per-tag accuracies."""
        acc = self.tag_accuracy()
        return float(np.mean(list(acc.values()))) if acc else float("nan")

    @property
    def correct_images(self) -> float:
        return float(np.mean([r.correct for r in self.results]))

    @property
    def correct_prompts(self) -> float:
        """The fraction of prompts with at least one correct image."""
        by = {}
        for r in self.results:
            by[r.folder] = by.get(r.folder, False) or r.correct
        return float(np.mean(list(by.values())))

    def bootstrap(self, reps: int = 1000, seed: int = 0) -> np.ndarray:
        """`reps` overall scores of prompt folders resampled with replacement (for intervals:
        np.percentile(scores.bootstrap(), [2.5, 97.5]))."""
        folders = sorted({r.folder for r in self.results})
        tag_of = {r.folder: r.tag for r in self.results}
        tag_ix = {t: i for i, t in enumerate(self.tags)}
        right = np.zeros(len(folders)), np.zeros(len(folders))
        pos = {f: i for i, f in enumerate(folders)}
        for r in self.results:
            right[0][pos[r.folder]] += r.correct
            right[1][pos[r.folder]] += 1
        tags = np.array([tag_ix[tag_of[f]] for f in folders])
        rng = np.random.default_rng(seed)
        out = np.empty(reps)
        for b in range(reps):
            idx = rng.integers(0, len(folders), len(folders))
            c = np.bincount(tags[idx], right[0][idx], len(tag_ix))
            n = np.bincount(tags[idx], right[1][idx], len(tag_ix))
            out[b] = np.mean(c[n > 0] / n[n > 0])
        return out

    def summary(self) -> str:
        """GenEval's summary: totals, then the accuracy per tag and the overall score."""
        lines = ["Summary", "=======",
                 f"Total images: {len(self.results)}",
                 f"Total prompts: {len({r.folder for r in self.results})}",
                 f"% correct images: {self.correct_images:.2%}",
                 f"% correct prompts: {self.correct_prompts:.2%}", "",
                 "Task breakdown", "=============="]
        for t, (c, n) in self.tag_counts().items():
            lines.append(f"{t:<16} = {c / n:.2%} ({c} / {n})")
        lines += ["", f"Overall score (avg. over tasks): {self.overall:.5f}"]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"overall": self.overall, "tags": self.tag_accuracy(),
                "images": len(self.results), "correct_images": self.correct_images,
                "correct_prompts": self.correct_prompts}

    def write_results(self, path: str | Path) -> None:
        """One JSON line per image (filename, tag, prompt, correct, reason), as GenEval's
        evaluator writes its results file."""
        Path(path).write_text("".join(
            json.dumps({"filename": r.filename, "tag": r.tag, "prompt": r.prompt,
                        "correct": r.correct, "reason": r.reason}) + "\n"
            for r in self.results))


def evaluate_folder(out: str | Path) -> Scores:
    """Score every image of a GenEval-layout folder whose records are toy-shapes prompts."""
    out = Path(out)
    if not out.is_dir():
        raise FileNotFoundError(f"{out} is not a folder: give the --out folder of a run with "
                                f"--prompts toy-geneval.jsonl")
    folders = sorted(p for p in out.iterdir() if p.is_dir() and _FOLDER_RE.match(p.name))
    scores = Scores()
    for folder in folders:
        meta_path = folder / "metadata.jsonl"
        if not meta_path.is_file():
            continue
        record = json.loads(meta_path.read_text(encoding="utf-8"))
        _check_record(record, meta_path)
        for png in sorted((folder / "samples").glob("[0-9]*.png")):
            with Image.open(png) as im:
                image = np.asarray(im.convert("RGB"))
            ok, reason = evaluate_image(image, record)
            scores.results.append(ImageResult(int(folder.name), str(png.relative_to(out)),
                                              record["tag"], record["prompt"], ok, reason))
    if not scores.results:
        raise FileNotFoundError(f"{out} holds no images in GenEval's layout "
                                f"(00000/metadata.jsonl and 00000/samples/0000.png)")
    return scores


def _check_record(record: dict, where: Path) -> None:
    if not isinstance(record, dict) or "tag" not in record or "include" not in record:
        raise ValueError(f"{where}: not a GenEval record (needs 'tag' and 'include'); score "
                         f"runs made with --prompts toy-geneval.jsonl")
    for req in [*record["include"], *record.get("exclude", [])]:
        if req.get("class") not in CLASSES:
            raise ValueError(f"{where}: class {req.get('class')!r} is not a toy-shapes class "
                             f"{CLASSES}; this evaluator scores toy-shapes prompts only")
        if "color" in req and req["color"] not in COLORS:
            raise ValueError(f"{where}: color {req['color']!r} is not one of {tuple(COLORS)}")


class ToyGenEvalMetric:
    """A `vardist.Study` metric: 1.0 when an image satisfies its prompt's record, else 0.0.
    Study conditions are the prompt texts, so records are looked up by text in `records`
    (default: the shipped evaluation prompts)."""

    name, per_image = "geneval", True

    def __init__(self, records: list[dict] | None = None) -> None:
        from vardist.zoo.shapes import make_eval_prompts

        self.records = {r["prompt"]: r for r in (records or make_eval_prompts())}

    def record(self, prompt: str) -> dict:
        try:
            return self.records[prompt]
        except KeyError:
            raise ValueError(f"prompt {prompt!r} is not among the metric's records; pass "
                             f"ToyGenEvalMetric(records=...) with the run's prompt file") from None

    def compute(self, images: np.ndarray, conditions) -> np.ndarray:
        return np.array([float(evaluate_image(im, self.record(c))[0])
                         for im, c in zip(images, conditions)])


def select_prompts(per_tag: int) -> list[dict]:
    """The first `per_tag` evaluation prompts of each tag (0: all of them), in file order."""
    from vardist.zoo.shapes import make_eval_prompts

    records = make_eval_prompts()
    if per_tag <= 0:
        return records
    return [r for t in TAGS for r in [r for r in records if r["tag"] == t][:per_tag]]


def interval(values: np.ndarray) -> tuple[float, float]:
    """The 95% percentile interval of bootstrap values (e.g. Scores.bootstrap(), or the
    difference of two settings' bootstraps over the same resamples: a paired interval)."""
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)


def paired_comparison(scores: Sequence[Scores], base: Scores, reps: int = 1000,
                      seed: int = 0) -> list[dict[str, Any]]:
    """Each Scores against `base` (plain sampling, say): its overall score and 95% bootstrap
    interval over prompts, the difference to base and its paired interval (the same `reps`
    resamples for every one), and the per-tag accuracies."""
    ref = base.bootstrap(reps, seed)
    out = []
    for s in scores:
        boot = s.bootstrap(reps, seed)
        out.append(dict(overall=s.overall, overall_ci=interval(boot),
                        diff=s.overall - base.overall, diff_ci=interval(boot - ref),
                        tags=s.tag_accuracy()))
    return out


def scores_from_rows(rows: list[dict], records: dict[str, dict], correct: str = "geneval"
                     ) -> Scores:
    """GenEval's numbers for study rows (one setting's): each row's condition_index is its
    prompt, `correct` the per-image metric column."""
    return Scores([ImageResult(r["condition_index"], f"{r['condition_index']:05d}/samples/"
                               f"{r['sample_index']:04d}.png", records[r["condition"]]["tag"],
                               r["condition"], bool(r[correct]), "") for r in rows])
