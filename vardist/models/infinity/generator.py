"""Infinity behind the scale-wise generator interface, plus the reference-parity entry points.

Codes are the bits of every token, uint8 0/1 [B, P, d]: d = 32 for 2B, 56 for 8B (whose token holds
2x2 VAE cells of 14 bits, channel k = 4c + 2i + j: `pixel_unshuffle` of the VAE grid, which is
twice the token grid in each direction). The embedding the KDE measures is the same bits as
float32 (as the authors' code does). Each bit is one sampling position with two outcomes, drawn
through vardist.models.sampling: at scale k the uniforms of item b come from item_stream(seed_b, k),
row j for candidate j, P*d numbers per row.

Two bit layouts: the token layout [B, h*w, d] (sampler, logits, search codes) and the VAE layout
[B, p*h, p*w, d/p^2] (encode, decode_bits, the bits generate returns); the parity entry points
accept either, with or without the reference's singleton time axis [B, 1, ...].

Guidance (Sampling.cfg, constant over scales as the reference): with
`options["cfg_insertion_layer"] == 0` (the GenEval setting) the logits of both halves are divided
by tau and mixed as cfg*cond + (1-cfg)*uncond; with a negative value L the hidden state after block
depth+L is mixed and duplicated, and the logits come from the conditional half. cfg == 1 runs no
unconditional rows at all.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from vardist.models.checkpoint import read_json_config, read_state_dict
from vardist.models.infinity.bsq_vae import (BSQVAE, BSQVAEConfig, bits_to_codes, load_vae, next_scale_input,
                                             patchify_bits, unpatchify_bits)
from vardist.models.infinity.schedules import full_schedule, scale_schedule
from vardist.models.infinity.transformer import (Infinity, InfinityConfig, TextCond, block_causal_mask,
                                                 load_infinity, rope_table)
from vardist.models.interface import GenState, Sampling, ScaleWiseGenerator
from vardist.models.sampling import batch_uniforms, filter_top_k_top_p, item_stream, sample_tokens


@dataclass
class _Run:
    """GenState.cache of an Infinity batch."""

    text: TextCond
    guided: bool                 # rows are [cond; uncond]
    kv: list[list]               # per block: [k, v] of the scales run so far
    summed: torch.Tensor         # [B, d_vae, H, W] on the VAE grid: the upsampled codes so far
    x_next: torch.Tensor         # [bs, P, C]: the input tokens of the next scale
    pending: torch.Tensor | None = None  # sampler logits [B, P, d, 2] of the next scale


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] float NCHW -> uint8 RGB [B, H, W, 3], truncating like the reference."""
    return ((images.float() + 1) / 2 * 255).permute(0, 2, 3, 1).to(torch.uint8).cpu()


