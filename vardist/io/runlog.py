"""The run's record: run.json (full configuration, package versions) and an Arrow/Parquet log
with one row per image (and optionally one per candidate).

Rows are written as one part file per finished batch (OUT/log/part-*.parquet, atomically, after
the batch's PNGs), so a killed run loses at most the batch in flight. `merge()` folds the parts
into OUT/runlog.parquet (and OUT/candidates.parquet). An image counts as finished when its PNG
and its log row both exist.

Every row also says which run made it and where: run_id (one per output folder's run, kept in
run.json, the same across resumes), run_seed, a UTC timestamp, the hostname and, for GenEval
prompt files, the prompt line's `tag`, so logs of several runs can be concatenated and grouped.
"""

from __future__ import annotations

import hashlib
import io
import json
import platform
import uuid
from importlib import metadata
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from vardist.io.conditions import InputError
from vardist.io.outputs import atomic_write_bytes

RUN_JSON = "run.json"
LOG_FILE = "runlog.parquet"
CANDIDATES_FILE = "candidates.parquet"
PARTS_DIR = "log"

# One row per image. Settings are repeated on every row so a log (or a concatenation of logs
# from several runs) can be grouped and filtered without run.json.
ROW_SCHEMA = pa.schema([
    ("condition_index", pa.int64()), ("condition", pa.string()), ("sample_index", pa.int64()),
    ("seed", pa.int64()), ("path", pa.string()), ("model", pa.string()),
    ("scale", pa.int64()), ("n", pa.int64()), ("strategy", pa.string()),
    ("alpha", pa.float64()), ("rep", pa.int64()), ("conflict_thresh", pa.float64()),
    ("k", pa.int64()), ("cfg", pa.float64()), ("top_k", pa.int64()), ("top_p", pa.float64()),
    ("tau", pa.float64()), ("bandwidth", pa.string()), ("kde_method", pa.string()),
    ("metric", pa.string()),
    ("batch_size", pa.int64()), ("batch", pa.int64()),
    ("chosen", pa.int64()), ("branch", pa.string()), ("shortlist_size", pa.int64()),
    ("density_max", pa.float64()), ("density_mean", pa.float64()),
    ("density_chosen", pa.float64()),
    # seconds spent on this image: its share of the batch's prefix+pool and continuation,
    # its own selection, and its PNG write
    ("t_pool", pa.float64()), ("t_select", pa.float64()), ("t_finish", pa.float64()),
    ("t_write", pa.float64()),
    # verifier-guided search (engine.rerank): the verifier, the rerank K (0: none), the kept
    # image's reward, the candidates finished and scored with their rewards (null without a
    # verifier), and the continuations spent on this image (1 for plain search)
    ("verifier", pa.string()), ("rerank", pa.int64()), ("reward", pa.float64()),
    ("reranked", pa.list_(pa.int64())), ("rerank_rewards", pa.list_(pa.float64())),
    ("continuations", pa.int64()),
    # search across scales (engine.multiscale; null for one-scale search): the schedule and the
    # kept candidate at each searched scale; then every search's compute for the image (null
    # only in logs written before it was logged): token positions through the transformer,
    # intermediate images decoded, images the verifier scored (engine.pipeline.
    # one_scale_compute: the same counting for one-scale and plain runs)
    ("search", pa.string()), ("lineage", pa.list_(pa.int64())), ("forward_tokens", pa.int64()),
    ("previews", pa.int64()), ("verifier_calls", pa.int64()),
    # which run wrote the row, when and where; GenEval's category of the prompt (its "tag")
    ("run_id", pa.string()), ("run_seed", pa.int64()),
    ("timestamp", pa.timestamp("us", tz="UTC")), ("hostname", pa.string()), ("tag", pa.string()),
])
CANDIDATE_SCHEMA = pa.schema([
    ("condition_index", pa.int64()), ("sample_index", pa.int64()), ("candidate", pa.int64()),
    ("density", pa.float64()), ("shortlisted", pa.bool_()), ("chosen", pa.bool_()),
])


