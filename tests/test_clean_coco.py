"""The real COCO sample through collect -> preprocess -> label -> clean -> split, COCO categories
as labels, with two near-copies of its photos planted from a second source."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from cmrops import io
from cmrops.stages import collect, preprocess
from cmrops.stages.clean import CleanParams, NearImageRule
from cmrops.stages.clean import run as clean
from cmrops.stages.label import LabelParams
from cmrops.stages.label import run as label
from cmrops.stages.split import Protocol, SplitParams
from cmrops.stages.split import run as split

RATIO = SplitParams(protocol="r", protocols={"r": Protocol("ratio", train=0.6, val=0.2, test=0.2)})


def _plant(coco: Path, folder: Path) -> list[tuple[str, str]]:
    """Two near-copies of COCO photos (re-encoded at JPEG quality 35; resized to 70 %) with
    captions of their own, as a second manifest. Returns (copy file, original image path)."""
    rows = [json.loads(x) for x in (coco / "pairs.jsonl").read_text().splitlines()[:2]]
    folder.mkdir(parents=True)
    planted = []
    with Image.open(coco / rows[0]["image"]) as im:
        im.convert("RGB").save(folder / "reencoded.jpg", quality=35)
    with Image.open(coco / rows[1]["image"]) as im:
        im = im.convert("RGB")
        im.resize((im.width * 7 // 10, im.height * 7 // 10), Image.Resampling.LANCZOS).save(
            folder / "resized.jpg", quality=90
        )
    lines = []
    for name, r in (("reencoded.jpg", rows[0]), ("resized.jpg", rows[1])):
        caps = [f"{name}: a second description of this scene, take {i}" for i in range(3)]
        lines.append(json.dumps({"image": name, "captions": caps, "labels": r["labels"]}))
        planted.append((name, r["image"]))
    (folder / "copies.jsonl").write_text("\n".join(lines) + "\n")
    return planted


@pytest.fixture(scope="module")
def coco_run(coco_mini: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("coco_pipeline")
    planted = _plant(coco_mini, root / "planted")
    sources = (
        collect.SourceSpec(name="coco", kind="manifest", path=str(coco_mini / "pairs.jsonl")),
        collect.SourceSpec(name="copies", kind="manifest", path=str(root / "planted/copies.jsonl")),
    )
    collect.run(collect.CollectParams(sources=sources), root / "raw")
    pre = preprocess.PreprocessParams(n_workers=1, embeddings=False, tokenizer="words")
    preprocess.run(pre, root / "raw", root / "interim")
    label(
        LabelParams(auto_methods=("provided", "keyword"), synonym_presets=("coco",)),
        root / "interim",
        root / "labelled",
    )
    m = clean(CleanParams(), root / "interim", root / "labelled", root / "clean")
    return {"root": root, "metrics": m, "planted": planted}


def test_coco_clean_catches_the_planted_copies_and_nothing_else(coco_run: dict[str, Any]) -> None:
    m, root = coco_run["metrics"], coco_run["root"]
    assert m["inputs"] == 161
    assert m["quarantined_by_reason"] == {"near_duplicate_image": 2}
    q = pq.read_table(root / "clean" / "quarantine.parquet").to_pylist()
    interim = pq.read_table(root / "interim" / "samples.parquet").to_pylist()
    key_of = {r["sample_id"]: (r["source"], r["source_key"].split(":", 1)[1]) for r in interim}
    pairs = set()
    for r in q:
        e = json.loads(r["evidence"])
        assert e["phash_distance"] <= e["threshold"]["radius"]
        pairs.add(frozenset((key_of[r["sample_id"]][1], key_of[e["kept"]][1])))
    assert pairs == {frozenset(p) for p in coco_run["planted"]}
    resized = next(r for r in q if key_of[r["sample_id"]][1] == "resized.jpg")  # smaller: dropped
    assert "near-duplicate image" in resized["detail"]
    assert m["rules"]["label_disagreement"]["status"] == "run"
    assert m["rules"]["irrelevant"]["flagged"] == 0
    assert m["rules"]["mismatch"]["status"] == "not_run"


def test_coco_split_with_categories_as_labels(coco_run: dict[str, Any]) -> None:
    root = coco_run["root"]
    m = split(RATIO, root / "clean", root / "labelled", root / "split")
    assert m["samples"] == 159
    assert sum(m["sizes"].values()) == 159
    assert m["labels"]["count"] >= 70  # COCO categories
    assert m["leakage"]["total"] == 0
    missing = sum(len(v) for v in m["labels"]["missing_from_a_set"].values())
    plain = split(
        dataclasses.replace(RATIO, stratify=False),
        root / "clean",
        root / "labelled",
        root / "plain",
    )
    plain_missing = sum(len(v) for v in plain["labels"]["missing_from_a_set"].values())
    assert missing <= 6  # 80 labels on 159 photos: a few co-occurring rare ones cannot all spread
    assert plain_missing >= 4 * max(missing, 1)
    dev = m["labels"]["share_deviation"]["mean_weighted_by_label_size"]
    assert dev < plain["labels"]["share_deviation"]["mean_weighted_by_label_size"]


def test_coco_copies_kept_by_clean_never_straddle_the_split(coco_run: dict[str, Any]) -> None:
    root = coco_run["root"]
    keep_copies = dataclasses.replace(
        CleanParams(), near_duplicate_image=NearImageRule(enabled=False)
    )
    clean(keep_copies, root / "interim", root / "labelled", root / "clean_all")
    m = split(RATIO, root / "clean_all", root / "labelled", root / "split_all")
    assert m["samples"] == 161
    assert m["leakage"]["total"] == 0
    assert m["groups"]["sizes"] == {"2": 2}
    assign = pq.read_table(root / "split_all" / "assignments.parquet").to_pylist()
    by_group: dict[str, set[str]] = {}
    for a in assign:
        by_group.setdefault(a["group_id"], set()).add(a["split"])
    assert all(len(s) == 1 for s in by_group.values())
    # a split that ignores the groups (every copy in test, every original in train), audited
    interim = {
        r["sample_id"]: r["source"]
        for r in pq.read_table(root / "interim" / "samples.parquet").to_pylist()
    }
    theirs = pa.table(
        {
            "sample_id": [a["sample_id"] for a in assign],
            "split": ["test" if interim[a["sample_id"]] == "copies" else "train" for a in assign],
        }
    )
    io.write_parquet(root / "theirs.parquet", theirs)
    audited = split(
        dataclasses.replace(RATIO, import_assignments=str(root / "theirs.parquet")),
        root / "clean_all",
        root / "labelled",
        root / "audit",
    )
    assert audited["leakage"]["pairs"]["train-test"]["image"] == 2
    assert audited["leakage"]["total"] == 2
