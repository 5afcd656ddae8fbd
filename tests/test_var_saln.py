"""Shared AdaLN (the VAR-d36 / 512px layout): the full-size key layout on the meta device, the
registry entry, and the shared projection's math against the per-block one."""

import json

import pytest
import torch

import vardist.models as models
from vardist.models.var import VARConfig, VARGenerator, VARTransformer, VQVAE, configs_from_reference
from vardist.models.var.specs import PATCH_NUMS_512, VAE_FILE, official_configs, var_file


@pytest.fixture(scope="module")
def manifest(fixtures_dir):
    return json.loads((fixtures_dir / "var-official-manifest.json").read_text())


def _shapes(module: torch.nn.Module) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in module.state_dict().items()}


def _d36_from_d30(d30: dict[str, list[int]]) -> dict[str, list[int]]:
    """The d36 layout written from the official d30 one by the published differences: width
    1920 -> 2304 (so every multiple of it), 30 -> 36 heads and blocks, 680 -> 2240 tokens, and
    per-block `ada_lin` replaced by `ada_gss` [1, 1, 6, C] plus one `shared_ada_lin` [6C, C]."""
    C30, C36 = 1920, 2304

    def dim(d: int) -> int:
        return d // C30 * C36 if d % C30 == 0 else {30: 36, 680: 2240}.get(d, d)

    out = {}
    for key, shape in d30.items():
        if ".ada_lin." in key and key.startswith("blocks."):
            continue
        if key.startswith("blocks.0."):
            for i in range(36):
                out[f"blocks.{i}." + key[len("blocks.0."):]] = [dim(d) for d in shape]
        elif not key.startswith("blocks."):
            out[key] = [dim(d) for d in shape]
    for i in range(36):
        out[f"blocks.{i}.ada_gss"] = [1, 1, 6, C36]
    out["shared_ada_lin.1.weight"], out["shared_ada_lin.1.bias"] = [6 * C36, C36], [6 * C36]
    return out


def test_full_size_d36_layout(manifest):
    vae_cfg, var_cfg = official_configs(36)
    with torch.device("meta"):
        var = VARTransformer(var_cfg)
    assert _shapes(var) == _d36_from_d30(manifest[var_file(30)])
    # the reference's trainable parameter count for VAR-d36 (README: 2.3B)
    assert sum(p.numel() for p in var.parameters()) == 2_353_893_904
    assert var_cfg.L == 2240 and var_cfg.patch_nums == PATCH_NUMS_512


# var_d36.pth's published size (its Hugging Face LFS pointer): the layout's tensor bytes plus the
# pickle's framing. A wrong width, depth, token count or AdaLN layout is off by megabytes.
VAR_D36_FILE_BYTES = 9_436_153_085


def test_d36_tensor_bytes_fit_the_published_file():
    _, var_cfg = official_configs(36)
    with torch.device("meta"):
        var = VARTransformer(var_cfg)
    data = sum(t.numel() * t.element_size() for t in var.state_dict().values())
    assert 0 < VAR_D36_FILE_BYTES - data < 300_000, data


def test_d36_registered_with_d30_defaults():
    d36, d30 = models.get_spec("var-d36"), models.get_spec("var-d30")
    assert d36.files == (VAE_FILE, "var_d36.pth") and d36.family == "var"
    assert d36.defaults == d30.defaults and d36.num_scales == 10 and "512" in d36.description


def test_d36_load_names_missing_files(tmp_path, monkeypatch):
    monkeypatch.delenv("VARDIST_WEIGHTS", raising=False)
    with pytest.raises(FileNotFoundError, match="var_d36.pth"):
        models.load("var-d36", tmp_path)


def _random_state(var: VARTransformer, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, v in var.state_dict().items():
        sd[k] = v.clone() if k.endswith(VARTransformer.RECOMPUTABLE) else torch.randn(v.shape, generator=g) * 0.2
    return sd


def test_shared_projection_equals_per_block_copies():
    """A shared-AdaLN model is a per-block model whose blocks all carry the shared projection plus
    their own offset: same logits (checks where the projection and the offsets enter)."""
    small = dict(depth=2, embed_dim=64, num_heads=2, vocab_size=64, num_classes=10,
                 patch_nums=(1, 2, 3))
    shared = VARTransformer(VARConfig(shared_aln=True, **small)).eval()
    shared.load_state_dict(_random_state(shared, 0))
    plain = VARTransformer(VARConfig(**small)).eval()
    sd = {k: v for k, v in shared.state_dict().items() if "ada_gss" not in k and "shared_ada_lin" not in k}
    W, b = shared.shared_ada_lin[1].weight, shared.shared_ada_lin[1].bias
    for i, blk in enumerate(shared.blocks):
        sd[f"blocks.{i}.ada_lin.1.weight"] = W.clone()
        sd[f"blocks.{i}.ada_lin.1.bias"] = b + blk.ada_gss.reshape(-1)  # offset folded into the bias
    plain.load_state_dict(sd)
    labels = torch.tensor([1, 7])
    x = torch.randn(2, shared.cfg.L - 1, 32)
    with torch.no_grad():
        torch.testing.assert_close(shared(labels, x), plain(labels, x), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(shared(labels, x), shared(torch.tensor([2, 3]), x))


def test_other_shared_config_reads_every_size_from_the_reference_config(fixtures_dir):
    """A shared-AdaLN config of another depth, vocabulary, width and schedule, as the reference
    builder's arguments: loads key for key and generates at its own image size."""
    config = dict(patch_nums=(1, 2, 4, 8), V=96, Cvae=16, ch=32, share_quant_resi=4, depth=3,
                  embed_dim=96, num_heads=3, num_classes=5, shared_aln=True)
    vae_cfg, var_cfg = configs_from_reference(config)
    assert (var_cfg.shared_aln, var_cfg.depth, var_cfg.vocab_size, vae_cfg.image_size) == (True, 3, 96, 128)
    vae, var = VQVAE(vae_cfg), VARTransformer(var_cfg)
    g = VARGenerator.from_state_dicts(vae_cfg, var_cfg, vae.state_dict(), _random_state(var, 1))
    images, maps = g.generate([0, 4], cfg=2.0, top_k=5, top_p=0.9, seeds=[1, 2])
    assert images.shape == (2, 3, 128, 128) and [m.shape[1] for m in maps] == [1, 4, 16, 64]
    assert all(int(m.max()) < 96 for m in maps)
