"""One output folder, one run at a time, and outputs that their readers can use: the folder
lock (two processes), stale temporary files, file modes, a full disk, a finished rerun that
needs no model, progress off a terminal, `search --json`, the GenEval layout of an interrupted
run, `pack` on incomplete and corrupt runs, and the run log's provenance columns."""

import errno
import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
from datetime import datetime, timezone

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

import vardist
from vardist_cli import main as cli_main
from scalewise_double import DoubleModel, register_doubles
from vardist.io import outputs
from vardist.io.conditions import InputError
from vardist.models import registry

SEARCH = dict(classes="0-4", samples=3, n=12, strategy="var-scaling", alpha=1.2, rep=3,
              batch_size=4)
runner = CliRunner()


@pytest.fixture
def built(monkeypatch):
    monkeypatch.delenv("VARDIST_WEIGHTS", raising=False)
    return register_doubles(monkeypatch)


def flat(output: str) -> str:
    """CLI output without rich's box drawing and line wrapping."""
    return " ".join(output.translate({ord(c): " " for c in "│╭╮╰╯─"}).split())


def pngs(out):
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*.png"))}


def temps(root):
    return sorted(p.name for p in root.rglob("*.tmp"))


# --- one run per folder ------------------------------------------------------------------

HOLD = """
import sys, time
from vardist.io.outputs import folder_lock
with folder_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(120)
"""


