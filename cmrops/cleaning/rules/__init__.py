"""The clean stage's rules: one module per rule, walked in a declared order.

Every rule is a small module with its params dataclass (its key in the ``clean:`` section of
``params.yaml``), a *measure* (what it looks at, per sample) separate from its *decision* (what
it flags, with the evidence), and a docstring that the documentation of the clean stage lists
(:mod:`cmrops.cleaning.rules.base` says what a rule is). The clean stage walks:

1. :data:`FILTERS`, the per-sample rules, in this order;
2. the user's rules of ``clean.extra_rules`` (:mod:`cmrops.cleaning.rules.extra`), in the order
   listed;
3. the duplicate resolution (:mod:`cmrops.cleaning.rules.duplicates`) over :data:`DUPLICATES`,
   which picks each group's representative among the samples no earlier rule dropped.

A sample is quarantined by the first rule of this order that flags it (:data:`RULE_ORDER`, the
quarantine reasons); every rule is still evaluated on every sample, so the metrics count each
rule's flags on its own.
"""

from __future__ import annotations

from typing import Any

from cmrops.cleaning.rules import duplicates
from cmrops.cleaning.rules.base import CleanData, NotRun, Outcome, Rule, off
from cmrops.cleaning.rules.caption_language import CaptionLanguage
from cmrops.cleaning.rules.caption_length import CaptionLength
from cmrops.cleaning.rules.exact_duplicate import ExactDuplicate
from cmrops.cleaning.rules.extra import ENTRY_POINT_GROUP, ExtraRule
from cmrops.cleaning.rules.irrelevant import Irrelevant
from cmrops.cleaning.rules.label_disagreement import LabelDisagreement
from cmrops.cleaning.rules.max_aspect import MaxAspect
from cmrops.cleaning.rules.min_side import MinSide
from cmrops.cleaning.rules.mismatch import Mismatch
from cmrops.cleaning.rules.near_duplicate_caption import NearDuplicateCaption
from cmrops.cleaning.rules.near_duplicate_image import NearDuplicateImage

__all__ = [
    "DUPLICATES",
    "ENTRY_POINT_GROUP",
    "FILTERS",
    "REPORTED",
    "RULE_ORDER",
    "CleanData",
    "ExtraRule",
    "NotRun",
    "Outcome",
    "Rule",
    "builtin",
    "off",
]

#: The per-sample rules, in the order they claim a sample.
FILTERS: tuple[type[Rule[Any, Any]], ...] = (
    MinSide,
    MaxAspect,
    CaptionLength,
    CaptionLanguage,
    Mismatch,
    LabelDisagreement,
    Irrelevant,
)
#: The duplicate rules, decided together after every other rule.
DUPLICATES = (ExactDuplicate, NearDuplicateImage, NearDuplicateCaption)
#: The built-in quarantine reasons in the order they claim a sample (the user's rules go
#: between the per-sample rules and the duplicates).
RULE_ORDER: tuple[str, ...] = (*(r.name for r in FILTERS), *duplicates.REASONS)
#: Evaluated and reported, never a quarantine reason.
REPORTED: tuple[str, ...] = duplicates.REPORTED


def builtin() -> dict[str, type[Any]]:
    """Every built-in rule by its params key, in the order the stage walks them."""
    return {r.name: r for r in (*FILTERS, *DUPLICATES)}
