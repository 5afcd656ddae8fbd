"""toy-shapes: the scene generator, the shipped GenEval-format prompt file, and the exact
evaluator (`vardist eval toy-geneval`)."""

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from vardist.io.conditions import read_prompts
from vardist.io.outputs import png_bytes, write_prompt_image
from vardist.zoo import geneval_eval as G
from vardist.zoo import shapes as S
from vardist_cli.main import app

GENEVAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "geneval.jsonl"


def _geneval_records() -> list[dict]:
    if not GENEVAL.is_file():
        pytest.skip(f"GenEval's prompt file is not at {GENEVAL}")
    return [json.loads(line) for line in GENEVAL.read_text().splitlines() if line.strip()]


def flat(output: str) -> str:
    """CLI output without rich's box drawing and line wrapping."""
    return " ".join(output.translate({ord(c): " " for c in "│╭╮╰╯─"}).split())


def _components(mask: np.ndarray) -> int:
    return len(G._label(mask))


# ----------------------------------------------------------------------------- scenes

def test_sampled_scenes_follow_the_task_rules():
    rng = np.random.default_rng(0)
    palette = {tuple(c) for c in S.COLORS.values()} | {(0, 0, 0)}
    tags = set()
    for _ in range(300):
        prompt, record, image = S.sample_scene(rng)
        tags.add(record["tag"])
        assert image.shape == (S.IMAGE_SIZE, S.IMAGE_SIZE, 3) and image.dtype == np.uint8
        assert prompt == record["prompt"] and prompt.startswith("a photo of ")
        assert {tuple(p) for p in image.reshape(-1, 3)} <= palette
        n = sum(i["count"] for i in record["include"])
        assert 1 <= n <= 4
        # Objects never touch: one 8-connected region per object, each >= 9 px across.
        assert _components(image.any(-1)) == n
        for d in G.detect(image):
            assert max(d.dims) >= 9
        assert G.evaluate_image(image, record) == (True, "")
    assert tags == set(S.TAGS)


@pytest.mark.parametrize("cls", S.CLASSES)
def test_every_shape_size_and_colour_is_detected_as_drawn(cls):
    for size in range(S.MIN_SIZE, S.MAX_SIZE + 1):
        for color in S.COLORS:
            obj = {"class": cls, "color": color, "cx": 15 + size / 2, "cy": 3 + size / 2,
                   "size": size}
            (d,) = G.detect(S.render_scene([obj]))
            assert (d.cls, d.color, d.area) == (cls, color, S.object_mask(obj).sum())


def test_unknown_class_and_colour_are_refused():
    with pytest.raises(ValueError, match="unknown class 'hexagon'"):
        S.render_scene([{"class": "hexagon", "color": "red", "cx": 8, "cy": 8, "size": 9}])
    with pytest.raises(ValueError, match="unknown color 'pink'"):
        S.render_scene([{"class": "square", "color": "pink", "cx": 8, "cy": 8, "size": 9}])
    with pytest.raises(ValueError, match="unknown tag 'shapes'"):
        S.make_prompt("shapes", np.random.default_rng(0))


# ----------------------------------------------------------------------------- prompt file

def test_shipped_prompt_file_is_what_its_seed_regenerates():
    assert S.EVAL_PROMPTS.read_text() == S.eval_prompts_text(S.EVAL_SEED)
    records = S.make_eval_prompts()
    assert len(records) >= 300
    counts = {t: sum(r["tag"] == t for r in records) for t in S.TAGS}
    assert min(counts.values()) >= 50, counts
    assert S.make_eval_prompts(seed=1) != records  # the seed matters


def test_prompt_file_is_package_data():
    import fnmatch
    import tomllib

    root = Path(__file__).resolve().parents[1]
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"]["vardist"]
    rel = S.EVAL_PROMPTS.relative_to(root / "vardist").as_posix()
    assert any(fnmatch.fnmatch(rel, p) for p in patterns), (rel, patterns)


