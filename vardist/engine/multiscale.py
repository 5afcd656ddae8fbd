"""Search across scales on one batch: the one-scale pipeline's stages (draw, score, keep,
continue) looped over the searched scales of a `SearchSchedule`.

    images, maps, choices = search_batch(model, items, settings, schedule, verify, embed)

Each item starts as one member (its own seed, so its prefix is plain generation's). At a
searched scale s every member draws its share of the item's candidates from its own logits
(`draw_pool`: rows 0.. of its stream at s, so fewer candidates are a prefix of more), the
candidates are scored by the step's rule over the item's pooled candidates, and the kept ones
continue as the next population:

    pop = model.fork(state, parents, seeds=lineage_seeds)   # shared prefixes are not recomputed
    model.advance(pop, kept_codes)

A member's seed is its item seed, then `lineage_seed(parent seed, scale, candidate, copy)` for
each step it went through, and every draw comes from item_stream(member seed, scale): nothing
depends on batch mates, batch size, workers or resume. The rules' own randomness (KMeans'
initialisation, resampling, var-scaling's low branch) comes from `step_rng(item seed, scale)`.

Compute per item (run log: forward_tokens, previews, verifier_calls): the token positions the
transformer runs, summed over the members alive at each scale (the forward at scale s gives
the logits every candidate of s is drawn from, once per member; a kept candidate's fork copies
that member's cache and a preview only decodes, so neither runs the transformer; CFG doubles
the transformer's rows, the same factor for every strategy, not counted), the intermediate
images decoded, and the images the verifier scored (the final one included).

The one-scale VAR-Scaling search (`density:1@k`) never comes here: plan_search turns it into
`scale=k` and the one-scale pipeline runs, byte for byte as before.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np
import torch

from vardist.engine.pipeline import Choice, Embed
from vardist.engine.plan import SearchSettings, WorkItem
from vardist.engine.rerank import Verify, score_chosen
from vardist.engine.schedule import (NEEDS_VERIFIER, SearchSchedule, SearchStep,
                                     preview_chunk)
from vardist.models.interface import ScaleWiseGenerator
from vardist.selection import kde_density, select
from vardist.selection.population import keep_cluster, keep_resample, keep_top

_LINEAGE_KEY = 0x11EA6E  # spawn keys: a member's seed, and a step's rule rng, apart from the rest
_STEP_KEY = 0x57E9


def lineage_seed(seed: int, scale: int, candidate: int, copy: int = 0) -> int:
    """The seed of the member made of candidate `candidate` of the member with `seed` at
    `scale` (`copy`: its occurrence among the kept, > 0 only when resampling keeps it twice)."""
    ss = np.random.SeedSequence([seed, scale, candidate, copy], spawn_key=(_LINEAGE_KEY,))
    return int(ss.generate_state(1, np.uint64)[0] >> np.uint64(1))


def step_rng(seed: int, scale: int) -> np.random.Generator:
    """An item's rng for the rule of its step at `scale`."""
    return np.random.default_rng(np.random.SeedSequence([seed, scale], spawn_key=(_STEP_KEY,)))


def split_candidates(total: int, members: int) -> list[int]:
    """The candidates each of `members` draws so an item draws `total` (each at least one)."""
    base, extra = divmod(total, members)
    return [max(1, base + (m < extra)) for m in range(members)]