class ResumeMismatch(InputError):
    """OUT already holds a run with different settings."""


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("vardist", "torch", "numpy", "pyarrow", "faiss-cpu", "faiss-gpu-cu12", "ray",
                "pillow", "typer", "safetensors"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def _table_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


class RunLog:
    """run.json + Parquet log of one output folder."""

    def __init__(self, out: str | Path) -> None:
        self.out = Path(out)
        self.parts = self.out / PARTS_DIR
        self.run_id: str | None = None  # set by open()

    # --- run.json -------------------------------------------------------------------------
    def open(self, fingerprint: dict[str, Any], config: dict[str, Any]) -> bool:
        """Start or continue a run. Writes run.json for a new run; for an existing one, raises
        ResumeMismatch naming every setting that differs. Returns True when resuming. Sets
        `run_id` (new for a new run; from run.json for a resumed one)."""
        path = self.out / RUN_JSON
        if path.is_file():
            text = path.read_text()
            old = json.loads(text)
            diff = _differences(old.get("fingerprint", {}), _jsonable(fingerprint))
            # A run that failed before its first image (bad weights, a device that would not
            # start) locks the folder to nothing: a corrected run starts afresh there.
            if diff and not self._holds_images():
                path.unlink()
                return self.open(fingerprint, config)
            if diff:
                raise ResumeMismatch(
                    f"{self.out} already holds a run with other settings ({'; '.join(diff)}). "
                    f"Rerun with the same settings to resume it, or choose a new --out.",
                    param="out")
            # runs written before run ids existed: a stable id from their run.json
            self.run_id = old.get("run_id") or hashlib.sha256(text.encode()).hexdigest()[:32]
            return True
        self.run_id = uuid.uuid4().hex
        doc = {"run_id": self.run_id, "fingerprint": fingerprint, "config": config,
               "versions": package_versions()}
        atomic_write_bytes(path, (json.dumps(_jsonable(doc), indent=2) + "\n").encode())
        return False

    def _holds_images(self) -> bool:
        """Whether an earlier run left any image or log row here (any PNG, any log file)."""
        if self._files(LOG_FILE, "part-"):
            return True
        return next(self.out.rglob("*.png"), None) is not None

    # --- rows -----------------------------------------------------------------------------
    def write_part(self, rows: list[dict[str, Any]], candidates: list[dict[str, Any]] | None = None
                   ) -> int:
        """Append the rows of one finished batch (and its per-candidate rows); returns the
        bytes written."""
        if not rows:
            return 0
        tag = f"{rows[0]['batch']:06d}-{uuid.uuid4().hex[:8]}"
        files = [(f"part-{tag}.parquet", pa.Table.from_pylist(rows, ROW_SCHEMA))]
        if candidates:  # candidates first: a part file means the batch is logged whole
            files.insert(0, (f"cand-{tag}.parquet",
                             pa.Table.from_pylist(candidates, CANDIDATE_SCHEMA)))
        written = 0
        for name, table in files:
            data = _table_bytes(table)
            atomic_write_bytes(self.parts / name, data)
            written += len(data)
        return written

    def rows(self) -> pa.Table:
        """Every logged image row (merged log + parts), one per (condition, sample), sorted."""
        return _read_dedup(self._files(LOG_FILE, "part-"), ROW_SCHEMA,
                           ["condition_index", "sample_index"])

    def candidates(self) -> pa.Table:
        return _read_dedup(self._files(CANDIDATES_FILE, "cand-"), CANDIDATE_SCHEMA,
                           ["condition_index", "sample_index", "candidate"])

    def finished(self) -> set[tuple[int, int]]:
        """(condition_index, sample_index) of images with a log row and their PNG on disk."""
        t = self.rows()
        done = set()
        for ci, si, p in zip(t["condition_index"].to_pylist(), t["sample_index"].to_pylist(),
                             t["path"].to_pylist()):
            if (self.out / p).is_file():
                done.add((ci, si))
        return done

    def merge(self) -> None:
        """Fold the part files into runlog.parquet / candidates.parquet, then drop the parts."""
        for name, prefix, read in ((LOG_FILE, "part-", self.rows),
                                   (CANDIDATES_FILE, "cand-", self.candidates)):
            parts = sorted(self.parts.glob(f"{prefix}*.parquet")) if self.parts.is_dir() else []
            if not parts:
                continue
            atomic_write_bytes(self.out / name, _table_bytes(read()))
            for p in parts:
                p.unlink()
        if self.parts.is_dir() and not any(self.parts.iterdir()):
            self.parts.rmdir()

    def _files(self, merged: str, prefix: str) -> list[Path]:
        files = [self.out / merged] if (self.out / merged).is_file() else []
        if self.parts.is_dir():
            files += sorted(self.parts.glob(f"{prefix}*.parquet"))
        return files


def _read_dedup(files: list[Path], schema: pa.Schema, keys: list[str]) -> pa.Table:
    if not files:
        return schema.empty_table()
    table = pa.concat_tables([pq.read_table(f, schema=schema) for f in files])
    # The same image can be logged twice (a batch redone after a kill): keep the last row.
    table = table.append_column("_order", pa.array(range(len(table)), pa.int64()))
    last = table.group_by(keys).aggregate([("_order", "max")])["_order_max"]
    table = table.take(pa.array(sorted(last.to_pylist()), pa.int64())).drop_columns("_order")
    return table.sort_by([(k, "ascending") for k in keys])


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    diff = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, "<absent>"), new.get(key, "<absent>")
        if a != b:
            if isinstance(a, list) or isinstance(b, list):
                diff.append(f"{key} differ")
            else:
                diff.append(f"{key}: this folder has {a!r}, this run asks for {b!r}")
    return diff


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))
