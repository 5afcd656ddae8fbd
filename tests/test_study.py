"""Scaling studies (vardist.Study) on the scale-wise test double: nested pools choose what
separate searches choose, shared choices are finished once, tables / Parquet / plots, bad input."""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow.parquet as pq
import pytest

import vardist
from scalewise_double import DoubleModel
from vardist.engine import pipeline
from vardist.io.conditions import InputError
from vardist.study import Study, TorchFidelity

CLASSES = [0, 3, 7]
SWEEP = {"n": [4, 10, 24], "strategy": ["none", "top-k", "random-k", "var-scaling"],
         "alpha": [1.2, 3.0]}


class CountingDouble(DoubleModel):
    """Counts the items that go through finish() (one per continuation)."""

    def __init__(self) -> None:
        super().__init__()
        self.finished_items = 0

    def finish(self, state):
        self.finished_items += state.batch_size
        return super().finish(state)


@pytest.fixture(scope="module")
def study_run():
    model = CountingDouble()
    study = Study(model, CLASSES, seeds=3, sweep=SWEEP, batch_size=4)
    return model, study, study.run()


def test_nested_pools_choose_what_separate_searches_choose(study_run):
    _, study, res = study_run
    rows = res.rows.to_pylist()
    checked = 0
    for s in study.settings:
        plain = vardist.search(DoubleModel(), classes=CLASSES, samples=3, n=s.n,
                               strategy=s.strategy, alpha=s.alpha, batch_size=4)
        mine = sorted((r for r in rows if r["n"] == s.n and r["strategy"] == s.strategy
                       and r["alpha"] == s.alpha), key=lambda r: r["item"])
        assert [r["chosen"] for r in mine] == [p.chosen for p in plain]
        assert [r["density_chosen"] for r in mine] == pytest.approx(
            [p.density_chosen for p in plain], nan_ok=True)
        for r, p in zip(mine, plain):  # the double is batch-invariant: same pixels too
            np.testing.assert_array_equal(res.images[r["image_key"]], p.image)
        checked += 1
    assert checked == len(study.settings)
    # the sweep really varied the choice (otherwise this test would prove little)
    assert len({r["chosen"] for r in rows}) > 3


def test_one_pool_per_item_and_shared_choices_finished_once(study_run):
    model, study, res = study_run
    assert res.stats["pools"] == len(study.items)
    assert res.stats["candidates_drawn"] == len(study.items) * max(SWEEP["n"])
    # Count the distinct (item, chosen token map) pairs independently, from a fresh pool.
    items = study.items
    pool = pipeline.prefix_and_pool(DoubleModel(), items, dataclasses.replace(
        study.settings[-1], n=max(SWEEP["n"]), strategy="top-k"))
    distinct = {(r["item"], pool.codes[r["item"], r["chosen"]].tobytes())
                for r in res.rows.to_pylist()}
    assert res.stats["continuations"] == model.finished_items == len(distinct)
    assert len(distinct) < res.rows.num_rows  # some choices were shared
    # every "none" row of an item is candidate 0: one continuation serves all its n
    none_keys = {}
    for r in res.rows.to_pylist():
        if r["strategy"] == "none":
            none_keys.setdefault(r["item"], set()).add(r["image_key"])
    assert all(len(v) == 1 for v in none_keys.values())


def test_table_has_one_row_per_setting_and_item(study_run):
    _, study, res = study_run
    # alpha only matters for var-scaling: 3 n x (none, top-k, random-k) + 3 n x 2 alphas
    assert len(study.settings) == 3 * 3 + 3 * 2
    assert res.rows.num_rows == len(study.settings) * len(CLASSES) * 3
    pairs = {(r["setting"], r["item"]) for r in res.rows.to_pylist()}
    assert len(pairs) == res.rows.num_rows
    assert res.summary.num_rows == len(study.settings)
    assert set(res.summary["items"].to_pylist()) == {len(CLASSES) * 3}


class Brightness:
    name, per_image = "brightness", True

    def compute(self, images, conditions):
        return images.reshape(len(images), -1).mean(1) / 255


class Distinct:
    name, per_image = "distinct", False

    def compute(self, images, conditions):
        return float(len({im.tobytes() for im in images}))


