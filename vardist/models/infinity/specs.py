"""Registry entries for Infinity: the released 2B and 8B models and the tiny fixture models.

Pure data plus builders; importing this module does not import the model code.

Search defaults: the paper searches Infinity at scale 3 (the 6x6 map of the
1024x1024 schedule) with n up to 3000 and cfg 4 (the GenEval setting: guidance on logits, tau 1,
top_k 900, top_p 0.97). The default strategy is the released code's `infinity` rule (top-100 by
density, rank-weighted pick); the paper's density-adaptive rule is available with alpha 1.0 and
#rep 500 (its table). The paper searches only the 2B model; 8B takes the same defaults (its
scale 3 is the same 6x6 token map, each token now 56 bits), for want of evidence for others.

Infinity-8B (`apply_spatial_patchify=1`): depth 40, width 3584, 28 heads, 8 block chunks, the
14-bit VAE `infinity_vae_d56_f8_14_patchify.pth` (stride 8, 4 levels) and 56 bits per token; the
transformer is the sharded folder `infinity_8b_weights/` (index json + safetensors shards), or
where that is absent a single `infinity_8b_weights.pth` state dict with the same keys. The
512x512 model `infinity_8b_512x512_weights/` is assumed to share the layout (the reference loads
it with the same `model_type='infinity_8b'`) and runs the 0.25M (10-scale) schedule.

`text_device` (builder option): where flan-t5-xl lives. None: beside the transformer;
"cpu": kept on the CPU in fp32 (frees ~2.4 GB of GPU memory; fp32 features differ from the fp16
ones by rounding); "offload": parked on the CPU in the model's dtype, moved to the GPU to encode
a batch's prompts and back (same numbers as None, slower).
"""

from __future__ import annotations

import os
from pathlib import Path

from vardist.models.memory import FLAN_T5_XL
from vardist.models.registry import ModelSpec, SearchDefaults, register

TRANSFORMER_FILE = "infinity_2b_reg.pth"
VAE_FILE = "infinity_vae_d32reg.pth"
T5_FOLDER = "flan-t5-xl"
HF_REPOS = ("FoundationVision/Infinity", "google/flan-t5-xl")  # T5_FOLDER: the whole second one
SOURCE = ("https://huggingface.co/FoundationVision/Infinity (infinity_2b_reg.pth, "
          "infinity_vae_d32reg.pth) and https://huggingface.co/google/flan-t5-xl (the whole "
          "repository as a folder named flan-t5-xl)")
DEFAULTS = SearchDefaults(scale=3, n=3000, strategy="infinity", alpha=1.0, rep=500, k=100,
                          cfg=4.0, top_k=900, top_p=0.97, tau=1.0)
TINY_ENV = "VARDIST_INFINITY_TINY"
TINY_8B_ENV = "VARDIST_INFINITY8B_TINY"


TRANSFORMER_8B = "infinity_8b_weights"              # sharded folder
TRANSFORMER_8B_512 = "infinity_8b_512x512_weights"  # sharded folder
# The single-file form: FoundationVision/Infinity publishes the 8B transformers only as the sharded
# folders, so the one .pth state dict a user may hold (same keys, e.g. merged from the shards) is
# looked up under the folder's name plus .pth, and only where that folder is absent.
SINGLE_FILE_8B = {TRANSFORMER_8B: (f"{TRANSFORMER_8B}.pth",),
                  TRANSFORMER_8B_512: (f"{TRANSFORMER_8B_512}.pth",)}
VAE_8B = "infinity_vae_d56_f8_14_patchify.pth"
SOURCE_8B = ("https://huggingface.co/FoundationVision/Infinity (the folder {folder}/ with its "
             "index json and safetensors shards, and "
             f"{VAE_8B}) and https://huggingface.co/google/flan-t5-xl (the whole repository as a "
             "folder named flan-t5-xl)")
