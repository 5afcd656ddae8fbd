"""The BSQ VAEs of Infinity: `infinity_vae_d32reg.pth` (2B: a stride-16, 5-level conv autoencoder
with a 32-channel latent) and `infinity_vae_d56_f8_14_patchify.pth` (8B: stride 8, 4 levels, a
14-channel latent). The latent is quantised scale by scale with binary spherical quantisation (one
bit per channel); the sizes come from BSQVAEConfig.

Module names follow the checkpoint: every conv and norm sits inside a wrapper (`conv_in.conv`,
`norm1.norm`, `downsample.conv.conv`), so the official keys load one for one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vardist.models.checkpoint import load_exact


@dataclass(frozen=True)
class BSQVAEConfig:
    base_ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 4, 4, 4)
    num_res_blocks: int = 2          # encoder; the decoder has one more per level
    codebook_dim: int = 32           # latent channels = bits per position


class _Conv(nn.Module):
    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1, pad: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, pad)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class _Norm(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        groups = 32 if ch % 32 == 0 else 24  # the reference's rule
        self.norm = nn.GroupNorm(groups, ch, eps=1e-6, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x)


class _ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.norm1, self.conv1 = _Norm(cin), _Conv(cin, cout)
        self.norm2, self.conv2 = _Norm(cout), _Conv(cout, cout)
        if cin != cout:
            self.nin_shortcut = _Conv(cin, cout, k=1, pad=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x) + h


class _Down(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = _Conv(ch, ch, stride=2, pad=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # asymmetric pad, then stride-2 conv


class _Up(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = _Conv(ch, ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Mid(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.block_1, self.block_2 = _ResBlock(ch, ch), _ResBlock(ch, ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.block_1(x))


class _Level(nn.Module):
    def __init__(self, cin: int, cout: int, n: int, resample: nn.Module | None, name: str) -> None:
        super().__init__()
        self.block = nn.ModuleList([_ResBlock(cin if i == 0 else cout, cout) for i in range(n)])
        if resample is not None:
            setattr(self, name, resample)
        self._resample = name if resample is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for b in self.block:
            x = b(x)
        return getattr(self, self._resample)(x) if self._resample else x


class Encoder(nn.Module):
    def __init__(self, cfg: BSQVAEConfig) -> None:
        super().__init__()
        chs = [cfg.base_ch * m for m in cfg.ch_mult]
        last = len(chs) - 1
        self.conv_in = _Conv(3, cfg.base_ch)
        self.down = nn.ModuleList([
            _Level(cfg.base_ch if i == 0 else chs[i - 1], c, cfg.num_res_blocks,
                   _Down(c) if i < last else None, "downsample") for i, c in enumerate(chs)])
        self.mid = _Mid(chs[-1])
        self.norm_out = _Norm(chs[-1])
        self.conv_out = _Conv(chs[-1], cfg.codebook_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(self.mid(h))))


class Decoder(nn.Module):
    def __init__(self, cfg: BSQVAEConfig) -> None:
        super().__init__()
        chs = [cfg.base_ch * m for m in cfg.ch_mult]
        self.conv_in = _Conv(cfg.codebook_dim, chs[-1])
        self.mid = _Mid(chs[-1])
        # up.i produces chs[i]; applied from i = last down to 0, with a x2 upsample after i > 0
        self.up = nn.ModuleList([
            _Level(chs[min(i + 1, len(chs) - 1)], c, cfg.num_res_blocks + 1,
                   _Up(c) if i > 0 else None, "upsample") for i, c in enumerate(chs)])
        self.norm_out = _Norm(chs[0])
        self.conv_out = _Conv(chs[0], 3)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(h)))


def _resize(x: torch.Tensor, hw: tuple[int, int], mode: str) -> torch.Tensor:
    """Resize a [B, C, h, w] latent the way the reference does on its 5-D (t = 1) tensors."""
    if tuple(x.shape[-2:]) == tuple(hw):
        return x
    out = F.interpolate(x.unsqueeze(2), size=(1, *hw), mode=mode,
                        **({"align_corners": False} if mode == "trilinear" else {}))
    return out.squeeze(2)


def bits_to_codes(bits: torch.Tensor) -> torch.Tensor:
    """0/1 bits [..., d] -> BSQ codes +-1/sqrt(d) (l2-normalised, as the reference does)."""
    d = bits.shape[-1]
    s = d ** -0.5
    codes = bits.float() * (2 * s) - s
    return codes / codes.norm(dim=-1, keepdim=True)


def patchify_bits(bits: torch.Tensor, patch: int) -> torch.Tensor:
    """VAE-layout bits [B, p*h, p*w, d] -> token grid [B, h, w, d*p*p]: channel k of a token holds
    bit k // p^2 of VAE cell (p*y + (k % p^2) // p, p*x + k % p) (`pixel_unshuffle`, channel-major
    as the reference). patch 1 returns the input."""
    if patch == 1:
        return bits
    return F.pixel_unshuffle(bits.permute(0, 3, 1, 2), patch).permute(0, 2, 3, 1)


def unpatchify_bits(tokens: torch.Tensor, patch: int) -> torch.Tensor:
    """Token grid [B, h, w, d*p*p] -> VAE-layout bits [B, p*h, p*w, d] (`pixel_shuffle`); the
    inverse of patchify_bits."""
    if patch == 1:
        return tokens
    return F.pixel_shuffle(tokens.permute(0, 3, 1, 2), patch).permute(0, 2, 3, 1)


def next_scale_input(summed: torch.Tensor, codes_hw: torch.Tensor,
                     next_hw: tuple[int, int] | None, patch: int = 1
                     ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Accumulate one scale's codes [B, d, h, w] into the full-size sum [B, d, H, W] (trilinear up)
    and return (new sum, next scale's transformer input [B, h'*w', d*patch^2] or None at the last
    scale). next_hw is on the VAE grid; with patch > 1 the resampled sum is pixel-unshuffled
    after resampling (resampling the unshuffled grid would give other numbers)."""
    summed = summed + _resize(codes_hw, tuple(summed.shape[-2:]), "trilinear")
    if next_hw is None:
        return summed, None
    nxt = _resize(summed, next_hw, "trilinear")
    if patch > 1:
        nxt = F.pixel_unshuffle(nxt, patch)
    return summed, nxt.flatten(2).transpose(1, 2)


