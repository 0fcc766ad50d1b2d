"""Caption normalisation, SimHash and token counting."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cmrops.text import _STRAY_ZWJ, TokenCounter, normalize_caption, normalize_captions, simhash64

JUNK = "\u200b\u200c\u200d\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\ufeff"


def test_nul_and_control_characters_are_removed() -> None:
    assert normalize_caption("a dog\x00 on\x07 a\x1b mat\x7f", 100) == ("a dog on a mat", 0)
    assert normalize_caption("line one\r\nline\ttwo\x0bthree", 100) == (
        "line one line two three",
        0,
    )


def test_rtl_and_zero_width_junk_is_removed() -> None:
    text = "\u202ea\u200b cat\u200f \u2067sits\u2069\u200d on\u200c a\u2060 mat\u202c"
    assert normalize_caption(text, 100) == ("a cat sits on a mat", 0)
    arabic = "\u202bقطة على سجادة\u202c"  # real RTL text stays, only the bidi controls go
    assert normalize_caption(arabic, 100)[0] == "قطة على سجادة"


def test_emoji_zwj_sequences_keep_their_joiners() -> None:
    family = "\U0001f468\u200d\U0001f469\u200d\U0001f467"  # man ZWJ woman ZWJ girl: one glyph
    rainbow_flag = "\U0001f3f3\ufe0f\u200d\U0001f308"  # white flag, VS16, ZWJ, rainbow
    technologist = "\U0001f9d1\U0001f3fd\u200d\U0001f4bb"  # person, skin tone, ZWJ, laptop
    for seq in (family, rainbow_flag, technologist):
        assert normalize_caption(f"a {seq} at home", 100) == (f"a {seq} at home", 0)
    # junk between the parts goes, the joiner stays; joiners elsewhere still go
    assert normalize_caption("\U0001f468\u200b\u200d\U0001f469", 10)[0] == family[:3]
    assert normalize_caption("a\u200db \u200d\U0001f468 \U0001f468\u200d x", 50)[0] == (
        "ab \U0001f468 \U0001f468 x"
    )
    # the length cap never leaves a dangling joiner (normalising again changes nothing)
    assert normalize_caption(family, 2) == ("\U0001f468", 4)
    cut = "\U0001f468"
    assert normalize_caption(cut, 2) == (cut, 0)


def test_bom_is_removed_anywhere() -> None:
    assert normalize_caption("\ufeffA photo\ufeff of\ufeff a tree", 100) == ("A photo of a tree", 0)


def test_nfc_and_whitespace_collapse() -> None:
    decomposed = "Cafe\u0301  au\u00a0lait \u2003 ok "
    text, cut = normalize_caption(decomposed, 100)
    assert text == "Café au lait ok"
    assert cut == 0
    assert unicodedata.is_normalized("NFC", text)
    # a zero-width space between base and accent does not block composition
    assert normalize_caption("e\u200b\u0301", 10)[0] == "é"


def test_one_megabyte_caption_is_capped_and_the_cut_counted() -> None:
    caption = ("word " * 209_716)[: 1 << 20]
    text, cut = normalize_caption(caption, 1000)
    assert len(text) <= 1000
    assert len(text) + cut == len(" ".join(caption.split()))
    assert cut > 1_000_000


def test_captions_that_end_empty_are_dropped() -> None:
    kept, cut = normalize_captions(["\u200b\ufeff", "  ", None, "\x00", "a red bus"], 50)
    assert kept == ["a red bus"]
    assert cut == 0


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300), st.integers(min_value=1, max_value=120))
def test_normalisation_properties(raw: str, cap: int) -> None:
    text, cut = normalize_caption(raw, cap)
    assert len(text) <= cap
    assert cut >= 0
    assert not any(ch in text for ch in JUNK.replace("\u200d", "") + "\x00")
    for m in re.finditer("\u200d", text):  # only the joiners of emoji sequences are kept
        assert _STRAY_ZWJ.match(text, m.start()) is None, ascii(text)
    assert not any(unicodedata.category(ch) in ("Cc", "Cs") for ch in text)
    assert text == text.strip()
    assert "  " not in text
    assert unicodedata.is_normalized("NFC", text) or cut > 0
    assert normalize_caption(text, cap) == (text, 0)  # idempotent
    text.encode("utf-8")  # always storable


# --------------------------------------------------------------------------- simhash


def test_simhash_is_stable_across_processes() -> None:
    caption = "A man riding a horse on the beach."
    code = f"from cmrops.text import simhash64; print(simhash64({caption!r}))"
    other = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "12345", **_env()},
    ).stdout.strip()
    assert int(other) == simhash64(caption) == 12634503633372342874  # golden value
    assert simhash64([]) == 0
    assert simhash64("") == 0


def _env() -> dict[str, str]:
    import os

    return dict(os.environ)


def test_simhash_near_captions_are_closer_than_unrelated(coco_mini: Path) -> None:
    rows = [json.loads(x) for x in (coco_mini / "pairs.jsonl").read_text().splitlines()]
    captions = [r["captions"][0] for r in rows]
    rng = np.random.default_rng(0)
    near, far = [], []
    for i, c in enumerate(captions):
        words = c.split()
        j = int(rng.integers(len(words)))
        edited = " ".join(words[:j] + words[j + 1 :]).upper()  # drop a word, change case
        near.append((simhash64(c) ^ simhash64(edited)).bit_count())
        far.append((simhash64(c) ^ simhash64(captions[(i + 1) % len(captions)])).bit_count())
    assert np.mean(near) < 14 < np.mean(far)
    assert np.mean(far) > 25
    assert np.mean(np.array(near) < np.array(far)) > 0.95


def test_simhash_of_sample_pools_all_captions() -> None:
    caps = ["a red bus on a street", "a red bus parked by the road"]
    joined = simhash64(caps)
    assert (joined ^ simhash64(caps[0])).bit_count() < 32
    assert simhash64(caps) == simhash64(list(caps))  # deterministic


# --------------------------------------------------------------------------- tokens


def test_word_token_counter() -> None:
    assert TokenCounter.from_spec("words")(["Hello, world!", "a b c", ""]) == [4, 3, 0]


def test_default_tokenizer_counts_wordpieces_without_special_tokens() -> None:
    counter = TokenCounter.from_spec("sentence-transformers/all-MiniLM-L6-v2")
    assert counter(["Hello world!", "A man riding a horse."]) == [3, 6]
    long = counter(["word " * 2000])[0]
    assert long == 2000  # never truncated to the model's 256/512


def test_tokenizer_from_a_local_directory(tmp_path: Path) -> None:
    from transformers import BertTokenizer

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red", "bus", "##es"]
    tok_dir = tmp_path / "tok"
    BertTokenizer(vocab={w: i for i, w in enumerate(words)}).save_pretrained(tok_dir)
    (tok_dir / "config.json").write_text('{"model_type": "bert"}')
    counter = TokenCounter.from_spec(str(tok_dir))
    assert counter(["a red bus", "buses"]) == [3, 2]


def test_unknown_tokenizer_names_what_to_do() -> None:
    with pytest.raises(FileNotFoundError, match=r"hf download|save_pretrained"):
        TokenCounter.from_spec("no-such-org/no-such-model-xyz")
