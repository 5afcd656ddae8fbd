"""Verifier-guided search: after the selection stage, finish shortlisted candidates, score the
finished images with a verifier (`vardist.verifiers`) and keep the best.

    images, maps, choices = finish_batch(model, batch, settings, pool.prefix, pool.codes,
                                         choices, pool.state, verify)

With `verify.rerank` = K >= 1, each item's first K shortlist entries (the strategy's visiting
order: by density for var-scaling's high branch, top-k and infinity; random for random-k and
var-scaling's low branch) are finished, batched over the items, and the one with the highest
reward is kept; ties go to the higher density, then the lower candidate index. K = 0 finishes
the strategy's choice as plain search does and only scores it (a logged metric, no extra
continuation). Each continuation draws from its item's seed streams, as the plain path does, so
a reranked candidate is the image plain search makes when it chooses that candidate (the same
token maps; pixels can differ by a level where CPU float kernels differ between batch shapes).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Sequence

import numpy as np
import torch

from vardist.engine.pipeline import Choice, chosen_codes, continue_batch, model_device
from vardist.engine.plan import Job, SearchSettings, WorkItem
from vardist.models.interface import GenState, ScaleWiseGenerator


@dataclass(frozen=True)
class Verify:
    verifier: Any        # a vardist.verifiers.Verifier
    rerank: int = 0      # candidates to finish per item; 0: score the chosen image only


def for_job(job: Job, model: Any) -> Verify | None:
    """The job's verifier, loaded beside the model (same device), or None without one."""
    return load_verify(verify_args(job), model)


def verify_args(job: Job) -> tuple[str, str | None, int] | None:
    """What a process needs to load the job's verifier (Ray ships it to its actors)."""
    return (job.verifier, job.verifier_weights, job.rerank) if job.verifier else None


def load_verify(args: tuple[str, str | None, int] | None, model: Any) -> Verify | None:
    if args is None:
        return None
    from vardist.verifiers import load

    name, weights, k = args
    return Verify(load(name, weights, model_device(model)), k)


def score_chosen(verify: Verify, items: Sequence[WorkItem], images: np.ndarray,
                 choices: Sequence[Choice]) -> list[Choice]:
    """The choices with their finished images' rewards (no rerank: one continuation each)."""
    rewards = verify.verifier.score(images, [it.condition for it in items])
    return [replace(c, reward=float(r)) for c, r in zip(choices, rewards)]


def finish_batch(model: ScaleWiseGenerator, items: Sequence[WorkItem], settings: SearchSettings,
                 prefix: Sequence[np.ndarray], codes: np.ndarray, choices: Sequence[Choice],
                 state: GenState | None = None, verify: Verify | None = None
                 ) -> tuple[np.ndarray, list[np.ndarray], list[Choice]]:
    """Finish a pool batch: the images [B, H, W, 3] and token maps kept per item, and the
    choices with what the verifier found (index = the kept candidate)."""
    if verify is None or verify.rerank < 1:
        images, maps = continue_batch(model, items, settings, prefix,
                                      chosen_codes(codes, choices), state)
        if verify is None:
            return images, maps, list(choices)
        return images, maps, score_chosen(verify, items, images, choices)

    picks = [c.shortlist[:verify.rerank] for c in choices]
    owner = np.array([b for b, p in enumerate(picks) for _ in p], np.int64)
    cand = np.array([j for p in picks for j in p], np.int64)
    images, maps = [], []
    step = len(items)  # continuations in chunks of the batch size: memory as plain search
    for lo in range(0, len(owner), step):
        im, mp = _continue_rows(model, items, settings, prefix, codes, state,
                                owner[lo:lo + step], cand[lo:lo + step])
        images.append(im)
        maps.append(mp)
    images_all = np.concatenate(images)
    maps_all = [np.concatenate(m) for m in zip(*maps)]
    rewards = np.asarray(verify.verifier.score(images_all, [items[b].condition for b in owner]),
                         np.float64)
    keep, out = [], []
    for b, c in enumerate(choices):
        rows = np.flatnonzero(owner == b)
        kept = keep_best(c, cand[rows], rewards[rows])
        keep.append(rows[kept.reranked.index(kept.index)])
        out.append(kept)
    return images_all[keep], [m[keep] for m in maps_all], out


def keep_best(choice: Choice, candidates: Sequence[int], rewards: Sequence[float]) -> Choice:
    """The choice after reranking: of the finished `candidates` with their `rewards`, the one
    with the highest reward; ties go to the higher density, then the lower candidate index.
    (vardist.Study decides with this too, so its rows are what search() keeps.)"""
    if choice.density is None:
        raise ValueError("rerank needs each choice's densities (select_batch(..., "
                         "keep_density=True)) to break ties among equal rewards")
    cand = [int(j) for j in candidates]
    rew = [float(r) for r in rewards]
    best = max(range(len(cand)), key=lambda r: (rew[r], choice.density[cand[r]], -cand[r]))
    j = cand[best]
    return replace(choice, index=j, density_chosen=float(choice.density[j]), reward=rew[best],
                   reranked=cand, rewards=rew, continuations=len(cand))


def _continue_rows(model: ScaleWiseGenerator, items: Sequence[WorkItem], settings: SearchSettings,
                   prefix: Sequence[np.ndarray], codes: np.ndarray, state: GenState | None,
                   owner: np.ndarray, cand: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Finish candidate cand[r] of item owner[r], for every row r: from a fork of the kept
    generator state (no recomputation), else rebuilt teacher-forced from the codes."""
    chosen = torch.from_numpy(np.ascontiguousarray(codes[owner, cand]))
    with torch.inference_mode():
        if state is not None:
            st = model.fork(state, owner.tolist())
            model.advance(st, chosen)
        else:  # as continue_batch does without a state
            maps = [torch.from_numpy(np.ascontiguousarray(m[owner])) for m in prefix]
            st = model.resume([items[b].condition for b in owner], [items[b].seed for b in owner],
                              settings.sampling(), maps=[*maps, chosen])
        images = model.finish(st)
    return (images.detach().cpu().numpy().astype(np.uint8, copy=False),
            [m.detach().cpu().numpy() for m in st.maps])
