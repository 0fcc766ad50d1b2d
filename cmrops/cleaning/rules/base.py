"""What every cleaning rule is: a params dataclass, a measure, a decision and its evidence.

A rule (:class:`Rule`) is built from its params (the dataclass of its key in the ``clean:``
section, with ``enabled`` and its thresholds) and applied to the samples of a run
(:class:`CleanData`) in two steps, as Data-Juicer's operators do:

* :meth:`Rule.measure` computes what the rule looks at, per sample (the shorter side, the
  image-caption cosine, the label overlap, ...) - or says why it cannot run (:class:`NotRun`:
  no detector configured, no alignment, audio clips without a frame size);
* :meth:`Rule.decide` turns the measure into an :class:`Outcome`: the samples it flags, and for
  each the evidence (what was measured, JSON) and a one-line detail that the quarantine row
  keeps, plus a report for the metrics.

The clean stage walks the rules in their declared order (:mod:`cmrops.cleaning.rules`); the
first rule that flags a sample is its quarantine reason. A rule never sees what an earlier rule
decided, except the duplicate resolution, which picks a group's representative among the samples
still kept (:attr:`CleanData.dropped`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, ClassVar, Generic, Literal, TypeVar

import numpy as np

P = TypeVar("P")
M = TypeVar("M")

__all__ = ["CleanData", "NotRun", "Outcome", "Rule", "off"]


@dataclass
class Outcome:
    """One rule's outcome: status, flags and per-flag evidence."""

    name: str
    status: Literal["run", "not_run", "off"]
    drops: bool
    threshold: dict[str, Any]
    why: str | None = None
    flagged: np.ndarray | None = None  # bool mask over rows
    evidence: dict[int, dict[str, Any]] = field(default_factory=dict)
    detail: dict[int, str] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)
    scores: np.ndarray | None = None  # per row, higher = more plausible (NaN: not measured)


@dataclass(frozen=True)
class NotRun:
    """What :meth:`Rule.measure` returns when the rule cannot run on these inputs, and why."""

    why: str


def off(name: str, threshold: dict[str, Any], drops: bool = True) -> Outcome:
    """The outcome of a rule disabled in params."""
    return Outcome(name, "off", drops, threshold, why="disabled in params")


@dataclass
class CleanData:
    """The samples of a run as the rules see them, sorted by ``sample_id`` (row ``i`` is the
    same sample in every field).

    ``columns``: the interim columns the rules read (:func:`cmrops.cleaning.inputs.columns`:
    numpy arrays for numbers, lists for text); ``meta`` and the image / text embeddings (NaN rows
    where a sample has none; None without embeddings); ``labels``: what the label stage decided
    (:class:`cmrops.cleaning.inputs.Labels`); ``dropped``: the samples an earlier rule dropped
    (updated by the stage as it walks the rules). ``load_alignment`` returns the align stage's
    output (:func:`cmrops.stages.align.load_output`), read on first use by :attr:`alignment`;
    ``load_null`` its null scores (:func:`cmrops.stages.align.load_null`), by
    :attr:`null_scores`."""

    columns: dict[str, Any]
    meta: dict[str, Any] | None
    image_emb: np.ndarray | None
    text_emb: np.ndarray | None
    labels: Any
    dropped: np.ndarray
    load_alignment: Callable[[], Any] | None = None
    cache_dir: Any = None  # the near-duplicate candidate cache folder (None: no cache)
    load_null: Callable[[], np.ndarray | None] | None = None

    @property
    def n(self) -> int:
        return len(self.columns["sample_id"])

    @cached_property
    def alignment(self) -> Any:
        """The align stage's output with its pair scores (loaded once, when a rule asks)."""
        if self.load_alignment is None:
            raise RuntimeError("no alignment loader given to the clean rules")
        return self.load_alignment()

    @cached_property
    def null_scores(self) -> np.ndarray | None:
        """The align stage's null scores (images with other samples' captions), or None."""
        return None if self.load_null is None else self.load_null()


class Rule(ABC, Generic[P, M]):
    """A cleaning rule over the samples of one run.

    Subclasses set :attr:`name` (its key in the ``clean:`` params, and the quarantine reason it
    gives) and :attr:`params_type` (its params dataclass: ``enabled`` and the thresholds), and
    implement :meth:`threshold`, :meth:`measure` and :meth:`decide`. The class docstring is the
    rule's documentation (the clean page lists it with its params)."""

    name: ClassVar[str]
    params_type: ClassVar[type[Any]]

    def __init__(self, params: P) -> None:
        self.params = params

    @property
    def enabled(self) -> bool:
        return bool(getattr(self.params, "enabled", True))

    def drops(self, data: CleanData) -> bool:
        """Whether a flag quarantines the sample (False: flagged and reported only)."""
        return True

    @abstractmethod
    def threshold(self, data: CleanData) -> dict[str, Any]:
        """The thresholds as recorded in the evidence and the metrics."""

    @abstractmethod
    def measure(self, data: CleanData) -> M | NotRun:
        """What the rule looks at, per sample, or why it cannot run on these inputs."""

    @abstractmethod
    def decide(self, data: CleanData, measured: M) -> Outcome:
        """The samples the measure flags, each with its evidence and detail."""

    def apply(self, data: CleanData) -> Outcome:
        """Measure and decide (or the outcome of a rule that is off or cannot run)."""
        if not self.enabled:
            return off(self.name, self.threshold(data), self.drops(data))
        measured = self.measure(data)
        if isinstance(measured, NotRun):
            return Outcome(
                self.name, "not_run", self.drops(data), self.threshold(data), why=measured.why
            )
        return self.decide(data, measured)
