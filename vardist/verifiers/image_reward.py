"""`image-reward`: ImageReward v1.0 on transformers' BLIP classes (the authors' package is not
needed).

ImageReward is BLIP's ViT-L/16 image encoder, BLIP's BERT "med" text encoder cross-attending
to every image token, and an MLP head on the text's [CLS] feature; its score is
(head(feature) - 0.16717362830052426) / 1.0333394966054072 (the authors' normalisation). The
published checkpoint (ImageReward.pt: `blip.visual_encoder.*` in BLIP's ViT names,
`blip.text_encoder.*` in med's BERT names, `mlp.layers.*`) is read weights-only and mapped key
for key: the image tower onto BlipVisionModel (`vision_key`), the text tower onto
BlipTextModel (the same names), the head onto the MLP of the LAION aesthetic predictor (the
same layers). Other keys the file may hold are not read, as the authors load it non-strictly.

The text tower's sizes come from the repository's med_config.json; the image tower's from the
checkpoint's tensor shapes (ViT-L/16 at 224 px: 16 heads, LayerNorm eps 1e-6, BLIP's). Prompts
are tokenised with bert-base-uncased's vocabulary, padded to 35 tokens, as the authors do;
images are resized (bicubic, shorter side) and centre-cropped to the encoder's size and
normalised with CLIP's mean and std.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from vardist.verifiers.base import BatchedVerifier
# the spec (image-reward) is in vardist.verifiers.builtin, which names the files
from vardist.verifiers.builtin import BERT, IMAGE_REWARD_FILE, IMAGE_REWARD_REPO, MED_CONFIG
from vardist.verifiers.clip import AestheticMLP

MEAN, STD = 0.16717362830052426, 1.0333394966054072   # the authors' reward normalisation
MAX_TOKENS = 35
VISION_HEADS = 16        # BLIP ViT-L (not in the tensor shapes)
VISION_EPS = 1e-6        # BLIP's ViT LayerNorms
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

# BLIP ViT names -> BlipVisionModel names
_VISION_TOP = {"cls_token": "embeddings.class_embedding",
               "pos_embed": "embeddings.position_embedding",
               "patch_embed.proj.weight": "embeddings.patch_embedding.weight",
               "patch_embed.proj.bias": "embeddings.patch_embedding.bias",
               "norm.weight": "post_layernorm.weight", "norm.bias": "post_layernorm.bias"}
_VISION_BLOCK = {"norm1": "layer_norm1", "norm2": "layer_norm2", "attn.qkv": "self_attn.qkv",
                 "attn.proj": "self_attn.projection", "mlp.fc1": "mlp.fc1",
                 "mlp.fc2": "mlp.fc2"}


def vision_key(key: str) -> str:
    """A BLIP ViT state-dict key (no `blip.visual_encoder.` prefix) as BlipVisionModel names it,
    or ValueError naming a key it does not know."""
    if key in _VISION_TOP:
        return _VISION_TOP[key]
    parts = key.split(".")
    if parts[0] == "blocks" and len(parts) >= 4:
        module = ".".join(parts[2:-1])
        if module in _VISION_BLOCK:
            return f"encoder.layers.{parts[1]}.{_VISION_BLOCK[module]}.{parts[-1]}"
    raise ValueError(f"BLIP ViT key {key!r} has no BlipVisionModel counterpart: is this an "
                     f"ImageReward (BLIP ViT) checkpoint?")


def split_checkpoint(sd: Mapping[str, torch.Tensor]
                     ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor],
                                dict[str, torch.Tensor]]:
    """(vision, text, head) state dicts in transformers' / the MLP's names."""
    vision, text, head = {}, {}, {}
    for key, value in sd.items():
        if key.startswith("blip.visual_encoder."):
            vision[vision_key(key[len("blip.visual_encoder."):])] = value
        elif key.startswith("blip.text_encoder."):
            name = key[len("blip.text_encoder."):]
            if not name.endswith("position_ids"):   # an arange buffer, rebuilt
                text[name] = value
        elif key.startswith("mlp."):
            head[key[len("mlp."):]] = value
    return vision, text, head


def vision_config(vision: Mapping[str, torch.Tensor]):
    """BlipVisionConfig from the image tower's tensor shapes."""
    from transformers import BlipVisionConfig

    width = vision["embeddings.class_embedding"].shape[-1]
    patch = vision["embeddings.patch_embedding.weight"].shape[-1]
    grid = math.isqrt(vision["embeddings.position_embedding"].shape[1] - 1)
    layers = len({k.split(".")[2] for k in vision if k.startswith("encoder.layers.")})
    return BlipVisionConfig(hidden_size=width, patch_size=patch, image_size=grid * patch,
                            num_hidden_layers=layers, num_attention_heads=VISION_HEADS,
                            intermediate_size=vision["encoder.layers.0.mlp.fc1.weight"].shape[0],
                            layer_norm_eps=VISION_EPS, hidden_act="gelu")


