"""`vardist search --model flexvar-tiny`: the fixture model through the CLI and the local engine
with FlexVAR's paper defaults (scale 2, n 50, cfg 2.5, alpha 2.6)."""

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from vardist.models.interface import Sampling
from vardist_cli.main import app


def test_search_flexvar_tiny_end_to_end(fixtures_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("VARDIST_WEIGHTS", raising=False)
    folder, out = fixtures_dir / "flexvar-tiny", tmp_path / "flex"
    r = CliRunner().invoke(app, ["search", "--model", "flexvar-tiny", "--classes", "1,207,980",
                                 "--per-class", "1", "--n", "50", "--scale", "2",
                                 "--weights", str(folder), "--out", str(out), "--quiet"])
    assert r.exit_code == 0, r.output
    assert "3 images written" in r.output
    rows = pq.read_table(out / "runlog.parquet").to_pylist()
    assert len(rows) == 3
    for row in rows:
        assert (row["model"], row["scale"], row["n"], row["strategy"]) == ("flexvar-tiny", 2, 50, "var-scaling")
        assert (row["cfg"], row["alpha"], row["top_k"], row["top_p"]) == (2.5, 2.6, 900, 0.95)
        assert 0 <= row["chosen"] < 50 and row["density_max"] >= row["density_chosen"] > 0

    # The written image is FlexVAR's continuation of the chosen 3x3 candidate.
    from vardist.models import load

    row = rows[0]
    model = load("flexvar-tiny", folder, device="cpu")
    assert model.search_defaults.scale == 2 and model.search_defaults.cfg == 2.5
    state = model.start([int(row["condition"])], [row["seed"]], Sampling(cfg=2.5, top_k=900, top_p=0.95))
    model.run_scales(state, 2)
    pool = model.draw_pool(state, 50)
    model.advance(state, pool[:, row["chosen"]])
    want = model.finish(state)[0].numpy()
    got = np.asarray(Image.open(out / row["path"]).convert("RGB"))
    assert got.shape == (256, 256, 3)
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1   # batch-size rounding at most


def test_search_scale_indexes_into_the_chosen_schedule(fixtures_dir, monkeypatch):
    """A model object with another schedule: the paper defaults come with it, and --scale is
    checked against its own number of scales (planning only, nothing generated)."""
    from vardist.api import plan_search
    from vardist.io.conditions import InputError
    from vardist.models import load

    monkeypatch.delenv("VARDIST_WEIGHTS", raising=False)
    model = load("flexvar-tiny", fixtures_dir / "flexvar-tiny", device="cpu")
    steps13 = model.with_schedule((1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 14, 16))
    job, _ = plan_search(steps13, classes="1,2")
    assert (job.settings.scale, job.settings.n, job.settings.cfg) == (2, 50, 2.5)
    assert plan_search(steps13, classes="1", scale=12)[0].settings.scale == 12
    with pytest.raises(InputError, match="scale 12 is beyond this model's schedule of 10"):
        plan_search(model, classes="1", scale=12)


def test_cli_schedule_option_reaches_the_model(fixtures_dir, tmp_path, monkeypatch):
    """--schedule: checked before loading, part of the run's fingerprint, and the searched scale
    indexes into it (13 steps: scale 12 exists)."""
    from vardist.api import plan_search
    from vardist.io.conditions import InputError

    monkeypatch.delenv("VARDIST_WEIGHTS", raising=False)
    folder = fixtures_dir / "flexvar-tiny"
    steps13 = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 14, 16]
    job, config = plan_search("flexvar-tiny", classes="1", scale=12, schedule=steps13, weights=folder)
    assert job.model_options == {"schedule": steps13} and config["model_options"]["schedule"] == steps13
    assert job.fingerprint()["schedule"] == steps13
    with pytest.raises(InputError, match="only applies to FlexVAR"):
        plan_search("toy-digits", classes="1", schedule=[1, 2, 4])
    with pytest.raises(InputError, match="strictly increasing"):
        plan_search("flexvar-tiny", classes="1", schedule=[1, 3, 2], weights=folder)
    r = CliRunner().invoke(app, ["search", "--model", "flexvar-tiny", "--classes", "1",
                                 "--schedule", "1,2,x", "--out", str(tmp_path / "o")])
    assert r.exit_code != 0 and "--schedule" in r.output

    out = tmp_path / "short"
    r = CliRunner().invoke(app, ["search", "--model", "flexvar-tiny", "--classes", "3",
                                 "--per-class", "1", "--n", "8", "--scale", "1",
                                 "--schedule", "1,2,4,8", "--weights", str(folder),
                                 "--out", str(out), "--quiet"])
    assert r.exit_code == 0, r.output
    img = np.asarray(Image.open(out / pq.read_table(out / "runlog.parquet").to_pylist()[0]["path"]))
    assert img.shape[:2] == (128, 128)  # an 8x8 last scale decodes to 128 px
