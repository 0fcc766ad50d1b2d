"""Align stage: one shared image-text space for the label and clean stages.

``run(params, interim_dir, out_dir, raw_dir=...)`` reads ``<interim>/samples.parquet``
(``sample_id``, ``feature_row``) and ``<interim>/features/`` and writes under ``out_dir``:

* ``model/`` - the alignment (:mod:`cmrops.align.store`: ``config.json`` and, when learned,
  ``alignment.safetensors``); its ``info.calibration.threshold`` is the mismatch threshold
  ``clean.mismatch.min_similarity: auto`` uses. When the stage cannot run (``preprocess.embeddings:
  false``) ``model/`` holds only ``not_run.json`` with the reason, and the label and clean stages
  report zero-shot and mismatch as not run with that reason;
* ``pair_scores.parquet`` - ``sample_id``, ``score``: the cosine of every pair in the shared
  space as the clean stage's mismatch rule uses it. For a learned alignment it is *out of fold*
  (:mod:`cmrops.align.crossfit`: each pair scored by a model trained without it - the model of
  ``model/`` has seen 80 % of the pairs and would score a memorised mismatch as a match); for the
  identity it is the plain cosine. Empty when the stage did not run;
* ``metrics.json`` - kind, pairs, the held-out metrics (InfoNCE loss, R@1 both ways, AUROC of
  true pairs against swapped captions, the calibrated threshold with its TPR / FPR) and, when
  ``<raw>/synthetic_truth.parquet`` exists, the AUROC of the pair score on the planted ``swapped``
  defects (:func:`planted_swapped`);
* ``throughput.json`` - wall-clock seconds (the only output that differs between runs).

**Which alignment.** ``kind: auto`` (default) writes the identity (:func:`~cmrops.align.
encoder_alignment`) when ``features/meta.json`` says one aligned dual encoder embedded both sides
(:func:`cmrops.labels.zeroshot.alignment`: a CLIP / SigLIP configured in preprocess), and
otherwise trains two heads on the data set's own pairs (:func:`~cmrops.align.fit_alignment`);
``learned`` / ``encoder`` force one. The identity is calibrated on all pairs (it learns nothing, so
nothing has to be held out); a learned alignment on its held-out pairs.

Pairs are taken in ``sample_id`` order, so the same samples give the same model whatever their
row order; the same inputs give byte-identical outputs (throughput aside).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from cmrops import io
from cmrops.align import (
    Alignment,
    AlignParams,
    auroc,
    encoder_alignment,
    fit_alignment,
    load_alignment,
)
from cmrops.align.crossfit import out_of_fold_scores
from cmrops.align.store import CONFIG, WEIGHTS, save_alignment

log = logging.getLogger(__name__)

STAGE = "align"
MODEL_DIR = "model"
NOT_RUN = "not_run.json"
PAIR_SCORES = "pair_scores.parquet"


@dataclass(frozen=True)
class AlignStageParams:
    """The ``align:`` section of params.yaml."""

    kind: Literal["auto", "learned", "encoder"] = "auto"
    train: AlignParams = field(default_factory=AlignParams)


def cli_main(args: Any) -> int:
    """``cmrops align --params P --interim I --raw R --out O``."""
    from cmrops.params import load_section

    params = load_section(args.params, STAGE, AlignStageParams)
    m = run(params, args.interim, args.out, raw_dir=args.raw)
    if not m["run"]:
        print(f"align: not run: {m['reason']}")
        return 0
    h = m["holdout"]
    line = (
        f"align: {m['kind']} alignment over {m['pairs']} pairs; held-out swapped-caption AUROC "
        f"{h['swapped_auroc']}, R@1 i2t {h['r1_i2t']} t2i {h['r1_t2i']}, mismatch threshold "
        f"{m['threshold']} -> {args.out}"
    )
    print(line)
    if m.get("synthetic", {}).get("auroc") is not None:
        print(f"  planted swapped captions: AUROC {m['synthetic']['auroc']}")
    return 0


def run(
    params: AlignStageParams,
    interim_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    raw_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Write the alignment of ``interim_dir``'s features into ``out_dir`` (module docstring)."""
    from cmrops.labels.zeroshot import alignment as encoders_aligned

    t0 = time.perf_counter()
    interim, out = Path(interim_dir), Path(out_dir)
    meta_path = interim / "features" / "meta.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path}: not found - run `cmrops preprocess` first")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    model = out / MODEL_DIR
    if not meta.get("embeddings"):
        why = "preprocess wrote no embeddings (preprocess.embeddings: false)"
        _clear(model)
        io.write_json(model / NOT_RUN, {"run": False, "reason": why})
        _write_scores(out / PAIR_SCORES, [], np.zeros(0))
        metrics = {"stage": STAGE, "run": False, "reason": why}
        io.write_json(out / "metrics.json", metrics)
        io.write_json(out / "throughput.json", {"seconds": round(time.perf_counter() - t0, 3)})
        return metrics
    sample_ids, image, text = _pairs(interim)
    kind, why = resolve_kind(params.kind, encoders_aligned(meta), image.shape[1], text.shape[1])
    p = params.train
    if kind == "encoder":
        if image.shape[1] != text.shape[1]:
            raise ValueError(
                f"align.kind: encoder, but image features are {image.shape[1]}-d and text "
                f"features {text.shape[1]}-d ({why}); use kind: learned or auto"
            )
        alignment = encoder_alignment(image.shape[1])
        holdout = _evaluate_all(alignment, image, text, p)
        alignment.info["why"] = why
        scores = alignment.pair_scores(image, text)
        calibration = holdout["calibration"]
        oof = None
    else:
        if len(image) < 8:
            raise ValueError(
                f"{interim}: {len(image)} samples with embeddings; a learned alignment needs at "
                "least 8 pairs (collect more data, or configure a CLIP/SigLIP and kind: encoder)"
            )
        alignment, holdout = fit_alignment(image, text, p, progress=progress)
        alignment.info["why"] = f"learned on the data set's pairs: {why}"
        scores, oof = out_of_fold_scores(image, text, p)
        calibration = oof["calibration"]
    alignment.info["calibration"] = calibration
    alignment.info["pair_scores"] = "out of fold" if oof else "cosine"
    _clear(model)
    save_alignment(alignment, model)
    _write_scores(out / PAIR_SCORES, sample_ids, scores)
    metrics: dict[str, Any] = {
        "stage": STAGE,
        "run": True,
        "kind": kind,
        "why": alignment.info["why"],
        "pairs": len(image),
        "dim": alignment.dim,
        "holdout": holdout,
        "threshold": calibration["threshold"],
        "calibration": calibration,
    }
    if oof is not None:
        metrics["out_of_fold"] = oof
    if kind == "learned":
        metrics["epochs_run"] = alignment.info["epochs_run"]
        metrics["best_epoch"] = alignment.info["best_epoch"]
    truth = Path(raw_dir) / "synthetic_truth.parquet" if raw_dir else None
    if truth is not None and truth.is_file():
        metrics["synthetic"] = planted_swapped(truth, sample_ids, scores)
        if oof is not None:  # the saved model's own scores: its training pairs look better
            own = planted_swapped(truth, sample_ids, alignment.pair_scores(image, text))
            metrics["synthetic"]["auroc_model_in_sample"] = own["auroc"]
    io.write_json(out / "metrics.json", metrics)
    io.write_json(out / "throughput.json", {"seconds": round(time.perf_counter() - t0, 3)})
    return metrics


