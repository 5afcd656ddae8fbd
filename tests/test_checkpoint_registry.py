"""Checkpoint loading errors and weight-file discovery shared by every family."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from vardist.models.checkpoint import (CheckpointError, CheckpointMismatch, load_exact,
                                       read_state_dict)
from vardist.models.registry import (ModelSpec, SearchDefaults, find_weight_files,
                                     get_spec, missing_weights_error, sampled_digest,
                                     weights_identity)


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


def test_a_file_without_a_state_dict_is_refused(tmp_path):
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(CheckpointMismatch, match="does not hold a state dict"):
        read_state_dict(tmp_path / "list.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        read_state_dict(tmp_path / "junk.pth")


def test_read_state_dict_unwraps_nested_dicts(tmp_path):
    torch.save({"model": Tiny().state_dict()}, tmp_path / "w.pth")
    assert "a.weight" in read_state_dict(tmp_path / "w.pth", unwrap=("model",))


SPEC = ModelSpec(name="demo", family="var", description="", defaults=SearchDefaults(scale=1, n=10),
                 files=("a.pth", "b.pth"), source="https://example.org/demo", hf_repos=("org/demo",))


def hf_cache_file(cache: Path, repo: str, commit: str, name: str, data: bytes = b"w",
                  main: bool = True) -> Path:
    """A file as huggingface_hub caches it: a blob, a snapshot symlink to it, refs/main."""
    root = cache / f"models--{repo.replace('/', '--')}"
    blob = root / "blobs" / f"{commit}-{name.replace('/', '_')}"
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(data)
    link = root / "snapshots" / commit / name
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(os.path.relpath(blob, link.parent))
    if main:
        (root / "refs").mkdir(exist_ok=True)
        (root / "refs" / "main").write_text(commit)
    return link


@pytest.fixture
def no_user_weights(tmp_path, monkeypatch):
    """Neither $VARDIST_WEIGHTS nor the user's Hugging Face cache: an empty one."""
    import huggingface_hub.constants

    monkeypatch.delenv("VARDIST_WEIGHTS", raising=False)
    empty = tmp_path / "empty-hf-cache"
    empty.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(empty))


def test_find_weight_files_flat_and_in_a_cache_passed_as_weights(tmp_path, monkeypatch,
                                                                 no_user_weights):
    (tmp_path / "a.pth").write_bytes(b"")
    assert find_weight_files(SPEC, tmp_path) is None
    snap_b = hf_cache_file(tmp_path / "hub", "org/demo", "c0ffee", "b.pth")
    found = find_weight_files(SPEC, tmp_path)
    assert found == {"a.pth": tmp_path / "a.pth", "b.pth": snap_b}
    monkeypatch.setenv("VARDIST_WEIGHTS", str(tmp_path))
    assert find_weight_files(SPEC, None) == found


def test_hf_cache_follows_refs_main_not_the_first_snapshot(tmp_path, no_user_weights):
    """Was: the alphabetically first snapshot, here the stale one."""
    cache = tmp_path / "cache"
    hf_cache_file(cache, "org/demo", "0000stale", "a.pth", main=False)
    hf_cache_file(cache, "org/demo", "0000stale", "b.pth", main=False)
    a = hf_cache_file(cache, "org/demo", "ffffmain", "a.pth")
    b = hf_cache_file(cache, "org/demo", "ffffmain", "b.pth")
    assert find_weight_files(SPEC, cache) == {"a.pth": a, "b.pth": b}


