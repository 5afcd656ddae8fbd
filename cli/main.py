"""The typer app behind the `vardist` command. It only parses options and calls the public
Python API; all checks and work live in the library."""

from __future__ import annotations

import json
import sys
import threading
import time
import warnings
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Iterator, Optional

import typer
from click.core import ParameterSource
from typer.core import TyperCommand

from vardist._version import __version__
from vardist.engine import (AUTOCAST_MODES, BANDWIDTHS, ENGINES, POOL_SAMPLINGS, PRESETS,
                            TEXT_DEVICES)
from vardist.selection import METHODS as KDE_METHODS
from vardist.selection import METRICS, STRATEGIES

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


# `vardist search --help` panels
SEARCH, SAMPLING, MODEL, ENGINE, OUTPUT = "Search", "Sampling", "Model", "Engine", "Output"


def _choices(name: str, values: tuple[str, ...]) -> type[Enum]:
    """A closed set of option values as the Enum typer turns into a click Choice."""
    return Enum(name, {v: v for v in values}, type=str)


Strategy = _choices("Strategy", STRATEGIES)
Engine = _choices("Engine", ENGINES)
Bandwidth = _choices("Bandwidth", BANDWIDTHS)
KdeMethod = _choices("KdeMethod", KDE_METHODS)
Metric = _choices("Metric", METRICS)
PoolSampling = _choices("PoolSampling", POOL_SAMPLINGS)
Preset = _choices("Preset", PRESETS)
Autocast = _choices("Autocast", AUTOCAST_MODES)
TextDevice = _choices("TextDevice", TEXT_DEVICES)


def _listed(values: tuple[str, ...]) -> str:
    return ", ".join(values[:-1]) + " or " + values[-1] if len(values) > 1 else values[0]


def _value(choice: Optional[Enum]) -> Optional[str]:
    return None if choice is None else choice.value


# The authors' option names (the VAR-Scaling code's run.py) and ours, for a pointer instead of
# click's nearest-spelling guess (it offered --samples for --scaling_samples).
AUTHORS_OPTIONS = {"--scaling_samples": "--n", "--scaling_scale": "--scale",
                   "--scaling_alpha": "--alpha", "--scaling_rep_num": "--rep",
                   "--num_images_per_class": "--samples"}


class _SearchCommand(TyperCommand):
    """`vardist search`, whose unknown-option error points the authors' option names (and
    snake_case spellings of ours) to our options."""

    def parse_args(self, ctx, args):
        try:
            return super().parse_args(ctx, args)
        except Exception as e:
            name = getattr(e, "option_name", None)
            ours = {o for p in self.params for o in getattr(p, "opts", [])}
            hint = AUTHORS_OPTIONS.get(name) if name else None
            if name and hint is None and name.replace("_", "-") in ours:
                hint = name.replace("_", "-")
            if hint is not None:
                what = ("the authors' run.py option" if name in AUTHORS_OPTIONS
                        else "spelled with underscores")
                e.message = f"No such option: {name} ({what}); vardist calls it {hint}"
                e.possibilities = []
            raise


def _samples(samples: Optional[int], per_class: Optional[int], per_prompt: Optional[int],
             prompts: Optional[Path]) -> Optional[int]:
    """--samples, --per-class and --per-prompt are one setting: two of them given (which
    would win?) or the other kind's name is refused."""
    given = {name: v for name, v in (("--samples", samples), ("--per-class", per_class),
                                     ("--per-prompt", per_prompt)) if v is not None}
    if len(given) > 1:
        raise typer.BadParameter(
            f"{' and '.join(f'{k} {v}' for k, v in given.items())} are the same setting "
            f"(images per class or prompt): give one", param_hint=f"'{next(iter(given))}'")
    if per_class is not None and prompts is not None:
        raise typer.BadParameter(f"--per-class {per_class} is for class runs; this run has "
                                 f"--prompts: use --per-prompt or --samples",
                                 param_hint="'--per-class'")
    if per_prompt is not None and prompts is None:
        raise typer.BadParameter(f"--per-prompt {per_prompt} is for prompt runs; this run has "
                                 f"no --prompts: use --per-class or --samples",
                                 param_hint="'--per-prompt'")
    return next(iter(given.values()), None)


