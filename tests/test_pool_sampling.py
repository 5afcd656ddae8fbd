"""pool_sampling="authors" (the released VAR code's narrowing candidate sampler), the authors
preset and the fp16 autocast option, against a plain transcription of the authors' rule."""

import numpy as np
import pytest
import torch

import vardist
from vardist.api import plan_search
from vardist.io.conditions import InputError
from vardist.models.interface import Sampling
from vardist.models.sampling import NarrowingDraws, batch_uniforms, item_stream
from vardist.models.var import VARGenerator, from_fixture


def reference_rule_pool(raw: torch.Tensor, top_k: int, top_p: float, n: int) -> list[torch.Tensor]:
    """The rule as the authors' code runs it, written out plainly: one tensor of raw logits,
    a sampler that cuts it in place (top-k: below the k-th largest; top-p: ascending sort,
    softmax, cumulative sum <= 1 - top_p, the largest kept) and is called once per candidate.
    Returns each candidate's probabilities [B, P, V]."""
    logits = raw.clone()
    probs = []
    for _ in range(n):
        if top_k > 0:
            kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
            logits[logits < kth] = float("-inf")
        if top_p > 0:
            vals, order = torch.sort(logits, dim=-1)
            cut = torch.cumsum(torch.softmax(vals, dim=-1), dim=-1) <= 1 - top_p
            cut[..., -1] = False
            for b, p in np.ndindex(*cut.shape[:2]):
                logits[b, p, order[b, p][cut[b, p]]] = float("-inf")
        probs.append(torch.softmax(logits.double(), dim=-1))
    return probs


