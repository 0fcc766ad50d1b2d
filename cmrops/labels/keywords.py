"""Caption-keyword labels: a label is a candidate when its terms appear in the captions.

Matching (:class:`KeywordMatcher`) works on words: the lower-cased (``casefold``) ``\\w+`` runs of
a caption, so punctuation and spacing never matter and a term only matches whole words
(``"cat"`` matches ``"a cat."`` but not ``"category"``; ``"hot-dog"`` matches the term
``"hot dog"``):

* a term of several words matches the same words in a row;
* with ``plurals`` on, a term also matches with ``s`` or ``es`` added to its last word
  (``"bus"`` -> ``"buses"``); irregular plurals (``people``, ``knives``) belong in the synonym map;
* the caption is scanned left to right, taking at each word the longest term that starts there,
  without overlaps: ``"a hot dog stand"`` is ``hot dog``, not ``dog``.

The confidence of a label is the fraction of the sample's captions that mention it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from cmrops.labels.vocab import Vocabulary

_WORD = re.compile(r"\w+")


def words(text: str) -> tuple[str, ...]:
    """The lower-cased words of ``text``."""
    return tuple(_WORD.findall(text.casefold()))


class KeywordMatcher:
    """Finds the vocabulary labels mentioned in captions (see module docstring)."""

    def __init__(self, vocabulary: Vocabulary, plurals: bool = True) -> None:
        owners: dict[tuple[str, ...], set[str]] = {}
        for label in vocabulary.labels:
            for term in vocabulary.terms.get(label, (label.casefold(),)):
                form = words(term)
                if not form:
                    continue
                owners.setdefault(form, set()).add(label)
                if plurals:
                    for suffix in ("s", "es"):
                        owners.setdefault((*form[:-1], form[-1] + suffix), set()).add(label)
        self._owners = {form: tuple(sorted(labels)) for form, labels in owners.items()}
        self._longest = max((len(f) for f in owners), default=0)

    def labels_in(self, caption: str) -> set[str]:
        """The labels mentioned in one caption."""
        ws = words(caption)
        found: set[str] = set()
        i = 0
        while i < len(ws):
            for n in range(min(self._longest, len(ws) - i), 0, -1):
                hit = self._owners.get(ws[i : i + n])
                if hit is not None:
                    found.update(hit)
                    i += n
                    break
            else:
                i += 1
        return found

    def score(self, captions: Sequence[str]) -> dict[str, int]:
        """Per label, how many of ``captions`` mention it (labels never mentioned are absent)."""
        counts: dict[str, int] = {}
        for caption in captions:
            for label in self.labels_in(caption):
                counts[label] = counts.get(label, 0) + 1
        return counts
