"""The local engine and vardist.search on a genuine tiny scale-wise model (tests/scalewise_double):
determinism, plain-sampling equivalence, resume after a kill, the run log, the layouts, and
every bad input refused before a model loads."""

import json
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

import vardist
from scalewise_double import CLASSES, DoubleModel, register_doubles
from vardist.api import plan_search
from vardist.engine import pipeline
from vardist.engine.plan import canonical_batches, item_seed, plan_items
from vardist.io import outputs
from vardist.io.conditions import InputError
from vardist.io.runlog import ROW_SCHEMA, ResumeMismatch

SEARCH = dict(classes="0-4", samples=3, n=24, strategy="var-scaling", alpha=1.2, rep=3)


@pytest.fixture
def built(monkeypatch):
    return register_doubles(monkeypatch)


def pngs(out):
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*.png"))}


def test_item_seeds_depend_only_on_run_seed_condition_and_sample():
    a = plan_items([(2, 2), (7, 7)], 3, run_seed=5)
    b = plan_items([(7, 7)], 3, run_seed=5)
    assert [it.seed for it in a[3:]] == [it.seed for it in b]
    assert len({it.seed for it in a}) == 6
    assert item_seed(5, 7, 0) != item_seed(6, 7, 0)
    batches = canonical_batches(a, 4)
    assert [[it.index for it in bt] for bt in batches] == [[0, 1, 2, 3], [4, 5]]
    with pytest.raises(InputError, match="batch_size must be >= 1"):
        canonical_batches(a, 0)


def test_strategy_none_is_plain_generation():
    m = DoubleModel()
    res = vardist.search(m, classes="0-2", samples=2, strategy="none", batch_size=4)
    plain = m.generate_images([r.item.condition for r in res], [r.item.seed for r in res],
                              vardist.models.Sampling(cfg=1.0))
    assert np.array_equal(np.stack(res.images), plain.numpy())
    assert m.calls["draw_pool"] == 2  # 6 items in batches of 4, pools of one candidate


def test_same_seed_same_bytes_and_token_maps_independent_of_batch_size(tmp_path):
    m = DoubleModel()
    vardist.search(m, **SEARCH, batch_size=4, out=tmp_path / "a")
    vardist.search(m, **SEARCH, batch_size=4, out=tmp_path / "b")
    assert pngs(tmp_path / "a") == pngs(tmp_path / "b") and len(pngs(tmp_path / "a")) == 15
    r1 = vardist.search(m, **SEARCH, batch_size=4)
    r7 = vardist.search(m, **SEARCH, batch_size=7)
    r1b = vardist.search(m, **SEARCH, batch_size=1)
    for x, y, z in zip(r1, r7, r1b):
        assert x.chosen == y.chosen == z.chosen
        for mx, my, mz in zip(x.maps, y.maps, z.maps):
            assert np.array_equal(mx, my) and np.array_equal(mx, mz)
    assert len({r.chosen for r in r1}) > 1  # the search does choose, not always candidate 0
    other = vardist.search(m, **{**SEARCH, "classes": "3"}, batch_size=4)  # seed by identity
    assert all(np.array_equal(a.maps[-1], b.maps[-1]) for a, b in zip(other, r1[9:12]))


def test_local_continuation_equals_teacher_forced_resume():
    m = DoubleModel()
    job, _ = plan_search(m, **SEARCH)
    batch = job.batches()[0]
    pool = pipeline.prefix_and_pool(m, batch, job.settings, keep_state=True)
    choices = pipeline.select_batch(pool.codes, pipeline.embedder(m), pool.seeds, job.settings)
    chosen = pipeline.chosen_codes(pool.codes, choices)
    a, maps_a = pipeline.continue_batch(m, batch, job.settings, pool.prefix, chosen, pool.state)
    b, maps_b = pipeline.continue_batch(m, batch, job.settings, pool.prefix, chosen)
    assert np.array_equal(a, b) and all(np.array_equal(x, y) for x, y in zip(maps_a, maps_b))
    assert m.calls["resume"] == 1 and m.calls["advance"] == 1
    assert pool.codes.shape == (len(batch), 24, 4) and pool.codes.dtype == np.int64