# Official sizes (tools/run_infinity.py, model_type='infinity_8b'); what `vardist models --memory`
# and the meta-device key test read.
SIZES_8B = dict(depth=40, embed_dim=3584, num_heads=28, block_chunks=8, d_vae=56, patch=2)
VAE_8B_SIZES = dict(base_ch=128, ch_mult=(1, 2, 4, 4), num_res_blocks=2, codebook_dim=14)


def official_configs(name: str = "infinity-2b"):
    """(InfinityConfig, BSQVAEConfig) of a released model: Infinity-2B with its d32 BSQ VAE, or
    Infinity-8B (either resolution) with its 14-bit patchify VAE."""
    from vardist.models.infinity.bsq_vae import BSQVAEConfig
    from vardist.models.infinity.transformer import InfinityConfig

    if name == "infinity-2b":
        return InfinityConfig(), BSQVAEConfig()
    if name in ("infinity-8b", "infinity-8b-512"):
        return InfinityConfig(**SIZES_8B), BSQVAEConfig(**VAE_8B_SIZES)
    raise ValueError(f"no released Infinity named {name!r}; choose infinity-2b, infinity-8b or infinity-8b-512")


def _text_encoder(folder: Path, device: str, text_device: str | None):
    from vardist.models.infinity.text import flan_t5

    if text_device not in (None, "cpu", "offload"):
        raise ValueError(f"text_device must be None (beside the transformer), 'cpu' or 'offload', "
                         f"got {text_device!r}")
    if text_device == "cpu":
        return flan_t5(folder, "cpu")
    if text_device == "offload":
        return flan_t5(folder, device, park="cpu")
    return flan_t5(folder, device)


def build_2b(spec: ModelSpec, files: dict[str, Path], device: str, *, h_div_w: float = 1.0, pn: str = "1M",
             text_device: str | None = None):
    from vardist.models.checkpoint import read_state_dict
    from vardist.models.infinity.generator import build

    icfg, vcfg = official_configs()
    text = _text_encoder(files[T5_FOLDER], device, text_device)
    return build(read_state_dict(files[TRANSFORMER_FILE]), read_state_dict(files[VAE_FILE], unwrap=("vae",)),
                 icfg, vcfg, h_div_w=h_div_w, pn=pn, text_encoder=text, device=device)


def build_8b(spec: ModelSpec, files: dict[str, Path], device: str, *, h_div_w: float = 1.0,
             pn: str | None = None, text_device: str | None = None, transformer: str | Path | None = None):
    """Infinity-8B from the sharded folder or the single .pth the registry found under its name
    (or `transformer=`: another folder or one .pth / .safetensors file with the same keys). pn
    defaults to the model's resolution."""
    from vardist.models.checkpoint import read_state_dict
    from vardist.models.infinity.generator import build
    from vardist.models.infinity.sharded import read_transformer_weights

    folder = TRANSFORMER_8B_512 if spec.name == "infinity-8b-512" else TRANSFORMER_8B
    pn = pn or ("0.25M" if spec.name == "infinity-8b-512" else "1M")
    icfg, vcfg = official_configs(spec.name)
    sd = read_transformer_weights(transformer or files[folder])  # before T5: fail early on bad shards
    text = _text_encoder(files[T5_FOLDER], device, text_device)
    return build(sd, read_state_dict(files[VAE_8B], unwrap=("vae",)), icfg, vcfg, h_div_w=h_div_w, pn=pn,
                 text_encoder=text, device=device)


def tiny_fixture_dir(fixture: str = "infinity-tiny", env: str = TINY_ENV) -> Path:
    """$<env>, else $VARDIST_SHARED/fixtures/<fixture>, else ../shared/fixtures/<fixture> next to
    the repository."""
    shared = Path(os.environ.get("VARDIST_SHARED", Path(__file__).resolve().parents[3].parent / "shared"))
    folder = Path(os.environ.get(env, shared / "fixtures" / fixture))
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"the {fixture} weights are not at {folder}; point {env} at the "
                                f"{fixture} fixture folder (config.json, infinity.pth, vae.pth)")
    return folder


