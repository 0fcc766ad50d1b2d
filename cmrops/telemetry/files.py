"""The project's metrics files, and the headline figures each stage's file yields.

Every stage writes its metrics *record* (a DVC out): ``<out>/metrics.json`` for collect,
preprocess, align and label, the ``--metrics`` file for the others - everything the stage
measured, prose and lists included (:func:`metrics_path`). Beside it the CLI writes the
stage's numbers-only *digest* (:mod:`cmrops.digest`), the file ``dvc metrics`` and
``dvc exp show`` see (:func:`digest_path`). Both paths come from the stage table
(:data:`cmrops.stage_table.STAGES`), never spelled a second time: read a record through
:func:`metrics_path` / :func:`record` and the readers of :mod:`cmrops.records` (re-exported
here), not through a path of your own.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from cmrops.records import (
    PASS_THROUGH_STAGES,
    QUARANTINING_STAGES,
    float_baseline_maps,
    load_json,
    planted_defects,
    quarantine_reasons,
    retrieval_maps,
    retrieval_models,
    split_leaking,
    split_protocol,
    split_sizes,
    stage_samples,
)

__all__ = [
    "PASS_THROUGH_STAGES",
    "QUARANTINING_STAGES",
    "digest_path",
    "float_baseline_maps",
    "headline",
    "load_json",
    "metrics_path",
    "metrics_path_from_args",
    "planted_defects",
    "quarantine_reasons",
    "record",
    "retrieval_maps",
    "retrieval_models",
    "split_leaking",
    "split_protocol",
    "split_sizes",
    "stage_samples",
]


def metrics_path(stage: str) -> str | None:
    """The stage's metrics record relative to the project root (``None``: the stage writes
    none)."""
    from cmrops.stage_table import STAGES

    if stage not in STAGES:
        return None
    return metrics_path_from_args(STAGES[stage].args)


def digest_path(stage: str) -> str | None:
    """The stage's DVC metrics file (its numbers-only digest) relative to the project root."""
    from cmrops.stage_table import STAGES

    if stage not in STAGES:
        return None
    args = STAGES[stage].args
    return args[args.index("--digest") + 1] if "--digest" in args[:-1] else None


def record(project: str | os.PathLike[str], stage: str) -> dict[str, Any]:
    """The metrics record of ``stage`` in ``project`` (``{}`` when it is missing or unreadable)."""
    rel = metrics_path(stage)
    return (load_json(Path(project) / rel) if rel else None) or {}


def metrics_path_from_args(args: tuple[str, ...] | list[str]) -> str | None:
    def value(flag: str) -> str | None:
        return args[args.index(flag) + 1] if flag in args[:-1] else None

    explicit = value("--metrics")
    if explicit:
        return explicit
    out = value("--out")
    return f"{out}/metrics.json" if out else None


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
