"""A keyword vocabulary induced from the captions, for data that comes without labels.

When neither params nor the sources name a label (Flickr8k-style caption data), the label stage
induces one (:func:`induce_vocabulary`), and the keyword method then labels with it. The aim is
the words people would search the set with: its frequent subjects, not the filler around them.

1. **Content words**: the words of every caption (:func:`cmrops.labels.keywords.words`), keeping
   alphabetic words of at least ``min_length`` letters that are not stop words
   (:data:`STOP_WORDS` plus ``stop_words`` from params).
2. **Singular**: the keyword matcher's plural rule read backwards: a word ending in ``s`` /
   ``es`` counts as its stem when the stem is itself a word of the captions (``dogs`` -> ``dog``,
   ``buses`` -> ``bus``; ``grass`` stays, since ``gras`` never occurs); the matcher then finds
   the plural forms again.
3. **Phrases** (``phrases: true``): two content words next to each other in a caption become one
   term (``teddy bear``, ``stop sign``, ``living room``) when the pair is in at least ``min_df``
   of the samples and in at least half of the samples that use its first word (so the first word
   is mostly said as part of it). Captions are then read as the keyword matcher reads them, the
   longest term first: ``a teddy bear`` counts for ``teddy bear``, not ``bear``.
4. **Agreement**: a term *labels* a sample when at least ``agreement`` of the sample's captions
   use it - the keyword method's threshold, passed in by the label stage. Its **label frequency**
   is the number of samples it labels, its **document frequency** the number whose captions use
   it at all. A subject is named by most captions of its photo (``dog``: 4 of 5); filler is said
   once in passing (``air``, ``background``, ``shirt``). With one caption per sample the two
   frequencies are equal.
5. **Frequency bounds**: a term must be in at least ``min_df`` of the samples and label at least
   one. ``max_df`` caps the document frequency: a number is a fixed share; ``auto`` (default)
   adapts to the set - the cap is the document frequency of the commonest *subject* (a term that
   labels at least half of the samples that use it), so the commonest subjects are never
   dropped, only words more widespread than any subject and said in passing.
6. **Top ``size``** by label frequency, then document frequency, then the term, so the result
   depends only on the captions.

The result is written to ``vocabulary.json`` with ``"induced": true`` and these settings.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

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
#: A subject labels at least this share of the samples whose captions use it (``max_df: auto``).
SUBJECT_AGREEMENT = 0.5
#: A phrase is kept when it is in at least this share of the samples that use its first word.
PHRASE_SHARE = 0.5


@dataclass(frozen=True)
class InduceParams:
    """The ``label.induce:`` section: how a vocabulary is induced when none is given."""

    enabled: bool = True  # induce when params and sources give no label (false: an error)
    size: int = 50  # labels kept, the most frequent first
    min_df: float = 0.01  # a term must occur in at least this share of the samples
    # ... and in at most this share; auto: the document frequency of the commonest subject
    max_df: float | Literal["auto"] = "auto"
    min_length: int = 3  # letters
    stop_words: tuple[str, ...] = ()  # added to the built-in list
    phrases: bool = True  # two-word terms (teddy bear, stop sign) when their first word mostly
    #                       occurs in them

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError(f"induce.size must be >= 1, got {self.size}")
        if self.max_df != "auto" and not isinstance(self.max_df, int | float):
            raise ValueError(
                f"induce.max_df must be a share in [0, 1] or 'auto', got {self.max_df!r}"
            )
        top = 1.0 if self.max_df == "auto" else float(self.max_df)
        if not 0.0 <= self.min_df <= top <= 1.0:
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


def _content_runs(caption: str, stop: frozenset[str], min_length: int) -> list[list[str]]:
    """The caption's content words, cut into runs of words that stand next to each other."""
    runs: list[list[str]] = [[]]
    for w in words(caption):
        if w.isalpha() and len(w) >= min_length and w not in stop:
            runs[-1].append(w)
        elif runs[-1]:
            runs.append([])
    return [r for r in runs if r]


