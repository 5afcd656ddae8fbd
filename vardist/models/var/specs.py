"""Registry entries for the released VAR models (ImageNet 256x256, and 512x512 for d36;
class-conditional).

Pure data plus a builder; importing this module does not import the model code.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from vardist.models.registry import ModelSpec, SearchDefaults, register

VAE_FILE = "vae_ch160v4096z32.pth"
HF_REPO = "FoundationVision/var"
SOURCE = f"https://huggingface.co/{HF_REPO}"
# alpha per depth: the paper's model-size ablation (Table 3a) at n = 50, within Table 1b's ranges
# (docs/selection.md has the table). The paper has no d36 row: d36 takes d30's settings, the
# largest model the paper tuned (scale 1 is the 2x2 map in both schedules).
ALPHA_BY_DEPTH = {16: 2.4, 20: 2.4, 24: 2.7, 30: 2.4, 36: 2.4}
PARAMS = {16: "310M", 20: "600M", 24: "1.0B", 30: "2.0B", 36: "2.3B"}
# d36 is the 512x512 model: shared AdaLN and a 10-scale schedule ending at 32 (same VAE file)
SHARED_ALN_DEPTHS = (36,)
PATCH_NUMS_512 = (1, 2, 3, 4, 6, 9, 13, 18, 24, 32)


def var_file(depth: int) -> str:
    return f"var_d{depth}.pth"


def official_configs(depth: int):
    """(VQVAEConfig, VARConfig) of the released VAE and VAR-d{depth}."""
    from vardist.models.var.transformer import VARConfig
    from vardist.models.var.vqvae import VQVAEConfig

    if depth not in ALPHA_BY_DEPTH:
        raise ValueError(f"no released VAR of depth {depth}; choose one of {sorted(ALPHA_BY_DEPTH)}")
    if depth in SHARED_ALN_DEPTHS:
        return (VQVAEConfig(patch_nums=PATCH_NUMS_512),
                VARConfig.for_depth(depth, shared_aln=True, patch_nums=PATCH_NUMS_512))
    return VQVAEConfig(), VARConfig.for_depth(depth)


def build(spec: ModelSpec, files: dict[str, Path], device: str, autocast: str = "off"):
    """autocast="fp16": run.py's fp16 autocast with TF32 on CUDA (VARGenerator)."""
    from vardist.models.checkpoint import read_state_dict
    from vardist.models.var.generator import VARGenerator

    depth = int(spec.name.removeprefix("var-d"))
    vae_cfg, var_cfg = official_configs(depth)
    # the official files are plain state dicts; trainer checkpoints keep the model under these keys
    return VARGenerator.from_state_dicts(
        vae_cfg, var_cfg, read_state_dict(files[VAE_FILE]),
        read_state_dict(files[var_file(depth)], unwrap=("trainer", "var_wo_ddp")), device, autocast)


for _depth, _alpha in ALPHA_BY_DEPTH.items():
    register(ModelSpec(
        name=f"var-d{_depth}", family="var",
        description=f"VAR-d{_depth} ({PARAMS[_depth]}), ImageNet "
                    f"{512 if _depth in SHARED_ALN_DEPTHS else 256}px class-conditional",
        defaults=SearchDefaults(scale=1, n=50, strategy="var-scaling", alpha=_alpha, rep=10,
                                cfg=1.0, top_k=900, top_p=0.96),
        files=(VAE_FILE, var_file(_depth)), source=SOURCE, hf_repos=(HF_REPO,),
        num_scales=10, condition_kind="class", num_classes=1000, builder=build,
        configs=partial(official_configs, _depth)))
