"""The local engine: the whole search in one process, one canonical batch at a time.

Per batch: prefix + pool on the model's device, densities and choices on the CPU, continuation
from the kept generator state (no teacher-forced recomputation), PNGs and a log part. A batch
whose items are all finished is skipped; a partly finished one is recomputed whole (so each
image is computed in the same company as in an uninterrupted run) and only its missing images
are written.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from vardist.engine import pipeline
from vardist.engine.plan import Job
from vardist.engine.results import Recorder, Result, SearchResults

Progress = Callable[[int, int], None]  # (images done, total)


def run(job: Job, model: Any, recorder: Recorder, progress: Progress | None = None
        ) -> SearchResults:
    """Run `job` with a loaded model; returns one Result per item, in item order."""
    total = len(job.items)
    results: dict[int, Result] = {}
    skipped = []
    todo_batches = []
    for bi, batch in enumerate(job.batches()):
        todo = recorder.todo(batch)
        if todo:
            todo_batches.append((bi, batch))
        skipped += [it for it in batch if it not in todo]
    for r in recorder.earlier(skipped):
        results[r.item.index] = r
    done = len(skipped)
    if progress:
        progress(done, total)
    embed = pipeline.embedder(model)
    for bi, batch in todo_batches:
        pool = pipeline.prefix_and_pool(model, batch, job.settings, keep_state=True)
        choices = pipeline.select_batch(pool.codes, embed, pool.seeds, job.settings,
                                        keep_density=job.log_candidates)
        t0 = time.perf_counter()
        images, maps = pipeline.continue_batch(model, batch, job.settings, pool.prefix,
                                               pipeline.chosen_codes(pool, choices), pool.state)
        finish_s = time.perf_counter() - t0
        for r in recorder.record(bi, batch, choices, images, maps, pool.seconds, finish_s):
            results[r.item.index] = r
        done = len(results)
        if progress:
            progress(done, total)
    recorder.close()
    return SearchResults(results[i] for i in sorted(results))
