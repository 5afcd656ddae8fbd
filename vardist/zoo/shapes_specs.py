"""Registry entry for `toy-shapes`, the project's own text-to-image Infinity on 32x32 scenes of
coloured squares, circles and triangles (`vardist.zoo.shapes_model`); its weights ship in the
package. Importing this module does not import the model code.

Search defaults, Infinity-style: the `infinity` rule (top-k by density, rank-weighted pick) at
scale 2, the 4x4 map of the toy's 5-scale schedule (1, 2, 4, 6, 8). Infinity-2B searches scale 3
of 13, where the layout of a 1024px picture is settled; on the toy's 8x8 latent (4 px per cell)
the 4x4 map is the first that can hold up to four separate objects, and which objects and where
is what the toy benchmark (GenEval's tags) scores, while the 6x6 and 8x8 maps mostly refine edges.
n 300 with the top k 10 keeps Infinity's ratio of a few percent shortlisted. Guidance on
logits at cfg 3 (Infinity's GenEval setting is cfg 4): it scores a little higher than cfg 1 on
the toy prompts (docs/zoo.md); no top-k / top-p (each bit is one binary draw).
"""

from __future__ import annotations

from pathlib import Path

from vardist.models.registry import ModelSpec, SearchDefaults, register

# The file names live here, not in the torch module, so listing models imports no model code.
WEIGHTS_DIR = Path(__file__).parent / "weights"
VAE_FILE = "toy-shapes-vae.safetensors"
TRANSFORMER_FILE = "toy-shapes-infinity.safetensors"
TEXT_FILE = "toy-shapes-text.safetensors"
CONFIG_FILE = "toy-shapes.json"


def read_configs():
    """(InfinityConfig, BSQVAEConfig, WordEncoderConfig, schedule) of the shipped weights."""
    from vardist.zoo.shapes_model import read_configs as read

    return read(WEIGHTS_DIR)


def build(spec: ModelSpec, files: dict[str, Path], device: str):
    """The shipped weights, or a retrained model's folder given as --weights (the registry
    finds the four files in one folder)."""
    from vardist.zoo.shapes_model import load_generator

    return load_generator(files[CONFIG_FILE].parent, device)


register(ModelSpec(
    name="toy-shapes", family="infinity",
    description="vardist's own tiny text-to-image Infinity on 32x32 coloured shapes (ships inside "
                "the package, or retrained into --weights DIR; GenEval-style prompts: toy-geneval.jsonl)",
    defaults=SearchDefaults(scale=2, n=300, strategy="infinity", alpha=1.0, rep=10, k=10,
                            cfg=3.0, top_k=0, top_p=0.0, tau=1.0),
    files=(CONFIG_FILE, VAE_FILE, TRANSFORMER_FILE, TEXT_FILE), bundled_dir=lambda: WEIGHTS_DIR,
    source="a retrained model: `vardist train toy-shapes --out DIR` writes them",
    num_scales=5, condition_kind="prompt", builder=build, configs=read_configs))
