"""Search across scales (engine.schedule, engine.multiscale, selection.population): the schedule
grammar and its checks, the population rules, the one-scale special case's bytes, independence
of batch size and resume, the compute columns of the run log, and the refused combinations."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

import vardist
from vardist.api import plan_search
from vardist.engine.multiscale import lineage_seed, split_candidates
from vardist.engine.schedule import SearchStep, parse_search, tts_var
from vardist.io.conditions import InputError
from vardist.io.runlog import ResumeMismatch
from vardist.selection.population import keep_cluster, keep_resample, keep_top

DIGITS = dict(classes="0-2", samples=2, seed=3, n=12)


# -- the grammar ---------------------------------------------------------------------------

def test_parse_carries_rules_and_is_canonical():
    s = parse_search("beam:8@1,4@2, density:2@3/40 ,1@5", num_scales=7)
    assert s.steps == (SearchStep("reward", 8, 1, None), SearchStep("reward", 4, 2, None),
                       SearchStep("density", 2, 3, 40), SearchStep("density", 1, 5, None))
    assert str(s) == "reward:8@1,reward:4@2,density:2@3/40,density:1@5"
    assert parse_search(str(s), 7) == s  # the canonical text parses back to itself
    assert s.needs_verifier and s.one_scale() is None
    assert parse_search("density:1@3", 7).one_scale() == 3
    assert parse_search("density:1@3/50", 7).one_scale() is None  # own n: not today's search


@pytest.mark.parametrize("text, token", [
    ("greedy:2@1,1@2", "'greedy:2@1'"), ("beam:2@1,x@2", "'x@2'"), ("2@1,1@2", "'2@1'"),
    ("beam:2@9,1@10", "'beam:2@9'"), ("beam:2@2,1@1", "'1@1'"), ("beam:2@1,2@2", "reward:2@2"),
    ("beam:0@1,1@2", "'beam:0@1'"), ("", "''")])
def test_bad_schedules_name_the_token(text, token):
    with pytest.raises(InputError) as e:
        parse_search(text, num_scales=7)
    assert token in str(e.value) and e.value.param == "search"


def test_tts_var_preset_shrinks_like_bs_sis():
    s = tts_var(13)  # Infinity's 13 scales: TTS-VAR's own --bs_sis 8 8 6 6 6 4 2 2 2 1 1 1 1
    assert [(st.rule, st.population, st.scale, st.candidates) for st in s.steps] == [
        ("cluster", 8, 0, 8), ("cluster", 6, 1, 8), ("cluster", 4, 4, 6),
        ("resample", 2, 5, 4), ("resample", 1, 8, 2)]
    assert str(parse_search("tts-var", 4)) == "cluster:6@0/8,cluster:2@1/6,resample:1@2/2"


# -- the rules -----------------------------------------------------------------------------

def test_keep_top_orders_ties_by_position():
    assert keep_top(np.array([0.5, 0.9, 0.5, 0.9]), 3) == [1, 3, 0]


def test_keep_cluster_keeps_one_per_group_and_fills_duplicates():
    rng = np.random.default_rng(0)
    centres = np.array([[0, 0], [10, 0], [0, 10]], float)
    x = np.concatenate([c + 0.1 * rng.standard_normal((4, 2)) for c in centres])
    kept = keep_cluster(x, 3, seed=1)
    assert sorted(i // 4 for i in kept) == [0, 1, 2] and kept == keep_cluster(x, 3, seed=1)
    same = np.zeros((5, 2))
    same[4] = 1.0  # two distinct vectors: one per cluster, then the first others
    assert keep_cluster(same, 3, seed=0) == [0, 1, 4]
    assert keep_cluster(x[:2], 5, seed=0) == [0, 1]


def test_keep_resample_is_seeded_and_follows_the_reward():
    r = np.array([0.0, 1.0, 0.2])
    a = keep_resample(r, 200, np.random.default_rng(5))
    assert a == keep_resample(r, 200, np.random.default_rng(5))
    counts = np.bincount(a, minlength=3)
    assert counts[1] > 190 and a == sorted(a)


def test_split_and_lineage_seeds():
    assert split_candidates(10, 4) == [3, 3, 2, 2] and split_candidates(2, 4) == [1, 1, 1, 1]
    assert lineage_seed(7, 1, 3) == lineage_seed(7, 1, 3)
    assert len({lineage_seed(7, 1, 3), lineage_seed(7, 1, 3, 1), lineage_seed(7, 2, 3),
                lineage_seed(8, 1, 3)}) == 4


# -- the engine ----------------------------------------------------------------------------

@pytest.mark.parametrize("name, cond, k", [
    ("toy-digits", dict(classes="0-2", samples=2), 1),
    ("infinity-tiny", dict(prompts=["a red square", "two blue circles"], samples=1), 2)])
def test_one_scale_density_schedule_is_todays_search(name, cond, k, fixtures_dir):
    today = vardist.search(name, **cond, n=8, scale=k, seed=1)
    same = vardist.search(name, **cond, n=8, search=f"density:1@{k}", seed=1)
    assert [r.chosen for r in today] == [r.chosen for r in same]
    for a, b in zip(today, same):
        assert a.image.tobytes() == b.image.tobytes()
    ja, _ = plan_search(name, **cond, n=8, scale=k, out="unused")
    jb, _ = plan_search(name, **cond, n=8, search=f"density:1@{k}", out="unused")
    assert ja.fingerprint() == jb.fingerprint()  # resumes a folder of today's search


@pytest.mark.parametrize("search", ["density:4@1,1@2", "cluster:3@0/6,density:1@2"])
def test_results_do_not_depend_on_batch_size(search):
    runs = [vardist.search("toy-digits", **DIGITS, search=search, batch_size=bs)
            for bs in (1, 4)]
    for a, b in zip(*runs):
        assert a.lineage == b.lineage and a.chosen == b.chosen
        for ma, mb in zip(a.maps, b.maps):
            np.testing.assert_array_equal(ma, mb)
        assert np.abs(a.image.astype(int) - b.image.astype(int)).max() <= 1


def test_cluster_on_a_random_weight_model_does_not_depend_on_batch_size(fixtures_dir):
    """Near-identical previews of random weights made KMeans follow one-level pixel rounding
    by batch shape; clustering the latent (code embeddings) does not."""
    from vardist.models.var import from_fixture

    model = from_fixture(fixtures_dir / "var-tiny", device="cpu")
    kw = dict(classes="0-1", samples=2, n=6, search="cluster:3@1,density:2@2,1@4")
    runs = [vardist.search(model, **kw, batch_size=bs) for bs in (1, 4)]
    assert [r.lineage for r in runs[0]] == [r.lineage for r in runs[1]]
    assert len({tuple(r.lineage) for r in runs[0]}) > 1  # not a trivial all-zero lineage


def test_density_population_logs_compute_and_resumes(tmp_path):
    out = tmp_path / "run"
    kw = dict(**DIGITS, search="density:4@1,1@2", batch_size=2, out=out)
    first = vardist.search("toy-digits", **kw)
    rows = pq.read_table(out / "runlog.parquet").to_pylist()
    # toy-digits' scales hold 1, 4, 9, 16 tokens: the transformer runs scales 0 and 1 for the
    # item, scale 2 for each of the 4 members kept at scale 1 (its logits are what they draw
    # from), the last scale for the one kept at scale 2; keeping and forking run nothing
    assert {r["forward_tokens"] for r in rows} == {1 + 4 + 4 * 9 + 16}
    assert {(r["previews"], r["verifier_calls"], r["search"]) for r in rows} == {
        (0, 0, "density:4@1,density:1@2")}
    assert [r["lineage"] for r in rows] == [r.lineage for r in first]
    assert json.loads((out / "run.json").read_text())["config"]["search"] == \
        "density:4@1,density:1@2"
    # a killed run: an image and the log lost; the rerun redoes its batch, same bytes
    victim = first[3].path
    before = victim.read_bytes()
    victim.unlink()
    again = vardist.search("toy-digits", **kw)
    assert victim.read_bytes() == before and sum(not r.resumed for r in again) == 1
    with pytest.raises(ResumeMismatch, match="search"):
        vardist.search("toy-digits", **{**kw, "search": "density:2@1,1@2"})


def test_beam_and_tts_var_with_the_judge():
    beam = vardist.search("toy-digits", **DIGITS, search="beam:4@1,1@2", verifier="toy-judge")
    n = DIGITS["n"]
    for r in beam:
        # n previews (and judge calls) at scale 1, n more from the 4 members at scale 2, + final
        assert r.compute["previews"] == 2 * n and r.compute["verifier_calls"] == 2 * n + 1
        assert r.reward is not None and len(r.lineage) == 2
    tts = vardist.search("toy-digits", **DIGITS, search="tts-var", verifier="toy-judge")
    # clusters read the latent (no decode): only the resample step's 2 candidates are previewed
    assert all(len(r.lineage) == 3 and r.compute["previews"] == 2 for r in tts)
    again = vardist.search("toy-digits", **DIGITS, search="tts-var", verifier="toy-judge",
                           batch_size=1)
    assert [r.lineage for r in tts] == [r.lineage for r in again]


@pytest.mark.parametrize("kw, param", [
    (dict(search="beam:4@1,1@2"), "verifier"),
    (dict(search="beam:4@1,1@2", verifier="toy-judge", rerank=2), "rerank"),
    (dict(search="density:4@1,1@2", scale=1), "scale"),
    (dict(search="density:4@1,1@2", log_candidates=True, out="unused"), "log_candidates"),
    (dict(search="density:4@1,1@2", bandwidth="batch"), "bandwidth"),
    (dict(search="density:4@1,1@9"), "search")])
def test_refused_combinations(kw, param):
    with pytest.raises(InputError) as e:
        plan_search("toy-digits", classes="0-2", **kw)
    assert e.value.param == param


def test_ray_engine_writes_the_local_bytes_and_survives_a_killed_actor(tmp_path):
    """Each batch's population lives on one actor; a batch lost with its actor is searched
    again elsewhere, with the same bytes as the local engine."""
    ray = pytest.importorskip("ray")
    kw = dict(**DIGITS, search="density:3@0,cluster:2@1/6,density:1@2", batch_size=1)
    local = vardist.search("toy-digits", **kw, out=tmp_path / "local")
    killed = []

    def kill_one(done, total):
        if done and not killed:  # the first batch is written: the rest is queued on the actors
            names = sorted(a for a in ray.util.list_named_actors() if a.startswith("vardist-"))
            ray.kill(ray.get_actor(names[0]))
            killed.append(names[0])

    res = vardist.search("toy-digits", **kw, out=tmp_path / "ray", engine="ray", actors=2,
                         progress=kill_one)
    assert killed and res.stats["replaced"] >= 1
    assert [r.lineage for r in res] == [r.lineage for r in local]
    assert [r.path.read_bytes() for r in res] == [r.path.read_bytes() for r in local]
    rows = pq.read_table(tmp_path / "ray" / "runlog.parquet").to_pylist()
    assert len(rows) == len(local) and all(r["forward_tokens"] > 0 for r in rows)


def test_cli_search_schedule(tmp_path):
    from typer.testing import CliRunner

    from vardist_cli.main import app

    out = tmp_path / "cli"
    r = CliRunner().invoke(app, ["search", "--model", "toy-digits", "--classes", "0-1",
                                 "--samples", "2", "--n", "6", "--search", "beam:3@1,1@2",
                                 "--verifier", "toy-judge", "--out", str(out), "--quiet"])
    assert r.exit_code == 0, r.output
    rows = pq.read_table(out / "runlog.parquet").to_pylist()
    assert {r["search"] for r in rows} == {"reward:3@1,reward:1@2"}
    assert all(r["previews"] == 12 and len(r["lineage"]) == 2 for r in rows)
    bad = CliRunner().invoke(app, ["search", "--model", "toy-digits", "--classes", "0",
                                   "--search", "beam:3@1,1@1", "--out", str(tmp_path / "bad")])
    assert bad.exit_code == 2 and "--search" in bad.output and "'1@1'" in bad.output


# -- compute accounting of one-scale runs ------------------------------------------------------

def test_one_scale_and_plain_runs_log_their_compute(tmp_path):
    """Plain and one-scale runs fill the compute columns with multiscale's rule: every scale
    fed once (the pool is drawn from logits already computed), rerank's further continuations
    feed scales k.. again, the verifier scores what it ranks; the images are unchanged."""
    plain_tokens = 1 + 4 + 9 + 16  # toy-digits' scales
    base = {k: v for k, v in DIGITS.items() if k != "n"}
    runs = {"plain": dict(strategy="none"), "density": dict(scale=1, n=12),
            "scored": dict(scale=1, n=12, verifier="toy-judge"),
            "rerank": dict(scale=1, n=12, strategy="top-k", verifier="toy-judge", rerank=3)}
    for name, kw in runs.items():
        res = vardist.search("toy-digits", **base, **kw, out=tmp_path / name)
        rows = pq.read_table(tmp_path / name / "runlog.parquet").to_pylist()
        assert {row["continuations"] for row in rows} == {3 if name == "rerank" else 1}
        for r, row in zip(res, rows):
            conts = row["continuations"]
            # scales 0 and 1 once (the pool is drawn from scale 1's logits), each
            # continuation the scales after it
            want = dict(forward_tokens=1 + 4 + conts * (9 + 16), previews=0,
                        verifier_calls={"plain": 0, "density": 0}.get(name, conts))
            assert r.compute == want
            assert {k: row[k] for k in want} == want
            assert row["search"] is None and row["lineage"] is None
        if name in ("plain", "density"):
            assert {r.compute["forward_tokens"] for r in res} == {plain_tokens}
        # a resumed run reads its compute back from the log
        again = vardist.search("toy-digits", **base, **kw, out=tmp_path / name)
        assert all(r.resumed for r in again)
        assert [r.compute for r in again] == [r.compute for r in res]
    # in memory, and the same bytes as before the columns existed (images are pinned
    # elsewhere; here: a density run's images equal a plain scale-1 search's)
    mem = vardist.search("toy-digits", **DIGITS, scale=1)
    assert all(r.compute["forward_tokens"] == plain_tokens for r in mem)


# -- memory of a population, before any model loads ------------------------------------------

def test_step_members_follow_the_engines_arithmetic():
    from vardist.engine.schedule import step_members

    m = step_members(parse_search("beam:8@1,4@3,1@6", 10), n=16, previews=False)
    assert [(x.scale, x.before, x.draws, x.after, x.previews) for x in m] == [
        (1, 1, 16, 8, 16), (3, 8, 2, 4, 16), (6, 4, 4, 1, 16)]
    # a rule keeps at most its candidates, resample draws POP with replacement; cluster
    # decodes previews only with a verifier (its image tower), density never
    m = step_members(parse_search("cluster:6@0/4,resample:5@1/3,density:1@2", 4), n=9,
                     previews=False)
    assert [(x.before, x.draws, x.after, x.previews) for x in m] == [
        (1, 4, 4, 0), (4, 1, 5, 4), (5, 2, 1, 0)]
    assert step_members(parse_search("cluster:2@0,1@1", 4), 4, previews=True)[0].previews == 4


def test_population_memory_counts_a_kv_cache_per_member():
    from vardist.engine.schedule import step_members
    from vardist.models import memory

    fp = memory.footprint("toy-digits")
    one = memory.estimate(fp, batch=1, n=1, scale=0, device="cpu").kv_cache
    plain = memory.estimate(fp, batch=4, n=1, scale=3, device="cpu")
    for pop in (2, 8, 64):
        steps = step_members(parse_search(f"density:{pop}@1/{pop},1@2", 4), n=pop,
                             previews=False)
        plan = memory.estimate_population(fp, batch=4, steps=steps, device="cpu")
        # the peak holds the members entering scale 2 and the one each keeps
        assert plan.kv_cache == 4 * (pop + 1) * one
        assert plan.total > plain.total


# -- candidate previews: the chunk rule and their memory -------------------------------------

def test_preview_chunk_is_a_pixel_budget_per_decode_batch():
    from vardist.engine.schedule import PREVIEW_CHUNK, PREVIEW_PIXELS, preview_chunk

    got = {hw: preview_chunk(hw) for hw in [(16, 16), (32, 32), (128, 128), (256, 256),
                                             (512, 512), (1024, 1024), (768, 1360), (8192, 8192)]}
    assert got == {(16, 16): 256, (32, 32): 256, (128, 128): 256, (256, 256): 64,
                   (512, 512): 16, (1024, 1024): 4, (768, 1360): PREVIEW_PIXELS // (768 * 1360),
                   (8192, 8192): 1}
    assert preview_chunk(None) == PREVIEW_CHUNK  # a model that does not state its size
    with pytest.raises(ValueError, match="positive"):
        preview_chunk((0, 16))
    # the toys the documented tables were measured on keep the chunk they were measured with
    for name in ("toy-digits", "toy-shapes"):
        assert preview_chunk(vardist.models.load(name, device="cpu").image_hw) == PREVIEW_CHUNK


def test_previews_decode_one_items_candidates_a_chunk_at_a_time():
    """engine.multiscale asks preview_candidates for one item's candidates at a time, at most
    preview_chunk(model.image_hw), and the previews are those of fork + advance + preview."""
    import torch

    from scalewise_double import DoubleModel
    from vardist.engine.multiscale import _previews
    from vardist.models import Sampling

    class Big(DoubleModel):
        image_hw = (1024, 1024)  # a chunk of 4

        def preview_candidates(self, state, rows, codes):
            calls.append([int(r) for r in rows])
            return super().preview_candidates(state, rows, codes)

    calls: list[list[int]] = []
    model = Big()
    with torch.inference_mode():
        state = model.start([3, 7, 1], [5, 6, 7], Sampling(cfg=0.0))
        model.run_scales(state, 1)
        codes = model.draw_pool(state, 10)
        flat = [(b, b, j) for b in range(3) for j in range(10 if b != 1 else 3)]
        got = _previews(model, state, codes, flat)
        want = []
        for b, m, j in flat:
            one = model.fork(state, [m])
            model.advance(one, codes[[m], [j]])
            want.append(model.preview(one).numpy())
    assert [len(c) for c in calls] == [4, 4, 2, 3, 4, 4, 2]
    assert all(len(set(c)) == 1 for c in calls)  # never two items in one decode batch
    np.testing.assert_array_equal(got, np.concatenate(want))


def test_population_memory_counts_no_kv_cache_per_preview():
    """A candidate preview holds a copy of the latent and a decode, not a KV cache: on
    Infinity-2B (configs only, no weights) beam search's peak does not grow with n."""
    from vardist.engine.schedule import preview_chunk, step_members
    from vardist.models import memory

    fp = memory.footprint("infinity-2b")
    S = len(fp.tokens)
    one = memory.estimate(fp, batch=1, n=1, scale=0, cfg=3.0)
    plans = []
    for n in (64, 256, 1024):
        steps = step_members(parse_search("beam:8@3,1@6", S), n, previews=True,
                             image_hw=fp.image_hw)
        assert [s.previews for s in steps] == [preview_chunk(fp.image_hw)] * 2 == [4, 4]
        plans.append(memory.estimate_population(fp, batch=1, steps=steps, cfg=3.0))
    for plan in plans:
        assert plan.kv_cache == (1 + 8) * one.kv_cache  # members entering and kept, nothing else
        assert plan.transients >= 4 * one.decode  # one item's chunk of previews decoding
    assert plans[-1].total - plans[0].total < 0.01 * plans[0].total  # only the candidates' ids
    assert plans[0].total < 80 * memory.GB  # it fits an 80 GB GPU at batch 1


