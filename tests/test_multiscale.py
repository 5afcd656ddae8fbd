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
    # toy-digits' scales hold 1, 4, 9, 16 tokens: scale 0 and 1 once, the 4 kept members
    # fed at scale 1, the kept one at 2, the last scale once
    assert {r["forward_tokens"] for r in rows} == {1 + 4 * 4 + 9 + 16}
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
