"""What DVC shows of a stage: a numbers-only digest of its metrics record.

Every stage writes its full record (:func:`cmrops.telemetry.files.metrics_path`: counts with
their breakdowns, the protocol card, definitions, example pairs, notes ...) as a DVC *out*: the
dashboard, the run summary, telemetry and releases read it there. ``dvc metrics`` and
``dvc exp show`` see only the digest beside it, ``metrics/dvc/<stage>.json``
(:func:`cmrops.telemetry.files.digest_path`): a few headline numbers per stage, nested so that
DVC's flattened names read well (``clean.json: planted_defects.recall``,
``evaluate.json: map.i2t.dcmh-64``). Strings, lists, booleans and timings never enter
it; the wall-clock files (``throughput.json``, ``train_throughput.json``) are run-time data,
outside DVC altogether.

The CLI writes the digest after a stage command succeeds, when the command has ``--digest``
(as every ``dvc.yaml`` command does): one implementation for every stage, so a figure added to
a record reaches DVC only by being named here.

=========== ============================================================================
stage       digest
=========== ============================================================================
collect     ``in``, ``kept``, ``quarantined``, ``quarantined_by_reason.<reason>``,
            ``stored_files``
preprocess  ``in``, ``kept``, ``quarantined``, ``quarantined_by_reason.<reason>``
align       ``pairs``, ``threshold``, ``holdout.<metric>`` (:data:`ALIGN_HOLDOUT`),
            ``planted_swapped.auroc`` (synthetic data)
label       ``samples``, ``labelled``, ``unlabelled``, ``labels``, ``vocabulary``,
            ``review_queue``
clean       ``in``, ``kept``, ``quarantined``, ``quarantined_by_reason.<reason>``,
            ``planted_defects.precision`` / ``.recall`` (synthetic data)
split       ``samples``, ``sets.<set>``, ``leaking_pairs``, ``groups``
train       ``models``, ``roles.<role>`` (samples trained on, validated on, query, database)
evaluate    ``models``, ``map.<dir>.<model>`` (tie-aware mAP of the hash codes),
            ``float_baseline.<dir>`` (the aligned float baseline's mAP)
=========== ============================================================================

Directions are abbreviated the way the cross-modal hashing literature writes them (``i2t`` is
image_to_text, ``t2v`` text_to_video, ...; :func:`short_direction`): DVC prints one table row
per metrics file, every row as wide as all the columns together, so the names' length is the
size of ``dvc metrics show`` (14.6 KB for a release of 20 models; docs/versioning.md).
Precision@K, mAP@k, the database-order mAP, the pair ranks, code health and the rest stay in the
record; the curves are DVC plots (:mod:`cmrops.plot_tables`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from cmrops import io, records

__all__ = ["ALIGN_HOLDOUT", "digest", "numbers_only", "short_direction", "write"]

Digest = dict[str, Any]


def digest(stage: str, record: Mapping[str, Any]) -> Digest:
    """The digest of ``stage``'s metrics record (``{}`` for a stage without one)."""
    make = _MAKERS.get(stage)
    return numbers_only(make(record)) if make else {}


def write(stage: str, record_path: str | os.PathLike[str], out: str | os.PathLike[str]) -> Digest:
    """Read the record the stage wrote, write its digest to ``out`` and return it."""
    record = records.load_json(record_path)
    if record is None:
        raise FileNotFoundError(f"{record_path}: no metrics record to digest (did {stage} run?)")
    d = digest(stage, record)
    io.write_json(Path(out), d)
    return d


def numbers_only(d: Mapping[str, Any]) -> Digest:
    """``d`` without anything but finite numbers (booleans are not numbers here) and without the
    sections that are left empty."""
    out: Digest = {}
    for key, value in d.items():
        if isinstance(value, Mapping):
            sub = numbers_only(value)
            if sub:
                out[str(key)] = sub
        elif _is_number(value):
            out[str(key)] = value
    return out


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


# --------------------------------------------------------------------------- per stage


