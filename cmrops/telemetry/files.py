"""The project's metrics files, and the headline figures each stage's file yields.

Every stage writes one small JSON of metrics (DVC tracks it): ``<out>/metrics.json`` for
collect, preprocess and label, the ``--metrics`` file for the others. Its path comes from the
stage table (:data:`cmrops.stage_table.STAGES`), never spelled a second time here.
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
    "headline",
    "load_json",
    "metrics_path",
    "metrics_path_from_args",
    "quarantine_reasons",
    "retrieval_maps",
    "stage_samples",
]

#: Stages whose metrics file counts inputs, kept and quarantined samples (with reasons).
QUARANTINING_STAGES = ("collect", "preprocess", "clean")
#: Stages that pass every sample on: their input count is their output count.
PASS_THROUGH_STAGES = ("label", "split")


def metrics_path(stage: str) -> str | None:
    """The stage's metrics file relative to the project root (``None``: the stage writes none)."""
    from cmrops.stage_table import STAGES

    if stage not in STAGES:
        return None
    return metrics_path_from_args(STAGES[stage].args)


def metrics_path_from_args(args: tuple[str, ...] | list[str]) -> str | None:
    def value(flag: str) -> str | None:
        return args[args.index(flag) + 1] if flag in args[:-1] else None

    explicit = value("--metrics")
    if explicit:
        return explicit
    out = value("--out")
    return f"{out}/metrics.json" if out else None


def load_json(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The JSON object in ``path``; ``None`` when it is missing, unreadable or not an object
    (a scrape or a run record must not fail on a half-written or foreign file)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        log.warning("telemetry: cannot read %s (%s); its metrics are left out", path, e)
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


def retrieval_maps(m: dict[str, Any]) -> dict[tuple[str, str], float]:
    """(model, direction) -> tie-aware mAP of the hash codes, from ``metrics/retrieval.json``."""
    out: dict[tuple[str, str], float] = {}
    for model, spec in (m.get("models") or {}).items():
        for direction, d in (spec.get("directions") or {}).items():
            value = (d.get("hash") or {}).get("map")
            if isinstance(value, int | float):
                out[(model, direction)] = float(value)
    return out


def headline(stage: str, m: dict[str, Any]) -> tuple[dict[str, int], dict[str, float]]:
    """The counts and metrics a run-log record carries for ``stage``, from its metrics file:
    ``in``/``kept``/``quarantined`` and ``quarantined/<reason>`` (collect, preprocess, clean);
    ``labelled``/``unlabelled``/``review_queue`` (label); ``set/<name>`` and ``leaking_pairs``
    (split); ``models`` and ``best_val_map/<model>`` (train); ``models`` and
    ``map/<model>/<direction>`` (evaluate, tie-aware mAP of the hash codes)."""
    counts = stage_samples(stage, m)
    metrics: dict[str, float] = {}
    counts.update({f"quarantined/{r}": n for r, n in quarantine_reasons(stage, m).items()})
    if stage == "label":
        for key in ("labelled", "unlabelled"):
            if isinstance(m.get(key), int):
                counts[key] = int(m[key])
        queue = (m.get("review") or {}).get("queue")
        if isinstance(queue, int):
            counts["review_queue"] = queue
    elif stage == "split":
        counts.update({f"set/{k}": int(v) for k, v in (m.get("sizes") or {}).items()})
        leak = (m.get("leakage") or {}).get("total")
        if isinstance(leak, int):
            counts["leaking_pairs"] = leak
    elif stage == "train":
        models = m.get("models") or {}
        counts["models"] = len(models)
        for name, spec in models.items():
            if isinstance(spec.get("best_val_map"), int | float):
                metrics[f"best_val_map/{name}"] = float(spec["best_val_map"])
    elif stage == "evaluate":
        counts["models"] = len(m.get("models") or {})
        metrics.update({f"map/{mo}/{d}": v for (mo, d), v in retrieval_maps(m).items()})
    return counts, metrics
