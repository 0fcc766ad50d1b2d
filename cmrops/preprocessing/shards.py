"""Shards of the preprocess stage: the plan that cuts the raw rows into shards, and the records
that vouch for the work done on each (so a rerun redoes only what is missing or stale).
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cmrops import io

if TYPE_CHECKING:
    from cmrops.stages.preprocess import PreprocessParams


#: Per-shard encoder inputs a decode worker leaves for the embedder (deleted once embedded).
INPUT_FILES = ("pixels.npy", "waves.npy", "counts.npy")


class Shard:
    """One shard of the plan: its index and raw rows (RAW_SAMPLES, sorted by sample_id). The
    input hash (rows + decode parameters) is computed on first use, so a task that runs a few
    shards of a large plan hashes only those."""

    def __init__(self, index: int, table: pa.Table, fingerprint: str = "") -> None:
        self.index, self.table, self._fingerprint = index, table, fingerprint

    @property
    def stem(self) -> str:
        return f"shard-{self.index:05d}"

    @property
    def rows(self) -> list[dict[str, Any]]:
        """The shard's raw rows as dicts (materialised per call: one shard, not the table)."""
        return self.table.to_pylist()

    @property
    def num_rows(self) -> int:
        return self.table.num_rows

    @functools.cached_property
    def input_hash(self) -> str:
        h = hashlib.sha256(self._fingerprint.encode())
        for row in self.rows:
            h.update(json.dumps(row, sort_keys=True, ensure_ascii=False).encode("utf-8"))
            h.update(b"\n")
        return h.hexdigest()


#: The shard plan: which shard each sample belongs to (``sample_id``, ``shard``), with the
#: fingerprint of the planning parameters in the schema metadata.
PLAN_FILE = "plan.parquet"


_PLAN_SCHEMA = pa.schema([("sample_id", pa.string()), ("shard", pa.int32())])


def _plan_fingerprint(params: PreprocessParams) -> str:
    spec = {"shard_size": params.shard_size, **params.shard_fingerprint()}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def _read_plan(shard_dir: Path, fingerprint: str) -> pa.Table | None:
    """The recorded plan when it was made with these parameters; else None (plan afresh)."""
    path = shard_dir / PLAN_FILE
    try:
        table = io.read_parquet(path)
    except (FileNotFoundError, pa.ArrowInvalid, OSError):
        return None
    meta = table.schema.metadata or {}
    if meta.get(b"fingerprint") != fingerprint.encode() or table.schema.names != _PLAN_SCHEMA.names:
        return None
    return table.cast(_PLAN_SCHEMA)


def plan(table: pa.Table, params: PreprocessParams, shard_dir: Path) -> list[Shard]:
    """Cut the raw rows into shards, **incrementally**: a sample the recorded plan
    (``shards/plan.parquet``) already places stays in its shard, so a rerun with added samples
    redoes only the new shards (appended after the last one, ``shard_size`` new samples each)
    and shards that lost samples. Without a plan (or after a change of ``shard_size`` or of the
    decode parameters), sorted rows are cut in order. Each shard's rows stay sorted by id."""
    fingerprint = _plan_fingerprint(params)
    n = table.num_rows
    previous = _read_plan(shard_dir, fingerprint)
    if previous is None or previous.num_rows == 0:
        assignment = np.arange(n, dtype=np.int64) // params.shard_size
    else:
        where = pc.index_in(table["sample_id"], value_set=previous["sample_id"])
        known = where.is_valid().to_numpy(zero_copy_only=False)
        assignment = np.full(n, -1, np.int64)
        prev_shard = previous["shard"].to_numpy()
        assignment[known] = prev_shard[where.drop_null().to_numpy()]
        fresh = np.flatnonzero(~known)
        start = int(prev_shard.max()) + 1
        assignment[fresh] = start + np.arange(len(fresh)) // params.shard_size
    n_shards = int(assignment.max()) + 1 if n else 0
    order = np.argsort(assignment, kind="stable")  # rows by shard, sorted by id within each
    bounds = np.searchsorted(assignment[order], np.arange(n_shards + 1))
    hash_fp = json.dumps(params.shard_fingerprint(), sort_keys=True)
    shards = [
        Shard(i, table.take(pa.array(order[bounds[i] : bounds[i + 1]])), hash_fp)
        for i in range(n_shards)
    ]
    plan = pa.table(
        {"sample_id": table["sample_id"], "shard": pa.array(assignment, pa.int32())},
        schema=_PLAN_SCHEMA,
    ).replace_schema_metadata({"fingerprint": fingerprint})
    if previous is None or not plan.equals(previous):
        shard_dir.mkdir(parents=True, exist_ok=True)
        io.write_parquet(shard_dir / PLAN_FILE, plan)
    return shards


def remove_stale(shard_dir: Path, n_shards: int) -> None:
    """Delete files of shards beyond the plan (a smaller input or another shard_size)."""
    for path in shard_dir.iterdir():
        name = path.name
        if name.startswith(".") and name.endswith(".tmp"):
            path.unlink()  # a temporary file of a killed write
        elif name.startswith("shard-"):
            try:
                index = int(name[6:11])
            except ValueError:
                continue
            if index >= n_shards:
                path.unlink()


def record_path(shard_dir: Path, shard: Shard, kind: str) -> Path:
    return shard_dir / f"{shard.stem}.{kind}.json"


def is_recorded(shard_dir: Path, shard: Shard, kind: str, key: str) -> bool:
    """The record exists, names ``key`` and every file it lists is there with its SHA-256."""
    path = record_path(shard_dir, shard, kind)
    try:
        record = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return False
    if record.get("key") != key:
        return False
    for name, digest in record.get("files", {}).items():
        f = shard_dir / name
        if not f.is_file() or io.sha256_file(f) != digest:
            return False
    return True


def record(
    shard_dir: Path, shard: Shard, kind: str, key: str, files: Sequence[str], **facts: Any
) -> None:
    body = {"key": key, "files": {n: io.sha256_file(shard_dir / n) for n in files}, **facts}
    io.write_json(record_path(shard_dir, shard, kind), body)


def decoded_files(shard_dir: Path, shard: Shard) -> list[str]:
    """The files a decode worker wrote for ``shard`` that its record vouches for."""
    names = [f"{shard.stem}.samples.parquet", f"{shard.stem}.quarantine.parquet"]
    if (shard_dir / f"{shard.stem}.thumbs.parquet").is_file():
        names.append(f"{shard.stem}.thumbs.parquet")
    return names


def _npy_shape(path: Path) -> tuple[int, ...] | None:
    """The shape in an ``.npy`` header (not the data), or None when unreadable."""
    try:
        with path.open("rb") as fh:
            major, _ = np.lib.format.read_magic(fh)
            read_header = (
                np.lib.format.read_array_header_1_0
                if major == 1
                else np.lib.format.read_array_header_2_0
            )
            shape, _, _ = read_header(fh)
    except (FileNotFoundError, ValueError, OSError):
        return None
    return tuple(shape)


def inputs_ready(shard_dir: Path, shard: Shard, size: int) -> bool:
    """A worker left this shard's encoder inputs (pixels at the size asked for now, or waves)."""
    if _npy_shape(shard_dir / f"{shard.stem}.counts.npy") is None:
        return False
    waves = _npy_shape(shard_dir / f"{shard.stem}.waves.npy")
    if waves is not None:
        return len(waves) == 1
    shape = _npy_shape(shard_dir / f"{shard.stem}.pixels.npy")
    return shape is not None and len(shape) == 4 and shape[1:] == (size, size, 3)