def test_a_verifier_scores_one_items_candidates_at_a_time():
    """Rewards must not depend on batch mates: each verifier call holds one item's previews
    (a verifier batches and may round by batch shape), and the choices equal a batch of one's."""
    from vardist.engine import multiscale, pipeline
    from vardist.engine.plan import WorkItem
    from vardist.engine.rerank import Verify
    from vardist.models import registry
    from vardist.verifiers import load

    class Recording:
        def __init__(self, inner):
            self.inner, self.calls = inner, []

        def score(self, images, conditions):
            self.calls.append(list(conditions))
            return self.inner.score(images, conditions)

    model = registry.load("toy-digits", device="cpu")
    job, _ = plan_search(model, classes="0-2", samples=1, n=6, search="beam:3@1,1@2",
                         verifier="toy-judge")
    sched = parse_search(job.search, model.num_scales)
    items = [WorkItem(i, c, 0, c, 1000 + c) for i, c in enumerate([0, 1, 2])]
    rec = Recording(load("toy-judge", None, "cpu"))
    embed = pipeline.embedder(model)
    _, _, together = multiscale.search_batch(model, items, job.settings, sched, Verify(rec),
                                             embed)
    scoring = rec.calls[:-1]  # the last call scores the kept final images, all items at once
    assert len(scoring) >= len(items) and all(len(set(c)) == 1 for c in scoring), rec.calls
    alone = [multiscale.search_batch(model, [it], job.settings, sched, Verify(rec), embed)[2][0]
             for it in items]
    assert [c.lineage for c in together] == [c.lineage for c in alone]