def test_metrics_parquet_and_plots(tmp_path):
    study = Study(DoubleModel(), [1, 2], seeds=[0, 5], sweep={"n": [3, 12],
                  "strategy": ["none", "top-k"]}, metrics=[Brightness(), Distinct()],
                  batch_size=3)
    res = study.run(tmp_path / "out", layouts=True)
    rows = pq.read_table(res.paths["rows"]).to_pylist()
    assert len(rows) == 4 * 4
    for r in rows:  # per-image metric recomputed from the written PNG
        img = vardist.io.outputs.read_png(tmp_path / "out" / r["image"])
        assert r["brightness"] == pytest.approx(img.mean() / 255)
    summary = pq.read_table(res.paths["summary"]).to_pylist()
    for s in summary:
        mine = [r for r in rows if r["setting"] == s["setting"]]
        assert s["brightness"] == pytest.approx(np.mean([r["brightness"] for r in mine]))
        assert s["distinct_images"] == len({r["image_key"] for r in mine})
        assert s["distinct"] == len({vardist.io.outputs.read_png(tmp_path / "out" / r["image"])
                                     .tobytes() for r in mine})
    assert {r["sample_index"] for r in rows} == {0, 5}
    for name in ("brightness", "distinct"):
        png = res.paths[f"plot_{name}"]
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # layouts: each setting's images where search() would put them
    r = rows[0]
    dest = (tmp_path / "out" / "settings" / r["setting"] / "images" /
            f"class_{r['condition_index']:04d}" / f"{r['sample_index']:04d}.png")
    assert dest.read_bytes() == (tmp_path / "out" / r["image"]).read_bytes()


def test_prompt_study_writes_geneval_layouts(tmp_path):
    import json

    prompts = ["a red cat", "two dogs"]
    study = Study(DoubleModel("prompt"), prompts, seeds=2,
                  sweep={"n": [3, 6], "strategy": ["top-k"]}, batch_size=2)
    res = study.run(tmp_path, layouts=True, plots=False)
    assert study.condition_kind == "prompt" and res.rows.num_rows == 2 * 4
    for sid in res.summary["setting"].to_pylist():
        for i, p in enumerate(prompts):
            folder = tmp_path / "settings" / sid / f"{i:05d}"
            assert json.loads((folder / "metadata.jsonl").read_text()) == {"prompt": p}
            assert sorted(f.name for f in (folder / "samples").iterdir()) == ["0000.png",
                                                                                "0001.png"]


@pytest.mark.parametrize("kwargs, param", [
    (dict(sweep={"nn": [3]}), "sweep"),
    (dict(sweep={"n": 3}), "sweep"),
    (dict(sweep={"strategy": ["best"]}), "strategy"),
    (dict(seeds=0), "seeds"),
    (dict(seeds=[1, 1]), "seeds"),
    (dict(metrics=["fid"]), "metrics"),
    (dict(engine="spark"), "engine"),
    (dict(conditions=[11]), "classes"),
])
def test_bad_input_names_the_argument(kwargs, param):
    args = dict(model=DoubleModel(), conditions=[0], seeds=2, sweep={"n": [3]})
    args.update(kwargs)
    with pytest.raises(InputError) as e:
        Study(**args)
    assert e.value.param == param


def test_torch_fidelity_refuses_to_run_without_package_or_weights(tmp_path):
    import importlib.util

    if importlib.util.find_spec("torch_fidelity") is None:
        with pytest.raises(InputError, match="pip install torch-fidelity"):
            Study(DoubleModel(), [0], 2, {"n": [3]}, metrics=[TorchFidelity("isc")])
    else:
        with pytest.raises(FileNotFoundError, match="does not download"):
            Study(DoubleModel(), [0], 2, {"n": [3]},
                  metrics=[TorchFidelity("isc", weights=str(tmp_path / "none.pth"))])


def test_ray_engine_gives_the_local_study(study_run):
    ray = pytest.importorskip("ray")
    import scalewise_double

    _, local_study, want = study_run
    ray.cloudpickle.register_pickle_by_value(scalewise_double)  # tests/ is not installed
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False,
             configure_logging=False)
    try:
        study = Study(DoubleModel(), CLASSES, seeds=3, sweep=SWEEP, batch_size=4, engine="ray",
                      actors=2)
        got = study.run()
    finally:
        ray.shutdown()
    for col in ("setting", "item", "chosen", "branch"):
        assert got.rows[col].to_pylist() == want.rows[col].to_pylist()
    assert got.rows["density_chosen"].to_pylist() == pytest.approx(
        want.rows["density_chosen"].to_pylist(), nan_ok=True)
    assert got.stats["continuations"] == want.stats["continuations"]
    for g, w in zip(got.rows["image_key"].to_pylist(), want.rows["image_key"].to_pylist()):
        np.testing.assert_array_equal(got.images[g], want.images[w])


