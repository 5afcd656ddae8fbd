"""`vardist.search(...)`: the main job from Python. Check everything, then load, search, write.

    results = vardist.search("toy-digits", classes="0-9", samples=8, n=100, out="runs/digits")
    results = vardist.search("infinity-2b", prompts="geneval.jsonl", weights="/ckpt", out="runs/g")

None for a search setting means the model's paper default (its registry SearchDefaults).
"""

from __future__ import annotations

import importlib
import inspect
import numbers
import os
import re
import warnings
from contextlib import nullcontext
from dataclasses import asdict, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from vardist.engine import AUTOCAST_MODES, ENGINES, TEXT_DEVICES
from vardist.engine.plan import (STRATEGY_USES, Job, SearchSettings, check_plan_size,
                                 check_pool_memory, check_schedule_memory, device_type,
                                 local_gpu, memory_budget, unused_settings)
from vardist.engine.schedule import SearchSchedule, parse_search
from vardist.io.conditions import (InputError, InputWarning, parse_classes,
                                   prompts_from_strings, read_prompts)
from vardist.io.outputs import check_writable, folder_lock, human_size
from vardist.models import registry
from vardist.models.interface import ScaleWiseGenerator

if TYPE_CHECKING:  # the engine's results import torch: a refused run never needs them
    from vardist.engine.results import SearchResults



