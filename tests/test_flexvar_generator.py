"""FlexVARGenerator behind the scale-wise interface: pools, continuation, resume, batch
independence, schedules and input checks (tiny fixture model, real sampling)."""

import pytest
import torch

from vardist.models.flexvar import FlexVARGenerator, from_fixture
from vardist.models.interface import Sampling

SAMPLING = Sampling(cfg=2.5, top_k=50, top_p=0.95)
LABELS, SEEDS = [207, 980, 3], [11, 12, 13]


@pytest.fixture(scope="module")
def model(fixtures_dir):
    return from_fixture(fixtures_dir / "flexvar-tiny")


@pytest.fixture(scope="module")
def plain(model):
    """Token maps of plain generation (no decode)."""
    state = model.start(LABELS, SEEDS, SAMPLING)
    model.run_scales(state, model.num_scales)
    return state.maps


def test_interface_attributes(model):
    assert isinstance(model, FlexVARGenerator) and model.family == "flexvar"
    assert model.schedule == tuple((p, p) for p in (1, 2, 3, 4, 5, 6, 8, 10, 13, 16))
    assert model.embed_dim == 32 and model.code_shape == () and model.num_classes == 1000
    assert model.image_size == 256


def test_pool_candidate0_is_the_plain_sample_and_pools_nest(model, plain):
    state = model.start(LABELS, SEEDS, SAMPLING)
    model.run_scales(state, 2)
    pool = model.draw_pool(state, 12, chunk=5)
    assert pool.shape == (3, 12, 9) and pool.dtype == torch.int64
    assert torch.equal(pool[:, 0], plain[2])
    assert torch.equal(model.draw_pool(state, 4), pool[:, :4])
    assert len({tuple(r.tolist()) for r in pool[0]}) > 1          # real draws, not copies
    # continuing from candidate 0 is plain generation
    model.advance(state, pool[:, 0])
    model.run_scales(state, model.num_scales)
    for a, b in zip(state.maps, plain, strict=True):
        assert torch.equal(a, b)


def test_resume_equals_direct_continuation(model, plain):
    for k in (1, 3, model.num_scales - 1):
        state = model.resume(LABELS, SEEDS, SAMPLING, plain[:k])
        assert state.next_scale == k
        model.run_scales(state, model.num_scales)
        for si, (a, b) in enumerate(zip(state.maps, plain, strict=True)):
            assert torch.equal(a, b), f"resumed after {k} maps: scale {si} differs"


def test_resume_logits_match_the_kv_cache_path(model, plain):
    direct = model.start(LABELS, SEEDS, SAMPLING)
    model.run_scales(direct, 4)
    resumed = model.resume(LABELS, SEEDS, SAMPLING, plain[:4])
    torch.testing.assert_close(model.next_logits(resumed), model.next_logits(direct), atol=1e-4, rtol=0)


def test_items_do_not_depend_on_their_batch(model, plain):
    alone = model.start(LABELS[1:2], SEEDS[1:2], SAMPLING)
    model.run_scales(alone, model.num_scales)
    for a, b in zip(alone.maps, plain, strict=True):
        assert torch.equal(a[0], b[1])


def test_finish_decodes_the_last_scale_to_uint8(model, plain):
    state = model.resume(LABELS[:1], SEEDS[:1], SAMPLING, [m[:1] for m in plain])
    img = model.finish(state)
    assert img.shape == (1, 256, 256, 3) and img.dtype == torch.uint8
    raw = model.decode(plain[-1][:1])
    want = ((raw.clamp(-1, 1) + 1) / 2 * 255 + 0.5).to(torch.uint8).permute(0, 2, 3, 1)
    assert torch.equal(img, want)


def test_embed_is_the_normalised_codebook_rows(model, plain):
    codes = plain[2]
    emb = model.embed(codes)
    assert emb.shape == (3, 9, 32) and emb.dtype == torch.float32
    w = model.vae.quantize.embedding.weight.detach()
    torch.testing.assert_close(emb, w[codes] / w[codes].norm(dim=-1, keepdim=True))
    assert model.embed(codes[:, None]).shape == (3, 1, 9, 32)
    with pytest.raises(ValueError, match="token ids in 0..199"):
        model.embed(torch.full((1, 9), 200))


def test_cfg_modes_differ_and_guidance_changes_logits(model):
    logits = {}
    for mode in ("ramp", "constant"):
        state = model.start(LABELS[:1], SEEDS[:1], Sampling(cfg=2.5, options={"cfg_mode": mode}))
        logits[mode] = model.next_logits(state)
    # scale 0: the ramp has t = 0 (pure conditional), the constant mix guides already
    assert not torch.allclose(logits["ramp"], logits["constant"])
    hot = model.start(LABELS[:1], SEEDS[:1], Sampling(cfg=2.5, tau=2.0, options={"cfg_mode": "constant"}))
    torch.testing.assert_close(model.next_logits(hot), logits["constant"] / 2)


def test_schedule_chosen_at_construction_and_forced_greedy_sides(model):
    steps13 = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 14, 16)
    gen = FlexVARGenerator(model.vae, model.transformer, schedule=steps13)
    assert gen.num_scales == 13 and gen.positions(6) == 49
    sampling = Sampling(cfg=2.5, top_k=0, top_p=0.0)
    assert [gen.sampler_top_k(si, sampling) for si in range(13)] == [0] * 6 + [1, 0, 1, 0, 1, 1, 0]
    state = gen.start([5], [0], sampling)
    gen.run_scales(state, 6)
    want = gen.next_logits(state).argmax(-1)          # side 7 is not a trained size: greedy
    gen.run_scales(state, 7)
    assert torch.equal(state.maps[6], want)
    # a side above max_pn is greedy too
    assert gen.sampler_top_k(12, Sampling(options={"max_pn": 14})) == 1


@pytest.mark.parametrize("schedule", [(2, 3, 4), (1,), (1, 3, 3), "abc"])
def test_bad_schedule_is_refused(model, schedule):
    with pytest.raises(ValueError, match="schedule must start at 1"):
        model.with_schedule(schedule)


def test_bad_input_is_refused(model):
    with pytest.raises(ValueError, match="class 1000 is outside"):
        model.start([1000], [0], SAMPLING)
    with pytest.raises(ValueError, match="one seed per condition"):
        model.start([1, 2], [0], SAMPLING)
    with pytest.raises(ValueError, match="cfg_mode must be one of"):
        model.start([1], [0], Sampling(options={"cfg_mode": "llamagen"}))
    with pytest.raises(ValueError, match="unknown FlexVAR sampling options"):
        model.start([1], [0], Sampling(options={"temperature": 2}))
    state = model.start([1], [0], SAMPLING)
    with pytest.raises(ValueError, match=r"shape \(1, 1\)"):
        model.advance(state, torch.zeros(1, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="token ids must be in 0..199"):
        model.advance(state, torch.full((1, 1), 500))
    with pytest.raises(ValueError, match="resume needs 1..10"):
        model.resume([1], [0], SAMPLING, [])
    with pytest.raises(ValueError, match="do not match the schedule"):
        model.teacher_forced_logits([1], [torch.zeros(1, 1, dtype=torch.long)] * 3)
