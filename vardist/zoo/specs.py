"""Registry entry for the project's own tiny model, `toy-digits`, whose weights ship in the package.

`toy-digits` is a class-conditional VQVAE + VAR transformer built from vardist's VAR code
(`vardist.models.var`) with a small config: 16x16 grey digits (returned as RGB), a 4x4 latent
quantised over the scales (1, 2, 3, 4) with a 256-entry codebook. It is trained by
`python -m vardist.zoo.train` on scikit-learn's bundled digits. Importing this module does not
import the model code.
"""

from __future__ import annotations

from pathlib import Path

from vardist.models.registry import ModelSpec, SearchDefaults, register

WEIGHTS_DIR = Path(__file__).parent / "weights"
VAE_FILE = "toy-digits-vae.safetensors"
VAR_FILE = "toy-digits-var.safetensors"
CONFIG_FILE = "toy-digits.json"
JUDGE_FILE = "judge.safetensors"


def read_configs(folder: str | Path = WEIGHTS_DIR):
    """(VQVAEConfig, VARConfig) stored in `folder`/toy-digits.json."""
    from vardist.models.var.transformer import VARConfig
    from vardist.models.var.vqvae import VQVAEConfig

    meta = read_trained_config(folder, CONFIG_FILE, "the zoo", "python -m vardist.zoo.train")
    return config_from_json(VQVAEConfig, meta["vqvae"]), config_from_json(VARConfig, meta["var"])


def read_trained_config(folder: str | Path, config_file: str, what: str, command: str) -> dict:
    """The JSON a zoo trainer wrote beside its weights; a missing file says how to make it."""
    from vardist.models.checkpoint import read_json_config

    path = Path(folder) / config_file
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: train {what} with "
                                f"`{command} --out {folder}` first")
    return read_json_config(path)


def config_from_json(cls, fields: dict):
    """cls(**fields), with JSON's lists turned back into the tuples the configs hold."""
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})


def load_vqvae(folder: str | Path = WEIGHTS_DIR):
    """The toy VQVAE alone (eval mode, CPU), e.g. to tokenise digits for training."""
    from vardist.models.checkpoint import load_exact, read_state_dict
    from vardist.models.var.vqvae import VQVAE

    vae_cfg, _ = read_configs(folder)
    vae = VQVAE(vae_cfg)
    load_exact(vae, read_state_dict(Path(folder) / VAE_FILE), what=f"the toy VQVAE {vae_cfg}",
               optional=("ema_vocab_hit_SV",))
    return vae.eval()


def load_generator(folder: str | Path = WEIGHTS_DIR, device: str = "cpu"):
    """The toy model as a VARGenerator: the shipped weights, or those `vardist.zoo.train` wrote
    to `folder`."""
    from vardist.models.checkpoint import read_state_dict
    from vardist.models.var.generator import VARGenerator

    folder = Path(folder)
    vae_cfg, var_cfg = read_configs(folder)
    return VARGenerator.from_state_dicts(vae_cfg, var_cfg, read_state_dict(folder / VAE_FILE),
                                         read_state_dict(folder / VAR_FILE), device)


def build(spec: ModelSpec, files: dict[str, Path], device: str):
    """The shipped weights, or a retrained model's folder given as --weights (the registry
    finds the three files in one folder)."""
    return load_generator(files[CONFIG_FILE].parent, device)


register(ModelSpec(
    name="toy-digits", family="var",
    description="vardist's own tiny class-conditional VAR on 16x16 handwritten digits (ships inside "
                "the package, or retrained into --weights DIR; classes 0-9)",
    # cfg / top-k / top-p: plain sampling with these reaches the quality bar (docs/zoo.md)
    defaults=SearchDefaults(scale=1, n=100, strategy="var-scaling", alpha=2.3, rep=10,
                            cfg=1.0, top_k=64, top_p=0.96),
    files=(CONFIG_FILE, VAE_FILE, VAR_FILE), bundled_dir=lambda: WEIGHTS_DIR,
    source="`vardist train toy-digits --out DIR` writes them",
    num_scales=4, condition_kind="class", num_classes=10, builder=build, configs=read_configs))
