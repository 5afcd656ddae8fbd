"""The Ray engine on a small local Ray instance (one per module: start-up costs seconds):
determinism across actor counts, agreement with the local engine, an actor killed mid-run, and
the compact transport of pools."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest

import vardist

ray = pytest.importorskip("ray")

import ray_toy_model  # noqa: E402  (tests/ is on sys.path under pytest)
from ray_toy_model import ToyScaleModel  # noqa: E402

from vardist.engine import local  # noqa: E402
from vardist.engine import ray as ray_engine  # noqa: E402
from vardist.engine.plan import Job, SearchSettings  # noqa: E402
from vardist.engine.ray import CodeTable, Packed, RayOptions  # noqa: E402
from vardist.engine.results import Recorder  # noqa: E402

SETTINGS = SearchSettings(scale=2, n=24, strategy="var-scaling", alpha=1.5, rep=4,
                          conflict_thresh=1.8, k=8, cfg=1.0, top_k=8, top_p=0.95, tau=1.0)


@pytest.fixture(scope="module")
def ray_instance():
    """A two-node cluster on this machine: a CPU head (the driver's node) and a worker node
    with two fake GPUs, so the engine takes its GPU path (one actor per GPU) across nodes."""
    from ray.cluster_utils import Cluster

    # Actors unpickle the toy model; ship its module by value (tests/ is not installed).
    ray.cloudpickle.register_pickle_by_value(ray_toy_model)
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "num_gpus": 0, "include_dashboard": False})
    cluster.add_node(num_cpus=2, num_gpus=2)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level="ERROR", log_to_driver=False,
             configure_logging=False)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def make_job(out: Path | None, samples: int = 6, batch_size: int = 2, **kw) -> Job:
    return Job(model=ToyScaleModel(), settings=dataclasses.replace(SETTINGS, **kw),
               conditions=[(c, c) for c in range(3)], samples=samples, seed=7,
               batch_size=batch_size, out=str(out) if out else None)


def run_ray(job: Job, actors: int, progress=None, select_on: str = "auto"):
    return ray_engine.run(job, None, Recorder(job, {}), progress,
                          options=RayOptions(actors=actors, depth=2, select_on=select_on))


def png_bytes(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.glob("images/**/*.png"))}


@pytest.fixture(scope="module")
def reference(ray_instance, tmp_path_factory):
    """One uninterrupted 1-actor run that the other runs are compared with."""
    out = tmp_path_factory.mktemp("ray") / "reference"
    res = run_ray(make_job(out), actors=1)
    assert res.stats == {"actors": 1, "replaced": 0, "redone": 0, "select_on": "tasks"}
    assert ray.cluster_resources()["GPU"] == 2  # the actors below are GPU actors
    return out, res


def test_one_and_two_actors_write_identical_bytes(reference, tmp_path):
    ref_out, ref = reference
    seen = []

    def look(done, total):  # while the actors live: each holds its own (fake) GPU
        if done and not seen:
            names = [a for a in ray.util.list_named_actors() if a.startswith("vardist-")]
            seen.extend(ray.get([ray.get_actor(a).info.remote() for a in names]))

    # Through the public API this time: vardist.search(..., engine="ray", actors=2).
    s = SETTINGS
    res = vardist.search(ToyScaleModel(), classes="0-2", samples=6, seed=7, batch_size=2,
                         out=tmp_path, engine="ray", actors=2, scale=s.scale, n=s.n,
                         strategy=s.strategy, alpha=s.alpha, rep=s.rep,
                         conflict_thresh=s.conflict_thresh, k=s.k, cfg=s.cfg, top_k=s.top_k,
                         top_p=s.top_p, tau=s.tau, progress=look)
    assert sorted(g for i in seen for g in i["gpu_ids"]) == [0, 1]
    assert res.stats["actors"] == 2
    want = png_bytes(ref_out)
    assert len(want) == 18 and png_bytes(tmp_path) == want
    assert [r.chosen for r in res] == [r.chosen for r in ref]
    assert any(r.chosen != 0 for r in ref)  # the search did search: not always candidate 0


def test_matches_the_local_engine(reference):
    _, ref = reference
    job = make_job(None)
    want = local.run(job, job.model, Recorder(job, {}))
    assert [r.item for r in ref] == [r.item for r in want]
    assert [r.chosen for r in ref] == [r.chosen for r in want]
    # Local continues from the kept state, Ray re-enters teacher-forced: the same pixels.
    np.testing.assert_array_equal(np.stack(ref.images), np.stack(want.images))


def test_actors_send_png_bytes_when_writing_a_folder(reference, tmp_path):
    """With an output folder the actors encode (in parallel) and the driver only writes: the
    finished-batch messages carry PNG bytes and no arrays or maps, and those bytes are exactly
    what the local engine's encoder makes of the same pixels."""
    from vardist.io import outputs

    ref_out, _ = reference
    seen = []

    class Spy(Recorder):
        def record(self, bi, batch, choices, images, maps, pool_s, finish_s, pngs=None):
            seen.append((images, list(maps), pngs, len(batch)))
            return super().record(bi, batch, choices, images, maps, pool_s, finish_s, pngs)

    job = make_job(tmp_path)
    res = ray_engine.run(job, None, Spy(job, {}), options=RayOptions(actors=1))
    assert len(seen) == len(job.items) // job.batch_size
    for images, maps, pngs, b in seen:
        assert images is None and maps == []
        assert len(pngs) == b and all(p.startswith(b"\x89PNG") for p in pngs)
    local_job = make_job(None)
    mem = local.run(local_job, local_job.model, Recorder(local_job, {}))
    assert [r.path.read_bytes() for r in res] == [outputs.png_bytes(r.image) for r in mem]
    assert png_bytes(tmp_path) == png_bytes(ref_out)


def test_killed_actor_is_replaced_and_every_image_written_once(reference, tmp_path):
    ref_out, _ = reference
    killed = []

    def kill_one(done, total):
        if done and not killed:  # first finished batch: the rest is queued on the actors
            names = sorted(a for a in ray.util.list_named_actors() if a.startswith("vardist-"))
            ray.kill(ray.get_actor(names[0]))
            killed.append(names[0])

    job = make_job(tmp_path)
    res = run_ray(job, actors=2, progress=kill_one, select_on="driver")
    assert res.stats["select_on"] == "driver"  # the other runs select in Ray tasks
    assert killed and res.stats["replaced"] >= 1 and res.stats["redone"] >= 1
    rows = Recorder(job, {}).log.rows()
    keys = list(zip(rows["condition_index"].to_pylist(), rows["sample_index"].to_pylist()))
    assert len(keys) == len(set(keys)) == len(job.items) == len(res)
    assert png_bytes(tmp_path) == png_bytes(ref_out)


def test_resume_redoes_only_missing_images(reference, tmp_path):
    ref_out, ref = reference
    out = tmp_path / "resume"
    shutil.copytree(ref_out, out)
    lost = [out / r.path.relative_to(ref_out) for r in ref[-3:]]  # a kill before these landed
    for p in lost:
        p.unlink()
    res = run_ray(make_job(out), actors=2)
    assert [r.resumed for r in res].count(False) == 3
    assert png_bytes(out) == png_bytes(ref_out)


def test_cluster_too_small_is_refused_before_work(ray_instance, tmp_path):
    from vardist.io.conditions import InputError

    job = make_job(tmp_path / "big")
    with pytest.raises(InputError, match="cannot place 3 generator actors"):
        ray_engine.run(job, None, Recorder(job, {}),
                       options=RayOptions(actors=3, placement_timeout_s=1))  # 2 GPUs


def test_actor_shape_one_per_gpu_else_cpu_slots():
    class FakeRay:
        def __init__(self, res):
            self.cluster_resources = lambda: res

    shape = ray_engine._actor_shape
    assert shape(FakeRay({"CPU": 96, "GPU": 8}), RayOptions()) == (
        8, {"GPU": 1.0, "CPU": 1.0}, None)
    assert shape(FakeRay({"CPU": 96, "GPU": 8}), RayOptions(actors=3))[0] == 3
    assert shape(FakeRay({"CPU": 2}), RayOptions()) == (1, {"CPU": 1.0}, 1)
    assert shape(FakeRay({"CPU": 4}), RayOptions(actors=2, cpus_per_actor=2, threads=2)) == (
        2, {"CPU": 2.0}, 2)


def test_a_gpu_model_asks_for_gpus_the_cluster_does_not_have_yet():
    """Issue 14: the model decides. A GPU model on a cluster that can grow (no GPU node up yet,
    as on the launcher YAMLs and KubeRay with min 0 workers) gets GPU actors, whose pending
    placement group makes the autoscaler add GPU nodes; --device cpu, or a local instance that
    cannot grow, gets CPU actors."""
    class FakeRay:
        cluster_resources = staticmethod(lambda: {"CPU": 8})  # a CPU head, no GPU worker yet

    shape, gpu = ray_engine._actor_shape, {"GPU": 1.0, "CPU": 1.0}
    assert shape(FakeRay(), RayOptions(actors=8), None, gpu_model=True) == (8, gpu, None)
    assert shape(FakeRay(), RayOptions(), None, gpu_model=True)[:2] == (1, gpu)
    assert shape(FakeRay(), RayOptions(actors=8), "cuda:0")[:2] == (8, gpu)
    assert shape(FakeRay(), RayOptions(actors=8), "cpu", gpu_model=True)[1] == {"CPU": 1.0}
    assert shape(FakeRay(), RayOptions(), None, gpu_model=False)[1] == {"CPU": 1.0}
    assert shape(FakeRay(), RayOptions(), None, gpu_model=True, can_scale=False)[1] == {"CPU": 1.0}
    # the official checkpoints are GPU models by the memory plan; toy-digits is not
    from vardist.models import memory

    assert memory.wants_gpu(ray_engine.model_footprint("var-d16"))
    assert not memory.wants_gpu(ray_engine.model_footprint("toy-digits"))
    assert ray_engine.model_footprint(ToyScaleModel()) is None


class _PendingCluster:
    """A fake `ray` whose placement group is placed once `gpus_at` seconds have passed on the
    fake clock (ray.wait advances it by its timeout), with `free` GPUs available meanwhile."""

    def __init__(self, free: float, gpus_at: float | None) -> None:
        self.now, self.free, self.gpus_at, self.removed = 0.0, free, gpus_at, []
        outer = self

        class util:
            @staticmethod
            def remove_placement_group(pg):
                outer.removed.append(pg)

        self.util = util

    def wait(self, refs, timeout):
        self.now += timeout
        placed = self.gpus_at is not None and self.now >= self.gpus_at
        return (refs, []) if placed else ([], refs)

    def available_resources(self):
        return {"CPU": 8.0, "GPU": self.free}

    def cluster_resources(self):
        return {"CPU": 8.0, "GPU": self.free}


class _PG:
    def ready(self):
        return "ready-ref"


def test_the_wait_for_gpus_is_reported_and_bounded():
    from vardist.io.conditions import InputError

    said: list[str] = []
    ray = _PendingCluster(free=2, gpus_at=40)
    ray_engine.wait_for_placement(ray, _PG(), 8, {"GPU": 1.0, "CPU": 1.0}, timeout_s=600,
                                  report_every_s=15, say=said.append, clock=lambda: ray.now)
    assert said == [f"waiting for 8 GPUs, 2 available, 6 requested from the autoscaler "
                    f"({t} s of 600 s)" for t in (15, 30)]
    assert ray.removed == []

    said.clear()
    ray, pg = _PendingCluster(free=0, gpus_at=None), _PG()  # the cluster never grows
    with pytest.raises(InputError, match=r"cannot place 4 generator actors .* within 60 s: "
                                         r"4 GPUs needed, 0 free") as e:
        ray_engine.wait_for_placement(ray, pg, 4, {"GPU": 1.0, "CPU": 1.0}, timeout_s=60,
                                      report_every_s=25, say=said.append, clock=lambda: ray.now)
    assert e.value.param == "actors" and "max_workers" in str(e.value)
    assert len(said) == 2 and ray.removed == [pg]  # reported, then the demand withdrawn


# --- which Ray, and an address that does not answer (issues 13 §4, 14) --------------------

def test_address_from_option_else_ray_address_else_a_local_instance(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert ray_engine.resolve_address(None) == ("local", "")
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.10:6379")
    assert ray_engine.resolve_address(None) == ("10.0.0.10:6379", "RAY_ADDRESS")
    assert ray_engine.resolve_address("auto") == ("auto", "--address")


def test_connect_joins_ray_address_and_says_which_first(monkeypatch, capsys):
    import socket

    listener = socket.create_server(("127.0.0.1", 0))  # something answering, like a GCS port
    addr = f"127.0.0.1:{listener.getsockname()[1]}"
    inits: list[dict] = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: inits.append(kw))
    try:
        monkeypatch.setenv("RAY_ADDRESS", addr)
        assert ray_engine.connect(RayOptions()) is True
        assert inits[-1]["address"] == addr
        assert capsys.readouterr().err.splitlines()[0] == (
            f"Ray: joining the cluster at {addr} (from RAY_ADDRESS)")
        ray_engine.connect(RayOptions(address="auto"))  # --address overrides RAY_ADDRESS
        assert inits[-1]["address"] == "auto"
        assert "auto (from --address)" in capsys.readouterr().err.splitlines()[0]
        monkeypatch.delenv("RAY_ADDRESS")
        ray_engine.connect(RayOptions())  # neither: an instance of our own, never a found one
        assert inits[-1]["address"] == "local"
        assert "starting a local Ray instance" in capsys.readouterr().err.splitlines()[0]
    finally:
        listener.close()


@pytest.mark.parametrize("via", ["option", "RAY_ADDRESS"])
def test_unreachable_address_is_refused_before_anything_is_written(tmp_path, monkeypatch, via):
    from vardist.io.conditions import InputError

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    kw = {"address": "127.0.0.1:1"} if via == "option" else {}
    if via == "RAY_ADDRESS":
        monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")
    source = "--address" if via == "option" else "RAY_ADDRESS"
    out = tmp_path / "o"
    with pytest.raises(InputError, match=rf"cannot reach the Ray cluster at 127\.0\.0\.1:1 "
                                         rf"\(from {source}\)") as e:
        vardist.search("toy-digits", classes="0", samples=1, n=4, out=out, engine="ray",
                       connect_timeout_s=5, **kw)
    assert e.value.param == "address" and "ray status" in str(e.value)
    assert not (out / "run.json").exists() and not list(out.glob("**/*.png"))


def test_cli_names_a_dead_address_and_a_dashboard_url(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from vardist_cli.main import app

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    args = ["search", "--model", "toy-digits", "--classes", "0", "--n", "4", "--engine", "ray",
            "--out", str(tmp_path / "o")]
    r = CliRunner().invoke(app, [*args, "--address", "127.0.0.1:1"])
    assert r.exit_code == 2 and "127.0.0.1:1" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "o" / "run.json").exists()
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:8265")  # the Jobs API, not a cluster
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 2 and "http://127.0.0.1:8265" in r.output and "ray://" in r.output


# --- transport (no Ray needed) ------------------------------------------------------------

def test_packed_codes_roundtrip_and_shrink():
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 4096, (2, 100, 4))
    p = Packed.pack(ids)
    assert p.data.dtype == np.uint16 and p.nbytes == ids.nbytes // 4
    assert p.unpack().dtype == ids.dtype and np.array_equal(p.unpack(), ids)
    bits = rng.integers(0, 2, (1, 3000, 36, 32)).astype(np.uint8)
    q = Packed.pack(bits)
    assert q.nbytes == bits.nbytes // 8 == 432_000  # Infinity n=3000 at scale 3
    assert np.array_equal(q.unpack(), bits)