def search(model: str | ScaleWiseGenerator, *, prompts: str | Path | Sequence[str] | None = None,
           classes: str | int | Sequence[int] | None = None, samples: int | None = None,
           n: int | None = None, strategy: str | None = None, scale: int | None = None,
           alpha: float | None = None, rep: int | None = None,
           conflict_thresh: float | None = None, k: int | None = None, cfg: float | None = None,
           top_k: int | None = None, top_p: float | None = None, tau: float | None = None,
           seed: int = 0, out: str | Path | None = None, batch_size: int | None = None,
           weights: str | Path | None = None, device: str | None = None, engine: str = "local",
           bandwidth: str | None = None, kde_method: str = "auto", metric: str = "l2",
           grid: bool = False, log_candidates: bool = False,
           schedule: Sequence[int] | None = None, pool_sampling: str | None = None,
           preset: str | None = None, autocast: str | None = None,
           text_device: str | None = None, verifier: str | None = None,
           verifier_weights: str | Path | None = None, rerank: int | None = None,
           search: str | None = None,
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
    searched scale indexes into it. pool_sampling: "iid" (default) or "authors", the released
    VAR code's narrowing candidate sampler (candidate j drawn after j + 1 top-p cuts; VAR
    models). preset: "authors" reproduces the authors' run.py (VAR): samples=50 with one class
    per batch (batch_size = samples), bandwidth="batch", pool_sampling="authors", scale 1,
    n 50, alpha 2.3, rep 10, conflict_thresh 1.8, cfg 1.0, top_k 900, top_p 0.96; arguments
    given explicitly override it (docs/search.md). Without a preset samples is 4, batch_size
    8, bandwidth "item". autocast: "fp16" runs the VAR models under fp16 autocast with TF32
    matmuls on CUDA, as run.py does (a no-op on the CPU; default off). text_device (Infinity
    models): "cpu" keeps the T5 text encoder on the CPU in fp32 (frees ~2.4 GB of GPU memory;
    its features differ from the fp16 ones by rounding), "offload" parks it there between
    batches (same numbers as None, slower); None keeps it beside the model. verifier: an image
    reward (`vardist.verifiers`, e.g. "clip", "toy-judge") loaded beside the model; alone it
    scores the chosen image (logged as `reward`). rerank: K >= 1 finishes the first K of the
    strategy's shortlist, scores them and keeps the best (ties: density, then index), e.g.
    strategy="random-k", k=8, rerank=8 is best-of-8. verifier_weights: the folder holding the
    verifier's weights (else $VARDIST_WEIGHTS, then the Hugging Face cache). search: a
    schedule of searched scales, e.g. "beam:8@1,4@3,1@6" or "tts-var" (docs/search.md, "Search
    across scales"); "density:1@K" is the one-scale search at scale K. progress: called
    with (images done, total) after every batch. On a GPU, a batch the memory plan
    (vardist.models.memory) says cannot fit is refused before loading, naming one that fits.

    Every input is checked before a model is loaded; bad input raises InputError (a ValueError
    naming the argument) or FileNotFoundError for missing weights.
    """
    # Every argument but progress goes to plan_search unchanged (one list of checks).
    args = dict(locals())
    del args["progress"], args["engine_options"]
    if progress is not None and not callable(progress):  # else a TypeError after the load
        raise InputError(f"progress must be a function of (images done, total), got "
                         f"{type(progress).__name__} {progress!r}", param="progress")
    job, config = plan_search(**args, **engine_options)
    _warn_unused(job.settings.strategy, args)
    if engine == "ray":
        try:
            ray_engine = importlib.import_module("vardist.engine.ray")
        except ModuleNotFoundError as e:
            if e.name != "vardist.engine.ray":
                raise
            raise InputError("the Ray engine (vardist.engine.ray) is not available in this "
                             "installation; use engine='local'", param="engine") from e
        ray_engine.preflight(engine_options)  # a dead cluster address: refused, nothing written
    # One run per output folder at a time (FolderBusy names the holder's pid), held until this
    # run ends, however it ends.
    from vardist.engine.results import Recorder

    with folder_lock(job.out) if job.out is not None else nullcontext():
        recorder = Recorder(job, config)  # opens run.json: refuses a folder with other settings
        done = recorder.complete()  # a finished run: nothing to do, so no model to load
        if done is not None:
            if progress:
                progress(len(done), len(done))
            return done
        instance = job.model if isinstance(job.model, ScaleWiseGenerator) else None
        if instance is None and job.model_options:  # built once here, shipped to Ray actors
            instance = registry.load(job.model, weights, device, **job.model_options)
        if engine == "ray":  # actors load the model by name themselves, or get the instance
            return ray_engine.run(job, instance, recorder, progress, **engine_options)
        from vardist.engine import local

        loaded = instance or registry.load(job.model, weights, device)
        _check_loaded(loaded, job)
        return local.run(job, loaded, recorder, progress)


def plan_search(model: str | ScaleWiseGenerator, *, prompts=None, classes=None,
                samples: int | None = None,
                n=None, strategy=None, scale=None, alpha=None, rep=None, conflict_thresh=None,
                k=None, cfg=None, top_k=None, top_p=None, tau=None, seed: int = 0, out=None,
                batch_size: int | None = None, weights=None, device=None,
                engine: str = "local", bandwidth: str | None = None, kde_method: str = "auto",
                metric: str = "l2", grid: bool = False, log_candidates: bool = False,
                schedule: Sequence[int] | None = None, pool_sampling: str | None = None,
                preset: str | None = None, autocast: str | None = None,
                text_device: str | None = None, verifier: str | None = None,
                verifier_weights=None, rerank: int | None = None, search: str | None = None,
                **engine_options: Any) -> tuple[Job, dict[str, Any]]:
    """Every check of search() without loading a model: returns the Job and the run.json config.
    Engines other than search() (the Ray engine, studies) start from here too."""
    _check_types(locals())  # first: wrong types named by argument, not bare TypeErrors later
    _check_device(device)
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
    family = spec.family if spec is not None else getattr(model, "family", None)
    # A preset fills what the caller left out (None); explicit arguments win.
    pre = _preset_values(preset, family, model)
    samples = samples if samples is not None else pre.get("samples", 4)
    # "authors": one condition's samples per canonical batch (items are condition-major)
    batch_size = batch_size if batch_size is not None else (samples if pre else 8)
    bandwidth = bandwidth if bandwidth is not None else pre.get("bandwidth", "item")
    pool_sampling = pool_sampling if pool_sampling is not None else pre.get("pool_sampling", "iid")
    if pool_sampling == "authors" and family != "var":
        raise InputError(f"pool_sampling='authors' is the released VAR code's sampler and only "
                         f"applies to VAR models, not {_name(model)} (its family: {family}); "
                         f"use pool_sampling='iid'", param="pool_sampling")
    model_options = {}
    if autocast not in (None, "off"):
        model_options["autocast"] = _check_load_option(
            "autocast", autocast, AUTOCAST_MODES, spec, "the VAR checkpoints var-d16 ... var-d36")
    if text_device is not None:
        model_options["text_device"] = _check_load_option(
            "text_device", text_device, TEXT_DEVICES, spec, "the Infinity models")
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
    given = {key: pre.get(key) if v is None else v for key, v in given.items()}
    schedule_text, search_schedule = _check_search(search, scale, num_scales, verifier, rerank,
                                                   dict(log_candidates=log_candidates,
                                                        bandwidth=bandwidth))
    if schedule_text is not None:  # the searched scales come from the schedule
        given["scale"] = search_schedule.steps[0].scale
        search_schedule = search_schedule if search_schedule.one_scale() is None else None
    scale, n = given["scale"], given["n"]
    if defaults is None:
        if scale is None or n is None:
            raise InputError("this model object carries no search defaults: pass scale= and n=",
                             param="scale" if scale is None else "n")
        defaults = registry.SearchDefaults(scale=scale, n=n)
    merged = {f.name: getattr(defaults, f.name) for f in fields(defaults)}
    merged.update({key: v for key, v in given.items() if v is not None})
    settings = SearchSettings(**{key: merged[key] for key in given}, bandwidth=bandwidth,
                              kde_method=kde_method, metric=metric, pool_sampling=pool_sampling)
    settings.check(num_scales)

    # Conditions.
    if (prompts is None) == (classes is None):
        raise InputError("give exactly one of prompts (a JSONL file) or classes (e.g. '0-9')",
                         param="prompts" if prompts is not None else "classes")
    if prompts is not None:
        if kind == "class":
            raise InputError(f"model {_name(model)} is class-conditional: use classes, not "
                             f"prompts", param="prompts")
        lines = (read_prompts(prompts) if isinstance(prompts, (str, os.PathLike))
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
    if grid and kind == "class":  # grids are per prompt (OUT/NNNNN/grid.png): never dropped silently
        raise InputError("grid only applies to prompt runs (a grid.png per prompt folder); a "
                         "class run has no grid: drop it", param="grid")
    for name, on, what in (("grid", grid, "a grid.png per prompt"),
                           ("log_candidates", log_candidates, "candidates.parquet")):
        if on and out is None:  # an in-memory run writes no file: it would be dropped silently
            raise InputError(f"{name}=True writes {what} into the output folder, and out is "
                             f"None (the images stay in memory): give out= a folder, or drop "
                             f"{name}", param=name)

    # The verifier: its name, input and weights files (the registry's specs import no torch).
    verifier_identity = _check_verifier(verifier, verifier_weights, rerank, kind, settings,
                                        out, [c for _, c in conditions])

    # Sizes, by arithmetic, before anything is built or loaded. Everything above runs without
    # torch (a refusal there takes no torch import); below, torch is imported to ask about a GPU
    # where one may be (engine.plan.cuda_ruled_out) and to plan a --search population from the
    # model's parameter count.
    check_plan_size(len(conditions), samples, kind)
    side = schedule[settings.scale] if schedule is not None else settings.scale + 1
    # A batch's pool is held in this machine's memory whatever the device (the selection reads
    # it there), so it is checked against that first, without asking torch about GPUs.
    host = _memory_budget("cpu", engine, engine_options)
    check_pool_memory(settings, batch_size, side * side, host)  # side: a lower bound if unknown
    _check_device_here(device, engine, engine_options)
    budget = _memory_budget(device, engine, engine_options)
    if budget != host:  # and on a GPU, against the GPU's memory
        check_pool_memory(settings, batch_size, side * side, budget)
    _check_gpu_plan(spec, settings, batch_size, device, engine, model_options)
    _check_population_memory(spec, settings, search_schedule, batch_size, budget,
                             device_type(device), model_options, _has_image_tower(verifier))
    if schedule is not None:
        check_schedule_memory(schedule, batch_size, budget, **_schedule_sizes(spec, weights))

    # Where it goes, and what it needs.
    if spec is not None and registry.find_weight_files(spec, weights) is None:
        raise registry.missing_weights_error(spec, weights)
    if spec is not None and weights is not None and not spec.files:
        raise InputError(f"model {spec.name} does not read weights from a folder (it has no "
                         f"checkpoint files to look up), so weights={str(weights)!r} would be "
                         f"ignored: drop it", param="weights")
    if out is not None:
        check_writable(out)

    job = Job(model=model, settings=settings, conditions=conditions, samples=samples, seed=seed,
              batch_size=batch_size, weights=str(weights) if weights else None, device=device,
              out=str(out) if out is not None else None, condition_kind=kind,
              prompt_lines=prompt_lines, grid=grid, log_candidates=log_candidates,
              options=dict(engine_options, engine=engine), model_options=model_options,
              # the files a resume must load again (a folder run only: hashing reads ~3 MiB each)
              weights_identity=(registry.weights_identity(spec, weights)
                                if spec is not None and out is not None else {}),
              verifier=verifier, rerank=rerank or 0, verifier_identity=verifier_identity,
              verifier_weights=str(verifier_weights) if verifier_weights else None,
              search=str(search_schedule) if search_schedule is not None else None)
    config = {"model": job.model_name, "settings": asdict(settings), "samples": samples,
              "seed": seed, "batch_size": batch_size, "engine": engine,
              "engine_options": engine_options, "out": job.out, "weights": job.weights,
              "device": device, "grid": grid, "log_candidates": log_candidates,
              "condition_kind": kind, "num_conditions": len(conditions),
              "model_options": model_options, "preset": preset, "verifier": verifier,
              "verifier_weights": job.verifier_weights, "rerank": job.rerank,
              "prompts_file": str(prompts) if isinstance(prompts, (str, Path)) else None,
              "images": len(job.items), "search": schedule_text}
    return job, config


# The authors' VAR script (run.py of the released VAR-Scaling code) in one flag: one call per
# class generates that class's 50 images with the KDE bandwidth pooled over them, candidates from
# the narrowing sampler, and run.py's fixed settings (alpha 2.3 for every depth). batch_size
# follows samples (one class per batch). docs/search.md lists what still differs.
PRESETS: dict[str, dict[str, Any]] = {
    "authors": dict(samples=50, bandwidth="batch", pool_sampling="authors",
                    strategy="var-scaling", scale=1, n=50, alpha=2.3, rep=10,
                    conflict_thresh=1.8, cfg=1.0, top_k=900, top_p=0.96, tau=1.0),
}


def _preset_values(preset: str | None, family: str | None, model: Any) -> dict[str, Any]:
    if preset is None:
        return {}
    if preset not in PRESETS:
        raise InputError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}",
                         param="preset")
    if family != "var":
        raise InputError(f"preset {preset!r} reproduces the authors' VAR script and applies to "
                         f"VAR models (var-d16 ... var-d36), not {_name(model)}", param="preset")
    return PRESETS[preset]


def _check_load_option(param: str, value: str, allowed: Sequence[str], spec,
                       which: str) -> str:
    """A load option (autocast, text_device) of the registry models whose builder takes it
    (`which` names them for the message)."""
    if value not in allowed:
        raise InputError(f"{param} must be one of {', '.join(allowed)}, got {value!r}",
                         param=param)
    if spec is None:
        raise InputError(f"{param} is a load option: build the model with it (e.g. "
                         f"vardist.models.load(name, {param}={value!r})) and pass no {param} here",
                         param=param)
    if param not in inspect.signature(spec.builder).parameters:
        raise InputError(f"model {spec.name} has no {param} option ({which} have it)",
                         param=param)
    return value


def _check_schedule(schedule, spec, model) -> list[int]:
    """A flexible schedule: positive, strictly increasing side lengths, for a registry model
    whose builder takes one (FlexVAR). The model checks what it supports when it is built."""
    if spec is None or spec.family != "flexvar":
        raise InputError(f"schedule only applies to FlexVAR models (flexible scale schedules), "
                         f"not {_name(model)}", param="schedule")
    try:
        # int() would truncate 2.5 to 2 and read "3": only integers are side lengths
        sides = [v.__index__() for v in schedule if not isinstance(v, bool)]
        if len(sides) != len(schedule):
            raise TypeError
    except (TypeError, AttributeError):
        raise InputError(f"schedule must be side lengths such as 1,2,3,4,6,9,13,16, got "
                         f"{schedule!r}", param="schedule") from None
    if not sides or sides[0] < 1 or any(b <= a for a, b in zip(sides, sides[1:])):
        raise InputError(f"schedule must be positive, strictly increasing side lengths, got "
                         f"{sides}", param="schedule")
    return sides


def _check_loaded(model: ScaleWiseGenerator, job: Job) -> None:
    """Checks the registry could not do before loading (specs without schedule / class info)."""
    job.settings.check(model.num_scales)
    if job.search is not None:  # a registry spec may not know the schedule's length
        parse_search(job.search, model.num_scales)
    if model.condition_kind != job.condition_kind:
        raise InputError(f"model {job.model_name} takes {model.condition_kind} conditions, "
                         f"this run gives {job.condition_kind}s",
                         param="prompts" if job.condition_kind == "prompt" else "classes")
    try:
        model.check_conditions([c for _, c in job.conditions])
    except ValueError as e:
        raise InputError(str(e), param="classes" if job.condition_kind == "class"
                         else "prompts") from e


_PATHS = ("out", "weights", "verifier_weights")
_STRINGS = ("device", "engine", "strategy", "bandwidth", "kde_method", "metric", "preset",
            "pool_sampling", "autocast", "text_device", "verifier", "search")
_INTS = ("samples", "n", "scale", "rep", "k", "top_k", "seed", "batch_size", "rerank")
_FLOATS = ("alpha", "conflict_thresh", "cfg", "top_p", "tau")
_BOOLS = ("grid", "log_candidates")


def _check_search(search: str | None, scale: int | None, num_scales: int | None,
                  verifier: str | None, rerank: int | None, one_scale_only: dict[str, Any]
                  ) -> tuple[str | None, SearchSchedule | None]:
    """A search-across-scales schedule (engine.schedule), checked before any model loads:
    (its canonical text, the schedule), or (None, None) without one. A one-scale density
    schedule ("density:1@K") is today's search at scale K and runs through the one-scale
    pipeline (same bytes, same run folder fingerprint)."""
    if search is None:
        return None, None
    if scale is not None:
        raise InputError(f"scale={scale} and search={search!r} both say which scales are "
                         f"searched: drop scale (the schedule's SCALE values are used)",
                         param="scale")
    sched = parse_search(search, num_scales)
    if sched.one_scale() is not None:
        return str(sched), sched
    if rerank is not None:
        raise InputError("rerank finishes the one-scale search's shortlist; with a search "
                         "schedule use the rule 'reward' (beam search) instead: drop rerank",
                         param="rerank")
    # one_scale_only: settings that read the one-scale pool, never silently dropped
    if one_scale_only["log_candidates"]:
        raise InputError("log_candidates logs the one-scale search's pool; a search schedule "
                         "logs each image's kept candidates (the lineage column) instead: drop "
                         "log_candidates", param="log_candidates")
    if one_scale_only["bandwidth"] == "batch":
        raise InputError("bandwidth='batch' pools a batch's one-scale pools; a search "
                         "schedule's density rule measures each item's candidates alone: drop "
                         "bandwidth or use 'item'", param="bandwidth")
    if sched.needs_verifier and verifier is None:
        raise InputError(f"search schedule {sched} has a reward rule (reward / beam / resample, "
                         f"or the tts-var preset): give verifier=NAME (`vardist verifiers` lists "
                         f"them)", param="verifier")
    return str(sched), sched


def _check_verifier(verifier: str | None, weights: str | Path | None, rerank: int | None,
                    kind: str, settings: SearchSettings, out: str | Path | None,
                    conditions: list[Any]) -> dict[str, str]:
    """Verifier-guided search's arguments, checked before any model loads; returns what
    identifies the verifier's weights (for a folder run's fingerprint). A missing weights file
    raises MissingVerifierWeights (a FileNotFoundError) naming it and where it is published."""
    if verifier is None:
        for name, v in (("rerank", rerank), ("verifier_weights", weights)):
            if v is not None:
                raise InputError(f"{name} needs a verifier (the reward that scores finished "
                                 f"images): give verifier=NAME (`vardist verifiers` lists "
                                 f"them) or drop {name}", param=name)
        return {}
    import vardist.verifiers as verifiers

    try:
        vspec = verifiers.get_spec(verifier)
    except ValueError as e:
        raise InputError(str(e), param="verifier") from None
    if vspec.condition_kind not in ("any", kind):
        kinds = "classes" if kind == "class" else f"{kind}s"
        raise InputError(f"verifier {verifier!r} scores images against {vspec.condition_kind} "
                         f"conditions, and this run has {kinds}; choose a verifier for "
                         f"{kinds} (`vardist verifiers` lists each one's input)",
                         param="verifier")
    if vspec.check_conditions is not None:
        try:
            vspec.check_conditions(conditions)
        except ValueError as e:
            raise InputError(str(e), param="prompts" if kind == "prompt" else "classes") from None
    if rerank is not None and rerank < 1:
        raise InputError(f"rerank must be >= 1 (candidates finished and scored per image), got "
                         f"{rerank}; drop it to only score the chosen image", param="rerank")
    if rerank is not None and settings.strategy == "none":
        raise InputError("rerank finishes candidates of the strategy's shortlist, and strategy "
                         "'none' has one (candidate 0); for best-of-K use strategy='random-k' "
                         "with k=K and rerank=K", param="rerank")
    # the most a strategy shortlists: var-scaling accepts up to rep, the others min(k, n)
    most, what = ((settings.rep, "rep") if settings.strategy == "var-scaling" else
                  (min(settings.k, settings.n), "min(k, n)"))
    if rerank is not None and rerank > most:
        warnings.warn(f"rerank={rerank}: strategy {settings.strategy!r} shortlists at most "
                      f"{what} = {most} candidates, so at most {most} are finished; raise "
                      f"{what} for a longer shortlist", InputWarning, stacklevel=4)
    verifiers.find_weights(vspec, weights)  # before anything loads
    return verifiers.weights_identity(vspec, weights) if out is not None else {}


def _check_types(args: dict[str, Any]) -> None:
    """Every argument of the wrong type, named, before any check that would trip over it with a
    bare TypeError (alpha="2", classes=3.0, out=123) or take it to mean something else
    (prompts={"prompt": ...} iterated its keys; out="" ran in memory)."""
    def bad(name: str, what: str) -> InputError:
        v = args[name]
        return InputError(f"{name} must be {what}, got {type(v).__name__} {v!r}", param=name)

    for name, v in args.items():
        if v is None:
            continue
        if name in _PATHS:
            if not isinstance(v, (str, os.PathLike)):
                raise bad(name, "a folder path (str or pathlib.Path)")
            if not str(v).strip():
                raise InputError(f"{name} is an empty path; give a folder"
                                 + (" (or out=None to keep the images in memory)"
                                    if name == "out" else ""), param=name)
        elif name in _STRINGS and not isinstance(v, str):
            raise bad(name, "a string")
        elif name in _INTS and (isinstance(v, bool) or not isinstance(v, numbers.Integral)):
            raise bad(name, "an integer")
        elif name in _FLOATS and (isinstance(v, bool) or not isinstance(v, numbers.Real)):
            raise bad(name, "a number")
        elif name in _BOOLS and not isinstance(v, bool):
            raise bad(name, "True or False")
        elif name == "prompts" and not isinstance(v, (str, os.PathLike)):
            prompts_from_strings(v)  # refuses a dict, bytes or a non-iterable, naming prompts
        elif name == "schedule" and (isinstance(v, (str, bytes))
                                     or not isinstance(v, Sequence)):
            raise bad(name, "a list of side lengths such as [1, 2, 3, 4, 6, 9, 13, 16]")


def _warn_unused(strategy: str, args: dict[str, Any]) -> None:
    """Warn (InputWarning) about settings given explicitly that the run's strategy does not read
    (rep with top-k, n with none): they would change no image. Not an error: a study or a
    script may pass one set of settings to every strategy."""
    plain = {"kde_method": "auto", "metric": "l2"}  # search()'s defaults that are not None
    unused = unused_settings(strategy, {k: v for k, v in args.items()
                                        if v is not None and (k not in plain or v != plain[k])})
    if unused:
        uses = (", ".join(STRATEGY_USES[strategy])
                or "no selection setting: candidate 0, the plain sample, is the image")
        it = "it" if len(unused) == 1 else "them"
        warnings.warn(f"{', '.join(f'{k}={v!r}' for k, v in unused.items())}: strategy "
                      f"{strategy!r} does not read {it} (it reads {uses}), so no image "
                      f"changes; drop {it} or choose a strategy that reads {it}",
                      InputWarning, stacklevel=3)


# The devices vardist runs on, as torch spells them (cpu, cuda, cuda:1, mps:0): an index
# without leading zeros (torch refuses cuda:01) and below 100 (torch keeps it in 8 bits, and
# reads cuda:200 as cuda:-56).
_DEVICE = re.compile(r"(cpu|cuda|mps)(:(0|[1-9][0-9]?))?")


def _check_device(device: str | None) -> None:
    """A device vardist cannot run on (potato, cuda:x, meta), refused by its spelling, without
    importing torch (whether this machine has it is _check_device_here's question)."""
    if device is not None and not _DEVICE.fullmatch(device):
        raise InputError(f"device {device!r} is not a torch device vardist runs on; use cpu, "
                         f"cuda, cuda:N (N from 0 to 99, no leading zeros) or mps", param="device")


def _check_device_here(device: str | None, engine: str, engine_options: dict[str, Any]) -> None:
    """A device this machine lacks (cuda on a CPU build of torch, cuda:3 of two GPUs, mps off
    a Mac), refused before any model loads (it failed while loading). A Ray cluster's actors
    may have devices this machine lacks: there only the spelling is checked."""
    if device is None or device_type(device) == "cpu":
        return
    if engine == "ray" and (engine_options.get("address") or os.environ.get("RAY_ADDRESS")):
        return
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"device {device!r}: this torch build ({torch.__version__}) sees "
                             f"no CUDA GPU (torch.cuda.is_available() is False); use device "
                             f"cpu, or install a CUDA build of torch (README, Install)",
                             param="device")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InputError(f"device {device!r}: this machine has {torch.cuda.device_count()} "
                             f"CUDA GPU(s), cuda:0..cuda:{torch.cuda.device_count() - 1}",
                             param="device")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise InputError(f"device {device!r}: MPS (Apple GPU) is not available here; use "
                             f"cpu", param="device")