def test_prompt_records_have_genevals_format():
    geneval = _geneval_records()
    top_keys = {r["tag"]: list(r) for r in geneval}
    entry_keys = {k for r in geneval for i in r["include"] for k in i}
    relations = {i["position"][0] for r in geneval for i in r["include"] if "position" in i}
    assert set(S.RELATIONS) == relations
    for r in S.make_eval_prompts():
        assert list(r) == top_keys[r["tag"]]  # same keys, same order, per tag
        for i in r["include"] + r.get("exclude", []):
            assert set(i) <= entry_keys
            assert isinstance(i["class"], str) and isinstance(i["count"], int)
            assert isinstance(i.get("color", ""), str)
            if "position" in i:
                rel, target = i["position"]
                assert rel in relations and isinstance(target, int)
        if r["tag"] == "counting":  # GenEval: exactly N, as include N and exclude N + 1
            assert r["exclude"] == [{"class": r["include"][0]["class"],
                                     "count": r["include"][0]["count"] + 1}]


def test_prompts_are_phrased_as_genevals():
    # Our phrasing applied to GenEval's own records gives GenEval's prompts, apart from English
    # our vocabulary never needs ("an", irregular plurals).
    checked = 0
    for r in _geneval_records():
        counted = [i["class"] for i in r["include"] if i["count"] > 1]
        if " an " in f" {r['prompt']} " or any(c.endswith(("s", "sh", "ch", "x")) for c in counted):
            continue
        assert S._record(r["tag"], r["include"], r.get("exclude")) == r
        checked += 1
    assert checked > 400


def test_bare_prompt_file_name_resolves_to_the_shipped_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("toy-geneval.jsonl", "toy-geneval"):
        lines = read_prompts(name)
        assert [json.loads(p.raw) for p in lines] == S.make_eval_prompts()
    Path("toy-geneval.jsonl").write_text('{"prompt": "a photo of a square"}\n')
    assert [p.prompt for p in read_prompts("toy-geneval.jsonl")] == ["a photo of a square"]


# ----------------------------------------------------------------------------- evaluator

def _variant(record: dict, **changes) -> dict:
    """`record` with include entries changed: changes maps 'i.key' to a new value."""
    out = json.loads(json.dumps(record))
    for where, value in changes.items():
        i, key = where.split(".")
        out["include"][int(i)][key] = value
    return out


def _record(tag: str, include: list[dict], exclude=None) -> dict:
    return S._record(tag, include, exclude)


CASES = {
    # tag: (record, a record whose scenes must fail it)
    "single_object": (_record("single_object", [{"class": "square", "count": 1}]),
                      _record("single_object", [{"class": "triangle", "count": 1}])),
    "two_object": (_record("two_object", [{"class": "circle", "count": 1},
                                          {"class": "triangle", "count": 1}]),
                   _record("counting", [{"class": "circle", "count": 2}])),
    "counting": (_record("counting", [{"class": "square", "count": 3}],
                         [{"class": "square", "count": 4}]),
                 _record("counting", [{"class": "square", "count": 4}])),
    "colors": (_record("colors", [{"class": "circle", "count": 1, "color": "blue"}]),
               _record("colors", [{"class": "circle", "count": 1, "color": "green"}])),
    "position": (_record("position", [{"class": "square", "count": 1},
                                      {"class": "triangle", "count": 1,
                                       "position": ["left of", 0]}]),
                 _record("position", [{"class": "square", "count": 1},
                                      {"class": "triangle", "count": 1,
                                       "position": ["right of", 0]}])),
    "color_attr": (_record("color_attr", [{"class": "square", "count": 1, "color": "red"},
                                          {"class": "circle", "count": 1, "color": "yellow"}]),
                   _record("color_attr", [{"class": "square", "count": 1, "color": "yellow"},
                                          {"class": "circle", "count": 1, "color": "red"}])),
}


@pytest.mark.parametrize("tag", S.TAGS)
def test_each_tag_passes_right_scenes_and_fails_wrong_ones(tag):
    record, wrong = CASES[tag]
    rng = np.random.default_rng(7)
    for _ in range(20):
        assert G.evaluate_image(S.render_for(record, rng), record) == (True, "")
        ok, reason = G.evaluate_image(S.render_for(wrong, rng), record)
        assert not ok and reason


