"""The ``min_side`` rule: a frame too small to learn from."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from cmrops.cleaning.rules.base import CleanData, NotRun, Outcome, Rule


@dataclass(frozen=True)
class MinSideRule:
    """``clean.min_side``."""

    enabled: bool = True
    pixels: int = 32

    def __post_init__(self) -> None:
        if self.pixels < 1:
            raise ValueError(f"pixels must be >= 1, got {self.pixels}")


class MinSide(Rule[MinSideRule, np.ndarray]):
    """Width or height below ``pixels``.

    Measures the shorter side of each frame (preprocess's width and height); flags it when it is
    below ``pixels``. Evidence: ``width``, ``height``. Audio clips have no frame: they are never
    flagged, and a run of audio clips only reports the rule as not run."""

    name = "min_side"
    params_type = MinSideRule

    def threshold(self, data: CleanData) -> dict[str, Any]:
        return {"min_side": self.params.pixels}

    def measure(self, data: CleanData) -> np.ndarray | NotRun:
        c = data.columns
        if c["audio"].all() and len(c["audio"]):
            return NotRun("audio clips have no frame size")
        return np.minimum(c["width"], c["height"])

    def decide(self, data: CleanData, measured: np.ndarray) -> Outcome:
        c, p = data.columns, self.params
        w, h = c["width"], c["height"]
        flagged = (measured < p.pixels) & ~c["audio"]
        r = Outcome(self.name, "run", True, self.threshold(data), flagged=flagged)
        for i in np.flatnonzero(flagged):
            r.evidence[int(i)] = {"width": int(w[i]), "height": int(h[i])}
            r.detail[int(i)] = f"frame {w[i]}x{h[i]}: a side below min_side={p.pixels}"
        return r
