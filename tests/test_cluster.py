"""cluster/: Ray launcher YAMLs pass Ray's own config validation (offline, the same two calls
`ray up` makes before it contacts a cloud), plus the checks Ray does not make: provider node
configs, GPU counts, vardist installed in setup, KubeRay manifests' required fields."""

from __future__ import annotations

import copy
import re
import shlex
from pathlib import Path

import pytest
import yaml

ray_util = pytest.importorskip("ray.autoscaler._private.util")

CLUSTER = Path(__file__).resolve().parents[1] / "cluster"
LAUNCHER = sorted(CLUSTER.glob("*.yaml"))
KUBERAY = {p.stem: yaml.safe_load(p.read_text())
           for p in sorted((CLUSTER / "kuberay").glob("*.yaml"))}

# GPUs per machine type named in the YAMLs (AWS / GCP catalogues). Ray does not check these.
AWS_GPUS = {"g5.xlarge": 1, "g5.2xlarge": 1, "g6e.xlarge": 1, "p4d.24xlarge": 8, "p5.48xlarge": 8}


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def test_every_provider_is_present():
    assert {p.stem for p in LAUNCHER} == {"aws", "gcp", "local"}
    assert set(KUBERAY) == {"raycluster", "rayjob"}


@pytest.mark.parametrize("path", LAUNCHER, ids=lambda p: p.stem)
def test_launcher_yaml_passes_ray_validation(path):
    cfg = load(path)
    assert cfg["provider"]["type"] == path.stem
    full = ray_util.prepare_config(cfg)  # merges the provider's defaults.yaml
    ray_util.validate_config(full)       # ray-schema.json + cross-field checks; raises on error


def test_ray_validation_rejects_a_typo():
    # Control: the validator used above really rejects a bad file.
    cfg = load(CLUSTER / "aws.yaml")
    bad = copy.deepcopy(cfg)
    bad["available_node_types"]["gpu_a10g"]["min_wrkers"] = 1
    with pytest.raises(Exception, match="min_wrkers"):
        ray_util.validate_config(ray_util.prepare_config(bad))


@pytest.mark.parametrize("path", LAUNCHER, ids=lambda p: p.stem)
def test_setup_installs_the_synced_checkout_and_starts_its_ray(path):
    cfg = load(path)
    mount = {k: v for k, v in cfg["file_mounts"].items() if v == "."}
    assert mount, "the repository root must be synced to the nodes"
    (target,) = mount
    installed = target.replace("~", "$HOME")
    installs = [c for c in cfg["setup_commands"] if "pip install" in c and installed in c]
    assert installs, f"no setup command installs vardist from {installed}"
    env_python = re.search(r"--python (\S+)/bin/python", installs[0]).group(1)
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in cfg[key] if "ray start" in c]
        assert starts and all(f"{env_python}/bin/ray start" in c for c in starts), key
    head = [c for c in cfg["head_start_ray_commands"] if "ray start" in c][0]
    assert "--head" in head and "--autoscaling-config" in head


def _node_types(name: str) -> dict:
    cfg = load(CLUSTER / f"{name}.yaml")
    return cfg, cfg["available_node_types"]


def test_aws_gpu_counts_match_instance_types():
    cfg, types = _node_types("aws")
    assert types[cfg["head_node_type"]]["resources"]["GPU"] == 0  # driver only
    gpu_types = [t for n, t in types.items() if n != cfg["head_node_type"]]
    assert gpu_types
    for t in gpu_types:
        itype = t["node_config"]["InstanceType"]
        assert itype in AWS_GPUS, f"unknown GPU instance type {itype}"
        assert t["resources"]["GPU"] == AWS_GPUS[itype]


def test_gcp_gpu_counts_match_accelerators():
    cfg, types = _node_types("gcp")
    assert cfg["provider"]["project_id"], "gcp needs a project_id placeholder"
    assert types[cfg["head_node_type"]]["resources"]["GPU"] == 0
    for name, t in types.items():
        nc = t["node_config"]
        assert "machineType" in nc and "disks" in nc, name
        gpus = sum(a["acceleratorCount"] for a in nc.get("guestAccelerators", []))
        assert t["resources"]["GPU"] == gpus, name
        if gpus:  # GCE refuses GPU VMs that may live-migrate
            assert {"onHostMaintenance": "TERMINATE"} in nc["scheduling"], name


