"""GPU memory, planned before a model loads: weights, the KV cache of a batch, the pool (logits
and candidates), the largest transients and the VAE decode, from a registry spec's configs and
the search settings. Pure functions of (configs, settings, batch); nothing is allocated: the
parameter counts come from building the modules on torch's meta device, so they are exact for
any size a family's config describes (new registry entries need only `ModelSpec.configs`).

What the estimate assumes (the dtypes the builders use; docs/infinity.md has the 2B figures):
- VAR, FlexVAR and the toy: every weight and the KV cache in fp32, classifier-free guidance
  always on (each item runs a conditional and an unconditional row, as the reference does).
- Infinity: transformer blocks in bf16 on CUDA (fp32 on the CPU), the rest fp32, the BSQ VAE
  fp32, the text encoder fp16 on CUDA; K and V cached in the blocks' dtype; two rows per item
  when cfg != 1.
- The KV cache of the whole schedule is freed before the VAE decodes, so the peak is the larger
  of the generation and the decode, on top of the weights and a fixed reserve for the CUDA
  context and allocator slack.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace
from typing import Any, Callable, Sequence

GB = 10**9
# CUDA context, cuBLAS workspaces and allocator fragmentation: what a process holds beyond its
# tensors (about 0.5 GB of context plus slack; docs/infinity.md budgets ~2 GB of headroom).
RESERVE_BYTES = 2 * GB
# GPU sizes `vardist models --memory` plans for (A10G/L4, A100-40GB, A100/H100-80GB, H200).
GPU_SIZES_GB = (24, 40, 80, 141)
# A model at least this large asks for a GPU per Ray actor unless the run says --device cpu;
# the project's toys and fixtures are under 5 M parameters and run fine on CPU actors.
GPU_MODEL_PARAMS = 100_000_000
# Candidates are drawn in chunks of at most this many per item (sampling transients scale with it).
DRAW_CHUNK = 1024
# `vardist models --memory` shows batches up to this ("1024+": more would fit).
TABLE_LIMIT = 1024


@dataclass(frozen=True)
class TextEncoderSize:
    """A text encoder held on the device beside the model (Infinity's T5 encoder)."""

    name: str
    params: int


def t5_encoder_params(vocab: int, d_model: int, d_ff: int, layers: int, heads: int,
                      d_kv: int, buckets: int = 32) -> int:
    """Parameters of a T5 v1.1 encoder (gated-GELU FFN, no biases, RMS norms, one relative
    position bias table)."""
    attn = 4 * d_model * heads * d_kv          # q, k, v, o
    ffn = 3 * d_model * d_ff                   # wi_0, wi_1, wo
    return vocab * d_model + layers * (attn + ffn + 2 * d_model) + d_model + buckets * heads


# google/flan-t5-xl's encoder (its config.json: d_model 2048, d_ff 5120, 24 layers, 32 heads x 64)
FLAN_T5_XL = TextEncoderSize("flan-t5-xl", t5_encoder_params(32128, 2048, 5120, 24, 32, 64))


@dataclass(frozen=True)
class Footprint:
    """What memory planning needs to know of a model, read from its configs (no weights)."""

    family: str                          # "var" (VAR, FlexVAR, toys) or "infinity"
    weights: tuple[tuple[str, int, int, int], ...]  # (part, numbers, bytes on cuda, on cpu)
    depth: int
    embed_dim: int
    ffn_hidden: int
    tokens: tuple[int, ...]              # positions per scale
    logits_per_position: int             # vocabulary (VAR) or 2 x bits (Infinity)
    code_values: int                     # values per candidate position: 1 id, or d bits
    image_hw: tuple[int, int]
    decoder_channels: int                # the VAE decoder's width at full resolution
    kv_bytes_cuda: int                   # bytes per cached K / V element on a GPU
    guidance_always: bool                # two rows per item whatever the cfg
    text_part: str | None = None         # the weights entry of a text encoder (with_text_device)
    latent_values: int = 0               # floats of one image's accumulated latent (a preview's copy)

    @property
    def params(self) -> int:
        return sum(n for _, n, _, _ in self.weights)


@dataclass(frozen=True)
class MemoryPlan:
    """Bytes one model replica needs for one batch, part by part."""

    weights: int
    kv_cache: int
    pool: int            # the searched scale's logits and the n candidates of every item
    transients: int      # the largest activations of one forward pass (last scale)
    decode: int          # the VAE decode of the batch (after the KV cache is freed)
    reserve: int

    @property
    def total(self) -> int:
        return self.weights + max(self.kv_cache + self.pool + self.transients, self.decode) \
            + self.reserve

    def describe(self) -> str:
        return (f"{self.total / GB:.1f} GB (weights {self.weights / GB:.1f}, KV cache "
                f"{self.kv_cache / GB:.1f}, pool {self.pool / GB:.2f}, activations "
                f"{self.transients / GB:.2f}, decode {self.decode / GB:.1f}, reserve "
                f"{self.reserve / GB:.1f})")


class MemoryPlanError(ValueError):
    """A batch that cannot fit the device; the message says what fits."""


def _part(name: str, module: Any, float_bytes_cuda: int = 4,
          only: Callable[[str], bool] = lambda name: True) -> tuple[str, int, int, int]:
    """(name, numbers, bytes on cuda, bytes on cpu) of a module's parameters and buffers (built on
    the meta device: fp32 floats, integer buffers at their own size). Floats are stored with
    float_bytes_cuda bytes on a GPU and fp32 on the CPU."""
    numbers = cuda = cpu = 0
    for key, t in (*module.named_parameters(), *module.named_buffers()):
        if only(key):
            numbers += t.numel()
            cpu += t.numel() * t.element_size()
            cuda += t.numel() * (float_bytes_cuda if t.is_floating_point() else t.element_size())
    return name, numbers, cuda, cpu


def _on_meta(build: Callable[[], Any]) -> Any:
    import torch

    with torch.device("meta"):
        return build()


def footprint_from_configs(configs: Sequence[Any], num_scales: int | None = None) -> Footprint:
    """A Footprint from a family's config objects (what `ModelSpec.configs()` returns):
    (VARConfig, VQVAEConfig), (FlexVARConfig, FlexVAEConfig[, side lengths]) or
    (InfinityConfig, BSQVAEConfig[, TextEncoderSize][, schedule ((h, w), ...)]). num_scales: the
    schedule length the registry states (Infinity's pixel budget: 13 scales = 1M) when no
    schedule is given."""
    kinds = {type(c).__name__: c for c in configs if not isinstance(c, (tuple, list, int))}
    extra = [c for c in configs if isinstance(c, (tuple, list))]
    if "VARConfig" in kinds:
        from vardist.models.var.transformer import VARTransformer
        from vardist.models.var.vqvae import VQVAE

        cfg, vae_cfg = kinds["VARConfig"], kinds["VQVAEConfig"]
        parts = (_part("transformer", _on_meta(lambda: VARTransformer(cfg))),
                 _part("VQVAE", _on_meta(lambda: VQVAE(vae_cfg))))
        side = cfg.patch_nums[-1] * vae_cfg.downsample
        return Footprint("var", parts, cfg.depth,
                         cfg.embed_dim, round(cfg.embed_dim * cfg.mlp_ratio),
                         tuple(p * p for p in cfg.patch_nums), cfg.vocab_size, 1, (side, side),
                         vae_cfg.ch * vae_cfg.ch_mult[0], 4, True,
                         latent_values=cfg.Cvae * cfg.patch_nums[-1] ** 2)  # f_hat
    if "FlexVARConfig" in kinds:
        from vardist.models.flexvar.configs import DEFAULT_SCHEDULE
        from vardist.models.flexvar.tokenizer import FlexVAE
        from vardist.models.flexvar.transformer import FlexVARTransformer

        cfg, vae_cfg = kinds["FlexVARConfig"], kinds["FlexVAEConfig"]
        sides = tuple(extra[0]) if extra else DEFAULT_SCHEDULE
        parts = (_part("transformer", _on_meta(lambda: FlexVARTransformer(cfg))),
                 _part("FlexVAE", _on_meta(lambda: FlexVAE(vae_cfg))))
        side = sides[-1] * vae_cfg.downsample
        return Footprint("var", parts, cfg.depth,
                         cfg.embed_dim, round(cfg.embed_dim * cfg.mlp_ratio),
                         tuple(s * s for s in sides), cfg.vocab_size, 1, (side, side),
                         vae_cfg.ch * vae_cfg.ch_mult[0], 4, True,
                         latent_values=cfg.Cvae * sides[-1] ** 2)  # the resized code map
    if "InfinityConfig" in kinds:
        from vardist.models.infinity.bsq_vae import BSQVAE
        from vardist.models.infinity.schedules import PN_SCALES, scale_schedule
        from vardist.models.infinity.transformer import Infinity

        cfg, vae_cfg = kinds["InfinityConfig"], kinds["BSQVAEConfig"]
        text = next((c for c in configs if isinstance(c, TextEncoderSize)), None)
        model = _on_meta(lambda: Infinity(cfg))
        in_blocks = lambda key: key.startswith("block_chunks.")  # noqa: E731
        weights = [_part("blocks", model, 2, in_blocks),
                   _part("transformer rest", model, 4, lambda key: not in_blocks(key)),
                   _part("BSQ VAE", _on_meta(lambda: BSQVAE(vae_cfg)))]
        if text is not None:
            weights.append((text.name, text.params, 2 * text.params, 4 * text.params))
        if extra:  # a schedule of its own (toy-shapes), pixels = VAE stride x patch per token
            sched, px = tuple(tuple(s) for s in extra[0]), 2 ** (len(vae_cfg.ch_mult) - 1) * cfg.patch
        else:
            pn = next((p for p, s in PN_SCALES.items() if s == num_scales), "1M")
            sched, px = scale_schedule(1.0, pn), 16
        h, w = sched[-1]
        return Footprint("infinity", tuple(weights), cfg.depth, cfg.embed_dim, cfg.ffn_hidden,
                         tuple(a * b for a, b in sched), 2 * cfg.d_vae, cfg.d_vae,
                         (px * h, px * w), vae_cfg.base_ch * vae_cfg.ch_mult[0], 2, False,
                         text.name if text is not None else None,
                         # the code sum on the VAE grid: bits x (patch h) x (patch w)
                         latent_values=cfg.vae_bits * cfg.patch ** 2 * h * w)
    raise ValueError(f"no memory model for the configs {sorted(kinds)}; known: VARConfig, "
                     f"FlexVARConfig, InfinityConfig")


@functools.lru_cache(maxsize=None)
def footprint(name: str) -> Footprint | None:
    """The Footprint of a registry model; None when its spec states no configs or they cannot be
    read without files (fixtures found only at load time)."""
    from vardist.models import registry

    spec = registry.get_spec(name)
    configs = getattr(spec, "configs", None)
    if configs is None:
        return None
    try:
        cfgs = configs()
    except (FileNotFoundError, OSError):
        return None
    return footprint_from_configs(cfgs, spec.num_scales)


def estimate(fp: Footprint, *, batch: int, n: int, scale: int, cfg: float = 1.0,
             device: str = "cuda") -> MemoryPlan:
    """Bytes for one replica running `batch` items with pools of n candidates drawn at `scale`,
    on a device of type `device` ("cuda" or "cpu": dtypes differ)."""
    if batch < 1 or n < 1:
        raise ValueError(f"batch and n must be >= 1, got {batch}, {n}")
    if not 0 <= scale < len(fp.tokens):
        raise ValueError(f"scale {scale} is outside the model's {len(fp.tokens)} scales")
    gpu = device.split(":")[0] == "cuda"
    weights = sum(cuda if gpu else cpu for _, _, cuda, cpu in fp.weights)
    rows = batch * (2 if fp.guidance_always or cfg != 1.0 else 1)
    kv_el = fp.kv_bytes_cuda if gpu else 4
    act = kv_el  # activations run in the blocks' dtype
    kv = 2 * fp.depth * sum(fp.tokens) * fp.embed_dim * kv_el * rows
    p = fp.tokens[scale]
    logits = rows * p * fp.logits_per_position * 4 * 2          # fp32 logits + probabilities
    # candidates: ids / bits of every item's pool, plus a chunk of fp64 uniforms being drawn
    cands = batch * n * p * fp.code_values * 8 + batch * min(n, DRAW_CHUNK) * p * fp.code_values * 8
    transients = _activations(fp, rows, fp.tokens[-1], act)
    h, w = fp.image_hw
    decode = batch * 4 * fp.decoder_channels * h * w * 4  # ~4 fp32 maps alive at full resolution
    return MemoryPlan(weights, kv, logits + cands, transients, decode,
                      RESERVE_BYTES if gpu else 0)


def _activations(fp: Footprint, rows: int, tokens: int, act_bytes: int) -> int:
    """The largest activations of one forward pass over `tokens` positions of `rows` rows
    (the FFN's hidden layer and attention's q, k, v, out), with their fp32 logits."""
    return rows * tokens * (fp.ffn_hidden + 4 * fp.embed_dim) * act_bytes \
        + rows * tokens * fp.logits_per_position * 4


def estimate_population(fp: Footprint, *, batch: int, steps: Sequence[Any], cfg: float = 1.0,
                        device: str = "cuda") -> MemoryPlan:
    """Bytes for one replica searching across scales (engine.multiscale) on `batch` items:
    the larger of plain generation of the batch and the peak step, which holds the members
    entering it (each a KV cache of the whole schedule, as `estimate` counts an item), their
    candidates, and the members it keeps (forked: a KV cache each), plus the larger of the
    forward pass at that scale and one item's chunk of candidate previews
    (`preview_candidates`: a copy of the accumulated latent and a decode each, no KV cache;
    the forward pass is over before they decode). steps: per item, each with scale, before,
    draws, after and previews (engine.schedule.step_members)."""
    plain = estimate(fp, batch=batch, n=1, scale=len(fp.tokens) - 1, cfg=cfg, device=device)
    one = estimate(fp, batch=1, n=1, scale=0, cfg=cfg, device=device)  # an item's KV, decode
    guided = 2 if fp.guidance_always or cfg != 1.0 else 1
    act = fp.kv_bytes_cuda if device.split(":")[0] == "cuda" else 4
    worst = plain
    for st in steps:
        here = estimate(fp, batch=batch * st.before, n=st.draws, scale=st.scale, cfg=cfg,
                        device=device)
        forward = _activations(fp, guided * batch * st.before, fp.tokens[st.scale], act)
        previews = st.previews * (4 * fp.latent_values + one.decode)  # fp32 latent copies
        plan = MemoryPlan(here.weights, here.kv_cache + batch * st.after * one.kv_cache,
                          here.pool, max(forward, previews), plain.decode, here.reserve)
        worst = max(worst, plan, key=lambda p: p.total)
    return worst


def largest_batch(fp: Footprint, capacity: int, *, n: int, scale: int, cfg: float = 1.0,
                  limit: int = 4096) -> int:
    """The largest batch whose plan fits `capacity` bytes on a GPU (0: not even one item)."""
    lo, hi = 0, limit
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if estimate(fp, batch=mid, n=n, scale=scale, cfg=cfg).total <= capacity:
            lo = mid
        else:
            hi = mid - 1
    return lo


def check_fits(fp: Footprint, capacity: int, *, batch: int, n: int, scale: int,
               cfg: float = 1.0, where: str = "the GPU", model: str = "the model") -> MemoryPlan:
    """The plan, or MemoryPlanError naming the estimate, the device and the batch that fits."""
    plan = estimate(fp, batch=batch, n=n, scale=scale, cfg=cfg)
    if plan.total <= capacity:
        return plan
    fits = largest_batch(fp, capacity, n=n, scale=scale, cfg=cfg)
    hint = (f"use --batch-size {fits} (the largest batch that fits)" if fits else
            f"{model} does not fit even at batch 1: use a GPU with at least "
            f"{estimate(fp, batch=1, n=n, scale=scale, cfg=cfg).total / GB:.0f} GB, or a "
            f"smaller --n")
    raise MemoryPlanError(
        f"{model} at batch {batch} with n {n} needs about {plan.describe()}, but {where} has "
        f"{capacity / GB:.1f} GB; {hint}")


# Where a text encoder may live instead of beside the model (Infinity's `text_device` option):
# "cpu" keeps it there (fp32), "offload" parks it there and moves it to the GPU for one batch's
# prompts. The plan leaves both out of the GPU's weights: an offloaded T5 visits the GPU before
# the batch's KV cache exists and is smaller than one item's cache (2.45 vs 5.5 GB for 2B).
TEXT_DEVICES = ("cpu", "offload")


def with_text_device(fp: Footprint, text_device: str | None) -> Footprint:
    """The footprint of a model whose text encoder is kept on the CPU or offloaded there
    (text_device "cpu" / "offload"); unchanged for None (beside the model)."""
    if text_device is None:
        return fp
    if text_device not in TEXT_DEVICES:
        raise ValueError(f"text_device must be None or one of {', '.join(TEXT_DEVICES)}, got "
                         f"{text_device!r}")
    return replace(fp, weights=tuple(w for w in fp.weights if w[0] != fp.text_part),
                   text_part=None)


def with_schedule(fp: Footprint, sides: Sequence[int]) -> Footprint:
    """The footprint of a model run on another schedule of square maps (FlexVAR's `schedule`
    option): its positions per scale, and the output and latent sizes scaled as the last
    side is (the VAE's downsampling is fixed)."""
    last = math.isqrt(fp.tokens[-1])
    h, w = fp.image_hw
    side = int(sides[-1])
    return replace(fp, tokens=tuple(int(s) * int(s) for s in sides),
                   image_hw=(h * side // last, w * side // last),
                   latent_values=fp.latent_values * side * side // (last * last))


def wants_gpu(fp: Footprint | None) -> bool:
    """Whether a model this size should run on a GPU (unless the run asks for the CPU)."""
    return fp is not None and fp.params >= GPU_MODEL_PARAMS


def table_rows(names: Sequence[str], sizes_gb: Sequence[int] = GPU_SIZES_GB
               ) -> list[tuple[str, str, str, list[str]]]:
    """(name, weights GB, GB per item at the model's default n and scale, largest batch per GPU
    size) for `vardist models --memory`; '-' where a model has no footprint."""
    from vardist.models import registry

    rows = []
    for name in names:
        fp = footprint(name)
        if fp is None:
            rows.append((name, "-", "-", ["-"] * len(sizes_gb)))
            continue
        d = registry.get_spec(name).defaults
        one = estimate(fp, batch=1, n=d.n, scale=d.scale, cfg=d.cfg)
        two = estimate(fp, batch=2, n=d.n, scale=d.scale, cfg=d.cfg)
        per_item = two.total - one.total
        fits = [largest_batch(fp, s * GB, n=d.n, scale=d.scale, cfg=d.cfg, limit=TABLE_LIMIT)
                for s in sizes_gb]
        rows.append((name, f"{one.weights / GB:.1f}", f"{per_item / GB:.2f}",
                     [f"{TABLE_LIMIT}+" if f == TABLE_LIMIT else str(f) for f in fits]))
    return rows
