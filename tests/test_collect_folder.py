"""Folder source: sidecar captions, caption indexes, and every bad input it can meet."""

from __future__ import annotations

import json
import os

import pytest

from cmrops.sources import FolderSource, RawItem, Reject
from tests.collect_util import by_key, check_balance, collect, reasons, rows, write_image


def test_sidecar_captions_recursive(tmp_path):
    root = tmp_path / "photos"
    write_image(root / "a.jpg")
    (root / "a.txt").write_text("a red square\n\n  \nanother caption\r\n", encoding="utf-8")
    write_image(root / "sub" / "b.png", (0, 0, 255), "PNG")
    (root / "sub" / "b.txt").write_text("\ufeffa blue one", encoding="utf-8")  # BOM accepted
    write_image(root / ".hidden" / "c.jpg")  # hidden folders are skipped
    out = tmp_path / "raw"
    m = collect(out, {"name": "f", "kind": "folder", "path": str(root)})
    s = by_key(out)
    assert set(s) == {"a.jpg", "sub/b.png"}
    assert s["a.jpg"]["captions"] == ["a red square", "another caption"]
    assert s["sub/b.png"]["captions"] == ["a blue one"]
    assert s["a.jpg"]["labels"] == []
    assert (out / s["a.jpg"]["image_path"]).read_bytes() == (root / "a.jpg").read_bytes()
    check_balance(out, m)


def test_captions_json_both_shapes_and_sidecar_merge(tmp_path):
    root = tmp_path / "d"
    write_image(root / "x.jpg", (1, 2, 3))
    write_image(root / "y.jpg", (4, 5, 6))
    (root / "x.txt").write_text("from the sidecar\n")
    index = {"x.jpg": "from the index", "y.jpg": ["1", "2"]}
    (root / "captions.json").write_text(json.dumps(index))
    out = tmp_path / "raw"
    collect(out, {"name": "f", "kind": "folder", "path": str(root)})
    s = by_key(out)
    assert s["x.jpg"]["captions"] == ["from the index", "from the sidecar"]
    assert s["y.jpg"]["captions"] == ["1", "2"]

    (root / "captions.json").write_text(
        json.dumps(
            [{"image": "x.jpg", "captions": ["listed"]}, {"image": "y.jpg", "caption": "one"}]
        )
    )
    collect(out, {"name": "f", "kind": "folder", "path": str(root)})
    s = by_key(out)
    assert s["x.jpg"]["captions"] == ["listed", "from the sidecar"]
    assert s["y.jpg"]["captions"] == ["one"]


def test_flickr8k_captions_txt(tmp_path):
    root = tmp_path / "flickr"
    write_image(root / "Images" / "1000.jpg", (9, 9, 9))
    write_image(root / "Images" / "2000.jpg", (90, 90, 90))
    (root / "captions.txt").write_text(
        "image,caption\n"
        "1000.jpg,A child in a pink dress , climbing stairs .\n"
        '1000.jpg,"A girl, going up"\n'
        "2000.jpg#0\tA dog runs\n",
        encoding="utf-8",
    )
    out = tmp_path / "raw"
    m = collect(out, {"name": "f", "kind": "folder", "path": str(root)})
    s = by_key(out)
    assert s["Images/1000.jpg"]["captions"] == [
        "A child in a pink dress , climbing stairs .",
        "A girl, going up",
    ]
    assert s["Images/2000.jpg"]["captions"] == ["A dog runs"]
    assert m["quarantined"] == 0