def resolve_kind(
    kind: Literal["auto", "learned", "encoder"],
    aligned: tuple[bool, str],
    image_dim: int,
    text_dim: int,
) -> tuple[Literal["learned", "encoder"], str]:
    """``align.kind`` made concrete, and why: ``auto`` is the encoders' own space when
    ``features/meta.json`` says one aligned dual encoder embedded both sides (``aligned``, from
    :func:`cmrops.labels.zeroshot.alignment`) in one width, else a learned alignment."""
    ok, why = aligned
    if kind != "auto":
        return kind, why
    if ok and image_dim != text_dim:
        return "learned", f"{why}, but image features are {image_dim}-d and text {text_dim}-d"
    return ("encoder" if ok else "learned"), why


def planted_swapped(truth_path: Path, sample_ids: list[str], scores: np.ndarray) -> dict[str, Any]:
    """AUROC of the pair score: samples with no planted defect (positives) against the planted
    ``swapped`` ones (negatives), over every pair - training pairs too, as clean scores them."""
    truth = io.read_parquet(truth_path, columns=["sample_id", "defect"]).to_pylist()
    defect = {r["sample_id"]: r["defect"] for r in truth if r["sample_id"]}
    swapped = np.array([defect.get(s) == "swapped" for s in sample_ids], bool)
    clean = np.array([s not in defect for s in sample_ids], bool)
    out: dict[str, Any] = {"clean_pairs": int(clean.sum()), "swapped_pairs": int(swapped.sum())}
    out["auroc"] = round(auroc(scores[clean], scores[swapped]), 6) if swapped.any() else None
    return out


