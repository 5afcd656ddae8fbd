"""toy-shapes: a small text-to-image Infinity (bit labels, cross-attention to text features) on the
procedural scenes of `vardist.zoo.shapes`, built from vardist's Infinity code.

The parts, all trained by `vardist.zoo.shapes_train`:
- a BSQ VAE (`vardist.models.infinity.bsq_vae.BSQVAE`): 32x32 RGB -> an 8x8 latent of 16 bits
  per cell (stride 4), quantised over the scales (1, 2, 4, 6, 8) of the 1M schedule's prefix;
- the Infinity transformer (`vardist.models.infinity.transformer.Infinity`) with 16-bit tokens;
- `WordEncoder`, the stand-in for Flan-T5: a word-level tokenizer over the fixed vocabulary of the
  prompts, a learned embedding with learned positions and one transformer encoder layer (so
  "red" can bind to the noun after it before the image model reads the features).

The generator is Infinity's own (`InfinityGenerator`), so search runs exactly the code path of
the released Infinity models; `ToyShapesGenerator` only adds the vocabulary check to
`check_conditions`, so an unknown word fails before any work starts.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from vardist.models.checkpoint import load_exact, read_state_dict
from vardist.models.infinity.bsq_vae import BSQVAE, BSQVAEConfig, load_vae
from vardist.models.infinity.generator import InfinityGenerator
from vardist.models.infinity.transformer import Infinity, InfinityConfig, load_infinity
from vardist.zoo.specs import config_from_json, read_trained_config
from vardist.zoo.shapes_specs import CONFIG_FILE, TEXT_FILE, TRANSFORMER_FILE, VAE_FILE, WEIGHTS_DIR


# Scales: the first five maps of Infinity's square 1M schedule, ending at the 8x8 latent.
SCHEDULE: tuple[tuple[int, int], ...] = ((1, 1), (2, 2), (4, 4), (6, 6), (8, 8))
# GroupNorm in the VAE needs widths divisible by 24 or 32: 24/48/48 is the smallest that trains
# to clean flat colours in a few hundred steps.
VAE_CONFIG = BSQVAEConfig(base_ch=24, ch_mult=(1, 2, 2), num_res_blocks=1, codebook_dim=16)
# text_channels 128: the text pool's heads are text_channels // 128 (at least one head).
INFINITY_CONFIG = InfinityConfig(depth=4, embed_dim=128, num_heads=4, mlp_ratio=4.0, text_channels=128,
                                 text_maxlen=16, block_chunks=1, d_vae=16, num_levels=len(SCHEDULE))


@dataclass(frozen=True)
class WordEncoderConfig:
    vocab: tuple[str, ...]      # the known words; ids 0 (padding) and 1 (end of prompt) come first
    width: int = 128            # = InfinityConfig.text_channels
    max_words: int = 15         # + the end token = InfinityConfig.text_maxlen
    heads: int = 4
    layers: int = 1


def prompt_words(prompt: str) -> list[str]:
    """The words of a prompt, lower-cased, punctuation dropped."""
    return re.findall(r"[a-z]+", prompt.lower())


class WordEncoder(nn.Module):
    """Prompt -> features [L, width] (one row per word plus an end row), what the Infinity
    transformer takes in place of T5's last hidden state."""

    PAD, END = 0, 1

    def __init__(self, cfg: WordEncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.ids = {w: i + 2 for i, w in enumerate(cfg.vocab)}
        self.embed = nn.Embedding(len(cfg.vocab) + 2, cfg.width)
        self.pos = nn.Parameter(torch.zeros(cfg.max_words + 1, cfg.width))
        layer = nn.TransformerEncoderLayer(cfg.width, cfg.heads, 2 * cfg.width, dropout=0.0,
                                           batch_first=True, norm_first=True)
        self.layers = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)

    @property
    def channels(self) -> int:
        return self.cfg.width

    def unknown(self, prompt: str) -> str | None:
        """Why this encoder cannot take `prompt` (None when it can)."""
        words = prompt_words(prompt)
        if not words:
            return f"prompt {prompt!r} has no words"
        bad = [w for w in words if w not in self.ids]
        if bad:
            return (f"toy-shapes does not know the word(s) {', '.join(map(repr, bad))} in prompt "
                    f"{prompt!r}; it knows only: {' '.join(self.cfg.vocab)}")
        if len(words) > self.cfg.max_words:
            return f"prompt {prompt!r} has {len(words)} words; toy-shapes takes at most {self.cfg.max_words}"
        return None

    def token_ids(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids [B, L] padded with 0, mask [B, L] True on real tokens), each prompt ending in END."""
        rows = []
        for p in prompts:
            why = self.unknown(p)
            if why:
                raise ValueError(why)
            rows.append([self.ids[w] for w in prompt_words(p)] + [self.END])
        L = max(len(r) for r in rows)
        ids = torch.zeros(len(rows), L, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, :len(r)] = torch.tensor(r)
        return ids, ids != self.PAD

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """ids, mask [B, L] -> features [B, L, width] (rows past a prompt's end are garbage)."""
        x = self.embed(ids) + self.pos[:ids.shape[1]]
        return self.layers(x, src_key_padding_mask=~mask)

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> list[torch.Tensor]:
        # one prompt at a time, unpadded: a prompt's features never depend on its batch
        out = []
        for p in prompts:
            ids, mask = self.token_ids([p])
            ids, mask = ids.to(self.pos.device), mask.to(self.pos.device)
            out.append(self(ids, mask)[0].float())
        return out


class ToyShapesGenerator(InfinityGenerator):
    """InfinityGenerator whose prompts must use the word encoder's vocabulary."""

    def check_conditions(self, conditions: Sequence) -> None:
        super().check_conditions(conditions)
        for i, c in enumerate(conditions):
            why = self.text_encoder.unknown(c)
            if why:
                raise ValueError(f"condition {i}: {why}")


# -- configs and loading ---------------------------------------------------------------------------
def write_config(folder: str | Path, vocab: Sequence[str], train: dict) -> None:
    """The JSON beside the weights: the three configs, the schedule and the training settings."""
    meta = {"vae": asdict(VAE_CONFIG), "infinity": asdict(INFINITY_CONFIG),
            "text": asdict(WordEncoderConfig(tuple(vocab))), "schedule": [list(s) for s in SCHEDULE],
            "train": train}
    (Path(folder) / CONFIG_FILE).write_text(json.dumps(meta, indent=1) + "\n")


def read_configs(folder: str | Path = WEIGHTS_DIR
                 ) -> tuple[InfinityConfig, BSQVAEConfig, WordEncoderConfig, tuple[tuple[int, int], ...]]:
    """(InfinityConfig, BSQVAEConfig, WordEncoderConfig, schedule) stored in `folder`."""
    meta = read_trained_config(folder, CONFIG_FILE, "toy-shapes", "vardist train toy-shapes")
    return (config_from_json(InfinityConfig, meta["infinity"]),
            config_from_json(BSQVAEConfig, meta["vae"]),
            config_from_json(WordEncoderConfig, meta["text"]),
            tuple(tuple(s) for s in meta["schedule"]))


def load_vae_from(folder: str | Path = WEIGHTS_DIR) -> BSQVAE:
    """The toy BSQ VAE alone (eval mode, CPU), e.g. to tokenise scenes for training."""
    _, vcfg, _, _ = read_configs(folder)
    return load_vae(BSQVAE(vcfg), read_state_dict(Path(folder) / VAE_FILE), what="the toy-shapes VAE").eval()


def assemble(transformer: Infinity, vae: BSQVAE, text: WordEncoder,
             schedule: Sequence[tuple[int, int]] = SCHEDULE, device: str = "cpu") -> ToyShapesGenerator:
    """The generator from modules in memory (training evaluates with it before saving)."""
    text = text.eval().requires_grad_(False).to(device)
    # RoPE positions are normalised to the toy's own last map, as Infinity's are to its 1M grid
    return ToyShapesGenerator(transformer.to(device), vae.to(device), schedule, tuple(schedule[-1]),
                              text_encoder=text, device=device)


def load_generator(folder: str | Path = WEIGHTS_DIR, device: str = "cpu") -> ToyShapesGenerator:
    """toy-shapes as a scale-wise generator: the shipped weights, or those
    `vardist train toy-shapes` wrote to `folder` (fp32 everywhere; it is tiny)."""
    folder = Path(folder)
    icfg, vcfg, tcfg, schedule = read_configs(folder)
    transformer = load_infinity(Infinity(icfg), read_state_dict(folder / TRANSFORMER_FILE),
                                what="the toy-shapes transformer")
    vae = load_vae(BSQVAE(vcfg), read_state_dict(folder / VAE_FILE), what="the toy-shapes VAE")
    text = WordEncoder(tcfg)
    load_exact(text, read_state_dict(folder / TEXT_FILE), what="the toy-shapes word encoder")
    return assemble(transformer, vae, text, schedule, device)