def _local_gpu(device: str | None) -> tuple[int, str] | None:
    """(total bytes, its name) of the GPU a local run uses (device None: cuda when there is
    one), else None (engine.plan.local_gpu)."""
    gpu = local_gpu(device)
    return None if gpu is None else (gpu[0], f"GPU {gpu[1]} (cuda:{gpu[2]})")


def _check_gpu_plan(spec, settings: SearchSettings, batch_size: int, device: str | None,
                    engine: str, model_options: dict[str, Any]) -> None:
    """A registry model on this machine's GPU (local engine; Ray asks its actors' GPU): the
    memory plan (vardist.models.memory: weights, KV cache, pool, decode) must fit the device,
    checked before anything loads; else refused naming the batch that fits."""
    from vardist.models import memory

    if spec is None or engine != "local":
        return
    gpu = _local_gpu(device)
    fp = _run_footprint(spec, model_options) if gpu is not None else None
    if fp is None:
        return
    try:
        memory.check_fits(fp, gpu[0], batch=batch_size, n=settings.pool_size,
                          scale=settings.scale, cfg=settings.cfg, where=gpu[1], model=spec.name)
    except memory.MemoryPlanError as e:
        raise InputError(str(e), param="batch_size") from None


def _run_footprint(spec, model_options: dict[str, Any]):
    """The memory planner's Footprint of a registry model as this run builds it (its text
    encoder's place; FlexVAR on its own schedule: that schedule's sizes, not the default's);
    None for a model without one (fixtures, model objects: checked by what they load)."""
    from vardist.models import memory

    fp = memory.footprint(spec.name) if spec is not None else None
    if fp is None:
        return None
    fp = memory.with_text_device(fp, model_options.get("text_device"))
    if model_options.get("schedule"):
        fp = memory.with_schedule(fp, model_options["schedule"])
    return fp