@app.command(cls=_SearchCommand)
def search(
    ctx: typer.Context,
    model: str = typer.Option("toy-digits", help="Registry name (see `vardist models`).",
                              rich_help_panel=MODEL),
    prompts: Optional[Path] = typer.Option(
        None, help="GenEval-style JSONL prompt file (one {\"prompt\": ...} object per line); "
        "toy-geneval.jsonl: toy-shapes' shipped evaluation prompts.",
        rich_help_panel=SEARCH),
    classes: Optional[str] = typer.Option(
        None, help="Class labels: '0-9', '1,3,5-7' or 'all' (class-conditional models).",
        rich_help_panel=SEARCH),
    samples: Optional[int] = typer.Option(
        None, "--samples",
        help="Images per class or prompt (default 4; 50 with --preset authors).",
        rich_help_panel=SEARCH),
    per_class: Optional[int] = typer.Option(
        None, "--per-class", help="--samples, for a class run.", rich_help_panel=SEARCH),
    per_prompt: Optional[int] = typer.Option(
        None, "--per-prompt", help="--samples, for a prompt run.", rich_help_panel=SEARCH),
    n: Optional[int] = typer.Option(None, "--n",
                                    help="Pool size: candidates drawn at the searched scale.",
                                    rich_help_panel=SEARCH),
    strategy: Optional[Strategy] = typer.Option(
        None, help=f"Selection rule: {_listed(STRATEGIES)} (none is plain sampling).",
        metavar="NAME", rich_help_panel=SEARCH),
    scale: Optional[int] = typer.Option(None, help="Scale index searched (0-based).",
                                        rich_help_panel=SEARCH),
    alpha: Optional[float] = typer.Option(
        None, help="Density-adaptive threshold (> 0): top-k branch when max >= alpha * mean.",
        rich_help_panel=SEARCH),
    rep: Optional[int] = typer.Option(None, help="Representatives kept (var-scaling).",
                                      rich_help_panel=SEARCH),
    conflict_thresh: Optional[float] = typer.Option(
        None, help="Min L2 distance between representatives (var-scaling).",
        rich_help_panel=SEARCH),
    k: Optional[int] = typer.Option(None,
                                    help="Shortlist of top-k / random-k / small-k / infinity.",
                                    rich_help_panel=SEARCH),
    cfg: Optional[float] = typer.Option(None, help="Classifier-free guidance strength.",
                                        rich_help_panel=SAMPLING),
    top_k: Optional[int] = typer.Option(None, help="Top-k sampling filter (0: off).",
                                        rich_help_panel=SAMPLING),
    top_p: Optional[float] = typer.Option(None,
                                          help="Top-p sampling filter (0: off).",
                                          rich_help_panel=SAMPLING),
    tau: Optional[float] = typer.Option(None, help="Softmax temperature (> 0).",
                                        rich_help_panel=SAMPLING),
    seed: int = typer.Option(0, help="Run seed; each image's seed derives from it.",
                             rich_help_panel=SAMPLING),
    out: Path = typer.Option(..., help="Output folder; rerunning on it resumes the run.",
                             rich_help_panel=OUTPUT),
    batch_size: Optional[int] = typer.Option(
        None, help="Work items per batch (default 8; with --preset authors the samples "
        "of one class).", rich_help_panel=ENGINE),
    weights: Optional[Path] = typer.Option(
        None, envvar="VARDIST_WEIGHTS", help="Folder with the model's checkpoint files.",
        rich_help_panel=MODEL),
    device: Optional[str] = typer.Option(
        None, help="torch device: cpu, cuda, cuda:N, mps (default: cuda if present).",
        rich_help_panel=MODEL),
    engine: Engine = typer.Option("local", help=f"{_listed(ENGINES)}: one process, or Ray "
                                  "actors.", metavar="NAME",
                                  rich_help_panel=ENGINE),
    address: Optional[str] = typer.Option(
        None, help="Ray engine: cluster address (auto, HOST:PORT, ray://HOST:PORT).",
        rich_help_panel=ENGINE),
    actors: Optional[int] = typer.Option(None, help="Ray engine: generator actors.",
                                         rich_help_panel=ENGINE),
    bandwidth: Optional[Bandwidth] = typer.Option(
        None, metavar="NAME", help=f"KDE bandwidth, {_listed(BANDWIDTHS)}: per item, or pooled "
        "over the batch as the authors' code "
        "(default item; batch with --preset authors).", rich_help_panel=SEARCH),
    kde_method: KdeMethod = typer.Option("auto", help=f"Density method: {_listed(KDE_METHODS)}.",
                                         metavar="NAME",
                                         rich_help_panel=SEARCH),
    metric: Metric = typer.Option("l2", help=f"KDE distance: {_listed(METRICS)}.",
                                  metavar="NAME", rich_help_panel=SEARCH),
    grid: bool = typer.Option(False, "--grid", help="Also write a grid.png per prompt.",
                              rich_help_panel=OUTPUT),
    log_candidates: bool = typer.Option(
        False, "--log-candidates", help="Also log every candidate's density (candidates.parquet).",
        rich_help_panel=OUTPUT),
    schedule: Optional[str] = typer.Option(
        None, help="FlexVAR: scale schedule as side lengths, e.g. 1,2,3,4,5,6,7,8,9,10,12,14,16.",
        rich_help_panel=MODEL),
    pool_sampling: Optional[PoolSampling] = typer.Option(
        None, metavar="NAME", help=f"VAR candidate sampler, {_listed(POOL_SAMPLINGS)}: i.i.d., "
        "or the released code's narrowing one (candidate j drawn after j+1 top-p cuts) "
        "(default iid; authors with --preset authors).",
        rich_help_panel=SAMPLING),
    preset: Optional[Preset] = typer.Option(
        None, metavar="NAME", help="authors: the authors' run.py (VAR) in one flag: --samples "
        "50, one class per batch, --bandwidth batch, --pool-sampling authors, scale 1, n 50, "
        "alpha 2.3, rep 10, cfg 1, top-k 900, top-p 0.96 (on a GPU add --autocast fp16). "
        "Options given explicitly override it.",
        rich_help_panel=SEARCH),
    autocast: Optional[Autocast] = typer.Option(
        None, metavar="NAME", help=f"VAR checkpoints, {_listed(AUTOCAST_MODES)}: fp16 is run.py's "
        "fp16 autocast with TF32 on CUDA (no-op on the CPU) (default off).", rich_help_panel=MODEL),
    text_device: Optional[TextDevice] = typer.Option(
        None, metavar="WHERE", help=f"Infinity models, {_listed(TEXT_DEVICES)}: keep the T5 text "
        "encoder on the CPU (fp32, frees ~2.4 GB of GPU memory; features differ by rounding) or "
        "offload it there between batches (same numbers, slower) (default: beside the model).",
        rich_help_panel=MODEL),
    verifier: Optional[str] = typer.Option(
        None, metavar="NAME", help="Image reward (see `vardist verifiers`), loaded beside the "
        "model; alone it scores the kept image (logged as reward).", rich_help_panel=SEARCH),
    verifier_weights: Optional[Path] = typer.Option(
        None, "--verifier-weights", metavar="DIR", help="Folder with the verifier's weights "
        "(else $VARDIST_WEIGHTS, then the Hugging Face cache; nothing is downloaded).",
        rich_help_panel=SEARCH),
    rerank: Optional[int] = typer.Option(
        None, metavar="K", help="With --verifier: finish the first K shortlisted candidates, "
        "score them and keep the best (--strategy random-k --k 8 --rerank 8 is best-of-8).",
        rich_help_panel=SEARCH),
    search: Optional[str] = typer.Option(
        None, "--search", metavar="SCHEDULE", help="Search across scales: RULE:POP@SCALE\\[/N],... "
        "(rules density, reward = beam, cluster, resample), e.g. beam:8@1,4@3,1@6, or the preset "
        "tts-var; see docs/search.md. density:1@K is the one-scale search at scale K.",
        rich_help_panel=SEARCH),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar.", rich_help_panel=OUTPUT),
    json_summary: bool = typer.Option(
        False, "--json", help="Print a JSON summary at the end (counts, seconds, paths, seconds "
        "per stage) as the only stdout; progress goes to stderr.", rich_help_panel=OUTPUT),
) -> None:
    """Search images for classes or prompts and write them (GenEval or class layout), with a
    Parquet run log; rerun the same command to resume."""
    from vardist.api import search as run_search
    from vardist.io.conditions import InputError
    from vardist.io.outputs import DiskFull
    from vardist.models.checkpoint import CheckpointError
    from vardist.verifiers.base import MissingVerifierWeights

    ray_opts = {key: v for key, v in (("address", address), ("actors", actors)) if v is not None}
    samples = _samples(samples, per_class, per_prompt, prompts)
    if ctx.get_parameter_source("weights") == ParameterSource.ENVIRONMENT:
        weights = None  # the library reads $VARDIST_WEIGHTS itself, for models that use it
    start = time.perf_counter()
    with _ProgressBar(quiet, to_stderr=json_summary) as bar, _warnings_as_lines():
        try:
            results = run_search(
                model, prompts=prompts, classes=classes, samples=samples, n=n,
                strategy=_value(strategy),
                scale=scale, alpha=alpha, rep=rep, conflict_thresh=conflict_thresh, k=k, cfg=cfg,
                top_k=top_k, top_p=top_p, tau=tau, seed=seed, out=out, batch_size=batch_size,
                weights=weights, device=device, engine=_value(engine),
                bandwidth=_value(bandwidth), kde_method=_value(kde_method),
                metric=_value(metric), grid=grid, log_candidates=log_candidates,
                schedule=_int_list(schedule, "--schedule"), pool_sampling=_value(pool_sampling),
                preset=_value(preset), autocast=_value(autocast),
                text_device=_value(text_device), verifier=verifier,
                verifier_weights=verifier_weights, rerank=rerank, search=search,
                progress=bar.update, **ray_opts)
        except InputError as e:
            raise _bad_input(e) from None
        except MissingVerifierWeights as e:
            raise typer.BadParameter(str(e), param_hint="'--verifier-weights'") from None
        except FileNotFoundError as e:
            raise typer.BadParameter(str(e), param_hint="'--weights'") from None
        except (DiskFull, CheckpointError) as e:  # CheckpointError: a weights file refused
            _fail(e)
    seconds = time.perf_counter() - start
    earlier = sum(r.resumed for r in results)
    if json_summary:
        typer.echo(json.dumps(_summary(results, out, model, seconds), indent=1))
    else:
        typer.echo(f"{len(results) - earlier} images written, {earlier} already there, to "
                   f"{out} in {seconds:.1f} s")


