"""FlexVAR against the reference implementation's outputs on the tiny fixture (protocol and
tolerances from shared/fixtures/flexvar-tiny/README.md)."""

import pytest
import torch

from vardist.models.flexvar import from_fixture
from vardist.models.interface import Sampling


@pytest.fixture(scope="module")
def folder(fixtures_dir):
    return fixtures_dir / "flexvar-tiny"


@pytest.fixture(scope="module")
def model(folder):
    return from_fixture(folder)


@pytest.fixture(scope="module")
def cases(folder):
    return torch.load(folder / "cases.pt", map_location="cpu", weights_only=True)


def _close(a, b, atol):
    assert a.shape == b.shape
    err = (a.float() - b.float()).abs().max().item()
    assert err <= atol, f"max abs error {err:.3g} > {atol}"


@pytest.fixture(scope="module")
def latent(model, cases):
    with torch.inference_mode():
        return model.vae.encode_latent(cases["image_in"])


def test_latent(latent, cases):
    _close(latent, cases["encode_h"], 1e-5)


def test_encode_tokens_every_scale(model, latent, cases):
    for got, want in zip(model.encode(cases["image_in"]), cases["encode_idx"], strict=True):
        assert torch.equal(got, want)
    with torch.inference_mode():  # another schedule, from the same latent (saves an encoder pass)
        tf2 = model.vae.quantize_scales(latent, cases["tf2_schedule"])
    for got, want in zip(tf2, cases["tf2_idx"], strict=True):
        assert torch.equal(got, want)


def test_decode_from_one_scale_unclamped(model, cases):
    img = model.decode(cases["encode_idx"])          # a list: the last scale is decoded
    assert img.abs().max() > 1                       # raw decoder output, not clamped
    _close(img, cases["decode_img"], 1e-3)

def test_decode_another_scale(model, latent, cases):
    """Every scale decodes on its own into a (16 pn)^2 image."""
    with torch.inference_mode():
        idx = model.vae.quantize_scales(latent, [cases["decode_extra_pn"]])[0]
    _close(model.decode(idx), cases["decode_extra_img"], 1e-3)


def test_teacher_forcing_inputs_and_embedding(model, cases):
    _close(model.teacher_forcing_input(cases["encode_idx"]), cases["tf_x_BLCv_wo_first_l"], 1e-5)
    _close(model.teacher_forcing_input(cases["tf2_idx"], cases["tf2_schedule"]),
           cases["tf2_x_BLCv_wo_first_l"], 1e-5)
    t = model.transformer
    with torch.inference_mode():
        emb = t.embed(t.cond(cases["labels"]), cases["tf_x_BLCv_wo_first_l"], t.pos_embed(model.sides))
    _close(emb, cases["tf_x_BLC_embedded"], 1e-5)


def test_teacher_forced_logits_both_schedules(model, cases):
    _close(model.teacher_forced_logits(cases["labels"], cases["encode_idx"]), cases["tf_logits"], 1e-4)
    _close(model.teacher_forced_logits(cases["labels"], cases["tf2_idx"], schedule=cases["tf2_schedule"]),
           cases["tf2_logits"], 1e-4)


def _mode(run):
    return "constant" if run["used_llamagen_cfg"] else "ramp"


def _sampling(run):
    return Sampling(cfg=run["cfg"], top_k=run["top_k"], top_p=run["top_p"],
                    options={"cfg_mode": _mode(run), "max_pn": run["max_pn"]})


# Runs are read from cases["runs"] (no names assumed), so a fixture of other settings works too.
def test_greedy_generation_with_image(model, cases):
    """generate() end to end (tokens and raw image) for the first and the last run."""
    for name in dict.fromkeys([cases["runs"][0], cases["runs"][-1]]):
        run = cases[name]
        img, maps = model.generate(cases["labels"], cfg=run["cfg"], top_k=run["top_k"], top_p=run["top_p"],
                                   seeds=[run["g_seed"]] * run["B"], schedule=run["schedule"],
                                   cfg_mode=_mode(run), max_pn=run["max_pn"])
        assert len(maps) == len(run["idx"]), name
        for si, (got, want) in enumerate(zip(maps, run["idx"])):
            assert torch.equal(got, want), f"{name}: scale {si}"
        _close(img, run["img"], 1e-3)


def test_greedy_tokens_free_running(model, cases):
    """Every run's tokens at every scale (scale-wise path, no decode: images of identical tokens
    are checked above and in the decode tests)."""
    for name in cases["runs"]:
        run = cases[name]
        gen = model.with_schedule(run["schedule"])
        state = gen.start(cases["labels"].tolist(), [run["g_seed"]] * run["B"], _sampling(run))
        gen.run_scales(state, gen.num_scales)
        assert len(state.maps) == len(run["idx"]), name
        for si, (got, want) in enumerate(zip(state.maps, run["idx"])):
            assert torch.equal(got, want), f"{name}: scale {si}"


def test_forced_generation_logits_and_inputs(model, cases):
    """The recorded tokens fed back: CFG-mixed logits and next-scale inputs at every scale."""
    tol = 2e-4
    for name in cases["runs"]:
        run = cases[name]
        gen = model.with_schedule(run["schedule"])
        sampling = _sampling(run)
        state = gen.start(cases["labels"].tolist(), [run["g_seed"]] * run["B"], sampling)
        for si, idx in enumerate(run["idx"]):
            assert gen.sampler_top_k(si, sampling) == run["sampler_top_k"][si], f"{name}: scale {si}"
            logits = gen.next_logits(state)
            if si < len(run["logits"]):
                _close(logits, run["logits"][si], tol)
            top = logits.topk(2, dim=-1)
            _close(top.values, run["logits_top2_values"][si], tol)
            clear = (top.values[..., 0] - top.values[..., 1]) > tol
            assert torch.equal(top.indices[..., 0][clear], run["logits_top2_indices"][si][..., 0][clear])
            gen.advance(state, idx)
            if si + 1 < gen.num_scales:
                with torch.inference_mode():
                    _close(gen.vae.next_input(idx, gen.sides[si + 1]), run["next_input"][si], 1e-5)

