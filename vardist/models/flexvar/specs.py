"""Registry entries for the released FlexVAR models (ImageNet 256x256, class-conditional).

Pure data plus a builder; importing this module does not import the model code.

Search defaults: the paper (Table 1) evaluates FlexVAR-d24 only: scale 2 (the 3x3 map), cfg 2.5,
alpha 2.5-2.8 (2.6 here), n 10-100 (50 here), rep 10. d16 and d20 have no published values; they
get the same ones. top_k 900 / top_p 0.95 are the reference evaluation script's (`eval_c2i.py`),
with its default VAR-style CFG ramp.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from vardist.models.registry import ModelSpec, SearchDefaults, register

VAE_FILE = "FlexVAE.pth"
HF_REPO = "jiaosiyu1999/FlexVAR"
SOURCE = f"https://huggingface.co/{HF_REPO}"
VAR_FILES = {16: "FlexVARd16-epo179.pth", 20: "FlexVARd20-epo249.pth", 24: "FlexVARd24-epo349.pth"}
FID = {16: "3.05", 20: "2.41", 24: "2.21"}
# The reference fixture (random weights, FlexVAR layout): runs the whole pipeline anywhere.
TINY_FILES = ("config.json", "vae.pth", "var.pth")
DEFAULTS = SearchDefaults(scale=2, n=50, strategy="var-scaling", alpha=2.6, rep=10, cfg=2.5,
                          top_k=900, top_p=0.95)


def official_configs(depth: int):
    """(FlexVAEConfig, FlexVARConfig) of the released tokenizer and FlexVAR-d{depth}."""
    from vardist.models.flexvar.configs import FlexVAEConfig, FlexVARConfig

    if depth not in VAR_FILES:
        raise ValueError(f"no released FlexVAR of depth {depth}; choose one of {sorted(VAR_FILES)}")
    return FlexVAEConfig(), FlexVARConfig(depth=depth)


def build(spec: ModelSpec, files: dict[str, Path], device: str, schedule=None):
    """Builder for `vardist.models.load`; `schedule` (side lengths) defaults to the released 10 steps."""
    from vardist.models.flexvar.configs import DEFAULT_SCHEDULE
    from vardist.models.flexvar.generator import build as build_generator

    depth = int(spec.name.removeprefix("flexvar-d"))
    vae_cfg, var_cfg = official_configs(depth)
    model = build_generator(vae_cfg, var_cfg, files[VAE_FILE], files[VAR_FILES[depth]],
                            schedule=schedule or DEFAULT_SCHEDULE, device=device)
    model.search_defaults = spec.defaults  # vardist.search(model_object, ...) falls back on them
    return model


def build_tiny(spec: ModelSpec, files: dict[str, Path], device: str, schedule=None):
    from vardist.models.checkpoint import read_json_config
    from vardist.models.flexvar.configs import configs_from_fixture
    from vardist.models.flexvar.generator import build as build_generator

    vae_cfg, var_cfg, default = configs_from_fixture(read_json_config(files["config.json"]))
    model = build_generator(vae_cfg, var_cfg, files["vae.pth"], files["var.pth"],
                            schedule=schedule or default, device=device)
    model.search_defaults = spec.defaults
    return model


register(ModelSpec(
    name="flexvar-tiny", family="flexvar",
    description="FlexVAR reference fixture (random weights, 2 blocks): pipeline tests, not images",
    defaults=DEFAULTS, files=TINY_FILES,
    source="the flexvar-tiny reference fixture folder (pass it as --weights)",
    num_scales=10, condition_kind="class", num_classes=1000, builder=build_tiny))

for _depth, _file in VAR_FILES.items():
    register(ModelSpec(
        name=f"flexvar-d{_depth}", family="flexvar",
        description=f"FlexVAR-d{_depth} (FID {FID[_depth]}), ImageNet 256x256 class-conditional, "
                    f"flexible scale schedules",
        defaults=DEFAULTS, files=(VAE_FILE, _file), source=SOURCE, hf_repos=(HF_REPO,),
        num_scales=10, condition_kind="class", num_classes=1000, builder=build,
        configs=partial(official_configs, _depth)))
