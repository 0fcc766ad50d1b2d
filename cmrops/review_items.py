"""What the dashboard's Review page lists, one page at a time, for queues of 100,000 items.

Three kinds of item, each one sample:

* ``labels`` - the label stage's review queue (``data/labelled/review_queue.csv``): the samples
  whose automatic labels most need a look; ``doubt`` is the queue's priority;
* ``quarantine`` - the clean stage's quarantine decisions (``data/clean/quarantine.parquet``),
  to confirm or overrule; ``doubt`` (:func:`quarantine_doubt`) says how near the rule's
  threshold the measurement was;
* ``selection`` - any samples a person picked (a lasso on the embedding map); ``doubt`` is one
  minus the highest confidence of the sample's effective labels (1 without any).

**Least confident first.** :func:`build` writes the kind's items once per pipeline run into a
Parquet file under the project's cache (``.cmrops/cache/review/``, keyed by the inputs' paths,
sizes and mtimes): sorted by ``doubt`` descending (then sample id), numbered ``pos``, in row
groups of :data:`ROW_GROUP` rows, each item with what a reviewer needs - its captions, media
path, effective labels, every candidate label with its source, method and confidence, the
quarantine evidence and the other sample of a duplicate pair. :func:`light` is the small index
(pos, sample_id, reason, doubt) a page filters and orders in memory; :func:`page` then reads
only the row groups holding the page's items, never the whole table.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from cmrops import io

__all__ = [
    "KINDS",
    "ROW_GROUP",
    "ReviewItemsError",
    "build",
    "cache_dir",
    "light",
    "page",
    "quarantine_doubt",
]

KINDS = ("labels", "quarantine", "selection")
#: Items per Parquet row group of a built file: a page of up to this many items in the
#: default order touches one or two row groups.
ROW_GROUP = 256
#: Inputs per kind (relative to the project root): the cache key and what must be there.
INPUTS: dict[str, tuple[str, ...]] = {
    "labels": (
        "data/labelled/review_queue.csv",
        "data/labelled/evidence.parquet",
        "data/labelled/labels.parquet",
        "data/interim/samples.parquet",
    ),
    "quarantine": (
        "data/clean/quarantine.parquet",
        "data/labelled/evidence.parquet",
        "data/labelled/labels.parquet",
        "data/interim/samples.parquet",
    ),
    "selection": (
        "data/labelled/evidence.parquet",
        "data/labelled/labels.parquet",
        "data/interim/samples.parquet",
    ),
}
REQUIRED = {
    "labels": INPUTS["labels"][0],
    "quarantine": INPUTS["quarantine"][0],
    "selection": "data/interim/samples.parquet",
}

CANDIDATE = pa.struct(
    [
        ("label", pa.string()),
        ("source", pa.string()),
        ("method", pa.string()),
        ("confidence", pa.float64()),
        ("passed", pa.bool_()),
        ("selected", pa.bool_()),
    ]
)
ITEMS = pa.schema(
    [
        ("pos", pa.int64()),  # 0-based, in the default order (doubt descending)
        ("sample_id", pa.string()),
        ("reason", pa.string()),  # queue reason / quarantine rule / "selected"
        ("doubt", pa.float64()),  # 1 = least confident
        ("detail", pa.string()),
        ("rank", pa.int64()),  # the label queue's rank (null otherwise)
        ("source", pa.string()),
        ("source_key", pa.string()),
        ("image_path", pa.string()),  # under data/raw (an image, video or audio file)
        ("captions", pa.list_(pa.string())),
        ("labels", pa.list_(pa.string())),  # the effective labels now
        ("auto_labels", pa.list_(pa.string())),  # what the queue suggested
        ("candidates", pa.list_(CANDIDATE)),
        ("evidence", pa.string()),  # quarantine evidence (JSON)
        ("other_id", pa.string()),  # the kept duplicate / the sample it matched
        ("other_path", pa.string()),
    ]
)


class ReviewItemsError(ValueError):
    """An input of the review list exists but cannot be read; the message says which."""


# --------------------------------------------------------------------------- doubt


def quarantine_doubt(reason: str, evidence: Mapping[str, Any]) -> float:
    """How near the rule's threshold a quarantine decision was: 1 at the threshold, towards 0
    far from it. Mismatch: the cosine's distance below the threshold (0.2 away = 0);
    near-duplicates: pHash distance over the radius + 1; label disagreement: the overlap over
    ``max_overlap``; min_side / max_aspect: the measured size or aspect over the limit.
    Exact duplicates are certain (0); a rule without a measure (caption length, language,
    irrelevant) is 0.5."""
    thr = evidence.get("threshold") if isinstance(evidence.get("threshold"), Mapping) else {}
    assert isinstance(thr, Mapping)

    def num(x: Any) -> float | None:
        return float(x) if isinstance(x, int | float) and math.isfinite(x) else None

    value: float | None = None
    if reason == "mismatch":
        sim, cut = num(evidence.get("similarity")), num(thr.get("min_similarity"))
        if sim is not None and cut is not None:
            value = 1.0 - (cut - sim) / 0.2
    elif reason.startswith("near_duplicate"):
        d, radius = num(evidence.get("phash_distance")), num(thr.get("radius"))
        if d is not None and radius is not None:
            value = d / (radius + 1.0)
    elif reason == "exact_duplicate":
        value = 0.0
    elif reason == "label_disagreement":
        overlap, cap = num(evidence.get("overlap")), num(thr.get("max_overlap"))
        if overlap is not None and cap:
            value = overlap / cap
    elif reason == "min_side":
        w, h, px = (
            num(evidence.get("width")),
            num(evidence.get("height")),
            num(thr.get("min_side")),
        )
        if w is not None and h is not None and px:
            value = min(w, h) / px
    elif reason == "max_aspect":
        aspect, cap = num(evidence.get("aspect")), num(thr.get("max_aspect") or thr.get("ratio"))
        if aspect and cap is not None:
            value = cap / aspect
    return 0.5 if value is None else round(min(1.0, max(0.0, value)), 6)


# --------------------------------------------------------------------------- building


def cache_dir(project: Path) -> Path:
    """``<project>/.cmrops/cache/review``, or a folder under the temp dir when the project is
    read-only (:func:`cmrops.io.project_cache`)."""
    return io.project_cache(project, "review")


def _key(project: Path, kind: str, selection: Sequence[str] | None) -> str:
    h = hashlib.sha256(f"v1 {kind}".encode())
    for rel in INPUTS[kind]:
        try:
            st = (Path(project) / rel).stat()
            h.update(f"{rel} {st.st_size} {st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{rel} absent\n".encode())
    if selection is not None:
        h.update("\n".join(selection).encode())
    return h.hexdigest()[:16]


def build(project: Path, kind: str, selection: Sequence[str] | None = None) -> Path | None:
    """The items file of ``kind`` (``selection``: the sample ids picked), built when the
    inputs changed since; ``None`` when the kind's main input is not there yet."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    project = Path(project)
    if not (project / REQUIRED[kind]).is_file():
        return None
    ids = None if selection is None else sorted(set(selection))
    out = cache_dir(project) / f"{kind}-{_key(project, kind, ids)}.parquet"
    if out.is_file():
        return out
    if kind == "labels":
        rows = _queue_rows(project)
    elif kind == "quarantine":
        rows = _quarantine_rows(project)
    else:
        rows = [{"sample_id": s, "reason": "selected", "doubt": None} for s in ids or []]
    table = _enrich(project, rows)
    with io.atomic_output(out, "wb") as fh:
        pq.write_table(table, fh, row_group_size=ROW_GROUP, compression="zstd")
    for old in out.parent.glob(f"{kind}-*.parquet"):  # earlier runs' files
        if old != out and (kind != "selection" or len(list(out.parent.glob("selection-*"))) > 8):
            old.unlink(missing_ok=True)
    return out