def multiscale_bsq(h: torch.Tensor, schedule: Sequence[tuple[int, int]],
                   residuals: list[torch.Tensor] | None = None) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Multi-scale residual BSQ of encoder features h [B, d, H, W] (the last map of `schedule` is
    H x W): (bits per scale [B, h, w, d] uint8, the quantised sum z [B, d, H, W]).
    `encode_bits` runs it on the encoder's output; training (vardist.zoo) runs it on detached
    features and passes gradients straight through itself. `residuals`, when given, receives the
    normalised residual [B, d, h, w] each scale quantised (whose signs are the bits)."""
    H, W = h.shape[-2:]
    s = h.shape[1] ** -0.5
    residual, z = h, torch.zeros_like(h)
    bits = []
    for hw in schedule:
        r = _resize(residual, tuple(hw), "area")
        r = r / r.norm(dim=1, keepdim=True)
        q = torch.where(r > 0, s, -s)
        q = r + (q - r)  # the reference's straight-through form (may differ from +-s by an ulp)
        bits.append((r > 0).permute(0, 2, 3, 1).to(torch.uint8))
        if residuals is not None:
            residuals.append(r)
        up = _resize(q, (H, W), "trilinear")
        residual, z = residual - up, z + up
    return bits, z


class BSQVAE(nn.Module):
    """Encoder + decoder + multi-scale BSQ. Images are float RGB in [-1, 1], NCHW."""

    def __init__(self, cfg: BSQVAEConfig = BSQVAEConfig()) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder, self.decoder = Encoder(cfg), Decoder(cfg)
        self.downsample = 2 ** (len(cfg.ch_mult) - 1)

    @torch.no_grad()
    def encode_bits(self, images: torch.Tensor, schedule: Sequence[tuple[int, int]]
                    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Multi-scale residual BSQ of the encoder features: (bits per scale [B, h, w, d] uint8,
        the quantised sum z [B, d, H, W])."""
        h = self.encoder(images)
        H, W = h.shape[-2:]
        if tuple(schedule[-1]) != (H, W):
            raise ValueError(f"the schedule ends at {tuple(schedule[-1])} but the images encode to "
                             f"{H}x{W}; pass images of {H * self.downsample}x{W * self.downsample} "
                             f"px for this schedule")
        return multiscale_bsq(h, schedule)

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z).clamp_(-1, 1)

    def codes_from_bits(self, bits: Sequence[torch.Tensor]) -> torch.Tensor:
        """Bits per scale [B, h, w, d] -> the summed upsampled codes [B, d, H, W]."""
        H, W = bits[-1].shape[1:3]
        z = torch.zeros(bits[0].shape[0], bits[0].shape[-1], H, W, device=bits[0].device)
        for b in bits:
            z = z + _resize(bits_to_codes(b).permute(0, 3, 1, 2), (H, W), "trilinear")
        return z

    @torch.no_grad()
    def decode_bits(self, bits: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.decode(self.codes_from_bits(bits))


def _nest_keys(sd: Mapping[str, torch.Tensor], own: set[str]) -> dict[str, torch.Tensor]:
    """Accept the flat layout (`conv_in.weight`, `norm1.weight`) the reference loader also maps."""
    out = {}
    for k, v in sd.items():
        if k not in own:
            head, _, leaf = k.rpartition(".")
            for wrap in ("conv", "norm"):
                if f"{head}.{wrap}.{leaf}" in own:
                    k = f"{head}.{wrap}.{leaf}"
                    break
        out[k] = v
    return out


# the BSQ index mask (2^31..2^0) is stored under two names; bit labels never use it
_UNUSED_VAE_KEYS = ("quantizer.lfq.mask", "quantize.lfq.mask")


def load_vae(vae: BSQVAE, sd: Mapping[str, torch.Tensor], what: str = "the Infinity BSQ VAE") -> BSQVAE:
    sd = {k: v for k, v in sd.items() if k not in _UNUSED_VAE_KEYS}
    load_exact(vae, _nest_keys(sd, set(vae.state_dict())), what=what)
    return vae
