"""Issue 14: on an autoscaling cluster whose head has no GPU, a GPU model's generator actors ask
for GPUs and the autoscaler adds GPU nodes for them (the wait reported), instead of the run
settling for CPU actors on the head.

The cluster is Ray's fake multi-node provider (the provider behind
`ray.cluster_utils.AutoscalingCluster`): a real head with a real autoscaler whose "nodes" are
raylets on this machine with fake GPUs. `AutoscalingCluster` itself is not used: its start and
shutdown run `ray stop --force`, which would kill every Ray process of this user on the machine
(other test runs included), and this Ray install lacks the example.yaml it reads. So the head
is started here the same way, in a temp dir of its own, and only its processes are stopped.
The test body runs in a fresh Python process started with RAY_AUTH_MODE=disabled, for one
auth mode across head, fake nodes and driver. Ray reads the mode once per process, when it is
imported (setting os.environ later changes nothing in that process), and any earlier
`ray.init()` that started a local instance exports RAY_AUTH_MODE=token into the environment
(Ray 2.60, installed here, turns token auth on for a new local instance and writes
~/.ray/auth_token). A child that inherited that drove a token-mode driver against this
disabled cluster, and the Generator actors died before they ran: the failure this test had
after other Ray tests.
About 25 s on 2 cores."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("ray.autoscaler._private.fake_multi_node.node_provider")

import ray_toy_model  # noqa: E402  (tests/ is on sys.path under pytest)
from ray_toy_model import ToyScaleModel  # noqa: E402

from vardist.engine import ray as ray_engine  # noqa: E402
from vardist.engine.plan import Job, SearchSettings  # noqa: E402
from vardist.engine.ray import RayOptions  # noqa: E402
from vardist.engine.results import Recorder  # noqa: E402

pytestmark = pytest.mark.slow

# set in the child process that runs the body (see test_gpu_actors_make_the_autoscaler_...)
INNER = os.environ.get("VARDIST_AUTOSCALING_INNER") == "1"

SETTINGS = SearchSettings(scale=2, n=24, strategy="var-scaling", alpha=1.5, rep=4,
                          conflict_thresh=1.8, k=8, cfg=1.0, top_k=8, top_p=0.95, tau=1.0)
GPU_NODES = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cmdline(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text(errors="replace")
    except OSError:  # gone already, or not Linux
        return ""


def _stop(temp_dir: str) -> None:
    """Stop this cluster's processes only: those whose command line names its temp dir, and
    their children. The autoscaler goes first, so it launches no node meanwhile."""
    for _ in range(10):
        pids = subprocess.run(["pgrep", "-f", temp_dir], capture_output=True,
                              text=True).stdout.split()
        if not pids:
            return
        kids = [c for p in pids for c in subprocess.run(["pgrep", "-P", p], capture_output=True,
                                                        text=True).stdout.split()]
        monitors = [p for p in pids if "monitor.py" in _cmdline(p)]
        for group in (monitors, pids + kids):
            subprocess.run(["kill", "-9", *group], capture_output=True)
        time.sleep(1)


def _require_auth_disabled() -> None:
    """Head, fake nodes (they inherit this environment) and this driver must all run with
    token auth off. Only the environment this process started with counts: Ray read the mode
    when it was imported (see the module docstring)."""
    if os.environ.get("RAY_AUTH_MODE") != "disabled":
        pytest.fail("run with RAY_AUTH_MODE=disabled in the environment from the start (the "
                    "outer test does this)")
    try:
        from ray._raylet import AuthenticationMode, get_authentication_mode
    except ImportError:  # Ray before 2.52: no token auth at all
        return
    if get_authentication_mode() != AuthenticationMode.DISABLED:
        pytest.fail("Ray in this process is in token auth mode although RAY_AUTH_MODE=disabled: "
                    "the variable was changed after Ray was imported")


@pytest.fixture(scope="module")
def autoscaling_cluster():
    """A CPU-only head (1 CPU, 0 GPU) whose autoscaler may add up to GPU_NODES nodes of
    {CPU: 1, GPU: 1}; this process is connected to it as the driver."""
    if ray.is_initialized():
        pytest.skip("this process is still connected to another Ray instance")
    _require_auth_disabled()
    # short: Ray's socket paths under it must stay within the 107-byte limit of AF_UNIX
    temp_dir = tempfile.mkdtemp(prefix="vardist-as-", dir="/tmp")
    port = _free_port()
    gcs = f"{ray._private.services.get_node_ip_address()}:{port}"
    config = {
        "cluster_name": "vardist-fake-autoscaling", "max_workers": GPU_NODES,
        "upscaling_speed": 1.0, "idle_timeout_minutes": 5,
        # nodes come up by themselves: no SSH updaters (which this provider cannot serve)
        "provider": {"type": "fake_multinode", "gcs_address": gcs,
                     "disable_node_updaters": True, "disable_launch_config_check": True},
        "auth": {"ssh_user": "ubuntu"},
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 1}, "node_config": {}, "max_workers": 0},
            "gpu": {"resources": {"CPU": 1, "GPU": 1}, "node_config": {}, "min_workers": 0,
                    "max_workers": GPU_NODES}},
        "head_node_type": "ray.head.default",
        **{key: [] for key in ("cluster_synced_files", "rsync_exclude", "rsync_filter",
                               "initialization_commands", "setup_commands",
                               "head_setup_commands", "worker_setup_commands",
                               "head_start_ray_commands", "worker_start_ray_commands")},
        "file_mounts": {}, "file_mounts_sync_continuously": False,
    }
    config_path = Path(temp_dir) / "autoscaling.json"
    config_path.write_text(json.dumps(config))
    env = dict(os.environ, RAY_FAKE_CLUSTER="1", AUTOSCALER_UPDATE_INTERVAL_S="1",
               RAY_USAGE_STATS_ENABLED="0")
    ray.cloudpickle.register_pickle_by_value(ray_toy_model)
    try:
        # the ray CLI of this interpreter's Ray (an unactivated venv may have no `ray` on PATH)
        start = subprocess.run([sys.executable, "-m", "ray.scripts.scripts", "start", "--head",
                                f"--port={port}", f"--autoscaling-config={config_path}",
                                "--num-cpus=1",
                                "--num-gpus=0", "--include-dashboard=false",
                                f"--temp-dir={temp_dir}", "--disable-usage-stats"],
                               env=env, capture_output=True, text=True)
        assert start.returncode == 0, start.stdout[-2000:] + start.stderr[-2000:]
        ray.init(address=gcs, logging_level="ERROR", log_to_driver=False,
                 configure_logging=False)
        yield gcs
    finally:
        ray.shutdown()
        _stop(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_gpu_actors_make_the_autoscaler_add_gpu_nodes():
    """Runs the body below in its own interpreter and requires it to pass there."""
    if INNER:
        pytest.skip("the outer test; this is the child process")
    # RAY_AUTH_MODE: whatever this process inherited or an earlier ray.init exported (token),
    # the child's Ray must read "disabled" at import. RAY_ADDRESS: the child joins its own
    # cluster, never one named by the caller's environment.
    env = dict(os.environ, VARDIST_AUTOSCALING_INNER="1", RAY_AUTH_MODE="disabled")
    env.pop("RAY_ADDRESS", None)
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        f"{__file__}::test_autoscaling_body"],
                       env=env, capture_output=True, text=True, timeout=600,
                       cwd=Path(__file__).resolve().parent.parent)
    assert r.returncode == 0 and "1 passed" in r.stdout, r.stdout[-4000:] + r.stderr[-2000:]


@pytest.mark.skipif(not INNER, reason="run in a child process by the test above")
def test_autoscaling_body(autoscaling_cluster, tmp_path, monkeypatch, capsys):
    from vardist.models import memory

    assert ray.cluster_resources().get("GPU", 0) == 0  # the head alone: no GPU yet
    # The toy model stands in for a GPU model (a real one needs its checkpoint): the memory
    # plan is what says "GPU model" (wants_gpu), so that is the one thing replaced.
    monkeypatch.setattr(memory, "wants_gpu", lambda fp: True)
    seen: list[dict] = []

    def look(done, total):  # while the actors live: which GPU each holds
        if done and not seen:
            names = [a for a in ray.util.list_named_actors() if a.startswith("vardist-")]
            seen.extend(ray.get([ray.get_actor(a).info.remote() for a in names]))

    job = Job(model=ToyScaleModel(), settings=dataclasses.replace(SETTINGS),
              conditions=[(c, c) for c in range(2)], samples=2, seed=7, batch_size=2,
              out=str(tmp_path / "run"))
    res = ray_engine.run(job, None, Recorder(job, {}), look,
                         options=RayOptions(actors=GPU_NODES, placement_timeout_s=300,
                                            report_every_s=0.5))
    assert res.stats["actors"] == GPU_NODES and len(res) == 4
    assert ray.cluster_resources().get("GPU") == GPU_NODES  # the autoscaler added them
    assert len(seen) == GPU_NODES and all(len(i["gpu_ids"]) == 1 for i in seen)
    err = capsys.readouterr().err
    # the wait was reported while nodes were missing (how many the autoscaler had already
    # added by the first report is a race: the report's arithmetic is what must hold)
    waits = [(int(a), int(r)) for a, r in re.findall(
        rf"waiting for {GPU_NODES} GPUs, (\d+) available, (\d+) requested from the autoscaler",
        err)]
    assert waits, err
    assert all(a + r == GPU_NODES for a, r in waits) and waits[0][0] < GPU_NODES, err