def test_toy_judge_metrics_on_real_digits():
    from vardist.zoo.specs import JUDGE_FILE, WEIGHTS_DIR

    if not (WEIGHTS_DIR / JUDGE_FILE).is_file():
        pytest.skip(f"the zoo's judge weights ({WEIGHTS_DIR / JUDGE_FILE}) are not built yet")
    from vardist.study import BUILTIN_METRICS
    from vardist.zoo.data import load_digits

    d = load_digits("all")
    grey = (d.images[:300, 0].numpy() * 255).round().astype(np.uint8)
    real = np.repeat(grey[..., None], 3, axis=-1)          # uint8 [N, 16, 16, 3]
    labels = d.labels[:300].tolist()
    m = {name: cls() for name, cls in BUILTIN_METRICS.items()}
    acc = m["accuracy"].compute(real, labels)
    assert acc.shape == (300,) and set(np.unique(acc)) <= {0.0, 1.0} and acc.mean() > 0.9
    wrong = m["accuracy"].compute(real, [(c + 1) % 10 for c in labels])
    assert wrong.mean() < 0.1
    assert m["is_toy"].compute(real, labels) > 5          # confident and spread over 10 classes
    same = np.repeat(real[:1], 20, axis=0)
    assert m["is_toy"].compute(same, [labels[0]] * 20) == pytest.approx(1.0)
    noise = np.random.default_rng(0).integers(0, 256, real.shape, dtype=np.uint8)
    assert m["fd_toy"].compute(real, labels) < m["fd_toy"].compute(noise, labels)
    assert m["diversity"].compute(same, [labels[0]] * 20) == pytest.approx(0.0, abs=1e-6)
    assert m["diversity"].compute(real, labels) > 0


# -- search schedules (search across scales) as a swept setting --------------------------------

SCHEDULES = ["density:3@1,1@2", "beam:3@1,1@2", "tts-var", "density:1@1", None, ""]
DIGITS = dict(conditions=[0, 1, 2], seeds=2, batch_size=2, n=6, verifier="toy-judge")


@pytest.fixture(scope="module")
def schedule_study():
    study = Study("toy-digits", sweep={"search": SCHEDULES}, **DIGITS)
    return study, study.run()


def test_search_schedules_sweep_like_any_setting(schedule_study):
    """A row of a schedule is what vardist.search(search=that) makes for its item: the same
    image bytes, choices, lineage, reward and compute; rows and summary carry the canonical
    schedule; None and "" are the one-scale search (one setting)."""
    study, res = schedule_study
    rows = res.rows.to_pylist()
    assert [s.search for s in study.settings] == [
        "density:3@1,density:1@2", "reward:3@1,reward:1@2",
        "cluster:6@0/8,cluster:2@1/6,resample:1@2/2", "density:1@1", None]
    assert res.summary["search"].to_pylist() == [s.search for s in study.settings]
    assert res.summary["multiscale"].to_pylist() == [True, True, True, False, False]
    for s in study.settings[:4]:
        alone = vardist.search("toy-digits", classes=DIGITS["conditions"], samples=2,
                               batch_size=2, n=6, verifier="toy-judge", search=s.search)
        mine = sorted((r for r in rows if r["search"] == s.search), key=lambda r: r["item"])
        assert len(mine) == len(alone) == 6
        for r, a in zip(mine, alone):
            if s.multiscale:  # searched as search() searches: the same bytes
                assert res.images[r["image_key"]].tobytes() == a.image.tobytes()
            else:  # one-scale: a rebuilt continuation, within a level (docs/study.md)
                diff = res.images[r["image_key"]].astype(int) - a.image.astype(int)
                assert np.abs(diff).max() <= 1
            assert (r["chosen"], r["lineage"]) == (a.chosen, a.lineage)
            assert {k: r[k] for k in a.compute} == a.compute
            assert r["reward"] == pytest.approx(a.reward)
    # the verifier guided the searches: beam previews and scores every candidate at scale 1
    # (6) and scale 2 (3 members x 2), plus the kept image; one-scale rows cost plain's tokens
    summary = {r["search"]: r for r in res.summary.to_pylist()}
    assert summary["reward:3@1,reward:1@2"]["previews_per_image"] == 12
    assert summary["reward:3@1,reward:1@2"]["verifier_calls_per_image"] == 13
    assert summary[None]["forward_tokens_per_image"] == 1 + 4 + 9 + 16
    assert res.stats["searches"] == 3 * len(study.items)  # one per multi-scale setting and item
    assert res.stats["pools"] == len(study.items)  # the one-scale settings share their pools


