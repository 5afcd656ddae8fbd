"""Refusals import no torch (issue 13, item 3: "each refusal in under a second").

A fresh `vardist search` spent 2.4 s of its 3 s refusal importing torch, through the model
registry, the family spec modules and the API's checks. Here a fresh process runs the CLI's
refusals one after another and says, after each, which of torch, ray, faiss and sklearn it has
imported: none may be, and every refusal must exit 2 naming the bad value with nothing written.
The time itself is measured by benchmarks/cli_refusal.py, not asserted here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from vardist.engine.plan import cuda_ruled_out

HEAVY = ("torch", "ray", "faiss", "sklearn")

# Runs each case (argv after `vardist search`, given as JSON on stdin) through the CLI in this
# one process, and prints per case its exit code, its output and the heavy modules imported so
# far (imports only accumulate, so the first case that imports one is the one reported).
DRIVER = f"""
import json, sys
from typer.testing import CliRunner
from vardist_cli.main import app

runner = CliRunner()
for args in json.load(sys.stdin):
    r = runner.invoke(app, ["search", *args], env={{"COLUMNS": "300"}})
    print(json.dumps({{"code": r.exit_code, "output": r.output,
                      "heavy": [m for m in {HEAVY!r} if m in sys.modules]}}))
"""


def flat(output: str) -> str:
    """CLI output without rich's box drawing and line wrapping."""
    return " ".join(output.translate({ord(c): " " for c in "│╭╮╰╯─"}).split())


def run_fresh(cases: list[list[str]], env: dict[str, str] | None = None) -> list[dict]:
    proc = subprocess.run([sys.executable, "-c", DRIVER], input=json.dumps(cases),
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()]


def test_cli_refusals_import_no_torch(tmp_path, fixtures_dir, monkeypatch):
    monkeypatch.delenv("VARDIST_WEIGHTS", raising=False)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a red circle"}\n{"prompt": oops}\n')
    good = tmp_path / "good.jsonl"
    good.write_text('{"prompt": "a red circle"}\n')
    missing = tmp_path / "none.jsonl"
    flex = fixtures_dir / "flexvar-tiny"
    # (argv after `vardist search`, what the message must hold); --out is added per case
    cases = [
        (["--model", "var-d16", "--classes", "0-1000000000"],
         "class 1000 is outside this model's range 0..999 (in '0-1000000000')"),
        (["--model", "nosuch", "--classes", "0"], "unknown model 'nosuch'"),
        (["--model", "toy-digits", "--classes", "0", "--cfg", "inf"],
         "cfg must be a finite number, got inf"),
        (["--model", "var-d16", "--classes", "0", "--alpha", "nan"],
         "alpha must be a finite number, got nan"),
        (["--model", "var-d16", "--classes", "0-9", "--per-class", "1000000000"],
         "10 classes x 1000000000 samples"),
        (["--model", "var-d16", "--classes", "0", "--n", "1000000000"],
         "n=1000000000 needs at least"),
        (["--model", "flexvar-d16", "--classes", "0", "--schedule", "1,2,3,1000", "--device",
          "cpu"], "schedule 1,2,3,1000 needs at least"),
        (["--model", "flexvar-tiny", "--weights", str(flex), "--classes", "0", "--schedule",
          "1,2,3,1000", "--device", "cpu"], "schedule 1,2,3,1000 needs at least"),
        (["--model", "flexvar-d16", "--classes", "0", "--schedule", "3,2,1"],
         "strictly increasing side lengths, got [3, 2, 1]"),
        (["--model", "toy-digits", "--classes", "0", "--device", "potato"],
         "device 'potato' is not a torch device"),
        (["--model", "var-d16", "--classes", "0", "--device", "cuda:x"],
         "device 'cuda:x' is not a torch device"),
        (["--model", "toy-shapes", "--prompts", str(missing)],
         f"prompt file {missing} does not exist"),
        (["--model", "toy-shapes", "--prompts", str(bad)], "bad.jsonl:2: not valid JSON"),
        (["--model", "toy-digits", "--prompts", str(good)],
         "model toy-digits is class-conditional"),
        (["--model", "infinity-2b", "--classes", "0"], "model infinity-2b takes text prompts"),
    ]
    outs = [tmp_path / f"out{i}" for i in range(len(cases))]
    results = run_fresh([[*args, "--out", str(out), "--quiet"]
                         for (args, _), out in zip(cases, outs)])
    assert len(results) == len(cases)
    for (args, needle), out, r in zip(cases, outs, results):
        assert r["code"] == 2, (args, r["output"])
        assert needle in flat(r["output"]), (args, r["output"])
        assert not out.exists(), args
        assert r["heavy"] == [], f"{args} imported {r['heavy']}"


