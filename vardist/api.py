"""`vardist.search(...)`: the main job from Python. Check everything, then load, search, write.

    results = vardist.search("toy-digits", classes="0-9", samples=8, n=100, out="runs/digits")
    results = vardist.search("infinity-2b", prompts="geneval.jsonl", weights="/ckpt", out="runs/g")

None for a search setting means the model's paper default (its registry SearchDefaults).
"""

from __future__ import annotations

import importlib
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, Callable, Sequence

from vardist.engine.plan import Job, SearchSettings
from vardist.engine.results import Recorder, SearchResults
from vardist.io.conditions import (InputError, parse_classes, prompts_from_strings,
                                   read_prompts)
from vardist.io.outputs import check_writable
from vardist.models import registry
from vardist.models.interface import ScaleWiseGenerator

ENGINES = ("local", "ray")


def search(model: str | ScaleWiseGenerator, *, prompts: str | Path | Sequence[str] | None = None,
           classes: str | int | Sequence[int] | None = None, samples: int = 4,
           n: int | None = None, strategy: str | None = None, scale: int | None = None,
           alpha: float | None = None, rep: int | None = None,
           conflict_thresh: float | None = None, k: int | None = None, cfg: float | None = None,
           top_k: int | None = None, top_p: float | None = None, tau: float | None = None,
           seed: int = 0, out: str | Path | None = None, batch_size: int = 8,
           weights: str | Path | None = None, device: str | None = None, engine: str = "local",
           bandwidth: str = "item", kde_method: str = "auto", metric: str = "l2",
           grid: bool = False, log_candidates: bool = False,
           schedule: Sequence[int] | None = None,
           progress: Callable[[int, int], None] | None = None,
           **engine_options: Any) -> SearchResults:
    """Search `samples` images for every condition and return their records (in item order).

    model: a registry name (`vardist models` lists them) or a loaded ScaleWiseGenerator.
    prompts: a GenEval-style JSONL file or a list of strings; classes: "0-9", "1,3,5-7", "all",
    an int or a list (exactly one of the two). n, strategy, scale, alpha, rep, conflict_thresh,
    k (shortlist of top-k / random-k / small-k / infinity), cfg, top_k, top_p, tau: None means
    the model's default. seed: the run seed (each image's seed derives from it, its condition
    and its sample index). out: write the GenEval / class layout, the run log and run.json there
    and resume a run already there; None keeps images in memory. batch_size: items per canonical
    batch. weights: the checkpoint folder (or $VARDIST_WEIGHTS). engine: "local" or "ray"
    (engine_options such as address=, actors= go to it). bandwidth: "item" (per item) or
    "batch" (pooled over the batch, as the authors' code). kde_method / metric: see
    vardist.selection.kde_density. grid: also write OUT/00000/grid.png (prompts).
    log_candidates: also log every candidate's density (candidates.parquet). schedule: the
    side lengths of the scale schedule, for models with flexible schedules (FlexVAR); the
    searched scale indexes into it. progress: called
    with (images done, total) after every batch.

    Every input is checked before a model is loaded; bad input raises InputError (a ValueError
    naming the argument) or FileNotFoundError for missing weights.
    """
    # Every argument but progress goes to plan_search unchanged (one list of checks).
    args = dict(locals())
    del args["progress"], args["engine_options"]
    job, config = plan_search(**args, **engine_options)
    if engine == "ray":
        try:
            ray_engine = importlib.import_module("vardist.engine.ray")
        except ModuleNotFoundError as e:
            if e.name != "vardist.engine.ray":
                raise
            raise InputError("the Ray engine (vardist.engine.ray) is not available in this "
                             "installation; use engine='local'", param="engine") from e
    recorder = Recorder(job, config)  # opens run.json: refuses a folder with other settings
    instance = job.model if isinstance(job.model, ScaleWiseGenerator) else None
    if instance is None and job.model_options:  # built once here, shipped to Ray actors as is
        instance = registry.load(job.model, weights, device, **job.model_options)
    if engine == "ray":  # actors load the model by name themselves, or get the instance
        return ray_engine.run(job, instance, recorder, progress, **engine_options)
    from vardist.engine import local

    loaded = instance or registry.load(job.model, weights, device)
    _check_loaded(loaded, job)
    return local.run(job, loaded, recorder, progress)