@contextmanager
def _warnings_as_lines() -> Iterator[None]:
    """The library's InputWarnings (an option the run does not read) as `Warning: ...` lines
    on stderr, every time, instead of Python's file:line form."""
    from vardist.io.conditions import InputWarning

    with warnings.catch_warnings():
        warnings.simplefilter("always", InputWarning)
        shown = warnings.showwarning

        def show(message, category, *args, **kwargs) -> None:
            if issubclass(category, InputWarning):
                typer.echo(f"Warning: {message}", err=True)
            else:
                shown(message, category, *args, **kwargs)
        warnings.showwarning = show
        yield


def _summary(results, out: Path, model: str, seconds: float) -> dict:
    """`search --json`: what a program reading the run needs, in one object."""
    written = sum(not r.resumed for r in results)
    files = {name: str(out / name) for name in ("run.json", "runlog.parquet",
                                                "candidates.parquet") if (out / name).is_file()}
    return {"out": str(out), "model": model, "images": len(results), "written": written,
            "already_there": len(results) - written, "seconds": round(seconds, 3),
            "images_per_second": round(written / seconds, 4) if seconds > 0 else None,
            "stage_seconds": {k: round(v, 4) for k, v in results.stage_seconds().items()},
            "engine": getattr(results, "stats", None), "files": files,
            # compute and reward: continuations per image (1 plain, up to K with --rerank)
            "continuations_per_image": (sum(r.continuations for r in results) / len(results)
                                        if results else None),
            "mean_reward": (sum(r.reward for r in rewarded) / len(rewarded)
                            if (rewarded := [r for r in results if r.reward is not None])
                            else None),
            "image_paths": [str(r.path) for r in results]}


