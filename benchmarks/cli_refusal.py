"""How long a fresh `vardist search` process takes to refuse bad input (issue 13, item 3), and
whether it imported torch to do so. Each case runs `python -m vardist_cli.main search ...` in a
new process (what the `vardist` command runs, without the launcher's own start-up) `--repeats`
times; the table shows every wall time, the exit code and whether torch was imported.

    python benchmarks/cli_refusal.py                # every case, 3 repeats
    python benchmarks/cli_refusal.py --repeats 5 --case cfg-inf --case n-huge

Whether torch was imported is read by the process itself (an atexit hook given with -c), so the
times are of the same process that the check describes.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FIXTURES = Path(os.environ.get("VARDIST_SHARED",
                               Path(__file__).resolve().parents[2] / "shared")) / "fixtures"

# name -> arguments after `vardist search` (OUT, the prompt files and the empty
# weights folder EMPTY are filled in per run)
CASES: dict[str, list[str]] = {
    "classes-huge": ["--model", "var-d16", "--classes", "0-1000000000"],
    "model-unknown": ["--model", "nosuch", "--classes", "0"],
    "cfg-inf": ["--model", "toy-digits", "--classes", "0", "--cfg", "inf"],
    "per-class-huge": ["--model", "var-d16", "--classes", "0-9", "--per-class", "1000000000"],
    "n-huge": ["--model", "var-d16", "--classes", "0", "--n", "1000000000"],
    "schedule-huge": ["--model", "flexvar-d16", "--classes", "0", "--schedule", "1,2,3,1000"],
    "schedule-huge-tiny": ["--model", "flexvar-tiny", "--weights", str(FIXTURES / "flexvar-tiny"),
                           "--classes", "0", "--schedule", "1,2,3,1000"],
    "device-bad": ["--model", "toy-digits", "--classes", "0", "--device", "potato"],
    "prompts-missing": ["--model", "toy-shapes", "--prompts", "MISSING"],
    "prompts-bad-json": ["--model", "toy-shapes", "--prompts", "BAD_JSONL"],
    "verifier-unknown": ["--model", "toy-shapes", "--prompts", "toy-geneval", "--verifier",
                         "nosuch", "--rerank", "4"],
    "verifier-no-weights": ["--model", "toy-digits", "--classes", "0", "--verifier", "toy-judge",
                            "--verifier-weights", "EMPTY"],
    "rerank-no-verifier": ["--model", "toy-shapes", "--prompts", "toy-geneval", "--rerank", "4"],
}

# Runs the CLI as `vardist` does, then says on stderr whether torch was imported.
RUNNER = ("import atexit, sys; atexit.register(lambda: print('TORCH', 'torch' in sys.modules, "
          "file=sys.stderr)); sys.argv = ['vardist'] + sys.argv[1:]; "
          "from vardist_cli.main import app; app()")


def run_case(args: list[str], tmp: Path) -> tuple[float, int, bool]:
    """(wall seconds, exit code, torch imported) of one fresh refusal."""
    files = {"MISSING": str(tmp / "missing.jsonl"), "BAD_JSONL": str(tmp / "bad.jsonl"),
             "EMPTY": str(tmp / "empty")}
    args = [files.get(a, a) for a in args]
    out = tmp / "out"
    env = dict(os.environ, COLUMNS="200")
    env.pop("VARDIST_WEIGHTS", None)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", RUNNER, "search", *args, "--out", str(out),
                           "--quiet"], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    return wall, proc.returncode, "TORCH True" in proc.stderr


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--case", action="append", choices=sorted(CASES),
                    help="only these cases (repeatable; default: all)")
    opts = ap.parse_args()
    names = opts.case or list(CASES)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        (tmp / "bad.jsonl").write_text('{"prompt": "a red circle"}\nnot json\n')
        (tmp / "empty").mkdir()
        print(f"{'case':<20} {'exit':>4} {'torch':>5}  seconds per run")
        for name in names:
            runs = [run_case(CASES[name], tmp) for _ in range(opts.repeats)]
            codes = {c for _, c, _ in runs}
            torch = any(t for _, _, t in runs)
            times = " ".join(f"{w:.2f}" for w, _, _ in runs)
            print(f"{name:<20} {'/'.join(map(str, sorted(codes))):>4} "
                  f"{'yes' if torch else 'no':>5}  {times}")


if __name__ == "__main__":
    main()