def plan_search(model: str | ScaleWiseGenerator, *, prompts=None, classes=None, samples: int = 4,
                n=None, strategy=None, scale=None, alpha=None, rep=None, conflict_thresh=None,
                k=None, cfg=None, top_k=None, top_p=None, tau=None, seed: int = 0, out=None,
                batch_size: int = 8, weights=None, device=None, engine: str = "local",
                bandwidth: str = "item", kde_method: str = "auto", metric: str = "l2",
                grid: bool = False, log_candidates: bool = False,
                schedule: Sequence[int] | None = None, **engine_options: Any
                ) -> tuple[Job, dict[str, Any]]:
    """Every check of search() without loading a model: returns the Job and the run.json config.
    Engines other than search() (the Ray engine, studies) start from here too."""
    # The model and what it accepts.
    if isinstance(model, str):
        try:
            spec = registry.get_spec(model)
        except ValueError as e:  # unknown name: the message lists the known ones
            raise InputError(str(e), param="model") from None
        defaults, num_scales = spec.defaults, spec.num_scales
        kind, num_classes = spec.condition_kind, spec.num_classes
    elif isinstance(model, ScaleWiseGenerator):
        spec = None
        defaults = getattr(model, "search_defaults", None)
        num_scales, kind, num_classes = model.num_scales, model.condition_kind, model.num_classes
    else:
        raise InputError(f"model must be a registry name or a ScaleWiseGenerator, got "
                         f"{type(model).__name__}", param="model")
    model_options = {}
    if schedule is not None:
        schedule = _check_schedule(schedule, spec, model)
        num_scales = len(schedule)
        model_options["schedule"] = schedule
    if engine not in ENGINES:
        raise InputError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}",
                         param="engine")
    if engine == "local" and engine_options:
        raise InputError(f"{', '.join(engine_options)} only apply to engine='ray'",
                         param=next(iter(engine_options)))

    # Settings: overrides on top of the model's defaults.
    given = dict(scale=scale, n=n, strategy=strategy, alpha=alpha, rep=rep,
                 conflict_thresh=conflict_thresh, k=k, cfg=cfg, top_k=top_k, top_p=top_p,
                 tau=tau)
    if defaults is None:
        if scale is None or n is None:
            raise InputError("this model object carries no search defaults: pass scale= and n=",
                             param="scale" if scale is None else "n")
        defaults = registry.SearchDefaults(scale=scale, n=n)
    merged = {f.name: getattr(defaults, f.name) for f in fields(defaults)}
    merged.update({key: v for key, v in given.items() if v is not None})
    settings = SearchSettings(**{key: merged[key] for key in given}, bandwidth=bandwidth,
                              kde_method=kde_method, metric=metric)
    settings.check(num_scales)

    # Conditions.
    if (prompts is None) == (classes is None):
        raise InputError("give exactly one of prompts (a JSONL file) or classes (e.g. '0-9')",
                         param="prompts" if prompts is not None else "classes")
    if prompts is not None:
        if kind == "class":
            raise InputError(f"model {_name(model)} is class-conditional: use classes, not "
                             f"prompts", param="prompts")
        lines = (read_prompts(prompts) if isinstance(prompts, (str, Path))
                 else prompts_from_strings(prompts))
        conditions = [(p.index, p.prompt) for p in lines]
        prompt_lines = {p.index: p.raw for p in lines}
        kind = "prompt"
    else:
        if kind == "prompt":
            raise InputError(f"model {_name(model)} takes text prompts: use prompts, not classes",
                             param="classes")
        conditions = [(c, c) for c in parse_classes(classes, num_classes)]
        prompt_lines = {}
        kind = "class"
    for name, value, low in (("samples", samples, 1), ("batch_size", batch_size, 1),
                             ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise InputError(f"{name} must be an integer >= {low}, got {value!r}", param=name)

    # Where it goes, and what it needs.
    if spec is not None and registry.find_weight_files(spec, weights) is None:
        raise registry.missing_weights_error(spec, weights)
    if out is not None:
        check_writable(out)

    job = Job(model=model, settings=settings, conditions=conditions, samples=samples, seed=seed,
              batch_size=batch_size, weights=str(weights) if weights else None, device=device,
              out=str(out) if out is not None else None, condition_kind=kind,
              prompt_lines=prompt_lines, grid=grid, log_candidates=log_candidates,
              options=dict(engine_options, engine=engine), model_options=model_options)
    config = {"model": job.model_name, "settings": asdict(settings), "samples": samples,
              "seed": seed, "batch_size": batch_size, "engine": engine,
              "engine_options": engine_options, "out": job.out, "weights": job.weights,
              "device": device, "grid": grid, "log_candidates": log_candidates,
              "condition_kind": kind, "num_conditions": len(conditions),
              "model_options": model_options,
              "prompts_file": str(prompts) if isinstance(prompts, (str, Path)) else None,
              "images": len(job.items)}
    return job, config


def _check_schedule(schedule, spec, model) -> list[int]:
    """A flexible schedule: positive, strictly increasing side lengths, for a registry model
    whose builder takes one (FlexVAR). The model checks what it supports when it is built."""
    if spec is None or spec.family != "flexvar":
        raise InputError(f"schedule only applies to FlexVAR models (flexible scale schedules), "
                         f"not {_name(model)}", param="schedule")
    try:
        sides = [int(v) for v in schedule]
    except (TypeError, ValueError):
        raise InputError(f"schedule must be side lengths such as 1,2,3,4,6,9,13,16, got "
                         f"{schedule!r}", param="schedule") from None
    if not sides or sides[0] < 1 or any(b <= a for a, b in zip(sides, sides[1:])):
        raise InputError(f"schedule must be positive, strictly increasing side lengths, got "
                         f"{sides}", param="schedule")
    return sides


def _check_loaded(model: ScaleWiseGenerator, job: Job) -> None:
    """Checks the registry could not do before loading (specs without schedule / class info)."""
    job.settings.check(model.num_scales)
    if model.condition_kind != job.condition_kind:
        raise InputError(f"model {job.model_name} takes {model.condition_kind} conditions, "
                         f"this run gives {job.condition_kind}s",
                         param="prompts" if job.condition_kind == "prompt" else "classes")
    try:
        model.check_conditions([c for _, c in job.conditions])
    except ValueError as e:
        raise InputError(str(e), param="classes" if job.condition_kind == "class"
                         else "prompts") from e


def _name(model: Any) -> str:
    return model if isinstance(model, str) else type(model).__name__