def inverse_cdf(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Token whose cumulative probability first exceeds u * total: probs [B, P, V], u [B, P]."""
    cdf = probs.cumsum(-1)
    return (cdf <= (u * cdf[..., -1])[..., None]).sum(-1).clamp(max=probs.shape[-1] - 1)


def test_narrowing_draws_follow_the_transcribed_rule():
    g = torch.Generator().manual_seed(0)
    raw = torch.randn(3, 4, 300, generator=g) * 2
    top_k, top_p, n = 200, 0.9, 40
    ref = reference_rule_pool(raw, top_k, top_p, n)
    u = torch.rand(3, n, 4, generator=g, dtype=torch.float64)
    first = reference_rule_pool(raw, top_k, top_p, 1)[0]
    draws = NarrowingDraws(first.log().float(), top_k, top_p)
    ours = torch.cat([draws.draw(u[:, :7]), draws.draw(u[:, 7:])], 1)  # in two calls
    expected = torch.stack([inverse_cdf(ref[j], u[:, j]) for j in range(n)], 1)
    assert torch.equal(ours, expected)
    support = [int((p > 0).sum()) for p in ref]
    assert support == sorted(support, reverse=True) and support[-1] < support[0] / 2
    assert support[-1] == support[-2]  # it reaches its fixed point within 40 cuts here


@pytest.fixture(scope="module")
def tiny(fixtures_dir):
    return from_fixture(fixtures_dir / "var-tiny")


def _pool(model, seeds, n, mode, chunk=1024, top_p=0.96, scale=1):
    options = {} if mode == "iid" else {"pool_sampling": mode}
    st = model.start([3, 7][:len(seeds)], seeds, Sampling(cfg=1.0, top_k=900, top_p=top_p,
                                                            options=options))
    model.run_scales(st, scale)
    return model.draw_pool(st, n, chunk=chunk)


def test_authors_pool_on_var_tiny_matches_the_rule_and_keeps_streams(tiny):
    seeds, n = [11, 12], 30
    pool = _pool(tiny, seeds, n, "authors")
    # the raw CFG-mixed logits of scale 1 (no filter), then the transcribed rule
    st = tiny.start([3, 7], seeds, Sampling(cfg=1.0, top_k=0, top_p=0.0))
    tiny.run_scales(st, 1)
    ref = reference_rule_pool(tiny._logits(st), 900, 0.96, n)
    u = batch_uniforms([item_stream(s, 1) for s in seeds], n, pool.shape[2])
    assert torch.equal(pool, torch.stack([inverse_cdf(ref[j], u[:, j]) for j in range(n)], 1))
    iid = _pool(tiny, seeds, n, "iid")
    assert torch.equal(pool[:, 0], iid[:, 0])          # candidate 0 is the plain sample
    assert not torch.equal(pool, iid)                   # later ones come from narrower nuclei
    assert torch.equal(_pool(tiny, seeds, 12, "authors", chunk=5), pool[:, :12])  # nested pools
    assert torch.equal(_pool(tiny, seeds[:1], n, "authors"), pool[:1])  # per-item streams


def test_unknown_pool_sampling_is_refused_by_the_model(tiny):
    with pytest.raises(ValueError, match="pool_sampling must be one of iid, authors"):
        tiny.start([1], [0], Sampling(options={"pool_sampling": "narrow"}))
    with pytest.raises(ValueError, match="unknown VAR sampling options"):
        tiny.start([1], [0], Sampling(options={"cfg_mode": "x"}))


def test_pool_sampling_is_a_search_setting(tmp_path):
    job, config = plan_search("toy-digits", classes="0", pool_sampling="authors", out=tmp_path)
    assert job.settings.pool_sampling == "authors" and config["settings"]["pool_sampling"] == "authors"
    assert job.fingerprint()["pool_sampling"] == "authors"
    assert job.settings.sampling().options == {"pool_sampling": "authors"}
    default, _ = plan_search("toy-digits", classes="0")
    assert default.settings.pool_sampling == "iid" and default.settings.sampling().options == {}
    with pytest.raises(InputError, match="pool_sampling must be one of") as e:
        plan_search("toy-digits", classes="0", pool_sampling="nested")
    assert e.value.param == "pool_sampling"
    with pytest.raises(InputError, match="only applies to VAR models") as e:
        plan_search("flexvar-d24", classes="0", pool_sampling="authors")
    assert e.value.param == "pool_sampling"


def test_search_with_authors_sampler_runs_and_changes_pools():
    kw = dict(classes="0-1", samples=2, n=40, seed=3)
    iid = vardist.search("toy-digits", **kw)
    authors = vardist.search("toy-digits", pool_sampling="authors", **kw)
    assert len(authors) == 4 and all(0 <= r.chosen < 40 for r in authors)
    assert [r.chosen for r in iid] != [r.chosen for r in authors] or any(
        not np.array_equal(a.image, b.image) for a, b in zip(iid, authors))


def test_authors_preset_is_run_py():
    job, config = plan_search("toy-digits", classes="0-2", preset="authors")
    s = job.settings
    assert (s.strategy, s.scale, s.n, s.alpha, s.rep, s.conflict_thresh) == ("var-scaling", 1, 50, 2.3, 10, 1.8)
    assert (s.cfg, s.top_k, s.top_p, s.tau) == (1.0, 900, 0.96, 1.0)
    assert (s.bandwidth, s.pool_sampling, job.samples, job.batch_size) == ("batch", "authors", 50, 50)
    assert [{it.condition for it in b} for b in job.batches()] == [{0}, {1}, {2}]  # one class each
    assert config["preset"] == "authors"
    # explicit arguments win; the batch follows samples
    job, _ = plan_search("toy-digits", classes="0-2", preset="authors", alpha=2.5, samples=10,
                         bandwidth="item")
    assert (job.settings.alpha, job.samples, job.batch_size, job.settings.bandwidth) == (2.5, 10, 10, "item")
    with pytest.raises(InputError, match="unknown preset") as e:
        plan_search("toy-digits", classes="0", preset="paper")
    assert e.value.param == "preset"
    with pytest.raises(InputError, match="applies to VAR models"):
        plan_search("flexvar-d24", classes="0", preset="authors")


def test_defaults_without_a_preset_are_unchanged():
    job, _ = plan_search("toy-digits", classes="0")
    assert (job.samples, job.batch_size, job.settings.bandwidth) == (4, 8, "item")


def test_autocast_option(tiny, fixtures_dir, tmp_path, monkeypatch):
    """On the CPU fp16 autocast is a no-op, as the reference's autocast('cuda') is there: the
    same tokens and pixels. (Its effect on CUDA cannot be checked on the CPU.)"""
    a_img, a_maps = tiny.generate([3], cfg=1.5, top_k=900, top_p=0.96, seeds=[1])
    monkeypatch.setattr(tiny, "autocast", "fp16")  # what from_fixture(..., autocast="fp16") sets
    b_img, b_maps = tiny.generate([3], cfg=1.5, top_k=900, top_p=0.96, seeds=[1])
    assert all(torch.equal(x, y) for x, y in zip(a_maps, b_maps)) and torch.equal(a_img, b_img)
    with pytest.raises(ValueError, match="autocast must be one of off, fp16"):
        VARGenerator(tiny.vae, tiny.var, autocast="bf16")
    with pytest.raises(InputError, match="has no autocast option") as e:
        plan_search("toy-digits", classes="0", autocast="fp16")
    assert e.value.param == "autocast"
    with pytest.raises(InputError, match="load option"):
        plan_search(tiny, classes="0", scale=1, n=4, autocast="fp16")
    # a VAR checkpoint takes it as a load option, part of the run's fingerprint
    monkeypatch.delenv("VARDIST_WEIGHTS", raising=False)
    for name in ("vae_ch160v4096z32.pth", "var_d16.pth"):
        (tmp_path / name).write_bytes(b"")
    job, config = plan_search("var-d16", classes="0", weights=tmp_path, autocast="fp16")
    assert job.model_options == {"autocast": "fp16"} and job.fingerprint()["autocast"] == "fp16"
    plain, _ = plan_search("var-d16", classes="0", weights=tmp_path, autocast="off")
    assert plain.model_options == {}


def test_cli_preset_and_pool_sampling_reach_run_json(tmp_path):
    import json

    from typer.testing import CliRunner

    from vardist_cli.main import app

    out = tmp_path / "run"
    r = CliRunner().invoke(app, ["search", "--model", "toy-digits", "--classes", "0-1",
                                 "--preset", "authors", "--samples", "2", "--n", "10",
                                 "--out", str(out), "--quiet"])
    assert r.exit_code == 0, r.output
    config = json.loads((out / "run.json").read_text())
    text = json.dumps(config)
    assert '"pool_sampling": "authors"' in text and '"bandwidth": "batch"' in text
    assert '"batch_size": 2' in text and '"alpha": 2.3' in text
    r = CliRunner().invoke(app, ["search", "--model", "toy-digits", "--classes", "0",
                                 "--pool-sampling", "sorted", "--out", str(tmp_path / "bad")])
    flat = " ".join(r.output.split())
    assert r.exit_code == 2 and "pool-sampling" in flat and "sorted" in flat
