"""Score vs compute of searches across scales on toy-digits with the toy judge (or toy-shapes
with toy-geneval, --model toy-shapes): one-scale density search, beam search and TTS-VAR-style
population search, each at three budgets.

    python benchmarks/search_scales.py                       # 10 classes x 4 samples
    python benchmarks/search_scales.py --samples 10 --seed 1
    python benchmarks/search_scales.py --cost                # population of 8 vs plain, fixtures

Every row is one `vardist.search` run on the same items with verifier="toy-judge". Rows:
plain sampling; density search at scale 1 (var-scaling, n = 8 / 32 / 128); beam search
`beam:B@1,1@2` with n = 2B candidates per searched scale (B = 2 / 4 / 8); population search
shaped as the tts-var preset `cluster:P1@0/P0,cluster:P2@1/P1,resample:1@2/P2` (P0 = 4 / 8
/ 16; P0 = 8 is the preset). Columns, per image: forward tokens (token positions through the
transformer, engine.multiscale's count; a one-scale search feeds every scale once, its pool is
drawn from logits already computed), previews decoded, verifier calls (the final image's
included), mean reward and accuracy (the judge's top class is the requested one) with a
bootstrap standard error over images, and wall seconds per image on this machine.

--cost instead times, on the fixture models (toy-digits, var-tiny, flexvar-tiny, infinity-tiny;
8 images, batch 8, CPU, 1 thread), plain generation, today's one-scale search at scale 1 (n 8),
the same as the schedule `density:1@1` (the one-scale special case: the same code path), and a
population of 8 kept from scale 1 to the second-to-last scale (`density:8@1/8,1@S-2/8`).

Caveat: beam and resample steps optimise the same judge that scores the rows, so their reward
gains are partly the judge's own preference (no held-out evaluator ships for toy-digits yet).

--model toy-shapes runs the comparison on toy-shapes' toy GenEval prompts instead, guided by
--verifier (default toy-geneval) and scored by the exact evaluator (vardist.zoo.geneval_eval)
on the final images:

    python benchmarks/search_scales.py --model toy-shapes --per-tag 5      # 30 prompts
    python benchmarks/search_scales.py --model toy-shapes --per-tag 0 \
        --plot docs/img/search-scales-toy-shapes.png --docs docs            # all 300

Rows: plain; one-scale density search (var-scaling at the model's default scale, n = 30 /
100 / 300); beam search `beam:B@2,1@3` and `beam:B@2,1@4` (n = 2B, B = 2 / 4 / 8: the first
step on the 4x4 map, the last on the 6x6 or on the final 8x8 map, where the preview is the
image); the tts-var shape (P0 = 4 / 8 / 16, 8 = the preset on toy-shapes' 5 scales); and
best-of-N by the verifier (N = 2 / 8 / 32 complete plain samples, sample indices s, s + S,
s + 2S, ... of plain sampling for image s of S, the first reward kept on ties). The engine's
`rerank` is not best-of-N of complete samples (its candidates share the searched scale's
prefix and the item's seed streams), so best-of-N is made here from plain runs; its s/image is
N x plain's. Columns: forward tokens, previews and verifier calls per image (the final image's
call included, as the run log counts it), GenEval's overall score with a 95% bootstrap interval
over prompts, the paired difference to plain (the same resamples), per-tag accuracies, s/image.
toy-geneval IS the evaluator: rows that read the verifier (beam, tts-var's resample, best-of-N)
optimise the very metric that scores them; plain and density rows read no verifier.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

import vardist
from vardist.models import registry
from vardist.study import JudgeAccuracy


def tts_var_shape(p: int) -> str:
    """The tts-var preset's shape on 4 or 5 scales with P0 = p members (p = 8: the preset)."""
    return (f"cluster:{p * 3 // 4}@0/{p},cluster:{max(p // 4, 1)}@1/{p * 3 // 4},"
            f"resample:1@2/{max(p // 4, 1)}")


ROWS = (("plain", "-", dict(strategy="none")),
        *(("density (scale 1)", f"n={n}", dict(n=n, scale=1)) for n in (8, 32, 128)),
        *(("beam", f"B={b}", dict(n=2 * b, search=f"beam:{b}@1,1@2")) for b in (2, 4, 8)),
        *(("tts-var shape", f"P0={p}", dict(search=tts_var_shape(p))) for p in (4, 8, 16)))

