"""VAR against the reference implementation's outputs on the tiny random-weight fixtures: the
256px layout (var-tiny) and the shared-AdaLN layout of VAR-d36 (var-saln-tiny), through the same
functions and with every size read from the fixture's config."""

import pytest
import torch

from vardist.models.var import from_fixture

FIXTURES = ("var-tiny", "var-saln-tiny")


@pytest.fixture(scope="module", params=FIXTURES)
def case(request, fixtures_dir):
    folder = fixtures_dir / request.param
    return from_fixture(folder), torch.load(folder / "cases.pt", weights_only=True)


def test_fixture_layouts(fixtures_dir):
    """The two fixtures really are the two layouts (so the tests below cover both)."""
    cfgs = [torch.load(fixtures_dir / f / "cases.pt", weights_only=True)["config"] for f in FIXTURES]
    assert [bool(c.get("shared_aln", False)) for c in cfgs] == [False, True]
    saln = from_fixture(fixtures_dir / "var-saln-tiny").var
    assert saln.shared_ada_lin is not None and all(hasattr(b, "ada_gss") for b in saln.blocks)


def test_encode_matches_reference(case):
    model, c = case
    maps = model.encode(c["image_in"])
    assert len(maps) == len(c["encode_idx"])
    for si, (ours, ref) in enumerate(zip(maps, c["encode_idx"])):
        assert ours.dtype == torch.long and torch.equal(ours, ref), f"scale {si}"


def test_decode_matches_reference(case):
    model, c = case
    torch.testing.assert_close(model.decode(c["encode_idx"]), c["decode_img"], rtol=0, atol=1e-4)


def test_teacher_forced_logits_match_reference(case):
    """The reference's training forward replaces each label by the null class with probability
    cond_drop_rate = 0.1 (its classifier-free-guidance dropout, drawn inside the forward), so a
    fixture row may hold the null-class logits: each row must match its label or the null class,
    and at least one row its true label (so the class path is checked)."""
    model, c = case
    ref = c["teacher_forced_logits"]
    labels = c["labels"]
    ours = model.teacher_forced_logits(labels, c["encode_idx"])
    null = model.teacher_forced_logits(torch.full_like(labels, model.num_classes), c["encode_idx"])
    assert ours.shape == ref.shape
    true_rows = 0
    for b in range(len(labels)):
        if torch.allclose(ours[b], ref[b], rtol=0, atol=1e-4):
            true_rows += 1
        else:
            torch.testing.assert_close(null[b], ref[b], rtol=0, atol=1e-4,
                                       msg=lambda m: f"row {b} matches neither its label nor null: {m}")
    assert true_rows >= 1


def _greedy_cfgs(c) -> list[float]:
    return sorted(float(key[len("greedy_cfg"):-len("_idx")]) for key in c
                  if key.startswith("greedy_cfg") and key.endswith("_idx"))


def test_greedy_generation_matches_reference(case):
    model, c = case
    cfgs = _greedy_cfgs(c)
    assert len(cfgs) >= 2
    side = model.image_size
    for cfg in cfgs:
        images, maps = model.generate(c["labels"], cfg=cfg, top_k=1, top_p=0.0, seeds=[3, 4])
        for si, (ours, ref) in enumerate(zip(maps, c[f"greedy_cfg{cfg}_idx"], strict=True)):
            assert torch.equal(ours, ref), f"cfg {cfg}: token map of scale {si} differs"
        assert images.shape == (2, 3, side, side) and 0 <= images.min() and images.max() <= 1
        torch.testing.assert_close(images, c[f"greedy_cfg{cfg}_img"], rtol=0, atol=1e-4)


def test_from_fixture_names_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="cases.pt"):
        from_fixture(tmp_path)
