"""The toy-shapes task: procedural scenes of flat coloured shapes with GenEval-format prompts.

A scene is 1 to 4 filled objects (`square`, `circle`, `triangle`) in one of four exact colours on a
black background, each at least 9 px across, no two touching. Prompts and their metadata are
GenEval's JSONL records (`tag`, `include` [{class, count, color?, position?: [relation, index]}],
`exclude` for counting, `prompt`) over GenEval's six tags, phrased as GenEval phrases them; a scene
made for a record holds exactly the objects it names, and whatever the prompt leaves open (the
colours it does not name, sizes, the layout) is drawn at random.

Pure numpy (no torch): the model's trainer (`sample_scene`), the evaluation prompt file
(`make_eval_prompts`, shipped as `EVAL_PROMPTS`) and the evaluator (`geneval_eval.py`, which
shares `relations` so the generator and the judge agree on what "left of" means) all use it.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np

CLASSES = ("square", "circle", "triangle")
COLORS = {"red": (220, 40, 40), "green": (40, 190, 60), "blue": (50, 90, 230),
          "yellow": (230, 200, 40)}
IMAGE_SIZE = 32
TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
RELATIONS = ("left of", "right of", "above", "below")
NUMBERS = {1: "a", 2: "two", 3: "three", 4: "four"}
MAX_OBJECTS = 4
MIN_SIZE, MAX_SIZE = 9, 13   # object extent in pixels (the bounding box's side)
GAP = 2                      # empty pixels at least between two objects' bounding boxes
# GenEval's relative-position rule (its evaluator's POSITION_THRESHOLD): the centre offset is
# shrunk by this fraction of the two objects' summed extents before its direction is read.
POSITION_THRESHOLD = 0.1

EVAL_SEED = 20251202
EVAL_PER_TAG = 50
EVAL_PROMPTS = Path(__file__).parent / "data" / "toy_geneval.jsonl"
# The bare names `--prompts` resolves to EVAL_PROMPTS when no such local file exists.
EVAL_PROMPTS_NAMES = ("toy-geneval.jsonl", "toy-geneval", "toy_geneval.jsonl")

# Every word a prompt can contain, for a model's word embedding.
PROMPT_WORDS = tuple(sorted(
    {"a", "photo", "of", "and", "left", "right", "above", "below", *NUMBERS.values(), *CLASSES,
     *(c + "s" for c in CLASSES), *COLORS}))


# ----------------------------------------------------------------------------- rendering

@lru_cache(maxsize=8)
def _pixel_centres(size: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:size, 0:size] + 0.5
    ys.flags.writeable = xs.flags.writeable = False  # shared between calls
    return ys, xs


def object_mask(obj: dict, size: int = IMAGE_SIZE) -> np.ndarray:
    """Boolean [size, size] mask of one object {class, cx, cy, size}: the pixels whose centres
    lie inside the shape (no anti-aliasing, so colours stay exact). (cx, cy) is the centre of
    the bounding box in pixel units (pixel i spans [i, i+1)); triangles point up."""
    cls, s = obj["class"], float(obj["size"])
    if cls not in CLASSES:
        raise ValueError(f"unknown class {cls!r}: expected one of {CLASSES}")
    if s < 1:
        raise ValueError(f"object size must be >= 1 pixel, got {obj['size']!r}")
    ys, xs = _pixel_centres(size)
    dx, dy = xs - float(obj["cx"]), ys - float(obj["cy"])
    h = s / 2
    if cls == "square":
        return (np.abs(dx) < h) & (np.abs(dy) < h)
    if cls == "circle":
        return dx * dx + dy * dy <= h * h
    # Apex at (cx, cy - h), base from (cx - h, cy + h) to (cx + h, cy + h): the half-width at a
    # row grows linearly from 0 at the apex to h at the base.
    return (dy >= -h) & (dy < h) & (np.abs(dx) <= (dy + h) / 2 + 1e-9)


def render_scene(objects: list[dict], size: int = IMAGE_SIZE) -> np.ndarray:
    """uint8 [size, size, 3] image of `objects` (dicts {class, color, cx, cy, size}) drawn flat
    in their exact COLORS on black."""
    image = np.zeros((size, size, 3), np.uint8)
    for obj in objects:
        if obj["color"] not in COLORS:
            raise ValueError(f"unknown color {obj['color']!r}: expected one of {tuple(COLORS)}")
        image[object_mask(obj, size)] = COLORS[obj["color"]]
    return image


def relations(center_a, dims_a, center_b, dims_b) -> set[str]:
    """GenEval's relations of A to B ({"left of", "above", ...}, possibly two or none): the
    centre offset A - B, each axis shrunk towards 0 by POSITION_THRESHOLD x (A's + B's extent on
    that axis), divided by the offset's length; a component below -0.5 is "left of"/"above"
    (y grows downwards), above 0.5 "right of"/"below". Centres are (x, y), dims (w, h)."""
    offset = np.asarray(center_a, float) - np.asarray(center_b, float)
    dims = np.asarray(dims_a, float) + np.asarray(dims_b, float)
    revised = np.maximum(np.abs(offset) - POSITION_THRESHOLD * dims, 0) * np.sign(offset)
    if np.all(np.abs(revised) < 1e-3):
        return set()
    dx, dy = revised / np.linalg.norm(offset)
    out = set()
    if dx < -0.5:
        out.add("left of")
    if dx > 0.5:
        out.add("right of")
    if dy < -0.5:
        out.add("above")
    if dy > 0.5:
        out.add("below")
    return out


def mask_geometry(mask: np.ndarray) -> tuple[tuple[float, float], tuple[int, int]]:
    """((centroid x, centroid y), (bbox width, bbox height)) of a non-empty boolean mask, in
    the pixel units `relations` takes (pixel centres at i + 0.5)."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        raise ValueError("empty mask has no geometry")
    return ((xs.mean() + 0.5, ys.mean() + 0.5),
            (int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)))


