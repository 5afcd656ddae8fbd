"""Finished batches -> images on disk, log rows and the records search() returns. Shared by every
engine, so the local and the Ray engine write the same files the same way."""

from __future__ import annotations

import json
import socket
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa

from vardist.engine.pipeline import Choice
from vardist.engine.plan import Batches, Job, WorkItem
from vardist.io import outputs
from vardist.io.outputs import atomic_write_bytes
from vardist.io.runlog import ROW_SCHEMA, RUN_JSON, ResumeMismatch, RunLog


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
    # seconds this image took, by stage (pool, select, finish, write); None when resumed
    seconds: dict[str, float] | None = field(default=None, repr=False)
    # with a verifier: the kept image's reward; continuations: images finished for this one
    reward: float | None = None
    continuations: int = 1
    # search across scales: the kept candidate at each searched scale (None for one-scale
    # search); the image's compute (forward_tokens, previews, verifier_calls), for every search
    # (None only for images an earlier run logged without it)
    lineage: list[int] | None = None
    compute: dict[str, int] | None = None


class SearchResults(list):
    """The list of Results of a run, in item order, with a table view."""

    def table(self) -> pa.Table:
        rows = [{"condition_index": r.item.condition_index, "condition": str(r.item.condition),
                 "sample_index": r.item.sample_index, "seed": r.item.seed, "chosen": r.chosen,
                 "branch": r.branch, "density_max": r.density_max,
                 "density_mean": r.density_mean, "density_chosen": r.density_chosen,
                 "path": str(r.path) if r.path else None, "resumed": r.resumed,
                 "reward": r.reward, "continuations": r.continuations} for r in self]
        return pa.Table.from_pylist(rows)

    def stage_seconds(self) -> dict[str, float]:
        """Seconds spent per stage on the images this run computed (not the resumed ones):
        each image's share of its batch's prefix + pool and continuation, its selection and
        its write."""
        total = dict.fromkeys(STAGES, 0.0)
        for r in self:
            for key, v in (r.seconds or {}).items():
                total[key] += v
        return total

    @property
    def images(self) -> list[np.ndarray]:
        """Every image, read back from disk where it was written."""
        return [r.image if r.image is not None else outputs.read_png(r.path) for r in self]


STAGES = ("pool", "select", "finish", "write")
COMPUTE_COLUMNS = ("forward_tokens", "previews", "verifier_calls")  # Result.compute's keys


class TodoBatches(Sequence):
    """(batch index, batch) of the canonical batches a run still has to compute, each made
    when it is read."""

    def __init__(self, batches: Batches, indexes: Sequence[int]) -> None:
        self.batches, self.indexes = batches, indexes

    def __len__(self) -> int:
        return len(self.indexes)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        bi = self.indexes[i]
        return bi, self.batches[bi]


