"""Bad input, refused before any work (issue 13, item 3; the device part of item 4).

One table for the CLI and one for the Python API. Every case asserts the exit code or the
exception (and the argument it names), that the message names the bad value, that no model was
built and that nothing was written to the output folder. How long a refusal takes is
benchmarks/cli_refusal.py's to measure (tests/test_refusal_imports.py: no torch on the way).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from scalewise_double import register_doubles
from vardist.io.conditions import InputError
from vardist_cli.main import app

runner = CliRunner()
GB = 2 ** 30


def flat(output: str) -> str:
    """CLI output without rich's box drawing and line wrapping."""
    return " ".join(output.translate({ord(c): " " for c in "│╭╮╰╯─"}).split())


def nothing_written(out: Path) -> bool:
    return not out.exists() or not any(out.iterdir())


@pytest.fixture
def built(monkeypatch):
    """Test-double models (the list of those built), and a 64 GB machine, so that the memory
    refusals do not depend on where the tests run."""
    monkeypatch.delenv("VARDIST_WEIGHTS", raising=False)
    monkeypatch.setattr("vardist.api.memory_budget",
                        lambda device: (64 * GB, "the 64 GB of this machine's memory"))
    return register_doubles(monkeypatch)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


FLEX = "FLEXVAR_TINY"  # replaced by the flexvar-tiny fixture folder
BAD_JSONL = "BAD_JSONL"  # replaced by a prompt file whose second line is not JSON
MISSING = "MISSING"      # replaced by a file that does not exist
GEN = "GEN"              # replaced by a valid one-prompt file

