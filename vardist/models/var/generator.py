"""VAR behind the scale-wise generator interface, plus the reference-parity entry points.

Per scale k: the transformer sees the cond and uncond halves of a doubled batch (CFG), the
logits are mixed with weight t = cfg * k / (S - 1) as (1 + t) * cond - t * uncond, divided by
the temperature tau (1 in the reference), filtered by top-k / top-p, and kept in the state until the scale is advanced. So the scale-k forward pass
runs once whether the caller samples (`run_scales`) or draws a pool and then `advance`s.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import torch

from vardist.models.checkpoint import load_exact, read_state_dict
from vardist.models.interface import GenState, Sampling, ScaleWiseGenerator
from vardist.models.sampling import (POOL_SAMPLINGS, NarrowingDraws, batch_uniforms,
                                     filter_top_k_top_p, item_stream, sample_tokens)
from vardist.models.var.transformer import KVCache, VARConfig, VARTransformer
from vardist.models.var.vqvae import VQVAE, VQVAEConfig


# "fp16": the authors' run.py precision, fp16 autocast with TF32 matmuls / convolutions, on CUDA
AUTOCAST_MODES = ("off", "fp16")


@contextlib.contextmanager
def _tf32(enabled: bool):
    """TF32 for fp32 matmuls and convolutions inside the block only (run.py sets it globally;
    here it is restored so other models in the process keep their precision)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@dataclass
class VARCache:
    """Private per-batch state: condition vectors of the doubled batch, KV cache, f_hat, and the
    inputs / logits of the next scale."""

    cond: torch.Tensor                   # [2B, C]: cond rows then uncond (null class) rows
    kv: KVCache
    f_hat: torch.Tensor                  # [B, Cvae, n, n]
    x_next: torch.Tensor | None = None   # VQVAE features fed at the next scale [B, pn^2, Cvae]
    logits: torch.Tensor | None = None   # filtered CFG-mixed logits of the next scale [B, pn^2, V]


