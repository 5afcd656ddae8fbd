"""VAR registry entries, full-size configs against the official manifest, and loading errors."""

import json
import shutil

import pytest
import torch

import vardist.models as models
from vardist.models.checkpoint import CheckpointMismatch
from vardist.models.var import VARGenerator, VARTransformer, VQVAE, configs_from_reference
from vardist.models.var.specs import VAE_FILE, official_configs, var_file

DEPTHS = (16, 20, 24, 30)


@pytest.fixture(scope="module")
def manifest(fixtures_dir):
    return json.loads((fixtures_dir / "var-official-manifest.json").read_text())


def _shapes(module: torch.nn.Module) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in module.state_dict().items()}


@pytest.mark.parametrize("depth", DEPTHS)
def test_full_size_transformer_matches_manifest(manifest, depth):
    _, var_cfg = official_configs(depth)
    with torch.device("meta"):
        var = VARTransformer(var_cfg)
    assert _shapes(var) == manifest[var_file(depth)]


@pytest.mark.parametrize("depth, side", [(16, 256), (36, 512)])  # d36: the same VAE file at 512px
def test_full_size_vae_matches_manifest(manifest, depth, side):
    vae_cfg, _ = official_configs(depth)
    with torch.device("meta"):
        vae = VQVAE(vae_cfg)
    assert _shapes(vae) == manifest[VAE_FILE]
    assert vae_cfg.image_size == side


def test_phi_table_resolves_the_float_tie():
    vae_cfg, _ = official_configs(16)
    with torch.device("meta"):
        q = VQVAE(vae_cfg).quantize
    assert q.phi_of_scale == [0, 0, 1, 1, 1, 2, 2, 3, 3, 3]


@pytest.mark.parametrize("depth", DEPTHS)
def test_registered_with_paper_defaults(depth):
    spec = models.get_spec(f"var-d{depth}")
    assert spec.family == "var" and spec.files == (VAE_FILE, var_file(depth))
    assert "huggingface.co/FoundationVision/var" in spec.source
    d = spec.defaults
    assert (d.scale, d.n, d.strategy, d.rep, d.cfg, d.top_k, d.top_p) == (1, 50, "var-scaling", 10, 1.0, 900, 0.96)
    assert 2.0 <= d.alpha <= 2.9
    assert (spec.num_scales, spec.condition_kind, spec.num_classes) == (10, "class", 1000)


def test_alpha_table_in_the_docs_is_the_registry():
    """docs/selection.md's per-depth alpha table (with its source) states the defaults the
    registry uses, for every registered VAR depth including d36."""
    import re
    from pathlib import Path

    from vardist.api import PRESETS
    from vardist.models.var.specs import ALPHA_BY_DEPTH

    text = (Path(__file__).resolve().parents[1] / "docs" / "selection.md").read_text()
    section = text[text.index("### alpha per model depth"):]
    section = section[:section.index("\n## ")]
    rows = {int(m[1]): float(m[2]) for m in
            re.finditer(r"^\| VAR-d(\d+)[^|]*\|.*\| ([\d.]+)(?: \([^)]*\))? \|$", section, re.M)}
    assert rows == ALPHA_BY_DEPTH
    assert rows == {d: models.get_spec(f"var-d{d}").defaults.alpha for d in rows}
    assert "Table 3a" in section and "Table 1b" in section  # the source
    assert f"uses {PRESETS['authors']['alpha']} for every depth" in " ".join(section.split())


def test_missing_weights_error_names_files_and_source(tmp_path, monkeypatch):
    monkeypatch.delenv("VARDIST_WEIGHTS", raising=False)
    with pytest.raises(FileNotFoundError) as e:
        models.load("var-d20", tmp_path)
    msg = str(e.value)
    assert VAE_FILE in msg and "var_d20.pth" in msg and "huggingface.co/FoundationVision/var" in msg


def test_wrong_size_checkpoint_error_lists_keys(fixtures_dir, tmp_path, monkeypatch):
    """The tiny fixture files under the official names do not fit VAR-d16: the error says which keys."""
    monkeypatch.delenv("VARDIST_WEIGHTS", raising=False)
    shutil.copy(fixtures_dir / "var-tiny" / "vae.pth", tmp_path / VAE_FILE)
    shutil.copy(fixtures_dir / "var-tiny" / "var.pth", tmp_path / "var_d16.pth")
    with pytest.raises(CheckpointMismatch) as e:
        models.load("var-d16", tmp_path, device="cpu")
    assert "mis-shaped" in str(e.value) and "encoder.conv_in.weight" in str(e.value)


def _tiny_state_dicts(fixtures_dir):
    folder = fixtures_dir / "var-tiny"
    config = torch.load(folder / "cases.pt", weights_only=True)["config"]
    return (configs_from_reference(config), torch.load(folder / "vae.pth", weights_only=True),
            torch.load(folder / "var.pth", weights_only=True))


def test_depth_mismatch_names_missing_and_unexpected_keys(fixtures_dir):
    (vae_cfg, var_cfg), vae_sd, var_sd = _tiny_state_dicts(fixtures_dir)
    deeper = type(var_cfg)(**{**var_cfg.__dict__, "depth": var_cfg.depth + 1})
    with pytest.raises(CheckpointMismatch, match=r"missing keys: blocks\.2\."):
        VARGenerator.from_state_dicts(vae_cfg, deeper, vae_sd, var_sd)
    var_sd["blocks.0.attn.extra"] = torch.zeros(1)
    with pytest.raises(CheckpointMismatch, match=r"unexpected keys: blocks\.0\.attn\.extra"):
        VARGenerator.from_state_dicts(vae_cfg, var_cfg, vae_sd, var_sd)


def test_recomputable_buffers_may_be_absent(fixtures_dir):
    (vae_cfg, var_cfg), vae_sd, var_sd = _tiny_state_dicts(fixtures_dir)
    full = VARGenerator.from_state_dicts(vae_cfg, var_cfg, vae_sd, var_sd)
    slim = {k: v for k, v in var_sd.items() if not k.endswith(VARTransformer.RECOMPUTABLE)}
    slim_vae = {k: v for k, v in vae_sd.items() if not k.endswith("ema_vocab_hit_SV")}
    assert len(slim) < len(var_sd) and len(slim_vae) < len(vae_sd)
    g = VARGenerator.from_state_dicts(vae_cfg, var_cfg, slim_vae, slim)
    for name, buf in full.var.named_buffers():
        assert torch.equal(buf, dict(g.var.named_buffers())[name]), name