def test_folders_from_the_hf_cache_a_sharded_one_and_a_whole_repository(tmp_path,
                                                                      no_user_weights):
    """infinity-8b: a sharded folder inside FoundationVision/Infinity, and flan-t5-xl, which
    is the whole google/flan-t5-xl repository."""
    repo = "FoundationVision/Infinity"
    for name in ("infinity_8b_weights/model.safetensors.index.json",
                 "infinity_8b_weights/model-00001-of-00001.safetensors",
                 "infinity_vae_d56_f8_14_patchify.pth"):
        hf_cache_file(tmp_path, repo, "abc", name)
    hf_cache_file(tmp_path, "google/flan-t5-xl", "def", "config.json", b"{}")
    found = find_weight_files(get_spec("infinity-8b"), tmp_path)
    snap = tmp_path / "models--FoundationVision--Infinity" / "snapshots" / "abc"
    assert found["infinity_8b_weights"].resolve() == (snap / "infinity_8b_weights").resolve()
    assert found["flan-t5-xl"].resolve() == (
        tmp_path / "models--google--flan-t5-xl" / "snapshots" / "def").resolve()
    assert found["infinity_vae_d56_f8_14_patchify.pth"].resolve() == (
        snap / "infinity_vae_d56_f8_14_patchify.pth").resolve()


def sharded_folder(path: Path, index: bool = True) -> Path:
    path.mkdir(parents=True)
    (path / "model-00001-of-00001.safetensors").write_bytes(b"shard")
    if index:
        (path / "model.safetensors.index.json").write_text("{}")
    return path


@pytest.mark.parametrize("name, folder", [("infinity-8b", "infinity_8b_weights"),
                                          ("infinity-8b-512", "infinity_8b_512x512_weights")])
def test_infinity_8b_transformer_as_sharded_folder_or_single_pth(tmp_path, monkeypatch, name,
                                                                 folder, no_user_weights):
    """--weights DIR and $VARDIST_WEIGHTS find the transformer as the sharded folder or as
    FOLDER.pth; a folder holding both reads the sharded one; the fingerprint names the form."""
    spec, single = get_spec(name), f"{folder}.pth"
    w = tmp_path / "w"
    w.mkdir()
    (w / "infinity_vae_d56_f8_14_patchify.pth").write_bytes(b"vae")
    (w / "flan-t5-xl").mkdir()
    (w / "flan-t5-xl" / "config.json").write_text("{}")
    assert find_weight_files(spec, w) is None
    msg = str(missing_weights_error(spec, w))
    assert f"{folder} (or {single})" in msg and "index json" in msg
    with pytest.raises(FileNotFoundError, match=single.replace(".", r"\.")):
        weights_identity(spec, w)

    sharded_folder(w / folder, index=False)  # an incomplete download is not the folder
    (w / single).write_bytes(b"one file")
    assert find_weight_files(spec, w)[folder] == w / single
    pth_ident = weights_identity(spec, w)
    assert f"weights {single}" in pth_ident and f"weights {folder}" not in pth_ident
    monkeypatch.setenv("VARDIST_WEIGHTS", str(w))
    assert find_weight_files(spec, None)[folder] == w / single

    (w / folder / "model.safetensors.index.json").write_text("{}")
    assert find_weight_files(spec, None)[folder] == w / folder
    folder_ident = weights_identity(spec, w)
    assert f"weights {folder}" in folder_ident and f"weights {single}" not in folder_ident

    # the folder the user names comes first, whichever form it holds
    mine = tmp_path / "mine"
    shutil.copytree(w, mine, ignore=shutil.ignore_patterns(folder))
    assert find_weight_files(spec, mine)[folder] == mine / single


def test_infinity_8b_single_pth_from_a_hf_cache(tmp_path, no_user_weights):
    repo = "FoundationVision/Infinity"
    single = hf_cache_file(tmp_path, repo, "abc", "infinity_8b_weights.pth")
    hf_cache_file(tmp_path, repo, "abc", "infinity_vae_d56_f8_14_patchify.pth")
    hf_cache_file(tmp_path, "google/flan-t5-xl", "def", "config.json", b"{}")
    spec = get_spec("infinity-8b")
    assert find_weight_files(spec, tmp_path)["infinity_8b_weights"] == single
    for name in ("model.safetensors.index.json", "model-00001-of-00001.safetensors"):
        hf_cache_file(tmp_path, repo, "abc", f"infinity_8b_weights/{name}")
    assert find_weight_files(spec, tmp_path)["infinity_8b_weights"].name == "infinity_8b_weights"


def test_a_repository_not_published_by_the_model_is_not_taken(tmp_path, no_user_weights):
    hf_cache_file(tmp_path, "someone/else", "1234", "a.pth")
    hf_cache_file(tmp_path, "someone/else", "1234", "b.pth")
    assert find_weight_files(SPEC, tmp_path) is None


