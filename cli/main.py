"""The typer app behind the `vardist` command. It only parses options and calls the public
Python API; all checks and work live in the library."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from vardist._version import __version__

app = typer.Typer(
    name="vardist",
    help="Inference-time scaling search (VAR-Scaling) for visual autoregressive image models.",
    no_args_is_help=True,
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"vardist {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Optional[bool] = typer.Option(
        None, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """vardist command line."""


def _bad_input(e: Exception) -> typer.BadParameter:
    """A library input error as a click error naming the option (exit code 2)."""
    param = getattr(e, "param", None)
    hint = f"'--{param.replace('_', '-')}'" if param else None
    return typer.BadParameter(str(e), param_hint=hint)


@app.command()
def search(
    model: str = typer.Option("toy-digits", help="Registry name (see `vardist models`)."),
    prompts: Optional[Path] = typer.Option(
        None, help="GenEval-style JSONL prompt file (one {\"prompt\": ...} object per line)."),
    classes: Optional[str] = typer.Option(
        None, help="Class labels: '0-9', '1,3,5-7' or 'all' (class-conditional models)."),
    samples: int = typer.Option(4, "--samples", "--per-class", "--per-prompt", min=1,
                                help="Images per class or prompt."),
    n: Optional[int] = typer.Option(None, "--n", min=1,
                                    help="Pool size: candidates drawn at the searched scale."),
    strategy: Optional[str] = typer.Option(
        None, help="var-scaling, infinity, top-k, random-k, small-k or none (plain sampling)."),
    scale: Optional[int] = typer.Option(None, min=0, help="Scale index searched (0-based)."),
    alpha: Optional[float] = typer.Option(
        None, help="Density-adaptive threshold (> 0): top-k branch when max >= alpha * mean."),
    rep: Optional[int] = typer.Option(None, min=1, help="Representatives kept (var-scaling)."),
    conflict_thresh: Optional[float] = typer.Option(
        None, min=0.0, help="Min L2 distance between representatives (var-scaling)."),
    k: Optional[int] = typer.Option(None, min=1,
                                    help="Shortlist of top-k / random-k / small-k / infinity."),
    cfg: Optional[float] = typer.Option(None, min=0.0, help="Classifier-free guidance strength."),
    top_k: Optional[int] = typer.Option(None, min=0, help="Top-k sampling filter (0: off)."),
    top_p: Optional[float] = typer.Option(None, min=0.0, max=1.0,
                                          help="Top-p sampling filter (0: off)."),
    tau: Optional[float] = typer.Option(None, help="Softmax temperature (> 0)."),
    seed: int = typer.Option(0, min=0, help="Run seed; each image's seed derives from it."),
    out: Path = typer.Option(..., help="Output folder; rerunning on it resumes the run."),
    batch_size: int = typer.Option(8, min=1, help="Work items per batch."),
    weights: Optional[Path] = typer.Option(
        None, envvar="VARDIST_WEIGHTS", help="Folder with the model's checkpoint files."),
    device: Optional[str] = typer.Option(None, help="torch device (default: cuda if present)."),
    engine: str = typer.Option("local", help="local (one process) or ray."),
    address: Optional[str] = typer.Option(
        None, help="Ray engine: cluster address (auto, HOST:PORT, ray://HOST:PORT)."),
    actors: Optional[int] = typer.Option(None, min=1, help="Ray engine: generator actors."),
    bandwidth: str = typer.Option(
        "item", help="KDE bandwidth per item, or 'batch' (pooled, as the authors' code)."),
    kde_method: str = typer.Option("auto", help="auto, exact, grouped or faiss."),
    metric: str = typer.Option("l2", help="KDE distance: l2 or cosine."),
    grid: bool = typer.Option(False, help="Also write a grid.png per prompt."),
    log_candidates: bool = typer.Option(
        False, help="Also log every candidate's density (candidates.parquet)."),
    schedule: Optional[str] = typer.Option(
        None, help="FlexVAR: scale schedule as side lengths, e.g. 1,2,3,4,5,6,7,8,9,10,12,14,16."),
    quiet: bool = typer.Option(False, help="No progress bar."),
) -> None:
    """Search images for classes or prompts and write them (GenEval or class layout), with a
    Parquet run log; rerun the same command to resume."""
    from vardist.api import search as run_search
    from vardist.io.conditions import InputError

    ray_opts = {key: v for key, v in (("address", address), ("actors", actors)) if v is not None}
    start = time.perf_counter()
    with _ProgressBar(quiet) as bar:
        try:
            results = run_search(
                model, prompts=prompts, classes=classes, samples=samples, n=n, strategy=strategy,
                scale=scale, alpha=alpha, rep=rep, conflict_thresh=conflict_thresh, k=k, cfg=cfg,
                top_k=top_k, top_p=top_p, tau=tau, seed=seed, out=out, batch_size=batch_size,
                weights=weights, device=device, engine=engine, bandwidth=bandwidth,
                kde_method=kde_method, metric=metric, grid=grid, log_candidates=log_candidates,
                schedule=_int_list(schedule, "--schedule"), progress=bar.update, **ray_opts)
        except InputError as e:
            raise _bad_input(e) from None
        except FileNotFoundError as e:
            raise typer.BadParameter(str(e), param_hint="'--weights'") from None
    earlier = sum(r.resumed for r in results)
    typer.echo(f"{len(results) - earlier} images written, {earlier} already there, to {out} "
               f"in {time.perf_counter() - start:.1f} s")


def _int_list(text: Optional[str], option: str) -> Optional[list[int]]:
    if text is None:
        return None
    try:
        return [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated integers, got {text!r}",
                                 param_hint=f"'{option}'") from None


class _ProgressBar:
    """rich progress: images done / total, images per second, time left."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.task = None

    def __enter__(self) -> "_ProgressBar":
        if not self.quiet:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn,
                                       TextColumn, TimeRemainingColumn)
            from rich.text import Text

            class Speed(ProgressColumn):
                def render(self, task) -> Text:
                    return Text(f"{task.speed:.2f} img/s" if task.speed else "- img/s")

            self.progress = Progress(TextColumn("searching"), BarColumn(), MofNCompleteColumn(),
                                     Speed(), TextColumn("ETA"), TimeRemainingColumn())
            self.progress.start()
        return self

    def update(self, done: int, total: int) -> None:
        if self.quiet:
            return
        if self.task is None:  # images finished by an earlier run do not count towards speed
            self.task = self.progress.add_task("search", total=total, completed=done)
        else:
            self.progress.update(self.task, completed=done, total=total)

    def __exit__(self, *exc) -> None:
        if not self.quiet:
            self.progress.stop()


