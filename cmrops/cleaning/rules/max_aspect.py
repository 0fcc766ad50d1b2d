"""The ``max_aspect`` rule: a frame too elongated (a banner, a strip, a broken decode)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from cmrops.cleaning.rules.base import CleanData, NotRun, Outcome, Rule


@dataclass(frozen=True)
class MaxAspectRule:
    """``clean.max_aspect``."""

    enabled: bool = True
    ratio: float = 4.0

    def __post_init__(self) -> None:
        if self.ratio < 1.0:
            raise ValueError(f"ratio must be >= 1, got {self.ratio}")


class MaxAspect(Rule[MaxAspectRule, np.ndarray]):
    """Long side / short side above ``ratio``.

    Measures each frame's aspect ratio (long side over short side, a zero side counted as 1);
    flags it above ``ratio``. Evidence: ``aspect`` (4 decimals). Audio clips are never flagged;
    a run of audio clips only reports the rule as not run."""

    name = "max_aspect"
    params_type = MaxAspectRule

    def threshold(self, data: CleanData) -> dict[str, Any]:
        return {"max_aspect": self.params.ratio}

    def measure(self, data: CleanData) -> np.ndarray | NotRun:
        c = data.columns
        if c["audio"].all() and len(c["audio"]):
            return NotRun("audio clips have no frame size")
        w, h = c["width"].astype(np.float64), c["height"].astype(np.float64)
        return np.maximum(w, h) / np.maximum(np.minimum(w, h), 1.0)

    def decide(self, data: CleanData, measured: np.ndarray) -> Outcome:
        aspect, p = measured, self.params
        flagged = (aspect > p.ratio) & ~data.columns["audio"]
        r = Outcome(self.name, "run", True, self.threshold(data), flagged=flagged)
        for i in np.flatnonzero(flagged):
            r.evidence[int(i)] = {"aspect": round(float(aspect[i]), 4)}
            r.detail[int(i)] = f"aspect ratio {aspect[i]:.2f} above max_aspect={p.ratio}"
        return r
