"""Held-out measurements of an alignment: AUROC on swapped captions, recall@1, a threshold.

* :func:`auroc` - rank-based (Mann-Whitney U / (n_pos * n_neg)), ties counted half.
* :func:`derangement` - a seeded permutation with no fixed point (one random cycle), so every
  image is paired with the caption of *another* sample.
* :func:`swapped_caption_auroc` - true pairs (positives) against the same images with deranged
  captions (negatives), scored by :meth:`Alignment.pair_scores`.
* :func:`recall_at_1` - image->text and text->image R@1 over a gallery of the given pairs.
* :func:`calibrate_threshold` - the mismatch threshold: among the candidate cut points (every
  observed score), the one with the largest ``TPR - FPR`` (Youden's J; TPR = swapped pairs below,
  FPR = true pairs below) whose FPR is at most ``max_flag_rate``. True pairs of a real data set
  hold some mismatches too, so the FPR cap bounds how many kept samples a cut can cost.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from cmrops.align.model import Alignment


def auroc(positive: np.ndarray, negative: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties counted half."""
    pos = np.asarray(positive, dtype=np.float64).ravel()
    neg = np.asarray(negative, dtype=np.float64).ravel()
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError(f"auroc needs positives and negatives, got {len(pos)} and {len(neg)}")
    scores = np.concatenate([pos, neg])
    if not np.isfinite(scores).all():
        raise ValueError("auroc: scores hold NaN or infinity")
    order = np.argsort(scores, kind="stable")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    # average rank (1-based) within each run of equal scores
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], len(scores)]
    avg = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(avg, ends - starts)
    u = ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2.0
    return float(u / (len(pos) * len(neg)))


def derangement(n: int, seed: int) -> np.ndarray:
    """Indices ``d`` with ``d[i] != i`` for every ``i``: one seeded random cycle over ``n``."""
    if n < 2:
        raise ValueError(f"a derangement needs at least 2 items, got {n}")
    perm = np.random.default_rng([seed, 0x5A]).permutation(n)
    d = np.empty(n, dtype=np.int64)
    d[perm] = np.roll(perm, -1)
    return d


def swapped_scores(
    alignment: Alignment, image: np.ndarray, text: np.ndarray, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Scores of the true pairs and of the same images with deranged captions."""
    if len(image) != len(text):
        raise ValueError(f"{len(image)} images but {len(text)} texts: rows must be pairs")
    true = alignment.pair_scores(image, text)
    swapped = alignment.pair_scores(image, text[derangement(len(text), seed)])
    return true, swapped


def swapped_caption_auroc(
    alignment: Alignment, image: np.ndarray, text: np.ndarray, seed: int
) -> float:
    """AUROC of true pairs against swapped captions (a seeded derangement), see module doc."""
    true, swapped = swapped_scores(alignment, image, text, seed)
    return auroc(true, swapped)


def recall_at_1(alignment: Alignment, image: np.ndarray, text: np.ndarray) -> dict[str, float]:
    """``{"i2t": ..., "t2i": ...}``: share of rows whose own partner is the top match (ties
    broken towards the lower index, as ``argmax`` does)."""
    zi, zt = alignment.image(image), alignment.text(text)
    sim = zi.astype(np.float64) @ zt.astype(np.float64).T
    rows = np.arange(len(sim))
    return {
        "i2t": float((sim.argmax(axis=1) == rows).mean()),
        "t2i": float((sim.argmax(axis=0) == rows).mean()),
    }


def calibrate_threshold(
    true: np.ndarray, swapped: np.ndarray, max_flag_rate: float
) -> dict[str, Any]:
    """The mismatch cut (a pair is flagged when its score is below it), see module docstring.

    Returns ``{"threshold", "tpr", "fpr", "rule"}``; ``tpr`` is the share of swapped pairs below
    the threshold, ``fpr`` the share of true pairs below it."""
    t = np.sort(np.asarray(true, dtype=np.float64))
    s = np.sort(np.asarray(swapped, dtype=np.float64))
    candidates = np.unique(np.concatenate([t, s]))
    fpr = np.searchsorted(t, candidates, side="left") / len(t)
    tpr = np.searchsorted(s, candidates, side="left") / len(s)
    ok = fpr <= max_flag_rate
    j = np.where(ok, tpr - fpr, -np.inf)
    best = int(np.argmax(j))  # first (lowest) threshold of the best J
    return {
        "threshold": round(float(candidates[best]), 6),
        "tpr": round(float(tpr[best]), 6),
        "fpr": round(float(fpr[best]), 6),
        "rule": (
            f"largest TPR - FPR on held-out true vs swapped pairs with FPR <= {max_flag_rate} "
            "(flag = score below the threshold)"
        ),
    }
