"""`preview` (the accumulated latent decoded between scales) and `fork` (several continuations of
one partial generation) for every family: VAR (toy-digits, var-tiny), FlexVAR (flexvar-tiny),
Infinity (infinity-tiny) and the two test doubles.

Byte comparisons of a forked population are made against an unforked run of the same batch
composition: on the CPU a float kernel may move a pixel by one level between batch sizes
(docs/search.md), which is about the batch, not about forking."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ray_toy_model import ToyScaleModel
from scalewise_double import DoubleModel
from vardist.models import Sampling, load

SMP = Sampling(cfg=1.5, top_k=0, top_p=0.0)  # guided: forks must carry the uncond rows too
FLAT = Sampling(cfg=0.0)  # the doubles' logits are too peaked at cfg 1.5 for distinct candidates
SEEDS = [5, 6]
# var-tiny runs VAR's code as toy-digits does, at 16x the pixels: benchmarks/fork_cost.py times it
MODELS = ["toy-digits", "flexvar-tiny", "infinity-tiny", "double", "ray-toy"]


@pytest.fixture(scope="module", params=MODELS)
def case(request):
    """(model, two conditions, sampling)."""
    name = request.param
    if name == "double":
        return DoubleModel(), [3, 7], FLAT
    if name == "ray-toy":
        return ToyScaleModel(), [0, 2], FLAT
    if name == "infinity-tiny":
        pytest.importorskip("transformers")
        return load("infinity-tiny", device="cpu"), ["a photo of a red car", "two dogs"], SMP
    if name == "toy-digits":
        return load("toy-digits", device="cpu"), [3, 7], SMP
    fixtures = request.getfixturevalue("fixtures_dir")
    if name == "var-tiny":
        from vardist.models.var import from_fixture
    else:
        from vardist.models.flexvar import from_fixture
    return from_fixture(fixtures / name), [3, 7], SMP


def _prefix(model, conds, seeds, k, smp):
    state = model.start(conds, seeds, smp)
    model.run_scales(state, k)
    return state


def _replay(model, conds, seeds, maps, smp):
    """An unforked state fed the given maps scale by scale (the incremental path generation takes)."""
    state = model.start(conds, seeds, smp)
    for m in maps:
        model.advance(state, m)
    return state


# -- preview ---------------------------------------------------------------------------------------
def test_preview_is_finish_at_the_last_scale_and_leaves_the_state_alone(case):
    model, conds, smp = case
    k = model.num_scales // 2
    plain = model.finish(_prefix(model, conds, SEEDS, k, smp))

    state = _prefix(model, conds, SEEDS, k, smp)
    mid = model.preview(state)
    model.run_scales(state, model.num_scales)
    last = model.preview(state)
    image = model.finish(state)
    assert mid.dtype == last.dtype == torch.uint8 and mid.shape == last.shape == image.shape
    assert torch.equal(last, image)
    assert torch.equal(image, plain)  # continuing after previews gives the image without them
    assert not torch.equal(mid, image)  # the fine scales still change the picture


def _independent_decode(model, maps):
    """The partial latent built from the maps with the VAE's own pieces, decoded: what each
    family's preview must equal (uint8 [B, H, W, 3])."""
    fam = model.family
    if fam == "var":
        f_hat = model.vae.quantize.accumulate([m.to(model.device) for m in maps], inputs=False)[0]
        img = model.vae.fhat_to_img(f_hat).float()
        return ((img + 1) / 2 * 255 + 0.5).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
    if fam == "infinity":
        from vardist.models.infinity.bsq_vae import bits_to_codes

        H, W = model.vae_schedule[-1]
        # a contiguous sum as the model keeps (a permuted one decodes to other floats)
        summed = torch.zeros(maps[0].shape[0], model.vae.cfg.codebook_dim, H, W)
        for s, m in enumerate(maps):
            codes = bits_to_codes(model.vae_bits(m, s)).permute(0, 3, 1, 2)
            if codes.shape[-2:] != (H, W):  # the reference resizes on a 5-D (t = 1) tensor
                codes = F.interpolate(codes.unsqueeze(2), size=(1, H, W), mode="trilinear",
                                      align_corners=False).squeeze(2)
            summed = summed + codes
        img = model.vae.decode(summed)
        return ((img + 1) / 2 * 255).permute(0, 2, 3, 1).to(torch.uint8)
    if fam == "flexvar":
        idx = maps[-1]
        pn, side = round(idx.shape[1] ** 0.5), model.sides[-1]
        z = model.vae.code_vectors(idx).reshape(idx.shape[0], pn, pn, -1).permute(0, 3, 1, 2)
        img = model.vae.decode_latent(F.interpolate(z, size=(side, side), mode="bicubic"))
        return ((img.clamp(-1, 1) + 1) / 2 * 255 + 0.5).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
    return None  # the doubles: preview is their decode by definition


