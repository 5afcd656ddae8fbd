"""The VAR transformer: class-conditional next-scale prediction with AdaLN blocks, loading the
official `var_dNN.pth` state dicts key for key.

The sequence is every token of every scale, coarse to fine (L = sum pn^2). Scale 0's single token
is the class embedding ("sos"); each later scale's tokens are `word_embed` of the VQVAE's f_hat
downsampled to that scale. Attention is block-causal: a token sees its own scale and all coarser
ones. At inference scales are fed one at a time through a KV cache, so no mask is needed.

`AdaLNSelfAttn`, `SelfAttention`, `FFN`, `AdaLNBeforeHead` and `KVCache` are reused by FlexVAR.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vardist.models.var.vqvae import VAR_PATCH_NUMS


@dataclass(frozen=True)
class VARConfig:
    """Defaults are VAR-d16. Released depths use width = 64 * depth and heads = depth
    (`VARConfig.for_depth`). `shared_aln`: one AdaLN projection for all blocks plus a learned
    per-block offset (the 512px VAR-d36 layout) instead of one projection per block."""

    depth: int = 16
    embed_dim: int = 1024                  # C
    num_heads: int = 16
    vocab_size: int = 4096                 # V, must equal the VQVAE's
    Cvae: int = 32                         # codebook vector size, must equal the VQVAE's
    num_classes: int = 1000                # class_emb has num_classes + 1 rows: the last is "null"
    mlp_ratio: float = 4.0
    norm_eps: float = 1e-6
    attn_l2_norm: bool = True
    patch_nums: tuple[int, ...] = VAR_PATCH_NUMS
    shared_aln: bool = False

    def __post_init__(self) -> None:
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} must be divisible by num_heads {self.num_heads}")
        if self.depth < 1 or self.num_classes < 1:
            raise ValueError(f"need depth >= 1 and num_classes >= 1, got {self.depth}, {self.num_classes}")
        if list(self.patch_nums) != sorted(set(self.patch_nums)) or self.patch_nums[0] != 1:
            raise ValueError(f"patch_nums must be strictly increasing from 1, got {self.patch_nums}")

    @classmethod
    def for_depth(cls, depth: int, **kw) -> "VARConfig":
        return cls(depth=depth, embed_dim=64 * depth, num_heads=depth, **kw)

    @property
    def L(self) -> int:
        return sum(pn * pn for pn in self.patch_nums)


class KVCache:
    """Keys and values of every layer for the tokens fed so far: per layer [B, H, T, head_dim]."""

    def __init__(self, depth: int) -> None:
        self.k: list[torch.Tensor | None] = [None] * depth
        self.v: list[torch.Tensor | None] = [None] * depth

    def extend(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.k[layer] is not None:
            k, v = torch.cat((self.k[layer], k), 2), torch.cat((self.v[layer], v), 2)
        self.k[layer], self.v[layer] = k, v
        return k, v

    @property
    def length(self) -> int:
        return 0 if self.k[0] is None else self.k[0].shape[2]

    def select(self, rows: torch.Tensor) -> "KVCache":
        """A cache holding only batch rows `rows` (used to split or regroup work items)."""
        out = KVCache(len(self.k))
        out.k = [None if t is None else t[rows] for t in self.k]
        out.v = [None if t is None else t[rows] for t in self.v]
        return out


class SelfAttention(nn.Module):
    """Multi-head attention; with attn_l2_norm, q and k are unit vectors and q is scaled by a learned
    per-head factor exp(min(s, ln 100)), softmax scale 1. k has no bias (a zero buffer in the files)."""

    def __init__(self, C: int, num_heads: int, attn_l2_norm: bool = True) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, C // num_heads
        self.attn_l2_norm = attn_l2_norm
        self.scale = 1.0 if attn_l2_norm else 0.25 / math.sqrt(self.head_dim)
        self.scale_mul_1H11 = nn.Parameter(torch.full((1, num_heads, 1, 1), math.log(4.0)))
        self.max_scale_mul = math.log(100.0)
        self.mat_qkv = nn.Linear(C, 3 * C, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(C))
        self.v_bias = nn.Parameter(torch.zeros(C))
        self.register_buffer("zero_k_bias", torch.zeros(C))
        self.proj = nn.Linear(C, C)

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor | None = None,
                cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        B, L, C = x.shape
        bias = torch.cat((self.q_bias, self.zero_k_bias, self.v_bias))
        qkv = F.linear(x, self.mat_qkv.weight, bias).view(B, L, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # [B, H, L, hd]
        if self.attn_l2_norm:
            q = F.normalize(q, dim=-1) * self.scale_mul_1H11.clamp(max=self.max_scale_mul).exp()
            k = F.normalize(k, dim=-1)
        if cache is not None:
            k, v = cache.extend(layer, k, v)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias, scale=self.scale)
        return self.proj(out.transpose(1, 2).reshape(B, L, C))


class FFN(nn.Module):
    def __init__(self, C: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(C, hidden)
        self.fc2 = nn.Linear(hidden, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class AdaLNSelfAttn(nn.Module):
    """Transformer block modulated by the condition: LayerNorm (no affine) then scale/shift, and
    each residual branch multiplied by a gate; the six vectors come from `ada_lin(cond)` in the
    order gamma1, gamma2, scale1, scale2, shift1, shift2.

    With `shared_aln` the block has no projection of its own: `cond` is then the model's shared
    projection [B, 1, 6, C] and the six vectors are that plus the block's `ada_gss` offset."""

    def __init__(self, C: int, num_heads: int, mlp_ratio: float = 4.0, norm_eps: float = 1e-6,
                 attn_l2_norm: bool = True, shared_aln: bool = False) -> None:
        super().__init__()
        self.C = C
        self.shared_aln = shared_aln
        self.ln_wo_grad = nn.LayerNorm(C, eps=norm_eps, elementwise_affine=False)
        self.attn = SelfAttention(C, num_heads, attn_l2_norm)
        self.ffn = FFN(C, round(C * mlp_ratio))
        if shared_aln:
            self.ada_gss = nn.Parameter(torch.zeros(1, 1, 6, C))
        else:
            self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(C, 6 * C))

    def forward(self, x: torch.Tensor, cond: torch.Tensor, attn_bias: torch.Tensor | None = None,
                cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        gss = self.ada_gss + cond if self.shared_aln else self.ada_lin(cond).view(-1, 1, 6, self.C)
        g1, g2, s1, s2, b1, b2 = gss.unbind(2)
        x = x + self.attn(self.ln_wo_grad(x) * (s1 + 1) + b1, attn_bias, cache, layer) * g1
        return x + self.ffn(self.ln_wo_grad(x) * (s2 + 1) + b2) * g2


class AdaLNBeforeHead(nn.Module):
    def __init__(self, C: int, norm_eps: float = 1e-6) -> None:
        super().__init__()
        self.C = C
        self.ln_wo_grad = nn.LayerNorm(C, eps=norm_eps, elementwise_affine=False)
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(C, 2 * C))

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        scale, shift = self.ada_lin(cond).view(-1, 1, 2, self.C).unbind(2)
        return self.ln_wo_grad(x) * (scale + 1) + shift


