"""Registry entries for Infinity: the released 2B model and the tiny fixture model.

Pure data plus builders; importing this module does not import the model code.

Search defaults (DESIGN.md steps 4-6): the paper searches Infinity at scale 3 (the 6x6 map of the
1024x1024 schedule) with n up to 3000 and cfg 4 (the GenEval setting: guidance on logits, tau 1,
top_k 900, top_p 0.97). The default strategy is the released code's `infinity` rule (top-100 by
density, rank-weighted pick); the paper's density-adaptive rule is available with alpha 1.0 and
#rep 500 (its table).
"""

from __future__ import annotations

import os
from pathlib import Path

from vardist.models.registry import ModelSpec, SearchDefaults, register

TRANSFORMER_FILE = "infinity_2b_reg.pth"
VAE_FILE = "infinity_vae_d32reg.pth"
T5_FOLDER = "flan-t5-xl"
SOURCE = ("https://huggingface.co/FoundationVision/Infinity (infinity_2b_reg.pth, "
          "infinity_vae_d32reg.pth) and https://huggingface.co/google/flan-t5-xl (the whole "
          "repository as a folder named flan-t5-xl)")
DEFAULTS = SearchDefaults(scale=3, n=3000, strategy="infinity", alpha=1.0, rep=500, k=100,
                          cfg=4.0, top_k=900, top_p=0.97, tau=1.0)
TINY_ENV = "VARDIST_INFINITY_TINY"


def official_configs():
    """(InfinityConfig, BSQVAEConfig) of Infinity-2B and its d32 BSQ VAE."""
    from vardist.models.infinity.bsq_vae import BSQVAEConfig
    from vardist.models.infinity.transformer import InfinityConfig

    return InfinityConfig(), BSQVAEConfig()


def build_2b(spec: ModelSpec, files: dict[str, Path], device: str, *, h_div_w: float = 1.0, pn: str = "1M"):
    from vardist.models.checkpoint import read_state_dict
    from vardist.models.infinity.generator import build
    from vardist.models.infinity.text import flan_t5

    icfg, vcfg = official_configs()
    return build(read_state_dict(files[TRANSFORMER_FILE]), read_state_dict(files[VAE_FILE], unwrap=("vae",)),
                 icfg, vcfg, h_div_w=h_div_w, pn=pn, text_encoder=flan_t5(files[T5_FOLDER], device),
                 device=device)


def tiny_fixture_dir() -> Path:
    """$VARDIST_INFINITY_TINY, else $VARDIST_SHARED/fixtures/infinity-tiny, else
    ../shared/fixtures/infinity-tiny next to the repository."""
    shared = Path(os.environ.get("VARDIST_SHARED", Path(__file__).resolve().parents[3].parent / "shared"))
    folder = Path(os.environ.get(TINY_ENV, shared / "fixtures" / "infinity-tiny"))
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"the infinity-tiny weights are not at {folder}; point {TINY_ENV} at the "
                                f"infinity-tiny fixture folder (config.json, infinity.pth, vae.pth)")
    return folder


def build_tiny(spec: ModelSpec, files: dict[str, Path], device: str):
    """The fixture's random-weight Infinity + BSQ VAE with a tiny random T5 (seed 0, byte
    tokenizer) of the fixture's text width: runs on a CPU, downloads nothing."""
    import json

    from vardist.models.infinity.generator import from_fixture
    from vardist.models.infinity.text import tiny_t5

    folder = tiny_fixture_dir()
    width = json.loads((folder / "config.json").read_text())["infinity_kwargs"]["text_channels"]
    return from_fixture(folder, text_encoder=tiny_t5(width, seed=0, device=device), device=device)


register(ModelSpec(
    name="infinity-2b", family="infinity",
    description="Infinity-2B, text-to-image 1024x1024 (bitwise, BSQ VAE d32, Flan-T5-XL text)",
    defaults=DEFAULTS, files=(TRANSFORMER_FILE, VAE_FILE, T5_FOLDER), source=SOURCE,
    num_scales=13, condition_kind="prompt", builder=build_2b))

register(ModelSpec(
    name="infinity-tiny", family="infinity",
    description="tiny random-weight Infinity (reference fixture) + tiny random T5, 256x256, for tests",
    defaults=DEFAULTS, num_scales=7, condition_kind="prompt", builder=build_tiny))
