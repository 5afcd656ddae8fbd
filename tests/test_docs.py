"""What users read: no internal files or hand-off words, and the README's account of how
vardist's defaults differ from the authors' run.py agrees with the code."""

import re
from pathlib import Path

import pytest

from vardist.api import PRESETS, plan_search

ROOT = Path(__file__).resolve().parents[1]
# files users do not have (the project's notes and design file) and words of the project's
# own hand-offs, which mean nothing to a reader of the package
INTERNAL = re.compile(r"shared/notes|DESIGN\.md|for the lead|lead to merge|\bissue \d+|steering|"
                      r"build machines?|\bhelper [A-Z]\b|\bsessions?\b|hand-?off", re.IGNORECASE)


def _user_files() -> list[Path]:
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    for folder in ("cli", "vardist"):
        files += sorted((ROOT / folder).rglob("*.py"))
    return files


def test_user_docs_cite_no_internal_files_or_handoff_words():
    hits = [f"{path.relative_to(ROOT)}:{i}: {line.strip()}"
            for path in _user_files()
            for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
            if INTERNAL.search(line)]
    assert not hits, "\n".join(hits)


def test_the_wording_check_catches_what_it_is_for():
    for text in ("see shared/notes/flexvar.md", "DESIGN.md step 4", "for the lead to merge",
                 "(issue 18)", "no GPU on the build machines"):
        assert INTERNAL.search(text), text
    for text in ("GitHub issue FoundationVision/Infinity#27", "a helper thread", "leading dims"):
        assert not INTERNAL.search(text), text


# How the README names each setting in which run.py differs from vardist's defaults, and the
# flag docs/search.md gives to remove the difference.
README_WORDS = {"pool_sampling": "i.i.d.", "bandwidth": "bandwidth is per",
                "samples": "4 images per class", "batch_size": "batches of 8",
                "alpha": "alpha per depth"}
FLAGS = {"pool_sampling": "--pool-sampling authors", "bandwidth": "--bandwidth batch",
         "samples": "--samples 50", "batch_size": "--batch-size 50", "alpha": "--alpha 2.3"}


@pytest.fixture()
def weights(tmp_path, monkeypatch):
    monkeypatch.delenv("VARDIST_WEIGHTS", raising=False)
    for name in ("vae_ch160v4096z32.pth", "var_d30.pth"):
        (tmp_path / name).write_bytes(b"")  # plan_search checks the files exist, loads nothing
    return tmp_path


def _plan(weights, **kw) -> dict:
    job, _ = plan_search("var-d30", classes="0-1", weights=weights, **kw)
    s = vars(job.settings)
    return {**s, "samples": job.samples, "batch_size": job.batch_size}


def test_readme_names_every_default_that_differs_from_run_py(weights):
    ours, theirs = _plan(weights), _plan(weights, preset="authors")
    differ = {key for key in theirs if ours[key] != theirs[key]}
    # the preset sets run.py's values; what differs from the defaults must be documented
    assert differ == set(README_WORDS), differ
    assert {key: theirs[key] for key in PRESETS["authors"] if key in differ} == {
        key: PRESETS["authors"][key] for key in differ if key in PRESETS["authors"]}
    readme = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())
    intro = readme[:readme.index("## ")]  # the claim is made where the README introduces vardist
    for key, words in README_WORDS.items():
        assert words in intro, f"README intro does not say how {key} differs ({words!r})"
    assert "--preset authors" in intro and "fp16" in intro and "--autocast fp16" in intro
    search_doc = " ".join((ROOT / "docs" / "search.md").read_text(encoding="utf-8").split())
    for key, flag in FLAGS.items():
        assert flag in search_doc, f"docs/search.md gives no flag for {key} ({flag})"
    assert f"{ours['samples']}, {ours['batch_size']}" in search_doc  # the defaults it states