def _funnel(stage: str, r: Mapping[str, Any]) -> Digest:
    return {**records.stage_samples(stage, dict(r)),
            "quarantined_by_reason": records.quarantine_reasons(stage, dict(r))}  # fmt: skip


def _collect(r: Mapping[str, Any]) -> Digest:
    return {**_funnel("collect", r), "stored_files": r.get("images_stored")}


def _preprocess(r: Mapping[str, Any]) -> Digest:
    return _funnel("preprocess", r)


#: The held-out figures of the alignment the align digest carries (InfoNCE loss, R@1 both ways,
#: AUROC of true vs swapped pairs).
ALIGN_HOLDOUT = ("loss", "r1_i2t", "r1_t2i", "swapped_auroc")


def _align(r: Mapping[str, Any]) -> Digest:
    holdout = r.get("holdout") or {}
    return {
        "pairs": r.get("pairs"),
        "threshold": r.get("threshold"),
        "holdout": {k: holdout.get(k) for k in ALIGN_HOLDOUT},
        "planted_swapped": {"auroc": (r.get("synthetic") or {}).get("auroc")},
    }


def _label(r: Mapping[str, Any]) -> Digest:
    return {
        **{k: r.get(k) for k in ("samples", "labelled", "unlabelled", "labels")},
        "vocabulary": (r.get("vocabulary") or {}).get("size"),
        "review_queue": (r.get("review") or {}).get("queue"),
    }


def _clean(r: Mapping[str, Any]) -> Digest:
    planted = records.planted_defects(dict(r))
    return {
        **_funnel("clean", r),
        "planted_defects": {k: planted.get(k) for k in ("precision", "recall")},
    }


def _split(r: Mapping[str, Any]) -> Digest:
    return {
        "samples": r.get("samples"),
        "sets": records.split_sizes(dict(r)),
        "leaking_pairs": records.split_leaking(dict(r)),
        "groups": (r.get("groups") or {}).get("count"),
    }


def _train(r: Mapping[str, Any]) -> Digest:
    out: Digest = {"models": len(r.get("models") or {}), "roles": r.get("roles") or {}}
    if r.get("not_trained"):  # closed-form models too wide for the data (the reasons: the record)
        out["not_trained"] = len(r["not_trained"])
    return out


def _evaluate(r: Mapping[str, Any]) -> Digest:
    maps: dict[str, dict[str, Any]] = {}
    for (model, direction), value in records.retrieval_maps(dict(r)).items():
        maps.setdefault(short_direction(direction), {})[model] = value
    baseline = {short_direction(d): v for d, v in records.float_baseline_maps(dict(r)).items()}
    out: Digest = {"models": len(r.get("models") or {}), "map": maps, "float_baseline": baseline}
    if (r.get("relevance") or {}).get("mode") == "pair":  # caption data: R@10 is the headline
        r10: dict[str, dict[str, Any]] = {}
        for model, spec in sorted((r.get("models") or {}).items()):
            for direction, d in sorted((spec.get("directions") or {}).items()):
                ranks = ((d.get("hash") or {}).get("pair_ranks") or {}).get("tie_aware") or {}
                value = (ranks.get("recall_at") or {}).get("10")
                if isinstance(value, int | float):
                    r10.setdefault(short_direction(direction), {})[model] = value
        out["pair_r10"] = r10
    return out


def short_direction(direction: str) -> str:
    """``image_to_text`` -> ``i2t`` (``video_to_text`` -> ``v2t``, ``text_to_audio`` -> ``t2a``);
    a name of another shape is kept as it is."""
    parts = direction.split("_to_")
    if len(parts) != 2 or not all(parts):
        return direction
    return f"{parts[0][0]}2{parts[1][0]}"


_MAKERS: dict[str, Callable[[Mapping[str, Any]], Digest]] = {
    "collect": _collect,
    "preprocess": _preprocess,
    "align": _align,
    "label": _label,
    "clean": _clean,
    "split": _split,
    "train": _train,
    "evaluate": _evaluate,
}
