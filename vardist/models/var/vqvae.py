"""VAR's multi-scale residual VQVAE, written to load the official `vae_ch160v4096z32.pth` key for key.

An image (in [-1, 1]) is encoded to a latent f [B, Cvae, n, n] (n = last patch size). The latent is
quantised coarse to fine: at scale s the remaining residual is area-downsampled to pn_s x pn_s and
snapped to its nearest codebook entries (token map r_s); those entries are bicubic-upsampled back
to n x n, passed through a small "phi" convolution and added to the running estimate f_hat. The
decoder turns f_hat into pixels. Generation builds f_hat the same way from sampled token maps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

VAR_PATCH_NUMS = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)


@dataclass(frozen=True)
class VQVAEConfig:
    """Defaults are the released VAE (`vae_ch160v4096z32.pth`)."""

    vocab_size: int = 4096                     # V, codebook entries
    z_channels: int = 32                       # Cvae, floats per codebook vector
    ch: int = 160                              # base width of encoder / decoder
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)  # width multiplier per resolution level
    num_res_blocks: int = 2
    in_channels: int = 3
    using_sa: bool = True                      # attention blocks at the coarsest level
    using_mid_sa: bool = True                  # attention block in the middle
    share_quant_resi: int = 4                  # number of phi convs shared over the scales (0: one per scale)
    quant_resi: float = 0.5                    # phi(h) = (1 - r) h + r conv(h)
    patch_nums: tuple[int, ...] = VAR_PATCH_NUMS

    def __post_init__(self) -> None:
        if self.z_channels < 1 or self.vocab_size < 2:
            raise ValueError(f"need z_channels >= 1 and vocab_size >= 2, got {self.z_channels}, {self.vocab_size}")
        if any(c * self.ch % 32 for c in self.ch_mult):
            raise ValueError(f"GroupNorm uses 32 groups: ch * ch_mult {self.ch} * {self.ch_mult} must be multiples of 32")
        pn = tuple(self.patch_nums)
        if not pn or list(pn) != sorted(set(pn)):
            raise ValueError(f"patch_nums must be strictly increasing, got {pn}")
        if self.share_quant_resi < 0:
            raise ValueError(f"share_quant_resi must be >= 0, got {self.share_quant_resi}")

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def image_size(self) -> int:
        """Pixel side of the images this VAE encodes / decodes: last patch size x downsample."""
        return self.patch_nums[-1] * self.downsample


# ---------------------------------------------------------------------------------------------
# Convolutional building blocks (taming / LDM "vq-f16" style). Key names follow the release.

def _norm(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, c, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.norm1, self.conv1 = _norm(c_in), nn.Conv2d(c_in, c_out, 3, 1, 1)
        self.norm2, self.conv2 = _norm(c_out), nn.Conv2d(c_out, c_out, 3, 1, 1)
        self.nin_shortcut = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.nin_shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention over all positions of a feature map."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.norm = _norm(c)
        self.qkv = nn.Conv2d(c, 3 * c, 1)
        self.proj_out = nn.Conv2d(c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        q, k, v = self.qkv(self.norm(x)).view(B, 3, C, H * W).transpose(2, 3).unbind(1)  # [B, HW, C]
        h = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]
        return x + self.proj_out(h.transpose(1, 2).reshape(B, C, H, W))


class Downsample(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, 2, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # asymmetric pad: right and bottom only


class Upsample(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Level(nn.Module):
    """One resolution level: res blocks (+ attention after each) and an optional resampler."""

    def __init__(self, c_in: int, c_out: int, n_blocks: int, attn: bool, resample: type | None,
                 resample_name: str) -> None:
        super().__init__()
        self.block = nn.ModuleList([ResnetBlock(c_in if i == 0 else c_out, c_out) for i in range(n_blocks)])
        self.attn = nn.ModuleList([AttnBlock(c_out) for _ in range(n_blocks)] if attn else [])
        self.resample_name = resample_name
        if resample is not None:
            setattr(self, resample_name, resample(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, blk in enumerate(self.block):
            x = blk(x)
            if len(self.attn):
                x = self.attn[i](x)
        resample = getattr(self, self.resample_name, None)
        return resample(x) if resample is not None else x


class _Mid(nn.Module):
    def __init__(self, c: int, attn: bool) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(c, c)
        self.attn_1 = AttnBlock(c) if attn else nn.Identity()
        self.block_2 = ResnetBlock(c, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class Encoder(nn.Module):
    def __init__(self, cfg: VQVAEConfig) -> None:
        super().__init__()
        chs = [cfg.ch * m for m in cfg.ch_mult]
        n = len(chs)
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, 3, 1, 1)
        self.down = nn.ModuleList([
            _Level(([cfg.ch] + chs)[i], chs[i], cfg.num_res_blocks, cfg.using_sa and i == n - 1,
                   Downsample if i < n - 1 else None, "downsample")
            for i in range(n)])
        self.mid = _Mid(chs[-1], cfg.using_mid_sa)
        self.norm_out = _norm(chs[-1])
        self.conv_out = nn.Conv2d(chs[-1], cfg.z_channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(self.mid(h))))


class Decoder(nn.Module):
    def __init__(self, cfg: VQVAEConfig) -> None:
        super().__init__()
        chs = [cfg.ch * m for m in cfg.ch_mult]
        n = len(chs)
        self.conv_in = nn.Conv2d(cfg.z_channels, chs[-1], 3, 1, 1)
        self.mid = _Mid(chs[-1], cfg.using_mid_sa)
        # stored as up.0 (finest) .. up.{n-1} (coarsest) but run coarsest first
        self.up = nn.ModuleList([
            _Level(chs[min(i + 1, n - 1)], chs[i], cfg.num_res_blocks + 1, cfg.using_sa and i == n - 1,
                   Upsample if i > 0 else None, "upsample")
            for i in range(n)])
        self.norm_out = _norm(chs[0])
        self.conv_out = nn.Conv2d(chs[0], cfg.in_channels, 3, 1, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(h)))


# ---------------------------------------------------------------------------------------------
# Residual quantiser with the phi convolutions shared across scales.

class Phi(nn.Conv2d):
    """phi(h) = (1 - r) * h + r * conv3x3(h): the refinement applied to each scale's upsampled codes."""

    def __init__(self, c: int, ratio: float) -> None:
        super().__init__(c, c, 3, 1, 1)
        self.ratio = ratio

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h * (1 - self.ratio) + super().forward(h) * self.ratio