@pytest.mark.skipif(not cuda_ruled_out(), reason="a GPU may be here: its memory is torch's to "
                                                 "tell")
def test_schedule_refusal_on_the_default_device_imports_no_torch(tmp_path):
    """Without --device the budget is the default device's: on a machine where no GPU can be
    (no GPU device files), the host's, read without torch."""
    out = tmp_path / "o"
    [r] = run_fresh([["--model", "flexvar-d16", "--classes", "0", "--schedule", "1,2,3,1000",
                      "--out", str(out), "--quiet"]])
    assert r["code"] == 2 and "schedule 1,2,3,1000 needs at least" in flat(r["output"])
    assert "of this machine's memory" in flat(r["output"]) and r["heavy"] == []


def test_api_checks_and_registry_import_no_torch():
    """vardist.search's refusals, the registry and every family's specs, without torch; the
    public names of the model packages still import (lazily)."""
    code = f"""
import json, sys
import vardist
from vardist.io.conditions import InputError
from vardist.models import GenState, Sampling, ScaleWiseGenerator, get_spec, specs
from vardist.models.flexvar.specs import official_configs

names = sorted(specs())
vae_cfg, var_cfg = official_configs(16)
refused = []
for kwargs in (dict(model="toy-shapes", prompts={{"prompt": "a cat"}}),
               dict(model="toy-digits", classes="0", out=""),
               dict(model="toy-digits", classes="0", alpha="2"),
               dict(model="toy-digits", classes=3.0),
               dict(model="var-d16", classes="0", n=10**9, out="o"),
               dict(model="flexvar-d16", classes="0", schedule=[1, 2, 3, 1000], device="cpu")):
    try:
        vardist.search(**kwargs)
    except InputError as e:
        refused.append(e.param)
print(json.dumps([len(names), var_cfg.embed_dim, refused,
                  [m for m in {HEAVY!r} if m in sys.modules]]))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, cwd=Path(__file__).parent)
    assert out.returncode == 0, out.stderr
    count, width, refused, heavy = json.loads(out.stdout)
    assert count >= 10 and width == 1024
    assert refused == ["prompts", "out", "alpha", "classes", "n", "schedule"]
    assert heavy == []


@pytest.mark.parametrize("package", ["vardist.models", "vardist.models.var",
                                     "vardist.models.infinity", "vardist.models.flexvar"])
def test_lazy_package_names_resolve(package):
    """Every name a model package lists in __all__ imports, and is the defining module's own
    object (the lazy __getattr__ hands out the same classes the modules use)."""
    import importlib

    pkg = importlib.import_module(package)
    for name in pkg.__all__:
        value = getattr(pkg, name)
        home = getattr(value, "__module__", None)
        if home is not None and home.startswith("vardist."):
            assert getattr(importlib.import_module(home), name) is value, (package, name)
        assert name in dir(pkg)
    with pytest.raises(AttributeError, match="has no attribute 'nonesuch'"):
        getattr(pkg, "nonesuch")


def test_gpu_device_files_decide_whether_torch_is_asked(monkeypatch, tmp_path):
    """cuda_ruled_out: no GPU device file (Linux) means no GPU for torch either, so the device
    a run defaults to is the CPU, found without torch; one file present means torch decides."""
    from vardist.engine import plan

    monkeypatch.setattr(plan.sys, "platform", "linux")
    monkeypatch.setattr(plan, "_GPU_DEVICE_FILES", (str(tmp_path / "nvidia[0-9]*"),))
    assert plan.cuda_ruled_out() and plan.device_type(None) == "cpu"
    (tmp_path / "nvidia0").touch()
    assert not plan.cuda_ruled_out()
    assert plan.device_type("cuda:1") == "cuda" and plan.device_type("cpu") == "cpu"


def test_a_pool_is_checked_against_ram_before_a_larger_gpu(monkeypatch):
    """The selection holds a batch's pool in RAM whatever the device: a pool that fits a
    141 GB GPU but not 64 GB of RAM is refused naming the RAM."""
    from vardist.api import plan_search
    from vardist.io.conditions import InputError

    GB = 10 ** 9
    monkeypatch.setattr("vardist.api.memory_budget", lambda device: (
        (64 * GB, "the 64 GB of this machine's memory") if device == "cpu"
        else (141 * GB, "the 141 GB of GPU H200")))
    # toy-digits at scale 1: 4 tokens x 12 bytes x 8 items = 384 bytes a candidate: ~115 GB
    with pytest.raises(InputError, match="more than the 64 GB of this machine's memory") as err:
        plan_search("toy-digits", classes="0", n=300_000_000)  # plans only: nothing runs
    assert err.value.param == "n"
    job, _ = plan_search("toy-digits", classes="0", n=1_000_000)  # fits both
    assert job.settings.n == 1_000_000


def _no_verifier_weights_env(tmp_path: Path) -> dict[str, str]:
    """This environment without $VARDIST_WEIGHTS and with an empty Hugging Face cache: 'missing'
    must not depend on what the machine running the tests has downloaded."""
    import os

    cache = tmp_path / "empty-hf-cache"
    cache.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "VARDIST_WEIGHTS"}
    return dict(env, HF_HUB_CACHE=str(cache), HF_HOME=str(tmp_path / "empty-hf-home"))


def test_cli_verifier_refusals_import_no_torch(tmp_path):
    """The verifier's checks (name, input, conditions, --rerank, weights files) run on the
    registry's specs, which import no torch: each is refused before the model loads, naming
    the value, with nothing written."""
    empty = tmp_path / "empty-weights"
    empty.mkdir()
    other = tmp_path / "other.jsonl"
    other.write_text('{"prompt": "a photo of a cat"}\n')
    shapes = ["--model", "toy-shapes", "--prompts", "toy-geneval"]
    cases = [
        ([*shapes, "--verifier", "nosuch", "--rerank", "4"],
         "unknown verifier 'nosuch'; built in: aesthetic, clip,"),
        ([*shapes, "--verifier", "clip", "--rerank", "4"],
         "verifier 'clip' needs the Hugging Face model folder clip-vit-large-patch14"),
        ([*shapes, "--verifier", "pickscore", "--verifier-weights", str(empty)],
         f"not found in --verifier-weights {empty}"),
        (["--model", "toy-digits", "--classes", "0", "--verifier", "toy-judge",
          "--verifier-weights", str(empty)],
         f"verifier 'toy-judge' needs judge.safetensors in {empty}, which lacks it"),
        ([*shapes, "--rerank", "4"], "rerank needs a verifier"),
        ([*shapes, "--verifier-weights", str(empty)], "verifier_weights needs a verifier"),
        ([*shapes, "--verifier", "toy-geneval", "--rerank", "0"],
         "rerank must be >= 1 (candidates finished and scored per image), got 0"),
        (["--model", "toy-digits", "--classes", "0", "--verifier", "toy-geneval"],
         "verifier 'toy-geneval' scores images against prompt conditions, and this run has "
         "classes"),
        (["--model", "toy-shapes", "--prompts", str(other), "--verifier", "toy-geneval"],
         "e.g. 'a photo of a cat'"),
    ]
    outs = [tmp_path / f"out{i}" for i in range(len(cases))]
    results = run_fresh([[*args, "--out", str(out), "--quiet"]
                         for (args, _), out in zip(cases, outs)],
                        env=_no_verifier_weights_env(tmp_path))
    assert len(results) == len(cases)
    for (args, needle), out, r in zip(cases, outs, results):
        assert r["code"] == 2, (args, r["output"])
        assert needle in flat(r["output"]), (args, r["output"])
        assert not out.exists(), args
        assert r["heavy"] == [], f"{args} imported {r['heavy']}"


def test_verifier_listing_and_api_checks_import_no_torch(tmp_path):
    """`vardist verifiers` (the status of every built-in) and vardist.search's verifier
    refusals, in a fresh process: no torch, and each refusal names the value. The process
    takes this machine for one with a GPU (whose checks ask torch): the verifier is checked
    before them, so even device="cuda" is refused without torch."""
    code = f"""