def _terms(run: list[str], phrases: set[tuple[str, str]]) -> list[str]:
    """A run's terms, longest first (a kept phrase, else the word), as the matcher reads it."""
    out, i = [], 0
    while i < len(run):
        if i + 1 < len(run) and (run[i], run[i + 1]) in phrases:
            out.append(f"{run[i]} {run[i + 1]}")
            i += 2
        else:
            out.append(run[i])
            i += 1
    return out


def induce_vocabulary(
    captions: Sequence[Iterable[str]], params: InduceParams, agreement: float = 0.4
) -> tuple[list[str], dict[str, Any]]:
    """Labels induced from the captions of each sample (one list of captions per sample), and
    how (for ``vocabulary.json``); ``agreement`` is the share of a sample's captions that must
    use a term for it to label the sample (the keyword method's threshold). Raises
    :class:`EmptyVocabularyError` when no term qualifies."""
    stop = STOP_WORDS | {w.casefold() for w in params.stop_words}
    raw = [[_content_runs(c, stop, params.min_length) for c in caps] for caps in captions]
    known = {w for sample in raw for cap in sample for run in cap for w in run}
    runs = [
        [[[_singular(w, known) for w in run] for run in cap] for cap in sample] for sample in raw
    ]
    n = len(runs)
    lo = params.min_df * n
    phrases: set[tuple[str, str]] = set()
    if params.phrases:
        word_df: Counter[str] = Counter()
        pair_df: Counter[tuple[str, str]] = Counter()
        for sample in runs:
            word_df.update({w for cap in sample for run in cap for w in run})
            pair_df.update(
                {(a, b) for cap in sample for run in cap for a, b in itertools.pairwise(run)}
            )
        phrases = {
            p for p, c in pair_df.items()
            if c >= max(lo, 2) and c >= PHRASE_SHARE * word_df[p[0]] and p[0] != p[1]
        }  # fmt: skip
    df: Counter[str] = Counter()
    lf: Counter[str] = Counter()
    for sample in runs:
        per_caption = [{t for run in cap for t in _terms(run, phrases)} for cap in sample]
        used: Counter[str] = Counter()
        for terms in per_caption:
            used.update(terms)
        df.update(used.keys())
        k = max(len(per_caption), 1)
        lf.update(t for t, c in used.items() if c / k >= agreement)
    subjects = [df[t] for t in df if lf[t] >= SUBJECT_AGREEMENT * df[t] and df[t] >= lo]
    hi = max(subjects, default=n) if params.max_df == "auto" else float(params.max_df) * n
    kept = [(t, lf[t], c) for t, c in df.items() if lo <= c <= hi and lf[t] >= 1]
    kept.sort(key=lambda x: (-x[1], -x[2], x[0]))
    chosen = kept[: params.size]
    if not chosen:
        raise EmptyVocabularyError(
            f"the label vocabulary is empty and none could be induced: no caption content word "
            f"occurs in between {params.min_df:g} and {params.max_df} of the {n} samples and is "
            f"used by at least {agreement:g} of a sample's captions - widen label.induce.min_df/"
            "max_df, or list labels under label.vocabulary"
        )
    how = {
        "method": (
            "caption content words (stop words out, plural -s/-es folded onto a stem that "
            "occurs, two-word phrases whose first word mostly occurs in them); ranked by label "
            "frequency (samples where at least `agreement` of the captions use the term), then "
            "document frequency; document frequency within [min_df, max_df]"
        ),
        "size": params.size,
        "min_df": params.min_df,
        "max_df": params.max_df,
        "max_df_used": round(hi / n, 6) if n else None,
        "agreement": agreement,
        "phrases": params.phrases,
        "min_length": params.min_length,
        "stop_words_added": sorted({w.casefold() for w in params.stop_words}),
        "samples": n,
        "candidates": len(kept),
        "by_frequency": [t for t, _, _ in chosen],  # most labelled first
        "document_frequency": {t: round(c / n, 6) for t, _, c in chosen},
        "label_frequency": {t: round(f / n, 6) for t, f, _ in chosen},
    }
    return [t for t, _, _ in chosen], how