def test_pooled_bandwidth_over_one_item_is_the_item_bandwidth():
    m = DoubleModel()
    job, _ = plan_search(m, **SEARCH, batch_size=1)
    pool = pipeline.prefix_and_pool(m, job.batches()[0], job.settings)
    from dataclasses import replace
    item = pipeline.select_batch(pool.codes, pipeline.embedder(m), pool.seeds, job.settings,
                                 keep_density=True)[0]
    pooled = pipeline.select_batch(pool.codes, pipeline.embedder(m), pool.seeds,
                                   replace(job.settings, bandwidth="batch"), keep_density=True)[0]
    np.testing.assert_allclose(item.density, pooled.density, rtol=1e-9)
    assert item.index == pooled.index


def test_resume_after_kill_writes_exactly_the_uninterrupted_images(tmp_path, monkeypatch):
    m = DoubleModel()
    vardist.search(m, **SEARCH, batch_size=4, out=tmp_path / "full")
    real_save = outputs.save_png
    calls = []

    def dying_save(path, image):  # the process "dies" while writing the 6th image (batch 1)
        calls.append(path)
        if len(calls) == 6:
            raise KeyboardInterrupt
        real_save(path, image)
    monkeypatch.setattr(outputs, "save_png", dying_save)
    with pytest.raises(KeyboardInterrupt):
        vardist.search(m, **SEARCH, batch_size=4, out=tmp_path / "cut")
    monkeypatch.setattr(outputs, "save_png", real_save)
    assert len(pngs(tmp_path / "cut")) == 5
    m2 = DoubleModel()
    res = vardist.search(m2, **SEARCH, batch_size=4, out=tmp_path / "cut")
    assert pngs(tmp_path / "cut") == pngs(tmp_path / "full")
    assert m2.calls["draw_pool"] == 3        # batch 0 was finished and skipped; 1..3 computed
    assert [r.resumed for r in res] == [True] * 4 + [False] * 11
    assert pq.read_table(tmp_path / "cut" / "runlog.parquet").num_rows == 15
    again = DoubleModel()
    vardist.search(again, **SEARCH, batch_size=4, out=tmp_path / "cut")
    assert again.calls["draw_pool"] == 0


def test_deleted_image_is_redone_in_its_batch(tmp_path):
    m = DoubleModel()
    out = tmp_path / "run"
    vardist.search(m, **SEARCH, batch_size=4, out=out)
    before = pngs(out)
    (out / "images/class_0002/0001.png").unlink()
    m2 = DoubleModel()
    vardist.search(m2, **SEARCH, batch_size=4, out=out)
    assert pngs(out) == before and m2.calls["draw_pool"] == 1


def test_rerun_with_other_settings_is_refused(tmp_path):
    m = DoubleModel()
    vardist.search(m, **SEARCH, out=tmp_path)
    with pytest.raises(ResumeMismatch, match="alpha: this folder has 1.2, this run asks for 2.0"):
        vardist.search(m, **{**SEARCH, "alpha": 2.0}, out=tmp_path)