# toy-shapes (5 scales, 1x1 .. 8x8): density search at the model's default scale (2); beam
# search from the 4x4 map to the 6x6 one or to the final map; best-of-N (None: made here).
SHAPES_ROWS = (("plain", "-", dict(strategy="none")),
               *(("density (scale 2)", f"n={n}", dict(strategy="var-scaling", n=n, scale=2))
                 for n in (30, 100, 300)),
               *(("beam @2,@3", f"B={b}", dict(n=2 * b, search=f"beam:{b}@2,1@3"))
                 for b in (2, 4, 8)),
               *(("beam @2,@4", f"B={b}", dict(n=2 * b, search=f"beam:{b}@2,1@4"))
                 for b in (2, 4, 8)),
               *(("tts-var shape", f"P0={p}", dict(search=tts_var_shape(p))) for p in (4, 8, 16)),
               *(("best-of-N", f"N={n}", None) for n in (2, 8, 32)))


def bootstrap_se(x: np.ndarray, reps: int = 1000, seed: int = 0) -> float:
    rng = np.random.default_rng(seed)
    return float(np.std([x[rng.integers(0, len(x), len(x))].mean() for _ in range(reps)]))


def cost(repeat: int = 3) -> None:
    """Seconds per image of plain generation, one-scale search and a population of 8."""
    from fork_cost import PROMPTS, build  # the fixture models, as fork_cost builds them

    print("| model | plain | one-scale n=8 | density:1@1 n=8 | population 8 | tokens x plain |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in ("toy-digits", "var-tiny", "flexvar-tiny", "infinity-tiny"):
        model = build(name, "cpu")
        S = model.num_scales
        cond = (dict(classes="0-3") if model.condition_kind == "class"
                else dict(prompts=PROMPTS * 2))
        run = dict(**cond, samples=2 if model.condition_kind == "class" else 1, batch_size=8)
        rows = [dict(strategy="none"), dict(scale=1, n=8),
                dict(search="density:1@1", n=8), dict(search=f"density:8@1/8,1@{S - 2}/8", n=8)]
        secs, tokens = [], None
        for kw in rows:
            vardist.search(model, **run, **kw)  # warm-up
            t = []
            for _ in range(repeat):
                t0 = time.perf_counter()
                res = vardist.search(model, **run, **kw)
                t.append((time.perf_counter() - t0) / len(res))
            secs.append(float(np.median(t)))
            plain = sum(model.positions(s) for s in range(S))
            tokens = np.mean([r.compute["forward_tokens"] for r in res]) / plain
        print(f"| {name} | " + " | ".join(f"{s:.3f}" for s in secs) + f" | {tokens:.1f} |",
              flush=True)


def _geneval(images, keys: list[tuple], metric):
    """GenEval's Scores of final images under the exact evaluator; keys: (condition_index,
    image index, prompt) per image."""
    from vardist.zoo.geneval_eval import scores_from_rows

    correct = metric.compute(np.stack(images), [k[2] for k in keys])
    return scores_from_rows([dict(condition_index=c, sample_index=s, condition=text, geneval=ok)
                             for (c, s, text), ok in zip(keys, correct)], metric.records)


def best_of_n(rewards: np.ndarray, samples: int, n: int) -> np.ndarray:
    """Best-of-n picks from plain sampling's rewards [prompts, samples x N_max] (a prompt's
    samples in sample order): for image s, the column of the highest reward among samples s,
    s + samples, ..., s + (n - 1) * samples (the first on ties); [prompts, samples]."""
    cols = np.arange(samples)[:, None] + samples * np.arange(n)[None, :]   # [samples, n]
    return cols[np.arange(samples)[None, :], rewards[:, cols].argmax(-1)]


def shapes(records: list[dict], *, model_name: str = "toy-shapes", samples: int = 1,
           seed: int = 0, batch_size: int = 8, verifier: str = "toy-geneval",
           verifier_weights: str | None = None, weights: str | None = None,
           reps: int = 1000) -> tuple[list[dict], str]:
    """Score vs compute on toy GenEval prompts (module docstring): one entry per row, and the
    table's header line."""
    import torch

    from vardist.zoo.geneval_eval import ToyGenEvalMetric, paired_comparison

    torch.set_num_threads(1)
    model = registry.load(model_name, weights, device="cpu")
    plain_tokens = sum(model.positions(s) for s in range(model.num_scales))
    metric = ToyGenEvalMetric(records)
    prompts = [r["prompt"] for r in records]
    run = dict(prompts=prompts, seed=seed, verifier=verifier, batch_size=batch_size,
               verifier_weights=verifier_weights)
    for warm in (dict(strategy="none"), dict(search=tts_var_shape(4))):  # imports, first calls
        vardist.search(model, **{**run, "prompts": prompts[:1]}, samples=1, **warm)
    entries = []
    n_max = max(int(b.split("=")[1]) for _, b, kw in SHAPES_ROWS if kw is None)
    pool = None
    for family, budget, kw in SHAPES_ROWS:
        t0 = time.perf_counter()
        if kw is not None:
            res = vardist.search(model, **run, samples=samples, **kw)
            seconds = (time.perf_counter() - t0) / len(res)
            comp, images = [r.compute for r in res], res.images
            keys = [(r.item.condition_index, r.item.sample_index, r.item.condition) for r in res]
        else:  # best-of-N: the verifier's pick among N complete plain samples per image
            if pool is None:  # one plain run of samples x N_max images per prompt serves all N
                pool = vardist.search(model, **run, samples=samples * n_max, strategy="none")
                plain_seconds = (time.perf_counter() - t0) / len(pool)
            n = int(budget.split("=")[1])
            picks = best_of_n(np.array([r.reward for r in pool]).reshape(len(prompts), -1),
                              samples, n)
            at = (np.arange(len(prompts))[:, None] * samples * n_max + picks).ravel()
            seconds, images = n * plain_seconds, [pool.images[i] for i in at]
            comp = [dict(forward_tokens=n * plain_tokens, previews=0, verifier_calls=n)]
            keys = [(pool[i].item.condition_index, k % samples, pool[i].item.condition)
                    for k, i in enumerate(at)]  # image k % samples of its prompt, as elsewhere
        scores = _geneval(images, keys, metric)
        entries.append(dict(search=family, budget=budget, scores=scores,
                            **{k: float(np.mean([c[k] for c in comp])) for k in comp[0]},
                            seconds=seconds))
        print(f"  {family} {budget}: {scores.overall:.3f} ({seconds:.3f} s/image)", flush=True)
    for e, c in zip(entries, paired_comparison([e["scores"] for e in entries],
                                               entries[0]["scores"], reps, seed)):
        e.update(overall=c["overall"], overall_ci=c["overall_ci"], vs_plain=c["diff"],
                 vs_plain_ci=c["diff_ci"], tags=c["tags"])
    header = (f"{model_name} on {len(prompts)} toy GenEval prompts x {samples} image(s), seed "
              f"{seed}, verifier {verifier}; scored by the exact evaluator on the final images; "
              f"95% bootstrap over prompts ({reps} resamples); CPU, 1 thread.")
    if verifier == "toy-geneval":
        header += (" Caveat: the toy-geneval verifier is the evaluator itself, so the rows that "
                   "read it (beam, tts-var's resample step, best-of-N) optimise the very metric "
                   "that scores them; plain and density rows read no verifier.")
    return entries, header


def shapes_table(entries: list[dict], header: str) -> str:
    from vardist.zoo.shapes import TAGS

    cols = ["search", "budget", "forward tokens", "previews", "verifier calls",
            "overall [95% CI]", "vs plain [95% CI]", *TAGS, "s / image"]
    lines = [header, "", "| " + " | ".join(cols) + " |",
             "|---|---|" + "---:|" * (len(cols) - 2)]
    for e in entries:
        lo, hi = e["overall_ci"]
        dlo, dhi = e["vs_plain_ci"]
        lines.append("| " + " | ".join([
            e["search"], e["budget"], f"{e['forward_tokens']:.0f}", f"{e['previews']:.0f}",
            f"{e['verifier_calls']:.0f}", f"{e['overall']:.3f} [{lo:.3f}, {hi:.3f}]",
            "-" if e is entries[0] else f"{e['vs_plain']:+.3f} [{dlo:+.3f}, {dhi:+.3f}]",
            *(f"{e['tags'][t]:.2f}" if t in e["tags"] else "-" for t in TAGS),
            f"{e['seconds']:.3f}"]) + " |")
    return "\n".join(lines) + "\n"


def shapes_plot(entries: list[dict], path: str | Path, title: str = "") -> Path:
    """GenEval overall score (95% bootstrap interval as error bars) vs forward tokens per image
    and vs verifier calls per image, one line per search family; plain as a dashed level."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5), sharey=True)
    families: dict[str, list[dict]] = {}
    for e in entries:
        families.setdefault(e["search"], []).append(e)
    plain = entries[0]
    for ax, key, label in zip(axes, ("forward_tokens", "verifier_calls"),
                              ("forward tokens / image", "verifier calls / image")):
        ax.axhline(plain["overall"], color="gray", linestyle="--", label="plain")
        ax.axhspan(*plain["overall_ci"], color="gray", alpha=0.12)
        for i, (family, pts) in enumerate(f for f in families.items() if f[0] != "plain"):
            # rows of one family at the same x (density: one pass whatever n) spread a little
            xs = [e[key] * (1.15 ** (j - 1) if len({p[key] for p in pts}) == 1 else 1)
                  for j, e in enumerate(pts)]
            ys = [e["overall"] for e in pts]
            err = np.array([[y - e["overall_ci"][0], e["overall_ci"][1] - y]
                            for y, e in zip(ys, pts)]).T
            bar = ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=family)
            for j, (x, y, e) in enumerate(zip(xs, ys, pts)):
                ax.annotate(e["budget"], (x, y), textcoords="offset points",
                            xytext=(4, 4 if j % 2 == 0 else -11), fontsize=7,
                            color=bar[0].get_color())
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("toy GenEval overall score")
    axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def main(argv: list[str] | None = None) -> dict | None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="toy-digits", choices=["toy-digits", "toy-shapes"])
    ap.add_argument("--samples", type=int, default=None,
                    help="images per class (toy-digits, default 4) or per prompt (toy-shapes, "
                         "default 1)")
    ap.add_argument("--per-tag", type=int, default=5,
                    help="toy-shapes: prompts per tag (0: all 300)")
    ap.add_argument("--limit", type=int, default=None,
                    help="toy-shapes: only the first LIMIT of those prompts (smoke runs)")
    ap.add_argument("--verifier", default="toy-geneval", help="toy-shapes: the guiding verifier")
    ap.add_argument("--verifier-weights", default=None)
    ap.add_argument("--bootstrap", type=int, default=1000, help="toy-shapes: resamples")
    ap.add_argument("--plot", default=None, help="toy-shapes: write the plot here (.png)")
    ap.add_argument("--docs", default=None,
                    help="toy-shapes: write the table to DIR/search_scales_toy_shapes.md")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--cost", action="store_true", help="time a population of 8 vs plain "
                    "generation on the fixture models instead")
    args = ap.parse_args(argv)
    if args.cost:
        return cost()
    if args.model == "toy-shapes":
        from vardist.zoo.geneval_eval import select_prompts

        records = select_prompts(args.per_tag)[:args.limit]
        t0 = time.perf_counter()
        entries, header = shapes(records, samples=args.samples or 1, seed=args.seed,
                                 batch_size=args.batch_size, verifier=args.verifier,
                                 verifier_weights=args.verifier_weights, reps=args.bootstrap)
        header += f" Wall time of the whole run: {time.perf_counter() - t0:.0f} s."
        text = shapes_table(entries, header)
        print(text)
        if args.plot:
            Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
            shapes_plot(entries, args.plot, header.split(";")[0])
        if args.docs:
            Path(args.docs).mkdir(parents=True, exist_ok=True)
            (Path(args.docs) / "search_scales_toy_shapes.md").write_text(text)
        return dict(entries=entries, table=text)
    args.samples = args.samples or 4
    model = registry.load("toy-digits", device="cpu")
    model.search_defaults = registry.get_spec("toy-digits").defaults
    run = dict(classes="0-9", samples=args.samples, seed=args.seed, verifier="toy-judge",
               batch_size=args.batch_size)
    vardist.search(model, classes="0", samples=1, verifier="toy-judge", strategy="none")  # warm-up
    print(f"toy-digits + toy-judge, 10 classes x {args.samples} samples, seed {args.seed}\n")
    print("| search | budget | forward tokens | previews | verifier calls | mean reward | "
          "accuracy | s / image |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    accuracy = JudgeAccuracy()
    for label, budget, kw in ROWS:
        t0 = time.perf_counter()
        res = vardist.search(model, **run, **kw)
        seconds = (time.perf_counter() - t0) / len(res)
        comp = [r.compute for r in res]
        reward = np.array([r.reward for r in res])
        acc = accuracy.compute(np.stack(res.images), [r.item.condition for r in res])
        print(f"| {label} | {budget} | {np.mean([c['forward_tokens'] for c in comp]):.0f} | "
              f"{np.mean([c['previews'] for c in comp]):.0f} | "
              f"{np.mean([c['verifier_calls'] for c in comp]):.0f} | "
              f"{reward.mean():.4f} ± {bootstrap_se(reward):.4f} | "
              f"{acc.mean():.3f} ± {bootstrap_se(acc):.3f} | {seconds:.3f} |", flush=True)


if __name__ == "__main__":
    main()
