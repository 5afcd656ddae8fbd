"""The GPU check: everything vardist's GPU path should answer, measured in one command.

    python3 benchmarks/gpu_check.py                         # one CUDA GPU, < 8 minutes
    python3 benchmarks/gpu_check.py --device cpu --tiny     # the CPU smoke mode CI runs

Prints one table and writes it as JSON (--json, default gpu_check.json). Sections:

- models: var-d16, var-d30 and infinity-2b at full size with random weights (built on the
  device from their registry configs: no downloads; random text features stand in for T5).
  "plain" is plain sampling (strategy none: candidate 0, no KDE), "search" the paper settings
  (VAR n 50 at scale 1, Infinity n 3000 at scale 3, the registry defaults otherwise), both
  through vardist.engine.pipeline as the local engine runs them (pool, select, continue,
  decode; no PNG encoding). Batches 1, 8 and the largest the memory plan
  (vardist.models.memory) says fits the GPU; a batch that runs out of memory is retried
  smaller. Per row: img/s, peak GPU memory (torch.cuda.max_memory_allocated), the plan's
  estimate (without the fixed reserve), the analytic FLOP limit and the MFU it implies.
- autocast: VAR plain sampling in fp32 and under `--autocast fp16` (run.py's fp16 autocast +
  TF32), same weights and seeds: img/s and the share of tokens that stay the same.
- kde: a bit pool of n = 3000 and 1e5 at P = 36 (Infinity scale 3): the CPU grouped kernel,
  FAISS on the GPU (when the installed faiss has GPUs) and an exact torch kernel on the device
  (over distinct vectors, float64), each with its largest relative difference to grouped.
- engines: the same job (toy-digits, or --engine-model with --weights) through the local
  engine and the Ray engine with one actor on the device: img/s and whether the PNG bytes
  agree.

The analytic FLOP limit (docs/throughput.md): per image, rows x (2 x W x T + 4 x C x depth x S
+ 4 x C x depth x T x L_text), W the weights every token meets (the blocks' attention and
FFN linears, word embedding and head; not AdaLN, not the text K/V), T the tokens of the
schedule, S = sum over scales of (tokens of the scale x tokens up to it), rows 2 with CFG; the
VAE decode is left out. Limit = peak FLOP/s of the dtype the blocks run in / FLOPs per image.

Robust by design: a failing or out-of-memory row is recorded with its error and the run goes
on; rows that would start after --budget-s are skipped and say so.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import hashlib
import json
import platform
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from vardist.engine import pipeline
from vardist.engine.plan import SearchSettings, plan_items
from vardist.models import memory, registry

# Dense peak TFLOP/s per GPU and dtype (vendor data sheets, without sparsity). Matched by
# substring of torch.cuda.get_device_name, first hit wins; --peak-tflops overrides.
PEAKS: tuple[tuple[str, dict[str, float]], ...] = (
    ("H200", {"bf16": 989.0, "fp16": 989.0, "tf32": 495.0, "fp32": 67.0}),
    ("H100 PCIe", {"bf16": 756.0, "fp16": 756.0, "tf32": 378.0, "fp32": 51.0}),
    ("H100", {"bf16": 989.0, "fp16": 989.0, "tf32": 495.0, "fp32": 67.0}),
    ("A100", {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5}),
    ("L40S", {"bf16": 362.0, "fp16": 362.0, "tf32": 183.0, "fp32": 91.6}),
    ("L4", {"bf16": 121.0, "fp16": 121.0, "tf32": 60.0, "fp32": 30.3}),
)
TEXT_TOKENS = 20         # random "T5" features per prompt (GenEval prompts: ~10-30 tokens)
# Linears a token does not go through: AdaLN (per condition), text K/V and projections (per
# text token, once per batch).
NOT_PER_TOKEN = ("ada_lin", "mat_kv", "text_proj")


@dataclass
class Row:
    section: str
    name: str
    batch: int | None = None
    value: float | None = None      # img/s, or seconds for KDE rows
    unit: str = ""
    peak_gb: float | None = None
    plan_gb: float | None = None
    limit: float | None = None      # analytic img/s at 100% of the peak
    mfu: float | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


# --- models with random weights ------------------------------------------------------------

class RandomText:
    """Stands in for flan-t5-xl: TEXT_TOKENS random feature rows per prompt, seeded by the
    prompt (same prompt, same features), on the device."""

    def __init__(self, channels: int, device: torch.device) -> None:
        self.channels, self.device = channels, device

    def encode(self, prompts: list[str]) -> list[torch.Tensor]:
        out = []
        for p in prompts:
            seed = int.from_bytes(hashlib.sha256(p.encode()).digest()[:4], "little")
            g = torch.Generator().manual_seed(seed)
            out.append(torch.randn(TEXT_TOKENS, self.channels, generator=g).to(self.device))
        return out


def _randomise(*modules: torch.nn.Module, device: torch.device) -> None:
    """Small random weights in place (timing does not depend on their values); buffers zero
    (the families recompute the ones that matter)."""
    g = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for m in modules:
            for p in m.parameters():
                p.normal_(0, 0.02, generator=g)
            for b in m.buffers():
                b.zero_()


def build_var(vae_cfg: Any, var_cfg: Any, device: torch.device) -> Any:
    from vardist.models.var import VARGenerator, VARTransformer, VQVAE

    with torch.device("meta"):
        vae, var = VQVAE(vae_cfg), VARTransformer(var_cfg)
    vae, var = vae.to_empty(device=device), var.to_empty(device=device)
    _randomise(vae, var, device=device)
    var.reset_buffers()
    return VARGenerator(vae, var, device)


def build_infinity(icfg: Any, vcfg: Any, pn: str, device: torch.device,
                   scales: int | None = None) -> Any:
    """Infinity with random weights on the schedule `pn` (its first `scales` scales)."""
    from vardist.models.infinity.bsq_vae import BSQVAE
    from vardist.models.infinity.generator import InfinityGenerator
    from vardist.models.infinity.schedules import full_schedule, scale_schedule
    from vardist.models.infinity.transformer import Infinity

    with torch.device("meta"):
        model, vae = Infinity(icfg), BSQVAE(vcfg)
    model, vae = model.to_empty(device=device), vae.to_empty(device=device)
    _randomise(model, vae, device=device)
    if device.type == "cuda":  # as vardist's builder: blocks stored and run in bf16 on CUDA
        model.block_chunks.to(torch.bfloat16)
    return InfinityGenerator(model, vae, scale_schedule(1.0, pn)[:scales], full_schedule(1.0)[-1],
                             text_encoder=RandomText(icfg.text_channels, device), device=device)


@dataclass
class ModelCase:
    name: str
    build: Callable[[torch.device], Any]
    footprint: memory.Footprint
    settings: SearchSettings
    dtype: str                      # what the blocks compute in on a GPU (for the peak)
    conditions: list


def _settings(defaults: Any, **over: Any) -> SearchSettings:
    d = {k: getattr(defaults, k) for k in ("scale", "n", "strategy", "alpha", "rep",
                                           "conflict_thresh", "k", "cfg", "top_k", "top_p",
                                           "tau")}
    d.update(over)
    return SearchSettings(**d)


def model_cases(tiny: bool) -> list[ModelCase]:
    """The three full-size models, or (tiny) CPU-sized ones of the same families."""
    from vardist.models.infinity.specs import official_configs as infinity_configs
    from vardist.models.var.specs import official_configs as var_configs

    cases = []
    prompts = [(i, f"a photo of object number {i}") for i in range(4096)]
    classes = [(i % 1000, i % 1000) for i in range(4096)]
    if tiny:
        from vardist.models.infinity.bsq_vae import BSQVAEConfig
        from vardist.models.infinity.transformer import InfinityConfig
        from vardist.models.var.transformer import VARConfig
        from vardist.models.var.vqvae import VQVAEConfig

        sides = (1, 2, 3, 4)
        vae_cfg = VQVAEConfig(vocab_size=256, z_channels=16, ch=32, ch_mult=(1, 2),
                              patch_nums=sides)
        for depth in (2,):
            var_cfg = VARConfig(depth=depth, embed_dim=64, num_heads=2, vocab_size=256,
                                Cvae=16, num_classes=10, patch_nums=sides)
            fp = memory.footprint_from_configs((var_cfg, vae_cfg))
            cases.append(ModelCase(f"var-tiny-d{depth}", lambda dev, c=var_cfg: build_var(
                vae_cfg, c, dev), fp, _settings(registry.get_spec("var-d16").defaults),
                "fp32", [(c % 10, c % 10) for c, _ in classes]))
        icfg = InfinityConfig(depth=1, embed_dim=64, num_heads=1, text_channels=256,
                              block_chunks=1)
        vcfg = BSQVAEConfig(base_ch=32, ch_mult=(1, 1, 1, 1, 1), num_res_blocks=1)
        # the 0.06M schedule cut after 8x8 (128x128 images): the decode stays cheap on a CPU
        from vardist.models.infinity.schedules import scale_schedule

        fp = memory.footprint_from_configs((icfg, vcfg, scale_schedule(1.0, "0.06M")[:5]))
        cases.append(ModelCase("infinity-tiny-random", lambda dev: build_infinity(
            icfg, vcfg, "0.06M", dev, scales=5), fp,
            _settings(registry.get_spec("infinity-2b").defaults, n=16), "bf16", prompts))
        return cases
    for depth in (16, 30):
        vae_cfg, var_cfg = var_configs(depth)
        name = f"var-d{depth}"
        cases.append(ModelCase(name, lambda dev, a=vae_cfg, b=var_cfg: build_var(a, b, dev),
                               memory.footprint_from_configs((var_cfg, vae_cfg)),
                               _settings(registry.get_spec(name).defaults), "fp32", classes))
    icfg, vcfg = infinity_configs("infinity-2b")
    fp = memory.footprint_from_configs((icfg, vcfg), registry.get_spec("infinity-2b").num_scales)
    cases.append(ModelCase("infinity-2b", lambda dev: build_infinity(icfg, vcfg, "1M", dev), fp,
                           _settings(registry.get_spec("infinity-2b").defaults), "bf16",
                           prompts))
    return cases


def per_token_weights(model: Any) -> tuple[int, int, int]:
    """(W, C, depth): weights of the linears every token goes through, width and depth."""
    net = getattr(model, "var", None)
    net = model.transformer if net is None else net
    W = sum(m.weight.numel() for name, m in net.named_modules()
            if isinstance(m, torch.nn.Linear) and not any(s in name for s in NOT_PER_TOKEN))
    return W, net.cfg.embed_dim, net.cfg.depth


def flops_per_image(model: Any, cfg: float, guidance_always: bool, text: bool) -> float:
    W, C, depth = per_token_weights(model)
    sizes = [h * w for h, w in model.schedule]
    T = sum(sizes)
    S = sum(p * sum(sizes[:i + 1]) for i, p in enumerate(sizes))
    rows = 2 if guidance_always or cfg != 1.0 else 1
    cross = 4 * C * depth * T * TEXT_TOKENS if text else 0
    return rows * (2 * W * T + 4 * C * depth * S + cross)


def peak_tflops(device: torch.device, dtype: str, override: float | None) -> float | None:
    if override:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((p[dtype] for key, p in PEAKS if key in name), None)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def search_batch(model: Any, items: list, settings: SearchSettings, embed: Any) -> dict[str, float]:
    """One batch as the local engine computes it (without the overlap and the PNGs)."""
    dev = pipeline.model_device(model)
    t0 = time.perf_counter()
    pool = pipeline.prefix_and_pool(model, items, settings, keep_state=True)
    sync(dev)
    t1 = time.perf_counter()
    choices = pipeline.select_batch(pool.codes, embed, pool.seeds, settings)
    t2 = time.perf_counter()
    pipeline.continue_batch(model, items, settings, pool.prefix,
                            pipeline.chosen_codes(pool.codes, choices), pool.state)
    sync(dev)
    t3 = time.perf_counter()
    return {"pool_s": t1 - t0, "select_s": t2 - t1, "finish_s": t3 - t2, "total_s": t3 - t0}


def is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()


class Clock:
    def __init__(self, budget_s: float) -> None:
        self.start, self.budget = time.monotonic(), budget_s

    def left(self) -> float:
        return self.budget - (time.monotonic() - self.start)


def time_rows(model: Any, items: list, settings: SearchSettings, min_time: float,
              max_reps: int) -> dict[str, float]:
    """Warm up once, then the best of timed repeats (at least one; more until min_time)."""
    embed = pipeline.embedder(model)
    dev = pipeline.model_device(model)
    if dev.type == "cuda":  # warm-up: kernels, allocator, autotuning (the CPU has none)
        search_batch(model, items, settings, embed)
        torch.cuda.reset_peak_memory_stats(dev)
    best, spent, reps = None, 0.0, 0
    while reps < max_reps and (reps == 0 or spent < min_time):
        t = search_batch(model, items, settings, embed)
        spent += t["total_s"]
        reps += 1
        if best is None or t["total_s"] < best["total_s"]:
            best = t
    best["reps"] = reps
    if dev.type == "cuda":
        best["peak_bytes"] = torch.cuda.max_memory_allocated(dev)
    return best


def run_models(args: argparse.Namespace, device: torch.device, clock: Clock) -> list[Row]:
    rows: list[Row] = []
    cases = [c for c in model_cases(args.tiny) if not args.models or c.name in args.models]
    for case in cases:
        if clock.left() <= 0:
            rows.append(Row("models", case.name, note="skipped: time budget"))
            continue
        try:
            t0 = time.perf_counter()
            model = case.build(device)
            sync(device)
            built = time.perf_counter() - t0
        except Exception as e:  # noqa: BLE001 - recorded, the check goes on
            rows.append(Row("models", case.name, note=f"build failed: {_short(e)}"))
            continue
        peak = peak_tflops(device, case.dtype, args.peak_tflops)
        for mode in ("plain", "search"):
            settings = case.settings if mode == "search" else \
                _settings(case.settings, strategy="none")
            flops = flops_per_image(model, settings.cfg, case.footprint.guidance_always,
                                    case.footprint.family == "infinity")
            for batch in _batches(args, case, settings, device):
                rows.append(_model_row(args, case, model, mode, settings, batch, flops, peak,
                                       device, clock))
        del model
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        rows[-1].extra["build_s"] = round(built, 2)
    return rows


def _batches(args: argparse.Namespace, case: ModelCase, settings: SearchSettings,
             device: torch.device) -> list[tuple[int, str]]:
    out = []
    for b in args.batches.split(","):
        if b != "max":
            out.append((int(b), ""))
            continue
        if device.type == "cuda":
            cap = torch.cuda.get_device_properties(device).total_memory
            fits = memory.largest_batch(case.footprint, cap, n=settings.pool_size,
                                        scale=settings.scale, cfg=settings.cfg,
                                        limit=args.max_batch)
            out.append((max(fits, 1), "max: planned"))
        else:
            out.append((args.max_batch, "max: --max-batch (CPU)"))
    return out


def _model_row(args: argparse.Namespace, case: ModelCase, model: Any, mode: str,
               settings: SearchSettings, batch_note: tuple[int, str], flops: float,
               peak: float | None, device: torch.device, clock: Clock) -> Row:
    batch, note = batch_note
    label = f"{case.name} {mode}" + (f" n{settings.n}@{settings.scale}" if mode == "search" else "")
    if clock.left() <= 0:
        return Row("models", label, batch, note="skipped: time budget")
    notes = [note] if note else []
    for attempt in range(args.oom_retries + 1):
        items = plan_items(case.conditions[:batch], 1, run_seed=0)
        plan = memory.estimate(case.footprint, batch=batch, n=settings.pool_size,
                               scale=settings.scale, cfg=settings.cfg, device=device.type)
        try:
            t, error = time_rows(model, items, settings, args.min_time, args.max_reps), None
        except Exception as e:  # noqa: BLE001
            t, error = None, e
        if error is not None:
            retry = is_oom(error) and attempt < args.oom_retries and batch > 1
            message, error = _short(error), None  # drops the traceback's frames and tensors
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
            if retry:
                notes.append(f"OOM at {batch}")
                batch = max(1, int(batch * 0.75))
                continue
            return Row("models", label, batch, plan_gb=_gb(plan.total - plan.reserve),
                       note="; ".join(notes + [f"failed: {message}"]))
        ips = batch / t["total_s"]
        limit = peak * 1e12 / flops if peak else None
        return Row("models", label, batch, ips, "img/s",
                   _gb(t["peak_bytes"]) if "peak_bytes" in t else None,
                   _gb(plan.total - plan.reserve), limit, ips / limit if limit else None,
                   "; ".join(notes),
                   {k: round(v, 4) for k, v in t.items() if k != "peak_bytes"}
                   | {"flops_per_image": flops, "dtype": case.dtype})
    raise AssertionError("unreachable")


# --- VAR's fp16 autocast ------------------------------------------------------------------

def run_autocast(args: argparse.Namespace, device: torch.device, clock: Clock) -> list[Row]:
    """The first VAR model, plain sampling of one batch in fp32 and under run.py's fp16
    autocast + TF32 (`--autocast fp16`), same weights and seeds: img/s of each and the share
    of tokens that stay the same, per scale (random weights: near-uniform logits, so more
    tokens move than with a trained model; a no-op on the CPU)."""
    case = next(c for c in model_cases(args.tiny) if c.footprint.family == "var")
    if clock.left() <= 0:
        return [Row("autocast", case.name, note="skipped: time budget")]
    model = case.build(device)
    settings = _settings(case.settings, strategy="none")
    batch = 8
    items = plan_items(case.conditions[:batch], 1, run_seed=0)
    rows, maps = [], {}
    for mode in ("off", "fp16"):
        model.autocast = mode
        try:
            t = time_rows(model, items, settings, args.min_time, args.max_reps)
            pool = pipeline.prefix_and_pool(model, items, settings, keep_state=True)
            _, maps[mode] = pipeline.continue_batch(model, items, settings, pool.prefix,
                                                    pool.codes[:, 0], pool.state)
        except Exception as e:  # noqa: BLE001
            rows.append(Row("autocast", f"{case.name} plain {mode}", batch,
                            note=f"failed: {_short(e)}"))
            continue
        rows.append(Row("autocast", f"{case.name} plain {mode}", batch, batch / t["total_s"],
                        "img/s", _gb(t["peak_bytes"]) if "peak_bytes" in t else None))
    if len(maps) == 2:
        same = [float((a == b).mean()) for a, b in zip(maps["off"], maps["fp16"])]
        first = next((i for i, v in enumerate(same) if v < 1), None)
        where = "all scales" if first is None else f"first change at scale {first}"
        rows[-1].note = f"tokens equal to fp32: {100 * float(np.mean(same)):.1f}% ({where})"
        rows[-1].extra["same_tokens_per_scale"] = same
    return rows


# --- KDE -------------------------------------------------------------------------------------

def torch_kde(x: np.ndarray, device: torch.device, block_bytes: int = 1 << 30) -> np.ndarray:
    """Exact KDE (the authors' per-position Silverman bandwidth) over each position's distinct
    vectors, float64 on `device`, blocked to block_bytes of kernel values."""
    from vardist.selection.kde import BANDWIDTH_FLOOR, silverman_factor

    n, P, d = x.shape
    xt = torch.from_numpy(np.ascontiguousarray(x)).to(device, torch.float64)
    out = torch.zeros(n, dtype=torch.float64, device=device)
    for i in range(P):
        xi = xt[:, i]
        h = silverman_factor(n, d) * xi.std(0, unbiased=False).mean() + BANDWIDTH_FLOOR
        u, inv, counts = torch.unique(xi, dim=0, return_inverse=True, return_counts=True)
        sq = (u * u).sum(1)
        step = max(1, block_bytes // (8 * len(u)))
        sums = torch.empty(len(u), dtype=torch.float64, device=device)
        for a in range(0, len(u), step):
            d2 = (sq[a:a + step, None] + sq[None] - 2 * u[a:a + step] @ u.T).clamp_(min=0)
            sums[a:a + step] = torch.exp(d2 / (-2 * h * h)) @ counts.to(torch.float64)
        out += sums[inv]
    return out.cpu().numpy()


def run_kde(args: argparse.Namespace, device: torch.device, clock: Clock) -> list[Row]:
    from vardist.selection import kde_density
    from vardist.selection.synthetic import bit_pool

    rows = []
    faiss_gpus = _faiss_gpus()
    for n in args.kde_n:
        if clock.left() <= 0:
            rows.append(Row("kde", f"bits n={n:g} P=36", note="skipped: time budget"))
            continue
        x = bit_pool(int(n), 36, 32, seed=0)
        t0 = time.perf_counter()
        ref = kde_density(x, "grouped")
        rows.append(Row("kde", f"grouped CPU n={n:g}", value=time.perf_counter() - t0, unit="s"))
        if faiss_gpus:
            rows.append(_kde_row(f"faiss GPU n={n:g}", lambda: kde_density(x, "faiss"), ref,
                                 device))
        else:
            rows.append(Row("kde", f"faiss GPU n={n:g}", note=faiss_gpus_note()))
        rows.append(_kde_row(f"torch {device.type} n={n:g}", lambda: torch_kde(x, device), ref,
                             device))
    return rows


def _kde_row(name: str, fn: Callable[[], np.ndarray], ref: np.ndarray,
             device: torch.device) -> Row:
    try:
        fn()  # warm-up (CUDA context, kernels, index resources)
        sync(device)
        t0 = time.perf_counter()
        got = fn()
        sync(device)
        s = time.perf_counter() - t0
    except Exception as e:  # noqa: BLE001
        return Row("kde", name, note=f"failed: {_short(e)}")
    rel = float(np.max(np.abs(got - ref) / ref))
    return Row("kde", name, value=s, unit="s", note=f"max rel diff vs grouped {rel:.1e}",
               extra={"max_rel_diff": rel})


def _faiss_gpus() -> int:
    try:
        import faiss
    except ImportError:
        return 0
    return int(getattr(faiss, "get_num_gpus", lambda: 0)())


def faiss_gpus_note() -> str:
    try:
        import faiss
    except ImportError:
        return "faiss not installed"
    return f"faiss {faiss.__version__} has no GPU here (CPU build or no GPU)"


# --- engines ----------------------------------------------------------------------------------

def run_engines(args: argparse.Namespace, device: torch.device, clock: Clock) -> list[Row]:
    import vardist

    conditions = 4 if args.tiny else 10
    if registry.get_spec(args.engine_model).condition_kind == "prompt":
        what: dict[str, Any] = {"prompts": [f"a photo of object number {i}"
                                            for i in range(conditions)]}
    else:
        what = {"classes": f"0-{conditions - 1}"}
    job = dict(what, samples=args.engine_samples, n=16 if args.tiny else 100,
               batch_size=2 if args.tiny else 8, device=device.type, weights=args.weights)
    engines = [("local", {})]
    if not args.no_ray:
        engines.append(("ray", {"actors": 1}))
    rows, files = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for engine, opts in engines:
            name = f"{args.engine_model} {engine}" + (" 1 actor" if opts else "")
            if clock.left() <= 0:
                rows.append(Row("engines", name, note="skipped: time budget"))
                continue
            out = Path(tmp) / engine
            try:
                if engine == "ray":
                    _ray_init(device)
                t0 = time.perf_counter()
                res = vardist.search(args.engine_model, **job, out=out, engine=engine, **opts)
                s = time.perf_counter() - t0
            except Exception as e:  # noqa: BLE001
                rows.append(Row("engines", name, note=f"failed: {_short(e)}"))
                continue
            files[engine] = {str(p.relative_to(out)): p.read_bytes()
                             for p in sorted(out.rglob("*.png"))}
            numerics = json.loads((out / "run.json").read_text()).get("numerics")
            rows.append(Row("engines", name, job["batch_size"], len(res) / s, "img/s",
                            note="wall time, Ray start-up included" if opts else "",
                            extra={"numerics": numerics, "images": len(res)}))
        if len(files) == 2:
            same = files["local"] == files["ray"]
            rows[-1].note += ("; " if rows[-1].note else "") + \
                ("PNG bytes identical to local" if same else "PNG BYTES DIFFER from local")
            rows[-1].extra["bytes_identical"] = same
    if "ray" in files:
        import ray

        ray.shutdown()
    return rows


def _ray_init(device: torch.device) -> None:
    import ray

    if not ray.is_initialized():
        ray.init(num_gpus=torch.cuda.device_count() if device.type == "cuda" else 0,
                 include_dashboard=False, logging_level="ERROR", log_to_driver=False)


# --- the table ------------------------------------------------------------------------------

def _gb(b: float) -> float:
    return b / memory.GB


def _short(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def table(rows: list[Row]) -> str:
    head = (f"{'section':8} {'what':34} {'batch':>5} {'value':>10} {'unit':5} {'peak GB':>7} "
            f"{'plan GB':>7} {'limit':>8} {'MFU':>6}  note")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r.section:8} {r.name:34} {_fmt(r.batch, 'd'):>5} "
                     f"{_fmt(r.value, '.4g'):>10} {r.unit:5} {_fmt(r.peak_gb, '.2f'):>7} "
                     f"{_fmt(r.plan_gb, '.2f'):>7} {_fmt(r.limit, '.4g'):>8} "
                     f"{_fmt(None if r.mfu is None else 100 * r.mfu, '.1f'):>6}  {r.note}")
    return "\n".join(lines)


def environment(device: torch.device) -> dict[str, Any]:
    env: dict[str, Any] = {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                           "device": str(device), "torch": torch.__version__,
                           "python": platform.python_version(), "cpu": platform.processor() or
                           platform.machine(), "cpu_threads": torch.get_num_threads()}
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        env.update(gpu=p.name, gpu_gb=round(p.total_memory / memory.GB, 1), cuda=torch.version.cuda)
    return env


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    ap.add_argument("--tiny", action="store_true",
                    help="CPU-sized models of the same families and small pools (smoke mode)")
    ap.add_argument("--json", default="gpu_check.json", help="where the table goes as JSON")
    ap.add_argument("--budget-s", type=float, default=450.0,
                    help="start no row after this many seconds (default 450: the whole check "
                         "ends within 8 minutes on an H100-class GPU)")
    ap.add_argument("--batches", default=None, help="comma list; max: the largest batch "
                    "the memory plan fits on the GPU (--max-batch on the CPU); default 1,8,max "
                    "(tiny: 1,max)")
    ap.add_argument("--max-batch", type=int, default=None,
                    help="cap on 'max' (default 256 on a GPU, 2 on the CPU)")
    ap.add_argument("--models", default="", help="comma list of model rows to run (default all)")
    ap.add_argument("--sections", default="models,autocast,kde,engines", help="comma list")
    ap.add_argument("--min-time", type=float, default=None,
                    help="time each row at least this long (default 3 s on a GPU, 0 on the CPU)")
    ap.add_argument("--max-reps", type=int, default=None, help="default 3 (tiny: 1)")
    ap.add_argument("--oom-retries", type=int, default=3, help="retries at 3/4 the batch")
    ap.add_argument("--kde-n", default=None, help="comma list (default 3000,100000; tiny: 200)")
    ap.add_argument("--engine-samples", type=int, default=None,
                    help="images per class of the engines job (default 16; tiny: 1)")
    ap.add_argument("--no-ray", action="store_true", help="leave the Ray engine out")
    ap.add_argument("--engine-model", default="toy-digits",
                    help="the registry model of the engines job (default toy-digits: ships with "
                         "vardist; a real one needs --weights)")
    ap.add_argument("--weights", default=None, help="weights folder for --engine-model")
    ap.add_argument("--peak-tflops", type=float, default=None,
                    help="the device's peak for the models' dtype, when the built-in table has "
                         "no entry for this GPU")
    args = ap.parse_args(argv)
    cpu = args.device == "cpu"
    args.batches = args.batches or ("1,max" if args.tiny else "1,8,max")
    args.max_batch = args.max_batch or (2 if cpu else 256)
    args.max_reps = args.max_reps or (1 if args.tiny else 3)
    args.min_time = args.min_time if args.min_time is not None else (0.0 if cpu else 3.0)
    args.kde_n = [float(v) for v in (args.kde_n or ("200" if args.tiny
                                                     else "3000,100000")).split(",")]
    args.engine_samples = args.engine_samples or (1 if args.tiny else 16)
    args.models = [m for m in args.models.split(",") if m]
    args.sections = [s for s in args.sections.split(",") if s]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"--device {args.device}: torch sees no CUDA GPU here (torch {torch.__version__}); "
              f"run on a GPU machine, or use --device cpu --tiny for the smoke mode",
              file=sys.stderr)
        return 2
    env = environment(device)
    print(" ".join(f"{k}={v}" for k, v in env.items()), flush=True)
    clock = Clock(args.budget_s)
    rows: list[Row] = []
    sections = {"models": run_models, "autocast": run_autocast, "kde": run_kde,
                "engines": run_engines}
    for name in args.sections:
        if name not in sections:
            print(f"unknown section {name!r}; choose from {', '.join(sections)}", file=sys.stderr)
            return 2
        try:
            rows += sections[name](args, device, clock)
        except Exception as e:  # noqa: BLE001 - one broken section must not lose the others
            traceback.print_exc()
            rows.append(Row(name, "(section)", note=f"failed: {_short(e)}"))
    env["seconds"] = round(time.monotonic() - clock.start, 1)
    print(table(rows))
    print(f"total {env['seconds']} s")
    Path(args.json).write_text(json.dumps(
        {"environment": env, "rows": [r.__dict__ for r in rows]}, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
