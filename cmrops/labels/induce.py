"""A keyword vocabulary induced from the captions, for data that comes without labels.

When neither params nor the sources name a label (Flickr8k-style caption data), the label stage
induces one (:func:`induce_vocabulary`), and the keyword method then labels with it:

1. **Content words**: the words of every caption (:func:`cmrops.labels.keywords.words`), keeping
   alphabetic words of at least ``min_length`` letters that are not stop words
   (:data:`STOP_WORDS` plus ``stop_words`` from params).
2. **Singular**: the keyword matcher's plural rule read backwards: a word ending in ``s`` /
   ``es`` counts as its stem when the stem is itself a word of the captions (``dogs`` -> ``dog``,
   ``buses`` -> ``bus``; ``grass`` stays, since ``gras`` never occurs); the matcher then finds
   the plural forms again.
3. **Document frequency**: the share of samples whose captions use the word (any form); words
   outside ``[min_df, max_df]`` are dropped: too rare to be a class, or too common to tell
   samples apart (``man``, ``sitting`` in COCO).
4. **Top ``size``** by document frequency, ties by the word, so the result depends only on the
   captions.

The result is written to ``vocabulary.json`` with ``"induced": true`` and these settings.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from cmrops.labels.keywords import words
from cmrops.labels.vocab import EmptyVocabularyError

#: English function words and the words captions use around their content: articles,
#: pronouns, prepositions, auxiliaries, numbers and quantifiers, generic picture nouns, colours
#: and sizes, and the commonest caption verbs (a class is a thing, not how it looks or poses).
_STOP_TEXT = """
    a about above across after again against all almost along also although am among an and
    another any are around as at away back be been before behind being below beneath beside
    besides between both but by can could did do does doing down during each either else every
    few for from front further had has have having he her here hers herself him himself his how
    however i if in inside into is it its itself just like many me more most much my myself near
    next no nor not now of off on once one only onto or other others our ours out outside over
    own per same several she should so some something such than that the their theirs them
    themselves then there these they this those though three through to together too top toward
    towards two under until up upon us very via was we were what when where which while who whom
    whose why will with within without would yet you your yours four five six seven eight nine
    ten lot lots kind sort way really image picture photo photograph shot view close closeup
    looking look looks shows showing shown seen see sits sitting stands standing various
    different group bunch couple pair set side area part full white black blue red green yellow
    brown orange pink purple grey gray silver gold colorful large small big little tiny huge
    tall long short old young new empty open wooden metal holding covered filled parked riding
    laying lying playing walking eating topped made sitting posing waiting flying hanging
    getting taking using watching wearing sit stand
"""
STOP_WORDS = frozenset(_STOP_TEXT.split())


@dataclass(frozen=True)
class InduceParams:
    """The ``label.induce:`` section: how a vocabulary is induced when none is given."""

    enabled: bool = True  # induce when params and sources give no label (false: an error)
    size: int = 50  # labels kept, the most frequent first
    min_df: float = 0.01  # a word must occur in at least this share of the samples
    max_df: float = 0.25  # ... and in at most this share (more: too common to be a class)
    min_length: int = 3  # letters
    stop_words: tuple[str, ...] = ()  # added to the built-in list

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError(f"induce.size must be >= 1, got {self.size}")
        if not 0.0 <= self.min_df <= self.max_df <= 1.0:
            raise ValueError(
                f"induce: need 0 <= min_df <= max_df <= 1, got {self.min_df}, {self.max_df}"
            )
        if self.min_length < 1:
            raise ValueError(f"induce.min_length must be >= 1, got {self.min_length}")


def _singular(word: str, known: set[str]) -> str:
    for suffix in ("es", "s"):
        stem = word[: -len(suffix)]
        if word.endswith(suffix) and stem in known and len(stem) >= 2:
            return stem
    return word


def induce_vocabulary(
    captions: Sequence[Iterable[str]], params: InduceParams
) -> tuple[list[str], dict[str, Any]]:
    """Labels induced from the captions of each sample (one list of captions per sample), and
    how (for ``vocabulary.json``). Raises :class:`EmptyVocabularyError` when no word qualifies."""
    stop = STOP_WORDS | {w.casefold() for w in params.stop_words}
    per_sample: list[set[str]] = []
    for caps in captions:
        ws = {
            w
            for c in caps
            for w in words(c)
            if w.isalpha() and len(w) >= params.min_length and w not in stop
        }
        per_sample.append(ws)
    known = set().union(*per_sample) if per_sample else set()
    df: Counter[str] = Counter()
    for ws in per_sample:
        df.update({_singular(w, known) for w in ws})
    n = len(per_sample)
    lo, hi = params.min_df * n, params.max_df * n
    kept = [(w, c) for w, c in df.items() if lo <= c <= hi and w not in stop]
    kept.sort(key=lambda x: (-x[1], x[0]))
    chosen = kept[: params.size]
    if not chosen:
        raise EmptyVocabularyError(
            f"the label vocabulary is empty and none could be induced: no caption content word "
            f"occurs in between {params.min_df:g} and {params.max_df:g} of the {n} samples - "
            "widen label.induce.min_df/max_df, or list labels under label.vocabulary"
        )
    how = {
        "method": (
            "caption content words (stop words out), plural -s/-es folded onto a stem that "
            "occurs, document frequency within [min_df, max_df], top size by frequency"
        ),
        "size": params.size,
        "min_df": params.min_df,
        "max_df": params.max_df,
        "min_length": params.min_length,
        "stop_words_added": sorted({w.casefold() for w in params.stop_words}),
        "samples": n,
        "candidates": len(kept),
        "by_frequency": [w for w, _ in chosen],  # most frequent first, ties by the word
        "document_frequency": {w: round(c / n, 6) for w, c in chosen},
    }
    return [w for w, _ in chosen], how