# (arguments after `vardist search`, text the message must hold). The model is test-double
# (classes 0-9, nothing loads) unless the case says otherwise.
CLI_CASES = [
    # sizes, by arithmetic
    (["--classes", "0-1000000000"], "'--classes': class 10 is outside this model's range 0..9 "
                                    "(in '0-1000000000')"),
    (["--classes", "0-9", "--per-class", "1000000000"], "10 classes x 1000000000 samples"),
    (["--classes", "0-9", "--n", "1000000000"], "n=1000000000 needs at least"),
    (["--model", "flexvar-tiny", "--weights", FLEX, "--classes", "0",
      "--schedule", "1,2,3,1000"], "schedule 1,2,3,1000 needs at least"),
    # floats: finite, in range
    (["--classes", "0", "--cfg", "inf"], "'--cfg': cfg must be a finite number, got inf"),
    (["--classes", "0", "--alpha", "inf"], "'--alpha': alpha must be a finite number, got inf"),
    (["--classes", "0", "--tau", "inf"], "'--tau': tau must be a finite number, got inf"),
    (["--classes", "0", "--conflict-thresh", "inf"], "conflict_thresh must be a finite number, "
                                                     "got inf"),
    (["--classes", "0", "--top-p", "nan"], "'--top-p': top_p must be a finite number, got nan"),
    (["--classes", "0", "--cfg", "-inf"], "'--cfg': cfg must be a finite number, got -inf"),
    (["--classes", "0", "--top-p", "1.5"], "top_p must be in [0, 1] (0 disables it), got 1.5"),
    (["--classes", "0", "--alpha", "0"], "'--alpha': alpha must be > 0, got 0.0"),
    (["--classes", "0", "--tau", "-1"], "'--tau': tau must be > 0, got -1.0"),
    # devices
    (["--classes", "0", "--device", "potato"], "'--device': device 'potato' is not a torch "
                                               "device"),
    (["--classes", "0", "--device", "cuda:x"], "device 'cuda:x' is not a torch device"),
    pytest.param(["--classes", "0", "--device", "cuda"], "device 'cuda': this torch build",
                 marks=pytest.mark.skipif(_cuda(), reason="a CUDA build with a GPU")),
    # options that would be dropped silently
    (["--classes", "0", "--grid"], "'--grid': grid only applies to prompt runs"),
    (["--classes", "0", "--weights", "WDIR"], "'--weights': model test-double does not read "
                                              "weights from a folder"),
    (["--classes", "0", "--weights", "WDIR"], "so weights='WDIR' would be ignored"),
    (["--model", "infinity-tiny", "--prompts", GEN, "--weights", "WDIR"],
     "model infinity-tiny does not read weights"),
    (["--classes", "0", "--samples", "2", "--per-class", "3"], "--samples 2 and --per-class 3 "
                                                               "are the same setting"),
    (["--classes", "0", "--per-class", "2", "--per-prompt", "3"], "--per-class 2 and "
                                                                  "--per-prompt 3"),
    (["--model", "test-double-text", "--prompts", BAD_JSONL, "--per-class", "2"],
     "--per-class 2 is for class runs"),
    (["--classes", "0", "--per-prompt", "2"], "--per-prompt 2 is for prompt runs"),
    # the authors' option names, and ours spelled with underscores
    (["--classes", "0", "--scaling_samples", "50"], "--scaling_samples (the authors' run.py "
                                                    "option); vardist calls it --n"),
    (["--classes", "0", "--scaling_scale", "1"], "--scaling_scale (the authors' run.py option); "
                                                 "vardist calls it --scale"),
    (["--classes", "0", "--scaling_alpha", "2"], "vardist calls it --alpha"),
    (["--classes", "0", "--scaling_rep_num", "10"], "vardist calls it --rep"),
    (["--classes", "0", "--scaling_rep_num=10"], "vardist calls it --rep"),
    (["--classes", "0", "--num_images_per_class", "50"], "vardist calls it --samples"),
    (["--classes", "0", "--pool-sampling", "sorted"], "'sorted' is not one of 'iid', 'authors'"),
    (["--classes", "0", "--preset", "paper"], "'paper' is not one of 'authors'"),
    (["--classes", "0", "--autocast", "bf16"], "'bf16' is not one of 'off', 'fp16'"),
    (["--classes", "0", "--batch_size", "4"], "--batch_size (spelled with underscores); vardist "
                                              "calls it --batch-size"),
    # closed sets
    (["--classes", "0", "--strategy", "best"], "'best' is not one of 'var-scaling'"),
    (["--classes", "0", "--engine", "spark"], "'spark' is not one of 'local', 'ray'"),
    (["--classes", "0", "--bandwidth", "wide"], "'wide' is not one of 'item', 'batch'"),
    (["--classes", "0", "--kde-method", "magic"], "'magic' is not one of 'auto'"),
    (["--classes", "0", "--metric", "manhattan"], "'manhattan' is not one of 'l2', 'cosine'"),
    # integers and conditions
    (["--classes", "5-3"], "class range '5-3' is empty"),
    (["--classes", "cats"], "'cats' is not a label or a range"),
    (["--classes", "1,1"], "class 1 is listed twice"),
    (["--classes", "0", "--scale", "9"], "'--scale': scale 9 is beyond"),
    (["--classes", "0", "--n", "0"], "'--n': n must be >= 1 (the pool size), got 0"),
    (["--classes", "0", "--samples", "0"], "'--samples': samples must be an integer >= 1, got 0"),
    (["--classes", "0", "--batch-size", "0"], "batch_size must be an integer >= 1, got 0"),
    (["--classes", "0", "--seed", "-1"], "'--seed': seed must be an integer >= 0, got -1"),
    (["--classes", "0", "--top-k", "-1"], "'--top-k': top_k must be >= 0"),
    (["--classes", "0", "--rep", "0"], "'--rep': rep must be >= 1, got 0"),
    (["--classes", "0", "--k", "0"], "'--k': k must be >= 1, got 0"),
    (["--model", "nope", "--classes", "0"], "unknown model 'nope'"),
    (["--model", "test-double-text", "--prompts", MISSING], "prompt file MISSING does not "
                                                            "exist"),
    (["--model", "test-double-text", "--prompts", BAD_JSONL], "bad.jsonl:2: not valid JSON"),
    (["--prompts", BAD_JSONL], "model test-double is class-conditional"),
    (["--model", "test-double-text", "--classes", "0"], "model test-double-text takes text "
                                                        "prompts"),
    (["--model", "flexvar-tiny", "--weights", FLEX, "--classes", "0", "--schedule", "3,2,1"],
     "strictly increasing side lengths, got [3, 2, 1]"),
    (["--classes", "0", "--schedule", "1,2,3"], "schedule only applies to FlexVAR "
                                                "models (flexible scale schedules), not test-double"),
    (["--classes", "0", "--schedule", "1,a"], "expected comma-separated integers, got '1,a'"),
    (["--classes", "0", "--actors", "2"], "'--actors': actors only apply to engine='ray'"),
    # a search schedule's population, by the memory planner (toy-digits: 135 KB a member)
    (["--model", "toy-digits", "--classes", "0", "--search", "density:100000@1/100000,1@2"],
     "search schedule density:100000@1/100000,density:1@2 holds up to 800,008 partial "
     "generations at once"),
]


