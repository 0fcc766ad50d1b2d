"""The align stage with the default (non-CLIP) encoders: on a tiny synthetic pipeline the concept
bridge fused with learned heads lets the mismatch rule flag the planted swapped captions and
zero-shot labels run; on the real COCO photos the bridge works with zero pairs and the mismatch
rule loses no correct pair."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from cmrops.sources.synthetic import DefectRates
from cmrops.stages import collect, preprocess
from cmrops.stages.align import AlignStageParams
from cmrops.stages.align import run as align
from cmrops.stages.clean import CleanParams, MismatchRule
from cmrops.stages.clean import run as clean
from cmrops.stages.label import LabelParams
from cmrops.stages.label import run as label

DEFECTS = dataclasses.replace(DefectRates(), swapped=0.1)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """240 synthetic samples (24 with swapped captions), embedded by the default encoders,
    through align -> label -> clean. About 30 s on 2 busy cores."""
    root = tmp_path_factory.mktemp("align")
    spec = collect.SourceSpec(name="synthetic", kind="synthetic", n=240, seed=1, defects=DEFECTS)
    collect.run(collect.CollectParams(sources=(spec,)), root / "raw")
    pre = preprocess.PreprocessParams(n_workers=1, tokenizer="words")
    preprocess.run(pre, root / "raw", root / "interim")
    am = align(AlignStageParams(), root / "interim", root / "align", raw_dir=root / "raw",
               progress=False)  # fmt: skip
    lm = label(LabelParams(), root / "interim", root / "labelled", align_dir=root / "align")
    cm = clean(CleanParams(), root / "interim", root / "labelled", root / "clean",
               raw_dir=root / "raw", align_dir=root / "align",
               metrics_path=root / "quality.json")  # fmt: skip
    return {"root": root, "align": am, "label": lm, "clean": cm}


def test_default_alignment_metrics(tiny: dict[str, Any]) -> None:
    m = tiny["align"]
    assert m["run"] is True
    assert m["kind"] == "fused"  # efficientnet-lite0 has an ImageNet head: the concept bridge
    assert "separate models" in m["why"]
    assert 0.0 <= m["prior_weight"] <= 1.0
    assert m["fusion"]["holdout_pairs"] == m["pairs"]  # every pair, out of fold
    assert m["holdout"]["swapped_auroc"] > 0.8
    assert m["synthetic"]["swapped_pairs"] >= 15
    assert m["synthetic"]["auroc"] > 0.8
    assert m["threshold"] == m["calibration"]["threshold"]
    assert m["calibration"]["p_value"] < 0.01  # 10 % swapped: a null-like component (0.0014)
    assert m["out_of_fold"]["folds"] == 5
    files = sorted(p.name for p in (tiny["root"] / "align" / "model").iterdir())
    assert files == ["alignment.safetensors", "config.json"]


def test_mismatch_flags_planted_swapped_captions(tiny: dict[str, Any]) -> None:
    rule = tiny["clean"]["rules"]["mismatch"]
    assert rule["status"] == "run"
    # the same pairs and null as the align stage: the same cut
    assert rule["threshold"] == {"min_similarity": tiny["align"]["threshold"], "calibrated": True}
    assert rule["report"]["calibration"]["flagged"] == rule["flagged"]
    scored = tiny["clean"]["synthetic"]["rules"]["mismatch"]
    assert scored["auroc"]["swapped"] > 0.8
    caught = scored["by_defect"]["swapped"]
    # 240 pairs are few for a good alignment (the 2,000 of the default set catch 54 of 60); a 5 %
    # flag rate would catch about one of 24 by chance
    assert caught["caught"] >= caught["relevant"] // 4
    assert scored["precision"] >= 0.4
    assert tiny["clean"]["rules"]["mismatch"]["report"]["scored_here"] == 0


def test_zero_shot_runs_with_default_encoders(tiny: dict[str, Any]) -> None:
    zs = tiny["label"]["methods"]["zeroshot"]
    assert zs["run"] is True
    assert zs["alignment"] == "fused"
    assert zs["candidates"] > 0
    agree = tiny["label"]["agreement"]["provided~zeroshot"]
    assert agree["precision"] > 0.5  # shapes and colours named by the planted labels


def test_rerun_gives_identical_bytes(tiny: dict[str, Any], tmp_path: Path) -> None:
    root = tiny["root"]
    again = align(AlignStageParams(), root / "interim", tmp_path, raw_dir=root / "raw",
                  progress=False)  # fmt: skip
    assert again == tiny["align"]
    files = ("model/config.json", "model/alignment.safetensors", "pair_scores.parquet",
             "null_scores.parquet", "metrics.json")  # fmt: skip
    for rel in files:
        assert (tmp_path / rel).read_bytes() == (root / "align" / rel).read_bytes(), rel


def test_thread_count_never_changes_the_bytes(tiny: dict[str, Any], tmp_path: Path) -> None:
    """preprocess (ONNX Runtime encoders, worker processes) at 1 thread gives the bytes the
    fixture made with this machine's budget (torch training is pinned to
    threads.TRAINING_THREADS whatever the budget: tests/test_train_stage.py checks train)."""
    from cmrops import threads

    root = tiny["root"]
    before = threads.current()
    try:
        threads.apply(1)
        pre = preprocess.PreprocessParams(n_workers=1, tokenizer="words")
        preprocess.run(pre, root / "raw", tmp_path / "interim")
    finally:
        threads.apply(before)
    for rel in ("samples.parquet", "features/image.npy", "features/text.npy", "metrics.json"):
        assert (tmp_path / "interim" / rel).read_bytes() == (root / "interim" / rel).read_bytes()
    meta = json.loads((root / "interim" / "features" / "meta.json").read_text())
    assert (meta["image"]["runtime"], meta["text"]["runtime"]) == ("onnxruntime", "onnxruntime")


def test_numeric_threshold_still_works(tiny: dict[str, Any], tmp_path: Path) -> None:
    root = tiny["root"]
    params = dataclasses.replace(CleanParams(), mismatch=MismatchRule(min_similarity=-1.0))
    m = clean(params, root / "interim", root / "labelled", tmp_path, align_dir=root / "align")
    assert m["rules"]["mismatch"]["status"] == "run"
    assert m["rules"]["mismatch"]["flagged"] == 0


def test_without_embeddings_downstream_rules_are_not_run(tiny: dict[str, Any], tmp_path: Path):
    pre = preprocess.PreprocessParams(n_workers=1, embeddings=False, tokenizer="words")
    preprocess.run(pre, tiny["root"] / "raw", tmp_path / "interim")
    m = align(AlignStageParams(), tmp_path / "interim", tmp_path / "align", progress=False)
    assert m == {"stage": "align", "run": False, "reason": m["reason"]}
    assert "embeddings: false" in m["reason"]
    record = json.loads((tmp_path / "align" / "model" / "not_run.json").read_text())
    assert record["run"] is False
    lm = label(LabelParams(), tmp_path / "interim", tmp_path / "labelled",
               align_dir=tmp_path / "align")  # fmt: skip
    assert lm["methods"]["zeroshot"]["run"] is False
    assert "align stage not run" in lm["methods"]["zeroshot"]["reason"]
    cm = clean(CleanParams(), tmp_path / "interim", tmp_path / "labelled", tmp_path / "clean",
               align_dir=tmp_path / "align")  # fmt: skip
    assert "align stage not run" in cm["not_run"]["mismatch"]


def test_encoder_kind_needs_one_space(tiny: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="kind: encoder, but image features are 1280-d"):
        align(AlignStageParams(kind="encoder"), tiny["root"] / "interim", tmp_path)


def test_concept_kind_needs_no_training(tiny: dict[str, Any], tmp_path: Path) -> None:
    root = tiny["root"]
    m = align(AlignStageParams(kind="concept"), root / "interim", tmp_path / "align",
              raw_dir=root / "raw", progress=False)  # fmt: skip
    assert m["kind"] == "concept"
    assert "epochs_run" not in m
    assert "out_of_fold" not in m  # it learned nothing from the pairs: scored on all of them
    assert m["holdout"]["pairs"] == m["pairs"]
    config = json.loads((tmp_path / "align" / "model" / "config.json").read_text())
    assert config["info"]["pairs_used"] == 0
    assert config["heads"]["image"]["type"] == "concept"


@pytest.fixture(scope="module")
def coco(coco_mini: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The 159 real COCO photos with their captions, categories withheld, embedded by the
    default encoders, aligned by the default kind and cleaned."""
    root = tmp_path_factory.mktemp("coco_align")
    spec = collect.SourceSpec(name="coco", kind="manifest", path=str(coco_mini / "pairs.jsonl"),
                              labels_column="no_labels")  # fmt: skip
    collect.run(collect.CollectParams(sources=(spec,)), root / "raw")
    pre = preprocess.PreprocessParams(n_workers=1, tokenizer="words")
    preprocess.run(pre, root / "raw", root / "interim")
    am = align(AlignStageParams(), root / "interim", root / "align", raw_dir=root / "raw",
               progress=False)  # fmt: skip
    lm = label(LabelParams(), root / "interim", root / "labelled", align_dir=root / "align")
    cm = clean(CleanParams(), root / "interim", root / "labelled", root / "clean",
               align_dir=root / "align", metrics_path=root / "quality.json")  # fmt: skip
    return {"root": root, "align": am, "label": lm, "clean": cm}


