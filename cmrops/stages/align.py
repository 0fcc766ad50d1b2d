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
* ``null_scores.parquet`` - ``score``: the null of the pair scores (images with deranged
  captions, ``NULL_DERANGEMENTS`` seeded derangements per fold), which the mismatch calibration
  compares the true scores with;
* ``metrics.json`` - kind, pairs, the held-out metrics (InfoNCE loss, R@1 both ways, AUROC of
  true pairs against swapped captions, the calibrated threshold with its TPR / FPR) and, when
  ``<raw>/synthetic_truth.parquet`` exists, the AUROC of the pair score on the planted ``swapped``
  defects (:func:`planted_swapped`);
* ``throughput.json`` - wall-clock seconds (the only output that differs between runs).

**Which alignment.** ``kind: auto`` (default) writes the identity (:func:`~cmrops.align.
encoder_alignment`) when ``features/meta.json`` says one aligned dual encoder embedded both sides
(:func:`cmrops.labels.zeroshot.alignment`: a CLIP / SigLIP configured in preprocess). Otherwise,
when the image encoder has an ImageNet head (the default EfficientNet-Lite0), it starts from the
**concept bridge** (:mod:`cmrops.align.concept`: zero pairs needed) and fuses it with two heads
trained on the data set's own pairs (:func:`~cmrops.align.fit_alignment`), the prior's weight
chosen on out-of-fold pairs (:mod:`cmrops.align.fusion`; ``kind: fused``) - or uses the bridge
alone when there are too few pairs to train on (``kind: concept``); with another image encoder
it trains the heads alone (``kind: learned``). Each kind can be forced. The identity and the
bridge are calibrated on all pairs (they learned nothing from them); a learned or fused
alignment on out-of-fold scores.

**Mismatch calibration.** Beside the scores of the true pairs the stage writes their null: the
same images with other samples' captions (``null_scores.parquet``, a few seeded derangements;
out of fold like the true scores). The clean stage's mismatch rule chooses how many pairs to flag
from where the true scores fall against that null (:mod:`cmrops.cleaning.mismatch`); the
calibration recorded here (``calibration``) is that rule applied to every pair.

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

from cmrops import io, threads
from cmrops.align import (
    Alignment,
    AlignParams,
    auroc,
    encoder_alignment,
    load_alignment,
)
from cmrops.align.concept import CLASSIFIER_ENCODERS, ConceptParams
from cmrops.align.crossfit import fit_fused, fit_with_folds
from cmrops.align.fusion import fuse
from cmrops.align.metrics import derangement
from cmrops.align.store import CONFIG, WEIGHTS, save_alignment
from cmrops.align.train import MIN_PAIRS
from cmrops.align.train import evaluate as evaluate_alignment
from cmrops.cleaning.mismatch import calibrate_mismatch

log = logging.getLogger(__name__)

STAGE = "align"
MODEL_DIR = "model"
NOT_RUN = "not_run.json"
PAIR_SCORES = "pair_scores.parquet"
NULL_SCORES = "null_scores.parquet"
#: Seeded derangements whose scores make the null of the pair scores (per fold when learned).
NULL_DERANGEMENTS = 5
#: Fewer pairs than this train no heads: ``auto`` uses the concept bridge alone (5 folds of 4).
MIN_LEARNED_PAIRS = 20
Kind = Literal["learned", "encoder", "concept", "fused"]


@dataclass(frozen=True)
class AlignStageParams:
    """The ``align:`` section of params.yaml."""

    kind: Literal["auto", "learned", "encoder", "concept", "fused"] = "auto"
    train: AlignParams = field(default_factory=AlignParams)
    concept: ConceptParams = field(default_factory=ConceptParams)


def cli_main(args: Any) -> int:
    """``cmrops align --params P --interim I --raw R --out O``."""
    from cmrops.params import load_section

    params = load_section(args.params, STAGE, AlignStageParams)
    m = run(params, args.interim, args.out, raw_dir=args.raw)
    if not m["run"]:
        print(f"align: not run: {m['reason']}")
        return 0
    h, c = m["holdout"], m["calibration"]
    weight = f" (prior weight {m['prior_weight']:g})" if "prior_weight" in m else ""
    line = (
        f"align: {m['kind']} alignment{weight} over {m['pairs']} pairs; held-out "
        f"swapped-caption AUROC {h['swapped_auroc']}, R@1 i2t {h['r1_i2t']} t2i {h['r1_t2i']}; "
        f"mismatch calibration flags {c['flagged']} pair(s) (cut {c['threshold']}) -> {args.out}"
    )
    print(line)
    if m.get("synthetic", {}).get("auroc") is not None:
        print(f"  planted swapped captions: AUROC {m['synthetic']['auroc']}")
    return 0


