"""Synthetic source: determinism, the vocabulary, and planted defects matching the truth table."""

from __future__ import annotations

import io
import json
from collections import Counter

import pytest
from PIL import Image

from cmrops.params import ParamsError
from cmrops.sources import SyntheticConfig, SyntheticSource
from cmrops.sources.scenes import COLOURS, SHAPES
from cmrops.sources.synthetic import DefectRates
from tests.collect_util import by_key, check_balance, collect, rows

RATES = {
    "exact_copy": 0.05,
    "exact_dup": 0.05,
    "near_copy": 0.1,
    "truncated": 0.05,
    "zero_byte": 0.05,
    "swapped": 0.05,
    "empty_caption": 0.05,
    "noise_image": 0.05,
}


def _records(**kw):
    src = SyntheticSource("s", SyntheticConfig(**kw))
    return [(r.source_key, r.data, r.captions, r.labels) for r in src], src.truth


def test_deterministic_for_a_seed():
    a, truth_a = _records(n=40, seed=3)
    b, truth_b = _records(n=40, seed=3)
    c, _ = _records(n=40, seed=4)
    assert a == b
    assert truth_a == truth_b
    assert a != c
    assert len({key for key, *_ in a}) == 40


def test_clean_scenes_are_described_by_their_captions_and_labels():
    cfg = SyntheticConfig(n=60, seed=1, defects=DefectRates(**dict.fromkeys(RATES, 0.0)))
    src = SyntheticSource("s", cfg)
    vocabulary = set(SHAPES) | set(COLOURS)
    phrasings = set()
    for r in src:
        assert r.data is not None
        img = Image.open(io.BytesIO(r.data))
        img.load()
        assert cfg.min_size <= img.width <= cfg.max_size
        assert cfg.min_size <= img.height <= cfg.max_size
        assert img.format == ("JPEG" if r.source_key.endswith(".jpg") else "PNG")
        assert r.labels
        assert set(r.labels) <= vocabulary
        assert any(x in SHAPES for x in r.labels)
        assert any(x in COLOURS for x in r.labels)
        assert cfg.min_captions <= len(r.captions) <= cfg.max_captions
        assert len(set(r.captions)) == len(r.captions)
        for caption in r.captions:
            for label in r.labels:  # every object's shape and colour is named in every caption
                assert label in caption.lower(), (caption, r.labels)
            phrasings.add(caption.lower().split(" ")[0])
    assert src.truth == []
    assert len(phrasings) >= 5


def test_planted_defects_match_the_truth_table(tmp_path):
    out = tmp_path / "raw"
    n = 100
    m = collect(out, {"name": "syn", "kind": "synthetic", "n": n, "seed": 7, "defects": RATES})
    check_balance(out, m)
    samples = by_key(out)
    quarantine = {r["source_key"]: r for r in rows(out, "quarantine")}
    truth = rows(out, "synthetic_truth")
    assert Counter(t["defect"] for t in truth) == {k: round(v * n) for k, v in RATES.items()}
    assert len({t["source_key"] for t in truth}) == len(truth)
    keys = [int(k[4:10]) for k in (*samples, *quarantine)]
    assert sorted(keys) == list(range(n))
    for t in truth:
        key, orig_key = t["source_key"], t["original_source_key"]
        own, orig = samples.get(key), samples.get(orig_key or "")
        if orig_key is not None:
            assert int(orig_key[4:10]) < int(key[4:10])  # originals come first
            assert orig is not None
            assert t["original_sample_id"] == orig["sample_id"]
        if t["collect_reason"] is None:
            assert own is not None
            assert t["sample_id"] == own["sample_id"]
        else:
            assert t["sample_id"] is None
            assert quarantine[key]["reason"] == t["collect_reason"]
        kind = t["defect"]
        if kind == "exact_dup":
            assert t["collect_reason"] == "duplicate_input"
            assert json.loads(quarantine[key]["evidence"])["duplicate_of"] == orig["sample_id"]
        elif kind == "zero_byte":
            assert t["collect_reason"] == "empty_file"
        else:
            assert t["collect_reason"] is None
        if kind == "exact_copy":
            assert own["image_sha256"] == orig["image_sha256"]
            assert own["captions"] != orig["captions"]
            assert own["labels"] == orig["labels"]
        elif kind == "near_copy":
            detail = json.loads(t["detail"])
            assert detail["transform"] in {"reencode", "resize", "crop", "brighten"}
            assert own["image_sha256"] != orig["image_sha256"]
            assert own["labels"] == orig["labels"]
            Image.open(out / own["image_path"]).load()
        elif kind == "truncated":
            with pytest.raises(OSError, match=r"(?i)truncated|broken|cannot identify"):
                Image.open(out / own["image_path"]).load()
            assert own["image_bytes"] == json.loads(t["detail"])["kept_bytes"]
        elif kind == "swapped":
            assert own["captions"] == orig["captions"]
            assert own["labels"] != orig["labels"]
        elif kind == "empty_caption":
            assert all(not c.strip() for c in own["captions"])
        elif kind == "noise_image":
            assert own["labels"] == []
            assert len(own["captions"]) == 1
    clean = set(samples) - {t["source_key"] for t in truth}
    assert len(clean) == n - len(truth)


def test_rates_and_sizes_are_validated():
    with pytest.raises(ValueError, match=r"more than 0\.9"):
        DefectRates(exact_copy=0.5, near_copy=0.5)
    crowded = DefectRates(**{**dict.fromkeys(RATES, 0.0), "exact_copy": 0.4, "near_copy": 0.4})
    with pytest.raises(ValueError, match="too small"):
        SyntheticSource("s", SyntheticConfig(n=4, defects=crowded))
    with pytest.raises(ParamsError, match="min_size"):
        collect(None, {"name": "s", "kind": "synthetic", "min_size": 200, "max_size": 100})