def search_batch(model: ScaleWiseGenerator, items: Sequence[WorkItem], settings: SearchSettings,
                 schedule: SearchSchedule, verify: Verify | None, embed: Embed,
                 *, chunk: int = 1024) -> tuple[np.ndarray, list[np.ndarray], list[Choice]]:
    """Run `schedule` on a batch: the final images [B, H, W, 3], token maps (one array per
    scale) and one Choice per item (index: the kept candidate at the last step; `lineage`: the
    kept candidate at every step; `compute`: what the item cost)."""
    if schedule.needs_verifier and verify is None:
        raise ValueError(f"search schedule {schedule} has a reward rule and needs a verifier")
    B = len(items)
    seeds = [it.seed for it in items]
    owner = list(range(B))                 # member -> item position
    mseeds = list(seeds)                   # member -> its seed
    paths: list[list[int]] = [[] for _ in range(B)]  # member -> kept candidate at each step
    compute = [dict(forward_tokens=0, previews=0, verifier_calls=0) for _ in range(B)]
    branches: list[str | None] = [None] * B
    select_s = [0.0] * B

    def fed(scales: range, members: Sequence[int]) -> None:
        tokens = sum(model.positions(s) for s in scales)
        for m in members:
            compute[owner[m]]["forward_tokens"] += tokens

    with torch.inference_mode():
        state = model.start([it.condition for it in items], seeds, settings.sampling())
        for step in schedule.steps:
            members = range(len(owner))
            fed(range(state.next_scale, step.scale + 1), members)  # scale s's logits too
            model.run_scales(state, step.scale)
            total = schedule.candidates(step, settings.n)
            per_item = {b: [m for m in members if owner[m] == b] for b in range(B)}
            counts = {m: c for b in range(B)
                      for m, c in zip(per_item[b], split_candidates(total, len(per_item[b])))}
            codes = model.draw_pool(state, max(counts.values()), chunk=chunk)
            cand = [[(m, j) for m in per_item[b] for j in range(counts[m])] for b in range(B)]
            kept = _keep(model, state, step, settings, items, codes, cand, verify, embed,
                         compute, branches, select_s)
            parents, js, child_seeds, child_owner, child_paths = [], [], [], [], []
            for b in range(B):
                seen: dict[int, int] = {}
                for pos in kept[b]:
                    m, j = cand[b][pos]
                    copy = seen.get(pos, 0)
                    seen[pos] = copy + 1
                    parents.append(m)
                    js.append(j)
                    child_seeds.append(lineage_seed(mseeds[m], step.scale, j, copy))
                    child_owner.append(b)
                    child_paths.append([*paths[m], pos])
            state = model.fork(state, parents, seeds=child_seeds)
            model.advance(state, codes[parents, js])
            owner, mseeds, paths = child_owner, child_seeds, child_paths
        fed(range(state.next_scale, model.num_scales), range(len(owner)))
        images = model.finish(state).cpu().numpy().astype(np.uint8, copy=False)
        maps = [m.cpu().numpy() for m in state.maps]
    nan = float("nan")
    choices = [Choice(paths[b][-1], branches[b], [], nan, nan, nan, select_s[b],
                      lineage=paths[b], compute=compute[b]) for b in range(B)]
    if verify is not None:
        choices = score_chosen(verify, items, images, choices)
        for c in choices:
            c.compute["verifier_calls"] += 1
    return images, maps, choices


def _keep(model: ScaleWiseGenerator, state: Any, step: SearchStep, settings: SearchSettings,
          items: Sequence[WorkItem], codes: torch.Tensor, cand: list[list[tuple[int, int]]],
          verify: Verify | None, embed: Embed, compute: list[dict[str, int]],
          branches: list[str | None], select_s: list[float]) -> list[list[int]]:
    """Score every item's pooled candidates by the step's rule; the kept positions per item."""
    B = len(items)
    rewards: list[np.ndarray] = [np.zeros(0)] * B
    features: list[np.ndarray] = [np.zeros(0)] * B
    flat = [(b, m, j) for b in range(B) for m, j in cand[b]]
    rows = np.array([b for b, _, _ in flat])
    if step.rule == "cluster" and _image_tower(verify) is None:  # no decode: the latent
        f = _latent_features(model, state, codes, flat, embed)
        features = [f[rows == b] for b in range(B)]
    elif step.rule in ("reward", "cluster", "resample"):
        previews = _previews(model, state, codes, flat)
        for b, _, _ in flat:
            compute[b]["previews"] += 1
        # Scored and embedded one item at a time, as decoded: a verifier batches its inputs,
        # and an item's rewards must not depend on which items share its batch.
        mine = [previews[rows == b] for b in range(B)]
        if step.rule in NEEDS_VERIFIER:
            rewards = [np.asarray(verify.verifier.score(
                mine[b], [items[b].condition] * len(mine[b])), np.float64)
                if len(mine[b]) else np.zeros(0) for b in range(B)]
            for b in rows:
                compute[b]["verifier_calls"] += 1
        else:
            tower = _image_tower(verify)
            features = [np.asarray(tower(mine[b]).float().cpu().numpy(), np.float64)
                        if len(mine[b]) else np.zeros(0) for b in range(B)]
    kept = []
    for b, it in enumerate(items):
        t0 = time.perf_counter()
        if step.rule == "density":
            kept.append(_keep_density(codes, cand[b], step, settings, embed, it.seed, b, branches))
        elif step.rule == "reward":
            kept.append(keep_top(rewards[b], step.population))
        elif step.rule == "cluster":
            seed = int(step_rng(it.seed, step.scale).integers(2 ** 31))
            kept.append(keep_cluster(features[b], step.population, seed))
        else:
            kept.append(keep_resample(rewards[b], step.population, step_rng(it.seed, step.scale)))
        select_s[b] += time.perf_counter() - t0
    return kept