def test_bad_inputs_are_quarantined_and_the_run_goes_on(tmp_path):
    outside = tmp_path / "outside"
    write_image(outside / "secret.jpg", (7, 7, 7))
    (outside / "secret.txt").write_text("leaked caption\n")
    root = tmp_path / "d"
    write_image(root / "ok.jpg")
    (root / "ok.txt").write_text("fine\n")
    write_image(root / "nocap.jpg", (1, 1, 1))  # no caption anywhere
    (root / "orphan.txt").write_text("caption of a lost image\n")
    (root / "empty.jpg").write_bytes(b"")
    (root / "empty.txt").write_text("zero bytes\n")
    write_image(root / "badutf.jpg", (2, 2, 2))
    (root / "badutf.txt").write_bytes(b"caf\xe9 au lait\n")
    (root / "link_out.jpg").symlink_to(outside / "secret.jpg")
    (root / "link_out.txt").write_text("a caption\n")
    (root / "dangling.jpg").symlink_to(root / "gone.jpg")
    (root / "dangling.txt").write_text("a caption\n")
    (root / "dir_out").symlink_to(outside, target_is_directory=True)
    write_image(root / "capleak.jpg", (3, 3, 3))
    (root / "capleak.txt").symlink_to(outside / "secret.txt")
    os.mkfifo(root / "pipe.jpg")  # opening it would block: must be refused unread
    (root / "pipe.txt").write_text("a caption\n")
    (root / "captions.json").write_text(
        json.dumps({"../outside/secret.jpg": "escape", "not_here.jpg": ["missing"]})
    )
    out = tmp_path / "raw"
    m = collect(out, {"name": "f", "kind": "folder", "path": str(root)})
    assert [r["source_key"] for r in rows(out)] == ["ok.jpg"]
    assert reasons(out) == {
        "nocap.jpg": "missing_caption",
        "orphan.txt": "missing_image",
        "empty.jpg": "empty_file",
        "badutf.jpg": "invalid_utf8",
        "link_out.jpg": "path_escape",
        "dangling.jpg": "missing_image",
        "dir_out": "path_escape",
        "capleak.jpg": "path_escape",
        "pipe.jpg": "not_a_file",
        "../outside/secret.jpg": "path_escape",
        "not_here.jpg": "missing_image",
    }
    check_balance(out, m)
    assert m["sources"]["f"]["quarantined_by_reason"]["path_escape"] == 4


def test_symlink_inside_root_is_followed(tmp_path):
    root = tmp_path / "d"
    write_image(root / "real" / "a.jpg")
    (root / "alias.jpg").symlink_to(root / "real" / "a.jpg")
    (root / "alias.txt").write_text("through a link\n")
    (root / "real" / "a.txt").write_text("the original\n")
    out = tmp_path / "raw"
    collect(out, {"name": "f", "kind": "folder", "path": str(root)})
    s = by_key(out)
    assert set(s) == {"alias.jpg", "real/a.jpg"}
    assert s["alias.jpg"]["image_sha256"] == s["real/a.jpg"]["image_sha256"]
    assert len(list((out / "objects").rglob("*"))) == 2  # one folder, one object


def test_same_image_twice(tmp_path):
    root = tmp_path / "d"
    data = write_image(root / "a.jpg")
    (root / "b.jpg").write_bytes(data)
    (root / "c.jpg").write_bytes(data)
    (root / "a.txt").write_text("same\n")
    (root / "b.txt").write_text("same\n")
    (root / "c.txt").write_text("different\n")
    out = tmp_path / "raw"
    m = collect(out, {"name": "f", "kind": "folder", "path": str(root)})
    s = by_key(out)
    assert set(s) == {"a.jpg", "c.jpg"}  # c: same image, other captions -> its own sample
    q = rows(out, "quarantine")
    assert [(r["source_key"], r["reason"]) for r in q] == [("b.jpg", "duplicate_input")]
    assert json.loads(q[0]["evidence"])["duplicate_of"] == s["a.jpg"]["sample_id"]
    assert m["images_stored"] == 1
    assert [p.name for p in (out / "objects").rglob("*") if p.is_file()] == [
        s["a.jpg"]["image_sha256"]
    ]


def test_whole_folder_failures_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        FolderSource("f", tmp_path / "nowhere")
    root = tmp_path / "d"
    root.mkdir()
    (root / "captions.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"captions\.json"):
        FolderSource("f", root)


def test_source_yields_records_lazily(tmp_path):
    root = tmp_path / "d"
    for i in range(3):
        write_image(root / f"{i}.jpg", (i, i, i))
        (root / f"{i}.txt").write_text(f"caption {i}\n")
    it = iter(FolderSource("f", root))
    first = next(it)
    assert isinstance(first, RawItem)
    assert first.path is not None
    assert first.data is None
    assert all(not isinstance(r, Reject) for r in it)
