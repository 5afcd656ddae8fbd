"""Infinity-8B's path (56-bit tokens, 14-bit patchify VAE, sharded weights) against the reference's
golden outputs in ../shared/fixtures/infinity8b-tiny, by its README's comparison protocol and
tolerances, through the same entry points as infinity-tiny. Every size comes from config.json."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from vardist.models.infinity import from_fixture
from vardist.models.infinity.bsq_vae import bits_to_codes, next_scale_input, patchify_bits, unpatchify_bits
from vardist.models.infinity.generator import to_uint8
from vardist.models.infinity.sharded import read_sharded_state_dict, read_transformer_weights

RUNS = ["ar_cfg1", "ar_cfg3", "ar_cfg3_layer-1"]


@pytest.fixture(scope="module")
def folder(fixtures_dir):
    return fixtures_dir / "infinity8b-tiny"


@pytest.fixture(scope="module")
def config(folder):
    return json.loads((folder / "config.json").read_text())


@pytest.fixture(scope="module")
def cases(folder):
    return torch.load(folder / "cases.pt", weights_only=True)


@pytest.fixture(scope="module")
def model(folder, config):
    # the transformer from the sharded folder, as infinity-8b loads it
    return from_fixture(folder, transformer=config["sharded_checkpoint"]["folder"])


@pytest.fixture(scope="module")
def text(cases):
    return list(cases["text_kv_compact"].split(cases["text_lens"]))


@pytest.fixture(scope="module")
def encoded(model, cases):
    return model.encode(cases["image_in"])


def test_sizes_come_from_the_config(model, config):
    d = config["infinity_derived"]
    cfg = model.transformer.cfg
    assert (cfg.d_vae, 2 * cfg.d_vae, cfg.vae_bits) == (d["d_vae"], d["V"], config["bits_per_vae_code"])
    assert model.code_shape == (config["bits_per_token"],) and model.patch == 2
    assert [list(hw) for hw in model.vae_schedule] == [s[1:] for s in config["vae_scale_schedule"]]
    assert sum(model.positions(s) for s in range(model.num_scales)) == config["seq_len"]


def test_sharded_folder_equals_the_single_file(folder, config):
    """Exact, tensor for tensor, both shards together; and the .pth reads the same way."""
    sc = config["sharded_checkpoint"]
    sharded = read_sharded_state_dict(folder / sc["folder"])
    via_index = read_transformer_weights(folder / sc["folder"] / sc["index"])
    single = read_transformer_weights(folder / "infinity.pth")
    assert list(sharded) == list(single) == list(via_index)
    for k, v in single.items():
        assert sharded[k].dtype == v.dtype and torch.equal(sharded[k], v), k
        assert torch.equal(via_index[k], v), k
    assert sum(t.numel() * t.element_size() for t in sharded.values()) == sc["total_size"]


def test_sharded_folder_errors(folder, config, tmp_path):
    import shutil

    from vardist.models.checkpoint import CheckpointError, UnsafeCheckpoint

    sc = config["sharded_checkpoint"]
    bad = tmp_path / "shards"
    shutil.copytree(folder / sc["folder"], bad)
    (bad / sc["shards"][1]).unlink()
    with pytest.raises(FileNotFoundError, match=sc["shards"][1]):
        read_sharded_state_dict(bad)
    index = json.loads((folder / sc["folder"] / sc["index"]).read_text())
    index["metadata"]["total_size"] += 4
    shutil.copy(folder / sc["folder"] / sc["shards"][1], bad)
    (bad / sc["index"]).write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="total_size"):
        read_sharded_state_dict(bad)
    index["metadata"]["total_size"] -= 4
    good = dict(index["weight_map"])
    for name in ("../" + sc["shards"][0], "..", "/etc/" + sc["shards"][0]):  # names leaving the folder
        index["weight_map"] = {**good, next(iter(good)): name}
        (bad / sc["index"]).write_text(json.dumps(index))
        with pytest.raises(UnsafeCheckpoint, match="not a plain file name"):
            read_sharded_state_dict(bad)
    index["weight_map"] = {k: v.replace(".safetensors", ".bin") for k, v in good.items()}
    (bad / sc["index"]).write_text(json.dumps(index))
    with pytest.raises(UnsafeCheckpoint, match="only safetensors"):
        read_sharded_state_dict(bad)
    # a key the index places in the other shard than the one holding it
    moved = next(k for k, v in good.items() if v == sc["shards"][0])
    index["weight_map"] = {**good, moved: sc["shards"][1]}
    (bad / sc["index"]).write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=f"lacks 1 key.*{moved}"):
        read_sharded_state_dict(bad)
    # a shard holding a key the index does not know
    index["weight_map"] = {k: v for k, v in good.items() if k != moved}
    (bad / sc["index"]).write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=f"holds 1 key.*{moved}.*no entry"):
        read_sharded_state_dict(bad)
    index["weight_map"] = good
    (bad / sc["index"]).write_text(json.dumps(index))
    assert torch.equal(read_sharded_state_dict(bad)[moved], read_transformer_weights(folder / "infinity.pth")[moved])
    (bad / sc["shards"][1]).write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00not json")  # truncated download
    with pytest.raises(CheckpointError, match=f"{sc['shards'][1]} is not a readable safetensors file"):
        read_sharded_state_dict(bad)
    (bad / sc["index"]).write_text(json.dumps({"weight_map": list(good)}))
    with pytest.raises(CheckpointError, match="must map every key to a shard file name"):
        read_sharded_state_dict(bad)
    with pytest.raises(FileNotFoundError, match="safetensors index"):
        read_transformer_weights(tmp_path)


def test_layouts_are_pixel_unshuffle(cases, model):
    """bits_tokens = pixel_unshuffle(bits), tf_gt_bits = that of vae_encode_bits, exactly; channel
    k of token (y, x) is bit k // 4 of VAE cell (2y + (k % 4) // 2, 2x + k % 2)."""
    r = cases["ar_cfg3"]
    for s, (vae, tok) in enumerate(zip(r["bits"], r["bits_tokens"])):
        assert torch.equal(model.token_bits(vae, s), tok)
        h, w = model.schedule[s]
        assert torch.equal(unpatchify_bits(tok.view(-1, h, w, tok.shape[-1]), 2), vae[:, 0])
    gt = torch.cat([model.token_bits(b, s) for s, b in enumerate(cases["vae_encode_bits"])], 1)
    assert torch.equal(gt.long(), cases["tf_gt_bits"].long())
    grid = torch.arange(2 * 4 * 6 * 3).reshape(2, 4, 6, 3)          # [B, 2h, 2w, c]
    tok = patchify_bits(grid, 2)
    y, x, k = 1, 2, 7
    assert tok[0, y, x, k] == grid[0, 2 * y + (k % 4) // 2, 2 * x + k % 2, k // 4]


def test_vae_encode_bits_exact(model, encoded, cases):
    assert len(encoded) == len(cases["vae_encode_bits"])
    for s, (ours, ref) in enumerate(zip(encoded, cases["vae_encode_bits"])):
        assert ours.shape == ref[:, 0].shape and torch.equal(ours.long(), ref[:, 0].long()), f"scale {s}"
    raw = model.vae.encoder(cases["image_in"])
    torch.testing.assert_close(raw, cases["vae_raw_features"], atol=1e-4, rtol=0)
    _, z = model.vae.encode_bits(cases["image_in"], model.vae_schedule)
    torch.testing.assert_close(z, cases["vae_encode_z"], atol=1e-5, rtol=0)


def test_vae_decode(model, encoded, cases):
    torch.testing.assert_close(model.vae.codes_from_bits(encoded), cases["vae_codes_from_bits"][:, :, 0],
                               atol=1e-6, rtol=0)
    torch.testing.assert_close(model.decode_bits(encoded), cases["vae_decode_from_bits_img"], atol=1e-3, rtol=0)
    # the same images from the token layout
    tokens = [model.token_bits(b, s) for s, b in enumerate(encoded)]
    assert torch.equal(model.decode_bits(tokens), model.decode_bits(encoded))
    torch.testing.assert_close(model.vae.decode(cases["vae_encode_z"]), cases["vae_decode_img"], atol=1e-3, rtol=0)


def test_next_scale_inputs_and_teacher_forcing_inputs(model, cases):
    """The word_embed inputs from the recorded bits equal the reference's (resample the 14-channel
    sum on the VAE grid, then pixel-unshuffle)."""
    r = cases["ar_cfg3"]
    H, W = model.vae_schedule[-1]
    summed = torch.zeros(2, model.transformer.cfg.vae_bits, H, W)
    xs = []
    for s, b in enumerate(r["bits"][:-1]):
        codes = bits_to_codes(b[:, 0]).permute(0, 3, 1, 2)
        summed, inp = next_scale_input(summed, codes, model.vae_schedule[s + 1], patch=2)
        torch.testing.assert_close(inp, r["next_input"][s], atol=1e-6, rtol=0)
    summed = torch.zeros_like(summed)
    for s, b in enumerate(cases["vae_encode_bits"][:-1]):
        summed, inp = next_scale_input(summed, bits_to_codes(b[:, 0]).permute(0, 3, 1, 2),
                                       model.vae_schedule[s + 1], patch=2)
        xs.append(inp)
    torch.testing.assert_close(torch.cat(xs, 1), cases["tf_x_BLC_wo_prefix"], atol=1e-6, rtol=0)
    # patchifying first and then resampling the 56-channel grid is not the same (README)
    h, w = (v // 2 for v in model.vae_schedule[3])
    patched = F.pixel_unshuffle(summed, 2).unsqueeze(2)
    wrong = F.interpolate(patched, size=(1, h, w), mode="trilinear").squeeze(2)
    assert wrong.flatten(2).transpose(1, 2).shape == xs[2].shape
    assert not torch.allclose(wrong.flatten(2).transpose(1, 2), xs[2], atol=1e-4)


def test_teacher_forced_logits(model, text, cases, config):
    logits = model.teacher_forced_logits(text, cases["vae_encode_bits"])   # as stored: [B, 1, 2h, 2w, 14]
    assert logits.shape == (config["batch"], config["seq_len"], config["bits_per_token"], 2)
    torch.testing.assert_close(logits.flatten(2), cases["tf_logits"], atol=5e-3, rtol=0)
    t = model.transformer.encode_text(text, guided=False)
    torch.testing.assert_close(t.sos, cases["tf_sos"], atol=1e-4, rtol=0)


@pytest.mark.parametrize("run", RUNS)
def test_generation_with_recorded_bits(model, text, cases, run):
    """gt_leak protocol with the recorded bits as stored (VAE layout with the time axis): logits to
    5e-3 (cfg 1) / 1e-2 (cfg > 1), argmax agrees where the reference margin exceeds the tolerance,
    images to 1e-3 float and one uint8 level."""
    r = cases[run]
    img, bits, logits = model.generate(text, cfg=r["cfg_list"][0], tau=r["tau_list"][0], top_k=1, top_p=0.0,
                                       seeds=[0, 1], cfg_insertion_layer=r["cfg_insertion_layer"][0],
                                       forced_bits=r["bits"])
    tol = 5e-3 if r["cfg_list"][0] == 1 else 1e-2
    for s, (ours, ref, ref_tok) in enumerate(zip(logits, r["logits"], r["bits_tokens"])):
        ref = ref.unflatten(-1, (-1, 2))
        torch.testing.assert_close(ours, ref, atol=tol, rtol=0, msg=f"{run} scale {s}")
        confident = (ref[..., 1] - ref[..., 0]).abs() > tol
        assert torch.equal(ours.argmax(-1)[confident], ref_tok[confident])
    assert all(torch.equal(a.long(), b[:, 0].long()) for a, b in zip(bits, r["bits"]))
    torch.testing.assert_close(model.decode_bits(bits), r["img_float"], atol=1e-3, rtol=0)
    assert (img.int() - r["img_uint8_bgr"].flip(-1).int()).abs().max() <= 1
    assert torch.equal(img, to_uint8(model.decode_bits(bits)))


@pytest.mark.parametrize("run", RUNS)
def test_free_running_greedy_bits(model, text, cases, run):
    """Free-running bits match exactly up to the first scale whose reference margin falls below
    our logit error (README: every run has margins near 1e-5 later on, so later scales may
    cascade); overall, nearly every bit agrees."""
    r = cases[run]
    tol = 5e-3 if r["cfg_list"][0] == 1 else 1e-2
    _, bits, _ = model.generate(text, cfg=r["cfg_list"][0], tau=r["tau_list"][0], top_k=1, top_p=0.0,
                                seeds=[0, 1], cfg_insertion_layer=r["cfg_insertion_layer"][0], decode=False)
    safe = next(s for s, m in enumerate(r["min_margin"]) if m < tol)
    for s in range(safe + 1):  # the first risky scale still sees the reference's earlier bits
        assert torch.equal(bits[s].long(), r["bits"][s][:, 0]), f"{run}: scale {s}"
    agree = sum(int((a.long() == b[:, 0]).sum()) for a, b in zip(bits, r["bits"]))
    assert agree / sum(b.numel() for b in bits) > 0.99


def test_other_sizes_aspect_ratios_and_settings(model, text, config):
    """The same path at another aspect ratio and pn with sampling (top-k/top-p, tau, cfg on a
    block): token and VAE grids follow the template, bits are 0/1, images have the right size."""
    g = model.for_schedule(h_div_w=0.5, pn="0.06M")
    assert g.schedule[-1] == (11, 22) and g.vae_schedule[-1] == (22, 44)
    img, bits, logits = g.generate(text, cfg=4.0, tau=0.5, top_k=900, top_p=0.97, seeds=[3, 4],
                                   cfg_insertion_layer=-2)
    assert img.shape == (2, 176, 352, 3) and img.dtype == torch.uint8
    assert bits[-1].shape == (2, 22, 44, config["bits_per_vae_code"])
    assert logits[-1].shape == (2, 11 * 22, config["bits_per_token"], 2)
    assert set(torch.cat([b.flatten() for b in bits]).tolist()) <= {0, 1}
    again = g.generate(text, cfg=4.0, tau=0.5, top_k=900, top_p=0.97, seeds=[3, 4], cfg_insertion_layer=-2)
    assert torch.equal(again[0], img)  # same seeds, same bytes


def test_bad_bit_layout_is_named(model, text, config):
    c, d = config["bits_per_vae_code"], config["bits_per_token"]
    bits = [torch.zeros(2, 3, 3, c, dtype=torch.uint8)] * model.num_scales
    with pytest.raises(ValueError, match=rf"\[B, 1, {d}\].*\[B, 2, 2, {c}\]"):
        model.generate(text, cfg=1.0, tau=1.0, top_k=1, top_p=0.0, seeds=[0, 1], forced_bits=bits)
    with pytest.raises(ValueError, match=f"all {len(config['scale_schedule'])} scales"):
        model.generate(text, cfg=1.0, tau=1.0, top_k=1, top_p=0.0, seeds=[0, 1], forced_bits=bits[:3])


# -- the full-size layout, on the meta device --------------------------------------------------------
def reference_shapes(C: int, Ct5: int, heads: int, hidden: int, depth: int, chunks: int, d_vae: int,
                     text_maxlen: int = 512, levels: int = 15) -> dict[str, tuple[int, ...]]:
    """The transformer state dict's keys and shapes as the fixture README states them: the 2B
    key names, blocks as block_chunks.<k // per_chunk>.module.<k % per_chunk>, the text pool with
    head_dim 128 over the T5 width (Ct5 / 128 heads of C / (Ct5 / 128) dims), the blocks' cross
    attention reading text projected to C."""
    pool_heads = Ct5 // 128
    out = {"cfg_uncond": (text_maxlen, Ct5), "pos_start": (1, 1, C), "text_norm.weight": (Ct5,),
           "text_proj_for_sos.ca.mat_q": (1, pool_heads, C // pool_heads),
           "text_proj_for_sos.ca.v_bias": (C,), "text_proj_for_sos.ca.zero_k_bias": (C,),
           "text_proj_for_sos.ca.mat_kv.weight": (2 * C, Ct5),
           "text_proj_for_sos.ca.proj.weight": (C, C), "text_proj_for_sos.ca.proj.bias": (C,),
           "text_proj_for_ca.0.weight": (C, Ct5), "text_proj_for_ca.0.bias": (C,),
           "text_proj_for_ca.2.weight": (C, C), "text_proj_for_ca.2.bias": (C,),
           "lvl_embed.weight": (levels, C), "word_embed.weight": (C, d_vae), "word_embed.bias": (C,),
           "shared_ada_lin.1.weight": (6 * C, C), "shared_ada_lin.1.bias": (6 * C,),
           "head_nm.ada_lin.1.weight": (2 * C, C), "head_nm.ada_lin.1.bias": (2 * C,),
           "head.weight": (2 * d_vae, C), "head.bias": (2 * d_vae,)}
    block = {"ada_gss": (1, 1, 6, C), "sa.scale_mul_1H11": (1, heads, 1, 1), "sa.q_bias": (C,),
             "sa.v_bias": (C,), "sa.zero_k_bias": (C,), "sa.mat_qkv.weight": (3 * C, C),
             "sa.proj.weight": (C, C), "sa.proj.bias": (C,), "ca.v_bias": (C,), "ca.zero_k_bias": (C,),
             "ca.mat_q.weight": (C, C), "ca.mat_q.bias": (C,), "ca.mat_kv.weight": (2 * C, C),
             "ca.proj.weight": (C, C), "ca.proj.bias": (C,), "ffn.fc1.weight": (hidden, C),
             "ffn.fc1.bias": (hidden,), "ffn.fc2.weight": (C, hidden), "ffn.fc2.bias": (C,),
             "ca_norm.weight": (C,), "ca_norm.bias": (C,)}
    per = depth // chunks
    for k in range(depth):
        out.update({f"block_chunks.{k // per}.module.{k % per}.{n}": s for n, s in block.items()})
    return out


def test_reference_shapes_rule_matches_the_fixture(folder, config):
    """The rule above reproduces the reference's own (tiny, 8B-path) state dict exactly, where the
    T5 width differs from the model width and so every shape is told apart."""
    kw = config["infinity_kwargs"]
    C = kw["embed_dim"]
    want = reference_shapes(C, kw["text_channels"], kw["num_heads"], round(C * kw["mlp_ratio"] / 256) * 256,
                            kw["depth"], kw["block_chunks"], config["bits_per_token"], kw["text_maxlen"])
    got = {k: tuple(v.shape) for k, v in read_transformer_weights(folder / "infinity.pth").items()}
    assert got == want


@pytest.mark.parametrize("name", ["infinity-8b", "infinity-8b-512"])
def test_official_8b_keys_and_shapes_on_meta(name, folder):
    """Depth 40 in 8 chunks of 5, width 3584, 28 heads, FFN 14336, flan-t5-xl's 2048-wide text,
    56 bits per token (README table: word_embed [C, 56], head [112, C], scale_mul [1, 28, 1, 1],
    text pool mat_q [1, 16, 224], fc1 [14336, 3584]); both resolutions share the layout."""
    from vardist.models.infinity import BSQVAE, Infinity
    from vardist.models.infinity.specs import official_configs

    icfg, vcfg = official_configs(name)
    with torch.device("meta"):
        model, vae = Infinity(icfg), BSQVAE(vcfg)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    want = reference_shapes(3584, 2048, 28, 14336, 40, 8, 56)
    assert got == want and len(got) == 22 + 40 * 21
    assert got["text_proj_for_sos.ca.mat_q"] == (1, 16, 224) and got["head.weight"] == (112, 3584)
    # the 14-bit patchify VAE: the key names of the fixture's (same levels and block counts) but
    # for the 1x1 shortcuts, which sit where a level changes width: 128 x (1, 2, 4, 4) channels
    # widen at encoder levels 1, 2 and narrow at decoder levels 1, 0; 14 latent channels, stride 8
    vsd = {k: tuple(v.shape) for k, v in vae.state_dict().items()}
    fixture = torch.load(folder / "vae.pth", weights_only=True)["vae"]
    plain = lambda keys: {k for k in keys if "nin_shortcut" not in k and not k.endswith("lfq.mask")}  # noqa: E731
    assert plain(vsd) == plain(fixture)
    assert {k.rsplit(".nin_shortcut", 1)[0] for k in vsd if "nin_shortcut" in k} == {
        "encoder.down.1.block.0", "encoder.down.2.block.0", "decoder.up.1.block.0", "decoder.up.0.block.0"}
    assert vsd["encoder.conv_in.conv.weight"] == (128, 3, 3, 3)
    assert vsd["encoder.conv_out.conv.weight"] == (14, 512, 3, 3)
    assert vsd["decoder.conv_in.conv.weight"] == (512, 14, 3, 3)
    assert vsd["decoder.conv_out.conv.weight"] == (3, 128, 3, 3)
    assert vae.downsample == 8


def test_registry_entries(tmp_path, monkeypatch):
    from vardist.models import registry

    monkeypatch.delenv("VARDIST_WEIGHTS", raising=False)
    for name, scales in (("infinity-8b", 13), ("infinity-8b-512", 10)):
        spec = registry.get_spec(name)
        d = spec.defaults
        assert (d.scale, d.n, d.strategy, d.cfg, d.top_k, d.top_p, d.tau) == (3, 3000, "infinity", 4.0, 900, 0.97, 1.0)
        assert spec.num_scales == scales and spec.condition_kind == "prompt"
        folder = "infinity_8b_512x512_weights" if name.endswith("512") else "infinity_8b_weights"
        assert spec.files == (folder, "infinity_vae_d56_f8_14_patchify.pth", "flan-t5-xl")
        with pytest.raises(FileNotFoundError, match=folder):
            registry.load(name, tmp_path)


@pytest.mark.parametrize("form", ["sharded folder", "single pth", "both"])
def test_registry_loads_8b_from_either_transformer_form(form, folder, config, model, tmp_path, monkeypatch):
    """`load("infinity-8b", DIR)` (what `vardist search --weights DIR` calls) with the fixture's
    weights under the official names: the transformer as the folder infinity_8b_weights/, as one
    infinity_8b_weights.pth, or both (the folder is read). Only the sizes are the fixture's: the
    registry lookup and build_8b are the real ones."""
    import shutil

    from vardist.models import registry
    from vardist.models.checkpoint import read_json_config
    from vardist.models.infinity import specs
    from vardist.models.infinity.generator import fixture_configs
    from vardist.models.infinity.text import tiny_t5

    monkeypatch.delenv("VARDIST_WEIGHTS", raising=False)
    sizes = fixture_configs(read_json_config(folder / "config.json"))
    monkeypatch.setattr(specs, "official_configs", lambda name: sizes)
    width = config["infinity_kwargs"]["text_channels"]
    monkeypatch.setattr(specs, "_text_encoder", lambda path, device, text_device: tiny_t5(width, device=device))
    w = tmp_path / "weights"
    w.mkdir()
    shutil.copy(folder / "vae.pth", w / specs.VAE_8B)
    (w / specs.T5_FOLDER).mkdir()
    (w / specs.T5_FOLDER / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"infinity_8b_weights \(or infinity_8b_weights\.pth\)"):
        registry.load("infinity-8b", w, device="cpu", pn=config["pn"])
    if form != "single pth":
        shutil.copytree(folder / config["sharded_checkpoint"]["folder"], w / specs.TRANSFORMER_8B)
    if form != "sharded folder":
        # with the folder there, the .pth name holds another file: it must not be read
        src = folder / "infinity.pth" if form == "single pth" else folder / "vae.pth"
        shutil.copy(src, w / f"{specs.TRANSFORMER_8B}.pth")
    loaded = registry.load("infinity-8b", w, device="cpu", pn=config["pn"])
    assert [list(hw) for hw in loaded.schedule] == [s[1:] for s in config["scale_schedule"]]
    for mine, ref in ((loaded.transformer, model.transformer), (loaded.vae, model.vae)):
        a, b = mine.state_dict(), ref.state_dict()
        assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_bf16_blocks_load_as_the_cast_of_fp32(folder, model):
    """Blocks built in bf16 before loading (what CUDA builds do, to halve 8B's host memory) hold
    exactly the bf16 rounding of the fp32 weights; the rest stays fp32."""
    from vardist.models.checkpoint import read_state_dict
    from vardist.models.infinity.generator import build, fixture_configs

    icfg, vcfg = fixture_configs(json.loads((folder / "config.json").read_text()))
    bf16 = build(read_transformer_weights(folder / "infinity.pth"),
                 read_state_dict(folder / "vae.pth", unwrap=("vae",)), icfg, vcfg,
                 blocks_dtype=torch.bfloat16).transformer
    for (k, a), (k2, b) in zip(bf16.state_dict().items(), model.transformer.state_dict().items()):
        assert k == k2 and a.dtype == (torch.bfloat16 if k.startswith("block_chunks.") else torch.float32), k
        assert torch.equal(a, b.to(a.dtype)), k


def test_8b_memory_plan_per_gpu_class():
    """What fits per actor at the defaults (n 3000 at scale 3, cfg 4: two rows per image) in bf16:
    the 1024 model holds 4 images on an 80 GB GPU and 1 on a 40 GB one, none on 24 GB; a Ray
    actor, which claims a whole GPU, is planned and refused with these numbers."""
    from vardist.models import memory

    fp = memory.footprint("infinity-8b")
    assert memory.wants_gpu(fp) and fp.code_values == 56 and fp.logits_per_position == 112
    assert fp.params == 8_376_082_128 + 81_624_209 + memory.FLAN_T5_XL.params
    d = dict(n=3000, scale=3, cfg=4.0)
    assert [memory.largest_batch(fp, s * memory.GB, **d) for s in (24, 40, 80)] == [0, 1, 4]
    with pytest.raises(memory.MemoryPlanError, match="--batch-size 4"):
        memory.check_fits(fp, 80 * memory.GB, batch=8, **d)
    small = memory.footprint("infinity-8b-512")
    assert memory.largest_batch(small, 80 * memory.GB, **d) > 4 * memory.largest_batch(fp, 80 * memory.GB, **d)
