"""The tables the plots of ``dvc.yaml`` draw (``dvc plots show`` / ``dvc plots diff``).

A handful of plots, each answering one question, drawn by the project's Vega-Lite templates in
``.dvc/plots/`` (every row of a table has the same fields, as DVC requires):

* ``plots/retrieval/pr.json`` - precision against recall within Hamming radius 0..bits, a row
  per model, direction and radius (``method``, ``bits``, ``direction``, ``model``, ``radius``,
  ``precision``, ``recall``): *how do the methods trade precision for recall, per direction and
  code length?*
* ``plots/retrieval/pk.json`` - precision@K over the ``pk_curve`` cut-offs (``k``,
  ``precision``): *how good is the top of the ranking?*
* ``plots/retrieval/map.json`` - tie-aware mAP per method, bits and direction: *what do more
  bits buy?*
* ``plots/quarantine/<stage>.json`` - samples quarantined per reason by collect, preprocess and
  clean (``stage``, ``reason``, ``count``; a stage that quarantined nothing has one row with
  reason ``(none)`` and count 0): *where are samples lost, and why?*

Evaluate's per-model curves (``plots/pr/<model>_<direction>.json``, ``plots/pk/...``) stay its
outputs for the dashboard; they are not drawn one chart per file any more. The CLI writes these
tables after a stage command succeeds (``--plots``), from the stage's metrics record.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from cmrops import io, records

__all__ = ["NO_QUARANTINE", "quarantine_rows", "retrieval_tables", "write"]

#: The reason of the one row of a stage that quarantined nothing.
NO_QUARANTINE = "(none)"


def quarantine_rows(stage: str, record: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per reason ``stage`` quarantined samples for, most frequent first."""
    reasons = records.quarantine_reasons(stage, record)
    rows = [
        {"stage": stage, "reason": reason, "count": n}
        for reason, n in sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))
    ]
    return rows or [{"stage": stage, "reason": NO_QUARANTINE, "count": 0}]


def retrieval_tables(record: dict[str, Any], plots_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """The ``pr``, ``pk`` and ``map`` tables of evaluate's record (its curves are read from the
    per-model files under ``plots_dir`` that the record names)."""
    tables: dict[str, list[dict[str, Any]]] = {"pr": [], "pk": [], "map": []}
    kinds = records.retrieval_models(record)
    maps = records.retrieval_maps(record)
    for model, spec in sorted((record.get("models") or {}).items(), key=_model_order(kinds)):
        if model not in kinds:
            continue
        method, bits = kinds[model]
        for direction, d in (spec.get("directions") or {}).items():
            key = {"method": method, "bits": bits, "direction": direction, "model": model}
            if (model, direction) in maps:
                tables["map"].append({**key, "map": maps[model, direction]})
            curves = d.get("plots") or {}
            for row in _curve(plots_dir, curves.get("pr")):
                pr = {k: row[k] for k in ("radius", "precision", "recall")}
                tables["pr"].append({**key, **pr})
            for row in _curve(plots_dir, curves.get("pk")):
                tables["pk"].append({**key, "k": row["k"], "precision": row["precision"]})
    return tables


def write(
    stage: str, record_path: str | os.PathLike[str], plots_dir: str | os.PathLike[str]
) -> list[Path]:
    """Write ``stage``'s plot tables under ``plots_dir`` from its metrics record; the paths."""
    record = records.load_json(record_path)
    if record is None:
        raise FileNotFoundError(f"{record_path}: no metrics record to plot (did {stage} run?)")
    plots = Path(plots_dir)
    written: list[Path] = []
    if stage in records.QUARANTINING_STAGES:
        path = plots / "quarantine" / f"{stage}.json"
        io.write_json(path, quarantine_rows(stage, record))
        written.append(path)
    elif stage == "evaluate":
        for name, rows in retrieval_tables(record, plots).items():
            path = plots / "retrieval" / f"{name}.json"
            io.write_json(path, rows)
            written.append(path)
    return written


def _model_order(kinds: dict[str, tuple[str, int]]) -> Any:
    return lambda item: (kinds.get(item[0], ("", 0))[0], kinds.get(item[0], ("", 0))[1], item[0])


def _curve(plots_dir: Path, rel: Any) -> list[dict[str, Any]]:
    if not isinstance(rel, str):
        return []
    path = plots_dir / rel
    rows = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(rows, list):
        raise ValueError(f"{path}: expected a list of rows")
    return rows
