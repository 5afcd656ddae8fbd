"""Finished batches -> images on disk, log rows and the records search() returns. Shared by every
engine, so the local and the Ray engine write the same files the same way."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa

from vardist.engine.pipeline import Choice
from vardist.engine.plan import Job, WorkItem
from vardist.io import outputs
from vardist.io.runlog import ROW_SCHEMA, RunLog


@dataclass
class Result:
    """One image of a search. With no output folder, `image` and `maps` (the codes of every
    scale) are kept in memory; with one, `path` says where the image is."""

    item: WorkItem
    chosen: int
    branch: str | None
    density_max: float
    density_mean: float
    density_chosen: float
    path: Path | None = None
    image: np.ndarray | None = field(default=None, repr=False)
    maps: list[np.ndarray] | None = field(default=None, repr=False)
    resumed: bool = False  # finished by an earlier run on the same folder


class SearchResults(list):
    """The list of Results of a run, in item order, with a table view."""

    def table(self) -> pa.Table:
        rows = [{"condition_index": r.item.condition_index, "condition": str(r.item.condition),
                 "sample_index": r.item.sample_index, "seed": r.item.seed, "chosen": r.chosen,
                 "branch": r.branch, "density_max": r.density_max,
                 "density_mean": r.density_mean, "density_chosen": r.density_chosen,
                 "path": str(r.path) if r.path else None, "resumed": r.resumed} for r in self]
        return pa.Table.from_pylist(rows)

    @property
    def images(self) -> list[np.ndarray]:
        """Every image, read back from disk where it was written."""
        return [r.image if r.image is not None else outputs.read_png(r.path) for r in self]


class Recorder:
    """Writes a run's outputs. Construct it after the checks (it opens run.json); then feed it
    every computed batch with `record`, and `close` at the end."""

    def __init__(self, job: Job, config: dict[str, Any]) -> None:
        self.job = job
        self.out = Path(job.out) if job.out else None
        self.log = RunLog(self.out) if self.out else None
        self.finished: set[tuple[int, int]] = set()
        self.resumed = False
        if self.log:
            self.resumed = self.log.open(job.fingerprint(), config)
            self.finished = self.log.finished() if self.resumed else set()
            for ci, line in job.prompt_lines.items():
                outputs.write_prompt_metadata(self.out, ci, line)

    def todo(self, batch: Sequence[WorkItem]) -> list[WorkItem]:
        return [it for it in batch if (it.condition_index, it.sample_index) not in self.finished]

    def record(self, batch_index: int, batch: Sequence[WorkItem], choices: Sequence[Choice],
               images: np.ndarray | None, maps: Sequence[np.ndarray], pool_seconds: float,
               finish_seconds: float, pngs: Sequence[bytes] | None = None) -> list[Result]:
        """Write the not yet finished images of a computed batch (PNG, then its log part).
        `pngs`: the images already encoded (outputs.png_bytes), so that whoever computed them
        encodes in parallel and this only writes; then `images` and `maps` may be None and [].
        In-memory runs (no output folder) keep `images` and `maps`, so they need them."""
        job, s = self.job, self.job.settings
        if self.out is None and images is None:
            raise ValueError("an in-memory run (no output folder) needs the images as arrays, "
                             "not only PNG bytes")
        if pngs is None and images is None:
            raise ValueError("record needs the images, as arrays or as PNG bytes (pngs=)")
        B = len(batch)
        rows, cands, results = [], [], []
        for b, (it, ch) in enumerate(zip(batch, choices)):
            if (it.condition_index, it.sample_index) in self.finished:
                continue
            res = Result(it, ch.index, ch.branch, ch.density_max, ch.density_mean,
                         ch.density_chosen)
            t0 = time.perf_counter()
            if self.out:
                rel = outputs.image_relpath(job.condition_kind, it.condition_index,
                                            it.sample_index)
                if pngs is not None:
                    outputs.atomic_write_bytes(self.out / rel, pngs[b])
                else:
                    outputs.save_png(self.out / rel, images[b])
                res.path = self.out / rel
                rows.append({"condition_index": it.condition_index,
                             "condition": str(it.condition), "sample_index": it.sample_index,
                             "seed": it.seed, "path": rel, "model": job.model_name,
                             **asdict(s), "batch_size": job.batch_size, "batch": batch_index,
                             "chosen": ch.index, "branch": ch.branch,
                             "shortlist_size": len(ch.shortlist),
                             "density_max": ch.density_max, "density_mean": ch.density_mean,
                             "density_chosen": ch.density_chosen, "t_pool": pool_seconds / B,
                             "t_select": ch.seconds, "t_finish": finish_seconds / B,
                             "t_write": time.perf_counter() - t0})
                if job.log_candidates and ch.density is not None:
                    short = set(ch.shortlist)
                    cands += [{"condition_index": it.condition_index,
                               "sample_index": it.sample_index, "candidate": j,
                               "density": float(d), "shortlisted": j in short,
                               "chosen": j == ch.index} for j, d in enumerate(ch.density)]
            else:  # in memory: the image and its token maps (too big to keep for a full run)
                res.image = np.array(images[b])
                res.maps = [np.array(m[b]) for m in maps]
            results.append(res)
        if self.log:
            self.log.write_part(rows, cands)
            self.finished.update((r.item.condition_index, r.item.sample_index) for r in results)
        return results

    def plan(self) -> tuple[list[tuple[int, list[WorkItem]]], dict[int, Result]]:
        """What is left of the job: (batch index, batch) pairs still to compute, and the results
        an earlier run already finished (by item index), as every engine starts."""
        todo_batches, skipped = [], []
        for bi, batch in enumerate(self.job.batches()):
            todo = self.todo(batch)
            if todo:
                todo_batches.append((bi, batch))
            skipped += [it for it in batch if it not in todo]
        return todo_batches, {r.item.index: r for r in self.earlier(skipped)}

    def earlier(self, items: Sequence[WorkItem]) -> list[Result]:
        """Records of images an earlier run on this folder finished, from its log."""
        if not self.log or not items:
            return []
        wanted = {(it.condition_index, it.sample_index): it for it in items}
        out = []
        for row in self.log.rows().to_pylist():
            it = wanted.get((row["condition_index"], row["sample_index"]))
            if it is not None:
                out.append(Result(it, row["chosen"], row["branch"], row["density_max"],
                                  row["density_mean"], row["density_chosen"],
                                  path=self.out / row["path"], resumed=True))
        return out

    def close(self) -> None:
        """Merge the log parts into the run log; write the prompts' grids when asked."""
        if not self.log:
            return
        self.log.merge()
        if self.job.condition_kind == "prompt" and self.job.grid:
            by_cond: dict[int, list[Path]] = {}
            for it in self.job.items:
                by_cond.setdefault(it.condition_index, []).append(
                    self.out / outputs.image_relpath("prompt", it.condition_index, it.sample_index))
            for ci, paths in by_cond.items():
                grid = self.out / f"{ci:05d}" / "grid.png"
                if not grid.is_file() and all(p.is_file() for p in paths):
                    outputs.write_grid(self.out, ci, paths)