@torch.inference_mode()
def test_preview_at_an_intermediate_scale_decodes_the_partial_latent(case):
    model, conds, smp = case
    k = model.num_scales // 2
    state = _prefix(model, conds, SEEDS, k, smp)
    got = model.preview(state)
    assert got.dtype == torch.uint8 and got.device.type == "cpu"
    want = _independent_decode(model, state.maps)
    if want is not None:
        assert torch.equal(got, want)
    earlier = _prefix(model, conds, SEEDS, 1, smp)
    assert not torch.equal(model.preview(earlier), got)  # more scales, another latent


def test_preview_before_any_scale_is_refused(case):
    model, conds, smp = case
    with pytest.raises(ValueError, match="at least one scale"):
        model.preview(model.start(conds, SEEDS, smp))


# -- fork ------------------------------------------------------------------------------------------
def test_forked_members_continue_as_unforked_runs(case):
    model, conds, smp = case
    k = model.num_scales // 2
    state = _prefix(model, conds, SEEDS, k, smp)
    before_pool = model.fork(state, [1, 1, 0])   # next-scale logits not computed yet
    pool = model.draw_pool(state, 16)
    after_pool = model.fork(state, torch.tensor([1, 1, 0]))  # copies the pending logits
    other = next(j for j in range(1, 16) if not torch.equal(pool[1, j], pool[1, 0]))
    codes = torch.stack([pool[1, 0], pool[1, other], pool[0, 0]])  # two ways on from item 1
    idx = [1, 1, 0]
    assert after_pool.conditions == [conds[i] for i in idx] and after_pool.seeds == [6, 6, 5]
    assert all(torch.equal(a, b[idx]) for a, b in zip(after_pool.maps, state.maps))

    want = model.finish(_replay(model, after_pool.conditions, after_pool.seeds,
                                [m[idx] for m in state.maps] + [codes], smp))
    for forked in (after_pool, before_pool):
        model.advance(forked, codes)
        assert torch.equal(model.finish(forked), want)
        assert not torch.equal(forked.maps[k][0], forked.maps[k][1])


def test_forks_are_independent_of_each_other_and_of_their_source(case):
    model, conds, smp = case
    k = model.num_scales // 2
    plain = model.finish(_prefix(model, conds, SEEDS, k, smp))
    state = _prefix(model, conds, SEEDS, k, smp)
    a = model.fork(state, [1, 0])
    b = model.fork(state, [1, 0])
    pool = model.draw_pool(a, 3)
    model.advance(a, pool[:, 2])  # move one fork on, with other codes than the others take
    model.run_scales(a, model.num_scales)
    image_b = model.finish(b)
    assert torch.equal(model.finish(state), plain)  # the source continues as if never forked
    swapped = model.finish(_replay(model, [conds[1], conds[0]], [SEEDS[1], SEEDS[0]],
                                   [m[[1, 0]] for m in state.maps[:k]], smp))
    assert torch.equal(image_b, swapped)


def test_fork_with_new_seeds_draws_from_them(case):
    model, conds, smp = case
    k = model.num_scales // 2
    state = _prefix(model, conds, SEEDS, k, smp)
    forked = model.fork(state, [1], seeds=[42])
    model.run_scales(forked, k + 1)
    ref = _replay(model, [conds[1]], [42], [m[[1]] for m in state.maps], smp)
    model.run_scales(ref, k + 1)
    assert torch.equal(forked.maps[k], ref.maps[k])
    model.run_scales(state, k + 1)
    assert not torch.equal(forked.maps[k], state.maps[k][[1]])  # seed 6's draw was not reused


def test_fork_bad_arguments_name_the_problem(case):
    model, conds, smp = case
    state = _prefix(model, conds, SEEDS, 1, smp)
    with pytest.raises(ValueError, match=r"0\.\.1"):
        model.fork(state, [0, 2])
    with pytest.raises(ValueError, match="non-empty"):
        model.fork(state, [])
    with pytest.raises(ValueError, match="non-empty"):
        model.fork(state, [0.0, 1.0])
    with pytest.raises(ValueError, match="one seed >= 0 per member"):
        model.fork(state, [0, 1], seeds=[1])


