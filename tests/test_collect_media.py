"""Collect for video and audio data sets: MSR-VTT JSON, Clotho and AudioCaps CSVs, folders and
manifests of media files, and the one-media-per-data-set rule. Collect stores bytes without
decoding them (preprocess decodes), so the files here only need distinct bytes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.collect_util import by_key, check_balance, collect, params, reasons


def _blob(path: Path, tag: str) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = f"media bytes of {tag}".encode() * 8
    path.write_bytes(data)
    return data


def _msrvtt(root: Path) -> Path:
    for i in range(3):
        _blob(root / "TrainValVideo" / f"video{i}.mp4", f"v{i}")
    _blob(root / "TrainValVideo" / "video9.webm", "v9")
    _blob(root / "TrainValVideo" / "video7.mp4", "v7")
    info = {
        "videos": [
            {"video_id": "video0", "category": 3, "split": "train", "id": 0},
            {"video_id": "video1", "category": 7, "split": "validate", "id": 1},
            {"video_id": "video2", "category": 3, "split": "train", "id": 2},
            {"video_id": "video0", "category": 3, "split": "train", "id": 3},  # listed twice
            {"video_id": "video5", "category": 1, "split": "train", "id": 5},  # no file
            {"video_id": "video9", "category": 2, "split": "test", "id": 9},  # .webm
            {"video_id": "video7", "category": 2, "split": "train", "id": 7},  # no caption
            {"id": 8},  # malformed
        ],
        "sentences": [
            {"video_id": "video0", "caption": "a man talks", "sen_id": 1},
            {"video_id": "video0", "caption": "someone is speaking", "sen_id": 0},
            {"video_id": "video1", "caption": "a car drives", "sen_id": 2},
            {"video_id": "video2", "caption": "a dog runs", "sen_id": 3},
            {"video_id": "video5", "caption": "lost", "sen_id": 4},
            {"video_id": "video9", "caption": "a cat sleeps", "sen_id": 5},
            {"video_id": "video42", "caption": "nobody lists me", "sen_id": 6},
            {"caption": "no video id", "sen_id": 7},
        ],
    }
    path = root / "train_val_videodatainfo.json"
    path.write_text(json.dumps(info))
    return path


def test_msrvtt_layout(tmp_path):
    path = _msrvtt(tmp_path / "msrvtt")
    out = tmp_path / "raw"
    m = collect(out, {"name": "m", "kind": "msrvtt", "path": str(path)}, media="video")
    s = by_key(out)
    assert set(s) == {"video0", "video1", "video2", "video9"}
    assert s["video0"]["captions"] == ["someone is speaking", "a man talks"]  # sen_id order
    assert s["video0"]["labels"] == ["category3"]
    assert {r["media"] for r in s.values()} == {"video"}
    assert json.loads(s["video1"]["extra"])["split"] == "validate"
    stored = (out / s["video9"]["image_path"]).read_bytes()
    assert stored == (path.parent / "TrainValVideo" / "video9.webm").read_bytes()
    r = reasons(out)
    assert r["video5"] == "missing_image"
    assert r["video7"] == "missing_caption"
    assert r["video42"] == "orphan_annotation"
    assert r["sentences[7]"] == "malformed_row"
    assert r["videos[7]"] == "malformed_row"
    assert list(r.values()).count("duplicate_id") == 1
    assert m["media"] == "video"
    check_balance(out, m)


def test_msrvtt_splits_and_media_dir(tmp_path):
    path = _msrvtt(tmp_path / "msrvtt")
    moved = tmp_path / "elsewhere"
    (path.parent / "TrainValVideo").rename(moved)
    out = tmp_path / "raw"
    spec = {
        "name": "m",
        "kind": "msrvtt",
        "path": str(path),
        "media_dir": str(moved),
        "splits": ["train"],
        "labels": False,
    }
    collect(out, spec, media="video")
    s = by_key(out)
    assert set(s) == {"video0", "video2"}  # validate and test videos are left out, not lost
    assert s["video2"]["labels"] == []
    assert "video9" not in reasons(out)


def test_clotho_layout(tmp_path):
    root = tmp_path / "clotho"
    _blob(root / "development" / "Rain on roof.wav", "rain")
    _blob(root / "development" / "bird song.flac", "bird")
    csv = root / "clotho_captions_development.csv"
    csv.write_text(
        "file_name,caption_1,caption_2,caption_3,caption_4,caption_5\n"
        '"Rain on roof.wav",rain falls on a roof,steady rain,,water drips,\n'
        "bird song.flac,a bird sings,birds chirp,a,b,c\n"
        "missing.wav,nothing here,x,y,z,w\n"
        "short row.wav,only two\n"
        "empty.wav,,,,,\n"
    )
    _blob(root / "development" / "empty.wav", "empty")
    out = tmp_path / "raw"
    m = collect(out, {"name": "c", "kind": "clotho", "path": str(csv)}, media="audio")
    s = by_key(out)
    assert set(s) == {"Rain on roof.wav", "bird song.flac"}
    rain = s["Rain on roof.wav"]["captions"]
    assert rain == ["rain falls on a roof", "steady rain", "water drips"]
    assert s["bird song.flac"]["media"] == "audio"
    r = reasons(out)
    assert r["missing.wav"] == "missing_image"
    assert r["short row.wav"] == "malformed_row"
    assert r["empty.wav"] == "missing_caption"
    check_balance(out, m)


def test_audiocaps_layout_groups_captions_and_finds_downloader_names(tmp_path):
    root = tmp_path / "audiocaps"
    _blob(root / "audio" / "r1nicOVtvkQ.wav", "a")  # <youtube_id>
    _blob(root / "audio" / "Yabc123.flac", "b")  # Y<youtube_id>
    _blob(root / "audio" / "zzz_30.ogg", "c")  # <youtube_id>_<start>
    _blob(root / "audio" / "555.mp3", "d")  # <audiocap_id>
    csv = root / "val.csv"
    csv.write_text(
        "audiocap_id,youtube_id,start_time,caption\n"
        "1,r1nicOVtvkQ,130,A woman talks nearby as water pours\n"
        "2,r1nicOVtvkQ,130,Water pours while a woman speaks\n"
        "3,abc123,0,A dog barks\n"
        "4,zzz,30,Wind blows\n"
        "555,qqq,10,An engine idles\n"
        "6,gone,5,Nobody downloaded me\n"
        "7,,5,no youtube id\n"
    )
    out = tmp_path / "raw"
    m = collect(out, {"name": "ac", "kind": "audiocaps", "path": str(csv)}, media="audio")
    s = by_key(out)
    assert set(s) == {"r1nicOVtvkQ@130", "abc123@0", "zzz@30", "qqq@10"}
    assert s["r1nicOVtvkQ@130"]["captions"] == [
        "A woman talks nearby as water pours",
        "Water pours while a woman speaks",
    ]
    assert json.loads(s["r1nicOVtvkQ@130"]["extra"])["audiocap_ids"] == ["1", "2"]
    r = reasons(out)
    assert r["gone@5"] == "missing_image"
    assert r["line8"] == "malformed_row"
    check_balance(out, m)


def test_folder_and_manifest_read_the_data_sets_media(tmp_path):
    root = tmp_path / "clips"
    _blob(root / "a.wav", "a")
    (root / "a.txt").write_text("a dog barks\n")
    _blob(root / "b.mp4", "b")  # a video in an audio folder: not a sample of this data set
    (root / "b.txt").write_text("a video\n")
    (root / "pairs.csv").write_text("image,captions\na.wav,a dog barks|loud\nb.mp4,a video\n")
    out = tmp_path / "raw"
    collect(out, {"name": "f", "kind": "folder", "path": str(root)}, media="audio")
    s = by_key(out)
    assert set(s) == {"a.wav"}
    assert s["a.wav"]["media"] == "audio"
    assert reasons(out) == {"b.txt": "missing_image"}  # its caption is not silently lost

    collect(out, {"name": "m", "kind": "manifest", "path": str(root / "pairs.csv")}, media="audio")
    s = by_key(out)
    assert set(s) == {"1:a.wav"}
    assert reasons(out) == {"2:b.mp4": "wrong_media"}


def test_one_media_kind_per_data_set():
    with pytest.raises(ValueError, match=r"collect\.media: video"):
        params({"name": "m", "kind": "msrvtt", "path": "x.json"})
    with pytest.raises(ValueError, match="holds image"):
        params({"name": "s", "kind": "synthetic"}, media="audio")
    with pytest.raises(ValueError, match="is not one of"):
        params({"name": "s", "kind": "synthetic"}, media="smell")


def test_image_data_sets_record_their_media(tmp_path):
    out = tmp_path / "raw"
    collect(out, {"name": "s", "kind": "synthetic", "n": 5, "defects": {}})
    assert {r["media"] for r in by_key(out).values()} == {"image"}