def _read(project: Path, rel: str, **kw: Any) -> pa.Table | None:
    p = Path(project) / rel
    if not p.is_file():
        return None
    try:
        return pq.read_table(p, **kw)
    except Exception as e:  # pyarrow raises several types for damaged files
        raise ReviewItemsError(f"{p} cannot be read ({type(e).__name__}: {e})") from e


def _queue_rows(project: Path) -> list[dict[str, Any]]:
    from pyarrow import csv

    p = Path(project) / INPUTS["labels"][0]
    names = ["rank", "sample_id", "auto_labels", "reason", "priority", "detail"]
    try:
        t = csv.read_csv(
            p,
            convert_options=csv.ConvertOptions(
                include_columns=names,
                column_types={
                    "rank": pa.int64(),
                    "priority": pa.float64(),
                    **{n: pa.string() for n in names[1:4] + names[5:]},
                },
                strings_can_be_null=False,
            ),
        )
    except (pa.ArrowInvalid, KeyError, OSError) as e:
        raise ReviewItemsError(f"{p} cannot be read ({e}); rerun `cmrops label`") from e
    rows = []
    for r in t.to_pylist():
        auto = [s.strip() for s in (r["auto_labels"] or "").split("|") if s.strip()]
        rows.append(
            {
                "sample_id": r["sample_id"],
                "reason": r["reason"],
                "rank": r["rank"],
                "doubt": r["priority"],
                "detail": r["detail"],
                "auto_labels": auto,
            }
        )
    return rows