def test_run_log_columns_and_candidate_table(tmp_path):
    m = DoubleModel()
    res = vardist.search(m, **SEARCH, batch_size=4, out=tmp_path, log_candidates=True)
    t = pq.read_table(tmp_path / "runlog.parquet")
    assert t.schema.names == ROW_SCHEMA.names and t.num_rows == 15
    rows = t.to_pylist()
    for r, row in zip(res, rows):
        assert (row["condition_index"], row["sample_index"], row["seed"]) == (
            r.item.condition_index, r.item.sample_index, r.item.seed)
        assert row["path"] == outputs.image_relpath("class", r.item.condition_index,
                                                    r.item.sample_index)
        assert 0 <= row["chosen"] < 24 and row["branch"] in ("high", "low")
        assert 1 <= row["shortlist_size"] <= 3
        assert row["density_mean"] <= row["density_max"] and row["density_chosen"] <= row["density_max"]
        assert (row["n"], row["alpha"], row["strategy"], row["model"]) == (
            24, 1.2, "var-scaling", "DoubleModel")
        assert min(row["t_pool"], row["t_select"], row["t_finish"], row["t_write"]) >= 0
    c = pq.read_table(tmp_path / "candidates.parquet").to_pylist()
    assert len(c) == 15 * 24
    chosen = [(x["condition_index"], x["sample_index"], x["candidate"]) for x in c if x["chosen"]]
    assert chosen == [(r["condition_index"], r["sample_index"], r["chosen"]) for r in rows]
    dens = {(x["condition_index"], x["sample_index"], x["candidate"]): x["density"] for x in c}
    assert all(dens[k] == r["density_chosen"] for k, r in zip(chosen, rows))
    doc = json.loads((tmp_path / "run.json").read_text())
    assert doc["config"]["settings"]["n"] == 24 and doc["config"]["images"] == 15


def test_prompt_layout_geneval(tmp_path):
    lines = ['{"tag": "color_attr", "prompt": "a red bench"}', '{"prompt": "a blue cow"}']
    f = tmp_path / "p.jsonl"
    f.write_text("\n".join(lines) + "\n")
    out = tmp_path / "run"
    m = DoubleModel("prompt")
    vardist.search(m, prompts=f, samples=4, n=8, out=out, grid=True, batch_size=3)
    for i, line in enumerate(lines):
        folder = out / f"{i:05d}"
        assert (folder / "metadata.jsonl").read_text() == line + "\n"
        assert sorted(p.name for p in (folder / "samples").iterdir()) == [
            f"{s:04d}.png" for s in range(4)]
        assert outputs.read_png(folder / "grid.png").shape == (16, 16, 3)  # 2x2 of 8x8


def test_images_in_memory_without_out():
    res = vardist.search(DoubleModel(), classes=[1, 2], samples=2, n=6)
    assert [r.path for r in res] == [None] * 4
    assert all(im.shape == (8, 8, 3) and im.dtype == np.uint8 for im in res.images)
    assert res.table().num_rows == 4


def test_registered_model_loads_with_spec_defaults(built, tmp_path):
    res = vardist.search("test-double", classes="all", samples=1, out=tmp_path)
    assert built == ["test-double"] and len(res) == CLASSES
    assert json.loads((tmp_path / "run.json").read_text())["config"]["settings"]["n"] == 20


@pytest.mark.parametrize("kwargs, err, needle", [
    (dict(model="no-such-model", classes="0"), ValueError, "unknown model 'no-such-model'"),
    (dict(classes="0-10"), InputError, "class 10 is outside this model's range 0..9"),
    (dict(classes="0", n=0), InputError, "n must be >= 1"),
    (dict(classes="0", n=2.5), InputError, "n must be an integer, got float 2.5"),
    (dict(classes="0", alpha=0.0), InputError, "alpha must be > 0"),
    (dict(classes="0", scale=4), InputError, "scale 4 is beyond this model's schedule of 4"),
    (dict(classes="0", strategy="best"), InputError, "unknown strategy 'best'"),
    (dict(classes="0", top_p=1.5), InputError, "top_p must be in [0, 1]"),
    (dict(classes="0", samples=0), InputError, "samples must be an integer >= 1"),
    (dict(classes="0", engine="spark"), InputError, "engine must be one of local, ray"),
    (dict(), InputError, "give exactly one of prompts"),
    (dict(model="test-double-text", classes="0"), InputError, "takes text prompts"),
    (dict(prompts="EMPTY"), InputError, "holds no prompts"),
    (dict(model="test-double-weights", classes="0"), FileNotFoundError,
     "needs the files double.safetensors"),
])
def test_bad_input_is_refused_before_any_model_loads(built, tmp_path, monkeypatch, kwargs, err,
                                                      needle):
    monkeypatch.delenv("VARDIST_WEIGHTS", raising=False)
    (tmp_path / "empty.jsonl").write_text("\n")
    kwargs = {"model": "test-double", **kwargs}
    if kwargs.get("prompts") == "EMPTY":
        kwargs.update(model="test-double-text", prompts=tmp_path / "empty.jsonl")
    with pytest.raises(err) as e:
        vardist.search(kwargs.pop("model"), **kwargs, out=tmp_path / "out")
    assert needle in str(e.value)
    assert built == []