def _int_list(text: Optional[str], option: str) -> Optional[list[int]]:
    if text is None:
        return None
    try:
        return [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated integers, got {text!r}",
                                 param_hint=f"'{option}'") from None


class _ProgressBar:
    """Progress of a search: images done / total, images per second, time left. On a terminal
    a rich progress bar; elsewhere (kubectl logs, ray job logs, a redirected file), where a
    live bar shows nothing until the end, a plain line at the first update, then every
    `every_s` seconds from a timer thread (so a batch that takes minutes still shows the run
    is alive), and at the end. Images an earlier run finished do not count towards the
    speed."""

    every_s = 30.0

    def __init__(self, quiet: bool, to_stderr: bool = False) -> None:
        self.quiet = quiet
        self.to_stderr = to_stderr  # --json: stdout holds only the summary
        stream = sys.stderr if to_stderr else sys.stdout
        self.plain = not quiet and not stream.isatty()
        self.task = None
        self.start: float | None = None
        self.done0 = 0
        self.last: tuple[int, int] | None = None  # the latest (done, total)
        self.printed: tuple[int, int] | None = None  # what the latest line said
        self.lock = threading.Lock()  # the engine's thread updates, the timer thread prints
        self.stop = threading.Event()

    def __enter__(self) -> "_ProgressBar":
        if self.plain:
            self.timer = threading.Thread(target=self._tick, name="vardist-progress",
                                          daemon=True)
            self.timer.start()
        elif not self.quiet:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn,
                                       TextColumn, TimeRemainingColumn)
            from rich.text import Text

            class Speed(ProgressColumn):
                def render(self, task) -> Text:
                    return Text(f"{task.speed:.2f} img/s" if task.speed else "- img/s")

            self.progress = Progress(TextColumn("searching"), BarColumn(), MofNCompleteColumn(),
                                     Speed(), TextColumn("ETA"), TimeRemainingColumn(),
                                     console=_console(self.to_stderr))
            self.progress.start()
        return self

    def update(self, done: int, total: int) -> None:
        if self.quiet:
            return
        if self.plain:
            with self.lock:
                first = self.start is None
                if first:
                    self.start, self.done0 = time.monotonic(), done
                self.last = (done, total)
                if first or done == total:
                    self._line()
        elif self.task is None:  # images finished by an earlier run do not count towards speed
            self.task = self.progress.add_task("search", total=total, completed=done)
        else:
            self.progress.update(self.task, completed=done, total=total)

    def _tick(self) -> None:
        while not self.stop.wait(self.every_s):
            with self.lock:
                if self.last is not None and self.last[0] < self.last[1]:
                    self._line()

    def _line(self) -> None:
        done, total = self.last
        elapsed = time.monotonic() - self.start
        rate = (done - self.done0) / elapsed if elapsed > 0 and done > self.done0 else None
        eta = (f"{_clock((total - done) / rate)}" if rate else "-") if done < total else "0:00:00"
        pct = 100 * done / total if total else 100
        typer.echo(f"[{time.strftime('%H:%M:%S')}] {done}/{total} images ({pct:.0f}%), "
                   f"{f'{rate:.2f}' if rate else '-'} img/s, ETA {eta}", err=self.to_stderr)
        self.printed = self.last

    def __exit__(self, *exc) -> None:
        if self.plain:
            self.stop.set()
            self.timer.join()
            if self.last is not None and self.printed != self.last:
                self._line()  # where an interrupted run stopped
        elif not self.quiet:
            self.progress.stop()