class InfinityGenerator(ScaleWiseGenerator):
    family = "infinity"
    code_shape: tuple[int, ...] = (32,)   # per instance: (cfg.d_vae,), 56 for 8B
    condition_kind = "prompt"

    def __init__(self, transformer: Infinity, vae: BSQVAE, schedule: Sequence[tuple[int, int]],
                 rope_grid: tuple[int, int], *, text_encoder=None, device: str | torch.device = "cpu",
                 h_div_w: float = 1.0) -> None:
        # inference only: no autograd graphs anywhere in the generator
        self.transformer = transformer.eval().requires_grad_(False)
        self.vae, self.text_encoder = vae.eval().requires_grad_(False), text_encoder
        self.device = torch.device(device)
        self.schedule = tuple((int(h), int(w)) for h, w in schedule)
        self.patch = p = transformer.cfg.patch
        self.vae_schedule = tuple((p * h, p * w) for h, w in self.schedule)
        self.embed_dim = transformer.cfg.d_vae
        self.code_shape = (self.embed_dim,)
        if vae.cfg.codebook_dim != transformer.cfg.vae_bits:
            raise ValueError(f"the VAE has {vae.cfg.codebook_dim} bits per cell but the transformer takes "
                             f"{transformer.cfg.vae_bits} ({transformer.cfg.d_vae} per token, patch "
                             f"{p}); pair each transformer with its own VAE")
        self.h_div_w = h_div_w
        if len(self.schedule) > transformer.cfg.num_levels:
            raise ValueError(f"{len(self.schedule)} scales but the model has {transformer.cfg.num_levels} levels")
        cos, sin = rope_table(self.schedule, rope_grid, transformer.cfg.head_dim)
        self._rope = (cos.to(self.device), sin.to(self.device))
        self._offsets = [0]
        for h, w in self.schedule:
            self._offsets.append(self._offsets[-1] + h * w)

    def for_schedule(self, h_div_w: float = 1.0, pn: str = "1M") -> "InfinityGenerator":
        """The same weights with another aspect ratio / pixel budget (reference templates)."""
        return InfinityGenerator(self.transformer, self.vae, scale_schedule(h_div_w, pn),
                                 full_schedule(h_div_w)[-1], text_encoder=self.text_encoder,
                                 device=self.device, h_div_w=h_div_w)

    def _amp(self):
        # blocks stored in bf16 (the reference's bf16=1, the default on CUDA) run under autocast
        # like the reference; fp32 blocks (the default on the CPU) run in fp32 throughout
        dtype = self.transformer.blocks[0].ada_gss.dtype
        if dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    # -- opening a batch ---------------------------------------------------------------------
    def _open(self, text: Sequence[torch.Tensor], conditions: list, seeds: Sequence[int],
              sampling: Sampling) -> GenState:
        if len(text) != len(seeds) or not seeds:
            raise ValueError(f"got {len(text)} conditions and {len(seeds)} seeds; give one seed per condition")
        ins = sampling.options.get("cfg_insertion_layer", 0)
        if ins > 0 or ins < -self.transformer.cfg.depth:
            raise ValueError(f"cfg_insertion_layer must be 0 (guidance on logits) or a negative block "
                             f"offset >= -{self.transformer.cfg.depth}, got {ins}")
        guided = sampling.cfg != 1.0
        with torch.no_grad(), self._amp():
            t = self.transformer.encode_text(text, guided)
        B = len(seeds)
        H, W = self.vae_schedule[-1]
        run = _Run(t, guided, [[] for _ in self.transformer.blocks],
                   torch.zeros(B, self.transformer.cfg.vae_bits, H, W, device=self.device),
                   self.transformer.sos_tokens(t))
        return GenState(list(conditions), [int(s) for s in seeds], sampling, cache=run)

    def _text(self, prompts: Sequence[str]) -> list[torch.Tensor]:
        if self.text_encoder is None:
            raise ValueError("this Infinity model has no text encoder (built from a fixture?); "
                             "pass encoder features to generate() or load it with a text encoder")
        return self.text_encoder.encode(list(prompts))

    # -- the transformer step ------------------------------------------------------------------
    @torch.no_grad()
    def _forward(self, state: GenState, x: torch.Tensor, scales: range, cache: bool) -> torch.Tensor:
        """Run tokens x [bs, L, C] of `scales` (after the cached ones) and return the sampler's
        logits [B, L, d, 2]: divided by tau and CFG-mixed."""
        run, smp, m = state.cache, state.sampling, self.transformer
        B, lo, hi = state.batch_size, self._offsets[scales.start], self._offsets[scales.stop]
        def lv(r: range) -> torch.Tensor:
            return torch.cat([torch.full((self.positions(s),), s, dtype=torch.long) for s in r]).to(self.device)

        # one scale sees every key (the cache holds exactly the scales before it); several
        # scales at once (teacher forcing) attend block-causally
        levels = lv(scales)
        mask = None
        if len(scales) > 1:
            mask = block_causal_mask(levels, lv(range(0, scales.stop)) if cache else levels)
        ins, cfg = smp.options.get("cfg_insertion_layer", 0), smp.cfg
        mix = None
        if run.guided and ins < 0:
            mix = (m.cfg.depth + ins, lambda h: (cfg * h[:B] + (1 - cfg) * h[B:]).repeat(2, 1, 1))
        rope = (self._rope[0][lo:hi], self._rope[1][lo:hi])
        with self._amp():
            h = m.run_blocks(x, levels, rope, run.text, run.kv if cache else None, mask, mix)
        if run.guided and ins == 0:
            lg = m.logits(h.float(), run.text.sos) / smp.tau
            return cfg * lg[:B] + (1 - cfg) * lg[B:]
        return m.logits(h[:B].float(), run.text.sos[:B]) / smp.tau

    def _pending(self, state: GenState) -> torch.Tensor:
        run = state.cache
        if state.next_scale >= self.num_scales:
            raise ValueError(f"all {self.num_scales} scales are done; nothing left to sample")
        if run.pending is None:
            s = state.next_scale
            run.pending = self._forward(state, run.x_next, range(s, s + 1), cache=True)
        return run.pending

    def _sample(self, state: GenState, logits: torch.Tensor, streams, m: int) -> torch.Tensor:
        """m rows of every item's stream -> codes [B, m, P, d] uint8."""
        B, P, d, _ = logits.shape
        smp = state.sampling
        flat = filter_top_k_top_p(logits.reshape(B, P * d, 2), smp.top_k, smp.top_p)
        u = batch_uniforms(streams, m, P * d, device=flat.device)
        return sample_tokens(flat, u).reshape(B, m, P, d).to(torch.uint8)

    def _check_codes(self, state: GenState, codes: torch.Tensor, rows: int | None = None) -> torch.Tensor:
        want = (state.batch_size if rows is None else rows, self.positions(state.next_scale),
                self.embed_dim)
        if tuple(codes.shape) != want:
            raise ValueError(f"codes for scale {state.next_scale} must have shape {want} "
                             f"([B, h*w, {self.embed_dim}] bits), got {tuple(codes.shape)}")
        if codes.is_floating_point() or bool(((codes != 0) & (codes != 1)).any()):
            raise ValueError("Infinity codes must be integer 0/1 bits")
        return codes.to(torch.uint8)

    # -- the scale-wise interface --------------------------------------------------------------
    def start(self, conditions: Sequence, seeds: Sequence[int], sampling: Sampling) -> GenState:
        conditions, seeds = self.check_batch(conditions, seeds)
        return self._open(self._text(conditions), conditions, seeds, sampling)

    def run_scales(self, state: GenState, stop: int) -> None:
        if not state.next_scale <= stop <= self.num_scales:
            raise ValueError(f"stop must be in {state.next_scale}..{self.num_scales}, got {stop}")
        while state.next_scale < stop:
            s = state.next_scale
            logits = self._pending(state)
            codes = self._sample(state, logits, [item_stream(sd, s) for sd in state.seeds], 1)
            self.advance(state, codes[:, 0])

    def draw_pool(self, state: GenState, n: int, *, chunk: int = 1024) -> torch.Tensor:
        if n < 1 or chunk < 1:
            raise ValueError(f"n and chunk must be >= 1, got n={n}, chunk={chunk}")
        logits = self._pending(state)
        streams = [item_stream(sd, state.next_scale) for sd in state.seeds]
        parts = [self._sample(state, logits, streams, min(chunk, n - i)).cpu() for i in range(0, n, chunk)]
        return torch.cat(parts, 1)

    def embed(self, codes: torch.Tensor) -> torch.Tensor:
        return codes.to(torch.float32)

    def advance(self, state: GenState, codes: torch.Tensor) -> None:
        codes = self._check_codes(state, codes)
        self._pending(state)  # this scale's tokens must be in the KV cache before the next one
        x = self._feed(state, codes)
        if x is not None:
            state.cache.x_next = x
        state.cache.pending = None

    def _feed(self, state: GenState, codes: torch.Tensor) -> torch.Tensor | None:
        """Record scale next_scale's codes, add them to the code sum and return the next
        scale's input tokens [bs, P', C] (None after the last scale)."""
        run, s = state.cache, state.next_scale
        nxt = self.vae_schedule[s + 1] if s + 1 < self.num_scales else None
        run.summed, inp = next_scale_input(run.summed, self._code_grid(codes, s), nxt, self.patch)
        state.maps.append(codes.cpu())
        if inp is None:
            return None
        x = self.transformer.word_embed(inp)
        return x.repeat(2, 1, 1) if run.guided else x

    def _code_grid(self, codes: torch.Tensor, s: int) -> torch.Tensor:
        """Scale s's bits [N, h*w, d] -> BSQ codes on the VAE grid [N, d / p^2, p*h, p*w]."""
        h, w = self.schedule[s]
        # the codes are normalised per 14-bit VAE cell, so unshuffle to the VAE grid first
        vae_bits = unpatchify_bits(codes.to(self.device).view(len(codes), h, w, -1), self.patch)
        return bits_to_codes(vae_bits).permute(0, 3, 1, 2)

    def finish(self, state: GenState) -> torch.Tensor:
        self.run_scales(state, self.num_scales)
        return self._decode(state)

    def _decode(self, state: GenState) -> torch.Tensor:
        state.cache.kv = state.cache.text = None  # free the KV cache before the VAE's activations
        return to_uint8(self.vae.decode(state.cache.summed))

    @torch.no_grad()
    def preview(self, state: GenState) -> torch.Tensor:
        # the summed codes already live on the full VAE grid, so this is finish's decode
        # without freeing the KV cache
        self.check_preview(state)
        return to_uint8(self.vae.decode(state.cache.summed))

    @torch.no_grad()
    def preview_candidates(self, state: GenState, rows: Sequence[int] | torch.Tensor,
                           codes: torch.Tensor) -> torch.Tensor:
        """The code sum's rows plus each candidate's codes, decoded: `advance`'s sum (the same
        ops on the same rows) with no KV cache or text conditioning copied."""
        r, codes = self.check_candidates(state, rows, codes)
        codes = self._check_codes(state, codes, len(r))
        summed, _ = next_scale_input(state.cache.summed[r.to(self.device)],
                                     self._code_grid(codes, state.next_scale), None, self.patch)
        return to_uint8(self.vae.decode(summed))

    @property
    def image_hw(self) -> tuple[int, int]:
        H, W = self.vae_schedule[-1]
        up = 2 ** (len(self.vae.cfg.ch_mult) - 1)  # the decoder's upsampling of the VAE grid
        return (up * H, up * W)

    @torch.no_grad()
    def fork(self, state: GenState, index: Sequence[int] | torch.Tensor,
             seeds: Sequence[int] | None = None) -> GenState:
        """Copies the members' rows of the self-attention KV cache, the text conditioning (its
        cross-attention K/V included), the code sum, the next input and any pending logits: no
        transformer pass (benchmarks/fork_cost.py)."""
        shell, rows = self.fork_shell(state, index, seeds)
        run: _Run = state.cache
        r = rows.to(self.device)
        # guided batches hold [cond; uncond] rows for the transformer's tensors
        r2 = torch.cat((r, r + state.batch_size)) if run.guided else r

        def take(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t[r2]

        text = None if run.text is None else TextCond(
            take(run.text.sos), take(run.text.gss), take(run.text.mask),
            [(k[r2], v[r2]) for k, v in run.text.block_kv])
        kv = None if run.kv is None else [[take(t) for t in blk] for blk in run.kv]
        shell.cache = _Run(text, run.guided, kv, run.summed[r], take(run.x_next),
                           None if run.pending is None else run.pending[r])
        return shell

    def resume(self, conditions: Sequence, seeds: Sequence[int], sampling: Sampling,
               maps: Sequence[torch.Tensor]) -> GenState:
        self.check_conditions(conditions)
        return self._resume(self._open(self._text(conditions), list(conditions), seeds, sampling), maps)

    def _resume(self, state: GenState, maps: Sequence[torch.Tensor]) -> GenState:
        """Teacher-forced re-entry: one pass over the tokens of scales 0..len(maps) fills the KV
        cache and leaves the logits of scale len(maps) pending."""
        if len(maps) > self.num_scales:
            raise ValueError(f"got {len(maps)} maps but the schedule has {self.num_scales} scales")
        run = state.cache
        xs = [run.x_next] + [self._feed(state, self._check_codes(state, c)) for c in maps]
        K = len(maps)
        if K < self.num_scales:
            with torch.no_grad():
                logits = self._forward(state, torch.cat(xs, 1), range(0, K + 1), cache=True)
            run.pending, run.x_next = logits[:, self._offsets[K]:], xs[-1]
        return state

    # -- bit layouts ---------------------------------------------------------------------------------
    def token_bits(self, bits: torch.Tensor, s: int) -> torch.Tensor:
        """Bits of scale s in any accepted layout -> the token layout [B, h*w, d].

        Accepted: token layout [B, h*w, d], token grid [B, h, w, d], VAE layout
        [B, p*h, p*w, d/p^2], each optionally with the reference's time axis of 1 after B."""
        h, w = self.schedule[s]
        p, d = self.patch, self.embed_dim
        if bits.ndim == 5 and bits.shape[1] == 1:
            bits = bits[:, 0]
        shape = tuple(bits.shape[1:])
        if shape == (h * w, d):
            return bits
        if shape == (h, w, d):
            return bits.reshape(bits.shape[0], h * w, d)
        if shape == (p * h, p * w, d // (p * p)):
            return patchify_bits(bits, p).reshape(bits.shape[0], h * w, d)
        raise ValueError(f"bits of scale {s} must be [B, {h * w}, {d}] (tokens) or [B, {p * h}, {p * w}, "
                         f"{d // (p * p)}] (VAE grid), optionally with a time axis of 1 after B; got "
                         f"{tuple(bits.shape)}")

    def vae_bits(self, bits: torch.Tensor, s: int) -> torch.Tensor:
        """Bits of scale s in any accepted layout -> the VAE layout [B, p*h, p*w, d/p^2]."""
        h, w = self.schedule[s]
        t = self.token_bits(bits, s)
        return unpatchify_bits(t.reshape(t.shape[0], h, w, -1), self.patch)

    # -- reference-parity API (text given as encoder features) ------------------------------------
    def encode(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Images [-1, 1] [B, 3, H, W] -> bits per scale in the VAE layout [B, p*h, p*w, d/p^2]
        (uint8 0/1; [B, h, w, 32] for 2B, [B, 2h, 2w, 14] for 8B)."""
        return self.vae.encode_bits(images.to(self.device), self.vae_schedule)[0]

    def decode_bits(self, bits: Sequence[torch.Tensor]) -> torch.Tensor:
        """Bits per scale (any accepted layout) -> images float in [-1, 1], [B, 3, H, W]."""
        if len(bits) != self.num_scales:
            raise ValueError(f"give the bits of all {self.num_scales} scales, got {len(bits)}")
        return self.vae.decode_bits([self.vae_bits(b.to(self.device), s) for s, b in enumerate(bits)])

    @torch.no_grad()
    def teacher_forced_logits(self, text: Sequence[torch.Tensor], bits: Sequence[torch.Tensor]) -> torch.Tensor:
        """The training forward: logits [B, L, d, 2] of every token of the schedule (token layout)
        given the bits of every scale in any accepted layout (conditional only, no guidance, no
        cache)."""
        if len(bits) != self.num_scales:
            raise ValueError(f"give the bits of all {self.num_scales} scales, got {len(bits)}")
        B = len(text)
        state = self._open(text, list(text), [0] * B, Sampling())
        xs = [state.cache.x_next]
        for s, b in enumerate(bits[:-1]):
            xs.append(self._feed(state, self._check_codes(state, self.token_bits(b, s))))
        return self._forward(state, torch.cat(xs, 1), range(0, self.num_scales), cache=False)

    @torch.no_grad()
    def generate(self, text: Sequence[torch.Tensor], *, cfg: float, tau: float, top_k: int, top_p: float,
                 seeds: Sequence[int], cfg_insertion_layer: int = 0,
                 forced_bits: Sequence[torch.Tensor] | None = None, decode: bool = True):
        """The reference's autoregressive_infer_cfg on encoder features: (images uint8 RGB
        [B, H, W, 3], bits per scale in the VAE layout [B, p*h, p*w, d/p^2], sampler logits per
        scale in the token layout [B, h*w, d, 2]). `forced_bits` replays given bits (any accepted
        layout, e.g. a fixture's recorded [B, 1, 2h, 2w, 14]) instead of sampling (the
        reference's gt_leak); decode=False skips the VAE and returns None for the images."""
        smp = Sampling(cfg=cfg, top_k=top_k, top_p=top_p, tau=tau,
                       options={"cfg_insertion_layer": cfg_insertion_layer})
        if forced_bits is not None:
            if len(forced_bits) != self.num_scales:
                raise ValueError(f"forced_bits must hold all {self.num_scales} scales, got {len(forced_bits)}")
            forced_bits = [self.token_bits(b, s) for s, b in enumerate(forced_bits)]  # checked up front
        state = self._open(text, list(text), seeds, smp)
        B, logits = len(seeds), []
        for s in range(self.num_scales):
            lg = self._pending(state)
            logits.append(lg)
            if forced_bits is not None:
                codes = forced_bits[s]
            else:
                codes = self._sample(state, lg, [item_stream(sd, s) for sd in state.seeds], 1)[:, 0]
            self.advance(state, codes)
        bits = [unpatchify_bits(m.view(B, h, w, -1), self.patch) for m, (h, w) in zip(state.maps, self.schedule)]
        return (self._decode(state) if decode else None), bits, logits


# -- construction ----------------------------------------------------------------------------------
def build(transformer_sd, vae_sd, icfg: InfinityConfig, vcfg: BSQVAEConfig, *, h_div_w: float = 1.0,
          pn: str = "1M", text_encoder=None, device: str = "cpu",
          schedule: Sequence[tuple[int, int]] | None = None,
          blocks_dtype: torch.dtype | None = None) -> InfinityGenerator:
    """Build the modules on the meta device, load the state dicts key for key, move to `device`.
    blocks_dtype: the transformer blocks' storage and autocast dtype; default bfloat16 on CUDA
    (the reference's bf16=1: 4.3 GB instead of 8.6 GB for 2B), float32 elsewhere."""
    blocks_dtype = blocks_dtype or (torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32)
    with torch.device("meta"):
        model, vae = Infinity(icfg), BSQVAE(vcfg)
    # blocks get their dtype before memory is allocated: loading rounds each weight as a later
    # cast would, and the host holds 8B's blocks in 16 GB of bf16 beside the file's tensors
    # instead of 32 GB of fp32
    model.block_chunks.to(blocks_dtype)
    model, vae = model.to_empty(device="cpu"), vae.to_empty(device="cpu")
    for buf in model.buffers():  # the zero K biases may be absent from a file
        buf.zero_()
    load_infinity(model, transformer_sd)
    load_vae(vae, vae_sd)
    sched = tuple(schedule) if schedule is not None else scale_schedule(h_div_w, pn)
    return InfinityGenerator(model.to(device), vae.to(device), sched, full_schedule(h_div_w)[-1],
                             text_encoder=text_encoder, device=device, h_div_w=h_div_w)


def fixture_configs(config: dict) -> tuple[InfinityConfig, BSQVAEConfig]:
    """The model configurations recorded in a fixture's config.json."""
    a = config["vae_autoencoder_args"]
    icfg = InfinityConfig.from_kwargs({**config.get("infinity_defaults_used", {}), **config["infinity_kwargs"]},
                                      vae_bits=a["codebook_dim"])
    if a["encoder_ch_mult"] != a["decoder_ch_mult"] or a.get("quantizer_type") != "MultiScaleBSQ":
        raise ValueError("only the MultiScaleBSQ VAE with equal encoder/decoder channel multipliers is supported")
    stride = 2 ** (len(a["encoder_ch_mult"]) - 1)
    if a.get("patch_size", stride) != stride:
        raise ValueError(f"VAE patch_size {a['patch_size']} does not match its {len(a['encoder_ch_mult'])} "
                         f"levels (stride {stride})")
    return icfg, BSQVAEConfig(base_ch=a["base_ch"], ch_mult=tuple(a["encoder_ch_mult"]),
                              num_res_blocks=a["num_res_blocks"], codebook_dim=a["codebook_dim"])


def from_fixture(folder: str | Path, *, text_encoder=None, device: str = "cpu",
                 transformer: str | Path = "infinity.pth") -> InfinityGenerator:
    """The tiny reference model of a fixture folder (config.json, infinity.pth, vae.pth).
    transformer: the transformer weights, relative to the folder: a .pth file or a sharded
    safetensors folder (e.g. infinity8b-tiny's "infinity_sharded")."""
    from vardist.models.infinity.sharded import read_transformer_weights

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} is not an Infinity fixture folder (no config.json)")
    config = read_json_config(folder / "config.json")
    icfg, vcfg = fixture_configs(config)
    sched = [(h, w) for _, h, w in config["scale_schedule"]]
    return build(read_transformer_weights(folder / transformer), read_state_dict(folder / "vae.pth", unwrap=("vae",)),
                 icfg, vcfg, h_div_w=float(config["h_div_w_template"]), text_encoder=text_encoder,
                 device=device, schedule=sched)
