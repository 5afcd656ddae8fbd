"""What the population memory check (`vardist.models.memory.estimate_population`) plans for a
search across scales on a registry model, from its configs alone (no weights, no GPU), next to
what the planner said when each candidate preview was a fork with a KV cache of its own.

    python benchmarks/population_memory.py                       # infinity-2b, batch 1
    python benchmarks/population_memory.py --model var-d36 --search beam:8@3,1@6 --n 64

Columns: the candidates decoded at once per item (preview_chunk of the output size; before:
min(candidates, 256)), the plan before (a KV cache per preview), and now (a latent copy and a
decode per preview, the larger of that and the forward pass), part by part.
"""

from __future__ import annotations

import argparse

from vardist.engine.schedule import PREVIEW_CHUNK, parse_search, preview_chunk, step_members
from vardist.models import memory, registry
from vardist.models.memory import GB, MemoryPlan, _activations, estimate


def plan_with_forked_previews(fp: memory.Footprint, batch: int, steps, cfg: float) -> MemoryPlan:
    """The planner before `preview_candidates`: each of a chunk's previews held a forked KV cache,
    and its decode came on top of the step's forward pass (for comparison only)."""
    plain = estimate(fp, batch=batch, n=1, scale=len(fp.tokens) - 1, cfg=cfg)
    one = estimate(fp, batch=1, n=1, scale=0, cfg=cfg)
    guided = 2 if fp.guidance_always or cfg != 1.0 else 1
    worst = plain
    for st in steps:
        here = estimate(fp, batch=batch * st.before, n=st.draws, scale=st.scale, cfg=cfg)
        forked = max(batch * st.after, st.previews)
        plan = MemoryPlan(here.weights, here.kv_cache + forked * one.kv_cache, here.pool,
                          _activations(fp, guided * batch * st.before, fp.tokens[st.scale],
                                       fp.kv_bytes_cuda) + st.previews * one.decode,
                          plain.decode, here.reserve)
        worst = max(worst, plan, key=lambda p: p.total)
    return worst


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="infinity-2b")
    ap.add_argument("--search", nargs="+", default=["beam:8@3,1@6", "tts-var"])
    ap.add_argument("--n", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--batch", type=int, default=1)
    args = ap.parse_args(argv)
    fp = memory.footprint(args.model)
    if fp is None:
        raise SystemExit(f"{args.model} states no configs in the registry: nothing to plan")
    cfg = registry.get_spec(args.model).defaults.cfg
    one = estimate(fp, batch=1, n=1, scale=0, cfg=cfg)
    lines = [f"{args.model}: {fp.image_hw[0]} x {fp.image_hw[1]}, cfg {cfg}, batch {args.batch}, "
             f"a verifier; per item: KV cache {one.kv_cache / GB:.2f} GB, decode "
             f"{one.decode / GB:.2f} GB, latent {4 * fp.latent_values / 1e6:.2f} MB; preview "
             f"chunk {preview_chunk(fp.image_hw)} (was up to {PREVIEW_CHUNK})", "",
             "| schedule | n | previews at once (before -> now) | before GB | now GB | now |",
             "|---|---|---|---|---|---|"]
    for text in args.search:
        sched = parse_search(text, len(fp.tokens))
        for n in args.n:
            old = step_members(sched, n, previews=True)
            new = step_members(sched, n, previews=True, image_hw=fp.image_hw)
            before = plan_with_forked_previews(fp, args.batch, old, cfg)
            now = memory.estimate_population(fp, batch=args.batch, steps=new, cfg=cfg)
            lines.append(f"| `{text}` | {n} | {max(s.previews for s in old)} -> "
                         f"{max(s.previews for s in new)} | {before.total / GB:.1f} | "
                         f"{now.total / GB:.1f} | {now.describe()} |")
    out = "\n".join(lines)
    print(out)
    return out


if __name__ == "__main__":
    main()