def _clock(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}"


def _console(stderr: bool):
    from rich.console import Console

    return Console(stderr=stderr)


@app.command()
def models(
    weights: Optional[Path] = typer.Option(
        None, envvar="VARDIST_WEIGHTS", help="Folder to look for checkpoint files in."),
    memory: bool = typer.Option(
        False, "--memory", help="Show the planned GPU memory instead: weights, GB per item and "
        "the largest batch per GPU size, at each model's default n and scale."),
) -> None:
    """List the registered models: family, default search settings, whether weights are found."""
    if memory:
        _memory_table()
        return
    from rich import box
    from rich.console import Console
    from rich.table import Table

    from vardist.models import registry

    specs = registry.specs()
    rows = []
    for name, spec in specs.items():
        d = spec.defaults
        conds = (f"{spec.num_classes} cls" if spec.num_classes
                 else {"prompt": "text"}.get(spec.condition_kind, spec.condition_kind or "?"))
        rows.append((name, spec.family, conds, str(d.scale), str(d.n), d.strategy,
                     f"{d.alpha:g}", f"{d.cfg:g}", _weights_status(spec, weights)))
    # 80 columns: one space between columns and every column as wide as its widest cell, so
    # no name or value is cut (75 columns with today's registry)
    table = Table(title="vardist models", box=box.SIMPLE_HEAD, pad_edge=False, padding=0)
    header = ("name", "family", "input", "scale", "n", "strategy", "alpha", "cfg", "weights")
    for i, col in enumerate(header):
        table.add_column(col, no_wrap=True, min_width=max(len(r[i]) for r in [header, *rows]),
                         justify="right" if col in ("scale", "n", "alpha", "cfg") else "left")
    for row in rows:
        table.add_row(*row)
    console = Console()
    console.print(table)
    console.print("input: class labels (cls) or text prompts. weights: found / missing in "
                  "--weights or $VARDIST_WEIGHTS; bundled: shipped with vardist; fixture: a "
                  "test model read from its fixture folder.", highlight=False)


