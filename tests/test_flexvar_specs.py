"""FlexVAR registry entries, full-size builds against the official manifest, checkpoint wrapping
and loading errors."""

import json
import shutil

import pytest
import torch

import vardist.models as models
from vardist.models.checkpoint import CheckpointMismatch
from vardist.models.flexvar import (FlexVAE, FlexVAEConfig, FlexVARConfig, FlexVARTransformer, build,
                                    configs_from_fixture, from_fixture)
from vardist.models.flexvar.specs import VAE_FILE, VAR_FILES, official_configs

PARAMS = {16: 315_561_936, 20: 607_513_952, 24: 1_041_314_576}   # notes F3, computed on the reference


@pytest.fixture(scope="module")
def manifest(fixtures_dir):
    return json.loads((fixtures_dir / "flexvar-official-manifest.json").read_text())


@pytest.fixture(scope="module")
def tiny(fixtures_dir):
    return fixtures_dir / "flexvar-tiny"


def _shapes(module):
    return {k: list(v.shape) for k, v in module.state_dict().items()}


@pytest.mark.parametrize("depth", sorted(VAR_FILES))
def test_full_size_transformer_matches_manifest(manifest, depth):
    _, cfg = official_configs(depth)
    with torch.device("meta"):
        t = FlexVARTransformer(cfg)
    want = dict(manifest[VAR_FILES[depth]])
    # the stale training mask is dropped on load and rebuilt per schedule, never stored
    assert want.pop("attn_bias_for_masking") == [1, 1, 680, 680]
    assert _shapes(t) == want
    assert sum(p.numel() for p in t.parameters()) == PARAMS[depth]


def test_full_size_tokenizer_matches_manifest(manifest):
    cfg, _ = official_configs(24)
    with torch.device("meta"):
        vae = FlexVAE(cfg)
    assert _shapes(vae) == manifest[VAE_FILE]
    assert cfg.codebook_size == 8912 and cfg.downsample == 16


@pytest.mark.parametrize("depth", sorted(VAR_FILES))
def test_registered_with_paper_defaults(depth):
    spec = models.get_spec(f"flexvar-d{depth}")
    assert spec.family == "flexvar" and spec.files == (VAE_FILE, VAR_FILES[depth])
    assert "huggingface.co/jiaosiyu1999/FlexVAR" in spec.source
    d = spec.defaults
    assert (d.scale, d.n, d.strategy, d.rep, d.cfg, d.alpha, d.top_k, d.top_p) == \
        (2, 50, "var-scaling", 10, 2.5, 2.6, 900, 0.95)
    assert (spec.num_scales, spec.condition_kind, spec.num_classes) == (10, "class", 1000)


def test_missing_weights_error_names_files_and_source(tmp_path, monkeypatch):
    monkeypatch.delenv("VARDIST_WEIGHTS", raising=False)
    with pytest.raises(FileNotFoundError) as e:
        models.load("flexvar-d24", tmp_path)
    msg = str(e.value)
    assert "FlexVAE.pth" in msg and "FlexVARd24-epo349.pth" in msg and "jiaosiyu1999/FlexVAR" in msg


def test_tiny_files_under_official_names_give_a_key_listing_error(tiny, tmp_path, monkeypatch):
    monkeypatch.delenv("VARDIST_WEIGHTS", raising=False)
    shutil.copy(tiny / "vae.pth", tmp_path / VAE_FILE)
    shutil.copy(tiny / "var.pth", tmp_path / VAR_FILES[16])
    with pytest.raises(CheckpointMismatch) as e:
        models.load("flexvar-d16", tmp_path, device="cpu")
    assert "mis-shaped" in str(e.value) and "encoder.conv_in.weight" in str(e.value)


def test_wrapped_checkpoints_load_like_plain_ones(tiny, tmp_path):
    """Transformer as a trainer checkpoint (["trainer"]["var_wo_ddp"], stale mask of another
    shape), tokenizer under ["model"]: same model as the plain files."""
    sd = torch.load(tiny / "var.pth", weights_only=True)
    vae_sd = torch.load(tiny / "vae.pth", weights_only=True)["model"]
    sd["attn_bias_for_masking"] = torch.zeros(1, 1, 30, 30)
    torch.save({"epoch": 3, "iter": 10, "args": {"depth": 2},
                "trainer": {"config": {"x": 1}, "var_wo_ddp": sd, "vae_local": vae_sd, "var_opt": {}}},
               tmp_path / "var.pth")
    torch.save({"model": vae_sd, "optimizer": None}, tmp_path / "vae.pth")
    shutil.copy(tiny / "config.json", tmp_path / "config.json")
    wrapped, plain = from_fixture(tmp_path), from_fixture(tiny)
    for a, b in zip(wrapped.transformer.state_dict().values(), plain.transformer.state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(wrapped.vae.state_dict().values(), plain.vae.state_dict().values()):
        assert torch.equal(a, b)


def test_mismatched_checkpoints_name_the_keys(tiny, fixtures_dir):
    cfg = json.loads((tiny / "config.json").read_text())
    vae_cfg, var_cfg, _ = configs_from_fixture(cfg)
    deeper = FlexVARConfig(**{**var_cfg.__dict__, "depth": var_cfg.depth + 1})
    with pytest.raises(CheckpointMismatch, match=r"missing keys: blocks\.2\.") as e:
        build(vae_cfg, deeper, tiny / "vae.pth", tiny / "var.pth")
    assert "mis-shaped" in str(e.value)                      # width follows depth
    bigger = FlexVAEConfig(**{**vae_cfg.__dict__, "codebook_size": 300})
    with pytest.raises(CheckpointMismatch, match=r"quantize\.embedding\.weight: file \(200, 32\) vs model \(300, 32\)"):
        build(bigger, var_cfg, tiny / "vae.pth", tiny / "var.pth")
    with pytest.raises(CheckpointMismatch, match="holds a VAR transformer"):
        build(vae_cfg, var_cfg, tiny / "vae.pth", fixtures_dir / "var-tiny" / "var.pth")


def test_every_size_is_read_from_config(tiny, tmp_path):
    """A fixture of other sizes (depth, codebook, latent width, schedule, trainer wrapping) loads
    from its config.json alone; shapes follow it."""
    cfg = json.loads((tiny / "config.json").read_text())
    cfg["build_vae_var_kwargs"].update(depth=1, V=64)
    cfg["flexvar_derived"].update(C=64, num_heads=1, ffn_hidden=256)
    cfg["tokenizer"].update(codebook_size=64, z_channels=64)
    cfg["default_schedule"] = [1, 2, 4]
    vae_cfg, var_cfg, schedule = configs_from_fixture(cfg)
    assert (var_cfg.depth, var_cfg.vocab_size, vae_cfg.z_channels, vae_cfg.ch, schedule) == (1, 64, 64, 32, (1, 2, 4))
    torch.manual_seed(0)
    torch.save({"model": FlexVAE(vae_cfg).state_dict()}, tmp_path / "vae.pth")
    torch.save({"trainer": {"var_wo_ddp": FlexVARTransformer(var_cfg).state_dict()}}, tmp_path / "var.pth")
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    model = from_fixture(tmp_path)
    img, maps = model.generate([1], cfg=3.0, top_k=0, top_p=0.0, seeds=[0])
    assert [m.shape for m in maps] == [(1, 1), (1, 4), (1, 16)] and img.shape == (1, 3, 64, 64)
    assert max(int(m.max()) for m in maps) < 64
