"""The ``caption_language`` rule: no caption in an allowed language."""

from __future__ import annotations

import importlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from cmrops.cleaning.rules.base import CleanData, NotRun, Outcome, Rule


@dataclass(frozen=True)
class LanguageRule:
    """``clean.caption_language``."""

    enabled: bool = True
    detector: str | None = None  # "module:function", text -> language code; null: not run
    allowed: tuple[str, ...] = ("en",)

    def __post_init__(self) -> None:
        if self.detector is not None and ":" not in self.detector:
            raise ValueError(f"detector must be 'module:function', got {self.detector!r}")
        if not self.allowed:
            raise ValueError("allowed: list at least one language code")


class CaptionLanguage(Rule[LanguageRule, list[list[str]]]):
    """No caption in an ``allowed`` language.

    Measures the language of every caption with ``detector`` (``"module:function"``, a function
    text -> language code, e.g. a wrapper of a language-identification model you install); flags
    a sample none of whose captions is in ``allowed``. Without a detector the rule is *not run*
    (reported with the reason); a detector that cannot be imported is an error. Evidence:
    ``languages`` (one per caption); the metrics count every detected language."""

    name = "caption_language"
    params_type = LanguageRule

    def threshold(self, data: CleanData) -> dict[str, Any]:
        return {"detector": self.params.detector, "allowed": list(self.params.allowed)}

    def measure(self, data: CleanData) -> list[list[str]] | NotRun:
        if self.params.detector is None:
            return NotRun(
                "no language detector configured (set clean.caption_language.detector to "
                "'module:function', a function text -> language code)"
            )
        detect = import_detector(self.params.detector)
        return [[str(detect(t)) for t in caps] for caps in data.columns["captions"]]

    def decide(self, data: CleanData, measured: list[list[str]]) -> Outcome:
        allowed = set(self.params.allowed)
        flagged = np.zeros(len(measured), bool)
        r = Outcome(self.name, "run", True, self.threshold(data))
        seen: Counter[str] = Counter()
        for i, langs in enumerate(measured):
            seen.update(langs)
            if not any(lang in allowed for lang in langs):
                flagged[i] = True
                r.evidence[i] = {"languages": langs}
                r.detail[i] = f"no caption in {sorted(allowed)} (detected {langs})"
        r.flagged = flagged
        r.report = {"caption_languages": dict(sorted(seen.items()))}
        return r


def import_detector(spec: str) -> Callable[[str], str]:
    """The function named by ``"module:function"``; a clear error when it cannot be loaded."""
    module, _, name = spec.partition(":")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ValueError(
            f"clean.caption_language.detector {spec!r} cannot be loaded ({e}); install it or set "
            "the detector to null (the rule is then reported as not run)"
        ) from e
    if not callable(fn):
        raise ValueError(f"clean.caption_language.detector {spec!r} is not callable")
    return fn
