"""FlexVAR's configs and scale schedules: plain dataclasses and numbers, no torch.

The transformer (`transformer.py`), the tokenizer (`tokenizer.py`) and the generator build from
these; the registry (`specs.py`) and the input checks read them without importing any model code,
so that a run with a bad schedule is refused before torch loads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

DEFAULT_SCHEDULE = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
# Sides FlexVAR was trained to sample at; the reference samples any other side (and sides above
# max_pn) greedily.
TRAINED_SIDES = frozenset({1, 2, 3, 4, 5, 6, 8, 10, 13, 16, 23, 24, 32})


@dataclass(frozen=True)
class FlexVARConfig:
    """Defaults follow the released builder: width = 64 * depth, heads = depth."""

    depth: int = 16
    vocab_size: int = 8912
    Cvae: int = 32                   # width of the tokenizer's code vectors
    num_classes: int = 1000          # + one null class (index num_classes) for CFG
    mlp_ratio: float = 4.0
    norm_eps: float = 1e-6
    pos_grid: int = 32               # side of the learned 2-D position map

    def __post_init__(self) -> None:
        if self.depth < 1 or self.vocab_size < 2 or self.num_classes < 1 or self.pos_grid < 1:
            raise ValueError(f"invalid FlexVAR config {self}: need depth >= 1, vocab_size >= 2, "
                             f"num_classes >= 1, pos_grid >= 1")

    @property
    def embed_dim(self) -> int:
        return 64 * self.depth

    @property
    def num_heads(self) -> int:
        return self.depth


def check_schedule(sides: Sequence[int]) -> tuple[int, ...]:
    """Validate a scale schedule (side lengths of square token maps) and return it as a tuple."""
    try:
        s = tuple(int(p) for p in sides)
    except (TypeError, ValueError):
        s = ()
    if len(s) < 2 or s[0] != 1 or any(b <= a for a, b in zip(s, s[1:])):
        raise ValueError(f"a FlexVAR schedule must start at 1, be strictly increasing and have at "
                         f"least 2 scales (e.g. 1,2,3,4,5,6,8,10,13,16); got {sides!r}")
    return s


@dataclass(frozen=True)
class FlexVAEConfig:
    codebook_size: int = 8912
    embed_dim: int = 32                      # Cvae: width of a code vector
    ch: int = 128                            # base width of encoder/decoder
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    z_channels: int = 256                    # encoder output / decoder input width
    num_res_blocks: int = 2                  # encoder; the decoder has one more per level
    show_usage: bool = True                  # the file then holds `quantize.codebook_used`
    usage_len: int = 65536                   # length of that (training-only) usage log

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)


def configs_from_fixture(config: Mapping) -> tuple[FlexVAEConfig, FlexVARConfig, tuple[int, ...]]:
    """Model configs and default schedule from a fixture's config.json (every size is read from
    it, none assumed)."""
    kw, der, tok = config["build_vae_var_kwargs"], config["flexvar_derived"], config["tokenizer"]
    if kw.get("shared_aln") or not der.get("attn_l2_norm", True):
        raise ValueError("only shared_aln=False and attn_l2_norm=True (the released setting) are supported")
    if (tuple(tok["encoder_ch_mult"]) != tuple(tok["decoder_ch_mult"])
            or tok.get("groupnorm_groups", 32) != 32):
        raise ValueError("the tokenizer needs equal encoder/decoder ch_mult and 32 GroupNorm groups")
    var_cfg = FlexVARConfig(depth=kw["depth"], vocab_size=kw["V"], Cvae=kw["Cvae"],
                            num_classes=kw["num_classes"], mlp_ratio=der["ffn_hidden"] / der["C"],
                            norm_eps=der["norm_eps"],
                            pos_grid=der["pos_1LC_shape"][-1])
    if (der["C"], der["num_heads"]) != (var_cfg.embed_dim, var_cfg.num_heads):
        raise ValueError(f"fixture width/heads {der['C']}/{der['num_heads']} are not 64*depth/depth")
    vae_cfg = FlexVAEConfig(codebook_size=tok["codebook_size"], embed_dim=tok["codebook_embed_dim"],
                            ch=tok.get("encoder_decoder_ch_override") or 128,
                            ch_mult=tuple(tok["encoder_ch_mult"]), z_channels=tok["z_channels"],
                            num_res_blocks=tok["num_res_blocks"],
                            show_usage=tok.get("codebook_show_usage", True))
    return vae_cfg, var_cfg, tuple(config.get("default_schedule", DEFAULT_SCHEDULE))