def _has_image_tower(verifier: str | None) -> bool:
    """Whether a `cluster` step decodes previews for this verifier (it measures them by its
    image tower) rather than reading the latent; torch-free (the verifier registry's spec)."""
    from vardist.verifiers import get_spec

    return verifier is not None and get_spec(verifier).image_tower


def _check_population_memory(spec, settings: SearchSettings, sched: SearchSchedule | None,
                             batch_size: int, budget: tuple[int, str], device_kind: str,
                             model_options: dict[str, Any], image_tower: bool) -> None:
    """A search across scales holds a population of partial generations per item, each with
    its own KV cache: refuse, by arithmetic before the model loads, a schedule whose peak
    (members x the model's state per member, their candidates, previews; the memory planner's
    estimate_population) cannot fit `budget`, naming the estimate and what fits. Registry
    models with a known footprint only (others are checked by what they load)."""
    from vardist.engine.schedule import step_members
    from vardist.models import memory

    fp = _run_footprint(spec, model_options) if sched is not None else None
    if fp is None:
        return
    steps = step_members(sched, settings.n, previews=image_tower, image_hw=fp.image_hw)
    limit, where = budget

    def need(batch: int) -> memory.MemoryPlan:
        return memory.estimate_population(fp, batch=batch, steps=steps, cfg=settings.cfg,
                                          device=device_kind)

    plan = need(batch_size)
    if plan.total <= limit:
        return
    plain = memory.estimate(fp, batch=1, n=1, scale=len(fp.tokens) - 1, cfg=settings.cfg,
                            device=device_kind)
    if plain.total > limit:  # no schedule can help: the model alone does not fit
        raise InputError(
            f"model {spec.name} does not fit {where} even for plain generation of one image "
            f"(about {plain.describe()}), whatever the search schedule {sched}; use a device "
            f"with more memory (or --device cuda on a machine with a large enough GPU)",
            param="search")
    lo, hi = 0, batch_size - 1  # the largest batch that fits
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if need(mid).total <= limit else (lo, mid - 1)
    rows = max(batch_size * (st.before + st.after) for st in steps)
    pop = max(st.after for st in steps)
    member = memory.estimate(fp, batch=1, n=1, scale=0, cfg=settings.cfg,
                             device=device_kind).kv_cache
    hint = (f", or use batch_size {lo} (the largest that fits)" if lo else
            " (even batch_size 1 does not fit)")
    raise InputError(
        f"search schedule {sched} holds up to {rows:,} partial generations at once (a batch "
        f"of {batch_size} item{'s' * (batch_size != 1)}, up to {pop:,} members each, those "
        f"entering a step and those it keeps), each with a {human_size(member)} KV cache, "
        f"and one item's candidate previews: about {plan.describe()}, more than {where}; "
        f"lower its populations (POP) or candidates (/N){hint}", param="search")


