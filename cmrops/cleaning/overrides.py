"""Quarantine verdicts of the project's review answer log (:mod:`cmrops.answers`) in the clean
stage: a person confirmed or overruled the quarantine of a sample by one rule.

An **overrule** exempts that sample from that rule only: the rule still measures it (its flags
and the metrics count it), but cannot claim it, so the sample is kept unless a later rule claims
it (then it stays quarantined, under the new reason, with ``overruled`` in the evidence, and shows
up for review again). A **confirm** changes nothing but is recorded, so the dashboard shows the
decision as reviewed. The latest verdict per sample counts; verdicts about samples that are not
in clean's input are counted and skipped.
"""

from __future__ import annotations

import bisect
import logging
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from cmrops import answers
from cmrops.schema import CLEAN_OVERRIDES

log = logging.getLogger(__name__)

STAGE = "clean"


@dataclass
class Overrides:
    """The verdicts matched to rows of clean's input (sorted sample ids)."""

    log: str | None = None  # the log as named on the command line (None: no log)
    snapshot: answers.LogSnapshot | None = None
    rows: list[tuple[int, answers.Record]] = field(default_factory=list)  # (row, verdict)
    not_in_input: int = 0

    def exempt(self, n: int) -> dict[str, np.ndarray]:
        """rule -> mask of the rows whose quarantine by that rule was overruled."""
        out: dict[str, np.ndarray] = {}
        for i, rec in self.rows:
            if rec.data["verdict"] == "overrule":
                out.setdefault(str(rec.data["reason"]), np.zeros(n, bool))[i] = True
        return out

    def overruled_rules(self) -> dict[int, list[str]]:
        return {i: [str(r.data["reason"])] for i, r in self.rows if r.data["verdict"] == "overrule"}


def load(review_log: str | os.PathLike[str] | None, sample_ids: Sequence[str]) -> Overrides:
    """The latest clean verdict per sample of the log at ``review_log`` (when it is there),
    matched to the rows of ``sample_ids`` (sorted)."""
    if review_log is None or not Path(review_log).is_file():
        return Overrides()
    snap = answers.read(review_log)
    out = Overrides(os.fspath(review_log), snap)
    for sid, rec in sorted(answers.latest(snap.records, "quarantine", STAGE).items()):
        i = bisect.bisect_left(sample_ids, sid)
        if i < len(sample_ids) and sample_ids[i] == sid:
            out.rows.append((i, rec))
        else:
            out.not_in_input += 1
    if out.not_in_input:
        log.warning(
            "clean: %s: verdicts about %d sample(s) not in the input skipped",
            review_log,
            out.not_in_input,
        )
    return out


def table(
    ov: Overrides,
    sample_ids: Sequence[str],
    flagged: Mapping[str, np.ndarray | None],
    reason_of: Mapping[int, str],
) -> pa.Table:
    """``overrides.parquet`` (:data:`~cmrops.schema.CLEAN_OVERRIDES`)."""
    rows = []
    for i, rec in ov.rows:
        d = rec.data
        mask = flagged.get(str(d["reason"]))
        now = reason_of.get(i)
        rows.append(
            {
                "sample_id": sample_ids[i],
                "reason": d["reason"],
                "verdict": d["verdict"],
                "why": d.get("why") or "",
                "who": d["who"],
                "answered_at": d["at"],
                "answer_id": d["id"],
                "rule_flags": bool(mask is not None and mask[i]),
                "outcome": "kept" if now is None else "quarantined",
                "quarantined_by": now,
            }
        )
    return pa.Table.from_pylist(rows, schema=CLEAN_OVERRIDES)


def metrics(ov: Overrides, reason_of: Mapping[int, str]) -> dict[str, Any]:
    """Counts for quality.json: verdicts applied, overrules and what became of them."""
    overrules = [(i, r) for i, r in ov.rows if r.data["verdict"] == "overrule"]
    by_reason = Counter(str(r.data["reason"]) for _, r in overrules)
    return {
        "verdicts": len(ov.rows),
        "confirmed": len(ov.rows) - len(overrules),
        "overruled": len(overrules),
        "kept_by_overrule": sum(1 for i, _ in overrules if i not in reason_of),
        "overruled_by_reason": dict(sorted(by_reason.items())),
        "not_in_input": ov.not_in_input,
    }


def merged(ov: Overrides) -> dict[str, Any]:
    """``review_log.json``: how much of the log this run merged."""
    return answers.merged_record(ov.snapshot, ov.log, verdicts=len(ov.rows))
