"""Verifier-guided search (engine.rerank) on toy-digits with the toy judge: best-of-K keeps the
candidate with the highest reward, checked against finishing and scoring every shortlisted
candidate separately; a verifier without rerank only scores; the run log, run.json and resume;
the input checks."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

import vardist
from vardist.api import plan_search
from vardist.engine import pipeline, rerank
from vardist.io.conditions import InputError
from vardist.io.outputs import read_png
from vardist.io.runlog import ResumeMismatch
from vardist.models import registry
from vardist.verifiers import MissingVerifierWeights
from vardist.verifiers import load as load_verifier

RUN = dict(classes="0-2", samples=2, n=12, seed=3, batch_size=4)


@pytest.fixture(scope="module")
def model():
    return registry.load("toy-digits", device="cpu")


@pytest.fixture(scope="module")
def judge():
    return load_verifier("toy-judge", device="cpu")


def _separately(model, judge, **kw):
    """Every item's shortlist, each candidate finished alone (a batch of one item, rebuilt
    teacher-forced from the codes) and scored alone: {item index: [(candidate, reward, image,
    density)]}."""
    job, _ = plan_search("toy-digits", **RUN, verifier="toy-judge", **kw)
    out = {}
    with pipeline.replica_threads():
        for batch in job.batches():
            pool = pipeline.prefix_and_pool(model, batch, job.settings)
            choices = pipeline.select_batch(pool.codes, pipeline.embedder(model), pool.seeds,
                                            job.settings, keep_density=True)
            for b, (it, ch) in enumerate(zip(batch, choices)):
                rows = []
                for j in ch.shortlist[:kw.get("rerank") or 1]:
                    img, _ = pipeline.continue_batch(model, [it], job.settings,
                                                     [m[b:b + 1] for m in pool.prefix],
                                                     pool.codes[b:b + 1, j])
                    rows.append((j, float(judge.score(img, [it.condition])[0]), img[0],
                                 float(ch.density[j])))
                out[it.index] = rows
    return out


@pytest.mark.parametrize("kw", [dict(strategy="random-k", k=4, rerank=4),
                                dict(strategy="var-scaling", rerank=3)])
def test_rerank_keeps_the_best_of_the_shortlist(model, judge, kw):
    with pipeline.replica_threads():
        got = vardist.search(model, verifier="toy-judge", **RUN, **kw)
    alone = _separately(model, judge, **kw)
    for r in got:
        rows = alone[r.item.index]
        assert r.continuations == len(rows) <= kw["rerank"]
        best = max(rows, key=lambda t: (t[1], t[3], -t[0]))
        assert r.chosen == best[0]
        assert r.reward == pytest.approx(best[1], rel=1e-5)
        # the kept image is the image plain search makes from that candidate, byte for byte
        np.testing.assert_array_equal(r.image, best[2])


def test_rerank_log_columns_resume_and_fingerprint(model, judge, tmp_path):
    out = tmp_path / "run"
    kw = dict(strategy="random-k", k=4, rerank=4, verifier="toy-judge")
    first = vardist.search("toy-digits", **RUN, **kw, out=out)
    log = pq.read_table(out / "runlog.parquet").to_pylist()
    assert len(log) == len(first) == 6
    for row, r in zip(log, first):
        assert row["verifier"] == "toy-judge" and row["rerank"] == 4
        assert row["continuations"] == len(row["reranked"]) == len(row["rerank_rewards"]) == 4
        assert row["chosen"] in row["reranked"]
        assert row["reward"] == max(row["rerank_rewards"]) == r.reward
        # the logged reward is the judge's on the written PNG
        png = read_png(r.path)
        assert judge.score(png[None], [r.item.condition])[0] == pytest.approx(row["reward"])
    fp = json.loads((out / "run.json").read_text())["fingerprint"]
    assert fp["verifier"] == "toy-judge" and fp["rerank"] == 4
    assert any(key.startswith("verifier weights judge.safetensors") for key in fp)
    again = vardist.search("toy-digits", **RUN, **kw, out=out)  # finished: resumed records
    assert [(r.chosen, r.reward, r.continuations) for r in again] == \
        [(r.chosen, r.reward, r.continuations) for r in first]
    assert all(r.resumed for r in again)
    with pytest.raises(ResumeMismatch, match="rerank: this folder has 4, this run asks for 2"):
        vardist.search("toy-digits", **RUN, **{**kw, "rerank": 2}, out=out)


def test_verifier_alone_scores_the_plain_choice(model, judge):
    kw = dict(RUN, strategy="top-k", k=5)
    with pipeline.replica_threads():
        plain = vardist.search(model, **kw)
        scored = vardist.search(model, verifier="toy-judge", **kw)
    for p, s in zip(plain, scored):
        assert (p.chosen, p.reward, s.continuations) == (s.chosen, None, 1)
        np.testing.assert_array_equal(p.image, s.image)
        assert s.reward == pytest.approx(judge.score(s.image[None], [s.item.condition])[0])


class Brightness:
    """A condition-free stand-in verifier: the image's mean pixel."""

    name, condition_kind = "brightness", "any"

    def score(self, images, conditions):
        return images.reshape(len(images), -1).mean(1).astype(np.float64)


