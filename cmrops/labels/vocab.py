"""The label vocabulary: the labels a dataset may carry and the caption terms of each.

A :class:`Vocabulary` is built once per run from params (an explicit list, the union of the
labels the sources provide, or both) and a synonym map. Every label written by the label stage is
one of its labels; anything else that turns up (a source's category, a manual file's label) is
*unknown* and only counted.

Label text is cleaned by :func:`clean_label` (whitespace collapsed, ends stripped). A label read
from a file or a source is mapped to the vocabulary by :meth:`Vocabulary.canonical`: exact match,
then case-insensitive match, then a synonym that belongs to exactly one label (``"puppy"`` ->
``"dog"``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

#: Written in a manual / review file's label cell: "this sample has no label of the vocabulary".
NO_LABEL = "-"
#: Separates several labels in one CSV cell.
LABEL_SEPARATOR = "|"


class EmptyVocabularyError(ValueError):
    """No label to label with: neither params nor the sources name any."""


def clean_label(text: str) -> str:
    """``text`` with every run of whitespace collapsed to one space and both ends stripped."""
    return " ".join(str(text).split())


@dataclass(frozen=True)
class Vocabulary:
    """Sorted distinct labels and, per label, the caption terms that mean it (lower case; the
    label itself is always the first term)."""

    labels: tuple[str, ...]
    terms: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @classmethod
    def build(
        cls, labels: Iterable[str], synonyms: Mapping[str, Sequence[str]] | None = None
    ) -> tuple[Vocabulary, list[str]]:
        """The vocabulary of ``labels`` with ``synonyms`` (label -> extra caption terms).

        Returns it with the synonym keys that are not vocabulary labels (ignored, reported).
        Raises :class:`EmptyVocabularyError` when ``labels`` is empty after cleaning and
        ``ValueError`` for a label holding the reserved ``|`` or equal to ``-``.
        """
        cleaned = sorted({c for c in (clean_label(x) for x in labels) if c})
        if not cleaned:
            raise EmptyVocabularyError(
                "the label vocabulary is empty: list labels under label.vocabulary in params, "
                "set label.from_sources: true with a source that provides labels, or set "
                "label.induce.enabled: true to induce them from the captions"
            )
        for label in cleaned:
            if LABEL_SEPARATOR in label or label == NO_LABEL:
                raise ValueError(
                    f"label {label!r}: labels may not contain {LABEL_SEPARATOR!r} "
                    f"or be {NO_LABEL!r} (reserved in label files)"
                )
        by_fold = {label.casefold(): label for label in cleaned}
        extra: dict[str, list[str]] = {label: [] for label in cleaned}
        unused: list[str] = []
        for key, words in (synonyms or {}).items():
            label = by_fold.get(clean_label(key).casefold())
            if label is None:
                unused.append(key)
                continue
            extra[label].extend(words)
        terms = {}
        for label in cleaned:
            seen = dict.fromkeys([label.casefold()])
            for w in extra[label]:
                t = clean_label(w).casefold()
                if t:
                    seen.setdefault(t)
            terms[label] = tuple(seen)
        return cls(tuple(cleaned), terms), sorted(unused)

    def __post_init__(self) -> None:
        folded: dict[str, str] = {}
        term_owner: dict[str, set[str]] = {}
        for label in self.labels:
            folded[label.casefold()] = label
            for t in self.terms.get(label, (label.casefold(),)):
                term_owner.setdefault(t, set()).add(label)
        lookup = dict(folded)
        for t, owners in term_owner.items():
            if t not in lookup and len(owners) == 1:
                lookup[t] = next(iter(owners))
        object.__setattr__(self, "_exact", frozenset(self.labels))
        object.__setattr__(self, "_lookup", lookup)

    def __len__(self) -> int:
        return len(self.labels)

    def __contains__(self, label: object) -> bool:
        return label in self._exact  # type: ignore[attr-defined]

    def canonical(self, raw: str) -> str | None:
        """The vocabulary label ``raw`` names, or ``None`` when it is unknown."""
        text = clean_label(raw)
        if text in self._exact:  # type: ignore[attr-defined]
            return text
        return self._lookup.get(text.casefold())  # type: ignore[attr-defined]

    def to_json(self) -> dict[str, object]:
        return {
            "labels": list(self.labels),
            "size": len(self.labels),
            "terms": {label: list(self.terms.get(label, ())) for label in self.labels},
        }
