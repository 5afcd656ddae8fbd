"""Infinity: scale schedules, the 2B configuration against the checkpoint key list, loading errors,
and the scale-wise interface on the tiny model (fixture weights + tiny random T5)."""

from __future__ import annotations

import re
import pytest
import torch

from vardist.models import registry
from vardist.models.checkpoint import CheckpointMismatch, read_state_dict
from vardist.models.infinity import BSQVAE, BSQVAEConfig, Infinity, InfinityConfig, build
from vardist.models.infinity.generator import fixture_configs
from vardist.models.infinity.schedules import RATIO_SCHEDULES, h_div_w_template, scale_schedule
from vardist.models.infinity.transformer import grid_positions
from vardist.models.interface import Sampling

SMP = Sampling(cfg=4.0, top_k=900, top_p=0.97, tau=1.0)
PROMPTS = ["a photo of a red car", "two dogs"]


# -- schedules -------------------------------------------------------------------------------------
# token totals and pixel sizes of the 1M schedules as published in the reference notes (B7)
PUBLISHED = {1.0: (10521, 1024, 1024), 1.25: (10774, 1120, 896), 1.333: (10973, 1152, 864),
             1.5: (10997, 1248, 832), 1.75: (11252, 1344, 768), 2.0: (11269, 1440, 720),
             2.5: (10805, 1600, 640), 3.0: (11123, 1776, 592)}


@pytest.mark.parametrize("ratio", sorted(PUBLISHED))
def test_schedules_match_published_totals(ratio):
    tokens, H, W = PUBLISHED[ratio]
    for r, (hh, ww) in ((ratio, (H, W)), (h_div_w_template(1 / ratio), (W, H))):
        s = scale_schedule(r, "1M")
        assert len(s) == 13 and sum(h * w for h, w in s) == tokens
        assert (s[-1][0] * 16, s[-1][1] * 16) == (hh, ww)
        assert all(a[0] <= b[0] and a[1] <= b[1] for a, b in zip(s, s[1:]))


def test_schedule_prefixes_and_errors():
    assert [len(scale_schedule(1.0, pn)) for pn in ("0.06M", "0.25M", "0.60M", "1M")] == [7, 10, 12, 13]
    assert sum(h * w for h, w in scale_schedule(1.0, "0.06M")) == 521
    assert scale_schedule(1.0)[3] == (6, 6)  # the search scale of the paper
    assert h_div_w_template(1.3) == 1.333 and h_div_w_template(0.52) == 0.5
    assert len(RATIO_SCHEDULES) == 15
    with pytest.raises(ValueError, match="pn must be one of"):
        scale_schedule(1.0, "2M")
    with pytest.raises(ValueError, match="h_div_w"):
        scale_schedule(-1.0)


def test_rope_positions_round_half_to_even():
    rows, cols = grid_positions(48, 32, (78, 52))      # ratio 1.5: 4 * 52/32 = 6.5 -> 6
    assert cols[4] == 6 and rows[4] == 6
    assert torch.equal(grid_positions(64, 64, (64, 64))[0], torch.arange(64.0))


# -- the 2B configuration against the notes' key lists -----------------------------------------------
@pytest.fixture(scope="module")
def notes(fixtures_dir) -> str:
    path = fixtures_dir.parent / "notes" / "reference-architectures.md"
    if not path.is_file():
        pytest.fail(f"reference notes not found at {path}")
    return path.read_text()


def _appendix(text: str, title: str) -> str:
    start = text.index(title)
    return text[text.index("```", start) + 3: text.index("```", text.index("```", start) + 3)]


def test_2b_transformer_keys_and_shapes_on_meta(notes):
    want = {}
    for line in _appendix(notes, "## Appendix D").strip().splitlines():
        key, shape = line.split(" ", 1)
        want[key] = tuple(int(x) for x in re.findall(r"\d+", shape))
    block0 = {k.removeprefix("block_chunks.0.module.0."): v for k, v in want.items() if k.startswith("block_chunks.")}
    want = {k: v for k, v in want.items() if not k.startswith("block_chunks.")}
    for i in range(32):  # "block_chunks.{0..7}.module.{0..3} identical to block_chunks.0.module.0"
        want.update({f"block_chunks.{i // 4}.module.{i % 4}.{k}": v for k, v in block0.items()})
    with torch.device("meta"):
        m = Infinity(InfinityConfig())
    got = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert got == want and len(got) == 694
    assert sum(p.numel() for p in m.parameters()) == 2_204_564_032  # trainable count in the notes