@pytest.mark.parametrize("extra, needle", CLI_CASES)
def test_cli_refuses_before_any_work(built, tmp_path, fixtures_dir, extra, needle):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a cat"}\n{"prompt": oops}\n')
    good = tmp_path / "good.jsonl"
    good.write_text('{"prompt": "a cat"}\n')
    subst = {FLEX: str(fixtures_dir / "flexvar-tiny"), BAD_JSONL: str(bad),
             MISSING: str(tmp_path / "none.jsonl"), "WDIR": str(tmp_path), GEN: str(good)}
    out = tmp_path / "o"
    args = ["search", "--model", "test-double", *[subst.get(a, a) for a in extra],
            "--out", str(out), "--quiet"]
    t0 = time.perf_counter()
    r = runner.invoke(app, args, env={"COLUMNS": "200"})
    took = time.perf_counter() - t0
    assert r.exit_code == 2, r.output
    for placeholder, value in subst.items():  # the message names the value given
        needle = needle.replace(placeholder, value)
    assert needle in flat(r.output), r.output
    assert built == [] and nothing_written(out)
    # a hang guard, not a speed claim: the refusals this table holds used to take minutes
    assert took < 10.0, f"refused in {took:.2f} s"


BIG_SCHEDULE = [1, 2, 3, 1000]

# (search() arguments, the argument the InputError names, text the message must hold)
API_CASES = [
    (dict(prompts={"prompt": "a cat"}, model="test-double-text"), "prompts",
     "got dict {'prompt': 'a cat'}"),
    (dict(prompts=b"a cat", model="test-double-text"), "prompts", "got bytes b'a cat'"),
    (dict(prompts=42, model="test-double-text"), "prompts", "got int 42"),
    (dict(prompts=["a cat", ""], model="test-double-text"), "prompts", "prompt 1 must be a "
                                                                       "non-empty string"),
    (dict(classes="0", out=""), "out", "out is an empty path"),
    (dict(classes="0", out="  "), "out", "out is an empty path"),
    (dict(classes="0", out=123), "out", "got int 123"),
    (dict(classes="0", alpha="2"), "alpha", "alpha must be a number, got str '2'"),
    (dict(classes=3.0), "classes", "got float 3.0"),
    (dict(classes={"0": 1}), "classes", "got dict {'0': 1}"),
    (dict(classes=["1"]), "classes", "class '1' is not an integer label"),
    (dict(classes="0-1000000000"), "classes", "class 10 is outside"),
    (dict(classes="0", samples="4"), "samples", "samples must be an integer, got str '4'"),
    (dict(classes="0", samples=1_000_000_000), "samples", "1,000,000,000 images"),
    (dict(classes="0", n=2.5), "n", "n must be an integer, got float 2.5"),
    (dict(classes="0", n=1_000_000_000), "n", "n=1000000000 needs at least"),
    (dict(classes="0", cfg=math.inf), "cfg", "cfg must be a finite number, got inf"),
    (dict(classes="0", conflict_thresh=math.nan), "conflict_thresh", "got nan"),
    (dict(classes="0", tau=True), "tau", "tau must be a number, got bool True"),
    (dict(classes="0", grid="yes"), "grid", "grid must be True or False, got str 'yes'"),
    (dict(classes="0", grid=True), "grid", "grid only applies to prompt runs"),
    (dict(classes="0", weights=5), "weights", "got int 5"),
    (dict(classes="0", device=0), "device", "device must be a string, got int 0"),
    (dict(classes="0", device="potato"), "device", "device 'potato' is not a torch device"),
    (dict(classes="0", strategy=3), "strategy", "strategy must be a string, got int 3"),
    (dict(classes="0", engine="spark"), "engine", "engine must be one of local, ray, got "
                                                  "'spark'"),
    (dict(classes="0", seed=-1), "seed", "seed must be an integer >= 0, got -1"),
    (dict(classes="0", batch_size=0), "batch_size", "batch_size must be an integer >= 1, got 0"),
    (dict(classes="0", actors=2), "actors", "actors only apply to engine='ray'"),
    (dict(classes="0", schedule="1,2,3"), "schedule", "got str '1,2,3'"),
    (dict(model="flexvar-tiny", classes="0", schedule=BIG_SCHEDULE), "schedule",
     "schedule 1,2,3,1000 needs at least"),
    (dict(model="flexvar-tiny", classes="0", schedule=[1, 2, 2.5, 4]), "schedule",
     "got [1, 2, 2.5, 4]"),
    (dict(model="flexvar-tiny", classes="0", schedule=[1, "2"]), "schedule", "got [1, '2']"),
    (dict(classes="0", progress=5), "progress", "progress must be a function of (images done, "
                                                "total), got int 5"),
    (dict(model=123, classes="0"), "model", "got int"),
    (dict(model="toy-digits", classes="0", search="density:100000@1/100000,1@2"), "search",
     "a batch of 8 items, up to 100,000 members each, those entering a step and those it "
     "keeps), each with a 135.0 KB KV cache"),
    (dict(model="toy-digits", classes="0", search="beam:500000@1/500000,1@2",
          verifier="toy-judge", batch_size=1), "search", "a batch of 1 item, up to 500,000 "
     "members each, those entering a step and those it keeps), each with a 135.0 KB KV cache, "
     "and one item's candidate previews: about 124.5 GB"),
    # files an in-memory run (out=None) would not write
    (dict(classes="0", out=None, log_candidates=True), "log_candidates",
     "log_candidates=True writes candidates.parquet into the output folder, and out is None"),
    (dict(model="test-double-text", prompts=["a cat"], out=None, grid=True), "grid",
     "grid=True writes a grid.png per prompt into the output folder, and out is None"),
]


