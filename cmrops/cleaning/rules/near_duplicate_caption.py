"""The ``near_duplicate_caption`` report: the same caption on several samples."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from cmrops.cleaning.graph import collapse_identical, pairs_within
from cmrops.cleaning.rules.base import CleanData


@dataclass(frozen=True)
class NearCaptionRule:
    """``clean.near_duplicate_caption``."""

    enabled: bool = True
    radius: int = 3  # caption SimHash Hamming radius, inclusive

    def __post_init__(self) -> None:
        if not 0 <= self.radius <= 64:
            raise ValueError(f"radius must be in [0, 64], got {self.radius}")


class NearDuplicateCaption:
    """Caption SimHash within ``radius``: reported, never a quarantine reason on its own.

    Measures the pairs of samples whose caption SimHash (preprocess) is within ``radius`` (a
    SimHash of 0 - no caption features - is never a duplicate). The metrics report the caption
    groups, the pairs, and the pairs whose images differ (a caption swapped onto another picture,
    or a generic caption), with examples; ``groups.parquet`` records every caption group. It
    drops a sample only through ``near_duplicate_image.drop: with_caption``."""

    name = "near_duplicate_caption"
    params_type = NearCaptionRule

    def __init__(self, params: NearCaptionRule) -> None:
        self.params = params

    def threshold(self, data: CleanData) -> dict[str, Any]:
        return {"radius": self.params.radius}

    def measure(self, data: CleanData) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        """The caption pairs ``(m, 2)`` within the radius, their distances, and a report (the
        classes of equal SimHashes too large to list their pairs, linked to their first row)."""
        simhash = data.columns["simhash"]
        cap_rows = np.flatnonzero(simhash != 0)
        if not self.params.enabled:
            return np.zeros((0, 2), np.int64), np.zeros(0, np.int64), {}
        sub, cap_d = pairs_within(simhash[cap_rows], self.params.radius)
        cap_pairs = cap_rows[sub] if len(sub) else np.zeros((0, 2), np.int64)
        report: dict[str, Any] = {}
        collapsed = collapse_identical(simhash[cap_rows])  # equal SimHashes beyond MAX_CLASS rows
        if collapsed.classes:
            report["collapsed_identical_captions"] = collapsed.report()
        return cap_pairs, cap_d, report
