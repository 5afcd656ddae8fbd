"""A tiny scale-wise generator for the Ray engine tests: milliseconds per batch, honest to the
interface (per-item streams, top-k/top-p filter, teacher-forced resume, float decode whose
pixels depend on the sampled maps), so the engine's plumbing is what the tests measure."""

from __future__ import annotations

from typing import Sequence

import torch

from vardist.models.interface import GenState, Sampling, ScaleWiseGenerator
from vardist.models.sampling import batch_uniforms, filter_top_k_top_p, item_stream, sample_tokens


class ToyScaleModel(ScaleWiseGenerator):
    family = "toy"
    schedule = ((1, 1), (2, 2), (3, 3), (4, 4))
    embed_dim = 4
    code_shape = ()
    condition_kind = "class"
    num_classes = 3

    def __init__(self, vocab: int = 12, side: int = 8) -> None:
        g = torch.Generator().manual_seed(1234)
        self.vocab, self.side = vocab, side
        self.cond = torch.randn(self.num_classes, vocab, generator=g)
        self.codebook = torch.randn(vocab, self.embed_dim, generator=g)
        self.back = torch.randn(self.embed_dim, vocab, generator=g) * 2
        self.pos = [torch.randn(h * w, vocab, generator=g) for h, w in self.schedule]
        self.to_rgb = torch.randn(self.embed_dim, side * side * 3, generator=g) * 0.5

    def _logits(self, state: GenState) -> torch.Tensor:
        s = state.next_scale
        logits = self.cond[torch.tensor(state.conditions)][:, None, :] + self.pos[s][None]
        if state.maps:  # condition on everything sampled so far, like a real prefix does
            ctx = torch.stack([self.codebook[m].mean(1) for m in state.maps]).sum(0)
            logits = logits + (ctx @ self.back)[:, None, :]
        logits = logits * (1 + state.sampling.cfg * s / (self.num_scales - 1))
        return filter_top_k_top_p(logits, state.sampling.top_k, state.sampling.top_p)

    def _draw(self, state: GenState, m: int) -> torch.Tensor:
        s = state.next_scale
        u = batch_uniforms([item_stream(seed, s) for seed in state.seeds], m, self.positions(s))
        return sample_tokens(self._logits(state), u)

    def start(self, conditions: Sequence, seeds: Sequence[int], sampling: Sampling) -> GenState:
        self.check_conditions(conditions)
        return GenState(list(conditions), list(seeds), sampling)

    def run_scales(self, state: GenState, stop: int) -> None:
        while state.next_scale < stop:
            state.maps.append(self._draw(state, 1)[:, 0])

    def draw_pool(self, state: GenState, n: int, *, chunk: int = 1024) -> torch.Tensor:
        return self._draw(state, n)

    def embed(self, codes: torch.Tensor) -> torch.Tensor:
        return self.codebook[codes]

    def advance(self, state: GenState, codes: torch.Tensor) -> None:
        state.maps.append(codes.to(torch.int64))

    def finish(self, state: GenState) -> torch.Tensor:
        self.run_scales(state, self.num_scales)
        return self.preview(state)

    def preview(self, state: GenState) -> torch.Tensor:
        """The image of the maps so far (finish's decode after the last scale); `fork` is the
        interface's default, a resume, which is exact here."""
        self.check_preview(state)
        feat = sum(self.codebook[m].mean(1) * (i + 1) for i, m in enumerate(state.maps))
        img = torch.sigmoid(feat @ self.to_rgb).reshape(-1, self.side, self.side, 3)
        return (img * 255).round().to(torch.uint8)

    def resume(self, conditions: Sequence, seeds: Sequence[int], sampling: Sampling,
               maps: Sequence[torch.Tensor]) -> GenState:
        state = self.start(conditions, seeds, sampling)
        for m in maps:
            self.advance(state, torch.as_tensor(m))
        return state