@pytest.mark.parametrize("name, cond", [("toy-digits", dict(classes="0-2")),
                                        ("infinity-tiny", dict(prompts=["a red square",
                                                                        "two blue circles"]))])
def test_fork_and_teacher_forced_finishing_agree(name, cond, fixtures_dir):
    """The local engine finishes from a fork of the kept state; an engine without the state
    (Ray's actors) rebuilds it from the codes: same images, rewards and choices. And the kept
    images are those the canonical batch makes when it continues the kept candidates."""
    model = registry.load(name, device="cpu")
    job, _ = plan_search(model, **cond, samples=2, n=8, strategy="random-k", k=3, scale=1)
    verify = rerank.Verify(Brightness(), 3)
    batch = job.batches()[0]
    with pipeline.replica_threads():
        pool = pipeline.prefix_and_pool(model, batch, job.settings, keep_state=True)
        choices = pipeline.select_batch(pool.codes, pipeline.embedder(model), pool.seeds,
                                        job.settings, keep_density=True)
        forked = rerank.finish_batch(model, batch, job.settings, pool.prefix, pool.codes,
                                     choices, pool.state, verify)
        rebuilt = rerank.finish_batch(model, batch, job.settings, pool.prefix, pool.codes,
                                      choices, None, verify)
        kept = np.stack([pool.codes[b, c.index] for b, c in enumerate(forked[2])])
        plain, _ = pipeline.continue_batch(model, batch, job.settings, pool.prefix, kept)
    np.testing.assert_array_equal(forked[0], rebuilt[0])
    np.testing.assert_array_equal(forked[0], plain)
    for a, b in zip(forked[1], rebuilt[1]):
        np.testing.assert_array_equal(a, b)
    assert [(c.index, c.rewards) for c in forked[2]] == [(c.index, c.rewards) for c in rebuilt[2]]
    assert all(c.continuations == 3 and c.reward == max(c.rewards) for c in forked[2])


@pytest.mark.parametrize("kw, param, match", [
    (dict(rerank=4), "rerank", "rerank needs a verifier"),
    (dict(verifier_weights="/tmp"), "verifier_weights", "verifier_weights needs a verifier"),
    (dict(verifier="nope"), "verifier", "unknown verifier 'nope'"),
    (dict(verifier="toy-geneval"), "verifier", "prompt conditions, and this run has classes"),
    (dict(verifier="toy-judge", rerank=0), "rerank", "rerank must be >= 1"),
    (dict(verifier="toy-judge", rerank=2, strategy="none"), "rerank", "strategy 'none'"),
    (dict(verifier="toy-judge", rerank="2"), "rerank", "must be an integer"),
])
def test_bad_verifier_arguments(kw, param, match):
    with pytest.raises(InputError, match=match) as e:
        plan_search("toy-digits", **{**RUN, **kw})
    assert e.value.param == param


def test_missing_verifier_weights_refused_before_loading(tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "load", lambda *a, **k: pytest.fail("loaded the model"))
    with pytest.raises(MissingVerifierWeights, match=f"judge.safetensors in {tmp_path}"):
        vardist.search("toy-digits", **RUN, verifier="toy-judge", verifier_weights=tmp_path)


