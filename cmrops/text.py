"""Caption normalisation, a 64-bit caption SimHash and token counting.

Normalisation (:func:`normalize_caption`), in this order:

1. remove NUL and every other control character (Unicode category ``Cc``) except the
   whitespace ones (tab, newline, ...), which become spaces; remove lone surrogates (``Cs``,
   not encodable as UTF-8);
2. remove zero-width and bidi-control junk: U+200B-U+200F, U+202A-U+202E, U+2060-U+2064,
   U+2066-U+2069 and U+FEFF (BOM / zero-width no-break space) - except a zero-width joiner
   (U+200D) inside an emoji ZWJ sequence (between two ``Extended_Pictographic`` characters, the
   first maybe followed by a variation selector or a skin-tone modifier): 👨‍👩‍👧 stays one family;
3. Unicode NFC (after the removals, so a mark split from its base by junk still composes);
4. collapse every run of Unicode whitespace to one space and strip both ends;
5. cap the length at ``max_chars`` code points (trailing space of the cut removed); the number
   of code points cut by the cap is returned beside the text.

SimHash (:func:`simhash64`): features are the lower-cased word tokens (``\\w+``) of each caption
plus every pair of adjacent tokens (bigrams never cross caption boundaries); each feature is hashed
with BLAKE2b-64 (stable across processes and machines - never Python's ``hash()``); bit ``j`` of
the result is 1 when more features have bit ``j`` set than not. Bit order as everywhere in cmrops:
bit ``j`` is ``(value >> j) & 1``. No features gives 0.

Token counting (:class:`TokenCounter`): ``"words"`` counts ``\\w+`` words and punctuation marks
with a regex; anything else names a tokenizer (a model directory, a Hugging Face id in the local
cache, or one of the encoder aliases of :mod:`cmrops.encoders`). Counts exclude special tokens
(``[CLS]``, ``[SEP]``, ...) and are never truncated.
"""

from __future__ import annotations

import hashlib
import itertools
import re
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Final

import numpy as np
import regex

_JUNK_RANGES: Final = ((0x200B, 0x200F), (0x202A, 0x202E), (0x2060, 0x2064), (0x2066, 0x2069))
_JUNK: Final[frozenset[int]] = frozenset(
    [c for lo, hi in _JUNK_RANGES for c in range(lo, hi + 1)] + [0xFEFF]
)
_WORD = re.compile(r"\w+", re.UNICODE)
_WORD_OR_PUNCT = re.compile(r"\w+|[^\w\s]", re.UNICODE)


def _build_delete_table() -> dict[int, int | None]:
    table: dict[int, int | None] = dict.fromkeys(_JUNK)
    for cp in list(range(0x00, 0x20)) + list(range(0x7F, 0xA0)):  # the Cc category
        table[cp] = 0x20 if chr(cp).isspace() else None
    return table


_ZWJ: Final = 0x200D
_DELETE: Final = _build_delete_table()
_DELETE_BUT_ZWJ: Final = {k: v for k, v in _DELETE.items() if k != _ZWJ}
_SURROGATES = re.compile("[\ud800-\udfff]")
#: A ZWJ that does not join two emoji (the ``regex`` module knows Unicode's emoji properties).
_STRAY_ZWJ: Final = regex.compile(
    r"(?<!\p{Extended_Pictographic}[\N{VARIATION SELECTOR-16}\p{Emoji_Modifier}]?)\u200D"
    r"|\u200D(?!\p{Extended_Pictographic})"
)


def normalize_caption(text: str, max_chars: int) -> tuple[str, int]:
    """Return ``(normalised text, number of characters cut by the length cap)``."""
    if max_chars < 1:
        raise ValueError(f"max_chars must be >= 1, got {max_chars}")
    if "\u200d" in text:  # keep the joiners of emoji sequences, drop the others
        cleaned = _STRAY_ZWJ.sub("", text.translate(_DELETE_BUT_ZWJ))
    else:
        cleaned = text.translate(_DELETE)
    cleaned = _SURROGATES.sub("", cleaned)
    collapsed = " ".join(unicodedata.normalize("NFC", cleaned).split())
    if len(collapsed) <= max_chars:
        return collapsed, 0
    kept = collapsed[:max_chars].rstrip().removesuffix("\u200d")  # a cut emoji sequence
    return kept, len(collapsed) - len(kept)


