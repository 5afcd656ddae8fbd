"""Checkpoint loading errors and weight-file discovery shared by every family."""

import pytest
import torch
from torch import nn

from vardist.models.checkpoint import CheckpointMismatch, load_exact, read_state_dict
from vardist.models.registry import (ModelSpec, SearchDefaults, find_weight_files,
                                     get_spec, missing_weights_error)


class Tiny(nn.Module):
    def __init__(self, width=4):
        super().__init__()
        self.a = nn.Linear(width, width)
        self.register_buffer("mask", torch.ones(3))


def test_load_exact_lists_missing_unexpected_and_misshaped():
    sd = Tiny(width=5).state_dict()
    sd["extra.weight"] = torch.zeros(1)
    del sd["a.bias"]
    with pytest.raises(CheckpointMismatch) as err:
        load_exact(Tiny(), sd, what="Tiny")
    msg = str(err.value)
    assert "missing keys: a.bias" in msg
    assert "unexpected keys: extra.weight" in msg
    assert "a.weight: file (5, 5) vs model (4, 4)" in msg


def test_load_exact_accepts_absent_recomputable_buffers_and_loads_values(tmp_path):
    src = Tiny()
    sd = {k: v for k, v in src.state_dict().items() if k != "mask"}
    torch.save(sd, tmp_path / "t.pth")
    dst = Tiny()
    load_exact(dst, read_state_dict(tmp_path / "t.pth"), what="Tiny", optional=("mask",))
    assert torch.equal(dst.a.weight, src.a.weight)


class _Evil:
    def __reduce__(self):
        import os

        return (os.mkdir, (self.target,))


def test_trainer_checkpoint_with_objects_loads_without_running_them(tmp_path):
    import argparse

    evil = _Evil()
    evil.target = str(tmp_path / "pwned")
    sd = Tiny().state_dict()
    torch.save({"trainer": {"var_wo_ddp": sd}, "args": argparse.Namespace(a=1), "x": evil},
               tmp_path / "trainer.pth")
    got = read_state_dict(tmp_path / "trainer.pth", unwrap=("trainer", "var_wo_ddp"))
    assert not (tmp_path / "pwned").exists()
    assert got.keys() == sd.keys() and all(torch.equal(got[k], sd[k]) for k in sd)


def test_a_file_without_a_state_dict_is_refused(tmp_path):
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(CheckpointMismatch, match="does not hold a state dict"):
        read_state_dict(tmp_path / "list.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointMismatch, match="not a readable PyTorch checkpoint"):
        read_state_dict(tmp_path / "junk.pth")


def test_read_state_dict_unwraps_nested_dicts(tmp_path):
    torch.save({"model": Tiny().state_dict()}, tmp_path / "w.pth")
    assert "a.weight" in read_state_dict(tmp_path / "w.pth", unwrap=("model",))


SPEC = ModelSpec(name="demo", family="var", description="", defaults=SearchDefaults(scale=1, n=10),
                 files=("a.pth", "b.pth"), source="https://example.org/demo")


def test_find_weight_files_flat_and_hf_cache(tmp_path, monkeypatch):
    monkeypatch.delenv("VARDIST_WEIGHTS", raising=False)
    (tmp_path / "a.pth").write_bytes(b"")
    assert find_weight_files(SPEC, tmp_path) is None
    snap = tmp_path / "hub" / "models--org--demo" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (snap / "b.pth").write_bytes(b"")
    found = find_weight_files(SPEC, tmp_path)
    assert found == {"a.pth": tmp_path / "a.pth", "b.pth": snap / "b.pth"}
    monkeypatch.setenv("VARDIST_WEIGHTS", str(tmp_path))
    assert find_weight_files(SPEC, None) == found


def test_missing_weights_error_names_files_and_source(tmp_path):
    msg = str(missing_weights_error(SPEC, tmp_path))
    assert "a.pth, b.pth" in msg and "https://example.org/demo" in msg and "--weights" in msg


def test_unknown_model_is_named():
    with pytest.raises(ValueError, match="unknown model 'no-such-model'"):
        get_spec("no-such-model")
