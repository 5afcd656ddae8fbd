"""vardist.models.memory: the plan made before loading agrees with the tensors a loaded model
really holds (CPU build: parameter bytes, KV cache, pool), the registry's full-size models get a
plan from their specs alone, and a batch that cannot fit is refused naming what fits."""

from __future__ import annotations

import re

import pytest
import torch
from typer.testing import CliRunner

from vardist.models import memory, registry
from vardist.models.interface import Sampling


def _tensor_bytes(module: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))


@pytest.fixture(scope="module")
def toy():
    return registry.load("toy-digits", device="cpu")


def test_weights_match_the_loaded_toy_model(toy):
    fp = memory.footprint("toy-digits")
    plan = memory.estimate(fp, batch=1, n=1, scale=0, device="cpu")
    measured = _tensor_bytes(toy.var) + _tensor_bytes(toy.vae)
    assert plan.weights == measured


def test_kv_cache_and_pool_match_measured_tensors(toy):
    fp = memory.footprint("toy-digits")
    B, n, k = 3, 40, 1
    state = toy.start([0, 1, 2], [5, 6, 7], Sampling(cfg=1.5, top_k=64, top_p=0.96))
    toy.run_scales(state, k)
    pool = toy.draw_pool(state, n)
    toy.run_scales(state, toy.num_scales)  # the whole schedule cached: the largest KV cache
    kv = state.cache.kv
    measured_kv = sum(t.numel() * t.element_size() for t in (*kv.k, *kv.v))
    plan = memory.estimate(fp, batch=B, n=n, scale=k, cfg=1.5, device="cpu")
    assert plan.kv_cache == measured_kv
    # the pool estimate covers the candidates drawn (ids) with the sampling transients on top
    assert pool.numel() * pool.element_size() <= plan.pool <= 4 * pool.numel() * pool.element_size() + 10**6


def test_infinity_plan_from_the_fixture_configs_matches_the_loaded_model():
    try:
        model = registry.load("infinity-tiny", device="cpu")
    except FileNotFoundError as e:
        pytest.skip(str(e))
    fp = memory.footprint_from_configs((model.transformer.cfg, model.vae.cfg),
                                       num_scales=model.num_scales)
    plan = memory.estimate(fp, batch=1, n=1, scale=0, device="cpu")
    assert plan.weights == _tensor_bytes(model.transformer) + _tensor_bytes(model.vae)
    # on a GPU the blocks are bf16: half their fp32 bytes
    chunks = model.transformer.block_chunks
    blocks = sum(t.numel() for t in (*chunks.parameters(), *chunks.buffers())
                 if t.is_floating_point())
    cuda = memory.estimate(fp, batch=1, n=1, scale=0, device="cuda")
    assert plan.weights - cuda.weights == 2 * blocks


@pytest.mark.parametrize("name", ["var-d16", "var-d30", "flexvar-d24", "infinity-2b", "infinity-8b"])
def test_full_size_models_plan_from_specs_alone(name):
    fp = memory.footprint(name)
    assert fp is not None and memory.wants_gpu(fp)
    d = registry.get_spec(name).defaults
    one, two = (memory.estimate(fp, batch=b, n=d.n, scale=d.scale, cfg=d.cfg) for b in (1, 2))
    assert two.total > one.total > fp.params  # weights of at least one byte each
    assert two.kv_cache == 2 * one.kv_cache   # the KV cache is per item


def test_infinity_2b_agrees_with_the_documented_budget():
    # docs/infinity.md: 2,148,860,416 parameters in the blocks (stored bf16), 5.5 GB of bf16 KV
    # cache per image with CFG; 2 images fit 24 GB, 12 fit 80 GB.
    fp = memory.footprint("infinity-2b")
    parts = {name: (numbers, cuda) for name, numbers, cuda, _ in fp.weights}
    assert parts["blocks"] == (2_148_860_416, 2 * 2_148_860_416)
    plan = memory.estimate(fp, batch=1, n=3000, scale=3, cfg=4.0)
    assert 5.4e9 < plan.kv_cache < 5.6e9
    assert memory.largest_batch(fp, 24 * memory.GB, n=3000, scale=3, cfg=4.0) == 2
    assert memory.largest_batch(fp, 80 * memory.GB, n=3000, scale=3, cfg=4.0) == 12


