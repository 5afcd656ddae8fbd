"""A genuine tiny ScaleWiseGenerator for engine tests: 4 scales (1x1 .. 4x4), 12 tokens, 4-dim
codebook, class- or prompt-conditional, CFG, top-k/top-p and every draw through the shared
item streams. Each item is computed on its own, so its outputs never depend on its batch."""

from __future__ import annotations

import zlib

import torch

from vardist.models.interface import GenState, Sampling, ScaleWiseGenerator
from vardist.models.registry import SearchDefaults
from vardist.models.sampling import batch_uniforms, filter_top_k_top_p, item_stream, sample_tokens

V, D, CLASSES = 12, 4, 10


class DoubleModel(ScaleWiseGenerator):
    family = "double"
    schedule = ((1, 1), (2, 2), (3, 3), (4, 4))
    embed_dim = D
    num_classes = CLASSES
    search_defaults = SearchDefaults(scale=1, n=20, alpha=1.5, rep=3, k=5, top_k=0, top_p=0.0)

    def __init__(self, condition_kind: str = "class") -> None:
        g = torch.Generator().manual_seed(1234)
        self.condition_kind = condition_kind
        self.codebook = torch.randn(V, D, generator=g, dtype=torch.float64)
        self.class_logits = 3 * torch.randn(CLASSES + 1, V, generator=g, dtype=torch.float64)
        self.pos_logits = torch.randn(16, V, generator=g, dtype=torch.float64)
        self.to_rgb = torch.randn(D, 3, generator=g, dtype=torch.float64)
        self.calls = {"draw_pool": 0, "resume": 0, "advance": 0}

    def _label(self, c) -> int:
        return c if self.condition_kind == "class" else zlib.crc32(c.encode()) % CLASSES

    def _f_hat(self, maps: list[torch.Tensor], b: int) -> torch.Tensor:
        """Sum of every scale's embedded map, upsampled (nearest) to 4x4: [16, D]."""
        f = torch.zeros(4, 4, D, dtype=torch.float64)
        for s, m in enumerate(maps):
            h, w = self.schedule[s]
            e = self.codebook[m[b].long()].reshape(h, w, D).permute(2, 0, 1)[None]
            f += torch.nn.functional.interpolate(e, size=(4, 4), mode="nearest")[0].permute(1, 2, 0)
        return f.reshape(16, D)

    def _logits(self, state: GenState) -> torch.Tensor:
        s = state.next_scale
        P = self.positions(s)
        t = state.sampling.cfg * s / (self.num_scales - 1)
        out = []
        for b, c in enumerate(state.conditions):  # one item at a time: batch-invariant
            ctx = (self._f_hat(state.maps, b) @ self.codebook.T)[:P]
            cond = self.class_logits[self._label(c)] + self.pos_logits[:P] + ctx
            uncond = self.class_logits[CLASSES] + self.pos_logits[:P] + ctx
            out.append((1 + t) * cond - t * uncond)
        return filter_top_k_top_p(torch.stack(out), state.sampling.top_k, state.sampling.top_p)

    def start(self, conditions, seeds, sampling: Sampling) -> GenState:
        self.check_conditions(conditions)
        return GenState(list(conditions), [int(x) for x in seeds], sampling)

    def _draw(self, state: GenState, m: int, chunk: int) -> torch.Tensor:
        logits = self._logits(state)
        streams = [item_stream(seed, state.next_scale) for seed in state.seeds]
        parts = [sample_tokens(logits, batch_uniforms(streams, min(chunk, m - i), logits.shape[1]))
                 for i in range(0, m, chunk)]
        return torch.cat(parts, dim=1)

    def run_scales(self, state: GenState, stop: int) -> None:
        while state.next_scale < stop:
            state.maps.append(self._draw(state, 1, 1)[:, 0])

    def draw_pool(self, state: GenState, n: int, *, chunk: int = 1024) -> torch.Tensor:
        self.calls["draw_pool"] += 1
        return self._draw(state, n, chunk)

    def embed(self, codes: torch.Tensor) -> torch.Tensor:
        return self.codebook[codes.long()].float()

    def advance(self, state: GenState, codes: torch.Tensor) -> None:
        self.calls["advance"] += 1
        state.maps.append(codes.clone())

    def finish(self, state: GenState) -> torch.Tensor:
        self.run_scales(state, self.num_scales)
        return self.preview(state)

    def preview(self, state: GenState) -> torch.Tensor:
        """The image of the f_hat summed so far (finish's decode after the last scale)."""
        self.check_preview(state)
        imgs = []
        for b in range(state.batch_size):
            rgb = torch.sigmoid(self._f_hat(state.maps, b) @ self.to_rgb).reshape(4, 4, 3)
            imgs.append(rgb.repeat_interleave(2, 0).repeat_interleave(2, 1))
        return (torch.stack(imgs) * 255).round().to(torch.uint8)

    def fork(self, state: GenState, index, seeds=None) -> GenState:
        # the state is its maps alone, so selecting them is the whole fork (no resume counted)
        return self.fork_shell(state, index, seeds)[0]

    def resume(self, conditions, seeds, sampling: Sampling, maps) -> GenState:
        self.calls["resume"] += 1
        state = self.start(conditions, seeds, sampling)
        state.maps = [m.clone() for m in maps]
        return state


def register_doubles(monkeypatch) -> list[str]:
    """Register test-double models for the duration of a test; returns the list of names the
    builder was called for (so tests can assert that bad input stopped before any load)."""
    from vardist.models import registry

    registry.specs()  # load the real specs first
    built: list[str] = []

    def build(spec, files, device):
        built.append(spec.name)
        return DoubleModel(spec.condition_kind)

    common = dict(family="double", defaults=DoubleModel.search_defaults, num_scales=4,
                  builder=build)
    for spec in (
        registry.ModelSpec("test-double", description="class double", condition_kind="class",
                           num_classes=CLASSES, **common),
        registry.ModelSpec("test-double-text", description="prompt double",
                           condition_kind="prompt", **common),
        registry.ModelSpec("test-double-weights", description="needs files",
                           condition_kind="class", num_classes=CLASSES,
                           files=("double.safetensors",), source="https://example.org/double",
                           **common),
    ):
        monkeypatch.setitem(registry._REGISTRY, spec.name, spec)
    return built

