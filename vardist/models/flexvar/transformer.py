"""FlexVAR's transformer: VAR's AdaLN blocks and head, with FlexVAR's inputs.

What differs from VAR (and is all that this file writes; the blocks, head, KV cache and mask are
VAR's, from `vardist.models.var.transformer`):
- no level embedding: position comes only from one learned 2-D map `pos_1LC` [1, C, G, G]
  area-resized to every scale of whatever schedule is in use, so schedules can change at inference;
- the block-causal mask is built per schedule (a query at scale i sees the keys of scales <= i),
  never stored: the files' `attn_bias_for_masking` is stale (the last training schedule's shape);
- the input of scale k+1 is `word_embed` of the scale-k tokens' code vectors bicubic-resized to the
  next side (`FlexVAE.next_input`): no residual accumulation, no f_hat.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vardist.models.flexvar.configs import FlexVARConfig, check_schedule
from vardist.models.var.transformer import AdaLNBeforeHead, AdaLNSelfAttn, KVCache, block_causal_bias


class FlexVARTransformer(nn.Module):
    def __init__(self, cfg: FlexVARConfig = FlexVARConfig()) -> None:
        super().__init__()
        self.cfg = cfg
        C = cfg.embed_dim
        self.pos_start = nn.Parameter(torch.zeros(1, 1, C))
        self.pos_1LC = nn.Parameter(_sincos_map(C, cfg.pos_grid))  # trained: the loaded values rule
        self.word_embed = nn.Linear(cfg.Cvae, C)
        self.class_emb = nn.Embedding(cfg.num_classes + 1, C)
        self.blocks = nn.ModuleList(
            AdaLNSelfAttn(C, cfg.num_heads, cfg.mlp_ratio, cfg.norm_eps, attn_l2_norm=True)
            for _ in range(cfg.depth))
        self.head_nm = AdaLNBeforeHead(C, cfg.norm_eps)
        self.head = nn.Linear(C, cfg.vocab_size)

    def new_cache(self) -> KVCache:
        return KVCache(self.cfg.depth)

    def cond(self, labels: torch.Tensor) -> torch.Tensor:
        """Class ids [B] (num_classes = null) -> [B, C]: both the start token and the condition."""
        return self.class_emb(labels)

    def pos_embed(self, sides: Sequence[int]) -> torch.Tensor:
        """The position map area-resized to every scale, each flattened row-major: [1, L, C]."""
        return torch.cat([F.interpolate(self.pos_1LC, size=(p, p), mode="area").flatten(2)
                          for p in sides], 2).transpose(1, 2)

    def embed(self, cond: torch.Tensor, x_in: torch.Tensor | None, pos: torch.Tensor) -> torch.Tensor:
        """Token embeddings: [start token + pos_start, word_embed(x_in)] + pos.
        cond [B, C]; x_in [B, T, Cvae] next-scale inputs (None: start token only); pos [1, 1+T, C]."""
        x = cond[:, None] + self.pos_start
        if x_in is not None:
            x = torch.cat([x, self.word_embed(x_in)], 1)
        return x + pos

    def run(self, x: torch.Tensor, cond: torch.Tensor, attn_bias: torch.Tensor | None = None,
            cache: KVCache | None = None, logits: bool = True) -> torch.Tensor | None:
        """Blocks, then the AdaLN head: x [B, T, C] -> logits [B, T, V]. With a cache, keys and
        values are appended to it and attention sees everything cached (no mask needed)."""
        for i, blk in enumerate(self.blocks):
            x = blk(x, cond, attn_bias, cache, i)
        return self.head(self.head_nm(x, cond)) if logits else None

    def forward(self, labels: torch.Tensor, x_in: torch.Tensor, sides: Sequence[int]) -> torch.Tensor:
        """Teacher-forced logits for every position of a schedule: labels [B], x_in [B, L-1, Cvae]
        -> [B, L, V] (the reference's training forward, without its class dropout)."""
        sides = check_schedule(sides)
        cond = self.cond(labels)
        bias = block_causal_bias(sides).to(x_in.device)[None, None]
        return self.run(self.embed(cond, x_in, self.pos_embed(sides)), cond, bias)


def _sincos_map(C: int, G: int) -> torch.Tensor:
    """The reference's initial value (replaced by the trained one on load): channel 2k holds
    sin(row * w_k), channel 2k+1 cos(col * w_k), w_k = 10000^(-2k/C)."""
    w = torch.exp(torch.arange(0, C, 2).float() * (-math.log(10000.0) / C))
    r = torch.arange(G).float()
    pe = torch.zeros(C, G, G)
    pe[0::2] = torch.sin(r[None, :, None] * w[:, None, None]).expand(-1, G, G)
    pe[1::2] = torch.cos(r[None, None, :] * w[:, None, None]).expand(-1, G, G)
    return pe[None]
