"""The Infinity transformer (text-to-image, bitwise head) in plain PyTorch.

One configuration family: the switches the official 2B checkpoint uses are fixed here (shared
AdaLN, cosine self-attention with 2D RoPE normalised to the 1M grid, bit labels, level embedding
before the first block only, LayerNorm, GELU FFN); anything else is refused by `InfinityConfig`.
Parameter names follow `infinity_2b_reg.pth` (`block_chunks.<c>.module.<j>.…`) so the official
state dict loads key for key.

Sequence layout: token 0 is sos = text-pool output + pos_start and is also scale 0 (1x1); the
tokens of scale s (h x w) follow row-major. A token of scale s attends to every token of scales
<= s (block-causal); at inference the KV cache holds the earlier scales.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vardist.models.checkpoint import load_exact

# Constructor switches of the reference and the only values this implementation supports.
_FIXED_SWITCHES = {
    "shared_aln": True, "use_bit_label": 1, "add_lvl_embeding_only_first_block": 1,
    "rope2d_each_sa_layer": 1, "rope2d_normalized_by_hw": 2,
    "cos_attn": True, "rms_norm": False, "swiglu": False, "head_aln": True,
    "cross_attn_layer_scale": -1.0, "nm0": False, "head_depth": 1,
}


@dataclass(frozen=True)
class InfinityConfig:
    """Sizes of an Infinity transformer; the defaults are Infinity-2B (`2bc8`).

    `patch` is the reference's spatial patchify factor: 1 for 2B, 2 for 8B
    (`apply_spatial_patchify=1`), where one token carries the bits of patch x patch VAE cells
    (d_vae = 4 x 14 = 56) and the VAE grid is twice the token grid in each direction."""

    depth: int = 32
    embed_dim: int = 2048
    num_heads: int = 16
    mlp_ratio: float = 4.0
    text_channels: int = 2048     # Ct5: flan-t5-xl d_model
    text_maxlen: int = 512
    block_chunks: int = 8
    norm_eps: float = 1e-6
    d_vae: int = 32               # bits per token (= VAE bits x patch^2)
    num_levels: int = 15          # rows of lvl_embed
    patch: int = 1                # VAE cells per token along each axis

    def __post_init__(self) -> None:
        if self.patch < 1 or self.d_vae % (self.patch * self.patch):
            raise ValueError(f"d_vae {self.d_vae} must be a multiple of patch^2 = {self.patch ** 2} "
                             f"(patch {self.patch} must be >= 1)")
        if self.embed_dim % self.num_heads or self.depth % self.block_chunks:
            raise ValueError(f"embed_dim {self.embed_dim} must divide by num_heads {self.num_heads} "
                             f"and depth {self.depth} by block_chunks {self.block_chunks}")

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def vae_bits(self) -> int:
        """Bits of one VAE cell (the BSQ VAE's codebook_dim)."""
        return self.d_vae // (self.patch * self.patch)

    @property
    def ffn_hidden(self) -> int:
        return round(self.embed_dim * self.mlp_ratio / 256) * 256

    @property
    def pool_heads(self) -> int:  # the text pool's heads follow Ct5, not the block heads
        return self.text_channels // (128 if self.embed_dim <= 4096 else 64)

    @classmethod
    def from_kwargs(cls, kwargs: Mapping, vae_bits: int = 32) -> "InfinityConfig":
        """From the reference constructor's keyword arguments (e.g. a fixture's config.json) and
        the VAE's codebook_dim; raises ValueError naming a switch this implementation does not
        support."""
        for k, want in _FIXED_SWITCHES.items():
            if k in kwargs and kwargs[k] != want:
                raise ValueError(f"Infinity option {k}={kwargs[k]!r} is not supported "
                                 f"(only {k}={want!r}, the setting of the released checkpoints)")
        patchify = kwargs.get("apply_spatial_patchify", 0)
        if patchify not in (0, 1):
            raise ValueError(f"Infinity option apply_spatial_patchify={patchify!r} is not supported "
                             f"(0: the 2B layout, 1: the 8B layout)")
        patch = 2 if patchify else 1  # the reference's pixel_(un)shuffle factor
        return cls(depth=kwargs["depth"], embed_dim=kwargs["embed_dim"], num_heads=kwargs["num_heads"],
                   mlp_ratio=kwargs.get("mlp_ratio", 4.0), text_channels=kwargs["text_channels"],
                   text_maxlen=kwargs.get("text_maxlen", 512), block_chunks=kwargs.get("block_chunks", 1),
                   norm_eps=kwargs.get("norm_eps", 1e-6), d_vae=vae_bits * patch * patch, patch=patch)


def _ln(x: torch.Tensor, eps: float) -> torch.Tensor:
    return F.layer_norm(x.float(), x.shape[-1:], eps=eps)


def _bf16_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    key_mask: torch.Tensor | None, scale: float) -> torch.Tensor:
    """Cross-attention as the reference runs it: q/k/v rounded to bfloat16 (its flash-attn
    call), attention in fp32 on the CPU (bf16 on CUDA), the output rounded to bfloat16.
    q [B, H, Lq, hd], k/v [B, H, Lk, hd], key_mask [B, Lk] (True = attend)."""
    bf = torch.bfloat16
    compute = bf if q.is_cuda else torch.float32
    mask = None if key_mask is None else key_mask[:, None, None, :]
    out = F.scaled_dot_product_attention(q.to(bf).to(compute), k.to(bf).to(compute),
                                         v.to(bf).to(compute), attn_mask=mask, scale=scale)
    return out.to(bf).float()