# -- preview_candidates ----------------------------------------------------------------------------
# every family and fixture: VAR (toy-digits, var-tiny, var-saln-tiny), FlexVAR, Infinity (2B and 8B
# layouts, toy-shapes) and the doubles, which keep the interface's default (fork, advance, preview)
CANDIDATE_MODELS = ["toy-digits", "var-tiny", "var-saln-tiny", "flexvar-tiny", "infinity-tiny",
                    "infinity8b-tiny", "toy-shapes", "double", "ray-toy"]


@pytest.fixture(scope="module", params=CANDIDATE_MODELS)
def any_family(request):
    """(model, two conditions, sampling) for every fixture family."""
    name = request.param
    if name == "double":
        return DoubleModel(), [3, 7], FLAT
    if name == "ray-toy":
        return ToyScaleModel(), [0, 2], FLAT
    if name in ("toy-digits", "toy-shapes"):
        model = load(name, device="cpu")
        conds = [3, 7] if name == "toy-digits" else ["a red circle", "two blue squares"]
        return model, conds, SMP
    if name == "infinity-tiny":
        pytest.importorskip("transformers")
        return load(name, device="cpu"), ["a photo of a red car", "two dogs"], SMP
    fixtures = request.getfixturevalue("fixtures_dir")
    if name in ("var-tiny", "var-saln-tiny"):
        from vardist.models.var import from_fixture

        return from_fixture(fixtures / name), [3, 7], SMP
    if name == "flexvar-tiny":
        from vardist.models.flexvar import from_fixture

        return from_fixture(fixtures / name), [3, 7], SMP
    # infinity8b-tiny has no text encoder: its cases' encoder features stand in for prompts
    import json

    from vardist.models.infinity import from_fixture

    folder = fixtures / name
    config = json.loads((folder / "config.json").read_text())
    model = from_fixture(folder, transformer=config["sharded_checkpoint"]["folder"])
    cases = torch.load(folder / "cases.pt", weights_only=True)
    text = list(cases["text_kv_compact"].split(cases["text_lens"]))[:2]
    model.start = lambda conds, seeds, smp: model._open(text, list(conds), seeds, smp)
    return model, ["first case", "second case"], SMP


@torch.inference_mode()
@pytest.mark.parametrize("where", ["first", "middle"])
def test_preview_candidates_are_fork_advance_preview_and_leave_the_state(any_family, where):
    model, conds, smp = any_family
    k = 0 if where == "first" else model.num_scales // 2
    state = _prefix(model, conds, SEEDS, k, smp)
    pool = model.draw_pool(state, 3)
    rows, js = [1, 0, 1, 1], [0, 2, 1, 2]
    codes = pool[rows, js]

    got = model.preview_candidates(state, rows, codes)
    forked = model.fork(state, rows)
    model.advance(forked, codes)
    want = model.preview(forked)
    assert got.dtype == torch.uint8 and got.device.type == "cpu"
    assert got.shape == want.shape and got.shape[0] == 4
    if model.image_hw is not None:  # the size the preview chunk is planned by, without a decode
        assert got.shape[1:3] == model.image_hw
    assert torch.equal(got, want)
    # and what the latent of those maps decodes to, built from the VAE's own pieces
    independent = _independent_decode(model, [m[rows] for m in state.maps] + [codes])
    if independent is not None:
        assert torch.equal(got, independent)
    # the state is untouched: same maps, and it continues to plain generation's image
    assert state.next_scale == k
    assert torch.equal(model.finish(state), model.finish(_prefix(model, conds, SEEDS, k, smp)))


def test_preview_candidates_bad_arguments_name_the_problem(any_family):
    model, conds, smp = any_family
    state = _prefix(model, conds, SEEDS, 1, smp)
    codes = model.draw_pool(state, 2)[:, 0]
    with pytest.raises(ValueError, match=r"0\.\.1"):
        model.preview_candidates(state, [0, 2], codes)
    with pytest.raises(ValueError, match="needs integer codes|must have shape"):
        model.preview_candidates(state, [0, 1, 1], codes)
    done = _prefix(model, conds, SEEDS, model.num_scales, smp)
    with pytest.raises(ValueError, match="scales are done"):
        model.preview_candidates(done, [0], codes[:1])