@threads.training()  # CPU fits on a fixed number of threads: the same bytes on any machine
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
        _write_null(out / NULL_SCORES, np.zeros(0))
        metrics = {"stage": STAGE, "run": False, "reason": why}
        io.write_json(out / "metrics.json", metrics)
        io.write_json(out / "throughput.json", {"seconds": round(time.perf_counter() - t0, 3)})
        return metrics
    sample_ids, image, text = _pairs(interim)
    kind, why = resolve_kind(
        params.kind, encoders_aligned(meta), image.shape[1], text.shape[1], meta, len(image)
    )
    built = _build(kind, why, params, meta, interim, image, text, progress)
    alignment, scores, null = built.alignment, built.scores, built.null
    calibration = calibrate_mismatch(scores, null)
    alignment.info["calibration"] = calibration
    alignment.info["pair_scores"] = "out of fold" if built.out_of_fold else "cosine"
    _clear(model)
    save_alignment(alignment, model)
    _write_scores(out / PAIR_SCORES, sample_ids, scores)
    _write_null(out / NULL_SCORES, null)
    metrics: dict[str, Any] = {
        "stage": STAGE,
        "run": True,
        "kind": kind,
        "why": alignment.info["why"],
        "pairs": len(image),
        "dim": alignment.dim,
        "holdout": built.holdout,
        "threshold": calibration["threshold"],
        "calibration": calibration,
    }
    if built.out_of_fold is not None:
        metrics["out_of_fold"] = built.out_of_fold
    if built.fusion is not None:
        metrics["fusion"] = built.fusion
        metrics["prior_weight"] = built.fusion["prior_weight"]
    learned = built.learned_info
    if learned is not None:
        metrics["epochs_run"] = learned["epochs_run"]
        metrics["best_epoch"] = learned["best_epoch"]
    truth = Path(raw_dir) / "synthetic_truth.parquet" if raw_dir else None
    if truth is not None and truth.is_file():
        metrics["synthetic"] = planted_swapped(truth, sample_ids, scores)
        if built.out_of_fold is not None:  # the saved model's own scores: it saw its pairs
            own = planted_swapped(truth, sample_ids, alignment.pair_scores(image, text))
            metrics["synthetic"]["auroc_model_in_sample"] = own["auroc"]
    io.write_json(out / "metrics.json", metrics)
    io.write_json(out / "throughput.json", {"seconds": round(time.perf_counter() - t0, 3)})
    return metrics


@dataclass
class _Built:
    alignment: Alignment
    scores: np.ndarray  # (n,) the pairs' scores (out of fold when anything was learned)
    null: np.ndarray  # the same images with deranged captions
    holdout: dict[str, Any]
    out_of_fold: dict[str, Any] | None = None
    fusion: dict[str, Any] | None = None
    learned_info: dict[str, Any] | None = None


def _build(
    kind: Kind,
    why: str,
    params: AlignStageParams,
    meta: dict[str, Any],
    interim: Path,
    image: np.ndarray,
    text: np.ndarray,
    progress: bool,
) -> _Built:
    p = params.train
    if kind == "encoder":
        if image.shape[1] != text.shape[1]:
            raise ValueError(
                f"align.kind: encoder, but image features are {image.shape[1]}-d and text "
                f"features {text.shape[1]}-d ({why}); use kind: learned or auto"
            )
        alignment = encoder_alignment(image.shape[1])
        alignment.info["why"] = why
        return _untrained(alignment, image, text, p)
    prior = None
    if kind in ("concept", "fused"):
        prior = _concept(params, meta, image, text)
        if kind == "concept":
            prior.info["why"] = f"no pairs needed: {why}"
            return _untrained(prior, image, text, p)
    if len(image) < max(MIN_PAIRS, MIN_LEARNED_PAIRS if kind == "fused" else MIN_PAIRS):
        raise ValueError(
            f"{interim}: {len(image)} samples with embeddings; a {kind} alignment needs at least "
            f"{MIN_LEARNED_PAIRS if kind == 'fused' else MIN_PAIRS} pairs (use align.kind: "
            "concept or auto, collect more data, or configure a CLIP/SigLIP and kind: encoder)"
        )
    fusion = None
    if prior is not None:
        fit = fit_fused(image, text, prior, p, progress=progress)
        learned, alignment, folds, holdout = fit.learned, fit.alignment, fit.folds, fit.holdout
        fusion = fit.fusion
        alignment.info["why"] = (
            f"concept bridge fused with heads learned on the data set's pairs (prior weight "
            f"{fusion['prior_weight']:g}, chosen out of fold): {why}"
        )
    else:
        learned, holdout, folds = fit_with_folds(image, text, p, progress=progress)
        alignment = learned
        alignment.info["why"] = f"learned on the data set's pairs: {why}"
    scores = np.full(len(image), np.nan)
    nulls, swapped_first = [], []
    for k, f in enumerate(folds):
        model = f.model if prior is None else fuse(prior, f.model, fusion["prior_weight"])  # type: ignore[index]
        scores[f.hold] = model.pair_scores(image[f.hold], text[f.hold])
        null = _null(model, image[f.hold], text[f.hold], p.seed + k)
        nulls.append(null)
        swapped_first.append(null[: len(f.hold)])
    null_all = np.concatenate(nulls)
    oof = {
        "folds": len(folds),
        "pairs": len(image),
        "swapped_auroc": round(auroc(scores, np.concatenate(swapped_first)), 6),
    }
    info = learned.info
    return _Built(alignment, scores, null_all, holdout, oof, fusion, info)