@pytest.mark.parametrize("env", ["HF_HUB_CACHE", "HF_HOME"])
def test_the_users_hf_cache_is_found_without_weights(tmp_path, env):
    """$HF_HUB_CACHE, else $HF_HOME/hub, as huggingface_hub reads them (a fresh process: it
    reads them once, at import)."""
    base = tmp_path / "hf"
    cache = base / "hub" if env == "HF_HOME" else base
    vae = hf_cache_file(cache, "FoundationVision/var", "abc123", "vae_ch160v4096z32.pth")
    var = hf_cache_file(cache, "FoundationVision/var", "abc123", "var_d16.pth")
    envs = {k: v for k, v in os.environ.items()
            if k not in ("VARDIST_WEIGHTS", "HF_HUB_CACHE", "HF_HOME")}
    code = ("from vardist.models import registry; "
            "f = registry.find_weight_files(registry.get_spec('var-d16'), None); "
            "print(sorted(str(p) for p in f.values()) if f else None)")
    r = subprocess.run([sys.executable, "-c", code], env={**envs, env: str(base)},
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(sorted([str(vae), str(var)]))


def test_weights_identity_names_each_file_and_changes_with_its_bytes(tmp_path, no_user_weights):
    (tmp_path / "a.pth").write_bytes(b"x" * 10)
    (tmp_path / "b.pth").write_bytes(bytes(range(256)) * 40_000)  # ~10 MB: sampled, not read
    ident = weights_identity(SPEC, tmp_path)
    assert set(ident) == {"weights a.pth", "weights b.pth"}
    assert ident["weights b.pth"].startswith("10240000 bytes, sampled sha256 ")
    data = bytearray((tmp_path / "b.pth").read_bytes())
    data[-5] ^= 1  # the tail (a zip's central directory) is always read
    (tmp_path / "b.pth").write_bytes(bytes(data))
    again = weights_identity(SPEC, tmp_path)
    assert again["weights a.pth"] == ident["weights a.pth"]
    assert again["weights b.pth"] != ident["weights b.pth"]
    assert sampled_digest(tmp_path / "a.pth") != sampled_digest(tmp_path / "b.pth")


def test_toy_digits_reads_a_retrained_model_from_weights_dir(tmp_path):
    """`--weights DIR` for toy-digits: the folder `vardist train toy-digits --out DIR` writes
    (was: silently ignored)."""
    from safetensors.torch import load_file, save_file

    from vardist.models import load
    from vardist.zoo import specs as zoo

    w = tmp_path / "retrained"
    w.mkdir()
    for name in (zoo.CONFIG_FILE, zoo.VAE_FILE, zoo.VAR_FILE):
        shutil.copy(zoo.WEIGHTS_DIR / name, w / name)
    sd = load_file(str(w / zoo.VAR_FILE))
    key = next(k for k in sd if k.endswith("head.weight"))
    sd[key] = sd[key] + 1.0
    save_file(sd, str(w / zoo.VAR_FILE))
    spec = get_spec("toy-digits")
    assert find_weight_files(spec, None)[zoo.VAR_FILE] == zoo.WEIGHTS_DIR / zoo.VAR_FILE
    model = load("toy-digits", w, device="cpu")
    loaded = dict(model.var.named_parameters())
    shipped = load_file(str(zoo.WEIGHTS_DIR / zoo.VAR_FILE))[key]
    assert torch.equal(loaded[key].detach().cpu(), shipped + 1.0)
    (w / zoo.VAE_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=r"retrained model .*vardist train toy-digits"):
        load("toy-digits", w, device="cpu")


def test_missing_weights_error_names_files_and_source(tmp_path):
    msg = str(missing_weights_error(SPEC, tmp_path))
    assert "a.pth, b.pth" in msg and "https://example.org/demo" in msg and "--weights" in msg


def test_unknown_model_is_named():
    with pytest.raises(ValueError, match="unknown model 'no-such-model'"):
        get_spec("no-such-model")