def to_uint8(img01: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] in [0, 1] -> uint8 [B, H, W, 3] on the CPU, rounded as the reference FID saver."""
    return (img01 * 255 + 0.5).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu()


class VARGenerator(ScaleWiseGenerator):
    """A VQVAE + VAR transformer pair driven scale by scale (`interface.py`). Codes are token ids
    [B, pn^2]; embeddings are their codebook vectors [.., P, Cvae]. Build it with
    `from_state_dicts`, `vardist.models.load("var-d16", dir)` or `from_fixture(folder)`."""

    family = "var"
    code_shape = ()
    condition_kind = "class"

    def __init__(self, vae: VQVAE, var: VARTransformer, device: str | torch.device = "cpu",
                 autocast: str = "off") -> None:
        vc, tc = vae.cfg, var.cfg
        if autocast not in AUTOCAST_MODES:
            raise ValueError(f"autocast must be one of {', '.join(AUTOCAST_MODES)}, got {autocast!r}")
        if (vc.vocab_size, vc.z_channels, tuple(vc.patch_nums)) != (tc.vocab_size, tc.Cvae, tuple(tc.patch_nums)):
            raise ValueError(
                f"VQVAE and transformer disagree: vocab {vc.vocab_size} vs {tc.vocab_size}, Cvae "
                f"{vc.z_channels} vs {tc.Cvae}, patch_nums {vc.patch_nums} vs {tc.patch_nums}")
        self.device = torch.device(device)
        # the reference autocasts on 'cuda' only, so on the CPU "fp16" changes nothing
        self.autocast = autocast
        self.vae = vae.to(self.device).eval()
        self.var = var.to(self.device).eval()
        self.schedule = tuple((pn, pn) for pn in tc.patch_nums)
        self.embed_dim = tc.Cvae
        self.num_classes = tc.num_classes
        self.image_size = vc.image_size
        # codebook on the CPU: embeddings are looked up where densities are computed
        self._codebook = vae.quantize.embedding.weight.detach().float().cpu()

    @classmethod
    def from_state_dicts(cls, vae_cfg: VQVAEConfig, var_cfg: VARConfig,
                         vae_sd: Mapping[str, torch.Tensor], var_sd: Mapping[str, torch.Tensor],
                         device: str | torch.device = "cpu", autocast: str = "off") -> "VARGenerator":
        """Build both modules without random init (weights always come from files) and load the
        state dicts key for key; recomputable buffers may be absent."""
        with torch.device("meta"):
            vae, var = VQVAE(vae_cfg), VARTransformer(var_cfg)
        vae, var = vae.to_empty(device=device), var.to_empty(device=device)
        vae.quantize.ema_vocab_hit_SV.zero_()
        var.reset_buffers()
        load_exact(vae, vae_sd, what=f"the VQVAE {vae_cfg}", optional=("ema_vocab_hit_SV",))
        load_exact(var, var_sd, what=f"the VAR transformer {var_cfg}", optional=VARTransformer.RECOMPUTABLE)
        return cls(vae, var, device, autocast)

    def _precision(self) -> contextlib.AbstractContextManager:
        """The generation forward's precision: fp32, or run.py's fp16 autocast + TF32 on CUDA
        (transformer steps, f_hat updates and the decoder, as run.py wraps the whole call)."""
        if self.autocast != "fp16" or self.device.type != "cuda":
            return contextlib.nullcontext()
        stack = contextlib.ExitStack()
        stack.enter_context(_tf32(True))
        stack.enter_context(torch.autocast("cuda", dtype=torch.float16))
        return stack

    # ------------------------------------------------------------------ scale-wise interface
    @torch.inference_mode()
    def start(self, conditions: Sequence, seeds: Sequence[int], sampling: Sampling) -> GenState:
        conditions, seeds = self.check_batch(conditions, seeds)
        _pool_sampling(sampling)  # unknown options fail before any work
        B, n = len(seeds), self.schedule[-1][0]
        labels = torch.tensor(conditions + [self.var.null_class] * B, device=self.device)
        cache = VARCache(cond=self.var.cond(labels), kv=KVCache(self.var.cfg.depth),
                         f_hat=torch.zeros(B, self.embed_dim, n, n, device=self.device))
        return GenState(conditions=conditions, seeds=seeds, sampling=sampling, cache=cache)

    def _logits(self, state: GenState) -> torch.Tensor:
        """Filtered CFG-mixed logits of scale state.next_scale, computed once per scale."""
        c: VARCache = state.cache
        if c.logits is None:
            si, S, B = state.next_scale, self.num_scales, state.batch_size
            if si >= S:
                raise ValueError(f"all {S} scales are done; nothing left to sample")
            x = None if c.x_next is None else c.x_next.repeat(2, 1, 1)
            with self._precision():
                lg = self.var.step(c.cond, x, si, c.kv).float()
            t = state.sampling.cfg * si / (S - 1) if S > 1 else 0.0
            mixed = (1 + t) * lg[:B] - t * lg[B:]
            if state.sampling.tau != 1.0:  # the reference has no temperature; tau = 1 keeps it exact
                mixed = mixed / state.sampling.tau
            c.logits = filter_top_k_top_p(mixed, state.sampling.top_k, state.sampling.top_p)
        return c.logits

    def _accept(self, state: GenState, idx: torch.Tensor) -> None:
        """Add scale next_scale's token map to f_hat and prepare the next scale's input."""
        c: VARCache = state.cache
        si = state.next_scale
        with self._precision():
            c.f_hat = self.vae.quantize.add_scale(c.f_hat, si, idx).float()  # f_hat stays fp32
            c.x_next = self.vae.quantize.next_input(c.f_hat, si) if si < self.num_scales - 1 else None
        c.logits = None
        state.maps.append(idx.cpu())

    @torch.inference_mode()
    def run_scales(self, state: GenState, stop: int) -> None:
        if not state.next_scale <= stop <= self.num_scales:
            raise ValueError(f"stop must be in {state.next_scale}..{self.num_scales}, got {stop}")
        while state.next_scale < stop:
            si = state.next_scale
            logits = self._logits(state)
            u = batch_uniforms([item_stream(s, si) for s in state.seeds], 1, logits.shape[1], self.device)
            self._accept(state, sample_tokens(logits, u)[:, 0])

    @torch.inference_mode()
    def draw_pool(self, state: GenState, n: int, *, chunk: int = 1024) -> torch.Tensor:
        if n < 1 or chunk < 1:
            raise ValueError(f"pool size n and chunk must be >= 1, got n={n}, chunk={chunk}")
        si = state.next_scale
        logits = self._logits(state)
        streams = [item_stream(s, si) for s in state.seeds]
        sp = state.sampling
        # the same uniforms rows either way: only the distribution of candidates 1.. differs
        narrowing = NarrowingDraws(logits, sp.top_k, sp.top_p) if _pool_sampling(sp) == "authors" else None
        out = []
        for start in range(0, n, chunk):
            u = batch_uniforms(streams, min(chunk, n - start), logits.shape[1], self.device)
            out.append((sample_tokens(logits, u) if narrowing is None else narrowing.draw(u)).cpu())
        return torch.cat(out, 1)

    def embed(self, codes: torch.Tensor) -> torch.Tensor:
        codes = torch.as_tensor(codes).cpu()
        if codes.dtype.is_floating_point or (codes.numel() and not 0 <= int(codes.min()) <= int(codes.max()) < len(self._codebook)):
            raise ValueError(f"codes must be integer token ids in 0..{len(self._codebook) - 1}")
        return self._codebook[codes.long()]

    @torch.inference_mode()
    def advance(self, state: GenState, codes: torch.Tensor) -> None:
        si, B = state.next_scale, state.batch_size
        if si >= self.num_scales:
            raise ValueError(f"all {self.num_scales} scales are done; nothing to advance")
        codes = torch.as_tensor(codes)
        if tuple(codes.shape) != (B, self.positions(si)) or codes.dtype.is_floating_point:
            raise ValueError(f"advance at scale {si} needs integer codes [{B}, {self.positions(si)}], "
                             f"got {codes.dtype} {tuple(codes.shape)}")
        self._logits(state)  # the scale-k forward fills the KV cache (a no-op after draw_pool)
        self._accept(state, codes.long().to(self.device))

    @torch.inference_mode()
    def finish(self, state: GenState) -> torch.Tensor:
        return to_uint8(self._finish01(state))

    def _finish01(self, state: GenState) -> torch.Tensor:
        self.run_scales(state, self.num_scales)
        return self._decode01(state.cache.f_hat)

    def _decode01(self, f_hat: torch.Tensor) -> torch.Tensor:
        """f_hat -> images [B, 3, H, W] in [0, 1] (finish and preview share it: same bytes)."""
        with self._precision():
            img = self.vae.fhat_to_img(f_hat)
        return img.float().add(1).mul(0.5)

    @torch.inference_mode()
    def preview(self, state: GenState) -> torch.Tensor:
        self.check_preview(state)
        return to_uint8(self._decode01(state.cache.f_hat))

    @torch.inference_mode()
    def preview_candidates(self, state: GenState, rows: Sequence[int] | torch.Tensor,
                           codes: torch.Tensor) -> torch.Tensor:
        """f_hat's rows plus each candidate's map, decoded: what `advance` adds (`add_scale`,
        the same ops on the same rows), with no KV cache copied and no transformer pass."""
        r, codes = self.check_candidates(state, rows, codes)
        with self._precision():
            f_hat = self.vae.quantize.add_scale(state.cache.f_hat[r.to(self.device)],
                                                state.next_scale, codes.long().to(self.device))
        return to_uint8(self._decode01(f_hat.float()))

    @property
    def image_hw(self) -> tuple[int, int]:
        return (self.image_size, self.image_size)

    @torch.inference_mode()
    def fork(self, state: GenState, index: Sequence[int] | torch.Tensor,
             seeds: Sequence[int] | None = None) -> GenState:
        """Copies the members' rows of the KV cache (cond and uncond halves), f_hat, the next
        input and any pending logits: no transformer pass (benchmarks/fork_cost.py)."""
        shell, rows = self.fork_shell(state, index, seeds)
        c: VARCache = state.cache
        r = rows.to(self.device)
        r2 = torch.cat((r, r + state.batch_size))  # the doubled batch: cond rows, then uncond
        shell.cache = VARCache(cond=c.cond[r2], kv=c.kv.select(r2), f_hat=c.f_hat[r],
                               x_next=None if c.x_next is None else c.x_next[r],
                               logits=None if c.logits is None else c.logits[r])
        return shell

    @torch.inference_mode()
    def resume(self, conditions: Sequence, seeds: Sequence[int], sampling: Sampling,
               maps: Sequence[torch.Tensor]) -> GenState:
        state = self.start(conditions, seeds, sampling)
        B, k = state.batch_size, len(maps) - 1
        if not 0 <= k < self.num_scales:
            raise ValueError(f"resume needs 1..{self.num_scales} token maps, got {len(maps)}")
        for si, m in enumerate(maps):
            if tuple(m.shape) != (B, self.positions(si)) or m.dtype.is_floating_point:
                raise ValueError(f"map {si} must be integer codes [{B}, {self.positions(si)}], "
                                 f"got {m.dtype} {tuple(m.shape)}")
        maps = [m.long().to(self.device) for m in maps]
        c: VARCache = state.cache
        with self._precision():
            c.f_hat, xs = self.vae.quantize.accumulate(maps)
            c.f_hat = c.f_hat.float()
            x = torch.cat(xs[:k], 1).repeat(2, 1, 1) if k > 0 else None
            self.var.prefill(c.cond, x, k, c.kv)  # one block-causal pass over scales 0..k
        c.x_next = xs[k] if k < self.num_scales - 1 else None
        state.maps = [m.cpu() for m in maps]
        return state

    # ------------------------------------------------------------------ reference-parity API
    @torch.inference_mode()
    def encode(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Images [B, 3, H, W] in [-1, 1] -> token maps, one long [B, pn^2] per scale."""
        return [m.cpu() for m in self.vae.img_to_idx(images.to(self.device).float())]

    @torch.inference_mode()
    def decode(self, maps: Sequence[torch.Tensor]) -> torch.Tensor:
        """Token maps of every scale -> images [B, 3, H, W] in [-1, 1]."""
        return self.vae.idx_to_img([m.to(self.device) for m in maps]).cpu()

    @torch.inference_mode()
    def teacher_forced_logits(self, labels: torch.Tensor | Sequence[int], maps: Sequence[torch.Tensor]) -> torch.Tensor:
        """The training forward: logits [B, L, V] for every token given the true maps of all scales."""
        if len(maps) != self.num_scales:
            raise ValueError(f"need token maps for all {self.num_scales} scales, got {len(maps)}")
        x = self.vae.quantize.teacher_forcing_input([m.to(self.device) for m in maps[:-1]])
        labels = torch.as_tensor(labels, device=self.device).long()
        return self.var(labels, x).cpu()

    @torch.inference_mode()
    def generate(self, labels: torch.Tensor | Sequence[int], *, cfg: float = 1.5, top_k: int = 0,
                 top_p: float = 0.0, seeds: Sequence[int] | None = None
                 ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Plain generation as the reference returns it: (images float [B, 3, H, W] in [0, 1],
        token maps: one long [B, pn^2] per scale). Seeds default to 0..B-1."""
        labels = [int(x) for x in torch.as_tensor(labels).reshape(-1).tolist()]
        seeds = list(range(len(labels))) if seeds is None else list(seeds)
        state = self.start(labels, seeds, Sampling(cfg=cfg, top_k=top_k, top_p=top_p))
        return self._finish01(state).cpu(), list(state.maps)


def _pool_sampling(sampling: Sampling) -> str:
    """The pool sampler named in the sampling options (VAR's only option), checked."""
    unknown = set(sampling.options) - {"pool_sampling"}
    if unknown:
        raise ValueError(f"unknown VAR sampling options {sorted(unknown)}; VAR takes pool_sampling")
    mode = sampling.options.get("pool_sampling", "iid")
    if mode not in POOL_SAMPLINGS:
        raise ValueError(f"pool_sampling must be one of {', '.join(POOL_SAMPLINGS)}, got {mode!r}")
    return mode


def configs_from_reference(config: Mapping) -> tuple[VQVAEConfig, VARConfig]:
    """The reference builder's arguments (as stored in a fixture's cases.pt) -> our configs."""
    pn = tuple(config["patch_nums"])
    vae = VQVAEConfig(vocab_size=config["V"], z_channels=config["Cvae"], ch=config["ch"],
                      share_quant_resi=config.get("share_quant_resi", 4), patch_nums=pn)
    var = VARConfig(depth=config["depth"], embed_dim=config["embed_dim"], num_heads=config["num_heads"],
                    vocab_size=config["V"], Cvae=config["Cvae"], num_classes=config["num_classes"],
                    mlp_ratio=config.get("mlp_ratio", 4.0), norm_eps=config.get("norm_eps", 1e-6),
                    attn_l2_norm=config.get("attn_l2_norm", True), patch_nums=pn,
                    shared_aln=bool(config.get("shared_aln", False)))
    return vae, var


def from_fixture(folder: str | Path, device: str | torch.device = "cpu",
                 autocast: str = "off") -> VARGenerator:
    """Load a reference fixture folder (cases.pt with `config`, vae.pth, var.pth) as a VARGenerator."""
    folder = Path(folder)
    cases = folder / "cases.pt"
    if not cases.is_file():
        raise FileNotFoundError(f"{cases} not found: a VAR fixture folder holds cases.pt, vae.pth and var.pth")
    config = torch.load(cases, map_location="cpu", weights_only=True)["config"]
    vae_cfg, var_cfg = configs_from_reference(config)
    return VARGenerator.from_state_dicts(vae_cfg, var_cfg, read_state_dict(folder / "vae.pth"),
                                         read_state_dict(folder / "var.pth"), device, autocast)