def test_a_batch_that_cannot_fit_is_refused_with_what_fits():
    fp = memory.footprint("infinity-2b")
    with pytest.raises(memory.MemoryPlanError) as e:
        memory.check_fits(fp, 24 * memory.GB, batch=8, n=3000, scale=3, cfg=4.0,
                          model="infinity-2b", where="cuda:0")
    msg = str(e.value)
    assert "infinity-2b" in msg and "batch 8" in msg and "cuda:0" in msg
    assert "--batch-size 2" in msg
    with pytest.raises(memory.MemoryPlanError, match="does not fit even at batch 1"):
        memory.check_fits(memory.footprint("infinity-8b"), 24 * memory.GB, batch=1, n=3000,
                          scale=3, cfg=4.0, model="infinity-8b")
    assert memory.check_fits(fp, 80 * memory.GB, batch=8, n=3000, scale=3, cfg=4.0).total \
        < 80 * memory.GB


def test_small_models_stay_on_the_cpu():
    assert not memory.wants_gpu(memory.footprint("toy-digits"))
    assert not memory.wants_gpu(None)


def test_models_memory_table_fits_80_columns():
    from vardist_cli.main import app

    r = CliRunner().invoke(app, ["models", "--memory"], env={"COLUMNS": "80"}, terminal_width=80)
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert max(len(line) for line in lines) <= 80
    for name in registry.specs():  # every model has a row, its name whole
        assert any(re.match(rf"\s*{re.escape(name)}\s", line) for line in lines), name
    row = next(line for line in lines if re.match(r"\s*infinity-2b\s", line)).split()
    ((_, weights, per_item, fits),) = memory.table_rows(["infinity-2b"])
    assert row == ["infinity-2b", weights, per_item, *fits]


def test_text_encoder_kept_off_the_gpu_leaves_the_plan():
    fp = memory.footprint("infinity-2b")
    off = memory.with_text_device(fp, "cpu")
    assert memory.with_text_device(fp, "offload") == off
    assert memory.with_text_device(fp, None) is fp
    one = dict(batch=1, n=3000, scale=3, cfg=4.0)
    assert memory.estimate(fp, **one).weights - memory.estimate(off, **one).weights \
        == 2 * memory.FLAN_T5_XL.params  # fp16 on a GPU
    assert memory.estimate(off, **one).kv_cache == memory.estimate(fp, **one).kv_cache
    with pytest.raises(ValueError, match="text_device"):
        memory.with_text_device(fp, "disk")
    from vardist import engine  # the CLI's copy of the closed set
    assert engine.TEXT_DEVICES == memory.TEXT_DEVICES


@pytest.fixture()
def a_24gb_gpu(monkeypatch):
    from vardist import api

    monkeypatch.setattr(api, "_local_gpu", lambda device: (24 * memory.GB, "GPU Test24 (cuda:0)"))


def test_a_local_batch_the_gpu_cannot_hold_is_refused_before_loading(a_24gb_gpu, tmp_path):
    from vardist.api import plan_search
    from vardist.io.conditions import InputError

    with pytest.raises(InputError) as e:
        plan_search("infinity-2b", prompts=["a cat"], batch_size=8, weights=tmp_path)
    assert e.value.param == "batch_size"
    assert "GPU Test24 (cuda:0)" in str(e.value) and "--batch-size 2" in str(e.value)
    # batch 2 fits: the run gets past the plan and stops at the missing weights
    with pytest.raises(FileNotFoundError):
        plan_search("infinity-2b", prompts=["a cat"], batch_size=2, weights=tmp_path)
    # strategy none draws one candidate: the plan counts the pool it really draws
    big = memory.largest_batch(memory.footprint("infinity-2b"), 24 * memory.GB, n=1, scale=3,
                               cfg=4.0)
    with pytest.raises(FileNotFoundError):
        plan_search("infinity-2b", prompts=["a cat"], batch_size=big, strategy="none",
                    weights=tmp_path)
    # models without a plan (the toys) and the CPU are never refused by it
    job, _ = plan_search("toy-digits", classes="1", batch_size=512)
    assert job.batch_size == 512


