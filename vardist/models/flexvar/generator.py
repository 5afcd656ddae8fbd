"""FlexVAR as a scale-wise generator (`vardist.models.interface`), plus the reference-parity API
(`encode`, `decode`, `teacher_forced_logits`, `generate`) and the loaders.

Generation, per scale si of the schedule (side pn):
1. run the blocks on this scale's 2B input rows (cond items first, then the same inputs with the
   null class) through the KV cache, then the AdaLN head;
2. mix with CFG: "ramp" (the reference's default, used for its FIDs): t = cfg * si / min(n-1, 9)
   (t = cfg when pn > max_pn), logits = (1+t) cond - t uncond; "constant" (its demo script,
   LlamaGen style): uncond + cfg (cond - uncond) at every scale;
3. divide by the temperature tau (1 in the reference, which has none) and sample through
   `vardist.models.sampling` (item streams, reference top-k/top-p); sides the model was not
   trained at, and sides > max_pn, are sampled greedily as the reference does;
4. the next input is word_embed(bicubic-resized code vectors of these tokens) + its positions.
The image is decoded from the last scale's tokens alone.

Embeddings for the KDE (`embed`): the L2-normalised codebook rows of the tokens, i.e. the code
vectors the tokenizer and the transformer actually use (Cvae = 32 floats per position), the
FlexVAR counterpart of the codebook vectors the authors embed VAR candidates with.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from vardist.models.checkpoint import (CheckpointMismatch, load_exact, read_json_config,
                                       read_state_dict)
from vardist.models.flexvar.configs import (DEFAULT_SCHEDULE, TRAINED_SIDES, FlexVAEConfig,
                                            FlexVARConfig, check_schedule,
                                            configs_from_fixture)
from vardist.models.flexvar.tokenizer import FlexVAE
from vardist.models.flexvar.transformer import FlexVARTransformer
from vardist.models.interface import GenState, Sampling, ScaleWiseGenerator
from vardist.models.sampling import batch_uniforms, filter_top_k_top_p, item_stream, sample_tokens
from vardist.models.var.generator import to_uint8
from vardist.models.var.transformer import KVCache, block_causal_bias

CFG_MODES = ("ramp", "constant")


@dataclass
class _Cache:
    kv: KVCache                  # keys/values of scales 0..next_scale-1, 2B rows
    cond: torch.Tensor           # [2B, C]: items' classes, then the null class
    pos: torch.Tensor            # [1, L, C]: position embedding of the schedule
    x: torch.Tensor | None       # [2B, P, C]: transformer input of the next scale
    logits: torch.Tensor | None  # [B, P, V]: its CFG-mixed logits, once computed


class FlexVARGenerator(ScaleWiseGenerator):
    """A FlexVAR model (tokenizer + transformer) driven one scale at a time.

    schedule: side lengths of the square token maps (any schedule the model supports: the
    released 10 steps, 9 or 13 steps, up to 32 for 512 px); the search scale indexes into it.
    cfg_mode ("ramp" | "constant") and max_pn are defaults; `Sampling.options` may override them.
    """

    family = "flexvar"
    code_shape = ()
    condition_kind = "class"

    def __init__(self, vae: FlexVAE, transformer: FlexVARTransformer, *,
                 schedule: Sequence[int] = DEFAULT_SCHEDULE, cfg_mode: str = "ramp", max_pn: int = 16,
                 device: str | torch.device = "cpu") -> None:
        if vae.cfg.embed_dim != transformer.cfg.Cvae or vae.cfg.codebook_size != transformer.cfg.vocab_size:
            raise ValueError(f"tokenizer (codebook {vae.cfg.codebook_size} x {vae.cfg.embed_dim}) does not "
                             f"fit the transformer (vocab {transformer.cfg.vocab_size}, Cvae "
                             f"{transformer.cfg.Cvae})")
        self.device = torch.device(device)
        self.vae = vae.to(self.device).eval().requires_grad_(False)
        self.transformer = transformer.to(self.device).eval().requires_grad_(False)
        self.embed_dim = vae.cfg.embed_dim
        self.num_classes = transformer.cfg.num_classes
        self.cfg_mode, self.max_pn = _check_mode(cfg_mode, max_pn)
        self._set_schedule(schedule)
        # normalised codebook on the CPU: embeddings are looked up where densities are computed
        with torch.no_grad():
            self._codebook = vae.quantize.codebook().float().cpu()

    def _set_schedule(self, schedule: Sequence[int]) -> None:
        self.sides = check_schedule(schedule)
        self.schedule = tuple((p, p) for p in self.sides)
        self._begin = [sum(p * p for p in self.sides[:i]) for i in range(len(self.sides) + 1)]

    def with_schedule(self, schedule: Sequence[int]) -> "FlexVARGenerator":
        """The same model (shared weights) generating with another schedule."""
        other = copy.copy(self)
        other._set_schedule(schedule)
        return other

    @property
    def image_size(self) -> int:
        return self.sides[-1] * self.vae.cfg.downsample

    @property
    def image_hw(self) -> tuple[int, int]:
        return (self.image_size, self.image_size)

    # ------------------------------------------------------------------ scale-wise interface

    @torch.inference_mode()
    def start(self, conditions: Sequence, seeds: Sequence[int], sampling: Sampling) -> GenState:
        conditions, seeds = self.check_batch(conditions, seeds)
        self._options(sampling)
        t = self.transformer
        labels = torch.tensor(conditions + [self.num_classes] * len(conditions), device=self.device)
        cond = t.cond(labels)
        pos = t.pos_embed(self.sides)
        x = t.embed(cond, None, pos[:, :1])
        return GenState(conditions, seeds, sampling, cache=_Cache(t.new_cache(), cond, pos, x, None))

    @torch.inference_mode()
    def next_logits(self, state: GenState) -> torch.Tensor:
        """The CFG-mixed logits [B, P, V] of scale state.next_scale (divided by tau when it is
        not 1), computed once per scale: sampling, pools and `advance` all reuse them."""
        c: _Cache = state.cache
        si = state.next_scale
        if si >= self.num_scales:
            raise ValueError(f"all {self.num_scales} scales are done; nothing to sample")
        if c.logits is None:
            raw = self.transformer.run(c.x, c.cond, None, c.kv)
            c.logits = self._cfg_mix(raw, si, state.sampling)
            if state.sampling.tau != 1.0:  # the reference has no temperature; tau = 1 keeps it exact
                c.logits = c.logits / state.sampling.tau
        return c.logits

    def _cfg_mix(self, raw: torch.Tensor, si: int, sampling: Sampling) -> torch.Tensor:
        B = raw.shape[0] // 2
        cond, uncond = raw[:B], raw[B:]
        mode, max_pn = self._options(sampling)
        if mode == "constant":
            return uncond + sampling.cfg * (cond - uncond)
        n = self.num_scales
        t = sampling.cfg if self.sides[si] > max_pn else sampling.cfg * (si / min(n - 1, 9))
        return (1 + t) * cond - t * uncond

    def _options(self, sampling: Sampling) -> tuple[str, int]:
        unknown = set(sampling.options) - {"cfg_mode", "max_pn"}
        if unknown:
            raise ValueError(f"unknown FlexVAR sampling options {sorted(unknown)}; "
                             f"known: cfg_mode, max_pn")
        return _check_mode(sampling.options.get("cfg_mode", self.cfg_mode),
                           sampling.options.get("max_pn", self.max_pn))

    def sampler_top_k(self, si: int, sampling: Sampling) -> int:
        """top_k used at scale si: the caller's, or 1 (greedy) where the reference forces it."""
        pn = self.sides[si]
        return 1 if pn > self._options(sampling)[1] or pn not in TRAINED_SIDES else sampling.top_k

    @torch.inference_mode()
    def _draw(self, state: GenState, n: int, chunk: int) -> torch.Tensor:
        si = state.next_scale
        sp = state.sampling
        logits = filter_top_k_top_p(self.next_logits(state), self.sampler_top_k(si, sp), sp.top_p)
        streams = [item_stream(seed, si) for seed in state.seeds]
        P = logits.shape[1]
        out = [sample_tokens(logits, batch_uniforms(streams, min(chunk, n - j), P, self.device)).cpu()
               for j in range(0, n, chunk)]
        return torch.cat(out, 1)

    def run_scales(self, state: GenState, stop: int) -> None:
        if not state.next_scale <= stop <= self.num_scales:
            raise ValueError(f"stop must be in {state.next_scale}..{self.num_scales}, got {stop}")
        while state.next_scale < stop:
            self.advance(state, self._draw(state, 1, 1)[:, 0])

    def draw_pool(self, state: GenState, n: int, *, chunk: int = 1024) -> torch.Tensor:
        if n < 1 or chunk < 1:
            raise ValueError(f"need n >= 1 and chunk >= 1, got n={n}, chunk={chunk}")
        return self._draw(state, n, chunk)

    def embed(self, codes: torch.Tensor) -> torch.Tensor:
        codes = torch.as_tensor(codes).cpu()
        V = len(self._codebook)
        if codes.dtype.is_floating_point or (
                codes.numel() and not 0 <= int(codes.min()) <= int(codes.max()) < V):
            raise ValueError(f"codes must be integer token ids in 0..{V - 1}")
        return self._codebook[codes.long()]

    @torch.inference_mode()
    def advance(self, state: GenState, codes: torch.Tensor) -> None:
        si = state.next_scale
        if si >= self.num_scales:
            raise ValueError(f"all {self.num_scales} scales are done; cannot advance")
        codes = self._check_codes(codes, si, state.batch_size)
        c: _Cache = state.cache
        if si < self.num_scales - 1:
            self.next_logits(state)   # scale si must have gone through the blocks (KV cache)
            c.x = self._scale_input(codes, si + 1, c)
        else:
            c.x = None
        c.logits = None
        state.maps.append(codes.cpu())

    def _scale_input(self, codes: torch.Tensor, si: int, c: _Cache) -> torch.Tensor:
        """Input rows [2B, P_si, C] of scale si, built from the scale si-1 codes [B, P]."""
        b, e = self._begin[si], self._begin[si + 1]
        x = self.transformer.word_embed(self.vae.next_input(codes.to(self.device), self.sides[si]))
        return (x + c.pos[:, b:e]).repeat(2, 1, 1)

    def _check_codes(self, codes: torch.Tensor, si: int, B: int) -> torch.Tensor:
        P = self.positions(si)
        V = self.transformer.cfg.vocab_size
        if not isinstance(codes, torch.Tensor) or tuple(codes.shape) != (B, P) or codes.is_floating_point():
            got = tuple(codes.shape) if isinstance(codes, torch.Tensor) else type(codes).__name__
            raise ValueError(f"scale {si} needs integer token ids of shape ({B}, {P}); got {got}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= V):
            raise ValueError(f"scale {si}: token ids must be in 0..{V - 1}, got "
                             f"{int(codes.min())}..{int(codes.max())}")
        return codes.long()

    def finish(self, state: GenState) -> torch.Tensor:
        self.run_scales(state, self.num_scales)
        return _png_bytes(self.decode(state.maps[-1]))

    @torch.inference_mode()
    def preview(self, state: GenState) -> torch.Tensor:
        """FlexVAR's latent after scale k is that scale's code-vector map alone (each scale
        quantises the whole latent). It is bicubic-resized to the last scale's side, the resize
        the model uses for its next input, and decoded at full size; after the last scale no
        resize happens and the bytes are finish's."""
        self.check_preview(state)
        return self._decode_map(state.maps[-1])

    def _decode_map(self, idx: torch.Tensor) -> torch.Tensor:
        """One scale's token maps [B, pn*pn] -> the preview of a latent that is that map alone."""
        z = self.vae.code_map(idx.to(self.device))
        side = self.sides[-1]
        if z.shape[-1] != side:
            z = F.interpolate(z, size=(side, side), mode="bicubic")
        return _png_bytes(self.vae.decode_latent(z).float().cpu())

    @torch.inference_mode()
    def preview_candidates(self, state: GenState, rows: Sequence[int] | torch.Tensor,
                           codes: torch.Tensor) -> torch.Tensor:
        """FlexVAR's latent after a scale is that scale's map alone: each candidate's map is
        decoded as `preview` decodes the latest one (no state is copied)."""
        _, codes = self.check_candidates(state, rows, codes)
        return self._decode_map(self._check_codes(codes, state.next_scale, len(codes)))

    @torch.inference_mode()
    def fork(self, state: GenState, index: Sequence[int] | torch.Tensor,
             seeds: Sequence[int] | None = None) -> GenState:
        """Copies the members' rows of the KV cache (cond and uncond halves), the next input
        and any pending logits: no transformer pass (benchmarks/fork_cost.py)."""
        shell, rows = self.fork_shell(state, index, seeds)
        c: _Cache = state.cache
        r = rows.to(self.device)
        r2 = torch.cat((r, r + state.batch_size))  # the doubled batch: cond rows, then uncond
        shell.cache = _Cache(c.kv.select(r2), c.cond[r2], c.pos, None if c.x is None else c.x[r2],
                             None if c.logits is None else c.logits[r])
        return shell

    @torch.inference_mode()
    def resume(self, conditions: Sequence, seeds: Sequence[int], sampling: Sampling,
               maps: Sequence[torch.Tensor]) -> GenState:
        k = len(maps)
        if not 1 <= k <= self.num_scales:
            raise ValueError(f"resume needs 1..{self.num_scales} token maps, got {k}")
        state = self.start(conditions, seeds, sampling)
        maps = [self._check_codes(m, si, state.batch_size).to(self.device) for si, m in enumerate(maps)]
        c: _Cache = state.cache
        if k < self.num_scales:
            # one block-causal pass over scales 0..k-1 fills the KV cache as generation would
            t = self.transformer
            x_in = [self.vae.next_input(maps[si], self.sides[si + 1]) for si in range(k - 1)]
            x = t.embed(c.cond, torch.cat(x_in, 1).repeat(2, 1, 1) if x_in else None,
                        c.pos[:, :self._begin[k]])
            mask = block_causal_bias(self.sides[:k]).to(self.device)[None, None]
            t.run(x, c.cond, mask, c.kv, logits=False)
            c.x = self._scale_input(maps[-1], k, c)
        else:
            c.x = None
        state.maps = [m.cpu() for m in maps]
        return state

    # ------------------------------------------------------------------ reference-parity API

    @torch.inference_mode()
    def encode(self, images: torch.Tensor, schedule: Sequence[int] | None = None) -> list[torch.Tensor]:
        """Images [B, 3, H, W] in [-1, 1] -> one token map [B, pn*pn] per scale (each scale
        quantises the whole latent area-resized to pn x pn)."""
        sides = self.sides if schedule is None else check_schedule(schedule)
        return [m.cpu() for m in self.vae.encode(images.to(self.device), sides)]

    @torch.inference_mode()
    def decode(self, maps: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        """Token maps (a list: the last is used) or one map [B, pn*pn] -> the raw decoder output
        [B, 3, 16pn, 16pn] float, unclamped, as the reference returns it."""
        idx = maps if isinstance(maps, torch.Tensor) else maps[-1]
        return self.vae.decode(idx.to(self.device)).float().cpu()

    @torch.inference_mode()
    def teacher_forcing_input(self, maps: Sequence[torch.Tensor],
                              schedule: Sequence[int] | None = None) -> torch.Tensor:
        """Inputs of scales 1.. built from maps r_0..r_{n-2}: [B, L-1, Cvae]."""
        sides = self._sides_for(maps, schedule)
        return torch.cat([self.vae.next_input(m.to(self.device), p)
                          for m, p in zip(maps[:-1], sides[1:])], 1).cpu()

    @torch.inference_mode()
    def teacher_forced_logits(self, labels: Sequence[int] | torch.Tensor, maps: Sequence[torch.Tensor],
                              schedule: Sequence[int] | None = None) -> torch.Tensor:
        """The training forward (no class dropout): logits [B, L, V] for every position, given
        the token maps of every scale of `schedule` (default: the generator's)."""
        sides = self._sides_for(maps, schedule)
        labels = torch.as_tensor(labels, device=self.device).long()
        x_in = self.teacher_forcing_input(maps, sides).to(self.device)
        return self.transformer(labels, x_in, sides).float().cpu()

    def _sides_for(self, maps: Sequence[torch.Tensor], schedule: Sequence[int] | None) -> tuple[int, ...]:
        sides = self.sides if schedule is None else check_schedule(schedule)
        got = tuple(m.shape[-1] for m in maps)
        if got != tuple(p * p for p in sides):
            raise ValueError(f"token maps with {got} positions do not match the schedule {sides} "
                             f"(pass schedule= for another schedule)")
        return sides

    def generate(self, labels: Sequence[int] | torch.Tensor, *, cfg: float = 1.5, top_k: int = 0,
                 top_p: float = 0.0, seeds: Sequence[int] | None = None,
                 schedule: Sequence[int] | None = None, cfg_mode: str = "ramp",
                 max_pn: int = 16) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Plain generation (defaults: the reference function's): (raw decoder output
        [B, 3, H, W] float, unclamped, token maps of every scale [B, pn*pn] int64). Item i draws
        from the stream of seeds[i] only (default seeds 0..B-1)."""
        gen = self if schedule is None else self.with_schedule(schedule)
        labels = [int(x) for x in torch.as_tensor(labels).reshape(-1).tolist()]
        seeds = list(range(len(labels))) if seeds is None else list(seeds)
        sampling = Sampling(cfg=cfg, top_k=top_k, top_p=top_p,
                            options={"cfg_mode": cfg_mode, "max_pn": max_pn})
        state = gen.start(labels, seeds, sampling)
        gen.run_scales(state, gen.num_scales)
        return gen.decode(state.maps[-1]), list(state.maps)


def _png_bytes(raw: torch.Tensor) -> torch.Tensor:
    """Raw decoder output -> uint8 as the reference scripts save PNGs: clamp to [-1, 1], map to
    [0, 1], round."""
    return to_uint8((raw.clamp(-1, 1) + 1) / 2)


def _check_mode(cfg_mode: str, max_pn: int) -> tuple[str, int]:
    if cfg_mode not in CFG_MODES:
        raise ValueError(f"cfg_mode must be one of {CFG_MODES}, got {cfg_mode!r}")
    if isinstance(max_pn, bool) or not isinstance(max_pn, int) or max_pn < 1:
        raise ValueError(f"max_pn must be an int >= 1, got {max_pn!r}")
    return cfg_mode, max_pn


# ---------------------------------------------------------------------------- loading

def load_transformer_state(path: str | Path) -> dict[str, torch.Tensor]:
    """A FlexVAR transformer state dict from a plain file or a trainer checkpoint
    (`["trainer"]["var_wo_ddp"]`), without the stale `attn_bias_for_masking` (rebuilt per schedule)."""
    sd = read_state_dict(path, unwrap=("trainer", "var_wo_ddp"))
    sd.pop("attn_bias_for_masking", None)
    if "lvl_embed.weight" in sd:
        raise CheckpointMismatch(f"{path} holds a VAR transformer (it has lvl_embed), not FlexVAR; "
                                 f"use a var-* model for it")
    return sd


def build(vae_cfg: FlexVAEConfig, var_cfg: FlexVARConfig, vae_path: str | Path,
          var_path: str | Path, *, schedule: Sequence[int] = DEFAULT_SCHEDULE, cfg_mode: str = "ramp",
          device: str | torch.device = "cpu") -> FlexVARGenerator:
    """Build both networks and load the official files key for key (CheckpointMismatch otherwise).
    Built on the meta device and materialised empty: every value comes from the files."""
    with torch.device("meta"):
        vae, tf = FlexVAE(vae_cfg), FlexVARTransformer(var_cfg)
    vae, tf = vae.to_empty(device=device), tf.to_empty(device=device)
    load_exact(vae, read_state_dict(vae_path, unwrap=("model",)), what=f"the FlexVAR tokenizer "
               f"(codebook {vae_cfg.codebook_size}, ch {vae_cfg.ch}) from {vae_path}")
    load_exact(tf, load_transformer_state(var_path), what=f"the FlexVAR d{var_cfg.depth} "
               f"transformer (vocab {var_cfg.vocab_size}) from {var_path}")
    return FlexVARGenerator(vae, tf, schedule=schedule, cfg_mode=cfg_mode, device=device)


def from_fixture(folder: str | Path, *, schedule: Sequence[int] | None = None,
                 device: str | torch.device = "cpu") -> FlexVARGenerator:
    """The model of a reference fixture folder (config.json, vae.pth, var.pth)."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} is not a FlexVAR fixture folder (no config.json)")
    vae_cfg, var_cfg, default = configs_from_fixture(read_json_config(folder / "config.json"))
    return build(vae_cfg, var_cfg, folder / "vae.pth", folder / "var.pth",
                 schedule=schedule or default, device=device)
