"""The ``caption_length`` rule: no caption of a usable length."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from cmrops.cleaning.rules.base import CleanData, Outcome, Rule


@dataclass(frozen=True)
class CaptionLengthRule:
    """``clean.caption_length``."""

    enabled: bool = True
    min_tokens: int = 3
    max_tokens: int | None = 256  # null: no upper bound

    def __post_init__(self) -> None:
        if self.min_tokens < 0:
            raise ValueError(f"min_tokens must be >= 0, got {self.min_tokens}")
        if self.max_tokens is not None and self.max_tokens < self.min_tokens:
            raise ValueError("max_tokens must be >= min_tokens (or null)")


class CaptionLength(Rule[CaptionLengthRule, list[list[int]]]):
    """No caption with ``min_tokens <= tokens <= max_tokens``.

    Measures the token count of every caption (preprocess's ``token_counts``, by its
    tokenizer); flags a sample none of whose captions is in range (``max_tokens: null``: no upper
    bound). Evidence: ``token_counts``. The metrics report how many captions were out of range in
    all (``captions_out_of_range``), flagged samples or not."""

    name = "caption_length"
    params_type = CaptionLengthRule

    def threshold(self, data: CleanData) -> dict[str, Any]:
        return {"min_tokens": self.params.min_tokens, "max_tokens": self.params.max_tokens}

    def measure(self, data: CleanData) -> list[list[int]]:
        return data.columns["tokens"]

    def decide(self, data: CleanData, measured: list[list[int]]) -> Outcome:
        p = self.params
        hi = p.max_tokens if p.max_tokens is not None else np.iinfo(np.int64).max
        n = len(measured)
        flagged = np.zeros(n, bool)
        out_of_range = 0
        r = Outcome(self.name, "run", True, self.threshold(data))
        for i, counts in enumerate(measured):
            ok = [p.min_tokens <= t <= hi for t in counts]
            out_of_range += len(ok) - sum(ok)
            if not any(ok):
                flagged[i] = True
                r.evidence[i] = {"token_counts": list(counts)}
                r.detail[i] = (
                    f"no caption of {p.min_tokens}..{p.max_tokens} tokens (counts {list(counts)})"
                )
        r.flagged = flagged
        r.report = {"captions_out_of_range": out_of_range}
        return r
