"""What the authors' narrowing candidate sampler (pool_sampling="authors") does to a VAR pool,
against i.i.d. draws: the nucleus each candidate is drawn from, and the share of pools that take
var-scaling's high-density branch. The figures quoted in docs/search.md come from this script.

    python3 benchmarks/narrowing.py                 # ~1 minute on 2 CPU cores
    python3 benchmarks/narrowing.py --items 200 --n 50

Models (scale 1, cfg 1, top-k 900, top-p 0.96, alpha 2.3 as the authors' run.py):
- var-tiny: the reference fixture (random weights, V = 512), classes 0.. one image each;
- toy-digits: the shipped toy model (V = 64);
- synthetic: VAR-shaped logits without a model: 4 positions of i.i.d. Gaussian logits over
  V = 4096 with standard deviation `std` (larger = more peaked), codes from a random Gaussian
  4096 x 32 codebook. Real VAR-d16..d30 logits are not available on the machines this ran on.
Nucleus: tokens left after the (j + 1)-th top-k / top-p cut, per position, for candidate j.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import torch

import vardist.models as models
from vardist.models import Sampling
from vardist.models.sampling import (NarrowingDraws, batch_uniforms, filter_top_k_top_p,
                                     item_stream, sample_tokens)
from vardist.models.var import from_fixture
from vardist.selection import kde_density, select

SHARED = Path(os.environ.get("VARDIST_SHARED", Path(__file__).resolve().parents[2] / "shared"))
TOP_K, TOP_P, CFG, SCALE, ALPHA = 900, 0.96, 1.0, 1, 2.3


def nucleus_sizes(logits: torch.Tensor, n: int) -> np.ndarray:
    """[n, B * P]: candidate j's support under the narrowing rule (logits: once filtered)."""
    sizes = []
    for _ in range(n):
        sizes.append(torch.isfinite(logits).sum(-1).reshape(-1).numpy())
        logits = filter_top_k_top_p(logits, TOP_K, TOP_P)
    return np.stack(sizes)


def pools(logits: torch.Tensor, seeds: list[int], n: int, mode: str) -> torch.Tensor:
    """Token ids [B, n, P] drawn from the filtered logits [B, P, V], as the VAR generator does."""
    u = batch_uniforms([item_stream(s, SCALE) for s in seeds], n, logits.shape[1])
    if mode == "iid":
        return sample_tokens(logits, u)
    return NarrowingDraws(logits, TOP_K, TOP_P).draw(u)


def high_share(emb: np.ndarray, seeds: list[int]) -> float:
    """Share of items whose pool takes the high-density branch (per-item bandwidth)."""
    high = 0
    for x, s in zip(emb, seeds):
        choice = select(kde_density(x), x, "var-scaling", alpha=ALPHA, rep=10,
                        conflict_thresh=1.8, rng=np.random.default_rng(s))
        high += choice.branch == "high"
    return high / len(seeds)


def model_case(model, items: int, num_classes: int):
    """(filtered logits at the searched scale, seeds, embed) for `items` images of a model."""
    seeds = list(range(items))
    st = model.start([i % num_classes for i in seeds], seeds,
                     Sampling(cfg=CFG, top_k=TOP_K, top_p=TOP_P))
    model.run_scales(st, SCALE)
    # the filtered CFG-mixed logits both samplers start from (no public accessor: a pool is
    # what the interface hands out)
    logits = model._logits(st)
    return logits, seeds, lambda codes: model.embed(codes).numpy()


def synthetic_case(items: int, std: float):
    g = torch.Generator().manual_seed(0)
    raw = torch.randn(items, 4, 4096, generator=g) * std
    book = torch.randn(4096, 32, generator=g)
    return filter_top_k_top_p(raw, TOP_K, TOP_P), list(range(items)), lambda c: book[c].numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", type=int, default=50)
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--stds", default="1,2,3,4", help="synthetic logits' standard deviations")
    args = ap.parse_args()
    torch.manual_seed(0)
    tiny = from_fixture(SHARED / "fixtures" / "var-tiny")
    cases = [("var-tiny", model_case(tiny, args.items, 1000)),
             ("toy-digits", model_case(models.load("toy-digits"), args.items, 10))]
    cases += [(f"synthetic std {s}", synthetic_case(args.items, float(s)))
              for s in args.stds.split(",")]
    marks = sorted({0, 9, 24, 49, args.n - 1} & set(range(args.n)))
    print(f"items={args.items} n={args.n} scale={SCALE} cfg={CFG:g} top-k={TOP_K} "
          f"top-p={TOP_P} alpha={ALPHA}")
    print(f"{'case':<18} | {'high branch: iid  authors':>26} | "
          f"nucleus of candidate j (narrowing): mean [min-max]")
    for name, (logits, seeds, embed) in cases:
        shares = [high_share(embed(pools(logits, seeds, args.n, mode)), seeds)
                  for mode in ("iid", "authors")]
        sizes = nucleus_sizes(logits, args.n)
        nuc = "  ".join(f"j={j}: {sizes[j].mean():.0f} [{sizes[j].min()}-{sizes[j].max()}]"
                        for j in marks)
        print(f"{name:<18} | {shares[0]:>17.2f} {shares[1]:>8.2f} | {nuc}")


if __name__ == "__main__":
    main()
