"""The clean stage's outputs: the kept rows, the quarantine and group tables, the metrics."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from cmrops import io
from cmrops.cleaning.inputs import Labels
from cmrops.cleaning.rules import REPORTED, Outcome
from cmrops.cleaning.rules.duplicates import DuplicateResult
from cmrops.schema import CLEAN_GROUPS, INTERIM_SAMPLES, QUARANTINE

STAGE = "clean"


def write_kept(src: Path, dst: Path, file_rows: np.ndarray) -> None:
    """Copy rows ``file_rows`` (file positions, in sample_id order) of ``src`` to ``dst``, every
    INTERIM_SAMPLES column. Preprocess writes its table sorted, so the rows usually ascend and
    are streamed batch by batch; otherwise the table is read whole and reordered."""
    with io.parquet_writer(dst, INTERIM_SAMPLES) as writer:
        if len(file_rows) > 1 and (np.diff(file_rows) < 0).any():
            table = io.read_parquet(src, columns=INTERIM_SAMPLES.names)
            writer.write(table.take(pa.array(file_rows)))
            return
        start = 0
        for batch in io.iter_parquet(src, columns=INTERIM_SAMPLES.names):
            end = start + batch.num_rows
            lo, hi = np.searchsorted(file_rows, [start, end])
            if hi > lo:
                writer.write(batch.take(pa.array(file_rows[lo:hi] - start)))
            start = end


def compact_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def quarantine_table(
    c: dict[str, Any],
    rules: Mapping[str, Outcome],
    reason_of: Mapping[int, str],
    order: Sequence[str],
    overruled: Mapping[int, list[str]],
) -> pa.Table:
    """One QUARANTINE row per dropped sample: its reason, detail and evidence (the rule's
    threshold, what was measured, the later rules of ``order`` that flagged it too, and the
    rules whose quarantine of it a person ``overruled``)."""
    rows = []
    for i in sorted(reason_of):
        rule = rules[reason_of[i]]
        evidence = rule.evidence.get(i, {})
        if "threshold" not in evidence:
            evidence = {"threshold": rule.threshold, **evidence}
        also = [
            name
            for name in order
            if name != rule.name and rules[name].flagged is not None and rules[name].flagged[i]
        ]
        if also:
            evidence = {**evidence, "also_flagged_by": also}
        if i in overruled:  # a person overruled another rule's quarantine of this sample
            evidence = {**evidence, "overruled": overruled[i]}
        rows.append(
            {
                "sample_id": c["sample_id"][i],
                "stage": STAGE,
                "source": c["source"][i],
                "source_key": c["source_key"][i],
                "reason": rule.name,
                "detail": rule.detail.get(i, rule.name),
                "evidence": compact_json(evidence),
            }
        )
    return pa.Table.from_pylist(rows, schema=QUARANTINE)


def groups_table(c: dict[str, Any], dup: DuplicateResult, dropped: np.ndarray) -> pa.Table:
    ids = c["sample_id"]
    rows = []
    for i in range(len(ids)):
        in_img = dup.image_size[i] >= 2
        in_cap = dup.caption_size[i] >= 2
        if not (in_img or in_cap):
            continue
        rows.append(
            {
                "sample_id": ids[i],
                "image_group": ids[int(dup.image_group[i])] if in_img else None,
                "caption_group": ids[int(dup.caption_group[i])] if in_cap else None,
                "kept": not bool(dropped[i]),
            }
        )
    return pa.Table.from_pylist(rows, schema=CLEAN_GROUPS)


def metrics(
    n: int,
    kept: int,
    reason_of: Mapping[int, str],
    rules: Mapping[str, Outcome],
    dup: DuplicateResult,
    labels: Labels,
    order: Sequence[str],
) -> dict[str, Any]:
    """``quality.json``: counts by rule in ``order`` (the quarantine reasons, then the reported
    rules), kept / dropped, the rules that did not run and why, the duplicate groups and what
    the label stage handed on."""
    by_reason = Counter(reason_of.values())
    per_rule: dict[str, Any] = {}
    not_run: dict[str, str] = {}
    for name in (*order, *REPORTED):
        r = rules[name]
        entry: dict[str, Any] = {"status": r.status, "drops": r.drops, "threshold": r.threshold}
        if r.status == "run":
            entry["flagged"] = int(r.flagged.sum()) if r.flagged is not None else 0
            entry["dropped"] = by_reason.get(name, 0)
        else:
            entry["why"] = r.why
            if r.status == "not_run":
                not_run[name] = r.why or ""
        if r.report:
            entry["report"] = r.report
        per_rule[name] = entry
    return {
        "stage": STAGE,
        "inputs": n,
        "kept": kept,
        "quarantined": len(reason_of),
        "quarantined_by_reason": dict(sorted(by_reason.items())),
        "rule_order": list(order),
        "rules": per_rule,
        "not_run": not_run,
        "duplicates": dup.report,
        "labels": {
            "available": labels.available,
            "vocabulary_size": len(labels.vocabulary),
            "labels_outside_vocabulary": labels.outside_vocabulary,
            "label_rows_of_unknown_samples": labels.stale_rows,
            "methods_in_evidence": sorted(labels.methods_present),
        },
    }
