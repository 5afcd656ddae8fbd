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
    extras = set(re.search(r"vardist\[([\w,]+)\]", installs[0]).group(1).split(","))
    assert len(extras & {"cpu", "gpu"}) == 1, "name exactly one FAISS flavour (cpu or gpu)"
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


# --- access: no open dashboard, no unpinned installers, a lean image (issue 13 §2) -----------

ALL_FILES = [*LAUNCHER, *sorted((CLUSTER / "kuberay").glob("*.yaml"))]


def _ray_starts(cfg: dict) -> list[str]:
    return [c for key in ("head_start_ray_commands", "worker_start_ray_commands")
            for c in cfg[key] if "ray start" in c]


def _head_params(path: Path) -> tuple[dict, dict]:
    doc = yaml.safe_load(path.read_text())
    spec = doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"]
    return spec, spec["headGroupSpec"]["rayStartParams"]


def _loopback(host: str | None) -> bool:
    # Ray's own default for the dashboard is localhost; Ray Client binds the node address
    return host is None or host in ("127.0.0.1", "localhost", "::1")


@pytest.mark.parametrize("path", ALL_FILES, ids=lambda p: p.stem)
def test_dashboard_is_loopback_or_token_protected(path):
    """Every cluster file either keeps the dashboard (and Ray Client) on loopback or turns on
    Ray's token authentication with a token it does not spell out."""
    text = path.read_text()
    if path.parent.name == "kuberay":
        spec, params = _head_params(path)
        token = spec.get("authOptions", {}).get("mode") == "token"
        loopback = _loopback(params.get("dashboard-host"))
        assert spec["headGroupSpec"].get("serviceType", "ClusterIP") == "ClusterIP", \
            "the head Service must not be exposed outside Kubernetes"
    else:
        cfg = load(path)
        starts = _ray_starts(cfg)
        (head,) = [c for c in starts if "--head" in c]
        host = re.search(r"--dashboard-host[= ](\S+)", head)
        loopback = _loopback(host.group(1) if host else None)
        # token mode on every node that starts Ray, and the token file synced to them
        token = (all("RAY_AUTH_MODE=token" in c for c in starts)
                 and any(k.endswith(".ray/auth_token") for k in cfg["file_mounts"]))
        # the driver (ray exec ... vardist search) runs with token mode too
        assert not token or any("RAY_AUTH_MODE=token" in c for c in cfg["setup_commands"])
        assert loopback, f"{path.name}: the head's dashboard must bind to loopback"
    assert loopback or token, f"{path.name}: dashboard open without token authentication"
    assert "0.0.0.0" not in text or token, f"{path.name}: 0.0.0.0 without token authentication"
    assert "RAY_AUTH_TOKEN:" not in text and not re.search(r"RAY_AUTH_TOKEN=\S", text), \
        "a token written into a cluster file is no secret"


def test_the_access_check_catches_the_old_files():
    # Control: the rule above fails for a head started as the files used to start it.
    cfg = load(CLUSTER / "aws.yaml")
    head = [c for c in cfg["head_start_ray_commands"] if "--head" in c][0]
    old = head.replace("RAY_AUTH_MODE=token ", "").replace("127.0.0.1", "0.0.0.0")
    host = re.search(r"--dashboard-host[= ](\S+)", old).group(1)
    assert not _loopback(host) and "RAY_AUTH_MODE=token" not in old


@pytest.mark.parametrize("path", [*ALL_FILES, CLUSTER / "Dockerfile"], ids=lambda p: p.name)
def test_no_unpinned_installer_is_piped_to_a_shell(path):
    # commands only (comments may name what they avoid)
    text = "\n".join(ln for ln in path.read_text().splitlines() if not ln.lstrip().startswith("#"))
    assert not re.search(r"(curl|wget)[^|\n]*\|\s*(ba|z)?sh\b", text), \
        f"{path.name}: a downloaded script piped to a shell"
    for pkg in re.findall(r"pip install[^\n]*?\b(uv)\b(\S*)", text):
        assert pkg[1].startswith("=="), f"{path.name}: {pkg[0]} installed without a pinned version"