def level_index(patch_nums: tuple[int, ...]) -> torch.Tensor:
    """Scale index of every token of the sequence: [L] int64."""
    return torch.cat([torch.full((pn * pn,), si, dtype=torch.long) for si, pn in enumerate(patch_nums)])


def block_causal_bias(patch_nums: tuple[int, ...]) -> torch.Tensor:
    """[L, L] float: 0 where the key's scale <= the query's scale, -inf elsewhere."""
    lvl = level_index(patch_nums)
    return torch.where(lvl[:, None] >= lvl[None, :], 0.0, float("-inf"))


class VARTransformer(nn.Module):
    # buffers that are recomputed from the config, so a file may leave them out
    RECOMPUTABLE = ("lvl_1L", "attn_bias_for_masking", "zero_k_bias")

    def __init__(self, cfg: VARConfig = VARConfig()) -> None:
        super().__init__()
        self.cfg = cfg
        C, L = cfg.embed_dim, cfg.L
        self.begin_ends = []
        cur = 0
        for pn in cfg.patch_nums:
            self.begin_ends.append((cur, cur + pn * pn))
            cur += pn * pn
        self.word_embed = nn.Linear(cfg.Cvae, C)
        self.class_emb = nn.Embedding(cfg.num_classes + 1, C)
        self.pos_start = nn.Parameter(torch.zeros(1, 1, C))
        self.pos_1LC = nn.Parameter(torch.zeros(1, L, C))
        self.lvl_embed = nn.Embedding(len(cfg.patch_nums), C)
        # shared AdaLN (d36): one projection of the condition for every block, computed once
        # per forward in run_blocks; the head keeps its own (head_nm.ada_lin) in both layouts
        self.shared_ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(C, 6 * C)) if cfg.shared_aln else None
        self.blocks = nn.ModuleList([
            AdaLNSelfAttn(C, cfg.num_heads, cfg.mlp_ratio, cfg.norm_eps, cfg.attn_l2_norm, cfg.shared_aln)
            for _ in range(cfg.depth)])
        self.head_nm = AdaLNBeforeHead(C, cfg.norm_eps)
        self.head = nn.Linear(C, cfg.vocab_size)
        self.register_buffer("lvl_1L", torch.zeros(1, L, dtype=torch.long))
        self.register_buffer("attn_bias_for_masking", torch.zeros(1, 1, L, L))
        self.reset_buffers()

    @torch.no_grad()
    def reset_buffers(self) -> None:
        """(Re)compute the buffers that depend only on the config (after `to_empty`, say)."""
        pn = self.cfg.patch_nums
        dev = self.lvl_1L.device
        self.lvl_1L.copy_(level_index(pn)[None].to(dev))
        self.attn_bias_for_masking.copy_(block_causal_bias(pn)[None, None].to(dev))
        for b in self.blocks:
            b.attn.zero_k_bias.zero_()

    @property
    def null_class(self) -> int:
        return self.cfg.num_classes

    def cond(self, labels: torch.Tensor) -> torch.Tensor:
        """Class ids [B] (num_classes = null) -> condition vectors [B, C]."""
        return self.class_emb(labels)

    def lvl_pos(self, si: int) -> torch.Tensor:
        """Level + position embeddings of scale si's tokens: [1, pn^2, C]."""
        b, e = self.begin_ends[si]
        return self.lvl_embed(self.lvl_1L[:, b:e]) + self.pos_1LC[:, b:e]

    def embed_inputs(self, cond: torch.Tensor, x_next: torch.Tensor | None, first: int, last: int) -> torch.Tensor:
        """Token embeddings of scales first..last (inclusive). Scale 0 is the sos token built from
        `cond`; `x_next` [B, T, Cvae] are the VQVAE features of scales max(first, 1)..last."""
        parts = []
        if first == 0:
            parts.append(cond[:, None] + self.pos_start + self.lvl_pos(0))
        if last >= max(first, 1):
            b, e = self.begin_ends[max(first, 1)][0], self.begin_ends[last][1]
            parts.append(self.word_embed(x_next.float()) + self.lvl_embed(self.lvl_1L[:, b:e]) + self.pos_1LC[:, b:e])
        return torch.cat(parts, 1)

    def run_blocks(self, x: torch.Tensor, cond: torch.Tensor, attn_bias: torch.Tensor | None = None,
                   cache: KVCache | None = None) -> torch.Tensor:
        if self.shared_ada_lin is not None:
            cond = self.shared_ada_lin(cond).view(-1, 1, 6, self.cfg.embed_dim)
        for i, blk in enumerate(self.blocks):
            x = blk(x, cond, attn_bias, cache, i)
        return x

    def logits(self, h: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.head(self.head_nm(h.float(), cond).float()).float()

    def prefill(self, cond: torch.Tensor, x_next: torch.Tensor | None, last: int, cache: KVCache | None,
                need_logits: bool = False) -> torch.Tensor | None:
        """One block-causal forward over scales 0..last, filling `cache` (teacher forcing)."""
        x = self.embed_inputs(cond, x_next, 0, last)
        T = x.shape[1]
        h = self.run_blocks(x, cond, self.attn_bias_for_masking[:, :, :T, :T], cache)
        return self.logits(h, cond) if need_logits else None

    def step(self, cond: torch.Tensor, x_next: torch.Tensor | None, si: int, cache: KVCache) -> torch.Tensor:
        """Feed scale si through the KV cache (it must hold scales 0..si-1): logits [B, pn^2, V]."""
        x = self.embed_inputs(cond, x_next, si, si)
        return self.logits(self.run_blocks(x, cond, None, cache), cond)

    def forward(self, labels: torch.Tensor, x_next: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits over the whole sequence: labels [B], x_next [B, L-1, Cvae]
        (the VQVAE's teacher-forcing input) -> [B, L, V]."""
        cond = self.cond(labels)
        return self.prefill(cond, x_next, len(self.cfg.patch_nums) - 1, cache=None, need_logits=True)
