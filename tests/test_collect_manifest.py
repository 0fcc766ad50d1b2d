"""CSV / JSONL manifests: formats, bad rows (quarantined) and bad files (fail fast)."""

from __future__ import annotations

import json

import pytest

from cmrops.sources import ManifestSource
from tests.collect_util import by_key, check_balance, collect, image_bytes, reasons, write_image


def _images(root, n=3):
    for i in range(n):
        write_image(root / "img" / f"{i}.jpg", (40 * i, 10, 10))


def test_csv_with_bom_lists_separators_labels_and_extra(tmp_path):
    _images(tmp_path)
    (tmp_path / "m.csv").write_text(
        "\ufeffimage,captions,labels,licence\n"
        "img/0.jpg,a cat | a small cat ||,cat|animal,cc-by\n"
        'img/1.jpg,"[""one, with comma"", ""two""]","[""dog""]",\n'
        "./img/2.jpg,only one,,x\n",
        encoding="utf-8",
    )
    out = tmp_path / "raw"
    m = collect(out, {"name": "m", "kind": "manifest", "path": str(tmp_path / "m.csv")})
    s = by_key(out)
    assert s["1:img/0.jpg"]["captions"] == ["a cat", "a small cat"]
    assert s["1:img/0.jpg"]["labels"] == ["animal", "cat"]
    assert json.loads(s["1:img/0.jpg"]["extra"]) == {"licence": "cc-by"}
    assert s["2:img/1.jpg"]["captions"] == ["one, with comma", "two"]
    assert s["2:img/1.jpg"]["labels"] == ["dog"]
    assert s["3:./img/2.jpg"]["labels"] == []
    check_balance(out, m)


def test_tsv_and_custom_columns(tmp_path):
    _images(tmp_path, 1)
    (tmp_path / "m.tsv").write_text("file\ttext\nimg/0.jpg\ta; b\n")
    out = tmp_path / "raw"
    collect(
        out,
        {
            "name": "m",
            "kind": "manifest",
            "path": str(tmp_path / "m.tsv"),
            "image_column": "file",
            "captions_column": "text",
            "separator": ";",
        },
    )
    assert by_key(out)["1:img/0.jpg"]["captions"] == ["a", "b"]


def test_jsonl_rows(tmp_path):
    _images(tmp_path)
    lines = [
        {"image": "img/0.jpg", "captions": ["x", "y"], "labels": ["l1"], "id": 7},
        {"image": "img/1.jpg", "captions": "a single caption | with a bar", "labels": "a|b"},
    ]
    (tmp_path / "m.jsonl").write_text(
        "\ufeff" + "\n".join(json.dumps(x) for x in lines) + "\n\n", encoding="utf-8"
    )
    out = tmp_path / "raw"
    collect(out, {"name": "j", "kind": "manifest", "path": str(tmp_path / "m.jsonl")})
    s = by_key(out)
    assert s["1:img/0.jpg"]["captions"] == ["x", "y"]
    assert json.loads(s["1:img/0.jpg"]["extra"]) == {"id": 7}
    assert s["2:img/1.jpg"]["captions"] == ["a single caption | with a bar"]
    assert s["2:img/1.jpg"]["labels"] == ["a", "b"]


