"""Label sources of the label stage (:mod:`cmrops.stages.label`).

* :mod:`~cmrops.labels.vocab` - the vocabulary and label canonicalisation;
* :mod:`~cmrops.labels.keywords` - caption-keyword matching with synonyms;
* :mod:`~cmrops.labels.presets` - built-in synonym maps (COCO);
* :mod:`~cmrops.labels.zeroshot` - zero-shot labels from an aligned dual encoder;
* :mod:`~cmrops.labels.manual` - CSV / JSONL / Label Studio readers and sample-key resolution;
* :mod:`~cmrops.labels.resolve` - precedence (reviewed > manual > auto) and method agreement;
* :mod:`~cmrops.labels.review` - the review queue and its Label Studio files.
"""

from __future__ import annotations

from cmrops.labels.keywords import KeywordMatcher
from cmrops.labels.manual import (
    KeyIndex,
    LabelFileError,
    Statement,
    UnknownSampleKeyError,
    read_statements,
)
from cmrops.labels.resolve import Candidate, Decision, agreement, resolve
from cmrops.labels.vocab import NO_LABEL, EmptyVocabularyError, Vocabulary, clean_label

__all__ = [
    "NO_LABEL",
    "Candidate",
    "Decision",
    "EmptyVocabularyError",
    "KeyIndex",
    "KeywordMatcher",
    "LabelFileError",
    "Statement",
    "UnknownSampleKeyError",
    "Vocabulary",
    "agreement",
    "clean_label",
    "read_statements",
    "resolve",
]
