"""Weights files never run code, and a broken one is named (issue 13 items 1 and 4).

Each hostile file, if it were unpickled the ordinary way, would create a marker file. None of
them may, whether read directly, through `vardist search --weights DIR` or in a Ray actor; each
is refused with a message naming the file. Broken files (empty, truncated, not torch, a
config.json that is not JSON) get a one-paragraph error naming the file, not a traceback.
"""

from __future__ import annotations

import argparse
import io
import os
import pickle
import pickletools
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from vardist.models.checkpoint import (CheckpointError, UnsafeCheckpoint, read_json_config,
                                       read_state_dict)
from vardist_cli.main import app

VAE = "vae_ch160v4096z32.pth"  # var-d16's tokenizer file, the one the hostile copies replace
LEGACY_MAGIC = 0x1950a86a20f9469cfc6c  # the first pickle of torch's legacy (pre-zip) format


class _Touch:
    """Unpickling this the ordinary way runs `touch MARKER`."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


class _TouchThenMagic:
    """Runs `touch MARKER` and evaluates to torch's legacy magic number, so that an ordinary
    legacy reader goes on to read the genuine checkpoint that follows it."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (eval, (f"__import__('os').system(\"touch '{self.marker}'\") or {LEGACY_MAGIC}",))


def _legacy_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf, _use_new_zipfile_serialization=False)
    return buf.getvalue()


def _stealth_bytes(marker: Path, state_dict) -> bytes:
    """A hostile first pickle, then a genuine legacy checkpoint minus its own magic pickle."""
    legacy = _legacy_bytes(state_dict)
    first_stop = next(pos for op, _, pos in pickletools.genops(io.BytesIO(legacy))
                      if op.name == "STOP")
    return pickle.dumps(_TouchThenMagic(marker), protocol=2) + legacy[first_stop + 1:]


def write_hostile(kind: str, path: Path, marker: Path, state_dict) -> None:
    if kind in ("raw-pickle-2", "raw-pickle-4"):
        path.write_bytes(pickle.dumps(_Touch(marker), protocol=int(kind[-1])))
    elif kind == "legacy":
        path.write_bytes(_legacy_bytes({"model": state_dict, "x": _Touch(marker)}))
    elif kind == "zip":
        torch.save({"model": state_dict, "x": _Touch(marker)}, path)
    elif kind == "stealth":
        path.write_bytes(_stealth_bytes(marker, state_dict))
    else:
        raise ValueError(kind)


HOSTILE = ("raw-pickle-2", "raw-pickle-4", "legacy", "zip", "stealth")


def _small_sd():
    return {"a.weight": torch.arange(6.0).reshape(2, 3), "a.bias": torch.zeros(2)}


def test_the_hostile_files_really_run_code_when_unpickled_the_ordinary_way(tmp_path):
    """The test files are what they claim: the ordinary readers run their code."""
    for kind in HOSTILE:
        marker = tmp_path / f"{kind}.marker"
        write_hostile(kind, tmp_path / f"{kind}.pth", marker, _small_sd())
        if kind.startswith("raw"):
            pickle.loads((tmp_path / f"{kind}.pth").read_bytes())
        else:
            torch.load(tmp_path / f"{kind}.pth", weights_only=False)
        assert marker.exists(), kind
    # the stealth file even loads as the genuine checkpoint it hides
    got = torch.load(tmp_path / "stealth.pth", weights_only=False)
    assert torch.equal(got["a.weight"], _small_sd()["a.weight"])


@pytest.mark.parametrize("kind", HOSTILE)
def test_read_state_dict_refuses_hostile_files_without_running_them(tmp_path, kind):
    marker = tmp_path / "PWNED"
    path = tmp_path / f"{kind}.pth"
    write_hostile(kind, path, marker, _small_sd())
    with pytest.raises(CheckpointError) as e:
        read_state_dict(path, unwrap=("model",))
    assert not marker.exists()
    msg = str(e.value)
    assert str(path) in msg
    if kind != "raw-pickle-4":  # protocol 4 fails on its framing before any global is read
        assert isinstance(e.value, UnsafeCheckpoint)
        assert "refused" in msg and ("system" in msg or "eval" in msg)
    assert "weights_only=False" not in msg  # torch's advice to trust the file is not passed on


