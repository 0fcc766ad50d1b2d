"""The clean stage's inputs: the interim samples, features and the label stage's decisions.

:func:`load_interim` reads the rule columns of ``<interim>/samples.parquet`` sorted by
``sample_id`` (checked against the INTERIM_SAMPLES contract), :func:`columns` turns them into the
arrays and lists the rules read (:class:`Columns`), :func:`load_features` the embeddings in that
row order, :func:`load_labels` what the label stage decided per row (:class:`Labels`), and
:func:`load_truth` / :func:`upstream` what the synthetic source planted and what preprocess
quarantined (for scoring the rules).
"""

from __future__ import annotations

import itertools
import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from cmrops import io
from cmrops.schema import INTERIM_SAMPLES

#: The interim columns the rules read (:func:`columns`); the others are only copied to the output.
RULE_COLUMNS = (
    "sample_id", "source", "source_key", "image_sha256", "labels", "width", "height", "phash",
    "dhash", "caption_simhash", "captions_norm", "token_counts", "feature_row", "media",
)  # fmt: skip


def load_interim(interim: Path) -> tuple[pa.Table, np.ndarray]:
    """The rule columns of the interim samples sorted by sample_id, and the file row of each."""
    path = interim / "samples.parquet"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: not found - run `cmrops preprocess` first (or pass --interim)"
        )
    names = pq.read_schema(path).names
    missing = [c for c in INTERIM_SAMPLES.names if c not in names]
    if missing:
        raise ValueError(
            f"{path}: missing column(s) {', '.join(missing)}; expected the INTERIM_SAMPLES "
            "contract of cmrops/schema.py (re-run `cmrops preprocess`)"
        )
    table = io.read_parquet(path, columns=list(RULE_COLUMNS))
    table = table.cast(pa.schema([INTERIM_SAMPLES.field(c) for c in RULE_COLUMNS]))
    if table["sample_id"].null_count:
        raise ValueError(f"{path}: sample_id holds nulls; re-run `cmrops preprocess`")
    order = pc.sort_indices(table, [("sample_id", "ascending")])
    table = table.take(order)
    ids = table["sample_id"].to_pylist()
    dup = sorted({a for a, b in itertools.pairwise(ids) if a == b})
    if dup:
        raise ValueError(f"{path}: sample_id repeated: {', '.join(dup[:5])}")
    return table, np.asarray(order.to_numpy(), dtype=np.int64)


class Columns(dict[str, Any]):
    """The rule columns: numpy arrays for numbers, Python lists for text, each list made from
    the Arrow table the first time a rule asks for it (``captions`` only with a language
    detector, ``provided`` / ``source`` / ``source_key`` for evidence and quarantine rows)."""

    _LISTS: Mapping[str, tuple[str, bool]] = {  # key -> (column, None as [])
        "source": ("source", False),
        "source_key": ("source_key", False),
        "sha256": ("image_sha256", False),
        "provided": ("labels", True),
        "captions": ("captions_norm", True),
        "tokens": ("token_counts", True),
    }

    def __init__(self, table: pa.Table, eager: Mapping[str, Any]) -> None:
        super().__init__(eager)
        self._table = table

    def __missing__(self, key: str) -> list[Any]:
        if key not in self._LISTS:
            raise KeyError(key)
        column, as_list = self._LISTS[key]
        values = self._table[column].to_pylist()
        self[key] = values = [list(x or []) for x in values] if as_list else values
        return values


def columns(table: pa.Table) -> dict[str, Any]:
    def u64(name: str) -> np.ndarray:
        return table[name].fill_null(0).to_numpy().astype(np.uint64)

    def i64(name: str, fill: int) -> np.ndarray:
        return table[name].fill_null(fill).to_numpy().astype(np.int64)

    return Columns(
        table,
        {
            "sample_id": table["sample_id"].to_pylist(),
            "width": i64("width", 0),
            "height": i64("height", 0),
            "phash": u64("phash"),
            "dhash": u64("dhash"),
            "simhash": u64("caption_simhash"),
            "feature_row": i64("feature_row", -1),
            "audio": pc.equal(table["media"].fill_null("image"), "audio")
            .to_numpy(zero_copy_only=False)
            .astype(bool),
        },
    )


def load_features(
    interim: Path, feature_row: np.ndarray
) -> tuple[dict[str, Any] | None, np.ndarray | None, np.ndarray | None]:
    """meta.json and the image / text embeddings re-ordered to the rows (NaN rows when a sample
    has no feature row)."""
    meta_path = interim / "features" / "meta.json"
    if not meta_path.is_file():
        return None, None, None
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if not meta.get("embeddings"):
        return meta, None, None
    arrays = []
    for kind in ("image", "text"):
        path = interim / "features" / f"{kind}.npy"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: named by features/meta.json but missing")
        arr = io.read_npy(path, mmap_mode="r")
        bad = (feature_row >= len(arr)).sum()
        if bad:
            raise ValueError(f"{path}: {bad} sample(s) point past its {len(arr)} rows")
        rows = np.full((len(feature_row), arr.shape[1]), np.nan, np.float32)
        ok = feature_row >= 0
        rows[ok] = arr[feature_row[ok]]
        arrays.append(rows)
    return meta, arrays[0], arrays[1]


@dataclass
class Labels:
    """What the label stage decided, per row."""

    available: bool
    why: str | None = None
    vocabulary: frozenset[str] = frozenset()
    # Per row; rows with the same labels share one frozenset (a handful of distinct sets).
    effective: list[frozenset[str]] = field(default_factory=list)  # labels.parquet, vocabulary
    by_method: dict[str, list[frozenset[str]]] = field(default_factory=dict)  # evidence, passed
    methods_present: frozenset[str] = frozenset()
    outside_vocabulary: dict[str, int] = field(default_factory=dict)
    stale_rows: int = 0  # label rows of samples not in the interim table
    induced: bool = False  # the label stage induced the vocabulary from the captions


