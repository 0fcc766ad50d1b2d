"""The ``irrelevant`` rule: a sample about nothing in the vocabulary."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from cmrops.cleaning.rules.base import CleanData, NotRun, Outcome, Rule


@dataclass(frozen=True)
class IrrelevantRule:
    """``clean.irrelevant``."""

    enabled: bool = True


class Irrelevant(Rule[IrrelevantRule, np.ndarray]):
    """No effective label from the vocabulary after labelling.

    Measures the number of effective labels (``labels.parquet`` of the label stage, restricted
    to ``vocabulary.json``) of each sample; flags the samples with none. Evidence: the source's
    ``provided`` labels. Reported, not dropped, when the label stage induced the vocabulary from
    the captions (its words are the commonest ones; a sample without them is rarer, not
    off-topic). Not run without the label stage's output (and an error when the rule is enabled
    but no ``--labelled`` folder is given)."""

    name = "irrelevant"
    params_type = IrrelevantRule

    def threshold(self, data: CleanData) -> dict[str, Any]:
        return {"vocabulary_size": len(data.labels.vocabulary)}

    def measure(self, data: CleanData) -> np.ndarray | NotRun:
        if not data.labels.available:
            return NotRun(data.labels.why)
        return np.array([len(s) for s in data.labels.effective], dtype=np.int64)

    def decide(self, data: CleanData, measured: np.ndarray) -> Outcome:
        flagged = measured == 0
        # An induced vocabulary is the captions' commonest words: a sample that uses none of them
        # is rarer, not off-topic - flagged and reported, never dropped.
        drops = not data.labels.induced
        r = Outcome(self.name, "run", drops, self.threshold(data), flagged=flagged)
        provided = data.columns["provided"]
        for i in np.flatnonzero(flagged):
            i = int(i)
            r.evidence[i] = {"labels": [], "provided": sorted(provided[i])}
            r.detail[i] = "no label from the vocabulary after labelling"
        r.report = {"samples": len(measured)}
        if data.labels.induced:
            r.report["reported_only"] = (
                "the vocabulary was induced from the captions: a sample none of its words labels "
                "is not off-topic, so it is not dropped"
            )
        return r
