"""vardist.io: prompt files and class ranges in, atomic PNGs, layouts, .npz packing, run log."""

import json
import os
import zipfile

import numpy as np
import pyarrow as pa
import pytest

from vardist.io import outputs
from vardist.io.conditions import InputError, parse_classes, prompts_from_strings, read_prompts
from vardist.io.runlog import ROW_SCHEMA, ResumeMismatch, RunLog

GENEVAL_LINE = ('{"tag": "single_object", "include": [{"class": "bench", "count": 1}], '
                '"prompt": "a photo of a bench"}')


def test_read_prompts_keeps_the_raw_line_and_skips_blank_lines(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text(GENEVAL_LINE + "\n\n" + '{"prompt": "a cat"}\n')
    lines = read_prompts(f)
    assert [(p.index, p.prompt) for p in lines] == [(0, "a photo of a bench"), (1, "a cat")]
    assert json.loads(lines[0].raw) == json.loads(GENEVAL_LINE)


@pytest.mark.parametrize("body, needle", [
    ('{"prompt": "ok"}\n{"prompt": "unterminated\n', ":2: not valid JSON"),
    ('{"prompt": "ok"}\n["a list"]\n', ":2: expected a JSON object"),
    ('{"tag": "x"}\n', ':1: the object has no "prompt" key (keys: tag)'),
    ('{"prompt": ""}\n', ':1: "prompt" must be a non-empty string'),
    ('{"prompt": 3}\n', ':1: "prompt" must be a non-empty string'),
    ("\n  \n", "holds no prompts"),
])
def test_read_prompts_names_file_and_line_of_bad_input(tmp_path, body, needle):
    f = tmp_path / "bad.jsonl"
    f.write_text(body)
    with pytest.raises(InputError) as err:
        read_prompts(f)
    assert needle in str(err.value) and str(f) in str(err.value)
    assert err.value.param == "prompts"


def test_read_prompts_missing_file(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        read_prompts(tmp_path / "nope.jsonl")


def test_prompts_from_strings():
    assert json.loads(prompts_from_strings(["a dog"])[0].raw) == {"prompt": "a dog"}
    with pytest.raises(InputError, match="prompt 1"):
        prompts_from_strings(["a dog", "  "])


def test_parse_classes_forms():
    assert parse_classes("0-3", 10) == [0, 1, 2, 3]
    assert parse_classes("1, 3,5-7", 10) == [1, 3, 5, 6, 7]
    assert parse_classes("all", 4) == [0, 1, 2, 3]
    assert parse_classes(7, None) == [7]
    assert parse_classes([np.int64(2), 4], 10) == [2, 4]
    assert [type(c) for c in parse_classes(np.int64(3), 10)] == [int]  # a numpy label


@pytest.mark.parametrize("spec, needle", [
    ("0-10", "class 10 is outside this model's range 0..9"),
    ("x", "'x' is not a label or a range"),
    ("5-2", "is empty"),
    ("1,1", "class 1 is listed twice"),
    ("-1", "'-1' is not a label"),
    ([1.5], "not an integer label"),
    ("", "is not a label"),
])
def test_parse_classes_refuses(spec, needle):
    with pytest.raises(InputError) as err:
        parse_classes(spec, 10)
    assert needle in str(err.value) and err.value.param == "classes"


def test_class_ranges_are_bounded_before_they_are_expanded():
    """0-1000000000 was expanded into a list first (MemoryError): the bounds are arithmetic,
    with the model's class count or, for a model that states none, MAX_CLASSES."""
    from vardist.io.conditions import MAX_CLASSES

    with pytest.raises(InputError, match=r"class 1000 is outside this model's range 0\.\.999 "
                                         r"\(in '7-1000000000'\)"):
        parse_classes("0-5,7-1000000000", 1000)
    with pytest.raises(InputError, match=r"lists 1,000,000,001 labels or more, above the "
                                         r"1,000,000 one run takes"):
        parse_classes("0-1000000000", None)
    assert len(parse_classes(f"0-{MAX_CLASSES - 1}", None)) == MAX_CLASSES


def test_layout_paths():
    assert outputs.image_relpath("prompt", 12, 3) == "00012/samples/0003.png"
    assert outputs.image_relpath("class", 7, 42) == "images/class_0007/0042.png"


def test_png_roundtrip_and_atomic_write_keeps_old_file_on_failure(tmp_path, monkeypatch):
    img = np.random.default_rng(0).integers(0, 256, (6, 5, 3), dtype=np.uint8)
    p = tmp_path / "a" / "x.png"
    outputs.save_png(p, img)
    assert np.array_equal(outputs.read_png(p), img)
    before = p.read_bytes()

    def boom(src, dst):
        raise OSError("disk gone")
    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        outputs.save_png(p, 255 - img)
    assert p.read_bytes() == before                     # the old image is intact
    assert sorted(x.name for x in p.parent.iterdir()) == ["x.png"]  # no temp file left


def test_check_writable(tmp_path):
    assert outputs.check_writable(tmp_path / "new" / "run").is_dir()
    f = tmp_path / "file"
    f.write_text("")
    with pytest.raises(InputError, match="not a folder"):
        outputs.check_writable(f)
    with pytest.raises(InputError, match="is not writable"):
        outputs.check_writable(f / "sub")               # a folder cannot be made under a file


def test_pack_npz_streams_images_in_class_order(tmp_path):
    rng = np.random.default_rng(1)
    imgs = {}
    for c in (3, 0):
        for i in range(2):
            imgs[(c, i)] = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
            outputs.save_png(tmp_path / "run" / outputs.image_relpath("class", c, i), imgs[(c, i)])
    path, shape = outputs.pack_npz(tmp_path / "run")
    assert path == tmp_path / "run.npz" and shape == (4, 4, 4, 3)
    arr = np.load(path)["arr_0"]
    assert arr.dtype == np.uint8
    expect = np.stack([imgs[k] for k in sorted(imgs)])
    assert np.array_equal(arr, expect)
    assert zipfile.ZipFile(path).namelist() == ["arr_0.npy"]
    with pytest.raises(InputError, match="no class-layout images"):
        outputs.pack_npz(tmp_path / "empty")


def test_grid():
    ims = [np.full((2, 3, 3), v, np.uint8) for v in (10, 20, 30)]
    g = outputs.image_grid(ims)
    assert g.shape == (4, 6, 3)
    assert g[0, 0, 0] == 10 and g[0, 3, 0] == 20 and g[2, 0, 0] == 30 and g[2, 3, 0] == 0


def _row(ci, si, batch, chosen=0):
    row = {f.name: None for f in ROW_SCHEMA}
    row.update(condition_index=ci, sample_index=si, batch=batch, chosen=chosen,
               path=outputs.image_relpath("class", ci, si))
    return row


def test_runlog_parts_merge_dedupe_and_finished_needs_the_png(tmp_path):
    log = RunLog(tmp_path)
    assert not log.open({"n": 5}, {})
    log.write_part([_row(0, 0, 0), _row(0, 1, 0)])
    log.write_part([_row(0, 1, 1, chosen=7)])          # image redone after a kill: last row wins
    outputs.save_png(tmp_path / outputs.image_relpath("class", 0, 1), np.zeros((2, 2, 3), np.uint8))
    assert log.finished() == {(0, 1)}                    # (0, 0) has a row but no PNG
    log.merge()
    assert not (tmp_path / "log").exists()
    t = log.rows()
    assert t.num_rows == 2 and t["chosen"].to_pylist() == [0, 7]
    assert t.schema.equals(ROW_SCHEMA)
    log.write_part([_row(1, 0, 2)])                      # parts after a merge are read too
    assert log.rows().num_rows == 3


def test_runlog_resume_refuses_other_settings(tmp_path):
    RunLog(tmp_path).open({"n": 5, "strategy": "var-scaling", "conditions": [[0, 0]]}, {})
    assert RunLog(tmp_path).open({"n": 5, "strategy": "var-scaling", "conditions": [[0, 0]]}, {})
    (tmp_path / "0000.png").write_bytes(b"")  # an image locks the folder to its settings
    with pytest.raises(ResumeMismatch) as err:
        RunLog(tmp_path).open({"n": 50, "strategy": "var-scaling", "conditions": [[1, 1]]}, {})
    msg = str(err.value)
    assert "n: this folder has 5, this run asks for 50" in msg and "conditions differ" in msg
    assert "choose a new --out" in msg


def test_run_json_records_versions(tmp_path):
    RunLog(tmp_path).open({"n": 1}, {"model": "m"})
    doc = json.loads((tmp_path / "run.json").read_text())
    assert doc["config"] == {"model": "m"} and "numpy" in doc["versions"]
    assert "pyarrow" in doc["versions"] and "python" in doc["versions"]


def test_candidate_table(tmp_path):
    log = RunLog(tmp_path)
    log.write_part([_row(0, 0, 0)], [{"condition_index": 0, "sample_index": 0, "candidate": j,
                                     "density": float(j), "shortlisted": j < 2, "chosen": j == 1}
                                    for j in range(3)])
    log.merge()
    t = log.candidates()
    assert t.num_rows == 3 and t["chosen"].to_pylist() == [False, True, False]
    assert isinstance(t, pa.Table) and (tmp_path / "candidates.parquet").is_file()