def test_population_refusal_names_plain_generation_when_nothing_fits():
    """When one plain image does not fit, no smaller population would help: the refusal says
    so instead of asking for smaller POP or /N; otherwise it names the batch that fits."""
    from vardist.api import _check_population_memory
    from vardist.engine.schedule import step_members
    from vardist.models import memory, registry

    spec, fp = registry.get_spec("toy-digits"), memory.footprint("toy-digits")
    job, _ = plan_search("toy-digits", classes="0", n=64, search="density:64@1/64,1@2")
    sched = parse_search(job.search, 4)
    plain = memory.estimate(fp, batch=1, n=1, scale=3, device="cpu").total
    with pytest.raises(InputError, match="even for plain generation of one image") as e:
        _check_population_memory(spec, job.settings, sched, 4, (plain - 1, "a tiny device"),
                                 "cpu", {}, False)
    assert e.value.param == "search" and "density:64@1" in str(e.value)
    steps = step_members(sched, 64, previews=False, image_hw=fp.image_hw)
    one = memory.estimate_population(fp, batch=1, steps=steps, device="cpu").total
    with pytest.raises(InputError, match="lower its populations") as e:
        _check_population_memory(spec, job.settings, sched, 4, (one, "a small device"), "cpu",
                                 {}, False)
    assert "use batch_size 1 (the largest that fits)" in str(e.value)


