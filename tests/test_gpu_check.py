"""benchmarks/gpu_check.py in its CPU smoke mode (--device cpu --tiny), so the GPU check never
rots: every section runs, every row has its figures, the torch KDE kernel agrees with the grouped
one, and the analytic FLOP count agrees with docs/infinity.md's hand count for Infinity-2B."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = mod  # its dataclasses look their module up
    spec.loader.exec_module(mod)
    yield mod
    del sys.modules["gpu_check"]


def test_cpu_smoke_mode_runs_every_section(gpu_check, tmp_path, capsys):
    out = tmp_path / "check.json"
    # Ray is left out to keep this fast; tests/test_determinism_engines.py covers local vs Ray
    assert gpu_check.main(["--device", "cpu", "--tiny", "--no-ray", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    doc = json.loads(out.read_text())
    rows = doc["rows"]
    assert doc["environment"]["device"] == "cpu"
    assert not [r for r in rows if "failed" in r["note"] or "skipped" in r["note"]], rows
    models = [r for r in rows if r["section"] == "models"]
    # two families x plain/search x batches 1 and max
    assert len(models) == 8
    for r in models:
        assert r["unit"] == "img/s" and r["value"] > 0 and r["plan_gb"] > 0
        assert r["extra"]["flops_per_image"] > 0
        assert r["name"] in printed
    assert {r["batch"] for r in models} == {1, 2}
    autocast = [r for r in rows if r["section"] == "autocast"]
    assert [r["name"] for r in autocast] == ["var-tiny-d2 plain off", "var-tiny-d2 plain fp16"]
    assert autocast[1]["extra"]["same_tokens_per_scale"] == [1.0] * 4  # a no-op on the CPU
    kde = {r["name"]: r for r in rows if r["section"] == "kde"}
    assert kde["grouped CPU n=200"]["value"] > 0
    assert kde["torch cpu n=200"]["extra"]["max_rel_diff"] < 1e-9
    engines = [r for r in rows if r["section"] == "engines"]
    assert engines[0]["extra"]["images"] == 4 and engines[0]["value"] > 0
    assert engines[0]["extra"]["numerics"]["device"] == "cpu"


def test_a_failing_row_is_recorded_and_the_check_goes_on(gpu_check, tmp_path, monkeypatch):
    calls = []

    def boom(*args, **kwargs):
        calls.append(1)
        raise RuntimeError("CUDA out of memory. Tried to allocate 2 GiB")

    monkeypatch.setattr(gpu_check, "time_rows", boom)
    out = tmp_path / "check.json"
    assert gpu_check.main(["--device", "cpu", "--tiny", "--sections", "models", "--models",
                           "var-tiny-d2", "--batches", "max", "--oom-retries", "1",
                           "--max-batch", "4", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 2  # plain and search, each retried once at 3/4 the batch, then failed
    assert len(calls) == 4
    for r in rows:
        assert r["batch"] == 3 and "OOM at 4" in r["note"] and "failed: RuntimeError" in r["note"]


def test_infinity_2b_flops_agree_with_the_hand_count(gpu_check):
    # docs/infinity.md counts ~126 TFLOP per image (all 2.149e9 block parameters as linears);
    # the per-token count leaves out AdaLN and the text K/V, so it is a little lower.
    from vardist.models.infinity.bsq_vae import BSQVAE
    from vardist.models.infinity.generator import InfinityGenerator
    from vardist.models.infinity.schedules import full_schedule, scale_schedule
    from vardist.models.infinity.specs import official_configs
    from vardist.models.infinity.transformer import Infinity

    icfg, vcfg = official_configs("infinity-2b")
    with torch.device("meta"):
        gen = InfinityGenerator(Infinity(icfg), BSQVAE(vcfg), scale_schedule(1.0, "1M"),
                                full_schedule(1.0)[-1], device="meta")
    W, C, depth = gpu_check.per_token_weights(gen)
    assert (C, depth) == (2048, 32) and 1.8e9 < W < 2.149e9
    flops = gpu_check.flops_per_image(gen, cfg=4.0, guidance_always=False, text=True)
    assert 100e12 < flops < 126e12
    assert gpu_check.flops_per_image(gen, cfg=1.0, guidance_always=False, text=True) == flops / 2


def test_no_gpu_is_a_clear_refusal(gpu_check, capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is here")
    assert gpu_check.main(["--device", "cuda", "--json", "/nonexistent/x.json"]) == 2
    assert "--device cpu --tiny" in capsys.readouterr().err