def test_csv_bad_rows_are_quarantined(tmp_path):
    _images(tmp_path)
    outside = tmp_path.parent / f"{tmp_path.name}_outside.jpg"
    outside.write_bytes(image_bytes())
    (tmp_path / "img" / "out.jpg").symlink_to(outside)
    weird = "NUL\x00 here, RTL \u202ecba\u202c and zero\u200bwidth"
    huge = "w" * (1 << 20)  # a 1 MB caption: kept as provided, preprocess caps it
    text = (
        "image,captions\n"
        "img/0.jpg,fine\n"
        "img/1.jpg,caf\xe9\n"  # written as latin-1 below: invalid UTF-8
        "img/2.jpg,too,many,fields\n"
        "../escape.jpg,x\n"
        "/etc/hostname,x\n"
        "img/out.jpg,x\n"
        "img/missing.jpg,x\n"
        "img/2.jpg,\n"
        f'img/2.jpg,"{weird}"\n'
        f"img/1.jpg,{huge}\n"
    )
    raw = text.encode("utf-8").replace("caf\xe9".encode(), b"caf\xe9")
    (tmp_path / "m.csv").write_bytes(raw)
    out = tmp_path / "raw"
    m = collect(out, {"name": "m", "kind": "manifest", "path": str(tmp_path / "m.csv")})
    assert reasons(out) == {
        "2:img/1.jpg": "invalid_utf8",
        "3:img/2.jpg": "malformed_row",
        "4:../escape.jpg": "path_escape",
        "5:/etc/hostname": "path_escape",
        "6:img/out.jpg": "path_escape",
        "7:img/missing.jpg": "missing_image",
        "8:img/2.jpg": "missing_caption",
    }
    s = by_key(out)
    assert set(s) == {"1:img/0.jpg", "9:img/2.jpg", "10:img/1.jpg"}
    assert s["9:img/2.jpg"]["captions"] == [weird]
    assert s["10:img/1.jpg"]["captions"] == [huge]
    check_balance(out, m)


def test_jsonl_bad_lines_are_quarantined(tmp_path):
    _images(tmp_path)
    (tmp_path / "m.jsonl").write_bytes(
        b'{"image": "img/0.jpg", "captions": ["ok"]}\n'
        b"{broken json\n"
        b"[1, 2]\n"
        b'{"image": "img/1.jpg", "captions": ["caf\xe9"]}\n'
        b'{"image": "img/2.jpg", "captions": ["lone \\udc80 surrogate"]}\n'
        b'{"image": "img/2.jpg", "captions": [1, 2]}\n'
        b'{"captions": ["no image"]}\n'
    )
    out = tmp_path / "raw"
    m = collect(out, {"name": "j", "kind": "manifest", "path": str(tmp_path / "m.jsonl")})
    assert reasons(out) == {
        "2:": "malformed_row",
        "3:": "malformed_row",
        "4:": "invalid_utf8",
        "5:img/2.jpg": "invalid_utf8",
        "6:img/2.jpg": "malformed_row",
        "7:": "malformed_row",
    }
    assert list(by_key(out)) == ["1:img/0.jpg"]
    check_balance(out, m)


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("png.csv", image_bytes(fmt="PNG"), "binary"),
        ("page.csv", b"<!DOCTYPE html>\n<html><body>404</body></html>\n", "header must name"),
        ("utf16.csv", "image,captions\na.jpg,x\n".encode("utf-16"), "UTF-16"),
        ("m.txt", b"image,captions\n", "cannot tell the manifest format"),
        ("m.jsonl", b"image,captions\na.jpg,x\n", "not a JSON Lines manifest"),
        ("list.jsonl", b"[1]\n", "not a JSON Lines manifest"),
    ],
)
def test_unusable_manifest_fails_fast_naming_the_file(tmp_path, name, content, match):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ValueError, match=match) as err:
        ManifestSource("m", tmp_path / name)
    assert name in str(err.value)


def test_missing_manifest(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.csv"):
        ManifestSource("m", tmp_path / "nope.csv")


def test_coco_pairs_jsonl_as_a_manifest(coco_mini, tmp_path):
    pairs = [json.loads(line) for line in (coco_mini / "pairs.jsonl").read_text().splitlines()]
    out = tmp_path / "raw"
    m = collect(out, {"name": "pairs", "kind": "manifest", "path": str(coco_mini / "pairs.jsonl")})
    assert m["kept"] == len(pairs) == 159
    assert m["quarantined"] == 0
    s = by_key(out)
    for i, p in enumerate(pairs, start=1):
        row = s[f"{i}:{p['image']}"]
        assert row["captions"] == p["captions"]
        assert row["labels"] == p["labels"]
        assert json.loads(row["extra"])["coco_id"] == p["coco_id"]
