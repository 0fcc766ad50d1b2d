"""Out-of-fold pair scores: every pair scored by an alignment that never trained on it.

A learned alignment fits its training pairs better than unseen ones, so scoring a data set's own
pairs with the model trained on them would hide a mismatched pair it memorised (measured on the
default synthetic set: the planted swapped captions of the training pairs score much closer to
the true ones than those held out). :func:`out_of_fold_scores` cuts a seeded permutation of the
pairs into ``k`` folds (``k = round(1 / holdout)``, at least 2), trains one alignment per fold on
the other folds (early stopping on the fold itself, as :func:`~cmrops.align.fit_alignment` does on
its held-out slice) and scores the fold's pairs with it: the true pairs, and the same images with
captions of other pairs of the same fold (a seeded derangement). The pooled out-of-fold scores
give the mismatch threshold (:func:`~cmrops.align.metrics.calibrate_threshold`) and the pair
score the clean stage flags on. Deterministic like the training it repeats.

With a ``prior`` (the concept bridge, which used no pair), the fold models also choose the
prior's fusion weight (:func:`~cmrops.align.fusion.choose_weight`, on every pair, each by the
model that never saw it), and the out-of-fold scores are those of the fused alignment:
``w * prior + (1 - w) * fold model``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from cmrops.align.fusion import choose_weight, fuse
from cmrops.align.metrics import auroc, calibrate_threshold, swapped_scores
from cmrops.align.model import Alignment
from cmrops.align.params import AlignParams
from cmrops.align.train import MIN_PAIRS, check_pairs, evaluate, fit_splits, split_pairs


def folds(n: int, holdout: float, seed: int, groups: np.ndarray | None = None) -> list[np.ndarray]:
    """``k = max(2, round(1 / holdout))`` sorted, disjoint row sets covering ``range(n)``.
    With ``groups`` (one id per row, e.g. the image of several caption pairs), the rows of a
    group stay in one fold, so no fold model has seen a held-out pair's image."""
    k = max(2, round(1.0 / holdout))
    if n < k * 2:
        raise ValueError(f"{n} pairs are too few for {k} folds of at least 2")
    rng = np.random.default_rng([seed, 0xF0])
    if groups is None:
        return [np.sort(part) for part in np.array_split(rng.permutation(n), k)]
    _, index = np.unique(np.asarray(groups), return_inverse=True)
    n_groups = int(index.max()) + 1
    if n_groups < k:
        raise ValueError(f"{n_groups} groups are too few for {k} folds")
    parts = np.array_split(rng.permutation(n_groups), k)
    return [np.flatnonzero(np.isin(index, part)) for part in parts]


@dataclass(frozen=True)
class Fold:
    """One fold: the model trained on the other folds and the rows it never saw."""

    model: Alignment
    hold: np.ndarray


def fit_folds(
    image: np.ndarray,
    text: np.ndarray,
    params: AlignParams,
    *,
    progress: bool = False,
    groups: np.ndarray | None = None,
) -> list[Fold]:
    """One learned alignment per fold, each trained on the other folds (module docstring);
    ``groups`` keeps each group's rows in one fold (:func:`folds`)."""
    splits = fold_splits(len(image), params, groups)
    fitted = fit_splits(image, text, splits, params, progress=progress)
    return [Fold(model, hold) for (model, _), (_, hold) in zip(fitted, splits, strict=True)]


