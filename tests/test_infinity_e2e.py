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