def test_bad_prompt_line_and_unwritable_out_are_refused_before_loading(built, tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "ok"}\n{"text": "no prompt"}\n')
    with pytest.raises(InputError, match=r"p.jsonl:2: the object has no \"prompt\" key"):
        vardist.search("test-double-text", prompts=f, out=tmp_path / "o")
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(InputError, match="not writable") as e:
        vardist.search("test-double", classes="0", out=blocker / "sub")
    assert e.value.param == "out" and built == []


def test_missing_ray_engine_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "vardist.engine.ray", None)
    with pytest.raises(InputError, match="Ray engine .* is not available"):
        vardist.search(DoubleModel(), classes="0", n=4, engine="ray", out=tmp_path)


def test_engine_options_need_the_ray_engine():
    with pytest.raises(InputError, match="actors only apply to engine='ray'"):
        vardist.search(DoubleModel(), classes="0", n=4, actors=2)


def test_draws_are_nested_pools():
    """A bigger pool starts with the smaller one (candidate-major streams)."""
    m = DoubleModel()
    job, _ = plan_search(m, **SEARCH)
    small = pipeline.prefix_and_pool(m, job.batches()[0], job.settings).codes
    from dataclasses import replace
    big = pipeline.prefix_and_pool(m, job.batches()[0], replace(job.settings, n=50)).codes
    assert np.array_equal(big[:, :24], small)
    assert torch.equal(m.embed(torch.from_numpy(small))[0, 0, 0],
                       m.codebook[small[0, 0, 0]].float())


def test_progress_reports_images_done_including_earlier_ones(tmp_path):
    m = DoubleModel()
    seen = []
    vardist.search(m, **SEARCH, batch_size=4, out=tmp_path, progress=lambda d, t: seen.append((d, t)))
    assert seen == [(0, 15), (4, 15), (8, 15), (12, 15), (15, 15)]
    seen.clear()
    (tmp_path / "images/class_0004/0002.png").unlink()
    vardist.search(m, **SEARCH, batch_size=4, out=tmp_path, progress=lambda d, t: seen.append((d, t)))
    assert seen == [(14, 15), (15, 15)]


def test_models_loaded_by_name_carry_their_registry_defaults(monkeypatch):
    from vardist.models import registry

    def build(spec, files, device):
        m = DoubleModel()
        m.search_defaults = None  # a family that sets none
        return m
    spec = registry.ModelSpec("test-bare", "double", "", registry.SearchDefaults(scale=2, n=7),
                              builder=build)
    registry.specs()
    monkeypatch.setitem(registry._REGISTRY, spec.name, spec)
    m = registry.load("test-bare")
    assert m.search_defaults == spec.defaults
    res = vardist.search(m, classes="0", samples=1)
    assert res[0].chosen < 7


def test_toy_digits_choices_and_token_maps_do_not_depend_on_batch_size():
    from vardist.models import load

    m = load("toy-digits", device="cpu")
    runs = [vardist.search(m, classes="0-2", samples=2, n=60, batch_size=bs) for bs in (4, 6)]
    for a, b in zip(*runs):
        assert a.chosen == b.chosen and a.item == b.item
        assert all(np.array_equal(x, y) for x, y in zip(a.maps, b.maps))
    assert len({r.chosen for r in runs[0]}) > 1