# ----------------------------------------------------------------------------- prompts

def _noun(cls: str, count: int, color: str | None = None) -> str:
    words = [NUMBERS[count]] + ([color] if color else []) + [cls + ("s" if count > 1 else "")]
    return " ".join(words)


def _record(tag: str, include: list[dict], exclude: list[dict] | None = None) -> dict:
    """A GenEval JSONL record, its prompt phrased from `include` as GenEval phrases each tag."""
    if tag == "position":
        ref, obj = include
        text = (f"{_noun(obj['class'], 1, obj.get('color'))} {obj['position'][0]} "
                f"{_noun(ref['class'], 1, ref.get('color'))}")
    else:
        text = " and ".join(_noun(i["class"], i["count"], i.get("color")) for i in include)
    rec: dict = {"tag": tag, "include": include}
    if exclude:
        rec["exclude"] = exclude
    rec["prompt"] = "a photo of " + text
    return rec


def _entry(cls: str, count: int = 1, color: str | None = None,
           position: tuple[str, int] | None = None) -> dict:
    e: dict = {"class": cls, "count": count}
    if color is not None:
        e["color"] = color
    if position is not None:
        e["position"] = [position[0], position[1]]
    return e


def _records(tag: str) -> list[list[dict]]:
    """Every distinct record of `tag`, in strata (position: without and with colours); fresh
    copies, so callers may change them."""
    return json.loads(json.dumps(_enumerate(tag)))


