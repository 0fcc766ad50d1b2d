"""The built-in synthetic source through collect -> preprocess -> label -> clean -> split: each
rule scored against the planted defects, upstream catches reported, no leakage after the split."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from cmrops.stages.split import Protocol, SplitParams
from cmrops.stages.split import run as split
from tests import clean_golden


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("synthetic")
    return {"root": root, "metrics": clean_golden.synthetic_pipeline(root)}


def test_outputs_match_the_reference_digests(pipeline: dict[str, Any]) -> None:
    """Byte-identical to the outputs of the clean stage before its rules became operator
    modules (tests/clean_golden.py)."""
    root: Path = pipeline["root"]
    reference = json.loads(clean_golden.REFERENCE.read_text(encoding="utf-8"))["synthetic"]
    assert clean_golden.digests(root / "clean", root / "metrics" / "quality.json") == reference


def test_rules_scored_against_planted_defects(pipeline: dict[str, Any]) -> None:
    syn = pipeline["metrics"]["synthetic"]
    rules = syn["rules"]
    assert rules["exact_duplicate"]["precision"] == 1.0
    assert rules["exact_duplicate"]["recall"] == 1.0
    assert rules["near_duplicate_image"]["precision"] >= 0.9
    assert rules["near_duplicate_image"]["recall"] >= 0.6
    assert rules["irrelevant"]["precision"] == 1.0
    assert rules["irrelevant"]["recall"] == 1.0
    assert rules["label_disagreement"]["precision"] >= 0.9
    assert rules["label_disagreement"]["recall"] >= 0.4
    assert rules["mismatch"]["status"] == "not_run"
    assert rules["mismatch"]["precision"] is None
    assert syn["overall"]["precision"] >= 0.95
    assert syn["overall"]["recall"] >= 0.7


def test_upstream_catches_are_reported(pipeline: dict[str, Any]) -> None:
    d = pipeline["metrics"]["synthetic"]["defects"]
    assert d["zero_byte"]["caught_upstream"] == {"collect: empty_file": d["zero_byte"]["planted"]}
    assert d["exact_dup"]["caught_upstream"] == {
        "collect: duplicate_input": d["exact_dup"]["planted"]
    }
    truncated = d["truncated"]["caught_upstream"]
    assert sum(truncated.values()) == d["truncated"]["planted"]
    assert d["truncated"]["reached_clean"] == 0
    assert d["empty_caption"]["caught_upstream"] == {
        "preprocess: empty_captions": d["empty_caption"]["planted"]
    }
    assert d["noise_image"]["reached_clean"] == d["noise_image"]["planted"]
    assert d["noise_image"]["kept_by_clean"] == 0


def test_quality_metrics_shape(pipeline: dict[str, Any]) -> None:
    m = pipeline["metrics"]
    root: Path = pipeline["root"]
    interim_rows = pq.read_metadata(root / "interim" / "samples.parquet").num_rows
    assert m["inputs"] == interim_rows == m["kept"] + m["quarantined"]
    assert m["kept"] == pq.read_metadata(root / "clean" / "samples.parquet").num_rows
    assert set(m["not_run"]) == {"caption_language", "mismatch"}
    assert m["duplicates"]["image_groups"]
    assert m["rules"]["near_duplicate_caption"]["report"]["pairs_image_differs"] > 0  # swapped
    assert (root / "metrics" / "quality.json").is_file()


def test_split_after_clean_has_no_leakage(pipeline: dict[str, Any]) -> None:
    root: Path = pipeline["root"]
    p = SplitParams(protocol="q", protocols={"q": Protocol("hashing", query=40, train=150)})
    m = split(p, root / "clean", root / "labelled", root / "split")
    assert m["leakage"]["total"] == 0
    assert m["sizes"]["query"] == 40
    assert m["in_train"] == 150
    assert m["labels"]["missing_from_a_set"] == {"query": [], "database": [], "train": []}
