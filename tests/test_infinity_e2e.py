"""End to end without real weights: `vardist search --model infinity-tiny` on GenEval prompts on
the CPU, searching scale 3 with n = 3000 (the paper's Infinity setting), GenEval layout out."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

pytest.importorskip("transformers")
from typer.testing import CliRunner  # noqa: E402

from vardist_cli.main import app  # noqa: E402


@pytest.mark.slow
def test_cli_search_infinity_tiny_geneval(fixtures_dir, tmp_path):
    lines = (fixtures_dir.parent / "data" / "geneval.jsonl").read_text().splitlines()[:2]
    prompts = tmp_path / "geneval.jsonl"
    prompts.write_text("\n".join(lines) + "\n")
    out = tmp_path / "run"
    r = CliRunner().invoke(app, ["search", "--model", "infinity-tiny", "--prompts", str(prompts),
                                 "--samples", "1", "--out", str(out), "--device", "cpu", "--quiet"])
    assert r.exit_code == 0, r.output
    for i, line in enumerate(lines):
        folder = out / f"{i:05d}"
        assert json.loads((folder / "metadata.jsonl").read_text()) == json.loads(line)
        img = np.asarray(Image.open(folder / "samples" / "0000.png"))
        assert img.shape == (256, 256, 3) and img.dtype == np.uint8 and img.std() > 0
    log = pq.read_table(out / "runlog.parquet").to_pylist()
    assert len(log) == 2
    for row in log:  # the model's search defaults: scale 3, n 3000, the released `infinity` rule
        assert (row["scale"], row["n"], row["strategy"], row["cfg"], row["top_p"]) == (3, 3000, "infinity", 4.0, 0.97)
        assert 0 <= row["chosen"] < 3000 and row["shortlist_size"] == 100


@pytest.mark.slow
def test_cli_search_infinity_8b_tiny_geneval(fixtures_dir, tmp_path):
    """The 8B path (56-bit tokens, 14-bit VAE, weights from the fixture's sharded folder) through
    the CLI with its registry defaults: scale 3 (the 6x6 token map), n 3000, the infinity rule."""
    line = (fixtures_dir.parent / "data" / "geneval.jsonl").read_text().splitlines()[0]
    prompts = tmp_path / "geneval.jsonl"
    prompts.write_text(line + "\n")
    out = tmp_path / "run"
    r = CliRunner().invoke(app, ["search", "--model", "infinity-8b-tiny", "--prompts", str(prompts),
                                 "--samples", "1", "--out", str(out), "--device", "cpu", "--quiet"])
    assert r.exit_code == 0, r.output
    assert json.loads((out / "00000" / "metadata.jsonl").read_text()) == json.loads(line)
    img = np.asarray(Image.open(out / "00000" / "samples" / "0000.png"))
    assert img.shape == (256, 256, 3) and img.std() > 0
    (row,) = pq.read_table(out / "runlog.parquet").to_pylist()
    assert (row["model"], row["scale"], row["n"], row["strategy"], row["cfg"]) == \
        ("infinity-8b-tiny", 3, 3000, "infinity", 4.0)
    assert 0 <= row["chosen"] < 3000 and row["shortlist_size"] == 100


def test_python_search_infinity_8b_tiny_measures_56_bit_tokens():
    """vardist.search in memory on the 8B path: every scale's map holds 56 bits per token (token
    layout), the pick lies in the pool, and the image decodes from the returned maps."""
    import torch

    import vardist
    from vardist.models import load
    from vardist.models.infinity.generator import to_uint8

    res = vardist.search("infinity-8b-tiny", prompts=["a red cube"], samples=2, n=400, seed=3, device="cpu")
    model = load("infinity-8b-tiny", device="cpu")
    for rec in res:
        maps = rec.maps
        assert len(maps) == model.num_scales
        assert [np.asarray(m).shape for m in maps] == [(h * w, 56) for h, w in model.schedule]
        assert set(np.unique(maps[3])) <= {0, 1}
        assert rec.density_chosen <= rec.density_max and 0 <= rec.chosen < 400
        tokens = [torch.as_tensor(np.asarray(m))[None] for m in maps]
        # the VAE's convolutions round by batch size: one uint8 level at most (the fixture's bound)
        diff = np.abs(to_uint8(model.decode_bits(tokens))[0].numpy().astype(int) - rec.image.astype(int))
        assert diff.max() <= 1 and (diff > 0).mean() < 1e-3