def test_local_provider_lists_hosts():
    cfg = load(CLUSTER / "local.yaml")
    full = ray_util.prepare_config(cfg)
    assert full["available_node_types"]["local.cluster.node"]["max_workers"] == len(
        cfg["provider"]["worker_ips"])


# --- KubeRay --------------------------------------------------------------------------------

def _cluster_spec(name: str) -> dict:
    doc = KUBERAY[name]
    return doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"]


def _pod_checks(template: dict, where: str) -> list[dict]:
    spec = template["spec"]
    volumes = {v["name"] for v in spec.get("volumes", [])}
    for c in spec["containers"]:
        assert c["name"] and c["image"], where
        for m in c.get("volumeMounts", []):
            assert m["name"] in volumes, f"{where}: mount {m['name']} has no volume"
    return spec["containers"]


@pytest.mark.parametrize("name", ["raycluster", "rayjob"])
def test_kuberay_required_fields(name):
    doc = KUBERAY[name]
    assert doc["apiVersion"] == "ray.io/v1"
    assert doc["kind"] == {"raycluster": "RayCluster", "rayjob": "RayJob"}[name]
    assert doc["metadata"]["name"]
    spec = _cluster_spec(name)
    head = spec["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict)
    assert head["rayStartParams"].get("num-gpus") == "0", "the driver's head must not take a GPU"
    (head_c,) = _pod_checks(head["template"], "head")
    images = {head_c["image"]}
    assert spec["workerGroupSpecs"]
    for g in spec["workerGroupSpecs"]:
        assert g["groupName"] and isinstance(g["rayStartParams"], dict)
        assert 0 <= g["minReplicas"] <= g["replicas"] <= g["maxReplicas"], g["groupName"]
        (c,) = _pod_checks(g["template"], g["groupName"])
        images.add(c["image"])
        res = c["resources"]
        assert res["limits"]["nvidia.com/gpu"] == res["requests"]["nvidia.com/gpu"] == "1"
    assert len(images) == 1, "head and workers must run the same vardist image"


def test_kuberay_ray_version_matches_the_image():
    base = re.search(r"^FROM rayproject/ray:(\d+\.\d+\.\d+)-", (CLUSTER / "Dockerfile").read_text(),
                     re.M).group(1)
    for name in KUBERAY:
        assert _cluster_spec(name)["rayVersion"] == base, name


def _entrypoint() -> list[str]:
    return shlex.split(KUBERAY["rayjob"]["spec"]["entrypoint"])


def test_rayjob_runs_vardist_search_on_the_ray_engine():
    job = KUBERAY["rayjob"]["spec"]
    assert job["shutdownAfterJobFinishes"] is True
    argv = _entrypoint()
    assert argv[:2] == ["vardist", "search"]
    opts = dict(zip(argv[2::2], argv[3::2]))
    assert opts["--engine"] == "ray" and opts["--address"] == "auto"
    gpus = sum(g["replicas"] for g in job["rayClusterSpec"]["workerGroupSpecs"])
    assert int(opts["--actors"]) <= gpus, "more actors than GPU workers would never schedule"
    # Paths the job reads and writes live on the volume mounted in the head (the driver).
    head_c = job["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    mounts = [m["mountPath"] for m in head_c["volumeMounts"]]
    for key in ("--prompts", "--out", "--weights"):
        assert any(opts[key].startswith(m + "/") for m in mounts), key


def test_rayjob_entrypoint_parses_with_the_cli():
    import click
    import typer

    from vardist_cli.main import app

    group = typer.main.get_command(app)
    if "search" not in getattr(group, "commands", {}):
        pytest.skip("`vardist search` is not in the CLI yet")
    cmd = group.commands["search"]
    argv = _entrypoint()[2:]
    try:
        # resilient_parsing: parse option names and types without running the command
        cmd.make_context("search", argv, resilient_parsing=True)
    except click.UsageError as e:  # an option the CLI does not know
        pytest.fail(f"rayjob entrypoint does not parse: {e}")
    known = {o for p in cmd.params for o in p.opts}
    assert {a for a in argv if a.startswith("--")} <= known
