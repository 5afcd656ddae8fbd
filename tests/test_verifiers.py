"""vardist.verifiers: each verifier's loading and scoring path, with the score formulas checked
against an independent computation (transformers' own CLIPModel forward on tiny random-weight
models saved with save_pretrained; the toy judge's logits), the offline weights lookup and its
errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import vardist.verifiers as verifiers
from vardist.verifiers.base import MissingVerifierWeights

PROMPTS = ["a red square", "two blue circles", "a photo of a cat", "green triangle left of a dog",
           "an empty picture", "three yellow squares", "a circle", "x"]


def _byte_vocab() -> dict[str, int]:
    """CLIP's byte-level vocabulary without merges: every byte, alone and word-final."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("\xa1"), ord("\xac") + 1),
            *range(ord("\xae"), ord("\xff") + 1)]
    chars, extra = list(keep), 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + extra)
            extra += 1
    units = [chr(c) for c in chars]
    vocab = {u: i for i, u in enumerate(units)}
    vocab.update({u + "</w>": len(units) + i for i, u in enumerate(units)})
    vocab["<|startoftext|>"], vocab["<|endoftext|>"] = len(vocab), len(vocab) + 1
    return vocab


def write_tiny_clip(folder: Path, seed: int, *, weights: bool = True, processor: bool = True,
                    logit_scale: float | None = None, as_bin: bool = False) -> Path:
    """A random-weight CLIPModel of the real config class, as save_pretrained writes it, with a
    byte-level CLIP tokenizer and a CLIP image processor (32 px)."""
    from transformers import CLIPConfig, CLIPModel

    folder.mkdir(parents=True, exist_ok=True)
    vocab = _byte_vocab()
    eos, bos = vocab["<|endoftext|>"], vocab["<|startoftext|>"]
    if weights:
        cfg = CLIPConfig(
            text_config=dict(vocab_size=len(vocab), hidden_size=16, intermediate_size=32,
                             num_hidden_layers=2, num_attention_heads=2,
                             max_position_embeddings=77, eos_token_id=eos, bos_token_id=bos,
                             pad_token_id=eos),
            vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                               num_attention_heads=2, image_size=32, patch_size=8),
            projection_dim=8)
        torch.manual_seed(seed)
        model = CLIPModel(cfg).eval()
        if logit_scale is not None:
            model.logit_scale.data.fill_(logit_scale)
        model.save_pretrained(folder)
        if as_bin:  # the older format: a torch.save state dict, read weights-only
            (folder / "model.safetensors").unlink()
            torch.save(model.state_dict(), folder / "pytorch_model.bin")
    if processor:
        # the files a CLIP repository holds (vocab.json, merges.txt: here no merges), which
        # every transformers version reads
        (folder / "vocab.json").write_text(json.dumps(vocab))
        (folder / "merges.txt").write_text("#version: 0.2\n")
        (folder / "tokenizer_config.json").write_text(json.dumps({
            "tokenizer_class": "CLIPTokenizer", "model_max_length": 77,
            "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
            "pad_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}))
        (folder / "preprocessor_config.json").write_text(json.dumps({  # CLIP's, at 32 px
            "image_processor_type": "CLIPImageProcessor", "do_resize": True,
            "size": {"shortest_edge": 32}, "resample": 3, "do_center_crop": True,
            "crop_size": {"height": 32, "width": 32}, "do_rescale": True,
            "rescale_factor": 1 / 255, "do_normalize": True, "do_convert_rgb": True,
            "image_mean": [0.48145466, 0.4578275, 0.40821073],
            "image_std": [0.26862954, 0.26130258, 0.27577711]}))
    return folder


def reference_logits(folder: Path, images: np.ndarray, prompts: list[str],
                     processor_folder: Path | None = None
                     ) -> tuple[np.ndarray, torch.Tensor, float]:
    """transformers' own path: CLIPModel.from_pretrained and its forward's logits_per_image
    (logit_scale.exp() x cosine), and its normalised image embeddings."""
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(folder, local_files_only=True).eval()
    proc = CLIPProcessor.from_pretrained(processor_folder or folder, local_files_only=True)
    inputs = proc(text=prompts, images=list(images), return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model(**inputs)
    return out.logits_per_image.double().numpy(), out.image_embeds, model.logit_scale.exp().item()


@pytest.fixture
def no_hf_cache(tmp_path_factory, monkeypatch):
    """An empty Hugging Face cache and no $VARDIST_WEIGHTS: 'missing' must not depend on what
    the machine running the tests has downloaded."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE",
                        str(tmp_path_factory.mktemp("empty-hf-cache")))
    monkeypatch.delenv("VARDIST_WEIGHTS", raising=False)


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    rng = np.random.default_rng(0)
    ims = rng.integers(0, 256, (len(PROMPTS), 40, 48, 3), dtype=np.uint8)
    ims[0] = 0  # a flat image among the noise
    return ims


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("verifier-weights")
    write_tiny_clip(root / "clip-vit-large-patch14", seed=1)
    return root


def test_clip_score_is_clipped_100_cosine(clip_dir, images):
    v = verifiers.load("clip", clip_dir, device="cpu")
    got = v.score(images, PROMPTS)
    logits, _, scale = reference_logits(clip_dir / "clip-vit-large-patch14", images, PROMPTS)
    cos = np.diag(logits) / scale
    np.testing.assert_allclose(got, np.maximum(100 * cos, 0), rtol=1e-4, atol=1e-3)
    assert (cos < 0).any() and (cos > 0).any(), "the fixture must exercise the clip at 0"
    assert got.dtype == np.float64 and got.shape == (len(PROMPTS),)
    # batched = one by one (padding to the batch's longest prompt changes nothing)
    v.batch_size = 3
    np.testing.assert_allclose(v.score(images, PROMPTS), got, rtol=1e-5, atol=1e-4)
    # a prompt longer than CLIP's context is truncated to it, as CLIPScore does, not refused
    assert np.isfinite(v.score(images[:1], ["a very long prompt " * 20])).all()


def test_pickscore_is_logit_scale_times_cosine(tmp_path, images):
    model = write_tiny_clip(tmp_path / "PickScore_v1", seed=2, processor=False, logit_scale=3.0)
    proc = write_tiny_clip(tmp_path / "CLIP-ViT-H-14-laion2B-s32B-b79K", seed=0, weights=False)
    got = verifiers.load("pickscore", tmp_path, device="cpu").score(images, PROMPTS)
    logits, _, scale = reference_logits(model, images, PROMPTS, processor_folder=proc)
    assert scale == pytest.approx(np.exp(3.0))
    np.testing.assert_allclose(got, np.diag(logits), rtol=1e-4, atol=1e-4)


def test_clip_reads_pytorch_model_bin_weights_only(tmp_path, images):
    write_tiny_clip(tmp_path / "clip-vit-large-patch14", seed=1, as_bin=True)
    other = write_tiny_clip(tmp_path / "ref" / "clip-vit-large-patch14", seed=1)
    got = verifiers.load("clip", tmp_path, device="cpu").score(images, PROMPTS)
    want = verifiers.load("clip", tmp_path / "ref", device="cpu").score(images, PROMPTS)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert other.is_dir()


def test_aesthetic_is_the_mlp_on_the_normalised_image_embedding(tmp_path, images):
    from vardist.verifiers.clip import AESTHETIC_FILE

    folder = write_tiny_clip(tmp_path / "clip-vit-large-patch14", seed=3)
    torch.manual_seed(4)
    sizes = [(8, 1024), (1024, 128), (128, 64), (64, 16), (16, 1)]  # the published head, on dim 8
    sd = {}
    for idx, (i, o) in zip((0, 2, 4, 6, 7), sizes):
        sd[f"layers.{idx}.weight"] = torch.randn(o, i) / i ** 0.5
        sd[f"layers.{idx}.bias"] = torch.randn(o) * 0.1
    torch.save(sd, tmp_path / AESTHETIC_FILE)
    got = verifiers.load("aesthetic", tmp_path, device="cpu").score(images, [None] * len(images))
    _, embeds, _ = reference_logits(folder, images, PROMPTS)
    x = embeds.double()  # CLIPModel's image_embeds: projected and L2-normalised
    for idx in (0, 2, 4, 6, 7):  # no activations between the layers, dropout off
        x = x @ sd[f"layers.{idx}.weight"].double().T + sd[f"layers.{idx}.bias"].double()
    np.testing.assert_allclose(got, x[:, 0].numpy(), rtol=1e-4, atol=1e-5)


def test_missing_weights_named_with_their_source_before_loading(tmp_path, monkeypatch,
                                                                no_hf_cache):
    import vardist.verifiers.clip as clip_mod

    monkeypatch.setattr(clip_mod, "load_clip", lambda *a: pytest.fail("loaded a model"))
    with pytest.raises(MissingVerifierWeights, match=r"clip-vit-large-patch14.*"
                       r"huggingface\.co/openai/clip-vit-large-patch14"):
        verifiers.load("clip", tmp_path, device="cpu")
    # the folder is there, without its tokenizer: the missing file is named
    folder = write_tiny_clip(tmp_path / "clip-vit-large-patch14", seed=1)
    for f in ("tokenizer.json", "vocab.json"):
        (folder / f).unlink(missing_ok=True)
    with pytest.raises(MissingVerifierWeights, match="lacks tokenizer.json or vocab.json"):
        verifiers.load("clip", tmp_path, device="cpu")
    # aesthetic: the model folder without the MLP file names the file and its GitHub source
    write_tiny_clip(tmp_path / "b" / "clip-vit-large-patch14", seed=1)
    with pytest.raises(MissingVerifierWeights, match=r"sac\+logos\+ava1-l14-linearMSE\.pth.*"
                       r"github\.com/christophschuhmann"):
        verifiers.load("aesthetic", tmp_path / "b", device="cpu")


def test_weights_from_env_and_from_a_hugging_face_cache_folder(tmp_path, monkeypatch, images):
    src = write_tiny_clip(tmp_path / "src", seed=1)
    # $VARDIST_WEIGHTS holding the model folder
    shutil.copytree(src, tmp_path / "env" / "clip-vit-large-patch14")
    monkeypatch.setenv("VARDIST_WEIGHTS", str(tmp_path / "env"))
    want = verifiers.load("clip", device="cpu").score(images, PROMPTS)
    # a Hugging Face cache layout passed as the weights folder (refs/main -> snapshot)
    repo = tmp_path / "cache" / "models--openai--clip-vit-large-patch14"
    shutil.copytree(src, repo / "snapshots" / "abc123")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    monkeypatch.delenv("VARDIST_WEIGHTS")
    found = verifiers.find_weights(verifiers.get_spec("clip"), tmp_path / "cache")
    assert found["clip-vit-large-patch14"] == repo / "snapshots" / "abc123"
    got = verifiers.load("clip", tmp_path / "cache", device="cpu").score(images, PROMPTS)
    np.testing.assert_array_equal(got, want)


def test_toy_judge_is_the_judges_probability_of_the_class():
    from vardist.zoo.data import load_digits
    from vardist.zoo.judge import shipped_judge

    digits = load_digits("test")
    x, y = digits.images[:64], digits.labels[:64]
    rgb = (x.float().clamp(0, 1) * 255).round().to(torch.uint8)
    rgb = rgb.reshape(len(x), *x.shape[-2:], 1).expand(-1, -1, -1, 3).numpy()
    v = verifiers.load("toy-judge", device="cpu")
    got = v.score(rgb, y.tolist())
    judge = shipped_judge()
    with torch.no_grad():
        from vardist.zoo.data import to_grey
        probs = judge(to_grey(torch.from_numpy(rgb))).softmax(-1).double().numpy()
    np.testing.assert_allclose(got, probs[np.arange(len(y)), y.numpy()], rtol=1e-6)
    wrong = v.score(rgb, ((y + 1) % 10).tolist())
    assert got.mean() > 0.9 and wrong.mean() < 0.1  # the real class is what it rewards
    with pytest.raises(ValueError, match="class labels 0-9"):
        v.score(rgb[:1], [10])


def test_toy_geneval_scores_satisfied_records_one():
    from vardist.zoo.shapes import make_eval_prompts, render_for

    records = make_eval_prompts()[:6]
    rng = np.random.default_rng(0)
    good = np.stack([render_for(r, rng) for r in records]).astype(np.uint8)
    blank = np.zeros_like(good)
    v = verifiers.load("toy-geneval", device="cpu")
    prompts = [r["prompt"] for r in records]
    np.testing.assert_array_equal(v.score(good, prompts), np.ones(len(records)))
    np.testing.assert_array_equal(v.score(blank, prompts), np.zeros(len(records)))
    np.testing.assert_array_equal(v.score(good, records), np.ones(len(records)))  # records too


def test_inputs_checked_and_status_lists_every_verifier(tmp_path, no_hf_cache):
    v = verifiers.load("toy-geneval", device="cpu")
    with pytest.raises(ValueError, match=r"uint8 images \[N, H, W, 3\]"):
        v.score(np.zeros((2, 8, 8, 3), np.float32), ["a", "b"])
    with pytest.raises(ValueError, match="2 images but 1 conditions"):
        v.score(np.zeros((2, 8, 8, 3), np.uint8), ["a"])
    with pytest.raises(ValueError, match="unknown verifier 'nope'.*clip"):
        verifiers.load("nope")
    listed = {s.name: s for s in verifiers.status(tmp_path)}
    assert set(listed) >= {"clip", "pickscore", "aesthetic", "toy-judge", "toy-geneval"}
    assert listed["toy-geneval"].found and not listed["clip"].found
    assert "huggingface.co/openai/clip-vit-large-patch14" in listed["clip"].detail
    assert not listed["toy-judge"].found  # a folder given without a judge in it
    assert verifiers.status()[-1].name == "toy-judge" and verifiers.status()[-1].found
    assert isinstance(v, verifiers.Verifier)
    json.dumps([s.__dict__ for s in verifiers.status()])  # plain data, for --json listings


def test_cli_lists_verifiers_with_weights_status(tmp_path, monkeypatch, no_hf_cache):
    from typer.testing import CliRunner

    from vardist_cli.main import app

    monkeypatch.setenv("COLUMNS", "200")
    write_tiny_clip(tmp_path / "clip-vit-large-patch14", seed=1)
    r = CliRunner().invoke(app, ["verifiers", "--verifier-weights", str(tmp_path)])
    assert r.exit_code == 0, r.output
    rows = {line.split()[0]: line.split()[2] for line in r.output.splitlines()
            if line.split() and line.split()[0] in verifiers.specs()}
    # clip found in the folder; pickscore's folders are not there; the judge is not in it
    assert rows == {"clip": "found", "aesthetic": "missing", "pickscore": "missing",
                    "toy-geneval": "found", "toy-judge": "missing"}
    assert "huggingface.co/yuvalkirstain/PickScore_v1" in r.output