def _evaluate_all(
    alignment: Alignment, image: np.ndarray, text: np.ndarray, p: AlignParams
) -> dict[str, Any]:
    from cmrops.align.train import evaluate

    if len(image) < 2:
        raise ValueError(f"{len(image)} pair(s): calibrating a threshold needs at least 2")
    return {**evaluate(alignment, image, text, p), "loss": None}


def _pairs(interim: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Sample ids (sorted) of the samples with embeddings, and their image / text rows."""
    path = interim / "samples.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found - run `cmrops preprocess` first")
    table = io.read_parquet(path, columns=["sample_id", "feature_row"]).sort_by("sample_id")
    ids = table["sample_id"].to_pylist()
    rows = np.asarray(table["feature_row"].fill_null(-1).to_numpy(), dtype=np.int64)
    keep = rows >= 0
    arrays = []
    for kind in ("image", "text"):
        f = interim / "features" / f"{kind}.npy"
        if not f.is_file():
            raise FileNotFoundError(f"{f}: named by features/meta.json but missing")
        arr = np.load(f, mmap_mode="r", allow_pickle=False)
        if keep.any() and rows[keep].max() >= len(arr):
            raise ValueError(f"{f}: has {len(arr)} rows but samples.parquet refers to more")
        arrays.append(np.asarray(arr[rows[keep]], dtype=np.float32))
    return [s for s, k in zip(ids, keep, strict=True) if k], arrays[0], arrays[1]


def _write_scores(path: Path, sample_ids: list[str], scores: np.ndarray) -> None:
    import pyarrow as pa

    schema = pa.schema([("sample_id", pa.string()), ("score", pa.float64())])
    table = pa.table([pa.array(sample_ids, pa.string()), pa.array(scores, pa.float64())],
                     schema=schema)  # fmt: skip
    io.write_parquet(path, table)


def _clear(model: Path) -> None:
    for name in (CONFIG, WEIGHTS, NOT_RUN):
        (model / name).unlink(missing_ok=True)


# --------------------------------------------------------------------------- downstream


@dataclass(frozen=True)
class Loaded:
    """What the label and clean stages get from ``<align>/model``: the alignment and its
    calibrated threshold, or why there is none."""

    alignment: Alignment | None
    threshold: float | None
    why: str
    pair_scores: dict[str, float] | None = None  # sample_id -> score (pair_scores.parquet)


def load_output(
    align_dir: str | os.PathLike[str] | None,
    meta: dict[str, Any] | None,
    *,
    with_scores: bool = False,
) -> Loaded:
    """The alignment a downstream stage scores with, given the features' ``meta.json``.

    With the align stage's output in ``align_dir``: its model, or (``not_run.json``) none and the
    reason; a missing or corrupt model raises :class:`~cmrops.align.AlignmentError` saying what to
    run. Without it (``None``, or no ``<align_dir>/model`` folder): the identity when the encoders
    are one aligned dual encoder (uncalibrated: a numeric threshold is needed), else none, with the
    reason and what to run. ``with_scores`` also reads ``pair_scores.parquet``."""
    from cmrops.labels.zeroshot import alignment as encoders_aligned

    model = Path(align_dir) / MODEL_DIR if align_dir is not None else None
    if model is not None and model.is_dir():
        record = model / NOT_RUN
        if record.is_file():
            reason = json.loads(record.read_text(encoding="utf-8")).get("reason", "?")
            return Loaded(None, None, f"align stage not run: {reason}")
        alignment = load_alignment(model)
        thr = (alignment.info.get("calibration") or {}).get("threshold")
        why = str(alignment.info.get("why", f"{alignment.kind} alignment"))
        scores_path = Path(align_dir) / PAIR_SCORES  # type: ignore[arg-type]
        scores = None
        if with_scores and scores_path.is_file():
            t = io.read_parquet(scores_path, columns=["sample_id", "score"])
            scores = dict(zip(t["sample_id"].to_pylist(), t["score"].to_pylist(), strict=True))
        return Loaded(alignment, None if thr is None else float(thr), why, scores)
    aligned, why = encoders_aligned(meta)
    where = f"no align stage output in {align_dir}" if align_dir is not None else "no --align"
    if aligned and meta is not None:
        dim = int((meta.get("text") or {}).get("dim") or 0)
        if dim and dim == int((meta.get("image") or {}).get("dim") or 0):
            return Loaded(encoder_alignment(dim), None, f"{why} ({where}: identity, uncalibrated)")
    return Loaded(None, None, f"{why}; {where} (run `cmrops align` for a learned alignment)")
