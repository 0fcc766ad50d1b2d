"""Prior and learned alignment fused: small sets get the prior's space, large ones lose nothing.

:func:`fuse` makes one :class:`~cmrops.align.Alignment` (``kind == "fused"``) whose pair score is
``w * prior + (1 - w) * learned`` (cosines in each space): each side is the concatenation
``[sqrt(w) * prior(x), sqrt(1 - w) * learned(x)]``, a unit vector whenever both parts are, so the
cosine of two fused vectors is exactly that weighted sum and every consumer (mismatch scores,
zero-shot labels, search, the float baseline) uses it unchanged.

The weight is chosen on pairs the learned part never trained on (:func:`choose_weight`): for
every candidate ``w`` (0, 0.05, ..., 1) the mean reciprocal rank of the true partner, image ->
text and text -> image averaged, in each fold's held-out gallery (at most 1,000 pairs each), over
the folds pooled; the best ``w`` wins (ties to the larger prior weight, the one that needs no
training data) when it beats the better part alone (``w = 0``, the learned heads, or ``w = 1``,
the prior) by more than one standard error of the per-pair differences, else that part: a mix
the held-out pairs cannot tell from it would only add the noise of the choice (on data where
the prior means little, it cost up to 0.004 of R@K). With no learned part (too few pairs) the
prior is used alone. The prior here is the concept bridge (:mod:`cmrops.align.concept`), which
has used no pair at all, so it needs no held-out data of its own.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cmrops.align.model import SIDES, Alignment, SideMap

#: Candidate prior weights.
WEIGHTS = tuple(round(0.05 * k, 2) for k in range(21))
#: Held-out galleries are cut to at most this many pairs (as the learned R@1).
GALLERY = 1000


@dataclass(frozen=True)
class FusedHead:
    """``[sqrt(w_k) * part_k(x)]`` concatenated over the parts (weights sum to 1)."""

    parts: tuple[SideMap, ...]
    weights: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.parts) != len(self.weights) or not self.parts:
            raise ValueError("a fused head needs one weight per part")
        if len({p.in_dim for p in self.parts}) != 1:
            raise ValueError(f"fused parts read different widths: {[p.in_dim for p in self.parts]}")
        if any(w < 0 for w in self.weights) or not math.isclose(sum(self.weights), 1.0):
            raise ValueError(f"fusion weights must be >= 0 and sum to 1, got {self.weights}")

    @property
    def in_dim(self) -> int:
        return int(self.parts[0].in_dim)

    @property
    def out_dim(self) -> int:
        return int(sum(p.out_dim for p in self.parts))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return np.concatenate(
            [
                np.float32(math.sqrt(w)) * p(x)
                for p, w in zip(self.parts, self.weights, strict=True)
            ],
            axis=1,
        )


def fuse(prior: Alignment, learned: Alignment, weight: float) -> Alignment:
    """The fused alignment ``weight * prior + (1 - weight) * learned`` (module docstring)."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"the prior's weight must be in [0, 1], got {weight}")
    w = (float(weight), 1.0 - float(weight))
    heads: dict[str, SideMap] = {s: FusedHead((prior.heads[s], learned.heads[s]), w) for s in SIDES}
    info = {
        "kind": "fused",
        "prior_weight": round(float(weight), 6),
        "score": "prior_weight * prior cosine + (1 - prior_weight) * learned cosine",
        "parts": [dict(prior.info), dict(learned.info)],
    }
    return Alignment("fused", heads, info)


def _reciprocal_ranks(sim: np.ndarray) -> np.ndarray:
    """Per pair, the reciprocal rank of its true partner, image -> text and text -> image
    averaged; ties count as the expected rank under a random order."""
    d = np.diag(sim)[:, None]
    by_text = np.ascontiguousarray(sim.T)  # row j: text j against every image
    rank_rows = (sim > d).sum(1) + ((sim == d).sum(1) + 1) / 2
    rank_cols = (by_text > d).sum(1) + ((by_text == d).sum(1) + 1) / 2
    return (1.0 / rank_rows + 1.0 / rank_cols) / 2


def choose_weight(
    prior: Alignment,
    folds: Sequence[tuple[Alignment, np.ndarray, np.ndarray]],
) -> tuple[float, dict[str, Any]]:
    """The prior weight with the best held-out mean reciprocal rank (module docstring).

    ``folds``: ``(learned model, image rows, text rows)`` with pairs that model never trained
    on. Returns the weight and a record: the candidates' pooled MRR and the held-out pairs."""
    if not folds:
        raise ValueError("choose_weight needs at least one held-out fold")
    per_pair: list[np.ndarray] = []  # (candidates, pairs of a block)
    for model, image, text in folds:
        blocks = np.array_split(np.arange(len(image)), max(1, -(-len(image) // GALLERY)))
        for b in blocks:
            if len(b) < 2:
                continue
            sp = prior.image(image[b]).astype(np.float64) @ prior.text(text[b]).astype(np.float64).T
            sl = model.image(image[b]).astype(np.float64) @ model.text(text[b]).astype(np.float64).T
            per_pair.append(np.stack([_reciprocal_ranks(w * sp + (1 - w) * sl) for w in WEIGHTS]))
    if not per_pair:
        raise ValueError("choose_weight: the held-out folds hold fewer than 2 pairs each")
    rr = np.concatenate(per_pair, axis=1)
    pairs = rr.shape[1]
    mrr = rr.mean(axis=1)
    top = max(range(len(WEIGHTS)), key=lambda k: (round(mrr[k], 9), WEIGHTS[k]))
    # one-standard-error rule: a mix whose gain over the better part alone (the learned heads,
    # w = 0, or the prior, w = 1) is within one standard error of the paired per-pair
    # differences is the noise of the choice; that part is kept as it is
    part = 0 if mrr[0] >= mrr[-1] else len(WEIGHTS) - 1
    gain = rr[top] - rr[part]
    se = float(gain.std(ddof=1) / math.sqrt(pairs)) if pairs > 1 else 0.0
    best = top if float(gain.mean()) > se else part
    record = {
        "prior_weight": WEIGHTS[best],
        "rule": (
            "best mean reciprocal rank (both directions) on pairs the learned part never trained "
            "on, candidates 0, 0.05, ..., 1 (ties to the larger prior weight), unless it beats "
            "the better part alone (0: learned, 1: prior) by at most one standard error of the "
            "paired per-pair differences: then that part"
        ),
        "holdout_pairs": pairs,
        "folds": len(folds),
        "mrr": {f"{w:g}": round(float(m), 6) for w, m in zip(WEIGHTS, mrr, strict=True)},
        "best_by_mrr": WEIGHTS[top],
        "better_part": WEIGHTS[part],
        "gain_over_part": {"mean": round(float(gain.mean()), 6), "se": round(se, 6)},
    }
    return WEIGHTS[best], record