def test_real_photos_zero_pairs_and_no_good_pair_lost(coco: dict[str, Any]) -> None:
    root = coco["root"]
    m = coco["align"]
    assert m["kind"] == "fused"
    assert m["pairs"] == 159
    # the bridge alone, zero pairs: captions find their photo among 159 (measured: R@1 i2t
    # 0.358, t2i 0.409, swapped-caption AUROC 0.971)
    c = align(AlignStageParams(kind="concept"), root / "interim", root / "concept",
              progress=False)  # fmt: skip
    assert c["holdout"]["r1_i2t"] > 0.25
    assert c["holdout"]["r1_t2i"] > 0.25
    assert c["holdout"]["swapped_auroc"] > 0.93
    # clean real captions: the mismatch rule reads no null-like component and flags nothing
    # (a fixed 3 % flag rate would drop about 5 correct pairs here)
    assert c["calibration"]["flagged"] == 0
    rule = coco["clean"]["rules"]["mismatch"]
    assert rule["status"] == "run"
    assert rule["flagged"] == 0
    assert coco["clean"]["quarantined_by_reason"].get("mismatch", 0) == 0
    # the induced vocabulary's rarer samples are reported, not dropped as irrelevant
    irrelevant = coco["clean"]["rules"]["irrelevant"]
    assert irrelevant["drops"] is False
    assert "irrelevant" not in coco["clean"]["quarantined_by_reason"]
