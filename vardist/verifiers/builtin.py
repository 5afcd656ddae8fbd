"""The built-in verifiers' registry entries: each one's name, description, input, the files it
reads and where they are published. Pure data: a builder is named by module and function and
imported when the verifier loads, so the checks of a run (`--verifier`, `--verifier-weights`)
and `vardist verifiers` import no torch, and a refusal there stays fast.

The file and repository names are defined here once; the implementation modules (clip, hps,
image_reward, toy) import them from here.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from vardist.verifiers.base import Requirement, VerifierSpec, register

if TYPE_CHECKING:
    from vardist.verifiers.base import Verifier

# CLIP-based verifiers (vardist.verifiers.clip)
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
TOKENIZER_FILES = ("tokenizer.json", "vocab.json")
CLIP_L = "openai/clip-vit-large-patch14"
CLIP_H = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
PICKSCORE = "yuvalkirstain/PickScore_v1"
AESTHETIC_FILE = "sac+logos+ava1-l14-linearMSE.pth"
AESTHETIC_SOURCE = "https://github.com/christophschuhmann/improved-aesthetic-predictor"
# HPS v2.1 (vardist.verifiers.hps)
HPS_FILE = "HPS_v2.1_compressed.pt"
HPS_SOURCE = "https://huggingface.co/xswu/HPSv2 (from github.com/tgxs002/HPSv2)"
# ImageReward (vardist.verifiers.image_reward)
IMAGE_REWARD_REPO = "THUDM/ImageReward"
IMAGE_REWARD_FILE, MED_CONFIG = "ImageReward.pt", "med_config.json"
BERT = "google-bert/bert-base-uncased"
# the toy judge (vardist.verifiers.toy): the file `vardist train toy-digits` writes, as
# vardist.zoo.specs.JUDGE_FILE names it
JUDGE_FILE = "judge.safetensors"


@dataclass(frozen=True)
class LazyBuild:
    """A spec's `build` that imports vardist.verifiers.<module> on the first call and calls its
    `function(files, device)`: the torch code loads with the verifier, not with its spec."""

    module: str
    function: str

    def __call__(self, files: dict[str, Path], device: Any) -> Verifier:
        module = importlib.import_module(f"vardist.verifiers.{self.module}")
        return getattr(module, self.function)(files, device)


def _judge_dir() -> Path:
    from vardist.zoo.specs import WEIGHTS_DIR

    return WEIGHTS_DIR


def _known_prompts(conditions: Sequence[Any]) -> None:
    from vardist.zoo.shapes import make_eval_prompts

    known = {r["prompt"] for r in make_eval_prompts()}
    unknown = [c for c in conditions if not isinstance(c, dict) and c not in known]
    if unknown:
        raise ValueError(f"verifier 'toy-geneval' scores the toy GenEval prompts "
                         f"(toy-geneval.jsonl); {len(unknown)} prompt(s) are not among them, "
                         f"e.g. {unknown[0]!r}")


# a transformers model folder, and a CLIP processor's files
_MODEL = (("config.json",), WEIGHT_FILES)
_PROCESSOR = (("preprocessor_config.json",), TOKENIZER_FILES)

register(VerifierSpec(
    name="clip", condition_kind="prompt",
    description=f"CLIPScore: max(100 cos(image, prompt), 0) with {CLIP_L}",
    requires=(Requirement.hf(CLIP_L, *_MODEL, *_PROCESSOR),),
    build=LazyBuild("clip", "_build_clip"), image_tower=True))

register(VerifierSpec(
    name="pickscore", condition_kind="prompt",
    description=f"PickScore: logit_scale x cos(image, prompt) with {PICKSCORE} and the CLIP-H "
                f"processor",
    requires=(Requirement.hf(PICKSCORE, *_MODEL), Requirement.hf(CLIP_H, *_PROCESSOR)),
    build=LazyBuild("clip", "_build_pickscore"), image_tower=True))

register(VerifierSpec(
    name="aesthetic", condition_kind="any",
    description=f"LAION aesthetic predictor: its MLP ({AESTHETIC_FILE}) on the {CLIP_L} image "
                f"embedding",
    requires=(Requirement.hf(CLIP_L, *_MODEL, ("preprocessor_config.json",)),
              Requirement(AESTHETIC_FILE, AESTHETIC_SOURCE)),
    build=LazyBuild("clip", "_build_aesthetic"), image_tower=True))

register(VerifierSpec(
    name="hpsv2", condition_kind="prompt",
    description=f"HPS v2.1: cos(image, prompt) with {HPS_FILE} (open_clip ViT-H-14) on "
                f"transformers' CLIPModel, the {CLIP_H} config and processor",
    requires=(Requirement.hf(CLIP_H, ("config.json",), ("preprocessor_config.json",),
                             TOKENIZER_FILES),
              Requirement(HPS_FILE, HPS_SOURCE)),
    build=LazyBuild("hps", "_build"), image_tower=True))

register(VerifierSpec(
    name="image-reward", condition_kind="prompt",
    description="ImageReward v1.0: (MLP(BLIP text [CLS] x image) - mean) / std, on "
                "transformers' BLIP classes",
    requires=(Requirement.hf(IMAGE_REWARD_REPO, (IMAGE_REWARD_FILE,), (MED_CONFIG,)),
              Requirement.hf(BERT, ("vocab.txt",))),
    build=LazyBuild("image_reward", "_build")))

register(VerifierSpec(
    name="toy-judge", condition_kind="class", models=("toy-digits",),
    description="toy-digits: the zoo digit judge's probability of the requested class (shipped)",
    requires=(Requirement(JUDGE_FILE, "a retrained judge: `vardist train toy-digits --out DIR` "
                                      "writes it"),),
    bundled_dir=_judge_dir,
    build=LazyBuild("toy", "_build_judge")))

register(VerifierSpec(
    name="toy-geneval", condition_kind="prompt", models=("toy-shapes",),
    check_conditions=_known_prompts,
    description="toy-shapes: 1 when the image satisfies its prompt's GenEval record (toy "
                "evaluator), else 0; needs no weights",
    build=LazyBuild("toy", "_build_geneval")))