@pytest.mark.parametrize("width", [56, 14, 3, 64])
def test_packed_bits_of_any_width(width):
    """Infinity-8B's 56-bit tokens pack to 7 bytes; widths that are not whole bytes round up."""
    bits = np.random.default_rng(width).integers(0, 2, (2, 300, 36, width)).astype(np.uint8)
    bits[0, 0, 0] = 1
    q = Packed.pack(bits)
    assert q.bits and q.nbytes == bits.size // width * -(-width // 8)
    assert q.unpack().dtype == bits.dtype and np.array_equal(q.unpack(), bits)


@pytest.mark.parametrize("code_shape", [(), (16,)])
def test_code_table_embeds_like_the_model(code_shape):
    rng = np.random.default_rng(1)
    if code_shape:
        codes = rng.integers(0, 2, (3, 50, 9, *code_shape)).astype(np.uint8)
        w = rng.normal(size=(16, 5))
        embed = lambda c: (c.astype(np.float64) @ w).astype(np.float32)  # noqa: E731
    else:
        codes = rng.integers(0, 40, (3, 50, 9))
        book = rng.normal(size=(40, 5)).astype(np.float32)
        embed = lambda c: book[c]  # noqa: E731
    table = CodeTable.build(codes, len(code_shape), embed)
    assert len(table.codes) < codes[..., 0].size if code_shape else len(table.codes) <= 40
    for b in range(3):
        np.testing.assert_array_equal(table(codes[b]), embed(codes[b]))


