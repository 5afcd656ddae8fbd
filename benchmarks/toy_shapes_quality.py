"""toy-shapes' plain-sampling quality on the toy GenEval prompts, per tag, next to the ceilings:
the rendered ground-truth scenes and the same scenes through the toy BSQ VAE (encode + decode,
no transformer).

    python benchmarks/toy_shapes_quality.py                  # cfg 1 (the default), 4 images per prompt
    python benchmarks/toy_shapes_quality.py --cfg 1,2,3 --samples 4
    python benchmarks/toy_shapes_quality.py --weights DIR    # weights written by `vardist train toy-shapes`
    python benchmarks/toy_shapes_quality.py --grid docs/img/toy-shapes.png

Plain sampling is `vardist.search(..., strategy="none")` (candidate 0 of every pool is the plain
sample), written in GenEval's layout and scored by `vardist.zoo.geneval_eval.evaluate_folder`.
Prints a markdown table: overall (GenEval's mean over tags) and the accuracy per tag.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import vardist
from vardist.models import get_spec
from vardist.zoo.geneval_eval import Scores, evaluate_image
from vardist.zoo.shapes import EVAL_PROMPTS, TAGS, render_for
from vardist.zoo.shapes_model import WEIGHTS_DIR, load_generator
from vardist.zoo.shapes_train import to_model_input


def plain_scores(weights: Path, cfg: float, samples: int, out: Path) -> Scores:
    """Plain sampling of every evaluation prompt, `samples` images each, scored."""
    from vardist.zoo.geneval_eval import evaluate_folder

    gen = load_generator(weights)
    gen.search_defaults = get_spec("toy-shapes").defaults
    vardist.search(gen, prompts=EVAL_PROMPTS, samples=samples, strategy="none", cfg=cfg, out=out)
    return evaluate_folder(out)


def vae_ceiling(weights: Path, seed: int = 0) -> tuple[dict[str, float], dict[str, float]]:
    """Per-tag accuracy of one rendered scene per prompt, and of the same scenes after the VAE."""
    gen = load_generator(weights)
    records = [json.loads(line) for line in EVAL_PROMPTS.read_text().splitlines()]
    rng = np.random.default_rng(seed)
    real = np.stack([render_for(r, rng) for r in records])
    with torch.no_grad():
        _, z = gen.vae.encode_bits(to_model_input(real), gen.vae_schedule)
        from vardist.models.infinity.generator import to_uint8

        rec = to_uint8(gen.vae.decode(z)).numpy()

    def per_tag(images: np.ndarray) -> dict[str, float]:
        ok = [evaluate_image(im, r)[0] for im, r in zip(images, records)]
        return {t: float(np.mean([o for o, r in zip(ok, records) if r["tag"] == t])) for t in TAGS}

    return per_tag(real), per_tag(rec)


def save_grid(weights: Path, path: Path, cfg: float, per_prompt: int = 8, zoom: int = 4) -> None:
    """One row per tag (its first evaluation prompt), `per_prompt` plain samples (seeds 0..),
    upscaled `zoom` times with 2 px gaps; the prompts go to stdout."""
    from PIL import Image

    from vardist.models.interface import Sampling

    gen = load_generator(weights)
    records = [json.loads(line) for line in EVAL_PROMPTS.read_text().splitlines()]
    firsts = [next(r for r in records if r["tag"] == t) for t in TAGS]
    gap, side = 2, 32 * zoom
    canvas = np.full((len(TAGS) * (side + gap) + gap, per_prompt * (side + gap) + gap, 3), 60, np.uint8)
    for i, rec in enumerate(firsts):
        imgs = gen.generate_images([rec["prompt"]] * per_prompt, list(range(per_prompt)), Sampling(cfg=cfg))
        for j, img in enumerate(imgs.numpy()):
            big = img.repeat(zoom, 0).repeat(zoom, 1)
            y, x = gap + i * (side + gap), gap + j * (side + gap)
            canvas[y:y + side, x:x + side] = big
        print(f"row {i + 1}: {rec['tag']}: {rec['prompt']}")
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(canvas).save(path)


def row(name: str, tags: dict[str, float], extra: str = "") -> str:
    overall = float(np.mean(list(tags.values())))
    return f"| {name} | **{overall:.3f}** | " + " | ".join(f"{tags[t]:.2f}" for t in TAGS) + f" | {extra} |"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", type=Path, default=WEIGHTS_DIR)
    p.add_argument("--cfg", default="1", help="comma-separated guidance strengths")
    p.add_argument("--samples", type=int, default=4, help="images per prompt")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-ceiling", action="store_true", help="skip the ground-truth and VAE rows")
    p.add_argument("--grid", type=Path, default=None,
                   help="also save a PNG: one row per tag, 8 plain samples (first --cfg)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    if a.grid is not None:
        save_grid(a.weights, a.grid, float(a.cfg.split(",")[0]))
    print("| images | overall | " + " | ".join(TAGS) + " | gen s |")
    print("|---|---|" + "---|" * len(TAGS) + "---|")
    if not a.no_ceiling:
        real, rec = vae_ceiling(a.weights)
        print(row("rendered scenes (1 per prompt)", real))
        print(row("the same through the BSQ VAE", rec))
    for cfg in (float(c) for c in a.cfg.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.time()
            scores = plain_scores(a.weights, cfg, a.samples, Path(tmp) / "run")
            print(row(f"toy-shapes plain, cfg {cfg:g}, {a.samples} per prompt", scores.tag_accuracy(),
                      f"{time.time() - t0:.1f}"), flush=True)
            lo, hi = np.percentile(scores.bootstrap(), [2.5, 97.5])
            print(f"|  | 95% bootstrap over prompts: {lo:.3f}-{hi:.3f} |" + " |" * (len(TAGS) + 1))


if __name__ == "__main__":
    main()