@pytest.mark.parametrize("kwargs, param, needle", API_CASES)
def test_api_refuses_before_any_work(built, tmp_path, fixtures_dir, kwargs, param, needle):
    import vardist

    kwargs = dict(kwargs)
    model = kwargs.pop("model", "test-double")
    if model == "flexvar-tiny":
        kwargs["weights"] = fixtures_dir / "flexvar-tiny"
    out = tmp_path / "o"
    kwargs.setdefault("out", out)
    t0 = time.perf_counter()
    with pytest.raises(InputError) as err:
        vardist.search(model, **kwargs)
    took = time.perf_counter() - t0
    assert err.value.param == param, err.value
    assert needle in str(err.value)
    assert built == [] and nothing_written(out)
    # a hang guard, not a speed claim: the refusals this table holds used to take minutes
    assert took < 10.0, f"refused in {took:.2f} s"


def test_cuda_devices_this_machine_lacks_are_refused_before_loading(built, tmp_path,
                                                                   monkeypatch):
    """On any machine: a torch build that sees no GPU (the CPU wheel), and a GPU index past the
    last one, are refused naming the device, before any model is built or file written."""
    import torch

    import vardist

    out = tmp_path / "o"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    r = runner.invoke(app, ["search", "--model", "test-double", "--classes", "0", "--device",
                            "cuda", "--out", str(out), "--quiet"], env={"COLUMNS": "200"})
    assert r.exit_code == 2 and "'--device': device 'cuda': this torch build" in flat(r.output)
    assert "use device cpu, or install a CUDA build of torch" in flat(r.output)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(InputError, match=r"device 'cuda:2': this machine has 2 CUDA GPU\(s\), "
                                         r"cuda:0..cuda:1") as err:
        vardist.search("test-double", classes="0", device="cuda:2", out=out)
    assert err.value.param == "device"
    assert built == [] and nothing_written(out)


def test_size_refusals_use_this_machines_memory(monkeypatch, tmp_path):
    """Without the 64 GB stand-in: a pool no machine holds is refused with the real figure."""
    from vardist.api import plan_search
    from vardist.engine.plan import memory_budget

    limit, where = memory_budget("cpu")
    assert limit > GB and "memory" in where
    with pytest.raises(InputError, match=r"n=1000000000000 needs at least \d+\.\d GB"):
        plan_search("toy-digits", classes="0-9", n=10 ** 12)
    assert not (tmp_path / "o").exists()


def test_large_plans_are_made_on_demand():
    """10 million images are planned in well under a second; the items and batches are those
    of the eager list a small plan builds."""
    from vardist.api import plan_search
    from vardist.engine.plan import canonical_batches, plan_items

    t0 = time.perf_counter()
    job, config = plan_search("toy-digits", classes="0-9", samples=1_000_000)
    assert time.perf_counter() - t0 < 10.0  # a hang guard: building the items took minutes
    assert len(job.items) == config["images"] == 10_000_000
    last = job.items[-1]
    assert (last.index, last.condition_index, last.sample_index) == (9_999_999, 9, 999_999)
    assert len(job.batches()) == 1_250_000 and job.batches()[-1][-1] == last
    small, _ = plan_search("toy-digits", classes="2,7", samples=3, batch_size=4)
    eager = plan_items([(2, 2), (7, 7)], 3, run_seed=0)
    assert list(small.items) == eager and small.items[1:4] == eager[1:4]
    assert list(small.batches()) == canonical_batches(eager, 4)


