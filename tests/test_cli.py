"""`vardist search / models / pack`: options reach the API, bad input names its option, outputs."""

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from scalewise_double import register_doubles
from vardist_cli.main import app

runner = CliRunner()


def flat(output: str) -> str:
    """CLI output without rich's box drawing and line wrapping."""
    return " ".join(output.translate({ord(c): " " for c in "│╭╮╰╯─"}).split())


@pytest.fixture
def built(monkeypatch):
    monkeypatch.delenv("VARDIST_WEIGHTS", raising=False)
    return register_doubles(monkeypatch)


def test_search_writes_class_layout_and_resumes(built, tmp_path):
    out = tmp_path / "digits"
    args = ["search", "--model", "test-double", "--classes", "0-2", "--per-class", "2",
            "--n", "12", "--alpha", "1.2", "--batch-size", "4", "--out", str(out)]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "6 images written, 0 already there" in r.output
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == [
        f"images/class_{c:04d}/{i:04d}.png" for c in range(3) for i in range(2)]
    row = pq.read_table(out / "runlog.parquet").to_pylist()[0]
    assert (row["n"], row["alpha"], row["batch_size"]) == (12, 1.2, 4)
    r = runner.invoke(app, args)
    assert r.exit_code == 0 and "0 images written, 6 already there" in r.output
    r = runner.invoke(app, args[:-2] + ["--seed", "1", "--out", str(out)])
    assert r.exit_code == 2 and "seed: this folder has 0, this run asks for 1" in flat(r.output)
    r = runner.invoke(app, ["pack", str(out)])
    assert r.exit_code == 0, r.output
    arr = np.load(tmp_path / "digits.npz")["arr_0"]
    assert arr.shape == (6, 8, 8, 3) and arr.dtype == np.uint8


def test_search_prompts_geneval_layout(built, tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "a photo of a cow"}\n')
    r = runner.invoke(app, ["search", "--model", "test-double-text", "--prompts", str(f),
                            "--n", "5", "--out", str(tmp_path / "g"), "--quiet"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "g/00000/metadata.jsonl").read_text() == '{"prompt": "a photo of a cow"}\n'
    assert len(list((tmp_path / "g/00000/samples").glob("*.png"))) == 4


@pytest.mark.parametrize("extra, needle", [
    (["--classes", "0-12"], "'--classes': class 10 is outside"),
    (["--classes", "0", "--alpha", "0"], "'--alpha': alpha must be > 0"),
    (["--classes", "0", "--scale", "9"], "'--scale': scale 9 is beyond"),
    (["--classes", "0", "--n", "0"], "'--n'"),
    (["--classes", "0", "--strategy", "best"], "'best' is not one of 'var-scaling'"),
    (["--model", "nope", "--classes", "0"], "unknown model 'nope'"),
    (["--model", "test-double-weights", "--classes", "0"], "'--weights'"),
    (["--model", "test-double-text", "--prompts", "MISSING"], "'--prompts'"),
])
def test_bad_options_are_named_and_nothing_loads(built, tmp_path, extra, needle):
    extra = [str(tmp_path / "none.jsonl") if a == "MISSING" else a for a in extra]
    args = ["search", "--model", "test-double", *extra, "--out", str(tmp_path / "o"), "--quiet"]
    # --model given twice: the last one wins, as in any click app
    r = runner.invoke(app, args)
    assert r.exit_code == 2, r.output
    assert needle in flat(r.output), r.output
    assert built == []


def test_models_table_lists_registry_with_weights_status(built, tmp_path):
    r = runner.invoke(app, ["models"], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    line = next(x for x in r.output.splitlines() if "test-double-weights" in x)
    assert "missing" in line and "double" in line
    (tmp_path / "double.safetensors").write_bytes(b"")
    r = runner.invoke(app, ["models", "--weights", str(tmp_path)], env={"COLUMNS": "200"})
    line = next(x for x in r.output.splitlines() if "test-double-weights" in x)
    assert "found" in line


def test_pack_refuses_a_folder_without_images(tmp_path):
    r = runner.invoke(app, ["pack", str(tmp_path)])
    assert r.exit_code == 2 and "no class-layout images" in flat(r.output)


def test_every_api_option_has_a_cli_option_with_help():
    import inspect

    import typer.main

    from vardist.api import search

    api = set(inspect.signature(search).parameters) - {"model", "progress", "engine_options"}
    cmd = typer.main.get_command(app).commands["search"]
    cli = {p.name: p for p in cmd.params}
    assert api <= set(cli), api - set(cli)
    assert all(cli[name].help for name in api)


def test_toy_digits_end_to_end(tmp_path):
    """The README's main job on the shipped model: search, layout, log, resume, pack."""
    out = tmp_path / "digits"
    args = ["search", "--model", "toy-digits", "--classes", "0-9", "--per-class", "2",
            "--n", "100", "--out", str(out)]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "20 images written" in r.output
    rows = pq.read_table(out / "runlog.parquet").to_pylist()
    assert len(rows) == 20 and {r["n"] for r in rows} == {100}
    assert all(r["branch"] in ("high", "low") and 0 <= r["chosen"] < 100 for r in rows)
    r = runner.invoke(app, args)
    assert r.exit_code == 0 and "0 images written, 20 already there" in r.output
    assert runner.invoke(app, ["pack", str(out)]).exit_code == 0
    arr = np.load(tmp_path / "digits.npz")["arr_0"]
    assert arr.shape[0] == 20 and arr.shape[3] == 3 and arr.dtype == np.uint8
    assert len({a.tobytes() for a in arr}) == 20  # twenty different pictures


def test_train_command_runs_the_zoo_trainer(tmp_path):
    from typer.testing import CliRunner as Runner

    from vardist_cli.main import app as cli_app

    r = Runner().invoke(cli_app, ["train", "toy-digits", "--out", str(tmp_path / "z"),
                                  "--stages", "judge", "--judge-steps", "2", "--batch", "8"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "z" / "judge.safetensors").is_file()
    assert '"stage": "done"' in (tmp_path / "z" / "train_log.jsonl").read_text()
    bad = Runner().invoke(cli_app, ["train", "var-d16", "--out", str(tmp_path / "y")])
    assert bad.exit_code != 0 and "unknown zoo model 'var-d16'" in bad.output
