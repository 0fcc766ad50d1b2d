"""COCO source: a tiny hand-built set with every defect, and the real 159-photo sample."""

from __future__ import annotations

import hashlib
import json

import pytest

from cmrops.sources import CocoSource
from tests.collect_util import by_key, check_balance, collect, reasons, rows, write_image


def _coco(root, images, annotations, instances=None, split="val2017"):
    ann = root / "annotations"
    ann.mkdir(parents=True, exist_ok=True)
    (ann / f"captions_{split}.json").write_text(
        json.dumps(
            {"licenses": [{"id": 1, "name": "CC BY"}], "images": images, "annotations": annotations}
        )
    )
    if instances is not None:
        (ann / f"instances_{split}.json").write_text(json.dumps(instances))


def test_tiny_coco_with_defects(tmp_path):
    root = tmp_path / "coco"
    for i in (1, 2, 3, 5):
        write_image(root / "val2017" / f"{i}.jpg", (i * 40, 0, 0))
    images = [
        {"id": 1, "file_name": "1.jpg", "license": 1, "flickr_url": "http://f/1"},
        {"id": 2, "file_name": "2.jpg"},
        {"id": 1, "file_name": "3.jpg"},  # duplicate id
        {"id": 4, "file_name": "4.jpg"},  # file missing
        {"id": 6, "file_name": "../../escape.jpg"},
        {"id": 5, "file_name": "5.jpg"},  # no captions
        {"file_name": "nameless.jpg"},
    ]
    annotations = [
        {"id": 10, "image_id": 1, "caption": "first "},
        {"id": 11, "image_id": 2, "caption": "two"},
        {"id": 12, "image_id": 1, "caption": "second"},
        {"id": 13, "image_id": 99, "caption": "for an image that is not listed"},
        {"id": 14, "image_id": 99, "caption": "again"},
        {"id": 15, "image_id": 4, "caption": "its file is gone"},
        {"id": 16, "image_id": 6, "caption": "escaping"},
        {"id": 17, "image_id": 2},  # no caption string
    ]
    instances = {
        "images": [],
        "categories": [{"id": 1, "name": "person"}, {"id": 2, "name": "dog"}],
        "annotations": [
            {"image_id": 1, "category_id": 2},
            {"image_id": 1, "category_id": 1},
            {"image_id": 1, "category_id": 2},
            {"image_id": 77, "category_id": 1},
        ],
    }
    _coco(root, images, annotations, instances)
    out = tmp_path / "raw"
    m = collect(out, {"name": "c", "kind": "coco", "path": str(root)})
    s = by_key(out)
    assert set(s) == {"val2017/1.jpg", "val2017/2.jpg"}
    one = s["val2017/1.jpg"]
    assert one["captions"] == ["first ", "second"]  # as provided, in annotation order
    assert one["labels"] == ["dog", "person"]
    assert json.loads(one["extra"]) == {
        "coco_id": 1,
        "split": "val2017",
        "license": "CC BY",
        "flickr_url": "http://f/1",
    }
    assert s["val2017/2.jpg"]["labels"] == []
    assert reasons(out) == {
        "val2017/3.jpg": "duplicate_id",
        "val2017/4.jpg": "missing_image",
        "val2017/../../escape.jpg": "path_escape",
        "val2017/5.jpg": "missing_caption",
        "val2017/image:?": "malformed_row",
        "val2017/image_id=99": "orphan_annotation",
        "val2017/annotation:17": "malformed_row",
    }
    orphan = next(r for r in rows(out, "quarantine") if r["reason"] == "orphan_annotation")
    assert json.loads(orphan["evidence"])["annotation_ids"] == [13, 14]
    check_balance(out, m)


def test_single_captions_file_and_labels_off(tmp_path):
    root = tmp_path / "coco"
    write_image(root / "pics" / "a.jpg")
    _coco(
        root,
        [{"id": 1, "file_name": "a.jpg"}],
        [{"id": 1, "image_id": 1, "caption": "c"}],
        {
            "images": [],
            "categories": [{"id": 1, "name": "cat"}],
            "annotations": [{"image_id": 1, "category_id": 1}],
        },
        split="mini",
    )
    captions = root / "annotations" / "captions_mini.json"
    out = tmp_path / "raw"
    collect(out, {"name": "c", "kind": "coco", "path": str(captions), "images": str(root / "pics")})
    assert by_key(out)["mini/a.jpg"]["labels"] == ["cat"]
    collect(
        out,
        {
            "name": "c",
            "kind": "coco",
            "path": str(captions),
            "images": str(root / "pics"),
            "labels": False,
        },
    )
    assert by_key(out)["mini/a.jpg"]["labels"] == []


def test_coco_fails_fast_on_unusable_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        CocoSource("c", tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"captions_<split>\.json"):
        CocoSource("c", tmp_path / "empty")
    root = tmp_path / "coco"
    (root / "val2017").mkdir(parents=True)
    _coco(root, [], [])
    with pytest.raises(FileNotFoundError, match=r"captions_train2017\.json"):
        CocoSource("c", root, splits=("train2017",))
    (root / "annotations" / "captions_val2017.json").write_text("{oops")
    with pytest.raises(ValueError, match=r"captions_val2017\.json"):
        list(CocoSource("c", root))
    (root / "annotations" / "captions_val2017.json").write_text('{"images": []}')
    with pytest.raises(ValueError, match="needs the lists images, annotations"):
        list(CocoSource("c", root))


def test_real_coco_sample(coco_mini, tmp_path):
    pairs = {p["coco_id"]: p for p in map(json.loads, (coco_mini / "pairs.jsonl").open())}
    out = tmp_path / "raw"
    m = collect(out, {"name": "coco", "kind": "coco", "path": str(coco_mini)})
    samples = rows(out)
    assert m["inputs"] == m["kept"] == len(samples) == 159
    assert m["quarantined"] == 0
    assert m["images_stored"] == 159
    assert [r["sample_id"] for r in samples] == sorted(r["sample_id"] for r in samples)
    for r in samples:
        extra = json.loads(r["extra"])
        p = pairs[extra["coco_id"]]
        assert r["source_key"] == p["image"]
        assert len(r["captions"]) == 5
        assert [c.strip() for c in r["captions"]] == p["captions"]
        assert r["labels"] == p["labels"]
        assert r["labels"]
        assert extra["license"] == p["license"]
        assert extra["split"] == p["split"]
        stored = (out / r["image_path"]).read_bytes()
        assert stored == (coco_mini / p["image"]).read_bytes()
        assert hashlib.sha256(stored).hexdigest() == r["image_sha256"]
    check_balance(out, m)


def test_real_coco_and_its_pairs_manifest_share_images(coco_mini, tmp_path):
    """The same photos through two sources: stored once; identical pairs collapse."""
    out = tmp_path / "raw"
    m = collect(
        out,
        {"name": "coco", "kind": "coco", "path": str(coco_mini)},
        {"name": "pairs", "kind": "manifest", "path": str(coco_mini / "pairs.jsonl")},
    )
    assert m["images_stored"] == 159
    dup = m["sources"]["pairs"]["quarantined_by_reason"].get("duplicate_input", 0)
    # pairs.jsonl strips trailing spaces, so only images whose captions had none collapse
    stripped = sum(
        1
        for r in rows(out)
        if r["source"] == "coco" and r["captions"] == [c.strip() for c in r["captions"]]
    )
    assert dup == stripped > 0
    check_balance(out, m)
