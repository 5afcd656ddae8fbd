"""benchmarks/search_scales.py's toy-shapes mode on 2 prompts, so the documented comparison
(docs/search.md, "Measured on toy-shapes") never rots: every row is there with its compute, the
intervals hold their scores, and best-of-N picks what the verifier prefers."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("search_scales",
                                                  ROOT / "benchmarks" / "search_scales.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["search_scales"] = mod
    spec.loader.exec_module(mod)
    yield mod
    del sys.modules["search_scales"]


def test_best_of_n_takes_the_first_highest_reward_of_its_samples(bench):
    # 2 prompts, samples 2, N_max 3: image s of a prompt reads columns s, s + 2, s + 4
    rewards = np.array([[0, 0, 1, 0, 1, 1],
                        [0, 1, 0, 0, 0, 0]], float)
    assert bench.best_of_n(rewards, 2, 1).tolist() == [[0, 1], [0, 1]]
    assert bench.best_of_n(rewards, 2, 2).tolist() == [[2, 1], [0, 1]]
    assert bench.best_of_n(rewards, 2, 3).tolist() == [[2, 5], [0, 1]]


def test_tts_var_row_at_p0_8_is_the_preset_on_toy_shapes(bench):
    from vardist.engine.schedule import parse_search
    from vardist.models import registry

    scales = registry.load("toy-shapes", device="cpu").num_scales
    assert bench.tts_var_shape(8) == str(parse_search("tts-var", scales))


def test_toy_shapes_mode_on_two_prompts(bench, tmp_path):
    plot = tmp_path / "plot.png"
    out = bench.main(["--model", "toy-shapes", "--per-tag", "1", "--limit", "2",
                      "--bootstrap", "50", "--plot", str(plot), "--docs", str(tmp_path)])
    entries, table = out["entries"], out["table"]
    assert [(e["search"], e["budget"]) for e in entries] == \
        [(f, b) for f, b, _ in bench.SHAPES_ROWS]
    assert (tmp_path / "search_scales_toy_shapes.md").read_text() == table
    assert plot.stat().st_size > 0
    for f, b, _ in bench.SHAPES_ROWS:
        assert f"| {f} | {b} |" in table
    plain = entries[0]
    assert plain["forward_tokens"] == 1 + 4 + 16 + 36 + 64 and plain["vs_plain"] == 0
    for e in entries:
        assert len(e["scores"].results) == 2
        lo, hi = e["overall_ci"]
        assert 0 <= lo <= e["overall"] <= hi <= 1
        assert e["overall"] == pytest.approx(np.mean(list(e["tags"].values())))
    by = {(e["search"], e["budget"]): e for e in entries}
    # beam logs its previews (one per candidate at each searched scale) and verifier calls
    beam = by[("beam @2,@4", "B=4")]
    assert beam["previews"] == 16 and beam["verifier_calls"] == 17
    assert beam["forward_tokens"] > plain["forward_tokens"]
    # toy-geneval is the evaluator: best-of-N over nested sample sets never loses an image
    best = [by[("best-of-N", f"N={n}")] for n in (2, 8, 32)]
    assert [e["verifier_calls"] for e in best] == [2, 8, 32]
    for small, large in zip(best, best[1:]):
        assert all(a.correct <= b.correct for a, b in zip(small["scores"].results,
                                                          large["scores"].results))
    assert "Caveat: the toy-geneval verifier is the evaluator itself" in table
