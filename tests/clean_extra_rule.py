"""A cleaning rule of a user's own, as a package would ship it (no tests here): captions that
are links, a common defect of web-scraped alt texts. Used by tests/test_clean_extra_rules.py
through ``clean.extra_rules`` (``"tests.clean_extra_rule:CaptionUrls"``) and an entry point."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from cmrops.cleaning.rules import CleanData, Outcome, Rule

_URL = re.compile(r"https?://\S+|www\.\S+", re.I)


@dataclass(frozen=True)
class CaptionUrlsRule:
    enabled: bool = True
    max_urls: int = 0  # a caption with more links than this is not a description

    def __post_init__(self) -> None:
        if self.max_urls < 0:
            raise ValueError(f"max_urls must be >= 0, got {self.max_urls}")


class CaptionUrls(Rule[CaptionUrlsRule, list[list[int]]]):
    """Every caption holds more than ``max_urls`` links."""

    name = "caption_urls"
    params_type = CaptionUrlsRule

    def threshold(self, data: CleanData) -> dict[str, Any]:
        return {"max_urls": self.params.max_urls}

    def measure(self, data: CleanData) -> list[list[int]]:
        return [[len(_URL.findall(t)) for t in caps] for caps in data.columns["captions"]]

    def decide(self, data: CleanData, measured: list[list[int]]) -> Outcome:
        cut = self.params.max_urls
        flagged = np.array([bool(c) and min(c) > cut for c in measured], bool)
        out = Outcome(self.name, "run", True, self.threshold(data), flagged=flagged)
        for i in np.flatnonzero(flagged).tolist():
            out.evidence[i] = {"urls": measured[i]}
            out.detail[i] = f"every caption holds more than {cut} link(s) ({measured[i]})"
        out.report = {"captions_with_links": sum(1 for c in measured for k in c if k)}
        return out


class NotARule:
    name = "not_a_rule"
