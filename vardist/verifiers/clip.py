"""CLIP-based verifiers through `transformers`, with weights read without running code:

- `clip`: CLIPScore = max(100 * cos(image embedding, prompt embedding), 0), with
  openai/clip-vit-large-patch14;
- `pickscore`: PickScore = logit_scale.exp() * cos(image embedding, prompt embedding), with
  yuvalkirstain/PickScore_v1 (a CLIP-H model) and the CLIP-H processor
  (laion/CLIP-ViT-H-14-laion2B-s32B-b79K), as its authors score;
- `aesthetic`: the LAION improved aesthetic predictor: an MLP on the L2-normalised CLIP
  ViT-L/14 image embedding (conditions are not read).

The model is built from its config.json and its weights loaded key for key from
model.safetensors (or pytorch_model.bin, through vardist's weights-only reader), so a file can
only hold tensors. Embeddings are the projected pooled outputs (visual_projection /
text_projection), the features CLIP's contrastive loss compares.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vardist.verifiers.base import BatchedVerifier
# the specs (clip, pickscore, aesthetic) are in vardist.verifiers.builtin, which names the files
from vardist.verifiers.builtin import AESTHETIC_FILE, CLIP_H, CLIP_L, PICKSCORE, WEIGHT_FILES


def load_clip(folder: Path, device: torch.device) -> nn.Module:
    """A transformers CLIPModel from a model folder: config.json, then the weights key for key
    (position_ids, an arange buffer older files carry, is dropped)."""
    from transformers import CLIPConfig, CLIPModel

    from vardist.models.checkpoint import load_exact, read_state_dict

    config = CLIPConfig.from_pretrained(folder, local_files_only=True)
    model = CLIPModel(config)
    path = next(folder / f for f in WEIGHT_FILES if (folder / f).is_file())
    sd = {k: v for k, v in read_state_dict(path).items() if not k.endswith("position_ids")}
    load_exact(model, sd, what=f"CLIPModel {folder.name} ({path})")
    return model.eval().to(device)


def load_processor(folder: Path, text: bool = True):
    """(image processor, tokenizer or None) of a model folder. The PIL image processor: the
    same resize / crop / normalisation as the torchvision one, without that dependency."""
    try:
        from transformers.models.clip.image_processing_pil_clip import (
            CLIPImageProcessorPil as ImageProcessor)
    except ImportError:  # transformers before the PIL / torchvision split
        from transformers import CLIPImageProcessor as ImageProcessor
    images = ImageProcessor.from_pretrained(folder, local_files_only=True)
    if not text:
        return images, None
    from transformers import CLIPTokenizer

    return images, CLIPTokenizer.from_pretrained(folder, local_files_only=True)


class ClipEmbedder:
    """Projected image and text embeddings of a CLIPModel (not normalised)."""

    def __init__(self, model: nn.Module, image_processor: Any, tokenizer: Any | None,
                 device: torch.device) -> None:
        self.model, self.image_processor, self.tokenizer = model, image_processor, tokenizer
        self.device = device

    @torch.inference_mode()
    def images(self, images: np.ndarray) -> torch.Tensor:
        pixels = self.image_processor(list(images), return_tensors="pt",
                                      input_data_format="channels_last")["pixel_values"]
        out = self.model.vision_model(pixel_values=pixels.to(self.device))
        return self.model.visual_projection(out.pooler_output)

    @torch.inference_mode()
    def texts(self, texts: list[str]) -> torch.Tensor:
        bad = [t for t in texts if not isinstance(t, str)]
        if bad:
            raise ValueError(f"a CLIP verifier scores prompts: conditions must be strings, got "
                             f"{bad[0]!r}")
        limit = self.model.config.text_config.max_position_embeddings
        tok = self.tokenizer(texts, padding=True, truncation=True, max_length=limit,
                             return_tensors="pt")
        out = self.model.text_model(input_ids=tok["input_ids"].to(self.device),
                                    attention_mask=tok["attention_mask"].to(self.device))
        return self.model.text_projection(out.pooler_output)


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (nn.functional.normalize(a.double(), dim=-1)
            * nn.functional.normalize(b.double(), dim=-1)).sum(-1)


class ClipScore(BatchedVerifier):
    def __init__(self, embedder: ClipEmbedder, device: torch.device) -> None:
        super().__init__("clip", "prompt", device)
        self.embed = embedder

    def _score(self, images: np.ndarray, conditions: list[Any]) -> np.ndarray:
        cos = cosine(self.embed.images(images), self.embed.texts(conditions))
        return (100 * cos).clamp(min=0).cpu().numpy()


class PickScore(BatchedVerifier):
    def __init__(self, embedder: ClipEmbedder, device: torch.device) -> None:
        super().__init__("pickscore", "prompt", device)
        self.embed = embedder

    def _score(self, images: np.ndarray, conditions: list[Any]) -> np.ndarray:
        cos = cosine(self.embed.images(images), self.embed.texts(conditions))
        scale = self.embed.model.logit_scale.detach().double().exp()
        return (scale * cos).cpu().numpy()


class AestheticMLP(nn.Module):
    """The LAION improved aesthetic predictor's head (its published layer sizes; its state dict
    keys are layers.{0,2,4,6,7}.{weight,bias}). Dropout is inactive in eval mode."""

    def __init__(self, dim: int = 768) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(dim, 1024), nn.Dropout(0.2), nn.Linear(1024, 128),
                                    nn.Dropout(0.2), nn.Linear(128, 64), nn.Dropout(0.1),
                                    nn.Linear(64, 16), nn.Linear(16, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class Aesthetic(BatchedVerifier):
    def __init__(self, embedder: ClipEmbedder, head: AestheticMLP, device: torch.device) -> None:
        super().__init__("aesthetic", "any", device)
        self.embed, self.head = embedder, head

    @torch.inference_mode()
    def _score(self, images: np.ndarray, conditions: list[Any]) -> np.ndarray:
        emb = nn.functional.normalize(self.embed.images(images).float(), dim=-1)
        return self.head(emb)[:, 0].double().cpu().numpy()


def _build_clip(files: dict[str, Path], device: torch.device) -> ClipScore:
    folder = files[CLIP_L.rsplit("/", 1)[-1]]
    return ClipScore(ClipEmbedder(load_clip(folder, device), *load_processor(folder), device),
                     device)


def _build_pickscore(files: dict[str, Path], device: torch.device) -> PickScore:
    model = load_clip(files[PICKSCORE.rsplit("/", 1)[-1]], device)
    processor = load_processor(files[CLIP_H.rsplit("/", 1)[-1]])
    return PickScore(ClipEmbedder(model, *processor, device), device)


def _build_aesthetic(files: dict[str, Path], device: torch.device) -> Aesthetic:
    from vardist.models.checkpoint import load_exact, read_state_dict

    folder = files[CLIP_L.rsplit("/", 1)[-1]]
    model = load_clip(folder, device)
    head = AestheticMLP(model.config.projection_dim)
    load_exact(head, read_state_dict(files[AESTHETIC_FILE]),
               what=f"the LAION aesthetic predictor ({files[AESTHETIC_FILE]})")
    return Aesthetic(ClipEmbedder(model, load_processor(folder, text=False)[0], None, device),
                     head.eval().to(device), device)