def test_failure_reasons_name_what_is_wrong():
    rng = np.random.default_rng(3)
    record, wrong = CASES["counting"]
    assert G.evaluate_image(S.render_for(wrong, rng), record)[1] == "expected square<4, found 4"
    record = CASES["counting"][0]
    two = _record("counting", [{"class": "square", "count": 2}])
    assert G.evaluate_image(S.render_for(two, rng), record)[1] == "expected square>=3, found 2"
    record, wrong = CASES["colors"]
    assert "expected blue circle>=1, found 0 blue" in G.evaluate_image(
        S.render_for(wrong, rng), record)[1]
    record, wrong = CASES["position"]
    assert "expected triangle left of square, found" in G.evaluate_image(
        S.render_for(wrong, rng), record)[1]


def test_colour_matched_objects_are_chosen_among_extras():
    # Two squares, one red and one blue: "a blue square" holds whatever their sizes.
    objects = [{"class": "square", "color": "red", "cx": 8.5, "cy": 8.5, "size": 13},
               {"class": "square", "color": "blue", "cx": 24.5, "cy": 24.5, "size": 9}]
    record = _variant(CASES["colors"][0], **{"0.class": "square"})
    assert G.evaluate_image(S.render_scene(objects), record) == (True, "")


def test_noise_blur_and_blobs():
    obj = {"class": "circle", "color": "green", "cx": 16, "cy": 16, "size": 12}
    image = S.render_scene([obj]).astype(int)
    rng = np.random.default_rng(0)
    noisy = np.clip(image + rng.normal(0, 15, image.shape), 0, 255).astype(np.uint8)
    assert [(d.cls, d.color) for d in G.detect(noisy)] == [("circle", "green")]
    speck = S.render_scene([obj])
    speck[1:3, 1:3] = S.COLORS["red"]                      # a 4-pixel speck is not an object
    assert [d.cls for d in G.detect(speck)] == ["circle"]
    bar = np.zeros((32, 32, 3), np.uint8)
    bar[10:14, 2:30] = S.COLORS["blue"]                     # a long bar is no class
    assert [d.cls for d in G.detect(bar)] == [None]
    ys, xs = np.mgrid[0:32, 0:32] + 0.5
    other = np.zeros((32, 32, 3), np.uint8)
    other[np.abs(xs - 8) + np.abs(ys - 8) < 6] = S.COLORS["red"]    # a diamond
    upright = S.object_mask({"class": "triangle", "cx": 22, "cy": 22, "size": 12})
    other[upright[::-1]] = S.COLORS["yellow"]                         # a triangle upside down
    assert sorted((d.color, d.cls) for d in G.detect(other)) == [("red", None), ("yellow", None)]


def test_blurred_ground_truth_still_scores_fully():
    # Decoded images have soft edges: a pixel counts for a colour when it is at least half of
    # it, so a Gaussian blur keeps each shape's outline and class.
    from PIL import Image, ImageFilter

    rng = np.random.default_rng(2)
    records = S.make_eval_prompts()[::3]
    for radius in (0.5, 1.0):
        for r in records:
            image = Image.fromarray(S.render_for(r, rng)).filter(ImageFilter.GaussianBlur(radius))
            assert G.evaluate_image(np.asarray(image), r) == (True, ""), (radius, r["prompt"])


def _write_run(out: Path, records: list[dict], images_for) -> None:
    for k, record in enumerate(records):
        for j, image in enumerate(images_for(record)):
            write_prompt_image(out, k, j, json.dumps(record), png_bytes(image))


def test_rendered_ground_truth_scores_at_least_99_percent(tmp_path):
    rng = np.random.default_rng(11)
    records = S.make_eval_prompts()
    _write_run(tmp_path, records, lambda r: [S.render_for(r, rng) for _ in range(2)])
    scores = G.evaluate_folder(tmp_path)
    assert len(scores.results) == 2 * len(records)
    assert scores.overall >= 0.99 and min(scores.tag_accuracy().values()) >= 0.99
    boot = scores.bootstrap(reps=50, seed=0)
    assert boot.shape == (50,) and np.all(boot >= 0.98)


