"""Score vs compute of searches across scales on toy-digits with the toy judge: one-scale
density search, beam search and TTS-VAR-style population search, each at three budgets.

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
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import vardist
from vardist.models import registry
from vardist.study import JudgeAccuracy

ROWS = (("plain", "-", dict(strategy="none")),
        *((f"density (scale 1)", f"n={n}", dict(n=n, scale=1)) for n in (8, 32, 128)),
        *(("beam", f"B={b}", dict(n=2 * b, search=f"beam:{b}@1,1@2")) for b in (2, 4, 8)),
        *(("tts-var shape", f"P0={p}",
           dict(search=f"cluster:{p * 3 // 4}@0/{p},cluster:{max(p // 4, 1)}@1/{p * 3 // 4},"
                       f"resample:1@2/{max(p // 4, 1)}")) for p in (4, 8, 16)))


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
        rows = [dict(strategy="none", scale=1, n=1), dict(scale=1, n=8),
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
            if res[0].compute:
                plain = sum(model.positions(s) for s in range(S))
                tokens = np.mean([r.compute["forward_tokens"] for r in res]) / plain
        print(f"| {name} | " + " | ".join(f"{s:.3f}" for s in secs) + f" | {tokens:.1f} |",
              flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=4, help="images per class")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--cost", action="store_true", help="time a population of 8 vs plain "
                    "generation on the fixture models instead")
    args = ap.parse_args()
    if args.cost:
        return cost()
    model = registry.load("toy-digits", device="cpu")
    model.search_defaults = registry.get_spec("toy-digits").defaults
    plain_tokens = sum(model.positions(s) for s in range(model.num_scales))
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
        comp = [r.compute or dict(forward_tokens=plain_tokens, previews=0, verifier_calls=1)
                for r in res]
        reward = np.array([r.reward for r in res])
        acc = accuracy.compute(np.stack(res.images), [r.item.condition for r in res])
        print(f"| {label} | {budget} | {np.mean([c['forward_tokens'] for c in comp]):.0f} | "
              f"{np.mean([c['previews'] for c in comp]):.0f} | "
              f"{np.mean([c['verifier_calls'] for c in comp]):.0f} | "
              f"{reward.mean():.4f} ± {bootstrap_se(reward):.4f} | "
              f"{acc.mean():.3f} ± {bootstrap_se(acc):.3f} | {seconds:.3f} |", flush=True)


if __name__ == "__main__":
    main()