def build_tiny(spec: ModelSpec, files: dict[str, Path], device: str, *, text_device: str | None = None):
    """The fixture's random-weight Infinity + BSQ VAE with a tiny random T5 (seed 0, byte
    tokenizer) of the fixture's text width: runs on a CPU, downloads nothing. infinity-8b-tiny
    reads the transformer from the fixture's sharded folder, as infinity-8b does."""
    from vardist.models.checkpoint import read_json_config
    from vardist.models.infinity.generator import from_fixture
    from vardist.models.infinity.text import tiny_t5

    if text_device not in (None, "cpu", "offload"):
        raise ValueError(f"text_device must be None, 'cpu' or 'offload', got {text_device!r}")
    eight = spec.name == "infinity-8b-tiny"
    folder = tiny_fixture_dir("infinity8b-tiny", TINY_8B_ENV) if eight else tiny_fixture_dir()
    width = read_json_config(folder / "config.json")["infinity_kwargs"]["text_channels"]
    text = tiny_t5(width, seed=0, device="cpu" if text_device == "cpu" else device,
                   park="cpu" if text_device == "offload" else None)
    return from_fixture(folder, text_encoder=text, device=device,
                        transformer="infinity_sharded" if eight else "infinity.pth")


register(ModelSpec(
    name="infinity-2b", family="infinity",
    description="Infinity-2B, text-to-image 1024x1024 (bitwise, BSQ VAE d32, Flan-T5-XL text)",
    defaults=DEFAULTS, files=(TRANSFORMER_FILE, VAE_FILE, T5_FOLDER), source=SOURCE, hf_repos=HF_REPOS,
    num_scales=13, condition_kind="prompt", builder=build_2b,
    configs=lambda: (*official_configs("infinity-2b"), FLAN_T5_XL)))

register(ModelSpec(
    name="infinity-8b", family="infinity",
    description="Infinity-8B, text-to-image 1024x1024 (56-bit tokens, 14-bit BSQ VAE, Flan-T5-XL; "
                "an 80 GB-class GPU per actor in bf16)",
    defaults=DEFAULTS, files=(TRANSFORMER_8B, VAE_8B, T5_FOLDER), source=SOURCE_8B.format(folder=TRANSFORMER_8B),
    hf_repos=HF_REPOS, alternates=SINGLE_FILE_8B,
    num_scales=13, condition_kind="prompt", builder=build_8b,
    configs=lambda: (*official_configs("infinity-8b"), FLAN_T5_XL)))

register(ModelSpec(
    name="infinity-8b-512", family="infinity",
    description="Infinity-8B, text-to-image 512x512 (the 0.25M schedule; layout of infinity-8b)",
    defaults=DEFAULTS, files=(TRANSFORMER_8B_512, VAE_8B, T5_FOLDER),
    source=SOURCE_8B.format(folder=TRANSFORMER_8B_512), hf_repos=HF_REPOS, alternates=SINGLE_FILE_8B,
    num_scales=10, condition_kind="prompt", builder=build_8b,
    configs=lambda: (*official_configs("infinity-8b-512"), FLAN_T5_XL)))

register(ModelSpec(
    name="infinity-tiny", family="infinity",
    description="tiny random-weight Infinity (reference fixture) + tiny random T5, 256x256, for tests",
    defaults=DEFAULTS, num_scales=7, condition_kind="prompt", builder=build_tiny,
    fixture_dir=tiny_fixture_dir))

register(ModelSpec(
    name="infinity-8b-tiny", family="infinity",
    description="tiny random-weight Infinity-8B layout (reference fixture: 56-bit tokens, 14-bit VAE, "
                "sharded weights) + tiny random T5, 256x256, for tests",
    defaults=DEFAULTS, num_scales=7, condition_kind="prompt", builder=build_tiny,
    fixture_dir=lambda: tiny_fixture_dir("infinity8b-tiny", TINY_8B_ENV)))