def _keep_density(codes: torch.Tensor, cand: list[tuple[int, int]], step: SearchStep,
                  settings: SearchSettings, embed: Embed, seed: int, b: int,
                  branches: list[str | None]) -> list[int]:
    """density: with one member kept, the run's strategy picks it as the one-scale search does
    (var-scaling's high / low branch, ...); with more, the top POP by density."""
    if settings.strategy == "none":  # plain sampling: the first candidates
        return list(range(min(step.population, len(cand))))
    m_idx = [m for m, _ in cand]
    j_idx = [j for _, j in cand]
    x = embed(codes[m_idx, j_idx].numpy())
    density = kde_density(x, settings.kde_method, None, settings.metric)
    if step.population > 1:
        return keep_top(density, step.population)
    sel = select(density, x, settings.strategy, alpha=settings.alpha, rep=settings.rep,
                 conflict_thresh=settings.conflict_thresh, k=settings.k,
                 rng=step_rng(seed, step.scale))
    branches[b] = sel.branch
    return [int(sel.index)]


def _previews(model: ScaleWiseGenerator, state: Any, codes: torch.Tensor,
              flat: list[tuple[int, int, int]]) -> np.ndarray:
    """The preview of every candidate (member m's candidate j, for each (b, m, j), grouped by
    item b): its member's latent plus its codes, decoded (`model.preview_candidates`: no KV
    cache is copied). One item's candidates at a time, at most preview_chunk(model.image_hw),
    a number fixed by the output size alone, so the decoder sees the same batch shapes
    whatever the batch size or machine (CPU float kernels can round by batch shape, and a
    reward or a cluster follows such a level)."""
    chunk = preview_chunk(getattr(model, "image_hw", None))
    out = []
    starts = [i for i in range(len(flat)) if i == 0 or flat[i][0] != flat[i - 1][0]]
    bounds = []
    for first, end in zip(starts, [*starts[1:], len(flat)]):  # one item's candidates
        bounds += [(lo, min(end, lo + chunk)) for lo in range(first, end, chunk)]
    for lo, hi in bounds:
        part = flat[lo:hi]
        ms, js = [m for _, m, _ in part], [j for _, _, j in part]
        shots = model.preview_candidates(state, ms, codes[ms, js])
        out.append(shots.cpu().numpy().astype(np.uint8, copy=False))
    return np.concatenate(out)


def _image_tower(verify: Verify | None) -> Any:
    """A CLIP-like verifier's image embedding (`verifier.embed.images`: uint8 images ->
    [N, f]; VerifierSpec.image_tower says which have one), or None (no verifier, or one
    without an image tower)."""
    embed = getattr(verify.verifier, "embed", None) if verify is not None else None
    images = getattr(embed, "images", None)
    return images if callable(images) else None


def _latent_features(model: ScaleWiseGenerator, state: Any, codes: torch.Tensor,
                     flat: list[tuple[int, int, int]], embed: Embed) -> np.ndarray:
    """What `cluster` measures candidates by without an image tower: the latent each candidate
    accumulates, as the sum over the scales so far of its code embeddings (`model.embed`)
    upsampled (nearest) to the searched scale's grid, flattened: [n, h * w * d] float64. A
    lookup and sums in numpy, so it is the same whatever the batch (decoded pixels can differ
    by a level between batch shapes, and KMeans can follow such a level)."""
    ms, js = [m for _, m, _ in flat], [j for _, _, j in flat]
    H, W = model.schedule[state.next_scale]
    total: np.ndarray | float = 0.0
    for s, part in enumerate([*(m[ms] for m in state.maps), codes[ms, js]]):
        h, w = model.schedule[s]
        e = embed(part.cpu().numpy()).astype(np.float64).reshape(len(flat), h, w, -1)
        total = total + e[:, (np.arange(H) * h) // H][:, :, (np.arange(W) * w) // W]
    return np.asarray(total).reshape(len(flat), -1)
