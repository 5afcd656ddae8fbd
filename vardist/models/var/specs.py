"""Registry entries for the released VAR models (ImageNet 256x256, class-conditional).

Pure data plus a builder; importing this module does not import the model code.
"""

from __future__ import annotations

from pathlib import Path

from vardist.models.registry import ModelSpec, SearchDefaults, register

VAE_FILE = "vae_ch160v4096z32.pth"
SOURCE = "https://huggingface.co/FoundationVision/var"
# alpha per depth: the paper's model-size ablation (Table 3a) at n = 50, within Table 1b's ranges
ALPHA_BY_DEPTH = {16: 2.4, 20: 2.4, 24: 2.7, 30: 2.4}
PARAMS = {16: "310M", 20: "600M", 24: "1.0B", 30: "2.0B"}


def var_file(depth: int) -> str:
    return f"var_d{depth}.pth"


def official_configs(depth: int):
    """(VQVAEConfig, VARConfig) of the released VAE and VAR-d{depth}."""
    from vardist.models.var.transformer import VARConfig
    from vardist.models.var.vqvae import VQVAEConfig

    if depth not in ALPHA_BY_DEPTH:
        raise ValueError(f"no released VAR of depth {depth}; choose one of {sorted(ALPHA_BY_DEPTH)}")
    return VQVAEConfig(), VARConfig.for_depth(depth)


def build(spec: ModelSpec, files: dict[str, Path], device: str):
    from vardist.models.checkpoint import read_state_dict
    from vardist.models.var.generator import VARGenerator

    depth = int(spec.name.removeprefix("var-d"))
    vae_cfg, var_cfg = official_configs(depth)
    # the official files are plain state dicts; trainer checkpoints keep the model under these keys
    return VARGenerator.from_state_dicts(
        vae_cfg, var_cfg, read_state_dict(files[VAE_FILE]),
        read_state_dict(files[var_file(depth)], unwrap=("trainer", "var_wo_ddp")), device)


for _depth, _alpha in ALPHA_BY_DEPTH.items():
    register(ModelSpec(
        name=f"var-d{_depth}", family="var",
        description=f"VAR-d{_depth} ({PARAMS[_depth]}), ImageNet 256x256 class-conditional",
        defaults=SearchDefaults(scale=1, n=50, strategy="var-scaling", alpha=_alpha, rep=10,
                                cfg=1.0, top_k=900, top_p=0.96),
        files=(VAE_FILE, var_file(_depth)), source=SOURCE,
        num_scales=10, condition_kind="class", num_classes=1000, builder=build))