def phi_index_table(num_scales: int, num_phi: int) -> list[int]:
    """Which phi serves each scale: the nearest of `num_phi` ticks to si / (num_scales - 1).

    Evaluated in float64 numpy as the release does: for 10 scales and 4 phis the exact tie at
    scale 2 resolves to phi 1, giving [0, 0, 1, 1, 1, 2, 2, 3, 3, 3]."""
    if num_phi == 0:  # one phi per scale
        return list(range(num_scales))
    K = num_phi
    ticks = np.linspace(1 / (3 * K), 1 - 1 / (3 * K), K) if K == 4 else np.linspace(1 / (2 * K), 1 - 1 / (2 * K), K)
    denom = max(num_scales - 1, 1)
    return [int(np.argmin(np.abs(ticks - si / denom))) for si in range(num_scales)]


class QuantResi(nn.Module):
    """Holds the phi convolutions as `qresi_ls.{i}` (the official layout for share_quant_resi=4)."""

    def __init__(self, c: int, num_phi: int, ratio: float) -> None:
        super().__init__()
        self.qresi_ls = nn.ModuleList([Phi(c, ratio) for _ in range(num_phi)])


class VectorQuantizer(nn.Module):
    def __init__(self, cfg: VQVAEConfig) -> None:
        super().__init__()
        S = len(cfg.patch_nums)
        self.patch_nums = tuple(cfg.patch_nums)
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.z_channels)
        num_phi = cfg.share_quant_resi or S
        self.quant_resi = QuantResi(cfg.z_channels, num_phi, cfg.quant_resi)
        self.phi_of_scale = phi_index_table(S, cfg.share_quant_resi)
        # codebook usage statistics of training; kept only so official files load key for key
        self.register_buffer("ema_vocab_hit_SV", torch.zeros(S, cfg.vocab_size))

    def phi(self, si: int, h: torch.Tensor) -> torch.Tensor:
        return self.quant_resi.qresi_ls[self.phi_of_scale[si]](h)

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """z [N, C] -> index of the nearest codebook vector (squared L2, computed as the release does
        so that near-ties break the same way)."""
        E = self.embedding.weight
        d = z.square().sum(1, keepdim=True) + E.square().sum(1)
        return torch.addmm(d, z, E.T, beta=1, alpha=-2).argmin(1)

    def lookup(self, idx: torch.Tensor, pn: int) -> torch.Tensor:
        """Token ids [B, pn*pn] -> codebook vectors as a map [B, C, pn, pn]."""
        return self.embedding(idx).transpose(1, 2).reshape(idx.shape[0], -1, pn, pn)

    def scale_contribution(self, si: int, h: torch.Tensor) -> torch.Tensor:
        """What scale si adds to f_hat: bicubic-upsample its code map to full size (not at the last
        scale), then phi."""
        n = self.patch_nums[-1]
        if si != len(self.patch_nums) - 1:
            h = F.interpolate(h, size=(n, n), mode="bicubic")
        return self.phi(si, h)

    def add_scale(self, f_hat: torch.Tensor, si: int, idx: torch.Tensor) -> torch.Tensor:
        """f_hat + contribution of token map idx [B, pn*pn] at scale si (returns a new tensor)."""
        return f_hat + self.scale_contribution(si, self.lookup(idx, self.patch_nums[si]))

    def next_input(self, f_hat: torch.Tensor, si: int) -> torch.Tensor:
        """The transformer's input for scale si + 1: f_hat area-downsampled, as [B, pn*pn, C]."""
        pn = self.patch_nums[si + 1]
        x = F.interpolate(f_hat, size=(pn, pn), mode="area")
        return x.flatten(2).transpose(1, 2)

    def f_to_idx(self, f: torch.Tensor) -> list[torch.Tensor]:
        """Multi-scale residual quantisation of a latent [B, C, n, n] -> token maps [B, pn*pn]."""
        B, C, H, W = f.shape
        S = len(self.patch_nums)
        f_rest, out = f.float().clone(), []
        for si, pn in enumerate(self.patch_nums):
            z = f_rest if si == S - 1 else F.interpolate(f_rest, size=(pn, pn), mode="area")
            idx = self.nearest(z.permute(0, 2, 3, 1).reshape(-1, C)).view(B, pn * pn)
            h = self.scale_contribution(si, self.lookup(idx, pn))
            f_rest = f_rest - h
            out.append(idx)
        return out

    def accumulate(self, maps: Sequence[torch.Tensor], inputs: bool = True
                   ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Add the token maps of scales 0..k (k = len(maps) - 1) into f_hat [B, C, n, n], and (if
        `inputs`) collect the transformer inputs they determine: those of scales 1..min(k+1, S-1),
        each [B, pn^2, C]. With maps r_0..r_{S-2} these are the teacher-forcing inputs."""
        n = self.patch_nums[-1]
        f_hat = maps[0].new_zeros(maps[0].shape[0], self.embedding.embedding_dim, n, n, dtype=torch.float32)
        xs = []
        for si, idx in enumerate(maps):
            f_hat = self.add_scale(f_hat, si, idx)
            if inputs and si < len(self.patch_nums) - 1:
                xs.append(self.next_input(f_hat, si))
        return f_hat, xs

    def teacher_forcing_input(self, maps: Sequence[torch.Tensor]) -> torch.Tensor:
        """Transformer inputs of scales 1..k from maps r_0..r_{k-1}: [B, sum pn^2, C]."""
        return torch.cat(self.accumulate(maps)[1], 1)


class VQVAE(nn.Module):
    def __init__(self, cfg: VQVAEConfig = VQVAEConfig()) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quantize = VectorQuantizer(cfg)
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.z_channels, 3, 1, 1)
        self.post_quant_conv = nn.Conv2d(cfg.z_channels, cfg.z_channels, 3, 1, 1)

    def img_to_idx(self, img: torch.Tensor) -> list[torch.Tensor]:
        """Images [B, 3, H, W] in [-1, 1] -> one token map [B, pn*pn] per scale."""
        s = self.cfg.image_size
        if img.dim() != 4 or tuple(img.shape[-2:]) != (s, s):
            raise ValueError(f"expected images [B, {self.cfg.in_channels}, {s}, {s}], got {tuple(img.shape)}")
        return self.quantize.f_to_idx(self.quant_conv(self.encoder(img)))

    def fhat_to_img(self, f_hat: torch.Tensor) -> torch.Tensor:
        """Accumulated latent -> images [B, 3, H, W] in [-1, 1]."""
        return self.decoder(self.post_quant_conv(f_hat)).clamp(-1, 1)

    def idx_to_img(self, maps: Sequence[torch.Tensor]) -> torch.Tensor:
        """All token maps (every scale) -> images in [-1, 1]."""
        if len(maps) != len(self.cfg.patch_nums):
            raise ValueError(f"need one token map per scale ({len(self.cfg.patch_nums)}), got {len(maps)}")
        return self.fhat_to_img(self.quantize.accumulate(maps, inputs=False)[0])