def test_cli_search_with_rerank(tmp_path):
    from vardist_cli.main import app

    out = tmp_path / "cli"
    r = CliRunner().invoke(app, ["search", "--model", "toy-digits", "--classes", "0-1",
                                 "--samples", "2", "--n", "8", "--strategy", "random-k",
                                 "--k", "3", "--verifier", "toy-judge", "--rerank", "3",
                                 "--out", str(out), "--quiet", "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["continuations_per_image"] == 3 and 0 < summary["mean_reward"] <= 1
    bad = CliRunner().invoke(app, ["search", "--classes", "0", "--rerank", "2",
                                   "--out", str(tmp_path / "bad")])
    assert bad.exit_code == 2 and "--rerank" in bad.output


def test_ray_engine_reranks_in_the_actors_with_the_local_bytes(tmp_path):
    """On Ray the verifier lives in each generator actor; with 1 or 2 actors the folder holds
    the local engine's bytes, rewards and choices."""
    pytest.importorskip("ray")
    kw = dict(RUN, strategy="random-k", k=4, rerank=3, verifier="toy-judge")
    local_run = vardist.search("toy-digits", **kw, out=tmp_path / "local")
    for actors in (1, 2):
        out = tmp_path / f"ray{actors}"
        got = vardist.search("toy-digits", **kw, out=out, engine="ray", actors=actors)
        assert [(r.chosen, r.reward, r.continuations) for r in got] == \
            [(r.chosen, r.reward, r.continuations) for r in local_run]
        for a, b in zip(got, local_run):
            assert a.path.read_bytes() == b.path.read_bytes()
        log = pq.read_table(out / "runlog.parquet").to_pylist()
        assert all(len(row["rerank_rewards"]) == 3 for row in log)


def test_study_takes_verifiers_as_metrics(tmp_path, judge, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "no-cache"))
    from vardist.study import Study

    study = Study("toy-digits", [1, 7], seeds=2, sweep={"n": [4], "strategy": ["none"]},
                  metrics=["toy-judge"])
    res = study.run(tmp_path / "study")
    rows = pq.read_table(res.paths["rows"]).to_pylist()
    for r in rows:  # the reward of the written image
        img = read_png(tmp_path / "study" / r["image"])
        assert r["toy-judge"] == pytest.approx(judge.score(img[None], [r["condition_index"]])[0])
    with pytest.raises(InputError, match="unknown metric 'nope'.*verifiers.*clip"):
        Study("toy-digits", [1], seeds=1, sweep={"n": [4]}, metrics=["nope"])
    monkeypatch.delenv("VARDIST_WEIGHTS", raising=False)  # and an empty cache, above
    with pytest.raises(MissingVerifierWeights, match="clip-vit-large-patch14"):
        Study("toy-digits", [1], seeds=1, sweep={"n": [4]}, metrics=["clip"])


def test_toy_geneval_refuses_prompts_it_cannot_score(tmp_path):
    from vardist.zoo.shapes import EVAL_PROMPTS

    from vardist.verifiers import get_spec

    prompts = [json.loads(line)["prompt"] for line in EVAL_PROMPTS.read_text().splitlines()]
    get_spec("toy-geneval").check_conditions(prompts)  # the shipped prompts pass
    with pytest.raises(InputError, match="not among them, e.g. 'a purple elephant'") as e:
        plan_search("toy-shapes", prompts=["a purple elephant"], verifier="toy-geneval")
    assert e.value.param == "prompts"


def test_rerank_beyond_a_fixed_shortlist_warns():
    from vardist.io.conditions import InputWarning

    with pytest.warns(InputWarning, match="shortlists at most min\\(k, n\\) = 3 candidates"):
        plan_search("toy-digits", **RUN, strategy="top-k", k=3, rerank=5, verifier="toy-judge")
    with pytest.warns(InputWarning, match="at most rep = 10 candidates"):
        plan_search("toy-digits", **RUN, strategy="var-scaling", rerank=11, verifier="toy-judge")


def test_study_sweeps_rerank_reusing_continuations(model, judge, tmp_path):
    """A study over rerank 0 / 2 / 4 keeps what separate searches keep, finishes each distinct
    (item, candidate) once (counted at the model), and scores each image once per verifier."""
    import dataclasses

    from vardist.study import Study

    finished = []
    counting = registry.load("toy-digits", device="cpu")
    inner = counting.finish
    counting.finish = lambda state: (finished.append(state.batch_size), inner(state))[1]
    sweep = {"strategy": ["none", "random-k", "var-scaling"], "rerank": [0, 2, 4]}
    run = dict(n=12, k=4, seed=3, batch_size=4)
    study = Study(counting, "0-2", seeds=2, sweep=sweep, verifier="toy-judge",
                  metrics=["toy-judge"], **run)
    # "none" has no shortlist: rerank collapses to 0 there (one setting, not three)
    assert [(s.strategy, s.rerank) for s in study.settings] == [
        ("none", 0), ("random-k", 0), ("random-k", 2), ("random-k", 4), ("var-scaling", 0),
        ("var-scaling", 2), ("var-scaling", 4)]
    with pipeline.replica_threads():
        res = study.run(tmp_path / "study")
        rows = res.rows.to_pylist()
        cols = ["reward", "reranked", "rerank_rewards", "continuations"]
        assert pq.read_table(res.paths["rows"], columns=cols).to_pylist() == \
            [{c: r[c] for c in cols} for r in rows]
        assert res.paths["plot_toy-judge_compute"].is_file()  # quality vs compute
        separate_cost = 0
        for s in study.settings:
            knobs = {k: v for k, v in run.items() if s.strategy != "none" or k not in "nk"}
            alone = vardist.search(model, classes="0-2", samples=2, strategy=s.strategy,
                                   verifier="toy-judge", rerank=s.rerank or None, **knobs)
            separate_cost += sum(a.continuations for a in alone)
            mine = sorted((r for r in rows if (r["strategy"], r["rerank"]) ==
                           (s.strategy, s.rerank)), key=lambda r: r["item"])
            assert [r["chosen"] for r in mine] == [a.chosen for a in alone]
            assert [r["continuations"] for r in mine] == [a.continuations for a in alone]
            assert [r["reward"] for r in mine] == pytest.approx([a.reward for a in alone],
                                                                rel=1e-5)
            for r, a in zip(mine, alone):
                assert len(r["reranked"]) == (a.continuations if s.rerank else 0)
                assert r["toy-judge"] == r["reward"]  # the metric reuses the rewards
                np.testing.assert_array_equal(res.images[r["image_key"]], a.image)
            summary = [x for x in res.summary.to_pylist() if x["setting"] == mine[0]["setting"]]
            assert summary[0]["continuations_per_image"] == pytest.approx(
                np.mean([a.continuations for a in alone]))
    # What was computed: one continuation per distinct (item, candidate token map) that any
    # setting keeps or reranks, counted independently from a fresh pool of the same items.
    pool = pipeline.prefix_and_pool(model, study.items, dataclasses.replace(
        study.settings[-1].search_settings(), strategy="top-k"))
    distinct = {(r["item"], pool.codes[r["item"], j].tobytes())
                for r in rows for j in (r["reranked"] or [r["chosen"]])}
    assert res.stats["continuations"] == sum(finished) == len(distinct)
    assert res.stats["scored"] == len(distinct)  # one reward per image, shared by the metric
    assert res.stats["continuations_separately"] == separate_cost > len(distinct)
    # rerank 4 extends rerank 2's candidates: it paid only for the ones after them
    by = {(r["strategy"], r["rerank"], r["item"]): r for r in rows}
    assert all(by["random-k", 4, i]["reranked"][:2] == by["random-k", 2, i]["reranked"]
               for i in range(len(study.items)))


def test_study_rerank_needs_a_verifier_and_sweeps_it():
    from vardist.study import Study

    with pytest.raises(InputError, match="rerank needs a verifier") as e:
        Study("toy-digits", [1], seeds=1, sweep={"strategy": ["top-k"], "rerank": [2]})
    assert e.value.param == "rerank"
    with pytest.raises(InputError, match="unknown verifier 'nope'"):
        Study("toy-digits", [1], seeds=1, sweep={"verifier": ["toy-judge", "nope"]})
    study = Study("toy-digits", [1], seeds=1, sweep={"strategy": ["none", "top-k"],
                                                     "verifier": [None, "toy-judge"]})
    assert [(s.strategy, s.verifier, s.rerank) for s in study.settings] == [
        ("none", None, 0), ("none", "toy-judge", 0), ("top-k", None, 0),
        ("top-k", "toy-judge", 0)]
    # "none" has no shortlist to rerank: with rerank=3 for all, it only scores its image
    study = Study("toy-digits", [1], seeds=1, sweep={"strategy": ["none", "top-k"]},
                  verifier="toy-judge", rerank=3, k=3)
    assert [(s.strategy, s.verifier, s.rerank) for s in study.settings] == [
        ("none", "toy-judge", 0), ("top-k", "toy-judge", 3)]