def test_a_schedule_run_resumes_only_under_the_same_preview_batches(tmp_path):
    """The preview chunk rule shapes the rewards a schedule ranks: it is in the fingerprint,
    so a folder searched under another rule is refused rather than mixed."""
    out = tmp_path / "run"
    kw = dict(**DIGITS, search="beam:2@1,1@2", verifier="toy-judge", out=out)
    vardist.search("toy-digits", **kw)
    doc = json.loads((out / "run.json").read_text())
    from vardist.engine.schedule import PREVIEW_PIXELS

    assert doc["fingerprint"]["preview_pixels"] == PREVIEW_PIXELS
    doc["fingerprint"]["preview_pixels"] = PREVIEW_PIXELS * 4
    (out / "run.json").write_text(json.dumps(doc))
    with pytest.raises(ResumeMismatch, match="preview_pixels"):
        vardist.search("toy-digits", **kw)


def test_cluster_measures_previews_by_the_verifiers_image_tower():
    """`cluster` with a verifier that has an image tower (clip, pickscore, aesthetic, hpsv2:
    `verifier.embed.images`) embeds the decoded previews, one item's per call; the planner
    counts those previews only for such verifiers (VerifierSpec.image_tower)."""
    import torch

    from vardist.engine import multiscale, pipeline
    from vardist.engine.plan import WorkItem
    from vardist.engine.rerank import Verify
    from vardist.models import registry
    from vardist.verifiers import get_spec
    from vardist.verifiers.clip import ClipScore

    class Tower:
        def __init__(self):
            self.calls = []

        def images(self, images):
            self.calls.append(images.shape)
            return torch.as_tensor(images.reshape(len(images), -1)[:, :32], dtype=torch.float32)

    class Judge:  # scores the final images only (cluster reads no reward)
        def __init__(self, tower):
            self.embed = tower

        def score(self, images, conditions):
            return np.zeros(len(images))

    assert multiscale._image_tower(Verify(ClipScore(Tower(), torch.device("cpu")))) is not None
    assert multiscale._image_tower(None) is None
    assert [s for s in ("clip", "pickscore", "aesthetic", "hpsv2", "image-reward", "toy-judge",
                        "toy-geneval") if get_spec(s).image_tower] == [
        "clip", "pickscore", "aesthetic", "hpsv2"]
    model = registry.load("toy-digits", device="cpu")
    job, _ = plan_search(model, classes="0-1", samples=1, n=6, search="cluster:2@1,1@2")
    tower = Tower()
    items = [WorkItem(i, c, 0, c, 77 + c) for i, c in enumerate([0, 1])]
    images, _, choices = multiscale.search_batch(
        model, items, job.settings, parse_search(job.search, 4), Verify(Judge(tower)),
        pipeline.embedder(model))
    # scale 1: each item's 6 candidates; scale 2: its 2 members' 6 candidates
    assert [shape[0] for shape in tower.calls] == [6, 6, 6, 6]
    assert all(shape[1:] == images.shape[1:] for shape in tower.calls)
    assert all(c.compute["previews"] == 12 for c in choices)
