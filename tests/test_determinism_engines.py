"""The same command on the local engine, on Ray with one actor and with two writes the same
bytes (issue 13 item 6), and what those bytes depend on is pinned in run.json; the pool
uniforms drawn ahead are the numbers drawn on demand (issue 18)."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

import vardist
from vardist.engine import pipeline
from vardist.io.runlog import ResumeMismatch
from vardist.models import sampling

CASES = {  # model -> a small search at its searched scale: two batches, one per actor
    "toy-digits": dict(classes="3,7", samples=1, n=6, batch_size=1),
    "infinity-tiny": dict(prompts=["a red cube", "two cats on a mat"], samples=1, n=4,
                          batch_size=1),
}


def pngs(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*.png"))}


@pytest.fixture(scope="module")
def ray_instance():
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=2, num_gpus=0, include_dashboard=False, logging_level="ERROR",
             log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.mark.slow
@pytest.mark.parametrize("model", list(CASES))
def test_local_and_ray_engines_write_identical_bytes(model, ray_instance, tmp_path,
                                                     monkeypatch):
    # The process runs with 2 torch threads (conftest): the local engine must not use them
    # for the model, or its float sums split otherwise than in a 1-thread Ray actor.
    torch.set_num_threads(2)
    runs = {"local": {}, "ray1": {"actors": 1}, "ray2": {"actors": 2}}
    files, numerics = {}, {}
    for name, opts in runs.items():
        out = tmp_path / name
        vardist.search(model, **CASES[model], out=out, engine="local" if not opts else "ray",
                       **opts)
        files[name] = pngs(out)
        numerics[name] = json.loads((out / "run.json").read_text())["numerics"]
    assert torch.get_num_threads() == 2  # the caller's setting comes back
    assert len(files["local"]) == 2
    assert files["ray1"] == files["local"]
    assert files["ray2"] == files["local"]
    assert numerics["local"] == numerics["ray1"] == numerics["ray2"]
    assert numerics["local"]["threads"] == pipeline.REPLICA_THREADS
    assert numerics["local"]["torch"] == torch.__version__


def test_resume_with_other_numerics_is_refused(tmp_path):
    out = tmp_path / "run"
    args = dict(classes="1", samples=2, n=4, batch_size=1, out=out)
    vardist.search("toy-digits", **args)
    doc = json.loads((out / "run.json").read_text())
    assert doc["numerics"]["device"] == "cpu" and doc["numerics"]["threads"] == 1
    doc["numerics"]["threads"] = 2  # as if a 2-thread replica had made the images
    (out / "run.json").write_text(json.dumps(doc))
    victim = sorted(out.rglob("*.png"))[-1]
    victim.unlink()  # something left to do: the resume must match the images there
    with pytest.raises(ResumeMismatch, match=r"threads: this folder has 2, this run has 1"):
        vardist.search("toy-digits", **args)
    assert not victim.exists()


def test_folder_without_images_takes_the_new_numerics(tmp_path):
    out = tmp_path / "run"
    args = dict(classes="1", samples=1, n=4, batch_size=1, out=out)
    vardist.search("toy-digits", **args)
    doc = json.loads((out / "run.json").read_text())
    doc["numerics"]["threads"] = 2
    (out / "run.json").write_text(json.dumps(doc))
    for p in out.rglob("*.png"):
        p.unlink()
    vardist.search("toy-digits", **args)
    assert json.loads((out / "run.json").read_text())["numerics"]["threads"] == 1


@pytest.mark.parametrize("count", [0, 7, 30, 1000])
def test_uniforms_drawn_ahead_are_the_same_numbers(count):
    with ThreadPoolExecutor(1) as ex:
        sampling.prefetch_stream(11, 2, count, ex)
        ahead = sampling.item_stream(11, 2)
        fresh = sampling.ItemStream(11, 2)
        shapes = [(2, 5), (1, 5), (3, 7), (4, 1)]  # widths may change between calls
        for m, w in shapes:
            np.testing.assert_array_equal(ahead.rows(m, w), fresh.rows(m, w))
    # taken once: the next stream for that key starts afresh
    assert sampling.item_stream(11, 2)._ahead is None


def test_uniforms_drawn_ahead_are_bounded():
    limit = sampling.AHEAD_MAX_DOUBLES
    try:
        sampling.AHEAD_MAX_DOUBLES = 100
        for seed in range(5):
            sampling.prefetch_stream(seed, 0, 40)
        kept = [k for k in sampling._AHEAD if k[1] == 0 and k[0] < 5]
        assert kept == [(3, 0), (4, 0)]  # the oldest dropped
    finally:
        sampling.AHEAD_MAX_DOUBLES = limit
        sampling._AHEAD.clear()


def test_pool_with_prefetched_uniforms_matches(tmp_path):
    from vardist.engine.plan import SearchSettings, plan_items
    from vardist.models import registry

    model = registry.load("toy-digits", device="cpu")
    settings = SearchSettings(scale=1, n=16, strategy="var-scaling", alpha=2.0, rep=4,
                              conflict_thresh=1.8, k=8, cfg=1.0, top_k=0, top_p=0.0, tau=1.0)
    items = plan_items([(2, 2), (5, 5)], 1, run_seed=3)
    plain = pipeline.prefix_and_pool(model, items, settings)
    with ThreadPoolExecutor(1) as ex:
        pipeline.prefetch_uniforms(model, items, settings, ex)
        assert all((it.seed, 1) in sampling._AHEAD for it in items)
        ahead = pipeline.prefix_and_pool(model, items, settings)
    assert not any((it.seed, 1) in sampling._AHEAD for it in items)  # consumed
    np.testing.assert_array_equal(ahead.codes, plain.codes)


def test_actor_encodes_while_its_device_runs_the_next_call(monkeypatch):
    """The Ray actor's PNG encoding of one call overlaps the device work of the next: encoding
    here waits until the next call's model work has started, which can only happen when the
    actor runs calls concurrently (a one-call-at-a-time actor would time out). Same bytes."""
    import asyncio
    import threading

    from vardist.engine.plan import SearchSettings, plan_items
    from vardist.engine.ray import Generator, Packed
    from vardist.io import outputs
    from vardist.models import registry

    model = registry.load("toy-digits", device="cpu")
    draws, started_again = [], threading.Event()
    real_draw, real_png = model.draw_pool, outputs.png_bytes

    def draw_pool(*args, **kwargs):  # model work of pool calls, on the actor's device thread
        draws.append(threading.current_thread().name)
        if len(draws) == 2:
            started_again.set()
        return real_draw(*args, **kwargs)

    def png_bytes(image):
        if not started_again.wait(timeout=60):
            raise TimeoutError("the next call's device work never started while encoding")
        return real_png(image)

    monkeypatch.setattr(model, "draw_pool", draw_pool)
    monkeypatch.setattr(outputs, "png_bytes", png_bytes)
    gen = Generator(model, None, None, None)
    settings = SearchSettings(scale=1, n=8, strategy="var-scaling", alpha=2.0, rep=4,
                              conflict_thresh=1.8, k=8, cfg=1.0, top_k=0, top_p=0.0, tau=1.0)
    b0, b1 = ([it] for it in plan_items([(3, 3), (7, 7)], 1, run_seed=0))

    async def drive():
        msg0 = await gen.pool(b0, settings)
        chosen = Packed.pack(msg0.codes.unpack()[:, 0])
        fin0 = asyncio.ensure_future(gen.finish(b0, settings, msg0.prefix, chosen, True))
        await asyncio.sleep(0)  # finish's device work is queued first
        msg1 = await gen.pool(b1, settings)  # runs while fin0's PNG waits
        return await fin0, msg1

    done, msg1 = asyncio.run(drive())
    assert draws == ["vardist-device_0"] * 2
    assert msg1.codes.unpack().shape[:2] == (1, 8)
    pool = pipeline.prefix_and_pool(model, b0, settings)  # the same batch, computed in line
    images, _ = pipeline.continue_batch(model, b0, settings, pool.prefix, pool.codes[:, 0])
    assert done.pngs == [real_png(im) for im in images]