@lru_cache(maxsize=None)
def _enumerate(tag: str) -> list[list[dict]]:
    """`_records` without copies (cached: callers must not change what it returns)."""
    colors = list(COLORS)
    pairs = [(a, b) for a in CLASSES for b in CLASSES if a != b]
    color_pairs = [(a, b) for a in colors for b in colors if a != b]
    if tag == "single_object":
        options = [[_record(tag, [_entry(c)]) for c in CLASSES]]
    elif tag == "two_object":
        options = [[_record(tag, [_entry(a), _entry(b)]) for a, b in pairs]]
    elif tag == "counting":
        options = [[_record(tag, [_entry(c, n)], [_entry(c, n + 1)])
                    for c in CLASSES for n in range(2, MAX_OBJECTS + 1)]]
    elif tag == "colors":
        options = [[_record(tag, [_entry(c, 1, k)]) for c in CLASSES for k in colors]]
    elif tag == "color_attr":
        options = [[_record(tag, [_entry(a, 1, ka), _entry(b, 1, kb)])
                    for a, b in pairs for ka, kb in color_pairs]]
    elif tag == "position":
        plain = [_record(tag, [_entry(b), _entry(a, position=(r, 0))])
                 for a, b in pairs for r in RELATIONS]
        colored = [_record(tag, [_entry(b, 1, kb), _entry(a, 1, ka, (r, 0))])
                   for a, b in pairs for r in RELATIONS for ka in colors for kb in colors]
        options = [plain, colored]
    else:
        raise ValueError(f"unknown tag {tag!r}: expected one of {TAGS}")
    return options


def make_prompt(tag: str, rng: np.random.Generator) -> dict:
    """A random GenEval record of `tag` (position prompts name colours half of the time)."""
    strata = _enumerate(tag)
    stratum = strata[rng.integers(len(strata))]
    return json.loads(json.dumps(stratum[rng.choice(len(stratum), 1, replace=False)[0]]))


def make_eval_prompts(seed: int = EVAL_SEED, per_tag: int = EVAL_PER_TAG) -> list[dict]:
    """The evaluation prompts: `per_tag` records for each tag, in GenEval's tag order. Each tag's
    quota is split evenly over its strata; a stratum with fewer distinct prompts than its share
    repeats them in reshuffled rounds (so each prompt appears equally often, +-1), a larger one
    gives a random subset. Deterministic for a seed (the shipped file uses EVAL_SEED)."""
    rng = np.random.default_rng(seed)
    out: list[dict] = []
    for tag in TAGS:
        strata = _records(tag)
        for i, stratum in enumerate(strata):
            share = per_tag // len(strata) + (i < per_tag % len(strata))
            chosen: list[dict] = []
            while len(chosen) < share:
                order = rng.permutation(len(stratum))
                chosen += [stratum[j] for j in order[:share - len(chosen)]]
            out += chosen
    return out


def eval_prompts_text(seed: int = EVAL_SEED, per_tag: int = EVAL_PER_TAG) -> str:
    """The JSONL text of `make_eval_prompts` (what EVAL_PROMPTS holds for the defaults)."""
    return "".join(json.dumps(r) + "\n" for r in make_eval_prompts(seed, per_tag))