def test_2b_vae_keys_and_shapes_on_meta(notes):
    want = {}
    for line in _appendix(notes, "## Appendix C").strip().splitlines():
        line = line.split("#")[0].strip()
        m = re.match(r"(\S+)\.\{(.*)\}$", line)
        if m:
            for name, shape in re.findall(r"(\w+)\(([\d, ]*)\)", m.group(2)):
                want[f"{m.group(1)}.{name}"] = tuple(int(x) for x in re.findall(r"\d+", shape))
        elif line:
            key, shape = line.split(" ", 1)
            want[key] = tuple(int(x) for x in re.findall(r"\d+", shape.split("int64")[0]))
    for k in ("quantizer.lfq.mask", "quantize.lfq.mask"):  # unused with bit labels: not in our module
        assert want.pop(k) == (32,)
    with torch.device("meta"):
        vae = BSQVAE(BSQVAEConfig())
    got = {k: tuple(v.shape) for k, v in vae.state_dict().items()}
    assert got == want and len(got) == 268
    assert sum(p.numel() for p in vae.parameters()) == 110_118_051


# -- loading -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fixture_parts(fixtures_dir):
    import json

    folder = fixtures_dir / "infinity-tiny"
    icfg, vcfg = fixture_configs(json.loads((folder / "config.json").read_text()))
    return (read_state_dict(folder / "infinity.pth"), read_state_dict(folder / "vae.pth", unwrap=("vae",)),
            icfg, vcfg)


def test_wrong_checkpoint_names_bad_keys(fixture_parts):
    sd, vae_sd, icfg, vcfg = fixture_parts
    bad = dict(sd)
    del bad["head.bias"]
    bad["extra.weight"] = torch.zeros(1)
    bad["word_embed.weight"] = torch.zeros(128, 16)
    with pytest.raises(CheckpointMismatch) as e:
        build(bad, vae_sd, icfg, vcfg)
    msg = str(e.value)
    assert "head.bias" in msg and "extra.weight" in msg and "word_embed.weight: file (128, 16)" in msg
    vbad = {k: v for k, v in vae_sd.items() if "decoder.conv_out" not in k}
    with pytest.raises(CheckpointMismatch, match="decoder.conv_out.conv.weight"):
        build(sd, vbad, icfg, vcfg)
    with pytest.raises(CheckpointMismatch, match="mis-shaped"):  # a 2B config cannot take tiny weights
        build(sd, vae_sd, InfinityConfig(depth=2, block_chunks=2), vcfg)


def test_alternative_layouts_load_to_the_same_weights(fixture_parts):
    """`blocks.<k>.` keys, absent zero K-bias buffers, extra reference buffers and the VAE's flat
    (unwrapped) names all load to the same model."""
    sd, vae_sd, icfg, vcfg = fixture_parts
    alt = {re.sub(r"block_chunks\.(\d+)\.module\.0\.", r"blocks.\1.", k): v
           for k, v in sd.items() if not k.endswith("zero_k_bias")}
    alt["attn_bias_for_masking"] = torch.zeros(1, 1, 4, 4)
    flat = {re.sub(r"\.(conv|norm)\.(weight|bias)$", r".\2", k): v for k, v in vae_sd.items()}
    assert "encoder.conv_in.weight" in flat and "decoder.up.1.upsample.conv.weight" in flat
    a, b = build(sd, vae_sd, icfg, vcfg), build(alt, flat, icfg, vcfg)
    for (ka, va), (kb, vb) in zip(a.transformer.state_dict().items(), b.transformer.state_dict().items()):
        assert ka == kb and torch.equal(va, vb), ka
    for (ka, va), (kb, vb) in zip(a.vae.state_dict().items(), b.vae.state_dict().items()):
        assert ka == kb and torch.equal(va, vb), ka


def test_unsupported_switch_is_named():
    base = {"depth": 2, "embed_dim": 128, "num_heads": 2, "text_channels": 256}
    with pytest.raises(ValueError, match="apply_spatial_patchify=2"):
        InfinityConfig.from_kwargs({**base, "apply_spatial_patchify": 2})
    with pytest.raises(ValueError, match="swiglu=True"):
        InfinityConfig.from_kwargs({**base, "swiglu": True})
    # the 8B layout (issue 20): 2x2 VAE cells of 14 bits per token
    cfg = InfinityConfig.from_kwargs({**base, "apply_spatial_patchify": 1}, vae_bits=14)
    assert (cfg.patch, cfg.d_vae, cfg.vae_bits) == (2, 56, 14)