def text_config(med_config: Path, encoder_width: int):
    """BlipTextConfig from med_config.json (a BERT config); cross-attention to the image."""
    from transformers import BlipTextConfig

    from vardist.models.checkpoint import read_json_config

    c = read_json_config(med_config)
    keys = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
            "intermediate_size", "max_position_embeddings", "layer_norm_eps", "hidden_act",
            "pad_token_id")
    # is_decoder builds the cross-attention layers; the forward runs bidirectionally
    return BlipTextConfig(**{k: c[k] for k in keys if k in c}, encoder_hidden_size=encoder_width,
                          is_decoder=True)


class ImageRewardModel(nn.Module):
    def __init__(self, vision_cfg, text_cfg) -> None:
        from transformers import BlipVisionModel
        from transformers.models.blip.modeling_blip_text import BlipTextModel

        super().__init__()
        self.vision = BlipVisionModel(vision_cfg)
        self.text = BlipTextModel(text_cfg, add_pooling_layer=False)
        self.head = AestheticMLP(text_cfg.hidden_size)  # ImageReward's MLP has these layers

    def forward(self, pixels: torch.Tensor, input_ids: torch.Tensor,
                attention_mask: torch.Tensor) -> torch.Tensor:
        image = self.vision(pixel_values=pixels).last_hidden_state
        ones = torch.ones(image.shape[:2], dtype=torch.long, device=image.device)
        out = self.text(input_ids=input_ids, attention_mask=attention_mask,
                        encoder_hidden_states=image, encoder_attention_mask=ones,
                        is_decoder=False)
        return (self.head(out.last_hidden_state[:, 0].float())[:, 0] - MEAN) / STD


def load_image_reward(folder: Path, device: torch.device) -> ImageRewardModel:
    from vardist.models.checkpoint import load_exact, read_state_dict

    path = folder / IMAGE_REWARD_FILE
    vision, text, head = split_checkpoint(read_state_dict(path, unwrap=("state_dict",)))
    if "embeddings.class_embedding" not in vision:
        raise ValueError(f"{path} holds no blip.visual_encoder.* tensors: is it ImageReward.pt?")
    model = ImageRewardModel(vision_config(vision), text_config(
        folder / MED_CONFIG, vision["embeddings.class_embedding"].shape[-1]))
    for part, sd, what in ((model.vision, vision, "image tower"), (model.text, text, "text tower"),
                           (model.head, head, "MLP head")):
        load_exact(part, {k: v.float() for k, v in sd.items()},
                   what=f"ImageReward's {what} ({path})", optional=("position_ids",))
    return model.eval().to(device)


class ImageReward(BatchedVerifier):
    def __init__(self, model: ImageRewardModel, tokenizer: Any, device: torch.device) -> None:
        try:
            from transformers.models.clip.image_processing_pil_clip import (
                CLIPImageProcessorPil as ImageProcessor)
        except ImportError:  # transformers before the PIL / torchvision split
            from transformers import CLIPImageProcessor as ImageProcessor

        super().__init__("image-reward", "prompt", device)
        self.model, self.tokenizer = model, tokenizer
        side = model.vision.config.image_size
        self.processor = ImageProcessor(
            do_resize=True, size={"shortest_edge": side}, resample=3, do_center_crop=True,
            crop_size={"height": side, "width": side}, do_rescale=True, rescale_factor=1 / 255,
            do_normalize=True, image_mean=CLIP_MEAN, image_std=CLIP_STD)

    @torch.inference_mode()
    def _score(self, images: np.ndarray, conditions: list[Any]) -> np.ndarray:
        bad = [c for c in conditions if not isinstance(c, str)]
        if bad:
            raise ValueError(f"verifier 'image-reward' scores prompts: conditions must be "
                             f"strings, got {bad[0]!r}")
        pixels = self.processor(list(images), return_tensors="pt",
                                input_data_format="channels_last")["pixel_values"]
        tok = self.tokenizer(conditions, padding="max_length", truncation=True,
                             max_length=MAX_TOKENS, return_tensors="pt")
        out = self.model(pixels.to(self.device), tok["input_ids"].to(self.device),
                         tok["attention_mask"].to(self.device))
        return out.double().cpu().numpy()


def _build(files: dict[str, Path], device: torch.device) -> ImageReward:
    from transformers import BertTokenizer

    model = load_image_reward(files[IMAGE_REWARD_REPO.rsplit("/", 1)[-1]], device)
    tokenizer = BertTokenizer.from_pretrained(files[BERT.rsplit("/", 1)[-1]],
                                              local_files_only=True)
    return ImageReward(model, tokenizer, device)