def _untrained(alignment: Alignment, image: np.ndarray, text: np.ndarray, p: AlignParams) -> _Built:
    """An alignment that learned nothing from the pairs: scored and measured on all of them."""
    if len(image) < 2:
        raise ValueError(f"{len(image)} pair(s): calibrating a threshold needs at least 2")
    holdout = {**evaluate_alignment(alignment, image, text, p), "loss": None}
    scores = alignment.pair_scores(image, text)
    return _Built(alignment, scores, _null(alignment, image, text, p.seed), holdout)


def _null(alignment: Alignment, image: np.ndarray, text: np.ndarray, seed: int) -> np.ndarray:
    """Scores of the images with ``NULL_DERANGEMENTS`` seeded derangements of the captions."""
    if len(image) < 2:
        return np.zeros(0)
    return np.concatenate(
        [
            alignment.pair_scores(image, text[derangement(len(text), seed + 7919 * r)])
            for r in range(NULL_DERANGEMENTS)
        ]
    )


def _concept(
    params: AlignStageParams,
    meta: dict[str, Any],
    image: np.ndarray,
    text: np.ndarray,
) -> Alignment:
    from cmrops.align.concept import build_concept_alignment

    enc = {s: str((meta.get(s) or {}).get("encoder")) for s in ("image", "text")}
    return build_concept_alignment(
        enc["image"], enc["text"], params.concept, image=image, text=text
    )


def resolve_kind(
    kind: Literal["auto", "learned", "encoder", "concept", "fused"],
    aligned: tuple[bool, str],
    image_dim: int,
    text_dim: int,
    meta: dict[str, Any] | None = None,
    pairs: int | None = None,
) -> tuple[Kind, str]:
    """``align.kind`` made concrete, and why: ``auto`` is the encoders' own space when
    ``features/meta.json`` says one aligned dual encoder embedded both sides (``aligned``, from
    :func:`cmrops.labels.zeroshot.alignment`) in one width; else, when the image encoder has an
    ImageNet head (``meta``), the concept bridge fused with learned heads (the bridge alone below
    ``MIN_LEARNED_PAIRS`` pairs); else a learned alignment."""
    ok, why = aligned
    if kind != "auto":
        return kind, why
    if ok and image_dim != text_dim:
        return "learned", f"{why}, but image features are {image_dim}-d and text {text_dim}-d"
    if ok:
        return "encoder", why
    image_encoder = ((meta or {}).get("image") or {}).get("encoder")
    if image_encoder in CLASSIFIER_ENCODERS:
        if pairs is not None and pairs < MIN_LEARNED_PAIRS:
            return "concept", f"{why}; {pairs} pairs are too few to learn from"
        return "fused", f"{why}; {image_encoder} has an ImageNet head for the concept bridge"
    return "learned", why


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
        arr = io.read_npy(f, mmap_mode="r")
        if keep.any() and rows[keep].max() >= len(arr):
            raise ValueError(f"{f}: has {len(arr)} rows but samples.parquet refers to more")
        arrays.append(np.asarray(arr[rows[keep]], dtype=np.float32))
    return [s for s, k in zip(ids, keep, strict=True) if k], arrays[0], arrays[1]


def _write_null(path: Path, null: np.ndarray) -> None:
    import pyarrow as pa

    io.write_parquet(path, pa.table({"score": pa.array(np.asarray(null, np.float64))}))


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


def load_null(align_dir: str | os.PathLike[str] | None) -> np.ndarray | None:
    """The align stage's null scores (``null_scores.parquet``), or None when it wrote none."""
    if align_dir is None:
        return None
    path = Path(align_dir) / NULL_SCORES
    if not path.is_file():
        return None
    return np.asarray(io.read_parquet(path, columns=["score"])["score"].to_numpy(), np.float64)


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