def test_text_device_is_a_load_option_of_infinity_models(tmp_path):
    from vardist.api import plan_search
    from vardist.io.conditions import InputError

    with pytest.raises(InputError, match="toy-digits has no text_device option") as e:
        plan_search("toy-digits", classes="1", text_device="cpu")
    assert e.value.param == "text_device"
    with pytest.raises(InputError, match="text_device must be one of cpu, offload, got 'gpu'"):
        plan_search("infinity-2b", prompts=["a"], text_device="gpu")
    try:
        job, config = plan_search("infinity-tiny", prompts=["a"], text_device="offload")
    except FileNotFoundError as e:  # the fixture folder is absent here
        pytest.skip(str(e))
    assert job.model_options == {"text_device": "offload"}
    assert config["model_options"] == {"text_device": "offload"}  # in run.json: a resume keeps it


def test_cli_text_device_on_a_model_without_one_is_refused(tmp_path):
    from vardist_cli.main import app

    out = tmp_path / "run"
    r = CliRunner().invoke(app, ["search", "--model", "toy-digits", "--classes", "1",
                                 "--text-device", "cpu", "--out", str(out)],
                           env={"COLUMNS": "200"}, terminal_width=200)
    assert r.exit_code == 2
    assert "--text-device" in r.output and "toy-digits has no text_device option" in r.output
    assert not out.exists()


def test_population_check_plans_flexvar_on_its_own_schedule(monkeypatch):
    """A FlexVAR schedule longer or larger than the default: the population check plans the
    run's scales and output size (it used to plan the default's and fail on scale 10)."""
    from vardist.api import plan_search
    from vardist.models import memory

    fp = memory.footprint("flexvar-d16")
    big = memory.with_schedule(fp, [1, 2, 4, 8, 16, 32])
    assert big.tokens == (1, 4, 16, 64, 256, 1024)
    assert big.image_hw == (2 * fp.image_hw[0], 2 * fp.image_hw[1])
    assert big.latent_values == 4 * fp.latent_values
    assert memory.with_schedule(fp, [int(t ** 0.5) for t in fp.tokens]) == fp
    monkeypatch.delenv("VARDIST_WEIGHTS", raising=False)
    # past the memory checks: what stops it is the missing weights, not a bare ValueError
    with pytest.raises(FileNotFoundError, match="FlexVAE.pth"):
        plan_search("flexvar-d16", classes=[0], n=8, device="cpu",
                    schedule=[1, 2, 3, 4, 5, 6, 8, 10, 13, 16, 20, 24],
                    search="density:2@10,1@11")


def test_gpu_plan_reads_flexvar_on_its_own_schedule(a_24gb_gpu, tmp_path):
    """The GPU plan and the population check share the run's footprint: a FlexVAR schedule
    beyond the default's 10 scales is planned as that schedule (it used to end in a bare
    ValueError on scale 10 of the default's), and a pool too big for it is refused by name."""
    from vardist.api import plan_search
    from vardist.io.conditions import InputError

    long = [1, 2, 3, 4, 5, 6, 8, 10, 13, 16, 20, 24]
    with pytest.raises(FileNotFoundError, match="FlexVAE.pth"):
        plan_search("flexvar-d16", classes=[0], n=8, scale=10, schedule=long, weights=tmp_path)
    with pytest.raises(InputError) as e:
        plan_search("flexvar-d16", classes=[0], n=3000, scale=11, schedule=long,
                    batch_size=64, weights=tmp_path)
    assert e.value.param == "batch_size" and "GPU Test24 (cuda:0)" in str(e.value)
