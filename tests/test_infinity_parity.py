"""Infinity against the reference's golden outputs (../shared/fixtures/infinity-tiny), following
the fixture README's comparison protocol and tolerances."""

from __future__ import annotations

import pytest
import torch

from vardist.models.infinity import from_fixture
from vardist.models.infinity.generator import to_uint8
from vardist.models.infinity.transformer import _bf16_attention

RUNS = ["ar_cfg1", "ar_cfg3", "ar_cfg3_layer-1"]


@pytest.fixture(scope="module")
def cases(fixtures_dir):
    return torch.load(fixtures_dir / "infinity-tiny" / "cases.pt", weights_only=True)


@pytest.fixture(scope="module")
def model(fixtures_dir):
    return from_fixture(fixtures_dir / "infinity-tiny")


@pytest.fixture(scope="module")
def text(cases):
    return list(cases["text_kv_compact"].split(cases["text_lens"]))


@pytest.fixture(scope="module")
def encoded(model, cases):
    with torch.no_grad():
        return model.vae.encode_bits(cases["image_in"], model.schedule)


def test_vae_encode_bits_exact(encoded, cases):
    bits, z = encoded
    assert len(bits) == len(cases["vae_encode_bits"]) == 7
    for s, (ours, ref) in enumerate(zip(bits, cases["vae_encode_bits"])):
        assert torch.equal(ours.long(), ref[:, 0].long()), f"scale {s}"
    torch.testing.assert_close(z, cases["vae_encode_z"], atol=1e-5, rtol=0)


def test_vae_decode(model, encoded, cases):
    bits, _ = encoded
    torch.testing.assert_close(model.vae.codes_from_bits(bits), cases["vae_codes_from_bits"][:, :, 0], atol=1e-6, rtol=0)
    torch.testing.assert_close(model.decode_bits(bits), cases["vae_decode_from_bits_img"], atol=1e-3, rtol=0)
    torch.testing.assert_close(model.vae.decode(cases["vae_encode_z"]), cases["vae_decode_img"], atol=1e-3, rtol=0)


def test_public_encode_matches_encode_bits(model, encoded, cases):
    assert all(torch.equal(a, b) for a, b in zip(model.encode(cases["image_in"]), encoded[0]))


def test_teacher_forced_logits(model, text, cases):
    bits = [b[:, 0] for b in cases["vae_encode_bits"]]
    logits = model.teacher_forced_logits(text, bits)
    assert logits.shape == (2, 521, 32, 2)
    torch.testing.assert_close(logits.flatten(2), cases["tf_logits"], atol=5e-3, rtol=0)


def test_text_path(model, text, cases):
    t = model.transformer.encode_text(text, guided=False)
    torch.testing.assert_close(t.sos, cases["tf_sos"], atol=1e-4, rtol=0)
    m = model.transformer
    ca = m.text_proj_for_ca(m.text_norm(cases["text_kv_compact"]))
    torch.testing.assert_close(ca, cases["tf_ca_kv"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("call", [0, 1])
def test_cross_attention_kernel_on_reference_inputs(cases, call):
    """Same bf16 inputs as the reference's varlen call: equal up to rare single bf16 ulps."""
    c = cases["tf_xattn_calls"][call]
    cq, ck = c["cu_seqlens_q"].tolist(), c["cu_seqlens_k"].tolist()
    for b in range(len(cq) - 1):
        q = c["q"][cq[b]:cq[b + 1]].transpose(0, 1)[None]            # [1, H, Lq, hd]
        k, v = c["kv"][ck[b]:ck[b + 1]].unbind(1)
        out = _bf16_attention(q, k.transpose(0, 1)[None], v.transpose(0, 1)[None], None, c["softmax_scale"])
        ref = c["out"][cq[b]:cq[b + 1]].transpose(0, 1)[None].float()
        ulp = ref.abs().clamp(min=1e-30) * 2 ** -7
        assert bool(((out - ref).abs() <= ulp + 1e-30).all())
        assert (out == ref).float().mean() > 0.99


@pytest.mark.parametrize("run", RUNS)
def test_generation_with_recorded_bits(model, text, cases, run):
    """gt_leak protocol: logits to 5e-3 (cfg 1) / 1e-2 (cfg > 1), argmax agrees where the
    reference margin exceeds the tolerance, images to 1e-3 float and one uint8 level."""
    r = cases[run]
    ref_bits = [b[:, 0] for b in r["bits"]]
    _, bits, logits = model.generate(text, cfg=r["cfg_list"][0], tau=r["tau_list"][0], top_k=1, top_p=0.0,
                                     seeds=[0, 1], cfg_insertion_layer=r["cfg_insertion_layer"][0],
                                     forced_bits=ref_bits, decode=False)
    tol = 5e-3 if r["cfg_list"][0] == 1 else 1e-2
    for s, (ours, ref) in enumerate(zip(logits, r["logits"])):
        ref = ref.unflatten(-1, (32, 2))
        torch.testing.assert_close(ours, ref, atol=tol, rtol=0, msg=f"{run} scale {s}")
        confident = (ref[..., 1] - ref[..., 0]).abs() > tol
        assert torch.equal(ours.argmax(-1)[confident], ref.argmax(-1)[confident])
    assert all(torch.equal(a.long(), b.long()) for a, b in zip(bits, ref_bits))
    img = model.decode_bits(bits)
    torch.testing.assert_close(img, r["img_float"], atol=1e-3, rtol=0)
    diff = (to_uint8(img).int() - r["img_uint8_bgr"].flip(-1).int()).abs()
    assert diff.max() <= 1


@pytest.mark.parametrize("run", RUNS)
def test_free_running_greedy_bits_exact(model, text, cases, run):
    r = cases[run]
    _, bits, _ = model.generate(text, cfg=r["cfg_list"][0], tau=r["tau_list"][0], top_k=1, top_p=0.0,
                                seeds=[0, 1], cfg_insertion_layer=r["cfg_insertion_layer"][0], decode=False)
    for s, (ours, ref) in enumerate(zip(bits, r["bits"])):
        assert torch.equal(ours.long(), ref[:, 0]), f"{run}: bits differ at scale {s}"


def test_next_scale_inputs(model, text, cases):
    """The word_embed inputs rebuilt from the recorded bits equal the reference's."""
    from vardist.models.infinity.bsq_vae import bits_to_codes, next_scale_input

    r = cases["ar_cfg3"]
    summed = torch.zeros(2, 32, 16, 16)
    for s, b in enumerate(r["bits"][:-1]):
        codes = bits_to_codes(b[:, 0]).permute(0, 3, 1, 2)
        summed, inp = next_scale_input(summed, codes, model.schedule[s + 1])
        torch.testing.assert_close(inp, r["next_input"][s], atol=1e-6, rtol=0)
