"""The local engine: the whole search in one process, over the plan's canonical batches.

Per batch: prefix + pool on the model's device, densities and choices on the CPU, continuation
from the kept generator state (no teacher-forced recomputation), PNGs and a log part. Selection
and writing run on one helper thread, so the device draws the next batch's pool while the CPU
selects this one's candidates, and encodes PNGs while the device finishes images:

    main (device):  pool 0 | pool 1 | finish 0 | pool 2 | finish 1 | ...
    helper (CPU):          | sel 0  | sel 1    | write 0 | sel 2   | write 1 ...

A batch whose items are all finished is skipped; a partly finished one is recomputed whole (so
each image is computed in the same company as in an uninterrupted run) and only its missing
images are written. Writes happen in batch order and stop at the first failure, like a kill.

The model runs with pipeline.REPLICA_THREADS torch threads, as every Ray actor does, so both
engines write the same bytes; a second helper thread draws the next batch's pool uniforms
(numpy Philox) while the device runs this one.
"""

from __future__ import annotations

import itertools
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Sequence

from vardist.engine import multiscale, pipeline, rerank
from vardist.engine.plan import Job
from vardist.engine.results import Recorder, SearchResults
from vardist.engine.schedule import parse_search

Progress = Callable[[int, int], None]  # (images done, total)


def run(job: Job, model: Any, recorder: Recorder, progress: Progress | None = None
        ) -> SearchResults:
    """Run `job` with a loaded model; returns one Result per item, in item order."""
    total = len(job.items)
    todo_batches, results = recorder.plan()
    if progress:
        progress(len(results), total)
    embed = pipeline.embedder(model)
    with pipeline.replica_threads():
        if todo_batches:  # images to make: they must match those already there byte for byte
            recorder.pin_numerics(pipeline.replica_numerics(model))
        # the verifier beside the model, loaded only when there are images to make
        verify = rerank.for_job(job, model) if todo_batches else None
        if job.search is not None:  # search across scales: one batch after the other
            return _run_schedule(job, model, recorder, progress, todo_batches, results, embed,
                                 verify)
        return _run(job, model, recorder, progress, todo_batches, results, embed, verify)


def _run_schedule(job: Job, model: Any, recorder: Recorder, progress: Progress | None,
                  todo_batches: Sequence, results: dict, embed: pipeline.Embed,
                  verify: rerank.Verify | None) -> SearchResults:
    """The batches of a search across scales (engine.multiscale), each searched and written
    in turn (its members' states stay on the device between scales)."""
    schedule = parse_search(job.search, model.num_scales)
    for bi, batch in todo_batches:
        t0 = time.perf_counter()
        images, maps, choices = multiscale.search_batch(model, batch, job.settings, schedule,
                                                        verify, embed)
        for r in recorder.record(bi, batch, choices, images, maps, time.perf_counter() - t0, 0.0):
            results[r.item.index] = r
        if progress:
            progress(len(results), len(job.items))
    recorder.close()
    return SearchResults(results[i] for i in sorted(results))


def _run(job: Job, model: Any, recorder: Recorder, progress: Progress | None,
         todo_batches: Sequence, results: dict, embed: pipeline.Embed,
         verify: rerank.Verify | None = None) -> SearchResults:
    total, settings = len(job.items), job.settings
    positions = pipeline.model_positions(model)  # compute accounting (run log)

    def write(bi, batch, choices, images, maps, pool_s, finish_s, before: Future | None) -> None:
        if before is not None:
            before.result()  # an earlier write failed: stop here, as a killed run would
        for r in recorder.record(bi, batch, choices, images, maps, pool_s, finish_s):
            results[r.item.index] = r
        if progress:
            progress(len(results), total)

    helper = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vardist-select-write")
    uniforms = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vardist-uniforms")
    last_write: Future | None = None
    try:
        prev = None
        if todo_batches:
            pipeline.prefetch_uniforms(model, todo_batches[0][1], settings, uniforms)
        for i, entry in enumerate(itertools.chain(todo_batches, [None])):  # one by one
            cur = None
            if entry is not None:
                bi, batch = entry
                if i + 1 < len(todo_batches):  # drawn while the device runs this batch
                    pipeline.prefetch_uniforms(model, todo_batches[i + 1][1], settings, uniforms)
                pool = pipeline.prefix_and_pool(model, batch, settings, keep_state=True)
                chosen = helper.submit(pipeline.select_batch, pool.codes, embed, pool.seeds,
                                       settings,  # rerank breaks reward ties by density
                                       keep_density=job.log_candidates or job.rerank > 0)
                cur = (bi, batch, pool, chosen)
            if prev is not None:
                pbi, pbatch, ppool, pchosen = prev
                choices = pchosen.result()
                t0 = time.perf_counter()
                images, maps, choices = rerank.finish_batch(
                    model, pbatch, settings, ppool.prefix, ppool.codes, choices, ppool.state,
                    verify)
                choices = pipeline.with_compute(choices, positions, settings.scale,
                                                verify is not None)
                ppool.state = None  # free the KV cache now
                last_write = helper.submit(write, pbi, pbatch, choices, images, maps,
                                           ppool.seconds, time.perf_counter() - t0, last_write)
                if last_write.done() and last_write.exception() is not None:
                    break
            prev = cur
        if last_write is not None:
            last_write.result()  # re-raises the first failed write
    finally:
        helper.shutdown(wait=True, cancel_futures=True)
        uniforms.shutdown(wait=True, cancel_futures=True)
    recorder.close()
    return SearchResults(results[i] for i in sorted(results))