def test_the_batches_left_are_found_by_arithmetic_and_made_on_demand():
    """Recorder.plan: the batches left of a resume are those with an unfinished item (checked
    against every item of a small plan, for finished sets with whole, partial and empty
    batches), and a run of 10 million images starts without building its items (it took
    about 30 s per million)."""
    import numpy as np

    from vardist.api import plan_search
    from vardist.engine.plan import canonical_batches
    from vardist.engine.results import Recorder

    job, config = plan_search("toy-digits", classes="2,5,7", samples=5, batch_size=4)
    rec = Recorder(job, config)  # no output folder: the finished set is set by hand below
    pairs = [(it.condition_index, it.sample_index) for it in job.items]
    rng = np.random.default_rng(0)
    sets = [set(), set(pairs), set(pairs[:4]), set(pairs[12:]), set(pairs[:4] + pairs[12:])]
    sets += [{p for p in pairs if rng.random() < q} for q in (0.3, 0.6, 0.9) for _ in range(3)]
    for finished in sets:
        rec.finished = finished | {(9, 0), (2, 99)}  # pairs of no item are ignored
        todo, _ = rec.plan()
        expect = [(bi, b) for bi, b in enumerate(canonical_batches(list(job.items), 4))
                  if any((it.condition_index, it.sample_index) not in finished for it in b)]
        assert list(todo) == expect and len(todo) == len(expect)
    job, config = plan_search("toy-digits", classes="0-9", samples=1_000_000)
    t0 = time.perf_counter()
    todo, earlier = Recorder(job, config).plan()
    assert time.perf_counter() - t0 < 10.0  # a hang guard, not a speed claim
    assert len(todo) == 1_250_000 and earlier == {}
    assert todo[-1] == (1_249_999, job.batches()[-1]) and todo[-1][1][-1].index == 9_999_999


def test_float_settings_keep_run_json_valid_json(built, tmp_path):
    """Every float in run.json is finite: json.loads in strict mode reads it back."""
    import vardist

    out = tmp_path / "o"
    vardist.search("test-double", classes="0", samples=1, n=4, out=out, cfg=1e300)
    json.loads((out / "run.json").read_text(),
               parse_constant=lambda c: pytest.fail(f"{c} in run.json"))


def test_failed_load_does_not_lock_the_folder(built, tmp_path, monkeypatch):
    """A run that fails before its first image leaves a run.json; a corrected run (other
    settings) is accepted there. Once an image exists, other settings are refused."""
    import vardist
    from vardist.io.runlog import ResumeMismatch
    from vardist.models import registry

    out = tmp_path / "o"
    real_load = registry.load

    def broken(*args, **kwargs):
        raise RuntimeError("the checkpoint is truncated")

    monkeypatch.setattr(registry, "load", broken)
    with pytest.raises(RuntimeError):
        vardist.search("test-double", classes="0", samples=1, n=4, seed=0, out=out)
    monkeypatch.setattr(registry, "load", real_load)
    stale = out / ".run.json.4194305-0badc0de.tmp"  # a temp file of a killed, dead writer
    stale.write_bytes(b"{")
    res = vardist.search("test-double", classes="0", samples=1, n=4, seed=1, out=out)
    assert len(res) == 1 and json.loads((out / "run.json").read_text())["fingerprint"]["seed"] == 1
    assert not stale.exists()  # a restarted run clears what the failed one left, as a resume
    with pytest.raises(ResumeMismatch, match="seed: this folder has 1, this run asks for 2"):
        vardist.search("test-double", classes="0", samples=1, n=4, seed=2, out=out)


def test_search_help_is_grouped_with_choices_at_80_columns():
    r = runner.invoke(app, ["search", "--help"], env={"COLUMNS": "80"})
    assert r.exit_code == 0
    lines = r.output.splitlines()
    assert max(map(len, lines)) <= 80
    titles = [ln.split("─")[1].strip() for ln in lines if ln.startswith("╭─")]
    assert set(titles) >= {"Search", "Sampling", "Model", "Engine", "Output"}, titles
    text = flat(r.output)
    for words in ("var-scaling, infinity, top-k, random-k, small-k or none", "local or ray",
                  "item or batch", "auto, exact, grouped or faiss", "l2 or cosine"):
        assert words in text
    # the help column is readable: the --strategy row starts its help within 40 columns
    row = next(ln for ln in lines if "--strategy" in ln)
    assert row.index("Selection rule") < 40, row
    import typer.main

    cmd = typer.main.get_command(app).commands["search"]
    import enum

    # each of these options is declared as an Enum, so click validates it as a choice
    kinds = {p.name: p.type_descriptor.annotation for p in cmd.params}
    for name in ("strategy", "engine", "bandwidth", "kde_method", "metric", "pool_sampling",
                 "preset", "autocast"):
        assert issubclass(kinds[name], enum.Enum), name
    for words in ("iid or authors", "off or fp16"):
        assert words in text


