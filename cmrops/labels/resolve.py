"""From candidate labels to effective labels, and how far the automatic methods agree.

**Resolution** (:func:`resolve`) is per sample, by precedence of the source that says anything
about it: ``reviewed`` > ``manual`` > ``auto``. A sample with a review answer gets exactly the
reviewed labels (an answer of "no label" leaves it with none); else a sample named in a manual
file gets exactly its manual labels; else its automatic labels:

* only candidates that *passed* their method's threshold count (provided labels always do);
* ``combine: fallback`` - the first method of ``auto_methods`` (in params order) with a passed
  candidate decides the sample alone: provided labels, when a source gives them, are not
  diluted by caption keywords; keywords or zero-shot fill in for samples without them;
* ``combine: union`` - every passed candidate of every method;
* one row per label: the highest confidence, ties to the earlier method of ``auto_methods``.

A sample left without any label is kept (``decided_by = "none"``); the clean stage decides what
to do with it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from typing import Literal

Combine = Literal["fallback", "union"]
#: Human sources, by precedence; then "auto".
HUMAN_SOURCES = ("reviewed", "manual")


@dataclass(frozen=True)
class Candidate:
    """One label one method proposes for one sample (a row of evidence.parquet)."""

    sample_id: str
    label: str
    source: str  # "reviewed" | "manual" | "auto"
    method: str  # "review" | "manual" | "provided" | "keyword" | "zeroshot"
    confidence: float
    passed: bool  # met its method's threshold (human labels: always)
    detail: str = "{}"  # JSON object


@dataclass
class Decision:
    """The effective labels of one sample and which source decided them."""

    decided_by: str  # "reviewed" | "manual" | "auto" | "none"
    selected: dict[str, Candidate] = field(default_factory=dict)  # label -> chosen candidate

    @property
    def labels(self) -> list[str]:
        return sorted(self.selected)


def resolve(
    sample_id: str,
    candidates: Sequence[Candidate],
    human_empty: Mapping[str, set[str]],
    auto_methods: Sequence[str],
    combine: Combine,
) -> Decision:
    """The decision for sample ``sample_id`` from all its candidates (see module docstring).

    ``human_empty`` maps a human source to the samples it explicitly gave no label.
    """
    for source in HUMAN_SOURCES:
        own = [c for c in candidates if c.source == source]
        if own or sample_id in human_empty.get(source, ()):
            chosen: dict[str, Candidate] = {}
            for c in sorted(own, key=lambda c: (c.label, c.detail)):
                chosen.setdefault(c.label, c)
            return Decision(source, chosen)
    rank = {m: i for i, m in enumerate(auto_methods)}
    passed = [c for c in candidates if c.source == "auto" and c.passed and c.method in rank]
    if combine == "fallback" and passed:
        first = min(rank[c.method] for c in passed)
        passed = [c for c in passed if rank[c.method] == first]
    selected: dict[str, Candidate] = {}
    for c in sorted(passed, key=lambda c: (-c.confidence, rank[c.method])):
        selected.setdefault(c.label, c)
    return Decision("auto" if selected else "none", selected)


# --------------------------------------------------------------------------- agreement


def jaccard(a: frozenset[str] | set[str], b: frozenset[str] | set[str]) -> float:
    """|a & b| / |a | b|, and 1.0 when both are empty."""
    union = len(a | b)
    return 1.0 if union == 0 else len(a & b) / union


def agreement(
    kept: Mapping[str, Mapping[str, frozenset[str]]],
    applicable: Mapping[str, set[str]],
    labels: Iterable[str],
) -> dict[str, object]:
    """Agreement between every pair of methods that ran, over the samples both apply to.

    ``kept[m][sample]`` is the set of labels method ``m`` passed for ``sample``; ``applicable[m]``
    the samples ``m`` could label (provided: the source gave labels; keyword: the sample has
    captions; zeroshot: it has an image embedding). Per pair ``a~b``: ``samples``, mean
    per-sample Jaccard, micro precision/recall of ``b`` taking ``a`` as the reference, and
    Cohen's kappa per label (labels either method uses, where defined) with its mean.
    """
    out: dict[str, object] = {}
    vocab = sorted(labels)
    for a, b in combinations(list(kept), 2):
        both = sorted(applicable.get(a, set()) & applicable.get(b, set()))
        entry: dict[str, object] = {"samples": len(both)}
        if both:
            empty: frozenset[str] = frozenset()
            pairs = [(kept[a].get(s, empty), kept[b].get(s, empty)) for s in both]
            tp = sum(len(x & y) for x, y in pairs)
            n_a = sum(len(x) for x, _ in pairs)
            n_b = sum(len(y) for _, y in pairs)
            kappas = {}
            for label in vocab:
                k = _kappa([(label in x, label in y) for x, y in pairs])
                if k is not None:
                    kappas[label] = round(k, 6) + 0.0  # no -0.0
            entry.update(
                mean_jaccard=round(sum(jaccard(x, y) for x, y in pairs) / len(pairs), 6),
                exact_match=round(sum(x == y for x, y in pairs) / len(pairs), 6),
                precision=round(tp / n_b, 6) if n_b else None,
                recall=round(tp / n_a, 6) if n_a else None,
                kappa_per_label=kappas,
                mean_kappa=round(sum(kappas.values()) / len(kappas), 6) if kappas else None,
            )
        out[f"{a}~{b}"] = entry
    return out


def _kappa(pairs: Sequence[tuple[bool, bool]]) -> float | None:
    """Cohen's kappa of two binary raters; ``None`` when neither ever says yes or it is
    undefined (both raters constant)."""
    n = len(pairs)
    n_a = sum(x for x, _ in pairs)
    n_b = sum(y for _, y in pairs)
    if n == 0 or (n_a == 0 and n_b == 0):
        return None
    po = sum(x == y for x, y in pairs) / n
    pa, pb = n_a / n, n_b / n
    pe = pa * pb + (1 - pa) * (1 - pb)
    if pe >= 1.0:
        return None
    return (po - pe) / (1 - pe)
