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
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cmrops.align.metrics import auroc, calibrate_threshold, swapped_scores
from cmrops.align.params import AlignParams
from cmrops.align.train import MIN_PAIRS, fit_split


def folds(n: int, holdout: float, seed: int) -> list[np.ndarray]:
    """``k = max(2, round(1 / holdout))`` sorted, disjoint row sets covering ``range(n)``."""
    k = max(2, round(1.0 / holdout))
    if n < k * 2:
        raise ValueError(f"{n} pairs are too few for {k} folds of at least 2")
    perm = np.random.default_rng([seed, 0xF0]).permutation(n)
    return [np.sort(part) for part in np.array_split(perm, k)]


def out_of_fold_scores(
    image: np.ndarray, text: np.ndarray, params: AlignParams, *, progress: bool = False
) -> tuple[np.ndarray, dict[str, Any]]:
    """``(n,)`` float64 out-of-fold scores of the true pairs, and a summary: the folds, the
    pooled swapped-caption AUROC and the calibrated threshold (see module docstring)."""
    image = np.asarray(image, dtype=np.float32)
    text = np.asarray(text, dtype=np.float32)
    if len(image) < max(MIN_PAIRS, 4):
        raise ValueError(f"{len(image)} pairs: out-of-fold scores need at least {MIN_PAIRS}")
    scores = np.full(len(image), np.nan)
    swapped_all = []
    parts = folds(len(image), params.holdout, params.seed)
    every = np.arange(len(image))
    for k, hold in enumerate(parts):
        train = np.setdiff1d(every, hold, assume_unique=True)
        model, _ = fit_split(image, text, train, hold, params, progress=progress)
        true, swapped = swapped_scores(model, image[hold], text[hold], params.seed + k)
        scores[hold] = true
        swapped_all.append(swapped)
    swapped_pool = np.concatenate(swapped_all)
    summary = {
        "folds": len(parts),
        "pairs": len(image),
        "swapped_auroc": round(auroc(scores, swapped_pool), 6),
        "calibration": calibrate_threshold(scores, swapped_pool, params.max_flag_rate),
    }
    return scores, summary
