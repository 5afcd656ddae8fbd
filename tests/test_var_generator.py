"""The scale-wise interface of VARGenerator on a small random-weight VAR (any config must work)."""

import pytest
import torch

from vardist.models import Sampling
from vardist.models.var import VARConfig, VARGenerator, VARTransformer, VQVAE, VQVAEConfig

PN = (1, 2, 3, 4)
SAMPLING = Sampling(cfg=1.5, top_k=40, top_p=0.95)


# both AdaLN layouts: one projection per block (d16-d30) and the shared one (d36)
@pytest.fixture(scope="module", params=[False, True], ids=["per-block-aln", "shared-aln"])
def gen(request):
    torch.manual_seed(0)
    vae = VQVAE(VQVAEConfig(vocab_size=64, z_channels=8, ch=32, ch_mult=(1, 2), num_res_blocks=1,
                            share_quant_resi=2, patch_nums=PN))
    var = VARTransformer(VARConfig(depth=2, embed_dim=64, num_heads=2, vocab_size=64, Cvae=8,
                                   num_classes=10, patch_nums=PN, shared_aln=request.param))
    for p in var.parameters():  # make positions and biases matter, as in trained weights
        torch.nn.init.normal_(p, std=0.3)
    return VARGenerator(vae, var)


def _plain(gen, conds, seeds, stop):
    state = gen.start(conds, seeds, SAMPLING)
    gen.run_scales(state, stop)
    return state


def test_schedule_and_shapes(gen):
    assert gen.schedule == tuple((p, p) for p in PN) and gen.embed_dim == 8 and gen.image_size == 8
    images = gen.generate_images([1, 2], [5, 6], SAMPLING)
    assert images.dtype == torch.uint8 and images.shape == (2, 8, 8, 3)


def test_pool_candidate_zero_is_the_plain_sample(gen):
    k = 2
    state = _plain(gen, [3, 7], [11, 12], k)
    pool = gen.draw_pool(state, 30)
    assert pool.shape == (2, 30, 9) and pool.dtype == torch.long
    assert state.next_scale == k  # drawing a pool does not advance
    plain = _plain(gen, [3, 7], [11, 12], k + 1)
    assert torch.equal(pool[:, 0], plain.maps[k])
    assert len({tuple(c) for c in pool[0].tolist()}) > 1  # the draws are not all the same
    gen.advance(state, pool[:, 0])  # strategy "none": candidate 0 gives the plain image
    assert torch.equal(gen.finish(state), gen.finish(plain))


def test_pool_prefix_property_and_chunking(gen):
    state = _plain(gen, [3, 7], [11, 12], 1)
    big = gen.draw_pool(state, 50, chunk=7)
    small = gen.draw_pool(state, 20)
    assert torch.equal(big[:, :20], small)


def test_pool_respects_top_k_top_p(gen):
    state = _plain(gen, [4], [9], 2)
    pool = gen.draw_pool(state, 200)
    allowed = torch.isfinite(state.cache.logits.cpu())  # [1, P, V] after top-k / top-p
    assert allowed.sum(-1).max() <= 40
    assert allowed[0].gather(-1, pool[0].T).all()  # pool[0].T is [P, n]


def test_embed_is_the_codebook(gen):
    state = _plain(gen, [1, 2], [0, 1], 1)
    pool = gen.draw_pool(state, 5)
    emb = gen.embed(pool)
    assert emb.shape == (2, 5, 4, 8) and emb.dtype == torch.float32
    torch.testing.assert_close(emb[1, 3, 2], gen.vae.quantize.embedding.weight[pool[1, 3, 2]])
    with pytest.raises(ValueError, match="token ids"):
        gen.embed(torch.tensor([[64]]))


def test_scale_forward_runs_once(gen, monkeypatch):
    calls = []
    real_step = gen.var.step
    monkeypatch.setattr(gen.var, "step", lambda *a: calls.append(a[2]) or real_step(*a))
    state = _plain(gen, [1], [0], 1)
    pool = gen.draw_pool(state, 8)
    gen.draw_pool(state, 8)
    gen.advance(state, pool[:, 3])
    gen.finish(state)
    assert calls == list(range(len(PN)))


def test_resume_equals_direct_continuation(gen):
    k, conds, seeds = 1, [2, 5, 8], [21, 22, 23]
    state = _plain(gen, conds, seeds, k)
    pool = gen.draw_pool(state, 16)
    gen.advance(state, pool[:, 5])
    direct = gen.finish(state)
    resumed = gen.resume(conds, seeds, SAMPLING, state.maps[: k + 1])
    assert resumed.next_scale == k + 1
    again = gen.finish(resumed)
    for si, (a, b) in enumerate(zip(state.maps, resumed.maps, strict=True)):
        assert torch.equal(a, b), f"scale {si}"
    assert (direct.int() - again.int()).abs().max() <= 1


def test_resume_from_every_scale(gen):
    state = _plain(gen, [6], [4], len(PN))
    for k in range(len(PN)):
        resumed = gen.resume([6], [4], SAMPLING, state.maps[: k + 1])
        gen.run_scales(resumed, len(PN))
        assert all(torch.equal(a, b) for a, b in zip(state.maps, resumed.maps, strict=True)), k


def test_items_independent_of_batch(gen):
    alone = _plain(gen, [7], [99], len(PN))
    img_alone = gen.finish(alone)
    batch = _plain(gen, [1, 7, 3, 7], [5, 99, 6, 100], len(PN))
    img_batch = gen.finish(batch)
    for si in range(len(PN)):
        assert torch.equal(alone.maps[si][0], batch.maps[si][1]), f"scale {si}"
    assert (img_alone[0].int() - img_batch[1].int()).abs().max() <= 1
    # same class, other seed: another image (random weights can make one scale near-greedy)
    assert not all(torch.equal(m[1], m[3]) for m in batch.maps)


def test_bad_input_is_refused(gen):
    with pytest.raises(ValueError, match="class 10"):
        gen.start([10], [0], SAMPLING)
    with pytest.raises(ValueError, match="one seed per condition"):
        gen.start([1, 2], [0], SAMPLING)
    state = _plain(gen, [1], [0], 1)
    with pytest.raises(ValueError, match=r"integer codes \[1, 4\]"):
        gen.advance(state, torch.zeros(1, 9, dtype=torch.long))
    with pytest.raises(ValueError, match="stop must be in 1..4"):
        gen.run_scales(state, 5)
    with pytest.raises(ValueError, match="map 1"):
        gen.resume([1], [0], SAMPLING, [torch.zeros(1, 1, dtype=torch.long), torch.zeros(1, 3, dtype=torch.long)])


def test_low_temperature_is_greedy(gen):
    cold = Sampling(cfg=1.5, top_k=0, top_p=0.0, tau=1e-4)
    state = gen.start([2, 3], [1, 2], cold)
    gen.run_scales(state, 2)
    pool = gen.draw_pool(state, 20)
    greedy = gen.start([2, 3], [1, 2], Sampling(cfg=1.5, top_k=1))
    gen.run_scales(greedy, 3)
    assert torch.equal(state.maps[1], greedy.maps[1])
    assert (pool == greedy.maps[2][:, None]).all()