@app.command()
def verifiers(
    weights: Optional[Path] = typer.Option(
        None, "--verifier-weights", help="Folder to look for verifier weights in (then "
        "$VARDIST_WEIGHTS, then the Hugging Face cache)."),
) -> None:
    """List the built-in verifiers (rewards for --verifier) and whether their weights are found."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    import vardist.verifiers

    listed = vardist.verifiers.status(weights)
    table = Table(title="vardist verifiers", box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("name", "input", "weights", "what it scores"):
        table.add_column(col, no_wrap=col != "what it scores")
    for s in listed:
        table.add_row(s.name, s.condition_kind, "found" if s.found else "missing", s.description)
    console = Console()
    console.print(table)
    for s in listed:
        if not s.found:
            console.print(f"{s.name}: {s.detail}", highlight=False, soft_wrap=True)


def _weights_status(spec, weights: Optional[Path]) -> str:
    from vardist.models import registry

    if spec.fixture_dir is not None:  # read from a fixture folder, never from --weights
        try:
            spec.fixture_dir()
        except FileNotFoundError:
            return "missing"
        return "fixture"
    if not spec.files or (spec.bundled_dir is not None and weights is None):
        return "bundled"  # a folder given for a bundled model holds a retrained one
    return "found" if registry.find_weight_files(spec, weights) is not None else "missing"


def _memory_table() -> None:
    """`vardist models --memory`: vardist.models.memory's plan, one row per model (80 columns)."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    from vardist.models import memory, registry

    table = Table(title="planned GPU memory (default n and scale; largest batch per GPU)",
                  box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("name", no_wrap=True)
    table.add_column("weights GB", justify="right")
    table.add_column("GB/item", justify="right")
    for size in memory.GPU_SIZES_GB:
        table.add_column(f"{size} GB", justify="right")
    for name, weights, per_item, fits in memory.table_rows(list(registry.specs())):
        table.add_row(name, weights, per_item, *fits)
    Console().print(table)
    typer.echo("'-': sizes known only once loaded (fixtures); 0: not even batch 1 fits.\n"
               "Totals include a 2 GB reserve for the CUDA context (docs/cluster.md).")


@app.command()
def pack(
    out: Path = typer.Argument(..., help="Output folder of a class-layout search."),
    dest: Optional[Path] = typer.Option(None, help="The .npz to write (default: OUT.npz)."),
    allow_partial: bool = typer.Option(
        False, help="Pack an incomplete run as it is (default: refuse, naming what is missing)."),
) -> None:
    """Pack OUT/images/class_*/*.png into the .npz (uint8 arr_0 [N, H, W, 3]) that the ImageNet
    FID/IS evaluators take. An incomplete run is refused unless --allow-partial; the ImageNet
    protocol expects 50 images per class for all 1000 classes."""
    from vardist.io import outputs
    from vardist.io.conditions import InputError

    try:
        missing, expected, _ = outputs.missing_class_images(out)
        path, shape = outputs.pack_npz(out, dest, allow_partial=allow_partial)
    except InputError as e:
        raise typer.BadParameter(str(e), param_hint="'OUT'") from None
    except outputs.DiskFull as e:
        _fail(e)
    typer.echo(f"wrote {path}: arr_0 uint8 {list(shape)}")
    if missing:
        typer.echo(f"partial: {len(missing)} of the {expected} images of the run are missing",
                   err=True)
    counts = outputs.class_counts(out)
    if (len(counts) != outputs.IMAGENET_CLASSES
            or set(counts.values()) != {outputs.IMAGENET_PER_CLASS}):
        per = sorted(set(counts.values()))
        typer.echo(f"note: {outputs.IMAGENET_NOTE}; this pack has {len(counts)} classes with "
                   f"{', '.join(map(str, per))} images each", err=True)


def _fail(e: Exception) -> None:
    """A run-time failure (not a usage error): its message on stderr, exit code 1."""
    typer.echo(f"Error: {getattr(e, 'strerror', None) or e}", err=True)
    raise typer.Exit(1)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def train(
    ctx: typer.Context,
    model: str = typer.Argument("toy-digits", help="The zoo model to train (toy-digits or toy-shapes)."),
    out: Path = typer.Option(..., help="Folder for the weights, config and train_log.jsonl."),
) -> None:
    """Retrain a zoo model from a seed (toy-digits: the judge, the VQVAE, then the VAR; toy-shapes:
    the BSQ VAE, then the Infinity transformer with its word encoder; docs/zoo.md gives the
    times). Further options (--seed, --vae-steps, --var-steps, --stages, --threads, ...) are
    those of `python -m vardist.zoo.train --help` (toy-digits) and `python -m
    vardist.zoo.shapes_train --help` (toy-shapes)."""
    if model == "toy-digits":
        from vardist.zoo.train import main as train_main
    elif model == "toy-shapes":
        from vardist.zoo.shapes_train import main as train_main
    else:
        raise typer.BadParameter(f"unknown zoo model {model!r}; the zoo has toy-digits and toy-shapes",
                                 param_hint="'MODEL'")
    train_main(["--out", str(out), *ctx.args])


eval_app = typer.Typer(help="Score a run's images with an exact evaluator.",
                       no_args_is_help=True)
app.add_typer(eval_app, name="eval")


@eval_app.command("toy-geneval")
def eval_toy_geneval(
    out: Path = typer.Argument(..., help="GenEval-layout folder of a toy-shapes run "
                               "(--prompts toy-geneval.jsonl)."),
    results: Optional[Path] = typer.Option(
        None, help="Also write one JSON line per image (filename, tag, correct, reason)."),
) -> None:
    """Find the shapes in every image exactly and print GenEval's summary: accuracy per tag
    and the overall score (the mean over tags)."""
    from vardist.zoo.geneval_eval import evaluate_folder

    try:
        scores = evaluate_folder(out)
    except (FileNotFoundError, ValueError) as e:
        raise typer.BadParameter(str(e), param_hint="'OUT'") from None
    if results is not None:
        scores.write_results(results)
    typer.echo(scores.summary())


if __name__ == "__main__":
    app()