@app.command()
def models(
    weights: Optional[Path] = typer.Option(
        None, envvar="VARDIST_WEIGHTS", help="Folder to look for checkpoint files in."),
) -> None:
    """List the registered models: family, default search settings, whether weights are found."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    from vardist.models import registry

    table = Table(title="vardist models", box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("name", "family", "conditions", "scale", "n", "strategy", "alpha", "cfg",
                "weights"):
        table.add_column(col, no_wrap=True)
    for name, spec in registry.specs().items():
        d = spec.defaults
        if not spec.files:
            found = "bundled"
        else:
            found = "found" if registry.find_weight_files(spec, weights) is not None else "missing"
        conds = f"{spec.num_classes} classes" if spec.num_classes else (spec.condition_kind or "?")
        table.add_row(name, spec.family, conds, str(d.scale), str(d.n), d.strategy,
                      f"{d.alpha:g}", f"{d.cfg:g}", found)
    Console().print(table)


@app.command()
def pack(
    out: Path = typer.Argument(..., help="Output folder of a class-layout search."),
    dest: Optional[Path] = typer.Option(None, help="The .npz to write (default: OUT.npz)."),
) -> None:
    """Pack OUT/images/class_*/*.png into the .npz (uint8 arr_0 [N, H, W, 3]) that the ImageNet
    FID/IS evaluators take."""
    from vardist.io.conditions import InputError
    from vardist.io.outputs import pack_npz

    try:
        path, shape = pack_npz(out, dest)
    except InputError as e:
        raise typer.BadParameter(str(e), param_hint="'OUT'") from None
    typer.echo(f"wrote {path}: arr_0 uint8 {list(shape)}")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def train(
    ctx: typer.Context,
    model: str = typer.Argument("toy-digits", help="The zoo model to train (toy-digits)."),
    out: Path = typer.Option(..., help="Folder for the weights, config and train_log.jsonl."),
) -> None:
    """Retrain a zoo model from a seed (toy-digits: the judge, the VQVAE, then the VAR; about
    10-15 minutes on 2 CPU cores). Further options (--seed, --judge-steps, --vae-steps,
    --var-steps, --stages, --threads, ...) are those of `python -m vardist.zoo.train --help`."""
    if model != "toy-digits":
        raise typer.BadParameter(f"unknown zoo model {model!r}; the zoo has toy-digits",
                                 param_hint="'MODEL'")
    from vardist.zoo.train import main as train_main

    train_main(["--out", str(out), *ctx.args])


if __name__ == "__main__":
    app()
