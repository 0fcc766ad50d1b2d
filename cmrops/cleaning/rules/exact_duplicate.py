"""The ``exact_duplicate`` rule: the same image bytes twice."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cmrops.cleaning import dedup
from cmrops.cleaning.rules.base import CleanData


@dataclass(frozen=True)
class ExactDuplicateRule:
    """``clean.exact_duplicate``."""

    enabled: bool = True


class ExactDuplicate:
    """The same image bytes (SHA-256) as the kept representative of its group.

    Measures the edges between samples with equal image SHA-256. The decision is the duplicate
    resolution's (:mod:`cmrops.cleaning.rules.duplicates`): one representative per group of the
    image graph, the others quarantined - as ``exact_duplicate`` when their bytes equal the
    representative's. Evidence: the kept sample, the group, the distances and resolutions."""

    name = "exact_duplicate"
    params_type = ExactDuplicateRule

    def __init__(self, params: ExactDuplicateRule) -> None:
        self.params = params

    def threshold(self, data: CleanData) -> dict[str, Any]:
        return {"sha256": "identical"}

    def measure(self, data: CleanData) -> dedup.Edges:
        if not self.params.enabled:
            return dedup.Edges.empty()
        return dedup.exact_edges(data.columns["sha256"])