def normalize_captions(captions: Iterable[str | None], max_chars: int) -> tuple[list[str], int]:
    """Normalise each caption; drop those that end empty. Returns (kept captions, chars cut)."""
    out: list[str] = []
    cut = 0
    for raw in captions:
        if raw is None:
            continue
        text, n_cut = normalize_caption(raw, max_chars)
        if text:
            out.append(text)
            cut += n_cut
    return out, cut


def caption_features(captions: Sequence[str]) -> list[str]:
    """The SimHash features: lower-cased word tokens and adjacent-token bigrams, per caption."""
    feats: list[str] = []
    for caption in captions:
        tokens = _WORD.findall(caption.lower())
        feats.extend(tokens)
        feats.extend(f"{a} {b}" for a, b in itertools.pairwise(tokens))
    return feats


def _feature_hash(feature: str) -> int:
    return int.from_bytes(
        hashlib.blake2b(feature.encode("utf-8"), digest_size=8).digest(), "little"
    )


_BIT_SHIFTS = np.arange(64, dtype=np.uint64)


def simhash64(captions: str | Sequence[str]) -> int:
    """64-bit SimHash of one caption or of all captions of a sample (see module docstring)."""
    feats = caption_features([captions] if isinstance(captions, str) else captions)
    if not feats:
        return 0
    hashes = np.fromiter((_feature_hash(f) for f in feats), dtype=np.uint64, count=len(feats))
    ones = ((hashes[:, None] >> _BIT_SHIFTS) & np.uint64(1)).sum(axis=0, dtype=np.int64)
    bits = 2 * ones > len(feats)
    return int(np.packbits(bits, bitorder="little").view("<u8")[0])


class TokenCounter:
    """Counts tokens per text with a configured tokenizer (see module docstring)."""

    def __init__(self, name: str, count: Callable[[list[str]], list[int]]) -> None:
        self.name = name
        self._count = count

    def __call__(self, texts: Sequence[str]) -> list[int]:
        """Token count of each text (special tokens excluded)."""
        return self._count(list(texts)) if texts else []

    @classmethod
    def words(cls) -> TokenCounter:
        """The regex word tokenizer: ``\\w+`` runs and single punctuation marks."""
        return cls("words", lambda texts: [len(_WORD_OR_PUNCT.findall(t)) for t in texts])

    @classmethod
    def from_spec(cls, spec: str) -> TokenCounter:
        """``"words"``, or a tokenizer resolved like an encoder (alias, directory or HF id)."""
        if spec == "words":
            return cls.words()
        from cmrops.encoders import resolve_text_model_dir

        return cls.from_dir(resolve_text_model_dir(spec), name=spec)

    @classmethod
    def from_dir(cls, model_dir: Path, name: str | None = None) -> TokenCounter:
        """Load ``tokenizer.json`` with the ``tokenizers`` library (fast, no torch) when the
        directory has one, else ``transformers.AutoTokenizer``."""
        label = name or str(model_dir)
        tok_json = model_dir / "tokenizer.json"
        if tok_json.is_file():
            from tokenizers import Tokenizer

            fast = Tokenizer.from_file(str(tok_json))
            fast.no_truncation()
            fast.no_padding()

            def count_fast(texts: list[str]) -> list[int]:
                return [len(e.ids) for e in fast.encode_batch(texts, add_special_tokens=False)]

            return cls(label, count_fast)
        from transformers import AutoTokenizer

        slow = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)

        def count_slow(texts: list[str]) -> list[int]:
            ids = slow(texts, add_special_tokens=False, truncation=False, verbose=False)
            return [len(x) for x in ids["input_ids"]]

        return cls(label, count_slow)
