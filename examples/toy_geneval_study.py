"""The paper's comparison on toy-shapes: none, top-k, random-k, small-k, var-scaling and the
infinity rule over n, on the toy GenEval prompts, scored by the exact evaluator
(vardist.zoo.geneval_eval) with bootstrap intervals over prompts.

    python examples/toy_geneval_study.py     # a quick look: 5 prompts per tag, 1 image, n 10,100
    python examples/toy_geneval_study.py --per-tag 0 --samples 4 \\
        --ns 10,30,100,300,1000,3000 --alphas 1.5,2.3,3.0 --out runs/toy_geneval_study \\
        --docs docs                          # the full study

Writes, in OUT: prompts.jsonl (the prompts used), the study's study.parquet / summary.parquet /
continuations (vardist.Study), toy_geneval_study.md (the table), toy_geneval_study.png (overall
and per-tag score vs n) and toy_geneval_study.json (every number); --docs DIR copies the table
and the plot there. Scores are GenEval's: per-tag accuracy over images, overall = the mean over
tags. Intervals: 95% percentile bootstrap over prompts (the same resamples for every setting,
so "vs none" is a paired difference). `none` is plain sampling (candidate 0 at every n).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import vardist
from vardist.study import progress_lines
from vardist.zoo.geneval_eval import (ToyGenEvalMetric, paired_comparison, scores_from_rows,
                                      select_prompts)
from vardist.zoo.shapes import TAGS

STRATEGIES = ["none", "top-k", "random-k", "small-k", "var-scaling", "infinity"]
NAME = "toy_geneval_study"


def summarise(rows: list[dict], records: dict[str, dict], reps: int, seed: int) -> list[dict]:
    """One entry per setting: its knobs, GenEval's numbers, bootstrap intervals and the
    paired difference to plain sampling."""
    by_setting: dict[str, list[dict]] = {}
    for r in rows:
        by_setting.setdefault(r["setting"], []).append(r)
    scores = {sid: scores_from_rows(mine, records) for sid, mine in by_setting.items()}
    base = next(scores[sid] for sid, mine in by_setting.items() if mine[0]["strategy"] == "none")
    out = []
    for (sid, mine), c in zip(by_setting.items(),
                              paired_comparison(list(scores.values()), base, reps, seed)):
        first = mine[0]
        out.append({"setting": sid, "strategy": first["strategy"], "n": first["n"],
                    "alpha": first["alpha"], "k": first["k"], "overall": c["overall"],
                    "tags": c["tags"], "images": len(mine),
                    "distinct_images": len({r["image_key"] for r in mine}),
                    "overall_ci": c["overall_ci"], "vs_none": c["diff"],
                    "vs_none_ci": c["diff_ci"]})
    return out


def _label(e: dict) -> str:
    knob = {"var-scaling": f"alpha={e['alpha']:g}", "none": ""}.get(e["strategy"], f"k={e['k']}")
    return f"{e['strategy']} {knob}".strip()


def table(entries: list[dict], header: str) -> str:
    cols = ["strategy", "n", "overall [95% CI]", "vs none [95% CI]", *TAGS, "distinct"]
    lines = [header, "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    # Plain sampling is candidate 0 whatever n is: one row says it.
    none = [e for e in entries if e["strategy"] == "none"][:1]
    for e in none + [e for e in entries if e["strategy"] != "none"]:
        lo, hi = e["overall_ci"]
        dlo, dhi = e["vs_none_ci"]
        lines.append("| " + " | ".join([
            _label(e), "any" if e["strategy"] == "none" else str(e["n"]),
            f"{e['overall']:.3f} [{lo:.3f}, {hi:.3f}]",
            "-" if e["strategy"] == "none" else f"{e['vs_none']:+.3f} [{dlo:+.3f}, {dhi:+.3f}]",
            *(f"{e['tags'].get(t, float('nan')):.2f}" for t in TAGS),
            str(e["distinct_images"])]) + " |")
    return "\n".join(lines) + "\n"


def plot(entries: list[dict], path: Path) -> Path:
    """Overall score vs n (bootstrap band) and one small panel per tag."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 4, figsize=(16, 7))
    panels = [("overall", None), *((t, t) for t in TAGS)]
    lines: dict[str, list[dict]] = {}
    for e in entries:
        lines.setdefault(_label(e), []).append(e)
    for ax, (title, tag) in zip(axes.flat, panels):
        for label, pts in lines.items():
            pts = sorted(pts, key=lambda e: e["n"])
            ns = [e["n"] for e in pts]
            ys = [e["overall"] if tag is None else e["tags"].get(tag, float("nan")) for e in pts]
            (line,) = ax.plot(ns, ys, marker="o", label=label,
                              linestyle="--" if label == "none" else "-")
            if tag is None:
                ax.fill_between(ns, [e["overall_ci"][0] for e in pts],
                                [e["overall_ci"][1] for e in pts], color=line.get_color(),
                                alpha=0.12)
        ax.set_xscale("log")
        ax.set_ylim(-0.02, 1.02)  # scores are fractions: panels compare at a glance
        ax.set_title(title)
        ax.set_xlabel("n (candidates)")
        ax.grid(alpha=0.3)
    axes.flat[0].set_ylabel("GenEval score (toy-shapes)")
    axes.flat[0].legend(fontsize=7)
    axes.flat[-1].set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="toy-shapes", help="a text-conditional registry name")
    p.add_argument("--weights", default=None, help="weights folder (default: the shipped ones)")
    p.add_argument("--out", default="runs/toy_geneval_small")
    p.add_argument("--per-tag", type=int, default=5, help="prompts per tag (0: all)")
    p.add_argument("--samples", type=int, default=1, help="images per prompt")
    p.add_argument("--ns", default="10,100", help="pool sizes, comma-separated")
    p.add_argument("--strategies", default=",".join(STRATEGIES))
    p.add_argument("--alphas", default="", help="var-scaling alphas (default: the model's)")
    p.add_argument("--k", type=int, default=None, help="shortlist size (default: the model's)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--engine", default="local", choices=["local", "ray"])
    p.add_argument("--layouts", action="store_true",
                   help="also write each setting's GenEval layout (OUT/settings/<id>)")
    p.add_argument("--docs", default=None, help="copy the table and plot into this folder")
    args = p.parse_args(argv)

    strategies = args.strategies.split(",")
    if "none" not in strategies:
        p.error("--strategies must include none (the baseline of the comparison)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    records = select_prompts(args.per_tag)
    prompt_file = out / "prompts.jsonl"
    prompt_file.write_text("".join(json.dumps(r) + "\n" for r in records))
    sweep: dict = {"n": [int(x) for x in args.ns.split(",")], "strategy": strategies}
    if args.alphas:
        sweep["alpha"] = [float(x) for x in args.alphas.split(",")]
    if args.k is not None:
        sweep["k"] = [args.k]
    metric = ToyGenEvalMetric(records)
    study = vardist.Study(args.model, prompt_file, seeds=args.samples, sweep=sweep,
                          metrics=[metric], seed=args.seed, batch_size=args.batch_size,
                          weights=args.weights, engine=args.engine)
    t0 = time.perf_counter()
    res = study.run(out, layouts=args.layouts, plots=False,
                    progress=progress_lines(NAME))
    seconds = time.perf_counter() - t0
    entries = summarise(res.rows.to_pylist(), metric.records, args.bootstrap, args.seed)
    order = {s: i for i, s in enumerate(STRATEGIES)}
    entries.sort(key=lambda e: (order.get(e["strategy"], 99), e["alpha"], e["n"]))
    st = res.stats
    header = (f"{args.model} on {len(records)} toy GenEval prompts x {args.samples} images, "
              f"seed {args.seed}: {st['settings']} settings, {st['pools']} pools, "
              f"{st['continuations']} continuations, {seconds:.0f} s; 95% bootstrap over "
              f"prompts ({args.bootstrap} resamples).")
    text = table(entries, header)
    paths = [out / f"{NAME}.md", plot(entries, out / f"{NAME}.png"), out / f"{NAME}.json"]
    paths[0].write_text(text)
    paths[2].write_text(json.dumps({"model": args.model, "args": vars(args), "seconds": seconds,
                                    "stats": st, "entries": entries}, indent=1))
    if args.docs:
        Path(args.docs).mkdir(parents=True, exist_ok=True)
        for path in paths[:2]:
            shutil.copyfile(path, Path(args.docs) / path.name)
    print(text)
    print("written: " + ", ".join(map(str, paths)))
    return {"entries": entries, "paths": paths}


if __name__ == "__main__":
    main()
