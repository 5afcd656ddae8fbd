"""Quality vs compute of verifier-guided search on the toy models: reward, correctness and
continuations per image for plain sampling, density search, density search + rerank, and
best-of-K.

    python benchmarks/verifier_rerank.py                          # toy-digits + toy-judge
    python benchmarks/verifier_rerank.py --samples 20 --seed 1
    python benchmarks/verifier_rerank.py --model toy-shapes       # toy-shapes + toy-geneval
    python benchmarks/verifier_rerank.py --plot docs/img/rerank.png   # also reward vs continuations
    python benchmarks/verifier_rerank.py --model toy-shapes --weights DIR   # a retrained toy-shapes
    python benchmarks/verifier_rerank.py --study    # also: a rerank sweep as one vardist.Study

Every row is one `vardist.search` run with the same seed and items and `verifier=` set, so the
kept image's reward is logged for every row (scoring the chosen image costs no continuation).
Rows: none (plain sampling), var-scaling (the model's density search), var-scaling + rerank 4 /
10 (finish the first K of its shortlist, keep the best reward), random-k best-of-4 / 10 (K
random candidates of a pool of K, all finished, the best kept; the prefix before the searched
scale is shared, so this is best-of-K over the searched scale's candidates). Columns:
continuations per image (the images finished to keep one), mean reward, correct (toy-digits:
the judge's top class is the requested one; toy-shapes: the GenEval record holds, i.e. reward
1), and wall seconds per image on this machine (the model and verifier load once, outside).
Prints a markdown table. --study then runs none / var-scaling / random-k (k 10) x rerank
0 / 4 / 10 as one `vardist.Study` and prints the continuations it computed (each distinct
candidate once) against what the same settings cost as separate searches, and its wall time.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

import vardist
from vardist.models import registry
from vardist.zoo.shapes import EVAL_PROMPTS

ROWS = (("none", dict(strategy="none")),
        ("var-scaling", dict(strategy="var-scaling")),
        ("var-scaling + rerank 4", dict(strategy="var-scaling", rerank=4)),
        ("var-scaling + rerank 10", dict(strategy="var-scaling", rerank=10)),
        ("random-k best-of-4", dict(strategy="random-k", k=4, n=4, rerank=4)),
        ("random-k best-of-10", dict(strategy="random-k", k=10, n=10, rerank=10)))

SETUPS = {"toy-digits": dict(verifier="toy-judge", conditions=dict(classes="0-9")),
          "toy-shapes": dict(verifier="toy-geneval", conditions=dict(prompts=EVAL_PROMPTS))}


def correct(model: str, results) -> float:
    """toy-digits: the judge's most probable class is the requested one; toy-shapes: the
    toy GenEval record holds (the verifier's reward is exactly that)."""
    if model == "toy-shapes":
        return float(np.mean([r.reward == 1.0 for r in results]))
    from vardist.zoo.judge import shipped_judge

    probs, _ = shipped_judge().predict(torch.from_numpy(np.stack(results.images)))
    labels = torch.tensor([r.item.condition for r in results])
    return float((probs.argmax(1) == labels).double().mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=sorted(SETUPS), default="toy-digits")
    ap.add_argument("--samples", type=int, default=10, help="images per class / prompt")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--weights", type=Path, help="a retrained model's folder (default: the "
                    "weights shipped with vardist)")
    ap.add_argument("--plot", type=Path, help="also write mean reward vs continuations per "
                    "image, one point per row, as a PNG here")
    ap.add_argument("--study", action="store_true", help="also run a rerank sweep as one Study")
    args = ap.parse_args()
    setup = SETUPS[args.model]
    model = registry.load(args.model, args.weights, device="cpu")
    model.search_defaults = registry.get_spec(args.model).defaults
    # warm-up: the first batch's one-off costs stay out of the timings
    vardist.search(model, **setup["conditions"], samples=1, verifier=setup["verifier"],
                   strategy="none", batch_size=args.batch_size)
    print(f"{args.model}, verifier {setup['verifier']}, {args.samples} images per condition, "
          f"seed {args.seed}\n")
    print("| search | continuations / image | mean reward | correct | s / image |")
    print("|---|---:|---:|---:|---:|")
    points = []
    for label, kw in ROWS:
        t0 = time.perf_counter()
        res = vardist.search(model, **setup["conditions"], samples=args.samples, seed=args.seed,
                             verifier=setup["verifier"], batch_size=args.batch_size, **kw)
        seconds = (time.perf_counter() - t0) / len(res)
        cont = np.mean([r.continuations for r in res])
        reward = np.mean([r.reward for r in res])
        print(f"| {label} | {cont:.2f} | {reward:.4f} | {correct(args.model, res):.3f} | "
              f"{seconds:.3f} |", flush=True)
        points.append((label, cont, reward))
    if args.plot:
        plot(points, f"{args.model} + {setup['verifier']}", args.plot)
    if args.study:
        study_cost(model, setup, args)


def study_cost(model, setup: dict, args: argparse.Namespace) -> None:
    """One Study over strategy x rerank: continuations computed vs separate searches."""
    conditions = next(iter(setup["conditions"].values()))  # the class range or prompt file
    study = vardist.Study(model, conditions, seeds=args.samples, seed=args.seed,
                          batch_size=args.batch_size, verifier=setup["verifier"], k=10,
                          sweep={"strategy": ["none", "var-scaling", "random-k"],
                                 "rerank": [0, 4, 10]})
    t0 = time.perf_counter()
    res = study.run()
    wall = time.perf_counter() - t0
    st, images = res.stats, len(study.items)
    print(f"\nStudy, {len(study.settings)} settings x {images} items: "
          f"{st['continuations']} continuations computed "
          f"({st['continuations'] / images:.2f} per item) vs {st['continuations_separately']} "
          f"as separate searches ({st['continuations_separately'] / images:.2f} per item); "
          f"{st['pools']} pools; {wall:.1f} s wall")
    print("| setting | continuations / image | mean reward |")
    print("|---|---:|---:|")
    for r in res.summary.to_pylist():
        print(f"| {r['strategy']} rerank {r['rerank']} | {r['continuations_per_image']:.2f} | "
              f"{r['reward_mean']:.4f} |")


def plot(points: list[tuple[str, float, float]], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, cont, reward in points:
        ax.scatter(cont, reward)
        ax.annotate(label, (cont, reward), fontsize=8, xytext=(4, 4), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlim(0.8, 3 * max(c for _, c, _ in points))  # room for the labels on the right
    ax.set_xlabel("continuations per image")
    ax.set_ylabel("mean reward")
    ax.set_title(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