def test_registry_entries_and_missing_weights(tmp_path, monkeypatch):
    monkeypatch.delenv("VARDIST_WEIGHTS", raising=False)
    spec = registry.get_spec("infinity-2b")
    d = spec.defaults
    assert (d.scale, d.n, d.strategy, d.cfg, d.top_k, d.top_p, d.tau, d.alpha, d.k) == \
        (3, 3000, "infinity", 4.0, 900, 0.97, 1.0, 1.0, 100)
    assert spec.condition_kind == "prompt" and spec.num_scales == 13
    with pytest.raises(FileNotFoundError, match="flan-t5-xl"):
        registry.load("infinity-2b", tmp_path)
    (tmp_path / "infinity_2b_reg.pth").write_bytes(b"")
    (tmp_path / "infinity_vae_d32reg.pth").write_bytes(b"")
    snap = tmp_path / "hub" / "models--google--flan-t5-xl" / "snapshots" / "7d6315df"
    snap.mkdir(parents=True)
    (snap.parents[1] / "refs").mkdir()
    (snap.parents[1] / "refs" / "main").write_text(snap.name)  # the revision huggingface_hub takes
    assert registry.find_weight_files(spec, tmp_path) is None  # a folder without config.json is no model
    (snap / "config.json").write_text("{}")
    found = registry.find_weight_files(spec, tmp_path)
    assert found["flan-t5-xl"] == snap and found["infinity_2b_reg.pth"] == tmp_path / "infinity_2b_reg.pth"


def test_tiny_fixture_location_error(tmp_path, monkeypatch):
    monkeypatch.setenv("VARDIST_INFINITY_TINY", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="VARDIST_INFINITY_TINY"):
        registry.load("infinity-tiny", device="cpu")


# -- the scale-wise interface on infinity-tiny ----------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(fixtures_dir):
    pytest.importorskip("transformers")
    return registry.load("infinity-tiny", device="cpu")


def test_identity(tiny):
    assert tiny.family == "infinity" and tiny.code_shape == (32,) and tiny.embed_dim == 32
    assert tiny.condition_kind == "prompt" and tiny.num_scales == 7 and tiny.positions(3) == 36


def test_pool_candidate0_is_plain_sample_and_pools_nest(tiny):
    state = tiny.start(PROMPTS, [3, 4], SMP)
    tiny.run_scales(state, 3)
    pool = tiny.draw_pool(state, 40, chunk=16)
    assert pool.shape == (2, 40, 36, 32) and pool.dtype == torch.uint8 and pool.device.type == "cpu"
    assert set(pool.unique().tolist()) <= {0, 1}
    assert state.next_scale == 3  # drawing a pool does not advance
    assert torch.equal(tiny.draw_pool(state, 25, chunk=7), pool[:, :25])
    assert (pool[0, 1:] != pool[0, :1]).any()  # i.i.d. candidates differ
    emb = tiny.embed(pool)
    assert emb.shape == (2, 40, 36, 32) and emb.dtype == torch.float32 and torch.equal(emb, pool.float())
    plain = tiny.start(PROMPTS, [3, 4], SMP)
    tiny.run_scales(plain, 4)
    assert torch.equal(plain.maps[3], pool[:, 0])
    assert all(torch.equal(a, b) for a, b in zip(plain.maps[:3], state.maps))


def test_resume_equals_direct_continuation(tiny):
    smp = Sampling(cfg=4.0, top_k=900, top_p=0.97, options={"cfg_insertion_layer": -1})
    state = tiny.start(PROMPTS, [5, 6], smp)
    tiny.run_scales(state, 3)
    pool = tiny.draw_pool(state, 12)
    tiny.advance(state, pool[:, 7])
    tiny.run_scales(state, tiny.num_scales)
    resumed = tiny.resume(PROMPTS, [5, 6], smp, maps=state.maps[:4])
    assert resumed.next_scale == 4
    tiny.run_scales(resumed, tiny.num_scales)
    assert all(torch.equal(a, b) for a, b in zip(state.maps, resumed.maps))
    # the decoder's input (the summed codes) is the same, so is the image
    torch.testing.assert_close(resumed.cache.summed, state.cache.summed, atol=1e-6, rtol=0)
    image = tiny.finish(resumed)
    assert image.shape == (2, 256, 256, 3) and image.dtype == torch.uint8


