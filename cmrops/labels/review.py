"""The review queue: the samples whose automatic labels most need a human look.

Only samples no human has labelled yet (no manual label, no review answer) are eligible. Each gets
a priority in [0, 1] from the strongest of three reasons (:func:`priority`):

* ``disagree`` - two automatic methods that both apply to the sample pass different label sets
  ``A`` (the earlier method of ``auto_methods``) and ``B``: the mean of ``1 - Jaccard(A, B)`` and
  the share of ``B`` that ``A`` lacks (0 when ``B`` is empty), the largest over method pairs. The
  second term ranks a *contradiction* (keywords name a label the source does not give) above an
  *omission* (captions rarely name every object a source annotates). A caption swapped onto
  another image scores 1.0 (its keywords no longer match the provided labels);
* ``no_label`` - no label at all: 1.0, because the clean stage would drop it as irrelevant;
* ``uncertain`` - a candidate of a method that decided the sample (keyword or zero-shot) sits
  near its threshold: ``1 - |confidence - threshold| / max(threshold, 1 - threshold)``.

The queue is the ``size`` eligible samples of highest priority (ties: disagree, no_label,
uncertain, then sample_id), written as ``review_queue.csv`` (with an empty ``answer`` column to
fill in), as ``review_tasks.json`` (a Label Studio import: one task per sample, the automatic
labels as a prediction) and ``review_config.xml`` (the Label Studio labelling config, a
multiple-choice list of the vocabulary). Either answered file - the CSV with its ``answer``
column filled in, or Label Studio's JSON export - goes to ``label.review.answers`` in params.
"""

from __future__ import annotations

import csv
import io as _io
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

from cmrops.io import atomic_output
from cmrops.labels.resolve import jaccard
from cmrops.labels.vocab import LABEL_SEPARATOR, NO_LABEL

REASONS = ("disagree", "no_label", "uncertain")
QUEUE_COLUMNS = (
    "rank", "sample_id", "source", "source_key", "image_path", "captions", "auto_labels",
    "candidates", "reason", "priority", "detail", "answer",
)  # fmt: skip
#: ``from_name`` / ``to_name`` of the Label Studio config and predictions.
LS_FROM, LS_TO = "label", "image"


@dataclass(frozen=True)
class QueueItem:
    sample_id: str
    priority: float
    reason: str  # one of REASONS
    detail: str  # one human sentence


def priority(
    sample_id: str,
    kept: Mapping[str, frozenset[str]],
    near_threshold: Iterable[tuple[str, str, float, float]],
    n_labels: int,
) -> QueueItem | None:
    """The queue entry of one eligible sample, or ``None`` when nothing is in doubt.

    ``kept``: per automatic method that applies to the sample, the labels it passed (in
    precedence order); ``near_threshold``: (label, method, confidence, threshold) of the
    candidates of the methods that decided it; ``n_labels``: its effective labels.
    """
    found: list[tuple[float, int, str]] = []
    for a, b in combinations(list(kept), 2):
        only_b = len(kept[b] - kept[a]) / len(kept[b]) if kept[b] else 0.0
        d = (1.0 - jaccard(kept[a], kept[b]) + only_b) / 2
        if d > 0:
            text = f"{a} {_set(kept[a])} vs {b} {_set(kept[b])}"
            found.append((d, REASONS.index("disagree"), text))
    if n_labels == 0:
        found.append((1.0, REASONS.index("no_label"), "no label from any method"))
    for label, method, conf, thr in near_threshold:
        span = max(thr, 1.0 - thr) or 1.0
        u = max(0.0, 1.0 - abs(conf - thr) / span)
        if u > 0:
            text = f"{method} {label} at {conf:.2f} (threshold {thr:.2f})"
            found.append((u, REASONS.index("uncertain"), text))
    if not found:
        return None
    score, reason, text = min(found, key=lambda f: (-f[0], f[1], f[2]))
    return QueueItem(sample_id, round(score, 6), REASONS[reason], text)


def select(items: Iterable[QueueItem], size: int) -> list[QueueItem]:
    """The ``size`` items of highest priority, in queue order."""
    order = sorted(items, key=lambda q: (-q.priority, REASONS.index(q.reason), q.sample_id))
    return order[:size]


def _set(labels: Iterable[str]) -> str:
    return "{" + ", ".join(sorted(labels)) + "}"


# --------------------------------------------------------------------------- writers


def write_queue_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """``review_queue.csv``: :data:`QUEUE_COLUMNS`, one row per queued sample, ``answer`` empty.

    Fill ``answer`` with labels separated by ``|`` (``-`` = no label applies; blank = not
    reviewed) and name the file in ``label.review.answers``.
    """
    buf = _io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(QUEUE_COLUMNS)
    for row in rows:
        writer.writerow([_cell(row.get(c, "")) for c in QUEUE_COLUMNS])
    with atomic_output(path, "w") as fh:
        fh.write(buf.getvalue())


def _cell(value: Any) -> str:
    if isinstance(value, list | tuple):
        return f" {LABEL_SEPARATOR} ".join(str(v) for v in value)
    if isinstance(value, float):
        return f"{value:.6f}"
    return "" if value is None else str(value)


def label_studio_tasks(rows: Sequence[Mapping[str, Any]], image_root: str) -> list[dict[str, Any]]:
    """Label Studio import tasks: data {image, captions, sample_id, ...} and the automatic
    labels as a prediction (Label Studio pre-selects them for the reviewer)."""
    tasks = []
    for row in rows:
        result = []
        if row["auto_labels"]:
            result.append(
                {"from_name": LS_FROM, "to_name": LS_TO, "type": "choices",
                 "value": {"choices": list(row["auto_labels"])}}
            )  # fmt: skip
        tasks.append(
            {
                "data": {
                    "image": image_root + row["image_path"],
                    "captions": "\n".join(row["captions"]),
                    "sample_id": row["sample_id"],
                    "source": row["source"],
                    "source_key": row["source_key"],
                    "reason": f"{row['reason']}: {row['detail']}",
                },
                "predictions": [
                    {"model_version": "cmrops-label", "score": round(1.0 - row["priority"], 6),
                     "result": result}
                ],
            }
        )  # fmt: skip
    return tasks


def label_studio_config(labels: Sequence[str]) -> str:
    """The Label Studio labelling config for ``review_tasks.json``."""
    choices = "\n".join(f"    <Choice value={quoteattr(label)}/>" for label in labels)
    return (
        "<View>\n"
        f'  <Image name="{LS_TO}" value="$image"/>\n'
        '  <Text name="captions" value="$captions"/>\n'
        '  <Header value="$reason" size="6"/>\n'
        f'  <Choices name="{LS_FROM}" toName="{LS_TO}" choice="multiple" showInline="true">\n'
        f"{choices}\n"
        "  </Choices>\n"
        "</View>\n"
    )


def write_text(path: Path, text: str) -> None:
    with atomic_output(path, "w") as fh:
        fh.write(text)


def write_tasks(path: Path, tasks: list[dict[str, Any]]) -> None:
    write_text(path, json.dumps(tasks, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


__all__ = [
    "NO_LABEL",
    "QUEUE_COLUMNS",
    "REASONS",
    "QueueItem",
    "label_studio_config",
    "label_studio_tasks",
    "priority",
    "select",
    "write_queue_csv",
    "write_tasks",
    "write_text",
]