def test_cli_choices_are_the_library_sets():
    """The CLI's choices (vardist.engine, importable without torch) are the owners' sets."""
    from vardist import engine
    from vardist.api import PRESETS
    from vardist.models.sampling import POOL_SAMPLINGS
    from vardist.models.var.generator import AUTOCAST_MODES

    assert engine.POOL_SAMPLINGS == POOL_SAMPLINGS and engine.AUTOCAST_MODES == AUTOCAST_MODES
    assert engine.PRESETS == tuple(PRESETS)


def test_models_table_fits_80_columns_and_names_fixtures(monkeypatch, tmp_path):
    from vardist.models import registry

    monkeypatch.delenv("VARDIST_WEIGHTS", raising=False)
    r = runner.invoke(app, ["models"], env={"COLUMNS": "80"})
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert max(map(len, lines)) <= 80
    rows = {ln.split()[0]: ln.split() for ln in lines if ln.split()
            and ln.split()[0] in registry.specs()}
    assert set(rows) == set(registry.specs())  # every name, never cut
    assert rows["infinity-tiny"][-1] == "fixture" and rows["toy-digits"][-1] == "bundled"
    assert rows["var-d16"][-1] == "missing"
    monkeypatch.setenv("VARDIST_INFINITY_TINY", str(tmp_path / "absent"))
    r = runner.invoke(app, ["models"], env={"COLUMNS": "80"})
    row = next(ln for ln in r.output.splitlines() if ln.split()[:1] == ["infinity-tiny"])
    assert row.split()[-1] == "missing"


# Settings given explicitly that the run's strategy does not read: accepted, with a warning
# naming them (a study or script may pass one set of settings to every strategy).
UNUSED = [
    (dict(strategy="top-k", rep=5), "rep=5: strategy 'top-k' does not read it (it reads k, "),
    (dict(strategy="infinity", alpha=2.0, conflict_thresh=0.5),
     "alpha=2.0, conflict_thresh=0.5: strategy 'infinity' does not read them"),
    (dict(strategy="var-scaling", k=3), "k=3: strategy 'var-scaling' does not read it"),
    (dict(strategy="none", n=8, metric="cosine"), "n=8, metric='cosine': strategy 'none'"),
]


@pytest.mark.parametrize("kwargs, needle", UNUSED)
def test_options_the_strategy_does_not_read_are_warned_about(built, tmp_path, kwargs, needle):
    import vardist
    from vardist.io.conditions import InputWarning

    with pytest.warns(InputWarning) as caught:
        res = vardist.search("test-double", classes="0", samples=1, out=tmp_path / "o", **kwargs)
    assert len(res) == 1 and [needle in str(w.message) for w in caught] == [True]
    args = [f"--{k.replace('_', '-')}={v}" for k, v in kwargs.items()]
    r = runner.invoke(app, ["search", "--model", "test-double", "--classes", "0", "--samples",
                            "1", *args, "--out", str(tmp_path / "cli"), "--quiet"])
    assert r.exit_code == 0, r.output
    assert f"Warning: {needle}" in r.stderr and "InputWarning" not in r.output


def test_options_the_strategy_reads_are_not_warned_about(built, tmp_path):
    import warnings

    import vardist
    from vardist.io.conditions import InputWarning

    with warnings.catch_warnings():
        warnings.simplefilter("error", InputWarning)
        vardist.search("test-double", classes="0", samples=1, n=6, strategy="var-scaling",
                       alpha=1.5, rep=2, conflict_thresh=0.5, bandwidth="batch",
                       metric="cosine", out=tmp_path / "a")
        vardist.search("test-double", classes="0", samples=1, n=6, strategy="small-k", k=2,
                       kde_method="exact", out=tmp_path / "b")
        vardist.search("test-double", classes="0", samples=1, strategy="none", out=tmp_path / "c")