def load_labels(labelled: Path | None, ids: list[str], *, need: bool, irrelevant: bool) -> Labels:
    """What the label stage decided, per row of ``ids``. ``need``: a label rule is enabled (a
    missing label output is then an error); ``irrelevant``: the irrelevant rule is (an empty
    vocabulary is then an error)."""
    if labelled is None:
        if need:
            raise ValueError(
                "the irrelevant / label_disagreement rules need the label stage's output: pass "
                "--labelled (run `cmrops label` first) or disable both rules"
            )
        return Labels(False, "no --labelled folder given")
    lpath, vpath = labelled / "labels.parquet", labelled / "vocabulary.json"
    for p in (lpath, vpath):
        if not p.is_file():
            if need:
                raise FileNotFoundError(
                    f"{p}: not found - run `cmrops label` first, or disable the irrelevant and "
                    "label_disagreement rules in the clean: section of params"
                )
            return Labels(False, f"{p} not found")
    vocab = vocabulary_of(vpath)
    if not vocab and irrelevant:
        raise ValueError(f"{vpath}: the vocabulary is empty - every sample would be irrelevant")
    ids_arr = pa.array(ids, pa.string())
    table = io.read_parquet(lpath)
    for c in ("sample_id", "label"):
        if c not in table.column_names:
            raise ValueError(f"{lpath}: missing column {c!r} (expected the LABELS contract)")
    outside: Counter[str] = Counter()
    rows = rows_of(table["sample_id"], ids_arr)
    stale = int((rows < 0).sum())
    labels = table["label"].to_pylist()
    known = np.flatnonzero(rows >= 0).tolist()
    for i in known:
        if labels[i] not in vocab:
            outside[str(labels[i])] += 1
    effective = row_sets(len(ids), rows, labels, [i for i in known if labels[i] in vocab])
    by_method: dict[str, list[frozenset[str]]] = {}
    present: set[str] = set()
    epath = labelled / "evidence.parquet"
    need = ["sample_id", "label", "method", "passed"]
    if epath.is_file() and set(need) <= set(pq.read_schema(epath).names):
        ev = io.read_parquet(epath, columns=need)
        ev_rows = rows_of(ev["sample_id"], ids_arr)
        passed = ev["passed"].fill_null(False).to_numpy(zero_copy_only=False)
        methods = ev["method"].to_pylist()
        ev_labels = ev["label"].to_pylist()
        present.update(methods)
        keep = np.flatnonzero(passed & (ev_rows >= 0)).tolist()
        per_method: dict[str, list[int]] = {}
        for j in keep:
            if ev_labels[j] in vocab:
                per_method.setdefault(methods[j], []).append(j)
        for method, picked in per_method.items():
            by_method[method] = row_sets(len(ids), ev_rows, ev_labels, picked)
    return Labels(
        True,
        vocabulary=frozenset(vocab),
        effective=effective,
        by_method=by_method,
        methods_present=frozenset(present),
        outside_vocabulary=dict(sorted(outside.items())),
        stale_rows=stale,
        induced=_induced(vpath),
    )


def _induced(vpath: Path) -> bool:
    try:
        v = json.loads(vpath.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    return bool(isinstance(v, dict) and v.get("induced"))


def row_sets(
    n: int, rows: np.ndarray, labels: list[Any], picked: list[int]
) -> list[frozenset[str]]:
    """For each of ``n`` rows, the set of ``labels[j]`` over the ``picked`` j with
    ``rows[j]`` = that row. Equal sets are one shared object: memory per row is a pointer."""
    per: dict[int, set[str]] = {}
    row_list = rows.tolist()
    for j in picked:
        per.setdefault(row_list[j], set()).add(labels[j])
    empty: frozenset[str] = frozenset()
    shared: dict[frozenset[str], frozenset[str]] = {empty: empty}
    out = [empty] * n
    for i, got in per.items():
        key = frozenset(got)
        out[i] = shared.setdefault(key, key)
    return out


def rows_of(sample_ids: pa.ChunkedArray, ids: pa.Array) -> np.ndarray:
    """The row of each of ``sample_ids`` in ``ids`` (int64, -1 where it is not there)."""
    rows = pc.index_in(sample_ids, value_set=ids).fill_null(-1)
    return np.asarray(rows.to_numpy(), dtype=np.int64)


def vocabulary_of(path: Path) -> set[str]:
    """Labels of ``vocabulary.json``: ``{"labels": [...]}`` (the label stage), a plain list, or
    a mapping label -> terms."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON: {e}") from e
    labels = data.get("labels", data) if isinstance(data, dict) else data
    if isinstance(labels, dict):
        labels = list(labels)
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise ValueError(f"{path}: expected {{'labels': [label, ...]}}")
    return set(labels)


def load_truth(raw: Path | None) -> list[dict[str, Any]]:
    if raw is None:
        return []
    path = raw / "synthetic_truth.parquet"
    if not path.is_file():
        return []
    return io.read_parquet(path).to_pylist()


def upstream(interim: Path) -> dict[str, str]:
    path = interim / "quarantine.parquet"
    if not path.is_file():
        return {}
    t = io.read_parquet(path)
    return {
        sid: reason
        for sid, reason in zip(t["sample_id"].to_pylist(), t["reason"].to_pylist(), strict=True)
        if sid is not None
    }
