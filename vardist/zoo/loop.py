"""The training machinery every zoo model shares: the learning-rate schedule, the step loop with
its progress bar, and the JSONL loss log (`train_log.jsonl`, one JSON line per logged step).

`vardist.zoo.train` (toy-digits) and `vardist.zoo.shapes_train` (toy-shapes) both drive their
stages through `run_steps` inside one `TrainLog`, so their logs and progress bars look alike.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Callable, Iterator

import torch

Log = Callable[[dict], None]


def lr_at(step: int, total: int, base: float, warmup: int = 50) -> float:
    """Linear warm-up then cosine decay to 10% of base."""
    if step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(total - warmup, 1)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for g in opt.param_groups:
        g["lr"] = lr


def shuffled_batches(n: int, batch: int, gen: torch.Generator) -> Iterator[torch.Tensor]:
    """Index batches of `batch` rows, epoch after epoch, each epoch a fresh permutation of n rows
    drawn from `gen` when the previous one runs out; each epoch's last split is dropped, so
    every batch is full."""
    if n <= batch:
        raise ValueError(f"{n} training rows do not make one full batch of {batch}")
    while True:
        yield from torch.randperm(n, generator=gen).split(batch)[:-1]


def run_steps(name: str, steps: int, step_fn: Callable[[int], dict[str, float]], log: Log,
              log_every: int) -> None:
    """Call step_fn(step) `steps` times under a progress bar, logging its losses every
    `log_every` steps and at the last one."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    cols = (TextColumn(f"[bold]{name:<6}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
            TextColumn("{task.fields[losses]}"))
    with Progress(*cols, transient=False) as bar:
        task = bar.add_task(name, total=steps, losses="")
        for step in range(steps):
            losses = step_fn(step)
            if step % log_every == 0 or step == steps - 1:
                log({"stage": name, "step": step, **losses})
                bar.update(task, losses=" ".join(f"{k} {v:.4f}" for k, v in losses.items()))
            bar.advance(task)


class TrainLog:
    """`with TrainLog(out) as log: log({...})` appends one JSON line per call to
    out/train_log.jsonl, each stamped with the seconds since the log was opened (`t`); on a
    clean exit it writes the closing `{"stage": "done", "seconds": ...}` line."""

    def __init__(self, out: str | Path) -> None:
        self.path = Path(out) / "train_log.jsonl"

    def __enter__(self) -> Log:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a")
        self._t0 = time.time()
        return self

    def __call__(self, rec: dict) -> None:
        self._file.write(json.dumps({"t": round(time.time() - self._t0, 2), **rec}) + "\n")
        self._file.flush()

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self({"stage": "done", "seconds": round(time.time() - self._t0, 1)})
        self._file.close()