def fold_splits(
    n: int, params: AlignParams, groups: np.ndarray | None = None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(train rows, held-out rows)`` of each fold model (:func:`folds`)."""
    if n < max(MIN_PAIRS, 4):
        raise ValueError(f"{n} pairs: out-of-fold scores need at least {MIN_PAIRS}")
    every = np.arange(n)
    return [
        (np.setdiff1d(every, hold, assume_unique=True), hold)
        for hold in folds(n, params.holdout, params.seed, groups)
    ]


def fit_with_folds(
    image: np.ndarray,
    text: np.ndarray,
    params: AlignParams,
    *,
    progress: bool = False,
    cross_fit: bool = True,
    groups: np.ndarray | None = None,
) -> tuple[Alignment, dict[str, Any], list[Fold]]:
    """:func:`~cmrops.align.fit_alignment` on all the pairs, its held-out metrics and, with
    ``cross_fit``, the fold models of :func:`fit_folds` (else the one model on its own held-out
    split): ``1 + folds`` fits, side by side where the thread budget allows
    (:func:`~cmrops.align.train.fit_splits`)."""
    image, text = check_pairs(image, text)
    whole = split_pairs(len(image), params.holdout, params.seed)
    splits = [whole, *(fold_splits(len(image), params, groups) if cross_fit else [])]
    fitted = fit_splits(image, text, splits, params, progress=progress)
    learned, metrics = fitted[0]
    if not cross_fit:
        return learned, metrics, [Fold(learned, whole[1])]
    folds_fitted = zip(fitted[1:], splits[1:], strict=True)
    return learned, metrics, [Fold(model, hold) for (model, _), (_, hold) in folds_fitted]


def out_of_fold_scores(
    image: np.ndarray,
    text: np.ndarray,
    params: AlignParams,
    *,
    progress: bool = False,
    prior: Alignment | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """``(n,)`` float64 out-of-fold scores of the true pairs, and a summary: the folds, the
    pooled swapped-caption AUROC, the calibrated threshold and, with a ``prior``, the fusion
    weight chosen (``fusion``; see module docstring)."""
    image = np.asarray(image, dtype=np.float32)
    text = np.asarray(text, dtype=np.float32)
    parts = fit_folds(image, text, params, progress=progress)
    fusion = None
    weight = 0.0
    if prior is not None:
        weight, fusion = choose_weight(
            prior, [(f.model, image[f.hold], text[f.hold]) for f in parts]
        )
    scores = np.full(len(image), np.nan)
    swapped_all = []
    for k, f in enumerate(parts):
        model = f.model if prior is None else fuse(prior, f.model, weight)
        true, swapped = swapped_scores(model, image[f.hold], text[f.hold], params.seed + k)
        scores[f.hold] = true
        swapped_all.append(swapped)
    swapped_pool = np.concatenate(swapped_all)
    summary: dict[str, Any] = {
        "folds": len(parts),
        "pairs": len(image),
        "swapped_auroc": round(auroc(scores, swapped_pool), 6),
        "calibration": calibrate_threshold(scores, swapped_pool, params.max_flag_rate),
    }
    if fusion is not None:
        summary["fusion"] = fusion
    return scores, summary


@dataclass(frozen=True)
class FusedFit:
    """:func:`fit_fused`'s result: the fused alignment and what went into it."""

    alignment: Alignment  # prior fused with ``learned`` (``kind == "fused"``)
    learned: Alignment  # the heads trained on the training split of all pairs
    holdout: dict[str, Any]  # the fused alignment's metrics on that split's held-out pairs
    folds: list[Fold]  # the out-of-fold models that chose the weight
    fusion: dict[str, Any]  # the weight and how it was chosen


def fit_fused(
    image: np.ndarray,
    text: np.ndarray,
    prior: Alignment,
    params: AlignParams,
    *,
    progress: bool = False,
    cross_fit: bool = True,
    groups: np.ndarray | None = None,
) -> FusedFit:
    """Heads trained on the pairs (:func:`~cmrops.align.fit_alignment`), fused with ``prior``
    at the weight the out-of-fold models choose (:func:`~cmrops.align.fusion.choose_weight`);
    with ``cross_fit`` false, at the weight the held-out split of the one model chooses (one
    training instead of ``1 + folds``; noisier with few pairs). ``groups`` (one id per pair,
    e.g. its image when an image has several caption pairs) keeps a group in one fold: a fold
    model that saw a held-out pair's image would make the learned part look better than it
    is on new images."""
    image = np.asarray(image, dtype=np.float32)
    text = np.asarray(text, dtype=np.float32)
    learned, _, parts = fit_with_folds(
        image, text, params, progress=progress, cross_fit=cross_fit, groups=groups
    )
    hold = split_pairs(len(image), params.holdout, params.seed)[1]
    weight, record = choose_weight(prior, [(f.model, image[f.hold], text[f.hold]) for f in parts])
    fused = fuse(prior, learned, weight)
    fused.info["fusion"] = record
    fused.info["data_sha256"] = learned.info.get("data_sha256")
    fused.info["params"] = learned.info.get("params")
    holdout = {**evaluate(fused, image[hold], text[hold], params), "loss": None}
    fused.info["holdout"] = holdout
    return FusedFit(fused, learned, holdout, parts, record)
