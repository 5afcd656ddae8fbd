"""The toy zoo: data pipeline, toy metrics, the shipped judge and model, and retraining."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vardist.zoo import metrics
from vardist.zoo.data import IMAGE_SIZE, augment, batches, load_digits, to_grey


# ------------------------------------------------------------------------------------ data

def test_digits_split_and_look():
    train, test, every = load_digits("train"), load_digits("test"), load_digits("all")
    assert len(every) == 1797 and len(train) + len(test) == 1797
    assert train.images.shape[1:] == (1, IMAGE_SIZE, IMAGE_SIZE)
    assert sorted(set(test.labels.tolist())) == list(range(10))
    # the split is disjoint: no test image equals a train image row for row
    tr = {tuple(r) for r in train.images.flatten(1).numpy().round(4).tolist()}
    assert not any(tuple(r) in tr for r in test.images.flatten(1).numpy().round(4).tolist()[:50])
    # light strokes on a dark background, and a dark margin
    x = every.images
    assert 0 <= x.min() and x.max() <= 1
    assert x.median() < 0.1 and x.amax((1, 2, 3)).min() > 0.5
    assert x[..., 0, :].max() < 0.25 and x[..., :, -1].max() < 0.25


def test_augment_is_deterministic_and_small():
    x = load_digits("test").images[:16]
    a = augment(x, torch.Generator().manual_seed(1))
    b = augment(x, torch.Generator().manual_seed(1))
    c = augment(x, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert (a - x).abs().mean() < 0.2  # a light touch: the digit stays where it was
    (x1, y1), (x2, y2) = next(batches(load_digits("test"), 8, 5)), next(batches(load_digits("test"), 8, 5))
    assert torch.equal(x1, x2) and torch.equal(y1, y2)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="split"):
        load_digits("validation")
    with pytest.raises(ValueError, match="batch_size"):
        next(batches(load_digits("test"), 0, 0))
    with pytest.raises(ValueError, match="uint8 images"):
        to_grey(torch.zeros(2, 16, 16, 4, dtype=torch.uint8))


def test_to_grey_accepts_generator_output():
    x = load_digits("test").images[:4]
    u8 = (x.expand(-1, 3, -1, -1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1)
    assert torch.allclose(to_grey(u8), x, atol=1 / 255)
    big = torch.nn.functional.interpolate(x, scale_factor=4, mode="nearest")
    assert to_grey(big).shape == x.shape


# ------------------------------------------------------------------------------------ metrics

def test_inception_score_bounds():
    confident = np.eye(10)[np.arange(100) % 10]
    assert metrics.inception_score(confident) == pytest.approx(10.0, rel=1e-6)
    assert metrics.inception_score(np.full((50, 10), 0.1)) == pytest.approx(1.0)
    one_class = np.eye(10)[np.zeros(40, dtype=int)]
    assert metrics.inception_score(one_class) == pytest.approx(1.0)


def test_frechet_distance_matches_scipy_sqrtm():
    scipy_linalg = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(400, 6)), rng.normal(size=(300, 6)) @ rng.normal(size=(6, 6)) + 1.5
    sa, sb = metrics.gaussian_stats(a), metrics.gaussian_stats(b)
    covmean = scipy_linalg.sqrtm(sa[1] @ sb[1]).real
    want = ((sa[0] - sb[0]) ** 2).sum() + np.trace(sa[1] + sb[1] - 2 * covmean)
    assert metrics.frechet_distance(sa, sb) == pytest.approx(want, rel=1e-6)
    assert metrics.frechet_distance(sa, sa) == pytest.approx(0.0, abs=1e-8)
    with pytest.raises(ValueError, match="feature sizes"):
        metrics.frechet_distance(sa, metrics.gaussian_stats(a[:, :3]))


def test_class_accuracy():
    p = np.eye(3)[[0, 1, 2, 2]]
    assert metrics.class_accuracy(p, [0, 1, 2, 0]) == 0.75
    with pytest.raises(ValueError, match="probs"):
        metrics.class_accuracy(p, [0, 1])


# ------------------------------------------------------------------------------------ shipped

def test_shipped_judge_classifies_held_out_digits():
    test = load_digits("test")
    probs, feats = metrics.load_judge().predict(test.images)
    assert feats.shape == (len(test), 64)
    assert metrics.class_accuracy(probs, test.labels) >= 0.97
    real = metrics.evaluate(test.images, test.labels)
    mirrored = metrics.evaluate(test.images.flip(-1), test.labels)  # digit-like but wrong
    assert real["accuracy"] >= 0.97 and real["is_toy"] > 8.0
    assert mirrored["accuracy"] < 0.6 and mirrored["is_toy"] < real["is_toy"]
    assert real["fd_toy"] * 5 < mirrored["fd_toy"]


@pytest.fixture(scope="module")
def toy():
    from vardist.models import load

    return load("toy-digits", device="cpu")


def test_shipped_toy_model_generates_requested_digits(toy):
    from vardist.models import Sampling, get_spec

    spec = get_spec("toy-digits")
    assert toy.num_classes == 10 and toy.num_scales == spec.num_scales
    labels = [c for c in range(10) for _ in range(2)]
    d = spec.defaults
    s = Sampling(cfg=d.cfg, top_k=d.top_k, top_p=d.top_p)
    imgs = toy.generate_images(labels, list(range(len(labels))), s)
    assert imgs.dtype == torch.uint8 and imgs.shape == (20, IMAGE_SIZE, IMAGE_SIZE, 3)
    grey = to_grey(imgs)
    assert grey.median() < 0.15 and grey.amax((1, 2, 3)).min() > 0.5  # light strokes on dark
    assert metrics.evaluate(imgs, labels)["accuracy"] >= 0.8
    # another class asked for with the same seeds gives other pictures
    other = toy.generate_images([(c + 1) % 10 for c in labels[:4]], list(range(4)), s)
    assert not torch.equal(imgs[:4], other)


def test_toy_model_runs_the_search_interface(toy):
    from vardist.models import Sampling

    gen = toy
    s = Sampling(cfg=2.0)
    state = gen.start([3, 7], [11, 12], s)
    gen.run_scales(state, 1)
    pool = gen.draw_pool(state, 16)
    assert pool.shape == (2, 16, gen.positions(1))
    assert gen.embed(pool).shape == (2, 16, gen.positions(1), 32)
    gen.advance(state, pool[:, 0])
    first = gen.finish(state)
    assert torch.equal(first, gen.generate_images([3, 7], [11, 12], s))  # candidate 0 = plain


# ------------------------------------------------------------------------------------ retraining

def test_retraining_a_few_steps_runs(tmp_path):
    from vardist.models import Sampling
    from vardist.zoo.specs import load_generator
    from vardist.zoo.train import main

    main(["--out", str(tmp_path), "--seed", "3", "--judge-steps", "2", "--vae-steps", "2",
          "--var-steps", "2", "--batch", "8", "--augment-copies", "1"])
    log = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert {r["stage"] for r in log} >= {"judge", "vqvae", "var", "done"}
    assert all(np.isfinite(r["ce"]) for r in log if r["stage"] == "var")
    gen = load_generator(tmp_path)
    imgs = gen.generate_images([0, 9], [0, 1], Sampling())
    assert imgs.shape == (2, IMAGE_SIZE, IMAGE_SIZE, 3)
    judge = metrics.load_judge(tmp_path)
    assert metrics.evaluate(imgs, [0, 9], judge)["accuracy"] <= 1.0
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path), "--stages", "judge,diffusion"])