def test_schedule_sweeps_write_their_tables(schedule_study, tmp_path):
    study, _ = schedule_study
    study.metrics = [Brightness()]
    try:
        res = study.run(tmp_path)
    finally:
        study.metrics = []
    png = res.paths["plot_brightness_tokens"]  # the metric against forward tokens per image
    assert png.name == "brightness_vs_forward_tokens.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = pq.read_table(res.paths["rows"]).to_pylist()
    assert {r["search"] for r in rows} == {s.search for s in study.settings}
    assert all((r["lineage"] is None) == (r["search"] in (None, "density:1@1")) for r in rows)
    assert all(r["forward_tokens"] > 0 for r in rows)


@pytest.mark.parametrize("kwargs, param", [
    (dict(sweep={"search": ["density:3@1,1@2"], "scale": [1, 2]}), "sweep"),
    (dict(sweep={"search": ["beam:3@1,1@2"]}, verifier=None), "verifier"),
    (dict(sweep={"search": ["beam:3@1,1@9"]}), "search"),
    (dict(sweep={"search": ["density:3@1,1@2"], "verifier": [None, "toy-judge"]},
          engine="ray"), "verifier"),
])
def test_bad_schedule_sweeps_are_refused(kwargs, param):
    args = dict(DIGITS, **kwargs)
    if args.get("verifier", 0) is None:
        args.pop("verifier")
    with pytest.raises(InputError) as e:
        Study("toy-digits", **args)
    assert e.value.param == param


def test_rerank_is_dropped_for_schedules_only():
    study = Study("toy-digits", sweep={"search": ["beam:3@1,1@2", None], "rerank": [0, 2]},
                  **{**DIGITS, "n": 6}, strategy="top-k")
    assert [(s.search, s.rerank) for s in study.settings] == [
        ("reward:3@1,reward:1@2", 0), (None, 0), (None, 2)]


def test_ray_study_searches_schedules_like_the_local_one(schedule_study):
    ray = pytest.importorskip("ray")
    _, local = schedule_study
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False,
             configure_logging=False)
    try:
        study = Study("toy-digits", sweep={"search": SCHEDULES}, **DIGITS, engine="ray",
                      actors=2)
        got = study.run()
    finally:
        ray.shutdown()
    for col in ("setting", "item", "search", "chosen", "lineage", "forward_tokens", "previews",
                "verifier_calls"):
        assert got.rows[col].to_pylist() == local.rows[col].to_pylist()
    multi = [r["search"] not in (None, "density:1@1") for r in local.rows.to_pylist()]
    for m, g, w in zip(multi, got.rows["image_key"].to_pylist(),
                       local.rows["image_key"].to_pylist()):
        if m:  # a schedule's batch runs whole on one replica, as in search(): the same bytes
            assert got.images[g].tobytes() == local.images[w].tobytes()


def test_progress_counts_every_pool_and_schedule_run_once():
    """progress(done, total) starts at 0, rises to total (items x (pool groups + schedules))
    and never goes down; a non-callable is refused by name; progress_lines prints lines."""
    import io

    from vardist.study import progress_lines

    study = Study("toy-digits", sweep={"search": ["beam:2@1,1@2", None],
                                       "strategy": ["none", "var-scaling"]}, **DIGITS)
    calls: list[tuple[int, int]] = []
    study.run(progress=lambda done, total: calls.append((done, total)))
    groups = len(study.pool_groups())
    schedules = sum(s.multiscale for s in study.settings)
    total = len(study.items) * (groups + schedules)
    assert schedules >= 1 and groups >= 1
    assert calls[0] == (0, total) and calls[-1] == (total, total)
    assert all(b[0] >= a[0] for a, b in zip(calls, calls[1:]))
    assert {t for _, t in calls} == {total}
    with pytest.raises(InputError) as e:
        study.run(progress="yes")
    assert e.value.param == "progress"
    buf = io.StringIO()
    report = progress_lines("s", every=3600, stream=buf)
    for done in range(5):
        report(done, 4)
    assert buf.getvalue().splitlines()[0].startswith("s: 0/4 (0%)")
    assert buf.getvalue().splitlines()[-1].startswith("s: 4/4 (100%)")
