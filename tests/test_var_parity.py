"""VAR against the reference implementation's outputs on the tiny random-weight fixture."""

import pytest
import torch

from vardist.models.var import from_fixture


@pytest.fixture(scope="module")
def case(fixtures_dir):
    folder = fixtures_dir / "var-tiny"
    return from_fixture(folder), torch.load(folder / "cases.pt", weights_only=True)


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
    model, c = case
    logits = model.teacher_forced_logits(c["labels"], c["encode_idx"])
    torch.testing.assert_close(logits, c["teacher_forced_logits"], rtol=0, atol=1e-4)


@pytest.mark.parametrize("cfg", [1.0, 1.5])
def test_greedy_generation_matches_reference(case, cfg):
    model, c = case
    images, maps = model.generate(c["labels"], cfg=cfg, top_k=1, top_p=0.0, seeds=[3, 4])
    for si, (ours, ref) in enumerate(zip(maps, c[f"greedy_cfg{cfg}_idx"], strict=True)):
        assert torch.equal(ours, ref), f"cfg {cfg}: token map of scale {si} differs"
    assert images.shape == (2, 3, 256, 256) and 0 <= images.min() and images.max() <= 1
    torch.testing.assert_close(images, c[f"greedy_cfg{cfg}_img"], rtol=0, atol=1e-4)


def test_from_fixture_names_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="cases.pt"):
        from_fixture(tmp_path)
