"""The built-in synthetic source through collect -> preprocess -> label -> clean -> split: each
rule scored against the planted defects, upstream catches reported, no leakage after the split."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from cmrops.sources.synthetic import DefectRates
from cmrops.stages import collect, preprocess
from cmrops.stages.clean import CleanParams, NearImageRule
from cmrops.stages.clean import run as clean
from cmrops.stages.label import LabelParams
from cmrops.stages.label import run as label
from cmrops.stages.split import Protocol, SplitParams
from cmrops.stages.split import run as split

# Without embeddings (kept off for test speed) there is no cosine confirmation: a tighter radius.
CLEAN = dataclasses.replace(CleanParams(), near_duplicate_image=NearImageRule(radius=4))


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("synthetic")
    spec = collect.SourceSpec(
        name="synthetic", kind="synthetic", n=400, seed=0, defects=DefectRates()
    )
    collect.run(collect.CollectParams(sources=(spec,)), root / "raw")
    pre = preprocess.PreprocessParams(n_workers=1, embeddings=False, tokenizer="words")
    preprocess.run(pre, root / "raw", root / "interim")
    label(LabelParams(auto_methods=("provided", "keyword")), root / "interim", root / "labelled")
    metrics = clean(
        CLEAN,
        root / "interim",
        root / "labelled",
        root / "clean",
        raw_dir=root / "raw",
        metrics_path=root / "metrics" / "quality.json",
    )
    return {"root": root, "metrics": metrics}


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
