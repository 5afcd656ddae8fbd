"""`hpsv2`: Human Preference Score v2.1, on transformers' CLIPModel (open_clip is not needed).

HPS v2.1 is an open_clip ViT-H-14 fine-tuned on human preferences; its published checkpoint
(HPS_v2.1_compressed.pt, {"state_dict": open_clip keys}) is read weights-only and its keys are
mapped one for one onto transformers' CLIPModel (`open_clip_to_transformers`), whose
architecture comes from the CLIP-H repository's config.json (the same ViT-H-14). The score is
the authors': the cosine of the L2-normalised image and prompt embeddings (their scoring takes
the diagonal of image_features @ text_features.T, with open_clip's normalised features; no
logit scale, no x100).

Preprocessing: the CLIP-H processor (bicubic resize, centre crop, OpenAI mean / std). HPS
fits the longest side and pads with zeros, so a non-square image is first padded to a centred
square (the same pixels as the authors' transform for square images, the generated case).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from vardist.verifiers.base import BatchedVerifier
# the spec (hpsv2) is in vardist.verifiers.builtin, which names the files
from vardist.verifiers.builtin import CLIP_H, HPS_FILE
from vardist.verifiers.clip import ClipEmbedder, cosine, load_processor

# open_clip residual block names -> transformers CLIPEncoderLayer names (in_proj is split)
_BLOCK = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "attn.out_proj": "self_attn.out_proj",
          "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}
# open_clip top-level tensors -> transformers keys; "T": stored transposed (x @ proj vs Linear)
_TOP = {"visual.class_embedding": ("vision_model.embeddings.class_embedding", False),
        "visual.conv1.weight": ("vision_model.embeddings.patch_embedding.weight", False),
        "visual.positional_embedding": ("vision_model.embeddings.position_embedding.weight", False),
        "visual.proj": ("visual_projection.weight", True),
        "token_embedding.weight": ("text_model.embeddings.token_embedding.weight", False),
        "positional_embedding": ("text_model.embeddings.position_embedding.weight", False),
        "text_projection": ("text_projection.weight", True),
        "logit_scale": ("logit_scale", False)}
_NORMS = {"visual.ln_pre": "vision_model.pre_layrnorm",
          "visual.ln_post": "vision_model.post_layernorm",
          "ln_final": "text_model.final_layer_norm"}
_TOWERS = {"visual.transformer.resblocks.": "vision_model.encoder.layers.",
           "transformer.resblocks.": "text_model.encoder.layers."}
# recomputed by both libraries (open_clip's causal mask), never learned
_DROPPED = ("attn_mask",)


def open_clip_to_transformers(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An open_clip CLIP state dict (ViT image tower, plain text tower) as transformers'
    CLIPModel names it. Raises ValueError naming a key it does not know (another open_clip
    architecture: a different mapping)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if key.endswith(_DROPPED):
            continue
        if key in _TOP:
            name, transposed = _TOP[key]
            out[name] = value.t().contiguous() if transposed else value
            continue
        norm = next((n for n in _NORMS if key.startswith(n + ".")), None)
        if norm is not None:
            out[_NORMS[norm] + key[len(norm):]] = value
            continue
        tower = next((t for t in _TOWERS if key.startswith(t)), None)
        if tower is None:
            raise ValueError(f"open_clip key {key!r} has no CLIPModel counterpart: this is not a "
                             f"ViT CLIP with open_clip's standard text tower")
        layer, rest = key[len(tower):].split(".", 1)
        prefix = f"{_TOWERS[tower]}{layer}."
        if rest.startswith("attn.in_proj_"):  # [3 width, ...] = q, k, v stacked
            kind = rest.rsplit("_", 1)[1]     # weight / bias
            for part, chunk in zip("qkv", value.chunk(3, dim=0)):
                out[f"{prefix}self_attn.{part}_proj.{kind}"] = chunk.contiguous()
            continue
        module, param = rest.rsplit(".", 1)
        if module not in _BLOCK:
            raise ValueError(f"open_clip key {key!r} has no CLIPModel counterpart (block "
                             f"module {module!r})")
        out[f"{prefix}{_BLOCK[module]}.{param}"] = value
    return out


def pad_square(images: np.ndarray) -> np.ndarray:
    """Centre each image on a black square (HPS's fit-longest-side-and-pad, before resizing)."""
    n, h, w, c = images.shape
    if h == w:
        return images
    side = max(h, w)
    out = np.zeros((n, side, side, c), np.uint8)
    top, left = (side - h) // 2, (side - w) // 2
    out[:, top:top + h, left:left + w] = images
    return out


class HPSv2(BatchedVerifier):
    def __init__(self, embedder: ClipEmbedder, device: torch.device) -> None:
        super().__init__("hpsv2", "prompt", device)
        self.embed = embedder

    def _score(self, images: np.ndarray, conditions: list[Any]) -> np.ndarray:
        cos = cosine(self.embed.images(pad_square(images)), self.embed.texts(conditions))
        return cos.cpu().numpy()


def load_hps_model(config_folder: Path, checkpoint: Path, device: torch.device):
    """A CLIPModel with config_folder's architecture and the open_clip checkpoint's weights."""
    from transformers import CLIPConfig, CLIPModel

    from vardist.models.checkpoint import load_exact, read_state_dict

    model = CLIPModel(CLIPConfig.from_pretrained(config_folder, local_files_only=True))
    sd = open_clip_to_transformers(read_state_dict(checkpoint, unwrap=("state_dict",)))
    load_exact(model, {k: v.float() for k, v in sd.items()},
               what=f"HPS v2.1 on {config_folder.name}'s CLIPModel ({checkpoint})")
    return model.eval().to(device)


def _build(files: dict[str, Path], device: torch.device) -> HPSv2:
    folder = files[CLIP_H.rsplit("/", 1)[-1]]
    model = load_hps_model(folder, files[HPS_FILE], device)
    return HPSv2(ClipEmbedder(model, *load_processor(folder), device), device)