def test_code_table_ships_nothing_for_bits_embedded_as_themselves():
    bits = np.random.default_rng(2).integers(0, 2, (2, 300, 36, 32)).astype(np.uint8)
    as_floats = lambda c: c.astype(np.float32)  # noqa: E731  (Infinity's embedding)
    table = CodeTable.build(bits, 1, as_floats)
    assert table.codes is None and table.vectors is None
    np.testing.assert_array_equal(table(bits[1]), as_floats(bits[1]))
    affine = CodeTable.build(bits, 1, lambda c: c.astype(np.float32) * 2 - 1)
    assert affine.vectors is not None  # a real lookup when the embedding is not the identity


def test_bad_options_are_refused():
    from vardist.io.conditions import InputError

    for kw, word in (({"actors": 0}, "actors"), ({"depth": 0}, "depth"),
                     ({"address": "nonsense"}, "address"), ({"cpus_per_actor": 0}, "cpus"),
                     ({"threads": 0}, "threads"), ({"select_on": "gpu"}, "select_on")):
        with pytest.raises(InputError, match=word):
            RayOptions(**kw).check()


def test_cli_search_on_ray_loads_the_model_in_each_actor(ray_instance, tmp_path):
    """`vardist search --engine ray` with a registry model: the actors load toy-digits by name
    (nothing heavy passes through the driver); the local engine makes the same choices."""
    import pyarrow.parquet as pq
    from typer.testing import CliRunner

    from vardist.io.outputs import read_png
    from vardist_cli.main import app

    args = ["search", "--model", "toy-digits", "--classes", "3-4", "--per-class", "2",
            "--n", "30", "--batch-size", "2", "--quiet"]
    runner = CliRunner()
    r = runner.invoke(app, [*args, "--engine", "ray", "--actors", "2", "--out", str(tmp_path / "r")])
    assert r.exit_code == 0, r.output
    assert "4 images written" in r.output
    r = runner.invoke(app, [*args, "--out", str(tmp_path / "l")])
    assert r.exit_code == 0, r.output
    logs = [pq.read_table(tmp_path / d / "runlog.parquet") for d in ("r", "l")]
    assert logs[0]["chosen"].to_pylist() == logs[1]["chosen"].to_pylist()
    # the same compute in both engines (the Ray actor's teacher-forced rebuild is not counted)
    for col in ("forward_tokens", "previews", "verifier_calls"):
        assert logs[0][col].to_pylist() == logs[1][col].to_pylist()
    assert set(logs[0]["forward_tokens"].to_pylist()) == {1 + 4 + 9 + 16}
    for p in logs[1]["path"].to_pylist():  # kept state vs teacher-forced re-entry: same pixels
        a, b = (read_png(tmp_path / d / p).astype(int) for d in ("r", "l"))
        assert np.abs(a - b).max() <= 1
