"""The ``mismatch`` rule: an image and a caption that do not describe each other."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from cmrops.cleaning.rules.base import CleanData, NotRun, Outcome, Rule


@dataclass(frozen=True)
class MismatchRule:
    """``clean.mismatch``."""

    enabled: bool = True
    # cosine in the align stage's space; auto: the threshold the align stage calibrated
    min_similarity: float | Literal["auto"] = "auto"

    def __post_init__(self) -> None:
        if self.min_similarity != "auto" and not -1.0 <= self.min_similarity <= 1.0:
            raise ValueError(
                f"min_similarity must be 'auto' or in [-1, 1], got {self.min_similarity!r}"
            )


@dataclass
class Similarities:
    """The measure of :class:`Mismatch`: the cosine of each pair (NaN: not measured)."""

    sim: np.ndarray
    measured: np.ndarray  # rows with both embeddings
    fresh: np.ndarray  # measured here (the align stage did not score them)
    null: np.ndarray | None  # the align stage's null scores (auto only; None: none written)
    align_cut: float | None  # the align stage's calibrated cut (older align outputs, no null)
    kind: str  # the alignment's kind
    why: str  # what the alignment is (its encoder)


class Mismatch(Rule[MismatchRule, Similarities]):
    """The image-caption cosine in the align stage's shared space below ``min_similarity``.

    Measures the cosine of each sample's image and caption embeddings in the space of
    ``<align>/model`` (:mod:`cmrops.stages.align`: the concept bridge fused with learned heads,
    learned heads, or the identity for an aligned dual encoder): the align stage's out-of-fold
    pair score where it scored the sample, else the saved model's score. ``auto`` (default)
    reads the cut from these pairs' scores against the align stage's null (the same images with
    other samples' captions, ``null_scores.parquet``): a mixture fit and a gap test
    (:mod:`cmrops.cleaning.mismatch`) flag the pairs likelier mismatched than correct, and none
    when the scores show no null-like component - so clean data loses no pair to a fixed flag
    rate; the fit is under ``report.calibration``. A number is a cosine in that space. Without
    an alignment (``align`` not run, or no embeddings) the rule is *not run*, with the reason.
    Evidence: ``similarity``; the cosines also score the rule's AUROC on the synthetic set's
    planted swaps."""

    name = "mismatch"
    params_type = MismatchRule

    def threshold(self, data: CleanData) -> dict[str, Any]:
        return {"min_similarity": self.params.min_similarity}

    def measure(self, data: CleanData) -> Similarities | NotRun:
        p = self.params
        loaded = data.alignment
        image_emb, text_emb = data.image_emb, data.text_emb
        if loaded.alignment is None or image_emb is None or text_emb is None:
            return NotRun(
                loaded.why if loaded.alignment is None else "preprocess wrote no embeddings"
            )
        null = data.null_scores if p.min_similarity == "auto" else None
        if p.min_similarity == "auto" and null is None and loaded.threshold is None:
            return NotRun(
                f"min_similarity: auto needs the align stage's null scores ({loaded.why}); "
                "run `cmrops align` and pass --align, or set clean.mismatch.min_similarity"
            )
        sample_ids = data.columns["sample_id"]
        sim = np.full(len(image_emb), np.nan)
        measured = ~(np.isnan(image_emb).any(axis=1) | np.isnan(text_emb).any(axis=1))
        known = loaded.pair_scores or {}  # the align stage's (out-of-fold) scores, by sample_id
        fresh = measured & np.array([s not in known for s in sample_ids], bool)
        for i in np.flatnonzero(measured & ~fresh):
            sim[i] = known[sample_ids[i]]
        if fresh.any():  # samples the align stage did not see: the saved model scores them
            sim[fresh] = loaded.alignment.pair_scores(image_emb[fresh], text_emb[fresh])
        return Similarities(
            sim, measured, fresh, null, loaded.threshold, loaded.alignment.kind, loaded.why
        )

    def decide(self, data: CleanData, measured: Similarities) -> Outcome:
        from cmrops.cleaning.mismatch import calibrate_mismatch

        m, sim, p = measured, measured.sim, self.params
        calibration = None
        if p.min_similarity != "auto":
            cut: float | None = float(p.min_similarity)
        elif m.null is not None:  # the flag rate read from these pairs' scores against the null
            calibration = calibrate_mismatch(sim[m.measured], m.null)
            cut = calibration["threshold"]
        else:  # an align output without null scores (older cmrops): its calibrated cut
            cut = m.align_cut
        thr: dict[str, Any] = {"min_similarity": None if cut is None else round(cut, 6)}
        if p.min_similarity == "auto":
            thr["calibrated"] = True
        flagged = m.measured & (sim < cut) if cut is not None else np.zeros(len(sim), bool)
        r = Outcome(self.name, "run", True, thr, flagged=flagged)
        r.scores = sim
        for i in np.flatnonzero(flagged):
            r.evidence[int(i)] = {"similarity": round(float(sim[i]), 4)}
            r.detail[int(i)] = f"image-caption similarity {sim[i]:.3f} below {cut:.4f}"
        ok = sim[m.measured]
        r.report = {
            "alignment": m.kind,
            "encoder": m.why,
            "scored_by_align_stage": int((m.measured & ~m.fresh).sum()),
            "scored_here": int(m.fresh.sum()),
            "not_measured": int((~m.measured).sum()),
            "similarity_quantiles": (
                {str(q): round(float(np.quantile(ok, q)), 4) for q in (0.01, 0.05, 0.25, 0.5)}
                if len(ok) else {}
            ),
        }  # fmt: skip
        if calibration is not None:
            r.report["calibration"] = calibration
        return r