def test_overall_is_the_mean_over_tags_and_cli_prints_genevals_summary(tmp_path):
    rng = np.random.default_rng(5)
    records = [CASES[t][0] for t in S.TAGS] * 2
    # Right images for single_object and counting only; the others get wrong scenes.
    good = {"single_object", "counting"}
    _write_run(tmp_path, records, lambda r: [S.render_for(
        r if r["tag"] in good else CASES[r["tag"]][1], rng)])
    scores = G.evaluate_folder(tmp_path)
    assert scores.tag_accuracy() == {t: float(t in good) for t in S.TAGS}
    assert scores.overall == pytest.approx(2 / 6)
    assert scores.correct_images == pytest.approx(4 / 12)
    results = tmp_path / "results.jsonl"
    r = CliRunner().invoke(app, ["eval", "toy-geneval", str(tmp_path), "--results",
                                 str(results)])
    assert r.exit_code == 0, r.output
    assert "counting         = 100.00% (2 / 2)" in r.output
    assert "colors           = 0.00% (0 / 2)" in r.output
    assert "Overall score (avg. over tasks): 0.33333" in r.output
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    assert len(rows) == 12 and rows[0]["filename"] == "00000/samples/0000.png"


def test_evaluator_refuses_what_is_not_a_toy_shapes_run(tmp_path):
    r = CliRunner().invoke(app, ["eval", "toy-geneval", str(tmp_path / "nothing")])
    assert r.exit_code == 2 and "is not a folder" in flat(r.output)
    r = CliRunner().invoke(app, ["eval", "toy-geneval", str(tmp_path)])
    assert r.exit_code == 2 and "holds no images" in flat(r.output)
    write_prompt_image(tmp_path, 0, 0, json.dumps({
        "tag": "single_object", "include": [{"class": "bench", "count": 1}],
        "prompt": "a photo of a bench"}), png_bytes(np.zeros((32, 32, 3), np.uint8)))
    with pytest.raises(ValueError, match="'bench' is not a toy-shapes class"):
        G.evaluate_folder(tmp_path)


def test_geneval_study_script_runs_every_strategy(tmp_path, monkeypatch):
    import importlib
    import sys

    from scalewise_double import register_doubles

    register_doubles(monkeypatch)
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "examples"))
    study = importlib.import_module("toy_geneval_study")
    res = study.main(["--model", "test-double-text", "--out", str(tmp_path), "--per-tag", "1",
                      "--ns", "4,8", "--bootstrap", "20"])
    entries = res["entries"]
    assert {e["strategy"] for e in entries} == set(study.STRATEGIES)
    for e in entries:
        assert e["images"] == len(S.TAGS) and set(e["tags"]) == set(S.TAGS)
        assert e["overall"] == pytest.approx(np.mean(list(e["tags"].values())))
        lo, hi = e["overall_ci"]
        assert 0 <= lo <= hi <= 1
    assert all(e["vs_none"] == 0 for e in entries if e["strategy"] == "none")
    table = (tmp_path / "toy_geneval_study.md").read_text()
    assert table.count("| none | any |") == 1 and "| var-scaling alpha=1.5 | 8 |" in table
    assert all(p.is_file() for p in res["paths"])
    sys.modules.pop("toy_geneval_study", None)


def test_search_with_the_bare_prompt_name_then_eval(tmp_path, monkeypatch):
    # `--prompts toy-geneval.jsonl` with no such local file: the shipped prompts, written in
    # GenEval's layout with their full records, which `vardist eval toy-geneval` reads back.
    from scalewise_double import register_doubles

    register_doubles(monkeypatch)
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    r = runner.invoke(app, ["search", "--model", "test-double-text", "--prompts",
                            "toy-geneval.jsonl", "--per-prompt", "1", "--n", "2",
                            "--out", "run"])
    assert r.exit_code == 0, r.output
    meta = json.loads((tmp_path / "run" / "00299" / "metadata.jsonl").read_text())
    assert meta == S.make_eval_prompts()[299]
    r = runner.invoke(app, ["eval", "toy-geneval", "run"])
    assert r.exit_code == 0, r.output
    assert "Total images: 300" in r.output and "Total prompts: 300" in r.output