def write_eval_prompts(path: str | Path = EVAL_PROMPTS, seed: int = EVAL_SEED,
                       per_tag: int = EVAL_PER_TAG) -> Path:
    """Write the evaluation prompt file (regenerates the shipped one with the defaults)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(eval_prompts_text(seed, per_tag))
    return path


# ----------------------------------------------------------------------------- scenes

def _place(sizes: list[int], rng: np.random.Generator, size: int, tries: int = 200
           ) -> list[tuple[int, int]] | None:
    """Random top-left corners for boxes of `sizes` inside the image (1 px margin), at least GAP
    empty pixels between any two boxes (along x or along y); None when the tries run out."""
    corners: list[tuple[int, int]] = []
    for s in sizes:
        for _ in range(tries):
            x, y = (int(v) for v in rng.integers(1, size - s, 2))  # x + s <= size - 1
            if all(x + s + GAP <= px or px + ps + GAP <= x or y + s + GAP <= py
                   or py + ps + GAP <= y for (px, py), ps in zip(corners, sizes)):
                corners.append((x, y))
                break
        else:
            return None
    return corners


def scene_for(record: dict, rng: np.random.Generator, size: int = IMAGE_SIZE,
              max_tries: int = 1000) -> list[dict]:
    """A random scene (object dicts for `render_scene`) that satisfies `record`: exactly the
    objects its `include` names, unnamed colours random, positions meeting every
    `position` relation by GenEval's rule on the rendered shapes."""
    include = record.get("include")
    if not include:
        raise ValueError(f"record has no 'include' list: {record!r}")
    specs = []  # (include index, class, color or None)
    for k, inc in enumerate(include):
        specs += [(k, inc["class"], inc.get("color"))] * int(inc["count"])
    if not 1 <= len(specs) <= MAX_OBJECTS:
        raise ValueError(f"record names {len(specs)} objects; toy-shapes scenes hold 1 to "
                         f"{MAX_OBJECTS}: {record.get('prompt')!r}")
    # Three or four objects: sizes capped so that a 2 x 2 arrangement fits (no cap at 32 px).
    top = min(MAX_SIZE, (size - 2) // 2 - GAP) if len(specs) > 2 else MAX_SIZE
    for _ in range(max_tries):
        sizes = [int(s) for s in rng.integers(MIN_SIZE, max(MIN_SIZE, top) + 1, len(specs))]
        corners = _place(sizes, rng, size)
        if corners is None:
            continue
        objects = [{"class": cls, "color": color or list(COLORS)[rng.integers(len(COLORS))],
                    "cx": x + s / 2, "cy": y + s / 2, "size": s}
                   for (_k, cls, color), (x, y), s in zip(specs, corners, sizes)]
        if _positions_hold(include, specs, objects, size):
            return objects
    raise RuntimeError(f"no layout found for {record.get('prompt')!r} in {max_tries} tries")


def _positions_hold(include: list[dict], specs: list, objects: list[dict], size: int) -> bool:
    geometry = [mask_geometry(object_mask(o, size)) for o in objects]
    for k, inc in enumerate(include):
        if "position" not in inc:
            continue
        rel, target = inc["position"]
        mine = [g for (kk, *_), g in zip(specs, geometry) if kk == k]
        theirs = [g for (kk, *_), g in zip(specs, geometry) if kk == target]
        if not all(rel in relations(a[0], a[1], b[0], b[1]) for a in mine for b in theirs):
            return False
    return True


def render_for(record: dict, rng: np.random.Generator, size: int = IMAGE_SIZE) -> np.ndarray:
    """A random image that satisfies `record` (see `scene_for`)."""
    return render_scene(scene_for(record, rng, size), size)


def sample_scene(rng: np.random.Generator, size: int = IMAGE_SIZE) -> tuple[str, dict, np.ndarray]:
    """A training example: (prompt, its GenEval record, uint8 [size, size, 3] image) for a tag
    drawn uniformly from TAGS."""
    record = make_prompt(TAGS[rng.integers(len(TAGS))], rng)
    return record["prompt"], record, render_for(record, rng, size)


def resolve_prompt_file(path: str | Path) -> Path:
    """`path` itself, unless it does not exist and is one of EVAL_PROMPTS_NAMES: then the
    shipped evaluation prompt file."""
    p = Path(path)
    if not p.exists() and str(path) in EVAL_PROMPTS_NAMES:
        return EVAL_PROMPTS
    return p


__all__ = ["CLASSES", "COLORS", "IMAGE_SIZE", "TAGS", "RELATIONS", "PROMPT_WORDS", "EVAL_SEED",
           "EVAL_PROMPTS", "object_mask", "render_scene", "relations", "mask_geometry",
           "EVAL_PROMPTS_NAMES", "make_prompt", "make_eval_prompts", "eval_prompts_text",
           "write_eval_prompts", "scene_for", "render_for", "sample_scene", "resolve_prompt_file"]
