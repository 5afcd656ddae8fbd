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