@pytest.mark.parametrize("legacy", [False, True])
def test_trainer_checkpoint_argument_namespace_becomes_inert(tmp_path, legacy):
    """An official trainer checkpoint pickles its argparse.Namespace beside the weights: it
    loads, as a placeholder that keeps nothing; anything hidden inside it is still refused."""
    sd = _small_sd()
    path = tmp_path / "trainer.pth"
    torch.save({"trainer": {"var_wo_ddp": sd}, "args": argparse.Namespace(lr=1e-4, depth=16)},
               path, _use_new_zipfile_serialization=not legacy)
    got = read_state_dict(path, unwrap=("trainer", "var_wo_ddp"))
    assert got.keys() == sd.keys() and all(torch.equal(got[k], sd[k]) for k in sd)
    whole = read_state_dict(path)
    assert not hasattr(whole["args"], "lr")  # inert: the file's values are not kept

    marker = tmp_path / "PWNED"
    torch.save({"model": sd, "args": argparse.Namespace(x=_Touch(marker))}, path,
               _use_new_zipfile_serialization=not legacy)
    with pytest.raises(UnsafeCheckpoint, match="trainer.pth"):
        read_state_dict(path, unwrap=("model",))
    assert not marker.exists()


@pytest.mark.parametrize("kind,reason", [
    ("empty", "empty (0 bytes)"), ("truncated-zip", "not a readable PyTorch checkpoint"),
    ("truncated-legacy", "not a readable PyTorch checkpoint"),
    ("text", "not a readable PyTorch checkpoint"),
    ("safetensors-junk", "not a readable safetensors file")])
def test_broken_files_are_named_with_what_to_do(tmp_path, kind, reason):
    good = tmp_path / "good.pth"
    torch.save(_small_sd(), good)
    legacy = _legacy_bytes(_small_sd())
    path = tmp_path / ("w.safetensors" if kind.startswith("safetensors") else "w.pth")
    path.write_bytes({"empty": b"", "truncated-zip": good.read_bytes()[:200],
                      "truncated-legacy": legacy[:-40], "text": b"not a checkpoint\n",
                      "safetensors-junk": b"\x08\x00\x00\x00\x00\x00\x00\x00{}"}[kind])
    with pytest.raises(CheckpointError) as e:
        read_state_dict(path)
    msg = str(e.value)
    assert str(path) in msg and reason in msg and "again" in msg
    assert "\n" not in msg  # one paragraph


def test_config_json_that_is_not_json_is_named(tmp_path):
    bad = tmp_path / "config.json"
    bad.write_text('{"depth": 2,')
    with pytest.raises(CheckpointError, match=r"config.json is not valid JSON .*line 1"):
        read_json_config(bad)
    bad.write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="not the object of settings"):
        read_json_config(bad)
    bad.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(CheckpointError, match="config.json is not a JSON text file"):
        read_json_config(bad)


def test_the_fixture_checkpoints_still_load(fixtures_dir):
    for name in ("var-tiny/var.pth", "var-tiny/vae.pth", "infinity-tiny/vae.pth"):
        assert read_state_dict(fixtures_dir / name, unwrap=("vae",))


# -- through the CLI ---------------------------------------------------------------------------
runner = CliRunner()


def _weights_dir(tmp_path: Path, fixtures_dir: Path) -> Path:
    """var-d16's two files, the transformer a real (fixture) checkpoint."""
    w = tmp_path / "w"
    w.mkdir()
    shutil.copy(fixtures_dir / "var-tiny" / "var.pth", w / "var_d16.pth")
    return w


def _search(w: Path, out: Path, *extra: str):
    return runner.invoke(app, ["search", "--model", "var-d16", "--classes", "0", "--n", "2",
                               "--weights", str(w), "--out", str(out), "--device", "cpu",
                               "--quiet", *extra])


@pytest.mark.parametrize("kind", HOSTILE)
def test_cli_refuses_hostile_weights_and_names_the_file(tmp_path, fixtures_dir, monkeypatch, kind):
    monkeypatch.delenv("VARDIST_WEIGHTS", raising=False)
    w = _weights_dir(tmp_path, fixtures_dir)
    marker = tmp_path / "PWNED"
    vae_sd = torch.load(fixtures_dir / "var-tiny" / "vae.pth", weights_only=True)
    write_hostile(kind, w / VAE, marker, vae_sd)
    r = _search(w, tmp_path / "o")
    assert r.exit_code == 1, r.output
    assert not marker.exists()
    out = " ".join(r.output.split())
    assert f"Error: {w / VAE}" in out and "again" in out
    assert "Traceback" not in r.output and not isinstance(r.exception, (TypeError, AttributeError))


@pytest.mark.parametrize("kind,words", [
    ("empty", "is empty (0 bytes)"), ("truncated", "is not a readable PyTorch checkpoint"),
    ("text", "is not a readable PyTorch checkpoint")])