def _holder(out):
    """A second process that takes OUT's lock and keeps it until killed."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_run_on_a_held_folder_is_refused_naming_folder_and_pid(built, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    proc = _holder(out)
    try:
        with pytest.raises(outputs.FolderBusy) as err:
            vardist.search("test-double", **SEARCH, out=out)
        msg = str(err.value)
        assert str(out) in msg and f"pid {proc.pid}" in msg and err.value.param == "out"
        assert built == [] and not (out / "run.json").exists()  # refused before any work
        res = runner.invoke(cli_main.app, ["search", "--model", "test-double", "--classes",
                                           "0-1", "--out", str(out), "--quiet"])
        assert res.exit_code == 2 and f"pid {proc.pid}" in flat(res.output)
    finally:
        proc.send_signal(signal.SIGKILL)  # a kill: the kernel drops the lock with the process
        proc.wait()
    # the lock of a dead process is stale: the next run takes it and finishes
    assert len(vardist.search("test-double", **SEARCH, out=out)) == 15
    assert not (out / outputs.HOLDER_FILE).exists()


def test_lock_is_released_when_a_run_fails(built, tmp_path, monkeypatch):
    out = tmp_path / "run"

    def broken(*a, **k):
        raise RuntimeError("model failed to load")
    monkeypatch.setattr(registry, "load", broken)
    with pytest.raises(RuntimeError, match="failed to load"):
        vardist.search("test-double", **SEARCH, out=out)
    with outputs.folder_lock(out):  # free again, in this process
        with pytest.raises(outputs.FolderBusy, match=f"pid {os.getpid()}"):  # and held again
            vardist.search("test-double", **SEARCH, out=out)


# --- stale temporary files, modes, full disk ---------------------------------------------

def test_resume_removes_stale_temps_of_a_killed_write(built, tmp_path):
    out = tmp_path / "run"
    vardist.search("test-double", **SEARCH, out=out)
    folder = out / "images" / "class_0001"
    (folder / "0002.png").unlink()  # the write it was doing when it was killed
    stale = [folder / ".0002.png.k3x_9QzA.tmp",               # an older version's mkstemp name
             folder / ".0002.png.4194305-0badc0de.tmp",         # ours, from a dead pid
             out / "log" / ".part-000001-aa.parquet.4194305-0badc0de.tmp"]
    for p in stale:
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(b"half a PNG")
    (out / ".00003.4194305-0badc0de.tmp" / "samples").mkdir(parents=True)  # a staged folder
    (out / "notes.txt").write_text("not ours")
    res = vardist.search("test-double", **SEARCH, out=out)
    assert [r.resumed for r in res].count(False) == 1
    assert temps(out) == [] and not (out / ".00003.4194305-0badc0de.tmp").exists()
    assert (out / "notes.txt").is_file()


def test_pack_removes_its_own_stale_temps_and_leaves_nothing_on_a_corrupt_png(tmp_path):
    out = tmp_path / "run"
    for c in range(2):
        for s in range(2):
            outputs.save_png(out / outputs.image_relpath("class", c, s),
                             np.full((4, 4, 3), 40 * c + s, np.uint8))
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = tmp_path / f".run.npz.{sleeper.pid}-0123abcd.tmp"  # another pack, still running
        dead = [tmp_path / ".run.npz.tmp", tmp_path / ".run.npz.4194305-0badc0de.tmp"]
        for p in [live, *dead]:
            p.write_bytes(b"PK")
        names = []
        real_replace = os.replace

        def spy(src, dst):
            names.append(os.path.basename(src))
            real_replace(src, dst)
        os.replace = spy
        try:
            path, shape = outputs.pack_npz(out)
        finally:
            os.replace = real_replace
        assert shape == (4, 4, 4, 3) and path.is_file()
        assert live.exists() and not any(p.exists() for p in dead)
        assert re.fullmatch(rf"\.run\.npz\.{os.getpid()}-[0-9a-f]{{8}}\.tmp", names[-1])
    finally:
        sleeper.kill()
        sleeper.wait()
    live.unlink()
    path.unlink()
    bad = out / outputs.image_relpath("class", 1, 0)
    bad.write_bytes(bad.read_bytes()[:20])  # truncated
    with pytest.raises(InputError) as err:
        outputs.pack_npz(out)
    assert str(bad) in str(err.value) and "rerun" in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no .npz, no temp


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640)])
def test_output_files_get_the_mode_the_umask_gives(built, tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        vardist.search("test-double", **SEARCH, out=tmp_path / "run")
        outputs.pack_npz(tmp_path / "run")
    finally:
        os.umask(old)
    files = [p for p in tmp_path.rglob("*") if p.is_file() and p.name != outputs.LOCK_FILE]
    assert len(files) > 15
    assert {oct(stat.S_IMODE(p.stat().st_mode)) for p in files} == {oct(mode)}


@pytest.mark.parametrize("magic, fail_at", [(b"\x89PNG", 6), (b"PAR1", 2)])  # a PNG, a log part
def test_disk_full_names_the_path_and_space_needed_and_leaves_nothing_half_written(
        built, tmp_path, monkeypatch, magic, fail_at):
    ref = tmp_path / "ref"
    vardist.search("test-double", **SEARCH, out=ref)
    out = tmp_path / "run"
    real = outputs._write_fd
    calls = []

    def fills_up(fd, data):
        calls.append(data[:4] == magic)
        if sum(calls) == fail_at and calls[-1]:  # the device fills up in the middle of a file
            os.write(fd, data[:len(data) // 2])
            os.close(fd)
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd, data)
    monkeypatch.setattr(outputs, "_write_fd", fills_up)
    with pytest.raises(outputs.DiskFull) as err:
        vardist.search("test-double", **SEARCH, out=out)
    msg = str(err.value)
    assert err.value.errno == errno.ENOSPC and str(err.value.path) in msg
    assert str(out) in str(err.value.path) and "free there" in msg
    assert re.search(r"the \d+ images this run has left need about [\d.]+ (KB|bytes)", msg)
    assert temps(out) == []
    for rel, data in pngs(out).items():  # every PNG on disk is whole
        assert data == pngs(ref)[rel]
    calls.clear()
    res = runner.invoke(cli_main.app, ["search", "--model", "test-double", "--classes", "0-4",
                                       "--samples", "3", "--n", "12", "--strategy",
                                       "var-scaling", "--alpha", "1.2", "--rep", "3",
                                       "--batch-size", "4", "--out", str(out), "--quiet"])
    assert res.exit_code == 1 and "no space left on the device writing" in res.stderr
    assert "Traceback" not in res.output
    calls.clear()
    monkeypatch.setattr(outputs, "_write_fd", real)  # space freed: the rerun finishes the run
    vardist.search("test-double", **SEARCH, out=out)
    assert pngs(out) == pngs(ref)


def test_rerunning_a_finished_run_does_not_load_the_model(built, tmp_path, monkeypatch):
    out = tmp_path / "run"
    first = vardist.search("test-double", **SEARCH, out=out)
    assert built == ["test-double"]

    def no_load(*a, **k):
        raise AssertionError("a finished run loaded the model")
    monkeypatch.setattr(registry, "load", no_load)
    seen = []
    again = vardist.search("test-double", **SEARCH, out=out, progress=lambda d, t: seen.append(d))
    assert all(r.resumed for r in again) and len(again) == len(first) == 15
    assert [r.path for r in again] == [r.path for r in first] and seen == [15]
    assert [r.item for r in again] == [r.item for r in first]  # seeds and conditions too
    assert [r.chosen for r in again] == [r.chosen for r in first]
    with pytest.raises(vardist.io.runlog.ResumeMismatch):  # still checked against run.json
        vardist.search("test-double", **{**SEARCH, "n": 13}, out=out)


# --- what people and programs read -------------------------------------------------------

CLI_RUN = ["search", "--model", "test-double", "--classes", "0-4", "--samples", "3", "--n",
           "12", "--batch-size", "4"]
LINE = re.compile(r"^\[\d\d:\d\d:\d\d\] (\d+)/15 images \(\d+%\), ([\d.]+|-) img/s, ETA "
                  r"(\d+:\d\d:\d\d|-)$")
LINE10 = re.compile(LINE.pattern.replace("/15", "/10"))


def test_progress_off_a_terminal_is_plain_lines(built, tmp_path, monkeypatch):
    monkeypatch.setattr(cli_main._ProgressBar, "every_s", 3600.0)
    res = runner.invoke(cli_main.app, [*CLI_RUN, "--out", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    progress = [m for m in map(LINE.match, res.stdout.splitlines()) if m]
    assert len(progress) == 2  # within the hour: the start and the end
    assert [int(m[1]) for m in progress] == [0, 15]
    assert progress[-1][2] != "-" and progress[-1][3] == "0:00:00"


def test_progress_lines_come_at_a_steady_interval_between_updates(monkeypatch, capsys):
    """A line every every_s seconds from a timer, also while no batch finishes (a batch of a
    large model can take minutes), and where an interrupted run stopped."""
    monkeypatch.setattr(cli_main._ProgressBar, "every_s", 0.05)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: False)
    with pytest.raises(KeyboardInterrupt):
        with cli_main._ProgressBar(quiet=False) as bar:
            bar.update(0, 10)
            time.sleep(0.02)
            bar.update(3, 10)
            time.sleep(0.5)  # no update meanwhile: the timer's lines
            bar.update(4, 10)
            raise KeyboardInterrupt
    lines = capsys.readouterr().out.splitlines()
    done = [int(LINE10.match(ln)[1]) for ln in lines]
    assert done[0] == 0 and done.count(3) >= 2 and done[-1] == 4 and 10 not in done, lines
    m = LINE10.match(lines[done.index(3)])
    assert m[2] != "-" and m[3] != "-"  # a speed and a time left once images are done
    n = len(lines)
    time.sleep(0.2)
    assert len(capsys.readouterr().out.splitlines()) == 0 and n == len(lines)  # timer stopped


def test_search_json_summary(built, tmp_path):
    out = tmp_path / "run"
    res = runner.invoke(cli_main.app, [*CLI_RUN, "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)  # stdout is the summary alone; progress is on stderr
    assert LINE.match(res.stderr.splitlines()[-1])
    assert (doc["images"], doc["written"], doc["already_there"]) == (15, 15, 0)
    assert doc["seconds"] > 0 and doc["images_per_second"] > 0
    assert set(doc["stage_seconds"]) == {"pool", "select", "finish", "write"}
    assert all(v > 0 for v in doc["stage_seconds"].values())
    assert sum(doc["stage_seconds"].values()) <= doc["seconds"] * 2  # shares, not a sum of batches
    assert sorted(doc["image_paths"]) == sorted(str(p) for p in out.rglob("*.png"))
    assert doc["files"]["runlog.parquet"] == str(out / "runlog.parquet")
    again = json.loads(runner.invoke(cli_main.app, [*CLI_RUN, "--out", str(out), "--json"]).stdout)
    assert (again["written"], again["already_there"]) == (0, 15)
    assert again["stage_seconds"] == {"pool": 0, "select": 0, "finish": 0, "write": 0}


def geneval_walk(out):
    """What GenEval's evaluate_images.py does: every numbered folder's metadata, then its
    samples/ listing."""
    seen = {}
    for folder in sorted(os.listdir(out)):
        path = out / folder
        if not path.is_dir() or not folder.isdigit():
            continue
        meta = json.loads((path / "metadata.jsonl").read_text())
        seen[folder] = (meta["prompt"], sorted(os.listdir(path / "samples")))
    return seen


PROMPTS = ['{"tag": "single_object", "prompt": "a photo of a bench"}',
           '{"tag": "counting", "prompt": "two cats"}', '{"prompt": "a red car"}',
           '{"tag": "colors", "prompt": "a blue cow"}']


def test_interrupted_prompt_run_is_a_valid_geneval_layout(tmp_path, monkeypatch):
    f = tmp_path / "p.jsonl"
    f.write_text("\n".join(PROMPTS) + "\n")
    out = tmp_path / "run"
    real = outputs.write_prompt_image
    calls = []

    def dying(*a, **k):  # killed while writing the 4th image: prompt 1's second sample
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(*a, **k)
    monkeypatch.setattr(outputs, "write_prompt_image", dying)
    m = DoubleModel("prompt")
    with pytest.raises(KeyboardInterrupt):
        vardist.search(m, prompts=f, samples=3, n=8, out=out, batch_size=2)
    assert geneval_walk(out) == {"00000": ("a photo of a bench", ["0000.png", "0001.png",
                                                                  "0002.png"])}
    monkeypatch.setattr(outputs, "write_prompt_image", real)
    # an earlier version wrote every prompt's metadata.jsonl at the start: a resume drops
    # the folders that have no image yet
    outputs.write_prompt_metadata(out, 3, PROMPTS[3])
    calls.clear()
    monkeypatch.setattr(outputs, "write_prompt_image", dying)
    with pytest.raises(KeyboardInterrupt):
        vardist.search(m, prompts=f, samples=3, n=8, out=out, batch_size=2)
    assert not (out / "00003").exists() and set(geneval_walk(out)) == {"00000", "00001"}
    monkeypatch.setattr(outputs, "write_prompt_image", real)
    vardist.search(m, prompts=f, samples=3, n=8, out=out, batch_size=2)
    walk = geneval_walk(out)
    assert [v[0] for v in walk.values()] == [json.loads(p)["prompt"] for p in PROMPTS]
    assert all(v[1] == ["0000.png", "0001.png", "0002.png"] for v in walk.values())
    tags = pq.read_table(out / "runlog.parquet").to_pydict()
    assert sorted(set(zip(tags["condition_index"], tags["tag"]))) == [
        (0, "single_object"), (1, "counting"), (2, None), (3, "colors")]


def _make_class_run(tmp_path):
    out = tmp_path / "run"
    vardist.search("test-double", **SEARCH, out=out)
    return out


def test_pack_refuses_an_incomplete_run_unless_allow_partial(built, tmp_path):
    out = _make_class_run(tmp_path)
    for c, s in ((1, 2), (3, 0), (3, 1)):
        (out / outputs.image_relpath("class", c, s)).unlink()
    res = runner.invoke(cli_main.app, ["pack", str(out)])
    assert res.exit_code == 2 and not (tmp_path / "run.npz").exists()
    text = flat(res.output)
    for needle in ("12 of the 15 images", "class 1: sample 2", "class 3: samples 0, 1",
                   "--allow-partial", "50 images per class"):
        assert needle in text, needle
    res = runner.invoke(cli_main.app, ["pack", str(out), "--allow-partial"])
    assert res.exit_code == 0, res.output
    assert np.load(tmp_path / "run.npz")["arr_0"].shape[0] == 12
    assert "50 images per class for all 1000 classes" in res.stderr
    assert temps(tmp_path) == []


def test_pack_without_run_json_expects_every_class_as_full_as_the_fullest(tmp_path):
    out = tmp_path / "run"
    for c, k in ((0, 3), (1, 2)):
        for s in range(k):
            outputs.save_png(out / outputs.image_relpath("class", c, s), np.zeros((2, 2, 3),
                                                                                   np.uint8))
    with pytest.raises(InputError, match="class 1: sample 2"):
        outputs.pack_npz(out)
    assert outputs.pack_npz(out, allow_partial=True)[1] == (5, 2, 2, 3)


def test_pack_waits_for_no_run_but_refuses_one_in_progress(built, tmp_path):
    out = _make_class_run(tmp_path)
    proc = _holder(out)
    try:
        with pytest.raises(outputs.FolderBusy, match=f"pid {proc.pid}"):
            outputs.pack_npz(out)
    finally:
        proc.kill()
        proc.wait()
    assert outputs.pack_npz(out)[1][0] == 15


def test_run_log_rows_carry_run_id_seed_time_and_host(built, tmp_path, monkeypatch):
    out = tmp_path / "run"
    t0 = datetime.now(timezone.utc)
    vardist.search("test-double", **SEARCH, seed=3, out=out)
    (out / outputs.image_relpath("class", 4, 2)).unlink()
    here = socket.gethostname()
    monkeypatch.setattr(socket, "gethostname", lambda: "other-node")
    vardist.search("test-double", **SEARCH, seed=3, out=out)  # a resume on another machine
    t = pq.read_table(out / "runlog.parquet").to_pydict()
    run_id = json.loads((out / "run.json").read_text())["run_id"]
    assert len(t["run_id"]) == 15 and set(t["run_id"]) == {run_id} and len(run_id) == 32
    assert set(t["run_seed"]) == {3} and t["tag"] == [None] * 15
    assert all(t0 <= ts <= datetime.now(timezone.utc) for ts in t["timestamp"])
    hosts = dict(zip(zip(t["condition_index"], t["sample_index"]), t["hostname"]))
    assert hosts.pop((4, 2)) == "other-node" and set(hosts.values()) == {here}
    other = tmp_path / "other"
    vardist.search("test-double", **SEARCH, seed=3, out=other)
    assert json.loads((other / "run.json").read_text())["run_id"] != run_id