class Recorder:
    """Writes a run's outputs. Construct it after the checks, holding the output folder's lock
    (search() takes it; outputs.folder_lock): it opens run.json and clears what a killed run
    left (temporary files; prompt folders without an image). Then feed it every computed
    batch with `record`, and `close` at the end."""

    def __init__(self, job: Job, config: dict[str, Any]) -> None:
        self.job = job
        self.out = Path(job.out) if job.out else None
        self.log = RunLog(self.out) if self.out else None
        self.finished: set[tuple[int, int]] = set()
        self.resumed = False
        self.hostname = socket.gethostname()
        self._bytes, self._images = 0, 0  # written by this run: the disk-full estimate
        self.tags = {ci: _tag(line) for ci, line in job.prompt_lines.items()}
        if self.log:
            earlier_run = (self.out / RUN_JSON).is_file()  # resumed, or restarted (no image)
            self.resumed = self.log.open(job.fingerprint(), config)
            if earlier_run:  # what a killed run left: its temporary files, empty prompt folders
                outputs.remove_stale_temps(self.out)
                outputs.remove_empty_prompt_folders(self.out, job.prompt_lines)
            if self.resumed:
                self.finished = self.log.finished()

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
                         ch.density_chosen, reward=ch.reward, continuations=ch.continuations,
                         lineage=ch.lineage, compute=ch.compute)
            t0 = time.perf_counter()
            if self.out:
                rel = outputs.image_relpath(job.condition_kind, it.condition_index,
                                            it.sample_index)
                try:
                    if job.condition_kind == "prompt":  # the first image brings its folder
                        outputs.write_prompt_image(
                            self.out, it.condition_index, it.sample_index,
                            job.prompt_lines[it.condition_index],
                            pngs[b] if pngs is not None else outputs.png_bytes(images[b]))
                    elif pngs is not None:
                        outputs.atomic_write_bytes(self.out / rel, pngs[b])
                    else:
                        outputs.save_png(self.out / rel, images[b])
                except outputs.DiskFull as e:
                    raise self._disk_full(e) from e
                res.path = self.out / rel
                self._bytes += res.path.stat().st_size
                res.seconds = {"pool": pool_seconds / B, "select": ch.seconds,
                               "finish": finish_seconds / B, "write": time.perf_counter() - t0}
                rows.append({"condition_index": it.condition_index,
                             "condition": str(it.condition), "sample_index": it.sample_index,
                             "seed": it.seed, "path": rel, "model": job.model_name,
                             **asdict(s), "batch_size": job.batch_size, "batch": batch_index,
                             "chosen": ch.index, "branch": ch.branch,
                             "shortlist_size": len(ch.shortlist),
                             "density_max": ch.density_max, "density_mean": ch.density_mean,
                             "density_chosen": ch.density_chosen,
                             **{f"t_{key}": v for key, v in res.seconds.items()},
                             **_verifier_columns(job, ch), **_search_columns(job, ch),
                             "run_id": self.log.run_id, "run_seed": job.seed,
                             "timestamp": datetime.now(timezone.utc),
                             "hostname": self.hostname,
                             "tag": self.tags.get(it.condition_index)})
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
            try:
                self._bytes += self.log.write_part(rows, cands)
            except outputs.DiskFull as e:
                raise self._disk_full(e, per_image=e.needed / max(len(rows), 1)) from e
            self._images += len(rows)
            self.finished.update((r.item.condition_index, r.item.sample_index) for r in results)
        return results

    def _disk_full(self, e: outputs.DiskFull, per_image: float | None = None
                   ) -> outputs.DiskFull:
        """The writer's DiskFull, with what the rest of the run needs: its images left times
        the bytes per image (PNG and log) written so far (else the failed file's size)."""
        left = len(self.job.items) - len(self.finished)
        if self._images:
            per_image = self._bytes / self._images
        per_image = per_image if per_image is not None else e.needed
        return outputs.DiskFull(e.path, e.needed, e.free,
                                f"; the {left} images this run has left need about "
                                f"{outputs.human_size(int(left * per_image))}")

    def complete(self) -> SearchResults | None:
        """The run's results when an earlier run on this folder finished every image (so
        nothing needs a model), else None. Also writes what close() would (merged log,
        grids), as a finished run's rerun does."""
        if not self.resumed or len(self.finished) < len(self.job.items):
            return None
        todo, earlier = self.plan()
        if todo:
            return None
        self.close()
        return SearchResults(earlier[i] for i in sorted(earlier))

    def plan(self) -> tuple[TodoBatches, dict[int, Result]]:
        """What is left of the job: (batch index, batch) pairs still to compute, and the results
        an earlier run already finished (by item index), as every engine starts. Found by
        arithmetic on the finished (condition, sample) pairs, and the batches left are made on
        demand, so a plan of millions of images starts at once (building every item first took
        about 30 s per million)."""
        job, batches = self.job, self.job.batches()
        position = {ci: p for p, (ci, _) in enumerate(job.conditions)}
        samples = job.samples
        done = {(ci, si): position[ci] * samples + si for ci, si in self.finished
                if ci in position and 0 <= si < samples}  # -> item index
        per_batch = Counter(i // job.batch_size for i in done.values())
        total = len(job.items)
        full = {bi for bi, k in per_batch.items()
                if k == min(job.batch_size, total - bi * job.batch_size)}
        left = range(len(batches)) if not full else [b for b in range(len(batches))
                                                    if b not in full]
        return TodoBatches(batches, left), {r.item.index: r for r in self.earlier(done)}

    def earlier(self, done: dict[tuple[int, int], int]) -> list[Result]:
        """Records of images an earlier run on this folder finished, from its log: `done` maps
        their (condition index, sample index) to their item index. The item's seed is the
        logged one (the same run seed made it), so no seed is derived again."""
        if not self.log or not done:
            return []
        cols = ["condition_index", "sample_index", "seed", "path", "chosen", "branch",
                "density_max", "density_mean", "density_chosen", "reward", "continuations",
                "lineage", *COMPUTE_COLUMNS]
        rows = self.log.rows().select(cols).to_pydict()
        conditions = self.job.conditions
        out = []
        for ci, si, seed, path, chosen, branch, dmax, dmean, dchosen, reward, conts, lineage, \
                *spent in zip(*(rows[c] for c in cols)):
            i = done.get((ci, si))
            if i is not None:
                it = WorkItem(i, ci, si, conditions[i // self.job.samples][1], seed)
                out.append(Result(it, chosen, branch, dmax, dmean, dchosen,
                                  path=self.out / path, resumed=True, reward=reward,
                                  continuations=1 if conts is None else conts, lineage=lineage,
                                  # logs written before every run logged compute: None
                                  compute=None if None in spent else
                                  dict(zip(COMPUTE_COLUMNS, spent))))
        return out

    def pin_numerics(self, numerics: dict[str, Any]) -> None:
        """Record what this run's bytes depend on beyond its settings (the replicas' device,
        torch version, threads: engine.pipeline.replica_numerics) in run.json; resuming a folder
        that already holds images, refuse replicas whose numerics differ from the recorded."""
        if self.log:
            pin_numerics(self.out, numerics, has_images=bool(self.finished))

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


def _verifier_columns(job: Job, ch: Choice) -> dict[str, Any]:
    """The run log's verifier columns of one image (runlog.ROW_SCHEMA)."""
    if not job.verifier:
        return {"continuations": ch.continuations}
    return {"verifier": job.verifier, "rerank": job.rerank, "reward": ch.reward,
            "reranked": ch.reranked, "rerank_rewards": ch.rewards,
            "continuations": ch.continuations}


def _search_columns(job: Job, ch: Choice) -> dict[str, Any]:
    """The run log's compute columns of one image (every search) and search-across-scales
    columns (a schedule's runs only; runlog.ROW_SCHEMA)."""
    cols: dict[str, Any] = dict(ch.compute or {})
    if job.search is not None:
        cols.update(search=job.search, lineage=ch.lineage)
    return cols


def _tag(raw_line: str) -> str | None:
    """GenEval's category of a prompt line ("single_object", "counting", ...), if it has one."""
    try:
        tag = json.loads(raw_line).get("tag")
    except (ValueError, AttributeError):
        return None
    return tag if isinstance(tag, str) else None


def pin_numerics(out: Path, numerics: dict[str, Any], has_images: bool) -> None:
    """run.json's "numerics": written by the first run that makes images; a later run with other
    numerics on a folder with images is refused (its bytes could differ by a level on some
    pixels), one on a folder without images replaces them."""
    path = out / RUN_JSON
    doc = json.loads(path.read_text())
    old = doc.get("numerics")
    if old == numerics:
        return
    if old is not None and has_images:
        diff = [f"{k}: this folder has {old.get(k, '<absent>')!r}, this run has "
                f"{numerics.get(k, '<absent>')!r}" for k in sorted(set(old) | set(numerics))
                if old.get(k) != numerics.get(k)]
        raise ResumeMismatch(
            f"{out} holds images made by model replicas with other numerics ({'; '.join(diff)}); "
            f"their bytes would differ from this run's. Resume where these match (same device, "
            f"torch version and threads), or choose a new --out.", param="out")
    doc["numerics"] = numerics
    atomic_write_bytes(path, (json.dumps(doc, indent=2) + "\n").encode())