def test_cli_broken_weights_end_in_one_paragraph_naming_the_file(tmp_path, fixtures_dir,
                                                                  monkeypatch, kind, words):
    """Was: `Aborted.` for an empty file (click's reading of EOFError), tracebacks otherwise."""
    monkeypatch.delenv("VARDIST_WEIGHTS", raising=False)
    w = _weights_dir(tmp_path, fixtures_dir)
    data = (fixtures_dir / "var-tiny" / "vae.pth").read_bytes()
    (w / VAE).write_bytes({"empty": b"", "truncated": data[: len(data) // 2],
                           "text": b"<html>404</html>"}[kind])
    r = _search(w, tmp_path / "o")
    assert r.exit_code == 1, r.output
    out = " ".join(r.output.split())
    assert f"Error: {w / VAE} " in out and words in out and "Aborted" not in out
    assert r.output.count("\n") <= 3  # one paragraph (wrapped at most by the terminal)


def test_cli_flexvar_config_that_is_not_json(tmp_path, fixtures_dir):
    w = tmp_path / "flex"
    shutil.copytree(fixtures_dir / "flexvar-tiny", w)
    (w / "config.json").chmod(0o644)
    (w / "config.json").write_text("{not json")
    r = runner.invoke(app, ["search", "--model", "flexvar-tiny", "--classes", "0", "--n", "2",
                            "--weights", str(w), "--out", str(tmp_path / "o"), "--quiet"])
    assert r.exit_code != 0
    out = " ".join(r.output.split())
    assert f"{w / 'config.json'} is not valid JSON" in out, r.output
    assert "Traceback" not in r.output


# -- in a Ray actor ----------------------------------------------------------------------------
def test_ray_actor_refuses_the_stealth_file(tmp_path, fixtures_dir, monkeypatch):
    """The stealth file used to run once in every actor (and the run exited 0). Now each actor
    refuses it and the driver raises the actor's error itself: the file and why."""
    pytest.importorskip("ray")
    import vardist

    monkeypatch.delenv("VARDIST_WEIGHTS", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    w = _weights_dir(tmp_path, fixtures_dir)
    marker = tmp_path / "PWNED"
    vae_sd = torch.load(fixtures_dir / "var-tiny" / "vae.pth", weights_only=True)
    write_hostile("stealth", w / VAE, marker, vae_sd)
    with pytest.raises(UnsafeCheckpoint) as e:
        vardist.search("var-d16", classes=[0], n=2, weights=w, out=tmp_path / "o", device="cpu",
                       engine="ray", actors=2)
    assert not marker.exists()
    assert str(e.value).startswith(f"{w / VAE} was refused")
    assert "Traceback" not in str(e.value)


# -- a resume loads the same weights -----------------------------------------------------------
def test_resume_with_other_weights_or_log_candidates_is_refused(tmp_path):
    """Was: accepted, mixing images of two checkpoints in one folder (issue 13 item 5)."""
    from safetensors.torch import load_file, save_file

    from vardist.zoo import specs as zoo

    w = tmp_path / "retrained"
    w.mkdir()
    for name in (zoo.CONFIG_FILE, zoo.VAE_FILE, zoo.VAR_FILE):
        shutil.copy(zoo.WEIGHTS_DIR / name, w / name)
    out = tmp_path / "o"
    args = ["search", "--model", "toy-digits", "--classes", "1", "--per-class", "2", "--n", "8",
            "--batch-size", "1", "--out", str(out), "--quiet"]
    r = runner.invoke(app, [*args, "--weights", str(w)])
    assert r.exit_code == 0, r.output
    # a copy of the same bytes elsewhere is the same weights: the resume goes on
    r = runner.invoke(app, args)
    assert r.exit_code == 0 and "2 already there" in r.output, r.output

    sd = load_file(str(w / zoo.VAR_FILE))
    key = next(iter(sd))
    sd[key] = sd[key] * 0.5
    save_file(sd, str(w / zoo.VAR_FILE))
    before = sorted(p.name for p in out.rglob("*"))
    r = runner.invoke(app, [*args, "--weights", str(w)])
    assert r.exit_code != 0
    text = " ".join(r.output.split())
    assert "weights toy-digits-var.safetensors" in text and "sampled sha256" in text, r.output
    assert "weights toy-digits-vae.safetensors" not in text  # only what changed is named

    r = runner.invoke(app, [*args, "--log-candidates"])
    assert r.exit_code != 0 and "log_candidates" in " ".join(r.output.split()), r.output
    assert sorted(p.name for p in out.rglob("*")) == before
