"""FlexVAR's tokenizer ("FlexVAE", `FlexVAE.pth`): a LlamaGen VQ-16 autoencoder with an
L2-normalised codebook, used without residuals.

Every scale quantises the *whole* latent area-resized to pn x pn on its own, and an image is
decoded from one token map alone (the last scale's), so there is no f_hat and no phi here,
unlike VAR's VQVAE. Key layout is the official one (`encoder.conv_blocks.{i}.res.{j}...`,
decoder levels indexed in processing order, separate q/k/v convs in attention).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vardist.models.flexvar.configs import FlexVAEConfig
# The res blocks and resamplers are VAR's (same math, same key names); only the attention (separate
# q/k/v convs) and the level / mid layout (`res.{j}`, `mid.{0,1,2}`) differ.
from vardist.models.var.vqvae import Downsample, ResnetBlock, Upsample
from vardist.models.var.vqvae import _norm as group_norm  # GroupNorm(32, eps 1e-6), as both releases


class AttnBlock(nn.Module):
    """Single-head self-attention over all positions, separate 1x1 q/k/v convs."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.norm = group_norm(c)
        self.q, self.k, self.v = (nn.Conv2d(c, c, 1) for _ in range(3))
        self.proj_out = nn.Conv2d(c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        h = self.norm(x)
        q, k, v = (m(h).flatten(2).transpose(1, 2).unsqueeze(1) for m in (self.q, self.k, self.v))
        o = F.scaled_dot_product_attention(q, k, v)        # softmax(q k^T / sqrt(C)) v
        return x + self.proj_out(o.squeeze(1).transpose(1, 2).reshape(B, C, H, W))


class Level(nn.Module):
    """One resolution: res blocks (each followed by attention where present), then a resample."""

    def __init__(self, cin: int, cout: int, n_res: int, attn: bool, resample: type | None) -> None:
        super().__init__()
        self.res = nn.ModuleList(ResnetBlock(cin if i == 0 else cout, cout) for i in range(n_res))
        self.attn = nn.ModuleList(AttnBlock(cout) for _ in range(n_res if attn else 0))
        if resample is Downsample:
            self.downsample = Downsample(cout)
        elif resample is Upsample:
            self.upsample = Upsample(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, res in enumerate(self.res):
            x = res(x)
            if len(self.attn):
                x = self.attn[i](x)
        for name in ("downsample", "upsample"):
            if hasattr(self, name):
                x = getattr(self, name)(x)
        return x


def _mid(c: int) -> nn.ModuleList:
    return nn.ModuleList([ResnetBlock(c, c), AttnBlock(c), ResnetBlock(c, c)])


class Encoder(nn.Module):
    def __init__(self, cfg: FlexVAEConfig) -> None:
        super().__init__()
        n = len(cfg.ch_mult)
        widths = [cfg.ch * m for m in cfg.ch_mult]
        self.conv_in = nn.Conv2d(3, cfg.ch, 3, padding=1)
        self.conv_blocks = nn.ModuleList(
            Level(([cfg.ch] + widths)[i], widths[i], cfg.num_res_blocks, attn=i == n - 1,
                  resample=Downsample if i < n - 1 else None) for i in range(n))
        self.mid = _mid(widths[-1])
        self.norm_out = group_norm(widths[-1])
        self.conv_out = nn.Conv2d(widths[-1], cfg.z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for level in self.conv_blocks:
            x = level(x)
        for m in self.mid:
            x = m(x)
        return self.conv_out(F.silu(self.norm_out(x)))


class Decoder(nn.Module):
    """Levels in processing order: conv_blocks.0 is the coarsest (opposite of VAR's `up.{i}`)."""

    def __init__(self, cfg: FlexVAEConfig) -> None:
        super().__init__()
        n = len(cfg.ch_mult)
        widths = [cfg.ch * m for m in reversed(cfg.ch_mult)]
        self.conv_in = nn.Conv2d(cfg.z_channels, widths[0], 3, padding=1)
        self.mid = _mid(widths[0])
        self.conv_blocks = nn.ModuleList(
            Level(([widths[0]] + widths)[i], widths[i], cfg.num_res_blocks + 1, attn=i == 0,
                  resample=Upsample if i < n - 1 else None) for i in range(n))
        self.norm_out = group_norm(widths[-1])
        self.conv_out = nn.Conv2d(widths[-1], 3, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(z)
        for m in self.mid:
            x = m(x)
        for level in self.conv_blocks:
            x = level(x)
        return self.conv_out(F.silu(self.norm_out(x)))


class Quantizer(nn.Module):
    """Nearest code by cosine: latent vectors and codebook rows are both L2-normalised on use
    (the stored rows are not unit-norm)."""

    def __init__(self, cfg: FlexVAEConfig) -> None:
        super().__init__()
        self.embedding = nn.Embedding(cfg.codebook_size, cfg.embed_dim)
        if cfg.show_usage:  # training-time usage log; kept only so official files load key for key
            self.register_buffer("codebook_used", torch.zeros(cfg.usage_len))

    def codebook(self) -> torch.Tensor:
        """The normalised code vectors [V, Cvae]: what tokens mean everywhere."""
        return F.normalize(self.embedding.weight, p=2, dim=-1, eps=1e-12)

    def lookup(self, z: torch.Tensor) -> torch.Tensor:
        """z [B, Cvae, h, w] -> token ids int64 [B, h*w] (row-major)."""
        zf = F.normalize(z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]), p=2, dim=-1, eps=1e-12)
        e = self.codebook()
        # the reference's |z|^2 + |e|^2 - 2 z.e, kept literally so near-ties round the same way
        d = zf.pow(2).sum(1, keepdim=True) + e.pow(2).sum(1) - 2 * zf @ e.t()
        return d.argmin(dim=1).view(z.shape[0], -1)


class FlexVAE(nn.Module):
    def __init__(self, cfg: FlexVAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quantize = Quantizer(cfg)
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(cfg.embed_dim, cfg.z_channels, 1)

    def encode_latent(self, img: torch.Tensor) -> torch.Tensor:
        """RGB in [-1, 1] [B, 3, H, W] -> continuous latent [B, Cvae, H/16, W/16]."""
        return self.quant_conv(self.encoder(img))

    def encode(self, img: torch.Tensor, schedule: Sequence[int]) -> list[torch.Tensor]:
        """Images -> token maps [B, pn*pn] of every scale of `schedule`."""
        return self.quantize_scales(self.encode_latent(img), schedule)

    def quantize_scales(self, h: torch.Tensor, schedule: Sequence[int]) -> list[torch.Tensor]:
        """Each scale quantises the whole latent area-resized to pn x pn on its own (no residual)."""
        return [self.quantize.lookup(F.interpolate(h, size=(pn, pn), mode="area")) for pn in schedule]

    def code_vectors(self, idx: torch.Tensor) -> torch.Tensor:
        """Token ids [..., P] -> normalised code vectors [..., P, Cvae]."""
        return F.embedding(idx, self.quantize.codebook())

    def code_map(self, idx: torch.Tensor) -> torch.Tensor:
        """One square token map [B, pn*pn] -> its code vectors as a map [B, Cvae, pn, pn]."""
        B, P = idx.shape
        pn = _side(P)
        return self.code_vectors(idx).view(B, pn, pn, -1).permute(0, 3, 1, 2)

    def next_input(self, idx: torch.Tensor, side: int) -> torch.Tensor:
        """The transformer's input for the next scale: this map's code vectors bicubic-resized
        (torch's A = -0.75, align_corners=False) to side x side, as [B, side*side, Cvae]."""
        z = F.interpolate(self.code_map(idx), size=(side, side), mode="bicubic")
        return z.flatten(2).transpose(1, 2)

    def decode(self, idx: torch.Tensor) -> torch.Tensor:
        """One square token map [B, pn*pn] -> raw decoder output [B, 3, 16pn, 16pn] (unclamped)."""
        return self.decode_latent(self.code_map(idx))

    def decode_latent(self, z: torch.Tensor) -> torch.Tensor:
        """A code-vector map [B, Cvae, h, w] (any size) -> raw decoder output [B, 3, 16h, 16w]."""
        return self.decoder(self.post_quant_conv(z))


def _side(P: int) -> int:
    pn = round(P ** 0.5)
    if pn * pn != P:
        raise ValueError(f"a FlexVAR token map must be square; got {P} positions")
    return pn