def _quarantine_rows(project: Path) -> list[dict[str, Any]]:
    t = _read(
        project, INPUTS["quarantine"][0], columns=["sample_id", "reason", "detail", "evidence"]
    )
    assert t is not None
    rows = []
    for r in t.to_pylist():
        try:
            ev = json.loads(r["evidence"] or "{}")
        except ValueError:
            ev = {}
        ev = ev if isinstance(ev, dict) else {}
        other = ev.get("kept") or ev.get("duplicate_of") or ev.get("matched")
        rows.append(
            {
                "sample_id": r["sample_id"],
                "reason": r["reason"],
                "detail": r["detail"],
                "evidence": r["evidence"],
                "doubt": quarantine_doubt(r["reason"] or "", ev),
                "other_id": other if isinstance(other, str) else None,
            }
        )
    return rows


def _filtered(project: Path, rel: str, columns: list[str], ids: pa.Array) -> pa.Table | None:
    return _read(project, rel, columns=columns, filters=pc.field("sample_id").isin(ids))


def _enrich(project: Path, rows: list[dict[str, Any]]) -> pa.Table:
    """Rows (sample_id, reason, doubt, ...) with captions, paths, labels and candidates, in the
    default order, as an :data:`ITEMS` table."""
    for r in rows:
        if r.get("doubt") is None:
            r["doubt"] = None  # filled from the labels below
    wanted = {r["sample_id"] for r in rows} | {r["other_id"] for r in rows if r.get("other_id")}
    ids = pa.array(sorted(wanted), pa.string())
    samples = _filtered(
        project,
        "data/interim/samples.parquet",
        ["sample_id", "source", "source_key", "image_path", "captions"],
        ids,
    )
    info = {r["sample_id"]: r for r in samples.to_pylist()} if samples is not None else {}
    labels: dict[str, list[tuple[str, float]]] = {}
    t = _filtered(
        project, "data/labelled/labels.parquet", ["sample_id", "label", "confidence"], ids
    )
    for r in t.to_pylist() if t is not None else []:
        labels.setdefault(r["sample_id"], []).append((r["label"], r["confidence"]))
    cands: dict[str, list[dict[str, Any]]] = {}
    names = ["sample_id", "label", "source", "method", "confidence", "passed", "selected"]
    t = _filtered(project, "data/labelled/evidence.parquet", names, ids)
    for r in t.to_pylist() if t is not None else []:
        cands.setdefault(r.pop("sample_id"), []).append(r)
    out = []
    for r in rows:
        sid = r["sample_id"]
        s = info.get(sid, {})
        mine = labels.get(sid, [])
        doubt = r["doubt"]
        if doubt is None:  # a selection: least confident labels first
            doubt = 1.0 - max((c for _, c in mine), default=0.0)
        other = r.get("other_id")
        out.append(
            {
                "sample_id": sid,
                "reason": r.get("reason"),
                "doubt": float(doubt),
                "detail": r.get("detail"),
                "rank": r.get("rank"),
                "source": s.get("source"),
                "source_key": s.get("source_key"),
                "image_path": s.get("image_path"),
                "captions": list(s.get("captions") or []),
                "labels": sorted(x for x, _ in mine),
                "auto_labels": r.get("auto_labels", sorted(x for x, _ in mine)),
                "candidates": sorted(
                    cands.get(sid, []), key=lambda c: (-c["confidence"], c["label"])
                ),
                "evidence": r.get("evidence"),
                "other_id": other,
                "other_path": info.get(other, {}).get("image_path") if other else None,
            }
        )
    out.sort(key=lambda r: (-r["doubt"], r["sample_id"]))
    for i, r in enumerate(out):
        r["pos"] = i
    return pa.Table.from_pylist(out, schema=ITEMS)


# --------------------------------------------------------------------------- reading


def light(path: Path) -> pa.Table:
    """The small index of a built file: pos, sample_id, reason, doubt (default order)."""
    return pq.read_table(path, columns=["pos", "sample_id", "reason", "doubt"])


def page(path: Path, positions: Iterable[int]) -> list[dict[str, Any]]:
    """The items at ``positions`` (in the order given), reading only their row groups."""
    wanted = list(positions)
    if not wanted:
        return []
    pf = pq.ParquetFile(path)
    groups = sorted({p // ROW_GROUP for p in wanted})
    t = pf.read_row_groups(groups)
    by_pos = {r["pos"]: r for r in t.filter(pc.field("pos").isin(wanted)).to_pylist()}
    return [by_pos[p] for p in wanted if p in by_pos]
