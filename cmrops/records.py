"""What a stage's metrics record holds: readers over the JSON each stage writes.

Plain functions over the record's dict (``<out>/metrics.json`` or the ``--metrics`` file; where
each lives: :func:`cmrops.telemetry.files.metrics_path`). They serve every reader of the
records - the DVC digests and plot tables (:mod:`cmrops.digest`, :mod:`cmrops.plot_tables`),
telemetry, the run summary, the release list - so a record's layout is read in one place. This
module imports nothing of the package: every stage's digest is made from it, and ``dvc.yaml``
lists it as a dependency of each stage.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

__all__ = [
    "PASS_THROUGH_STAGES",
    "QUARANTINING_STAGES",
    "float_baseline_maps",
    "load_json",
    "planted_defects",
    "quarantine_reasons",
    "retrieval_maps",
    "retrieval_models",
    "split_leaking",
    "split_protocol",
    "split_sizes",
    "stage_samples",
]

#: Stages whose metrics file counts inputs, kept and quarantined samples (with reasons).
QUARANTINING_STAGES = ("collect", "preprocess", "clean")
#: Stages that pass every sample on: their input count is their output count.
PASS_THROUGH_STAGES = ("label", "split")


def load_json(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The JSON object in ``path``; ``None`` when it is missing, unreadable or not an object
    (a scrape or a run record must not fail on a half-written or foreign file)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        log.warning("cannot read %s (%s); its metrics are left out", path, e)
        return None
    return data if isinstance(data, dict) else None


def stage_samples(stage: str, m: dict[str, Any]) -> dict[str, int]:
    """``in`` / ``kept`` / ``quarantined`` of a funnel stage from its metrics file (``{}`` for
    train, evaluate, or a file without them)."""
    if stage in QUARANTINING_STAGES:
        n_in = m.get("inputs", m.get("in"))
        parts = {"in": n_in, "kept": m.get("kept"), "quarantined": m.get("quarantined")}
        return {k: int(v) for k, v in parts.items() if isinstance(v, int | float)}
    if stage in PASS_THROUGH_STAGES and isinstance(m.get("samples"), int | float):
        n = int(m["samples"])
        return {"in": n, "kept": n, "quarantined": 0}
    return {}


def quarantine_reasons(stage: str, m: dict[str, Any]) -> dict[str, int]:
    if stage not in QUARANTINING_STAGES:
        return {}
    by = m.get("quarantined_by_reason") or {}
    return {str(k): int(v) for k, v in by.items() if isinstance(v, int | float)}


def split_protocol(m: dict[str, Any]) -> str:
    """The split protocol's name, from ``metrics/split.json``."""
    p = m.get("protocol")
    return str(p.get("name", "")) if isinstance(p, dict) else str(p or "")


def split_sizes(m: dict[str, Any]) -> dict[str, int]:
    return {str(k): int(v) for k, v in (m.get("sizes") or {}).items()
            if isinstance(v, int | float)}  # fmt: skip


def split_leaking(m: dict[str, Any]) -> int | None:
    total = (m.get("leakage") or {}).get("total")
    return int(total) if isinstance(total, int | float) else None


def planted_defects(m: dict[str, Any]) -> dict[str, float]:
    """Cleaning precision/recall on the synthetic set's planted defects (``metrics/quality.json``;
    empty for other data)."""
    overall = (m.get("synthetic") or {}).get("overall") or {}
    return {k: float(v) for k, v in overall.items() if isinstance(v, int | float)}


def retrieval_models(m: dict[str, Any]) -> dict[str, tuple[str, int]]:
    """model -> (method, bits), from ``metrics/retrieval.json``."""
    out: dict[str, tuple[str, int]] = {}
    for model, spec in (m.get("models") or {}).items():
        method, bits = spec.get("method"), spec.get("bits")
        if isinstance(method, str) and isinstance(bits, int | float):
            out[model] = (method, int(bits))
    return out


def float_baseline_maps(m: dict[str, Any]) -> dict[str, float]:
    """direction -> mAP of the aligned float baseline (``{}`` when it was left out)."""
    dirs = (m.get("float_baseline") or {}).get("directions") or {}
    return {str(d): float(v["map"]) for d, v in dirs.items()
            if isinstance((v or {}).get("map"), int | float)}  # fmt: skip


def retrieval_maps(m: dict[str, Any]) -> dict[tuple[str, str], float]:
    """(model, direction) -> tie-aware mAP of the hash codes, from ``metrics/retrieval.json``."""
    out: dict[tuple[str, str], float] = {}
    for model, spec in (m.get("models") or {}).items():
        for direction, d in (spec.get("directions") or {}).items():
            value = (d.get("hash") or {}).get("map")
            if isinstance(value, int | float):
                out[(model, direction)] = float(value)
    return out