import json, sys
from typer.testing import CliRunner
import vardist
import vardist.engine.plan
vardist.engine.plan.cuda_ruled_out = lambda: False  # as where /dev/nvidia* exists
from vardist.io.conditions import InputError
from vardist.verifiers import MissingVerifierWeights, get_spec, specs, status
from vardist_cli.main import app

listing = CliRunner().invoke(app, ["verifiers"], env={{"COLUMNS": "300"}})
refused = []
for kwargs in (dict(verifier="nosuch"), dict(verifier="clip", rerank=2),
               dict(verifier="toy-judge"), dict(rerank=2),
               dict(verifier="nosuch", device="cuda"), dict(verifier="clip", device="cuda:0")):
    try:
        vardist.search("toy-shapes", prompts="toy-geneval", out={str(tmp_path / "o")!r},
                       **kwargs)
    except (InputError, MissingVerifierWeights) as e:
        refused.append([type(e).__name__, getattr(e, "param", None), str(e)])
print(json.dumps([listing.exit_code, listing.output, sorted(specs()),
                  {{s.name: s.found for s in status()}}, refused,
                  [m for m in {HEAVY!r} if m in sys.modules]]))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, env=_no_verifier_weights_env(tmp_path))
    assert proc.returncode == 0, proc.stderr
    code_, listing, names, found, refused, heavy = json.loads(proc.stdout)
    assert code_ == 0 and all(name in listing for name in names), listing
    assert {"clip", "pickscore", "aesthetic", "hpsv2", "image-reward", "toy-judge",
            "toy-geneval"} <= set(names)
    # the toy verifiers read shipped weights or none; the others' caches are empty here
    assert found["toy-geneval"] and not found["clip"] and not found["hpsv2"]
    assert "clip: verifier 'clip' needs the Hugging Face model folder" in flat(listing)
    assert [(kind, param) for kind, param, _ in refused] == [
        ("InputError", "verifier"), ("MissingVerifierWeights", None),
        ("InputError", "verifier"), ("InputError", "rerank"), ("InputError", "verifier"),
        ("MissingVerifierWeights", None)]
    for needle, (_, _, message) in zip(("'nosuch'", "'clip'", "'toy-judge'", "rerank",
                                        "'nosuch'", "'clip'"), refused):
        assert needle in message, message
    assert not (tmp_path / "o").exists()
    assert heavy == []


def test_every_builtin_verifier_builds_through_its_named_function():
    """A spec names its builder by module and function (imported when the verifier loads): each
    name resolves to a function of the implementation module, and the toy verifiers load and
    score through it."""
    import importlib

    import numpy as np

    import vardist.verifiers as verifiers
    from vardist.verifiers.builtin import LazyBuild

    for name, spec in verifiers.specs().items():
        assert isinstance(spec.build, LazyBuild), name
        module = importlib.import_module(f"vardist.verifiers.{spec.build.module}")
        assert callable(getattr(module, spec.build.function)), name
    judge = verifiers.load("toy-judge", device="cpu")
    assert type(judge).__name__ == "ToyJudge" and judge.name == "toy-judge"
    rewards = judge.score(np.zeros((2, 16, 16, 3), np.uint8), [3, 7])
    assert rewards.shape == (2,) and np.all((rewards >= 0) & (rewards <= 1))
