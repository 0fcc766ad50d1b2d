"""The ``label_disagreement`` rule: two labelling methods that disagree about a sample."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from cmrops.cleaning.rules.base import CleanData, NotRun, Outcome, Rule


@dataclass(frozen=True)
class LabelDisagreementRule:
    """``clean.label_disagreement``."""

    enabled: bool = True
    drop: bool = True  # false: flagged and reported only
    methods: tuple[str, str] = ("provided", "keyword")  # label-stage methods compared
    # flagged when |A & B| / min(|A|, |B|) <= this (0: disjoint; 0.34: a third or less shared)
    max_overlap: float = 0.34

    def __post_init__(self) -> None:
        if len(self.methods) != 2 or self.methods[0] == self.methods[1]:
            raise ValueError(f"methods: name two different methods, got {list(self.methods)}")
        if not 0.0 <= self.max_overlap < 1.0:
            raise ValueError(f"max_overlap must be in [0, 1), got {self.max_overlap}")


@dataclass
class Overlaps:
    """The measure of :class:`LabelDisagreement`: each sample's two label sets and their
    overlap coefficient (NaN where either set is empty: not compared)."""

    a: list[Any]
    b: list[Any]
    overlap: np.ndarray


class LabelDisagreement(Rule[LabelDisagreementRule, Overlaps]):
    """The labels of two methods share at most ``max_overlap`` of the smaller set.

    Measures, for the labels the two ``methods`` of the label stage passed (default: the
    source's ``provided`` labels and the caption ``keyword`` labels, from ``evidence.parquet``),
    both non-empty, the overlap coefficient ``|A & B| / min(|A|, |B|)`` (0 = disjoint). Captions
    name a few of an image's objects, so a caption set inside the provided set is agreement
    (overlap 1), which a Jaccard index would punish. A cheap, explainable signal of a caption
    swapped onto another image; drops only with ``drop: true``. The default 0.34 (a third or less
    shared) flags none of the 151 comparable COCO sample photos and has precision 1.0 on the
    synthetic set (0.5 would flag 8 COCO photos). Evidence: both label sets and ``overlap``; not
    run without the label stage's output or without evidence of both methods."""

    name = "label_disagreement"
    params_type = LabelDisagreementRule

    def drops(self, data: CleanData) -> bool:
        return self.params.drop

    def threshold(self, data: CleanData) -> dict[str, Any]:
        return {"methods": list(self.params.methods), "max_overlap": self.params.max_overlap}

    def measure(self, data: CleanData) -> Overlaps | NotRun:
        labels, n = data.labels, data.n
        a, b = self.params.methods
        if not labels.available:
            return NotRun(labels.why)
        missing = [m for m in (a, b) if m not in labels.methods_present]
        if missing:
            return NotRun(
                f"the label stage's evidence.parquet has no {' / '.join(missing)} candidates "
                "(method not in label.auto_methods, or no evidence.parquet)"
            )
        la = labels.by_method.get(a, [set() for _ in range(n)])
        lb = labels.by_method.get(b, [set() for _ in range(n)])
        overlap = np.full(n, np.nan)
        for i in range(n):
            if la[i] and lb[i]:
                overlap[i] = len(la[i] & lb[i]) / min(len(la[i]), len(lb[i]))
        return Overlaps(la, lb, overlap)

    def decide(self, data: CleanData, measured: Overlaps) -> Outcome:
        p = self.params
        a, b = p.methods
        la, lb = measured.a, measured.b
        compared = ~np.isnan(measured.overlap)
        flagged = compared & (np.nan_to_num(measured.overlap, nan=1.0) <= p.max_overlap)
        r = Outcome(self.name, "run", p.drop, self.threshold(data))
        for i in np.flatnonzero(flagged).tolist():
            overlap = float(measured.overlap[i])
            r.evidence[i] = {a: sorted(la[i]), b: sorted(lb[i]), "overlap": round(overlap, 4)}
            r.detail[i] = (
                f"{a} labels {sorted(la[i])} and {b} labels {sorted(lb[i])} overlap "
                f"{overlap:.2f} <= {p.max_overlap}"
            )
        r.flagged = flagged
        r.report = {"compared": int(compared.sum()), "reported_only": not p.drop}
        return r