def _heads(x: torch.Tensor, n: int) -> torch.Tensor:
    """[B, L, n*hd] -> [B, n, L, hd]"""
    return x.unflatten(-1, (n, -1)).transpose(1, 2)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class _KVBias(nn.Module):
    """Shared by the attentions: a K/V projection whose bias is (zero, v_bias)."""

    def _init_kv(self, cin: int, dim: int) -> None:
        self.mat_kv = nn.Linear(cin, 2 * dim, bias=False)
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.register_buffer("zero_k_bias", torch.zeros(dim))

    def kv(self, x: torch.Tensor, heads: int) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = F.linear(x, self.mat_kv.weight, torch.cat((self.zero_k_bias, self.v_bias))).chunk(2, -1)
        return _heads(k, heads), _heads(v, heads)


class TextPoolAttn(_KVBias):
    """`text_proj_for_sos.ca`: one learned query per head pools each prompt's tokens."""

    def __init__(self, cin: int, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.mat_q = nn.Parameter(torch.zeros(1, heads, dim // heads))
        self._init_kv(cin, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        k, v = self.kv(x, self.heads)
        q = self.mat_q.expand(x.shape[0], -1, -1).unsqueeze(2)  # [B, H, 1, hd]
        out = _bf16_attention(q, k, v, mask, q.shape[-1] ** -0.5)
        return self.proj(out.transpose(1, 2).flatten(2)).squeeze(1)


class TextPool(nn.Module):
    def __init__(self, cin: int, dim: int, heads: int) -> None:
        super().__init__()
        self.ca = TextPoolAttn(cin, dim, heads)


class CrossAttention(_KVBias):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.mat_q = nn.Linear(dim, dim)
        self._init_kv(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor],
                mask: torch.Tensor) -> torch.Tensor:
        q = _heads(self.mat_q(x), self.heads)
        out = _bf16_attention(q, *kv, mask, q.shape[-1] ** -0.5)
        return self.proj(out.transpose(1, 2).flatten(2))


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent pairs (2m, 2m+1) of x [..., L, hd] by angle m: cos/sin [L, hd/2]."""
    a, b = x.float().unflatten(-1, (-1, 2)).unbind(-1)
    return torch.stack((a * cos - b * sin, a * sin + b * cos), -1).flatten(-2)


def grid_positions(h: int, w: int, final_hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column positions of an h x w map on the final grid: round(i * H/h) in float32,
    round half to even (e.g. 6.5 -> 6, 67.5 -> 68), as the reference."""
    r = (torch.arange(h, dtype=torch.float32) * (final_hw[0] / h)).round()
    c = (torch.arange(w, dtype=torch.float32) * (final_hw[1] / w)).round()
    return r, c


def rope_table(schedule: Sequence[tuple[int, int]], final_hw: tuple[int, int],
               head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [sum h*w, head_dim/2] for every token of `schedule`: the first head_dim/4 pairs
    rotate by the row, the rest by the column, both normalised to the 1M grid `final_hw`
    (row index round(r * H/h), round-half-to-even in float32, as the reference)."""
    half = head_dim // 2
    inv = 1.0 / (10000 ** (torch.arange(0, half, 2).float() / half))  # [head_dim/4]
    rows = []
    for h, w in schedule:
        rr, cc = torch.meshgrid(*grid_positions(h, w, final_hw), indexing="ij")
        rows.append(torch.cat((rr.reshape(-1, 1) * inv, cc.reshape(-1, 1) * inv), -1))
    ang = torch.cat(rows)
    return ang.cos(), ang.sin()


class SelfAttention(nn.Module):
    """Cosine attention: q, k l2-normalised, q scaled by exp(min(scale_mul, ln 100)), 2D RoPE,
    softmax scale 1. `cache` ([k, v] of earlier scales) grows in place when given."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.mat_qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.q_bias, self.v_bias = nn.Parameter(torch.zeros(dim)), nn.Parameter(torch.zeros(dim))
        self.register_buffer("zero_k_bias", torch.zeros(dim))
        self.scale_mul_1H11 = nn.Parameter(torch.full((1, heads, 1, 1), math.log(4.0)))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                cache: list | None, mask: torch.Tensor | None) -> torch.Tensor:
        bias = torch.cat((self.q_bias, self.zero_k_bias, self.v_bias))
        q, k, v = (_heads(t, self.heads) for t in F.linear(x, self.mat_qkv.weight, bias).chunk(3, -1))
        q = F.normalize(q.float(), dim=-1) * self.scale_mul_1H11.clamp(max=math.log(100.0)).exp()
        k = F.normalize(k.float(), dim=-1)
        q, k = apply_rope(q, *rope).to(v.dtype), apply_rope(k, *rope).to(v.dtype)
        if cache is not None:
            if cache:
                k, v = torch.cat((cache[0], k), 2), torch.cat((cache[1], v), 2)
            cache[:] = [k, v]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=1.0)
        return self.proj(out.transpose(1, 2).flatten(2))


class FFN(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class CrossAttnBlock(nn.Module):
    def __init__(self, cfg: InfinityConfig) -> None:
        super().__init__()
        C = cfg.embed_dim
        self.eps = cfg.norm_eps
        self.ada_gss = nn.Parameter(torch.zeros(1, 1, 6, C))
        self.sa = SelfAttention(C, cfg.num_heads)
        self.ca = CrossAttention(C, cfg.num_heads)
        self.ffn = FFN(C, cfg.ffn_hidden)
        self.ca_norm = nn.LayerNorm(C, eps=cfg.norm_eps)

    def forward(self, x: torch.Tensor, gss: torch.Tensor, rope, text_kv, text_mask,
                cache: list | None, mask: torch.Tensor | None) -> torch.Tensor:
        g1, g2, s1, s2, b1, b2 = (self.ada_gss + gss).unbind(2)
        x = x + self.sa(_ln(x, self.eps) * (1 + s1) + b1, rope, cache, mask) * g1
        n = self.ca_norm  # in fp32 even when the block is stored in bf16 (autocast's rule on CUDA)
        x = x + self.ca(F.layer_norm(x.float(), x.shape[-1:], n.weight.float(), n.bias.float(), n.eps),
                        text_kv, text_mask)
        return x + self.ffn(_ln(x, self.eps) * (1 + s2) + b2) * g2


class _Chunk(nn.Module):
    def __init__(self, blocks: list[nn.Module]) -> None:
        super().__init__()
        self.module = nn.ModuleList(blocks)


class _HeadNorm(nn.Module):
    def __init__(self, D: int, C: int) -> None:
        super().__init__()
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(D, 2 * C))


@dataclass
class TextCond:
    """The text side of a batch (rows = [cond; uncond] when guided): sos / cond_BD [bs, D],
    the shared AdaLN vectors [bs, 1, 6, C], and every block's cross-attention K/V."""

    sos: torch.Tensor
    gss: torch.Tensor
    mask: torch.Tensor
    block_kv: list[tuple[torch.Tensor, torch.Tensor]]


class Infinity(nn.Module):
    def __init__(self, cfg: InfinityConfig = InfinityConfig()) -> None:
        super().__init__()
        self.cfg = cfg
        C = D = cfg.embed_dim
        Ct = cfg.text_channels
        self.cfg_uncond = nn.Parameter(torch.zeros(cfg.text_maxlen, Ct))
        self.pos_start = nn.Parameter(torch.zeros(1, 1, C))
        self.text_norm = RMSNorm(Ct, eps=cfg.norm_eps)
        self.text_proj_for_sos = TextPool(Ct, D, cfg.pool_heads)
        self.text_proj_for_ca = nn.Sequential(nn.Linear(Ct, D), nn.GELU(approximate="tanh"),
                                              nn.Linear(D, D))
        self.lvl_embed = nn.Embedding(cfg.num_levels, C)
        self.word_embed = nn.Linear(cfg.d_vae, C)
        self.shared_ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(D, 6 * C))
        self.head_nm = _HeadNorm(D, C)
        self.head = nn.Linear(C, 2 * cfg.d_vae)
        per = cfg.depth // cfg.block_chunks
        self.block_chunks = nn.ModuleList(
            [_Chunk([CrossAttnBlock(cfg) for _ in range(per)]) for _ in range(cfg.block_chunks)])
        self.blocks = tuple(b for c in self.block_chunks for b in c.module)  # not registered twice

    # -- text ------------------------------------------------------------------------------
    def encode_text(self, feats: Sequence[torch.Tensor], guided: bool) -> TextCond:
        """Per-prompt encoder rows [L_i, Ct5] -> TextCond; with `guided` the unconditional rows
        (cfg_uncond[:L_i] for prompt i) follow the conditional ones."""
        Ct, maxlen = self.cfg.text_channels, self.cfg.text_maxlen
        for i, f in enumerate(feats):
            if f.ndim != 2 or f.shape[1] != Ct or not 0 < f.shape[0] <= maxlen:
                raise ValueError(f"text {i}: expected [L, {Ct}] features with 1 <= L <= {maxlen}, "
                                 f"got {tuple(f.shape)} (is the text encoder the one this model "
                                 f"was trained with?)")
        lens = [f.shape[0] for f in feats]
        dev = self.pos_start.device
        x = torch.zeros(len(feats), max(lens), Ct, device=dev)
        for i, f in enumerate(feats):
            x[i, :lens[i]] = f.to(dev, torch.float32)
        if guided:
            u = torch.zeros_like(x)
            for i, n in enumerate(lens):
                u[i, :n] = self.cfg_uncond[:n]
            x, lens = torch.cat((x, u)), lens + lens
        mask = torch.arange(x.shape[1], device=dev)[None] < torch.tensor(lens, device=dev)[:, None]
        x = self.text_norm(x)
        sos = self.text_proj_for_sos.ca(x, mask).float()
        ca_in = self.text_proj_for_ca(x)
        with torch.autocast(dev.type, enabled=False):  # the shared AdaLN runs in fp32 (reference)
            gss = self.shared_ada_lin(sos).unflatten(-1, (6, -1)).unsqueeze(1)
        kv = [b.ca.kv(ca_in, b.ca.heads) for b in self.blocks]
        return TextCond(sos, gss, mask, kv)

    # -- transformer ---------------------------------------------------------------------
    def run_blocks(self, x: torch.Tensor, levels: torch.Tensor, rope, text: TextCond,
                   caches: list[list] | None, mask: torch.Tensor | None,
                   mix: tuple[int, Callable] | None = None) -> torch.Tensor:
        """x [bs, L, C] of tokens at scale indices `levels` [L]; the level embedding is added
        before the first block only. `mix = (block index, fn)` applies fn to that block's
        output (CFG at an insertion layer)."""
        x = x + self.lvl_embed(levels)
        for i, blk in enumerate(self.blocks):
            x = blk(x, text.gss, rope, text.block_kv[i], text.mask,
                    None if caches is None else caches[i], mask)
            if mix is not None and i == mix[0]:
                x = mix[1](x)
        return x

    def logits(self, x: torch.Tensor, cond_BD: torch.Tensor) -> torch.Tensor:
        """[B, L, C] -> bit logits [B, L, d_vae, 2] (index 0: bit 0, index 1: bit 1)."""
        scale, shift = self.head_nm.ada_lin(cond_BD).unsqueeze(1).chunk(2, -1)
        h = _ln(x, self.cfg.norm_eps) * (1 + scale) + shift
        return self.head(h).float().unflatten(-1, (self.cfg.d_vae, 2))

    def sos_tokens(self, text: TextCond) -> torch.Tensor:
        return text.sos.unsqueeze(1) + self.pos_start


def block_causal_mask(q_levels: torch.Tensor, k_levels: torch.Tensor) -> torch.Tensor | None:
    """True where a query may attend; None when every query may see every key."""
    m = q_levels[:, None] >= k_levels[None, :]
    return None if bool(m.all()) else m


# Buffers the reference may have saved that carry no weights (its own loader drops them too).
_DROP = ("lvl_1L", "attn_bias_for_masking", "Infinity_visible_kvlen", "Infinity_invisible_qlen")


def canonical_state_dict(sd: Mapping[str, torch.Tensor], cfg: InfinityConfig) -> dict[str, torch.Tensor]:
    """Accept both block layouts (`blocks.<k>.` and `block_chunks.<c>.module.<j>.`) and drop the
    reference's non-weight buffers."""
    per = cfg.depth // cfg.block_chunks
    out = {}
    for k, v in sd.items():
        if k in _DROP:
            continue
        if k.startswith("blocks."):
            _, idx, rest = k.split(".", 2)
            k = f"block_chunks.{int(idx) // per}.module.{int(idx) % per}.{rest}"
        out[k] = v
    return out


def load_infinity(model: Infinity, sd: Mapping[str, torch.Tensor],
                  what: str = "the Infinity transformer") -> Infinity:
    """Key-for-key load; the zero K-bias buffers may be absent from a file."""
    load_exact(model, canonical_state_dict(sd, model.cfg), what=what, optional=("zero_k_bias",))
    return model