def test_batch_independence(tiny):
    both = tiny.start(PROMPTS, [8, 9], SMP)
    tiny.run_scales(both, tiny.num_scales)
    alone = tiny.start(PROMPTS[1:], [9], SMP)
    tiny.run_scales(alone, tiny.num_scales)
    assert all(torch.equal(a[1:], b) for a, b in zip(both.maps, alone.maps))
    other_seed = tiny.start(PROMPTS[1:], [10], SMP)
    tiny.run_scales(other_seed, 4)
    assert not torch.equal(other_seed.maps[3], alone.maps[3])


def test_bad_input_errors(tiny):
    with pytest.raises(ValueError, match="prompt string"):
        tiny.start([3], [0], SMP)
    with pytest.raises(ValueError, match="one seed per condition"):
        tiny.start(PROMPTS, [0], SMP)
    with pytest.raises(ValueError, match="cfg_insertion_layer"):
        tiny.start(PROMPTS, [0, 1], Sampling(cfg=2.0, options={"cfg_insertion_layer": 1}))
    state = tiny.start(PROMPTS, [0, 1], Sampling())
    with pytest.raises(ValueError, match=r"\(2, 1, 32\)"):
        tiny.advance(state, torch.zeros(2, 4, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="0/1 bits"):
        tiny.advance(state, torch.full((2, 1, 32), 2, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"expected \[L, 256\]"):
        tiny.generate([torch.zeros(3, 100)], cfg=1.0, tau=1.0, top_k=0, top_p=0.0, seeds=[0])


def test_bf16_blocks_path(fixture_parts, fixtures_dir):
    """Blocks stored in bf16 run under autocast (the CUDA default, checked here on the CPU):
    logits with the recorded bits stay within bf16 noise of the fp32 reference."""
    sd, vae_sd, icfg, vcfg = fixture_parts
    c = torch.load(fixtures_dir / "infinity-tiny" / "cases.pt", weights_only=True)
    text = list(c["text_kv_compact"].split(c["text_lens"]))
    g = build(sd, vae_sd, icfg, vcfg, schedule=scale_schedule(1.0, "0.06M"), blocks_dtype=torch.bfloat16)
    assert g.transformer.blocks[0].sa.mat_qkv.weight.dtype == torch.bfloat16
    assert g.transformer.head.weight.dtype == torch.float32  # the head stays fp32, as the reference
    r = c["ar_cfg3"]
    _, _, logits = g.generate(text, cfg=3.0, tau=1.0, top_k=1, top_p=0.0, seeds=[0, 1], decode=False,
                              forced_bits=[b[:, 0] for b in r["bits"]])
    for ours, ref in zip(logits, r["logits"]):
        assert (ours.flatten(2) - ref).abs().max() < 0.2
        assert (ours.argmax(-1) == ref.unflatten(-1, (32, 2)).argmax(-1)).float().mean() > 0.95


def test_flan_t5_from_a_local_folder(tmp_path):
    """The Flan-T5 loader reads a local folder (model + tokenizer files) and never downloads."""
    pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    from vardist.models.infinity.text import flan_t5, tiny_t5

    with pytest.raises(FileNotFoundError, match="google/flan-t5-xl"):
        flan_t5(tmp_path / "missing")
    small = tiny_t5(64, seed=1)
    small.model.save_pretrained(tmp_path)
    tok = Tokenizer(models.WordLevel({"<pad>": 0, "</s>": 1, "<unk>": 2, "a": 3, "red": 4, "car": 5}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                            unk_token="<unk>").save_pretrained(tmp_path)
    enc = flan_t5(tmp_path)
    feats = enc.encode(["a red car", "car"])
    assert [tuple(f.shape) for f in feats] == [(4, 64), (2, 64)]  # tokens + EOS, d_model
    with torch.no_grad():
        ref = small.model(input_ids=torch.tensor([[3, 4, 5, 1]])).last_hidden_state[0]
    torch.testing.assert_close(feats[0], ref, atol=1e-5, rtol=0)
