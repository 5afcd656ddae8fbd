"""The scale-wise generator protocol that every model family implements.

VAR-Scaling needs to stop a coarse-to-fine generation at one scale k, draw many candidates for
that scale's token map, pick one, and finish the image from it, possibly on another worker. So a
model is not driven by one `generate()` call but step by step:

    state = model.start(conditions, seeds, sampling)   # a batch of work items
    model.run_scales(state, k)                          # sample scales 0..k-1 (the prefix)
    codes = model.draw_pool(state, n)                   # [B, n, *code_shape]: n candidates at scale k
    emb = model.embed(codes)                            # [B, n, P, d] float32, what the KDE measures
    model.advance(state, codes[arange(B), chosen])      # feed the chosen candidate as scale k
    images = model.finish(state)                        # sample scales k+1.. and decode: uint8 [B,H,W,3]

and a continuation on another worker rebuilds the state in one teacher-forced forward pass:

    state = model.resume(conditions, seeds, sampling, maps=[r_0, ..., r_k])
    images = model.finish(state)

Search across scales keeps a population of partial generations and looks at them between scales:

    images = model.preview(state)                       # uint8 [B, H, W, 3]: the latent so far, decoded
    pop = model.fork(state, [0, 0, 1])                  # member i continues item index[i] of state
    model.advance(pop, codes)                           # members then go their own ways
    shots = model.preview_candidates(state, rows, codes)  # candidate i: item rows[i] + codes[i],
                                                        # decoded; no KV cache copied, state kept

`fork` copies the family's cache rows (KV cache, accumulated latent, pending logits), so members
that share a prefix never recompute it; a family without a cheaper way falls back to `resume`.

Randomness: every draw of an item comes from `vardist.models.sampling.item_stream(seed, scale)`,
a stream keyed only by the item's seed and the scale. Candidate j of a pool at scale k uses row j
of that stream, and plain sampling at scale k uses row 0, so `strategy="none"` (candidate 0)
reproduces plain generation, the first n' candidates of an n-pool are the n'-pool, and an item's
images never depend on which other items share its batch.

Codes: the compact form of one scale's map. VAR-like families: int64 token ids `[B, P]`;
Infinity: 0/1 bits `[B, P, 32]` (uint8). `code_shape` is the per-item shape after the batch dim
without the position dim (`()` for token ids, `(32,)` for bits).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:  # torch is imported where a tensor is made: checking input needs none of it
    import torch


@dataclass(frozen=True)
class Sampling:
    """How tokens are drawn at every scale (the reference models' run-time knobs).

    cfg: guidance strength; each family applies it its own way (VAR ramps it over scales,
    Infinity applies it on logits at every scale). top_k / top_p: 0 disables the filter.
    tau: softmax temperature (Infinity); 1.0 leaves logits unchanged.
    """

    cfg: float = 1.0
    top_k: int = 0
    top_p: float = 0.0
    tau: float = 1.0
    options: dict[str, Any] = field(default_factory=dict)  # family-specific extras

    def __post_init__(self) -> None:
        if self.cfg < 0:
            raise ValueError(f"cfg must be >= 0, got {self.cfg}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 disables it), got {self.top_k}")
        if not 0.0 <= self.top_p <= 1.0:
            raise ValueError(f"top_p must be in [0, 1] (0 disables it), got {self.top_p}")
        if self.tau <= 0:
            raise ValueError(f"tau must be > 0, got {self.tau}")


@dataclass
class GenState:
    """A batch of work items part-way through generation.

    `maps[s]` holds the codes chosen at scale s for every item; `next_scale == len(maps)`.
    `cache` is the family's private state (KV cache, accumulated latent, ...), never touched by
    callers.
    """

    conditions: list
    seeds: list[int]
    sampling: Sampling
    maps: list[torch.Tensor] = field(default_factory=list)
    cache: Any = None

    @property
    def next_scale(self) -> int:
        return len(self.maps)

    @property
    def batch_size(self) -> int:
        return len(self.seeds)


class ScaleWiseGenerator(ABC):
    """A coarse-to-fine image generator that can be driven one scale at a time."""

    family: str                                # "var", "infinity", "flexvar"
    schedule: tuple[tuple[int, int], ...]      # (h, w) of the token map at each scale
    embed_dim: int                             # d: floats per position in `embed()`
    code_shape: tuple[int, ...] = ()           # per-position code shape: () ids, (32,) bits
    condition_kind: str = "class"              # "class" (int labels) or "prompt" (str)
    num_classes: int | None = None             # for condition_kind == "class"

    @property
    def num_scales(self) -> int:
        return len(self.schedule)

    def positions(self, scale: int) -> int:
        h, w = self.schedule[scale]
        return h * w

    def check_conditions(self, conditions: Sequence) -> None:
        """Raise ValueError naming the first condition this model cannot take."""
        for i, c in enumerate(conditions):
            if self.condition_kind == "class":
                if isinstance(c, bool) or not isinstance(c, int):
                    raise ValueError(f"condition {i}: expected an int class label, got {c!r}")
                if self.num_classes is not None and not 0 <= c < self.num_classes:
                    raise ValueError(
                        f"condition {i}: class {c} is outside this model's range "
                        f"0..{self.num_classes - 1}")
            elif not isinstance(c, str) or not c.strip():
                raise ValueError(f"condition {i}: expected a non-empty prompt string, got {c!r}")

    def check_batch(self, conditions: Sequence, seeds: Sequence[int]) -> tuple[list, list[int]]:
        """Check a batch before any work: conditions this model takes and one seed >= 0 for
        each; returns both as lists."""
        conditions, seeds = list(conditions), [int(s) for s in seeds]
        self.check_conditions(conditions)
        if len(conditions) != len(seeds) or not seeds:
            raise ValueError(f"need one seed per condition and at least one item, got "
                             f"{len(conditions)} conditions and {len(seeds)} seeds")
        if any(s < 0 for s in seeds):
            raise ValueError(f"seeds must be >= 0, got {min(seeds)}")
        return conditions, seeds

    @abstractmethod
    def start(self, conditions: Sequence, seeds: Sequence[int], sampling: Sampling) -> GenState:
        """Encode the conditions and open a batch at scale 0."""

    @abstractmethod
    def run_scales(self, state: GenState, stop: int) -> None:
        """Sample scales state.next_scale .. stop-1 (plain sampling, row 0 of each stream)."""

    @abstractmethod
    def draw_pool(self, state: GenState, n: int, *, chunk: int = 1024) -> torch.Tensor:
        """n i.i.d. candidates for scale state.next_scale from the CFG-mixed logits, computed
        once; drawn in chunks of `chunk` candidates so memory stays bounded. Does not advance
        the state. Returns codes [B, n, P, *code_shape] on the CPU."""

    @abstractmethod
    def embed(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes [..., P, *code_shape] -> float32 embeddings [..., P, embed_dim]."""

    @abstractmethod
    def advance(self, state: GenState, codes: torch.Tensor) -> None:
        """Feed given codes [B, P, *code_shape] as scale state.next_scale (no sampling)."""

    @abstractmethod
    def finish(self, state: GenState) -> torch.Tensor:
        """Sample the remaining scales and decode: uint8 RGB [B, H, W, 3] on the CPU."""

    @abstractmethod
    def resume(self, conditions: Sequence, seeds: Sequence[int], sampling: Sampling,
               maps: Sequence[torch.Tensor]) -> GenState:
        """Rebuild a state after scales 0..len(maps)-1 from their codes in one teacher-forced
        forward pass, so any worker can continue any item."""

    def preview(self, state: GenState) -> torch.Tensor:
        """Decode the latent accumulated over the scales done so far (VAR: f_hat; Infinity: the
        summed codes; FlexVAR: the latest map's code vectors) at full output size: uint8 RGB
        [B, H, W, 3] on the CPU, the shape `finish` returns. After the last scale it is
        `finish`'s image, byte for byte. The state is left as it was (no sampling, no cache
        change), so a generation continues the same with or without previews."""
        raise NotImplementedError(f"{type(self).__name__} ({self.family}) has no preview(); "
                                  f"implement it to decode its accumulated latent")

    def preview_candidates(self, state: GenState, rows: Sequence[int] | torch.Tensor,
                           codes: torch.Tensor) -> torch.Tensor:
        """Previews of candidates for scale state.next_scale without forking the KV cache:
        candidate i is item rows[i] of `state` advanced by codes[i] (codes [len(rows), P,
        *code_shape], the shape `advance` takes), decoded as `preview` does: uint8 RGB
        [len(rows), H, W, 3] on the CPU, byte for byte what `fork(state, rows)`, `advance(.,
        codes)` and `preview` give for the same batch shape. `state` is left as it was. This default is that
        fork, advance and preview (each candidate copies its item's whole state); the families
        apply the codes to a copy of the accumulated latent alone and decode it."""
        rows, codes = self.check_candidates(state, rows, codes)
        st = self.fork(state, rows)
        self.advance(st, codes)
        return self.preview(st)

    def check_candidates(self, state: GenState, rows: Sequence[int] | torch.Tensor,
                         codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The checked part of `preview_candidates` the families share: (rows as a CPU int64
        tensor of item positions, codes as a tensor); raises ValueError naming a bad argument."""
        import torch

        s = state.next_scale
        if s >= self.num_scales:
            raise ValueError(f"all {self.num_scales} scales are done; there is no scale to "
                             f"preview candidates of")
        _, r = self.fork_shell(GenState(state.conditions, state.seeds, state.sampling), rows)
        codes = torch.as_tensor(codes)
        want = (len(r), self.positions(s), *self.code_shape)
        if tuple(codes.shape) != want or codes.is_floating_point():
            raise ValueError(f"preview_candidates at scale {s} needs integer codes {list(want)} "
                             f"(one map per row), got {codes.dtype} {tuple(codes.shape)}")
        return r, codes

    @property
    def image_hw(self) -> tuple[int, int] | None:
        """(H, W) of the images `finish` and `preview` return, read from the configs (no
        decode); None when a model does not say (the preview chunk then keeps its cap)."""
        return None

    def fork(self, state: GenState, index: Sequence[int] | torch.Tensor,
             seeds: Sequence[int] | None = None) -> GenState:
        """A new state of len(index) members: member i continues item index[i] of `state` (an
        index may repeat: several continuations of one partial generation). Member i draws
        from `seeds[i]`'s streams (default: its item's seed). `state` and every member are
        independent afterwards: advancing one changes no other. This default re-enters the
        prefix teacher-forced (`resume`); families with a KV cache copy its rows instead."""
        shell, _ = self.fork_shell(state, index, seeds)
        if state.next_scale == 0:
            return self.start(shell.conditions, shell.seeds, shell.sampling)
        return self.resume(shell.conditions, shell.seeds, shell.sampling, shell.maps)

    def fork_shell(self, state: GenState, index: Sequence[int] | torch.Tensor,
                   seeds: Sequence[int] | None = None) -> tuple[GenState, torch.Tensor]:
        """The checked part of `fork` every family shares: (the forked state with conditions,
        seeds and maps selected but no cache, the selected item rows as a CPU int64 tensor)."""
        import torch

        B = state.batch_size
        rows = torch.as_tensor(index)
        if rows.ndim != 1 or rows.numel() == 0 or rows.is_floating_point() or rows.dtype == torch.bool:
            raise ValueError(f"fork index must be a non-empty 1-D list of item positions, got {index!r}")
        rows = rows.long().cpu()
        if int(rows.min()) < 0 or int(rows.max()) >= B:
            raise ValueError(f"fork index holds {int(rows.min())}..{int(rows.max())} but the state has "
                             f"{B} items; use positions 0..{B - 1}")
        picked = [state.seeds[i] for i in rows.tolist()]
        if seeds is not None:
            picked = [int(s) for s in seeds]
            if len(picked) != len(rows) or any(s < 0 for s in picked):
                raise ValueError(f"fork needs one seed >= 0 per member ({len(rows)}), got {list(seeds)}")
        shell = GenState(conditions=[state.conditions[i] for i in rows.tolist()], seeds=picked,
                         sampling=state.sampling, maps=[m[rows.to(m.device)] for m in state.maps])
        return shell, rows

    def check_preview(self, state: GenState) -> None:
        """Raise ValueError unless a scale is done (before scale 0 there is nothing to decode)."""
        if state.next_scale < 1:
            raise ValueError("preview needs at least one scale done; call run_scales(state, 1) "
                             "or advance(state, codes) first")

    def generate_images(self, conditions: Sequence, seeds: Sequence[int],
                        sampling: Sampling) -> torch.Tensor:
        """Plain generation (no search): uint8 [B, H, W, 3]."""
        state = self.start(conditions, seeds, sampling)
        return self.finish(state)
