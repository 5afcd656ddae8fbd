"""vardist.verifiers: each verifier's loading and scoring path, with the score formulas checked
against an independent computation (transformers' own CLIPModel forward on tiny random-weight
models saved with save_pretrained; the toy judge's logits), the offline weights lookup and its
errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import vardist
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
                    "hpsv2": "missing", "image-reward": "missing", "toy-geneval": "found",
                    "toy-judge": "missing"}
    assert "huggingface.co/yuvalkirstain/PickScore_v1" in r.output


# --- hpsv2: an open_clip checkpoint on transformers' CLIPModel ------------------------------

def _tiny_gelu_clip(seed: int):
    """A tiny random-weight CLIPModel with GELU (as open_clip's ViT-H-14), of the real config
    class, with the byte-level vocabulary above."""
    from transformers import CLIPConfig, CLIPModel

    vocab = _byte_vocab()
    eos, bos = vocab["<|endoftext|>"], vocab["<|startoftext|>"]
    cfg = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=16, intermediate_size=32,
                         num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=77,
                         eos_token_id=eos, bos_token_id=bos, pad_token_id=eos, hidden_act="gelu"),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                           num_attention_heads=2, image_size=32, patch_size=8, hidden_act="gelu"),
        projection_dim=8)
    torch.manual_seed(seed)
    model = CLIPModel(cfg).eval()
    with torch.no_grad():  # LayerNorms away from their init, so a swapped name shows
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.2)
    return model


def _as_open_clip(model) -> dict[str, torch.Tensor]:
    """The model's weights under open_clip's names and layouts (written here by hand from
    open_clip's module structure, independently of vardist's mapping): q/k/v stacked into
    in_proj, projections stored as [width, embed] matrices, the causal mask buffer."""
    sd = model.state_dict()
    out = {"visual.class_embedding": sd["vision_model.embeddings.class_embedding"],
           "visual.conv1.weight": sd["vision_model.embeddings.patch_embedding.weight"],
           "visual.positional_embedding": sd["vision_model.embeddings.position_embedding.weight"],
           "visual.proj": sd["visual_projection.weight"].T,
           "token_embedding.weight": sd["text_model.embeddings.token_embedding.weight"],
           "positional_embedding": sd["text_model.embeddings.position_embedding.weight"],
           "text_projection": sd["text_projection.weight"].T,
           "logit_scale": sd["logit_scale"], "attn_mask": torch.zeros(77, 77)}
    for oc, hf in (("visual.ln_pre", "vision_model.pre_layrnorm"),
                   ("visual.ln_post", "vision_model.post_layernorm"),
                   ("ln_final", "text_model.final_layer_norm")):
        for p in ("weight", "bias"):
            out[f"{oc}.{p}"] = sd[f"{hf}.{p}"]
    for oc, hf in (("visual.transformer.resblocks", "vision_model.encoder.layers"),
                   ("transformer.resblocks", "text_model.encoder.layers")):
        for i in range(2):
            a, b = f"{oc}.{i}", f"{hf}.{i}"
            for p in ("weight", "bias"):
                out[f"{a}.attn.in_proj_{p}"] = torch.cat(
                    [sd[f"{b}.self_attn.{x}_proj.{p}"] for x in "qkv"])
                out[f"{a}.attn.out_proj.{p}"] = sd[f"{b}.self_attn.out_proj.{p}"]
                out[f"{a}.ln_1.{p}"] = sd[f"{b}.layer_norm1.{p}"]
                out[f"{a}.ln_2.{p}"] = sd[f"{b}.layer_norm2.{p}"]
                out[f"{a}.mlp.c_fc.{p}"] = sd[f"{b}.mlp.fc1.{p}"]
                out[f"{a}.mlp.c_proj.{p}"] = sd[f"{b}.mlp.fc2.{p}"]
    return {k: v.clone() for k, v in out.items()}


def _open_clip_forward(sd, prefix: str, x: torch.Tensor, mask: torch.Tensor | None):
    """open_clip's residual tower: pre-norm blocks of nn.MultiheadAttention (in_proj) + GELU
    MLP, on [B, L, W]."""
    f = torch.nn.functional
    i = 0
    while f"{prefix}.{i}.ln_1.weight" in sd:
        p = lambda n: sd[f"{prefix}.{i}.{n}"]  # noqa: E731
        h = f.layer_norm(x, x.shape[-1:], p("ln_1.weight"), p("ln_1.bias")).transpose(0, 1)
        att, _ = f.multi_head_attention_forward(
            h, h, h, x.shape[-1], 2, p("attn.in_proj_weight"), p("attn.in_proj_bias"), None,
            None, False, 0.0, p("attn.out_proj.weight"), p("attn.out_proj.bias"),
            training=False, need_weights=False, attn_mask=mask)
        x = x + att.transpose(0, 1)
        h = f.layer_norm(x, x.shape[-1:], p("ln_2.weight"), p("ln_2.bias"))
        x = x + f.linear(f.gelu(f.linear(h, p("mlp.c_fc.weight"), p("mlp.c_fc.bias"))),
                         p("mlp.c_proj.weight"), p("mlp.c_proj.bias"))
        i += 1
    return x


def _open_clip_hps(sd, pixels: torch.Tensor, tokens: torch.Tensor) -> np.ndarray:
    """HPS as the authors compute it on open_clip's CLIP: the diagonal of the normalised image
    features @ the normalised text features.T."""
    f = torch.nn.functional
    x = f.conv2d(pixels, sd["visual.conv1.weight"], stride=sd["visual.conv1.weight"].shape[-1])
    x = x.flatten(2).transpose(1, 2)
    cls = sd["visual.class_embedding"].expand(len(x), 1, -1)
    x = torch.cat([cls, x], 1) + sd["visual.positional_embedding"]
    x = f.layer_norm(x, x.shape[-1:], sd["visual.ln_pre.weight"], sd["visual.ln_pre.bias"])
    x = _open_clip_forward(sd, "visual.transformer.resblocks", x, None)
    x = f.layer_norm(x, x.shape[-1:], sd["visual.ln_post.weight"], sd["visual.ln_post.bias"])
    img = x[:, 0] @ sd["visual.proj"]
    t = sd["token_embedding.weight"][tokens] + sd["positional_embedding"]
    causal = torch.full((77, 77), float("-inf")).triu(1)
    t = _open_clip_forward(sd, "transformer.resblocks", t, causal)
    t = f.layer_norm(t, t.shape[-1:], sd["ln_final.weight"], sd["ln_final.bias"])
    txt = t[torch.arange(len(t)), tokens.argmax(-1)] @ sd["text_projection"]
    img, txt = f.normalize(img.double(), dim=-1), f.normalize(txt.double(), dim=-1)
    return torch.diagonal(img @ txt.T).numpy()


@pytest.fixture(scope="module")
def hps_dir(tmp_path_factory):
    from vardist.verifiers.hps import HPS_FILE

    root = tmp_path_factory.mktemp("hps-weights")
    model = _tiny_gelu_clip(seed=5)
    folder = write_tiny_clip(root / "CLIP-ViT-H-14-laion2B-s32B-b79K", seed=0, weights=False)
    model.config.save_pretrained(folder)  # the architecture, as the CLIP-H repository has it
    sd = _as_open_clip(model)
    torch.save({"epoch": 1, "state_dict": sd}, root / HPS_FILE)  # the authors' layout
    return root, model, sd


def test_hpsv2_maps_open_clip_key_for_key_and_scores_the_authors_cosine(hps_dir, images):
    from transformers import CLIPTokenizer

    from vardist.verifiers.clip import load_processor

    root, model, sd = hps_dir
    v = verifiers.load("hpsv2", root, device="cpu")
    # round trip: every transformers tensor comes back exactly
    mine = v.embed.model.state_dict()
    assert set(mine) == set(model.state_dict())
    for k, t in model.state_dict().items():
        torch.testing.assert_close(mine[k], t, rtol=0, atol=0, msg=k)
    got = v.score(images, PROMPTS)
    # known answer: open_clip's own computation, from the open_clip-named tensors; images
    # padded to a centred black square first (HPS fits the longest side and pads)
    h, w = images.shape[1:3]
    side = max(h, w)
    square = np.zeros((len(images), side, side, 3), np.uint8)
    square[:, (side - h) // 2:(side - h) // 2 + h, (side - w) // 2:(side - w) // 2 + w] = images
    folder = root / "CLIP-ViT-H-14-laion2B-s32B-b79K"
    pixels = load_processor(folder, text=False)[0](list(square), return_tensors="pt")[
        "pixel_values"]
    tok = CLIPTokenizer.from_pretrained(folder, local_files_only=True)
    tokens = torch.zeros(len(PROMPTS), 77, dtype=torch.long)  # open_clip pads with 0
    for i, p in enumerate(PROMPTS):
        ids = tok(p)["input_ids"]
        tokens[i, :len(ids)] = torch.tensor(ids)
    with torch.no_grad():
        want = _open_clip_hps(sd, pixels, tokens)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert ((-1 <= got) & (got <= 1)).all() and len(set(np.round(got, 6))) == len(got)


def test_hpsv2_refuses_foreign_keys_and_names_missing_files(tmp_path, hps_dir, no_hf_cache):
    from vardist.verifiers.hps import HPS_FILE, open_clip_to_transformers

    root, _, sd = hps_dir
    with pytest.raises(ValueError, match="'text.transformer.x' has no CLIPModel counterpart"):
        open_clip_to_transformers({**sd, "text.transformer.x": torch.zeros(1)})
    shutil.copytree(root / "CLIP-ViT-H-14-laion2B-s32B-b79K",
                    tmp_path / "CLIP-ViT-H-14-laion2B-s32B-b79K")
    with pytest.raises(MissingVerifierWeights, match=r"HPS_v2\.1_compressed\.pt.*xswu/HPSv2"):
        verifiers.load("hpsv2", tmp_path, device="cpu")
    # a checkpoint of another size: every mis-shaped key is named
    torch.save({"state_dict": {**sd, "visual.proj": torch.zeros(16, 4)}}, tmp_path / HPS_FILE)
    from vardist.models.checkpoint import CheckpointMismatch

    with pytest.raises(CheckpointMismatch, match="visual_projection.weight"):
        verifiers.load("hpsv2", tmp_path, device="cpu")


# --- image-reward: ImageReward v1.0 on transformers' BLIP classes ---------------------------

def _tiny_image_reward(root: Path, seed: int) -> tuple[dict, Any, Any]:
    """A tiny random-weight ImageReward in the authors' layout (blip.visual_encoder.* in BLIP
    ViT names, written here by hand; blip.text_encoder.* in med's names; mlp.layers.*) with
    its med_config.json and a bert-style vocab.txt. Returns (checkpoint, text model, head)."""
    from transformers import BlipTextConfig, BlipVisionConfig, BlipVisionModel
    from transformers.models.blip.modeling_blip_text import BlipTextModel

    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *letters, *[f"##{c}" for c in letters]]
    med = dict(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
               intermediate_size=32, max_position_embeddings=40, layer_norm_eps=1e-12,
               hidden_act="gelu", pad_token_id=0, add_cross_attention=True)
    torch.manual_seed(seed)
    vision = BlipVisionModel(BlipVisionConfig(
        hidden_size=32, patch_size=8, image_size=32, num_hidden_layers=2, num_attention_heads=16,
        intermediate_size=64, layer_norm_eps=1e-6)).eval()
    text = BlipTextModel(BlipTextConfig(**{k: v for k, v in med.items()
                                           if k != "add_cross_attention"},
                                        encoder_hidden_size=32, is_decoder=True),
                         add_pooling_layer=False).eval()
    head = {}
    for idx, (i, o) in zip((0, 2, 4, 6, 7), [(16, 1024), (1024, 128), (128, 64), (64, 16),
                                              (16, 1)]):
        head[f"layers.{idx}.weight"] = torch.randn(o, i) / i ** 0.5
        head[f"layers.{idx}.bias"] = torch.randn(o) * 0.1
    with torch.no_grad():  # BLIP's configs initialise near zero (1e-10): every tensor random
        for m in (vision, text):
            for name, p in m.named_parameters():
                if "norm" in name.lower() and name.endswith("weight"):
                    p.copy_(1 + 0.2 * torch.randn_like(p))
                else:
                    p.copy_(0.3 * torch.randn_like(p))
    v = vision.state_dict()
    ck = {"blip.visual_encoder.cls_token": v["embeddings.class_embedding"],
          "blip.visual_encoder.pos_embed": v["embeddings.position_embedding"],
          "blip.visual_encoder.patch_embed.proj.weight": v["embeddings.patch_embedding.weight"],
          "blip.visual_encoder.patch_embed.proj.bias": v["embeddings.patch_embedding.bias"],
          "blip.visual_encoder.norm.weight": v["post_layernorm.weight"],
          "blip.visual_encoder.norm.bias": v["post_layernorm.bias"]}
    for i in range(2):
        for blip, hf in (("norm1", "layer_norm1"), ("norm2", "layer_norm2"),
                         ("attn.qkv", "self_attn.qkv"), ("attn.proj", "self_attn.projection"),
                         ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2")):
            for p in ("weight", "bias"):
                ck[f"blip.visual_encoder.blocks.{i}.{blip}.{p}"] = v[f"encoder.layers.{i}.{hf}.{p}"]
    ck.update({f"blip.text_encoder.{k}": t for k, t in text.state_dict().items()})
    ck.update({f"mlp.{k}": t for k, t in head.items()})
    ck["blip.vision_proj.weight"] = torch.zeros(4, 32)  # in the file, not read (non-strict)
    folder = root / "ImageReward"
    folder.mkdir(parents=True)
    torch.save({k: t.clone() for k, t in ck.items()}, folder / "ImageReward.pt")
    (folder / "med_config.json").write_text(json.dumps(med))
    (root / "bert-base-uncased").mkdir()
    (root / "bert-base-uncased" / "vocab.txt").write_text("\n".join(vocab) + "\n")
    return ck, text, head


def _blip_vit(ck: dict, pixels: torch.Tensor, heads: int = 16) -> torch.Tensor:
    """BLIP's ViT (timm layout: fused qkv as [B, N, 3, heads, dim], pre-norm blocks, LayerNorm
    eps 1e-6, GELU MLP), from the checkpoint's own names: all tokens after the final norm."""
    f = torch.nn.functional
    p = lambda n: ck[f"blip.visual_encoder.{n}"]  # noqa: E731
    w = p("patch_embed.proj.weight")
    x = f.conv2d(pixels, w, p("patch_embed.proj.bias"), stride=w.shape[-1]).flatten(2)
    x = torch.cat([p("cls_token").expand(len(x), -1, -1), x.transpose(1, 2)], 1) + p("pos_embed")
    ln = lambda x, n: f.layer_norm(x, x.shape[-1:], p(f"{n}.weight"), p(f"{n}.bias"), 1e-6)  # noqa
    for i in range(2):
        b = f"blocks.{i}"
        B, N, C = x.shape
        qkv = f.linear(ln(x, f"{b}.norm1"), p(f"{b}.attn.qkv.weight"), p(f"{b}.attn.qkv.bias"))
        q, k, v = qkv.reshape(B, N, 3, heads, C // heads).permute(2, 0, 3, 1, 4)
        att = ((q @ k.transpose(-2, -1)) * (C // heads) ** -0.5).softmax(-1)
        x = x + f.linear((att @ v).transpose(1, 2).reshape(B, N, C), p(f"{b}.attn.proj.weight"),
                         p(f"{b}.attn.proj.bias"))
        h = f.gelu(f.linear(ln(x, f"{b}.norm2"), p(f"{b}.mlp.fc1.weight"), p(f"{b}.mlp.fc1.bias")))
        x = x + f.linear(h, p(f"{b}.mlp.fc2.weight"), p(f"{b}.mlp.fc2.bias"))
    return ln(x, "norm")


def test_image_reward_maps_blip_key_for_key_and_scores_the_authors_formula(tmp_path, images):
    from transformers import BertTokenizer, CLIPImageProcessor

    MEAN, STD = 0.16717362830052426, 1.0333394966054072  # ImageReward's published constants
    ck, text, head = _tiny_image_reward(tmp_path, seed=6)
    v = verifiers.load("image-reward", tmp_path, device="cpu")
    got = v.score(images, PROMPTS)
    pixels = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                                resample=3, image_mean=[0.48145466, 0.4578275, 0.40821073],
                                image_std=[0.26862954, 0.26130258, 0.27577711])(
        list(images), return_tensors="pt")["pixel_values"]
    tok = BertTokenizer(str(tmp_path / "bert-base-uncased" / "vocab.txt"))(
        PROMPTS, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
    with torch.no_grad():
        image = _blip_vit(ck, pixels)
        out = text(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"],
                   encoder_hidden_states=image,
                   encoder_attention_mask=torch.ones(image.shape[:2], dtype=torch.long),
                   is_decoder=False).last_hidden_state[:, 0]
        x = out.double()
        for idx in (0, 2, 4, 6, 7):  # ImageReward's MLP: no activations, dropout off
            x = x @ head[f"layers.{idx}.weight"].double().T + head[f"layers.{idx}.bias"].double()
    want = ((x[:, 0] - MEAN) / STD).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # the image matters (one prompt, eight images) and so does the prompt
    assert len(set(np.round(v.score(images, PROMPTS[:1] * len(images)), 6))) == len(images)
    assert len(set(np.round(v.score(images[:1].repeat(3, 0), PROMPTS[:3]), 6))) == 3
    # the normalisation constants, exactly: a head that outputs a constant c scores (c-m)/s
    with torch.no_grad():
        for m in v.model.head.layers:
            if isinstance(m, torch.nn.Linear):
                m.weight.zero_()
                m.bias.zero_()
        v.model.head.layers[7].bias.fill_(1.5)
    np.testing.assert_allclose(v.score(images[:2], PROMPTS[:2]), (1.5 - MEAN) / STD, rtol=1e-6)


def test_image_reward_names_missing_files_and_foreign_keys(tmp_path, no_hf_cache):
    from vardist.verifiers.image_reward import vision_key

    with pytest.raises(MissingVerifierWeights, match=r"ImageReward.*huggingface\.co/THUDM"):
        verifiers.load("image-reward", tmp_path, device="cpu")
    _tiny_image_reward(tmp_path, seed=6)
    (tmp_path / "bert-base-uncased" / "vocab.txt").unlink()
    with pytest.raises(MissingVerifierWeights, match="lacks vocab.txt"):
        verifiers.load("image-reward", tmp_path, device="cpu")
    with pytest.raises(ValueError, match="'blocks.0.attn.q_bias' has no BlipVisionModel"):
        vision_key("blocks.0.attn.q_bias")