def _dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule, enough for these patterns: the last pattern matching the path or one of
    its parent folders wins; `!` re-includes; `**/` matches any number of folders, none too."""
    from fnmatch import fnmatchcase

    parts = path.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    ignored = False
    for raw in patterns:
        neg = raw.startswith("!")
        pat = raw.lstrip("!").rstrip("/")
        alts = {pat, pat[3:]} if pat.startswith("**/") else {pat}
        if any(fnmatchcase(p, a) for p in prefixes for a in alts):
            ignored = not neg
    return ignored


def test_dockerignore_keeps_history_runs_envs_and_weights_out_of_the_image():
    lines = (CLUSTER.parent / ".dockerignore").read_text().splitlines()
    patterns = [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]
    for p in (".git/HEAD", "runs/imagenet/run.json", "examples/runs/x/00000.png",
              ".venv/bin/python", "venv/lib/site.py", "weights/var_d16.pth", "ckpt/infinity_2b.pth",
              "w/model.safetensors", "vardist/__pycache__/api.cpython-311.pyc",
              ".pytest_cache/v", ".ray/auth_token"):
        assert _dockerignored(p, patterns), f"{p} would be copied into the image"
    # the package itself, with the small weights it ships, must still be there
    for p in ("pyproject.toml", "vardist/api.py", "cli/main.py", "README.md",
              "vardist/zoo/weights/toy-digits-var.safetensors",
              "vardist/zoo/weights/toy-digits.json"):
        assert not _dockerignored(p, patterns), f"{p} is needed in the image"


# --- versions and batch sizes stated in the files (issue 14) ---------------------------------

def test_kuberay_manifests_state_the_operator_version_their_fields_need():
    """RayJob's submitterConfig needs KubeRay >= 1.2 and authOptions >= 1.5.1: the stated
    minimum must cover every field the manifest uses."""
    needs = {"submitterConfig": (1, 2, 0), "authOptions": (1, 5, 1)}
    for path in sorted((CLUSTER / "kuberay").glob("*.yaml")):
        text = path.read_text()
        stated = re.search(r"KubeRay operator >= (\d+)\.(\d+)(?:\.(\d+))?", text)
        assert stated, f"{path.name} does not state the KubeRay version it needs"
        version = tuple(int(v or 0) for v in stated.groups())
        for field_name, minimum in needs.items():
            if re.search(rf"^\s*{field_name}:", text, re.M):
                assert version >= minimum, f"{path.name}: {field_name} needs KubeRay {minimum}"
    docs = (CLUSTER.parent / "docs" / "cluster.md").read_text()
    assert "1.5.1" in docs


def _stated_batches(text: str) -> list[tuple[int, str, int | None]]:
    """(GPU GB, model, batch or None for 'does not fit') for every comment block of the form
    '(24 GB) ... var-d30 --batch-size 20, ...; infinity-8b does not fit.'"""
    out = []
    for block in re.split(r"\n(?!\s*#)", text):
        gb = re.search(r"\((\d+) GB\)", block)
        if not gb or "--batch-size" not in block:
            continue
        flat = " ".join(ln.strip().lstrip("#") for ln in block.splitlines())
        out += [(int(gb.group(1)), m, int(b))
                for m, b in re.findall(r"([a-z][\w-]+) --batch-size (\d+)", flat)]
        out += [(int(gb.group(1)), m, None)
                for m in re.findall(r"([a-z][\w-]+) does not fit", flat)]
    return out


@pytest.mark.parametrize("name", ["aws", "gcp"])
def test_batch_size_stated_beside_each_gpu_type_fits_the_memory_plan(name):
    memory = pytest.importorskip("vardist.models.memory")
    from vardist.models import registry

    cfg, types = _node_types(name)
    text = (CLUSTER / f"{name}.yaml").read_text()
    stated = _stated_batches(text)
    gpu_types = [n for n, t in types.items() if t["resources"].get("GPU")]
    assert len({gb for gb, _, _ in stated}) >= 1 and len(stated) >= 2 * len(gpu_types)
    assert any(m == "infinity-2b" for _, m, _ in stated)
    for gb, model, batch in stated:
        d = registry.get_spec(model).defaults
        fits = memory.largest_batch(memory.footprint(model), gb * memory.GB, n=d.n,
                                    scale=d.scale, cfg=d.cfg)
        assert (batch or 0) == fits, f"{name}.yaml says {model} batch {batch} on {gb} GB; " \
                                     f"the memory plan says {fits}"


def test_rayjob_batch_fits_the_smallest_gpu_named():
    memory = pytest.importorskip("vardist.models.memory")
    from vardist.models import registry

    argv = _entrypoint()
    opts = dict(zip(argv[2::2], argv[3::2]))
    model = opts["--model"]
    d = registry.get_spec(model).defaults
    n = int(opts.get("--n", d.n))
    fits = memory.largest_batch(memory.footprint(model), 24 * memory.GB, n=n, scale=d.scale,
                                cfg=d.cfg)
    assert 1 <= int(opts["--batch-size"]) <= fits


def test_infinity_2b_batches_quoted_in_comments_and_docs_fit_the_memory_plan():
    """'2 on 24 GB, 5 on 40 GB' beside infinity-2b (local.yaml, KubeRay) and the docs table."""
    memory = pytest.importorskip("vardist.models.memory")
    from vardist.models import registry

    d = registry.get_spec("infinity-2b").defaults
    fp = memory.footprint("infinity-2b")

    def fits(gb: int) -> int:
        return memory.largest_batch(fp, gb * memory.GB, n=d.n, scale=d.scale, cfg=d.cfg)

    quoted = []
    for path in ALL_FILES:
        for block in re.split(r"\n(?!\s*#)", path.read_text()):
            flat = " ".join(ln.strip().lstrip("#") for ln in block.splitlines())
            if "infinity-2b" in flat:
                quoted += [(path.name, int(b), int(gb))
                           for b, gb in re.findall(r"\b(\d+) on (\d+) GB", flat)]
    assert {name for name, _, _ in quoted} >= {"local.yaml", "raycluster.yaml", "rayjob.yaml"}
    docs = (CLUSTER.parent / "docs" / "cluster.md").read_text()
    header = next(ln for ln in docs.splitlines() if ln.startswith("| GPU (memory)"))
    col = [c.strip() for c in header.split("|")].index("infinity-2b (n 3000)")
    rows = [ln for ln in docs.splitlines() if re.match(r"\| [^|]*\(?\d+ GB", ln)]
    assert len(rows) >= 4
    for ln in rows:
        cells = [c.strip() for c in ln.split("|")]
        gb = int(re.search(r"(\d+) GB", cells[1]).group(1))
        quoted.append(("docs/cluster.md", int(cells[col]), gb))
    for where, batch, gb in quoted:
        assert batch == fits(gb), f"{where}: infinity-2b batch {batch} on {gb} GB; the plan " \
                                  f"says {fits(gb)}"
