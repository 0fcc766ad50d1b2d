"""From a count on the dashboard to the samples behind it, and a selection as a file.

:func:`samples` answers "which samples are these N?" for every count the dashboard shows:
quarantined by a stage and reason, kept or quarantined by a stage, carrying a label, labelled by
a source and method, decided by a source, assigned to a set. Each row is one sample: sample_id,
source, source_key, the first caption, its effective labels, its set, where it left the
pipeline (stage and reason) and its media file (under data/raw). :func:`to_bytes` writes any
table as CSV or Parquet for a download.
"""

from __future__ import annotations

import io as _io
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cmrops import report

__all__ = ["WHAT", "sample_table", "samples", "to_bytes"]

#: What a count can be drilled into, and the value each takes.
WHAT = {
    "quarantine": "(stage, reason)",
    "stage": "(stage, 'kept' | 'quarantined')",
    "label": "a label",
    "label_source": "(source, method)",
    "decided_by": "reviewed | manual | auto | none",
    "split": "a set name",
}
COLUMNS = [
    "sample_id",
    "source",
    "source_key",
    "caption",
    "labels",
    "split",
    "left_at",
    "reason",
    "image_path",
]


def _read(project: Path, key: str, columns: list[str]) -> pd.DataFrame | None:
    return report._parquet(project, key, columns)  # the dashboard's one reader (errors named)


def _parquet(project: Path, rel: str, columns: list[str]) -> pd.DataFrame | None:
    p = Path(project) / rel
    if not p.is_file():
        return None
    try:
        return pd.read_parquet(p, columns=columns)
    except Exception as e:  # pyarrow raises several types for damaged files
        raise report.ReportError(f"{p} cannot be read ({type(e).__name__}: {e})") from e


def sample_table(project: Path) -> pd.DataFrame:
    """Every collected sample (:data:`COLUMNS`); ``left_at`` / ``reason``: the stage that
    quarantined it and why (empty when it is still in)."""
    raw = _read(
        project, "raw_samples", ["sample_id", "source", "source_key", "captions", "image_path"]
    )
    if raw is None:
        return pd.DataFrame(columns=COLUMNS)
    out = raw.assign(
        caption=raw["captions"].map(lambda c: c[0] if c is not None and len(c) else "")
    )
    labels = _read(project, "labels", ["sample_id", "label"])
    if labels is not None and len(labels):
        joined = labels.sort_values("label").groupby("sample_id")["label"].agg(", ".join)
        out["labels"] = out["sample_id"].map(joined).fillna("")
    else:
        out["labels"] = ""
    split = _parquet(project, "data/split/assignments.parquet", ["sample_id", "split"])
    out["split"] = (
        out["sample_id"]
        .map(split.set_index("sample_id")["split"] if split is not None else pd.Series(dtype=str))
        .fillna("")
    )
    q = report.quarantine(project)
    q = q[q["sample_id"].notna()].drop_duplicates("sample_id", keep="last")
    out["left_at"] = out["sample_id"].map(q.set_index("sample_id")["stage"]).fillna("")
    out["reason"] = out["sample_id"].map(q.set_index("sample_id")["reason"]).fillna("")
    return out[COLUMNS].reset_index(drop=True)


def samples(project: Path, what: str, value: Any) -> pd.DataFrame:
    """The samples behind one count (``what`` and its ``value``: see :data:`WHAT`)."""
    if what not in WHAT:
        raise ValueError(f"what must be one of {', '.join(WHAT)}, got {what!r}")
    if what == "quarantine":  # a collect row may have no sample id (an unreadable input)
        stage, reason = value
        q = report.quarantine(project)
        q = q[(q["stage"] == stage) & (q["reason"] == reason)]
        return pd.DataFrame(
            {
                "sample_id": q["sample_id"],
                "source": q["source"],
                "source_key": q["source_key"],
                "caption": q["captions"].map(lambda c: c[0] if len(c) else ""),
                "stage": q["stage"],
                "reason": q["reason"],
                "detail": q["detail"],
                "other_id": q["other_id"],
            }
        ).reset_index(drop=True)
    table = sample_table(project)
    if what == "stage":
        stage, outcome = value
        order = ["collect", "preprocess", "label", "clean", "split"]
        if stage not in order:
            raise ValueError(f"unknown stage {stage!r}")
        before = set(order[: order.index(stage)])
        reached = ~table["left_at"].isin(before)
        left_here = table["left_at"] == stage
        keep = reached & (left_here if outcome == "quarantined" else ~left_here)
        if stage == "split":
            keep = table["split"] != ""
        return table[keep].reset_index(drop=True)
    if what == "label":
        labels = _read(project, "labels", ["sample_id", "label"])
        ids = set() if labels is None else set(labels.loc[labels["label"] == value, "sample_id"])
    elif what == "label_source":
        source, method = value
        labels = _read(project, "labels", ["sample_id", "source", "method"])
        ids = (
            set()
            if labels is None
            else set(
                labels.loc[(labels["source"] == source) & (labels["method"] == method), "sample_id"]
            )
        )
    elif what == "decided_by":
        decided = _parquet(
            project, "data/labelled/sample_labels.parquet", ["sample_id", "decided_by"]
        )
        ids = (
            set()
            if decided is None
            else set(decided.loc[decided["decided_by"] == value, "sample_id"])
        )
    else:
        ids = set(table.loc[table["split"] == value, "sample_id"])
    return table[table["sample_id"].isin(ids)].reset_index(drop=True)


def to_bytes(df: pd.DataFrame, fmt: str) -> bytes:
    """``df`` as a CSV (UTF-8, header) or Parquet file's bytes; list cells become text in CSV."""
    if fmt == "parquet":
        buf = _io.BytesIO()
        df.to_parquet(buf, index=False)
        return buf.getvalue()
    if fmt != "csv":
        raise ValueError(f"fmt must be csv or parquet, got {fmt!r}")
    flat = df.copy()

    def text(v: Any) -> Any:
        return " | ".join(map(str, v)) if isinstance(v, list | tuple | np.ndarray) else v

    for c in flat.columns:
        if flat[c].map(lambda v: isinstance(v, list | tuple | np.ndarray)).any():
            flat[c] = flat[c].map(text)
    return flat.to_csv(index=False).encode("utf-8")