def _memory_budget(device: str | None, engine: str, engine_options: dict[str, Any]
                   ) -> tuple[int, str]:
    """What a batch may use: this machine's (GPU or host) memory; on a Ray cluster, whose
    machines are not known here, the most any single machine holds."""
    if engine == "ray" and (engine_options.get("address") or os.environ.get("RAY_ADDRESS")):
        return 2 ** 41, "the 2 TB any one cluster machine holds at most"
    return memory_budget(device)


def _schedule_sizes(spec, weights) -> dict[str, int]:
    """FlexVAR's transformer and tokenizer sizes, without loading it: the released depths'
    configs, or the fixture's config.json."""
    from vardist.models.flexvar import specs as flex

    if spec.files == flex.TINY_FILES:
        import json

        from vardist.models.flexvar.configs import configs_from_fixture

        files = registry.find_weight_files(spec, weights)
        if files is None:
            raise registry.missing_weights_error(spec, weights)
        path = files["config.json"]
        vae_cfg, var_cfg, _ = configs_from_fixture(json.loads(Path(path).read_text()))
    else:
        vae_cfg, var_cfg = flex.official_configs(int(spec.name.removeprefix("flexvar-d")))
    return dict(depth=var_cfg.depth, width=var_cfg.embed_dim, vocab=var_cfg.vocab_size,
                downsample=vae_cfg.downsample, decoder_ch=vae_cfg.ch * vae_cfg.ch_mult[0])


def _name(model: Any) -> str:
    return model if isinstance(model, str) else type(model).__name__
