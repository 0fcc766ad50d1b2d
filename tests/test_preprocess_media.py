"""Preprocess on video and audio data sets: keyframes and fingerprints, broken and oversized media
quarantined with their reasons, thumbnails, pooled embeddings, audio encoders, transcripts, and
byte-identical reruns. Real decoding of media the tests generate (cmrops.media.synthetic)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from cmrops.imaging import hamming64
from cmrops.media import synthetic as syn
from cmrops.params import from_dict
from cmrops.stages import collect, preprocess
from tests import tiny_models

FAST = {"n_workers": 1, "device": "cpu", "shard_size": 4, "tokenizer": "words"}


def _collect(root: Path, out: Path, media: str) -> dict[str, Any]:
    spec = {"name": "f", "kind": "folder", "path": str(root)}
    p = from_dict(collect.CollectParams, {"sources": [spec], "media": media}, where="test")
    return collect.run(p, out)


def _preprocess(raw: Path, out: Path, **over: Any) -> dict[str, Any]:
    p = from_dict(preprocess.PreprocessParams, {**FAST, **over}, where="test")
    return preprocess.run(p, raw, out)


def _put(root: Path, name: str, data: bytes, caption: str) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / name).write_bytes(data)
    (root / name).with_suffix(".txt").write_text(caption + "\n")


def _by_key(path: Path) -> dict[str, dict[str, Any]]:
    return {r["source_key"]: r for r in pq.read_table(path).to_pylist()}


@pytest.fixture(scope="module")
def video_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("videos")
    folder = root / "clips"
    good = {
        "red_right.mp4": ("circle", "red", "right"),
        "blue_up.mp4": ("square", "blue", "up"),
        "green_left.mp4": ("triangle", "green", "left"),
    }
    for name, (shape, colour, direction) in good.items():
        data = syn.moving_shape_video(shape, colour, direction, seconds=2.0, fps=8)
        _put(folder, name, data, syn.video_caption(shape, colour, direction))
    # the same clip re-encoded at another size and codec: a near-duplicate video
    copy = syn.moving_shape_video(
        "circle", "red", "right", seconds=2.0, fps=8, size=(144, 96), codec="libx264"
    )
    _put(folder, "red_right_copy.mp4", copy, "the red circle again")
    red = syn.moving_shape_video("circle", "red", "right", seconds=2.0, fps=8)
    _put(folder, "cut.mp4", syn.truncate(red, 0.4), "a video cut short")
    _put(folder, "junk.mp4", syn.not_media(), "not a video at all")
    _put(folder, "long.mp4", syn.long_video(30.0), "a long dull video")
    _put(folder, "huge.mp4", syn.huge_frame_video(4096, 4096), "an enormous frame")
    raw, interim = root / "raw", root / "interim"
    _collect(folder, raw, "video")
    over = {"video": {"fps": 1.0, "max_frames": 4, "max_duration_s": 20.0, "max_pixels": 4_000_000}}
    m = _preprocess(raw, interim, **over)
    return {"root": root, "raw": raw, "interim": interim, "metrics": m, "over": over}


def test_video_keyframes_fingerprints_and_columns(video_run):
    s = _by_key(video_run["interim"] / "samples.parquet")
    assert set(s) == {"red_right.mp4", "blue_up.mp4", "green_left.mp4", "red_right_copy.mp4"}
    r = s["red_right.mp4"]
    assert (r["media"], r["format"], r["width"], r["height"]) == ("video", "MP4", 96, 64)
    assert r["n_frames"] == 2  # 2 s at 1 keyframe per second
    assert r["duration_s"] == pytest.approx(2.0, abs=0.2)
    info = json.loads(r["media_info"])
    assert info["frame_times"] == pytest.approx([0.0, 1.0], abs=0.13)
    near = hamming64(r["phash"], s["red_right_copy.mp4"]["phash"])
    far = min(hamming64(r["phash"], s[k]["phash"]) for k in ("blue_up.mp4", "green_left.mp4"))
    assert near <= 6 < far, (near, far)  # 6: clean.near_duplicate_image.radius


def test_broken_and_oversized_videos_are_quarantined_with_reasons(video_run):
    q = _by_key(video_run["interim"] / "quarantine.parquet")
    assert {k: r["reason"] for k, r in q.items()} == {
        "cut.mp4": "truncated_video",
        "junk.mp4": "unsupported_media",
        "long.mp4": "video_too_long",
        "huge.mp4": "video_too_large",
    }
    for r in q.values():
        assert r["stage"] == "preprocess"
        assert r["detail"]
        assert json.loads(r["evidence"])["image_path"].startswith("objects/")
    m = video_run["metrics"]
    assert m["in"] == m["kept"] + m["quarantined"] == 8
    assert m["media"] == {"video": 4}


def test_video_thumbnails_and_pooled_embeddings(video_run):
    interim = video_run["interim"]
    samples = pq.read_table(interim / "samples.parquet").to_pylist()
    thumbs = {
        r["sample_id"]: r["jpeg"] for r in pq.read_table(interim / "thumbs.parquet").to_pylist()
    }
    assert set(thumbs) == {r["sample_id"] for r in samples}
    import io

    strip = Image.open(io.BytesIO(thumbs[samples[0]["sample_id"]]))
    assert strip.format == "JPEG"
    assert strip.width > strip.height  # keyframes side by side
    meta = json.loads((interim / "features" / "meta.json").read_text())
    assert meta["media"] == "video"
    assert "keyframes" in meta["image"]["pooling"]
    image = np.load(interim / "features" / "image.npy")
    assert image.shape == (4, meta["image"]["dim"])
    np.testing.assert_allclose(np.linalg.norm(image, axis=1), 1.0, atol=1e-5)


def test_video_rerun_is_byte_identical_and_redoes_nothing(video_run):
    interim = video_run["interim"]
    names = ["samples.parquet", "quarantine.parquet", "thumbs.parquet", "features/image.npy"]
    before = {n: (interim / n).read_bytes() for n in names}
    _preprocess(video_run["raw"], interim, **video_run["over"])
    t = json.loads((interim / "throughput.json").read_text())
    assert (t["shards_decoded"], t["shards_embedded"]) == (0, 0)
    assert {n: (interim / n).read_bytes() for n in names} == before


@pytest.fixture(scope="module")
def audio_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("audio") / "clips"
    for name, kind, freq in (
        ("high.wav", "tone", 1200.0),
        ("low.wav", "tone", 220.0),
        ("up.wav", "chirp_up", 440.0),
        ("down.flac", "chirp_down", 440.0),
    ):
        wave = syn.tone(kind, seconds=1.0, freq=freq)
        fmt = "FLAC" if name.endswith(".flac") else "WAV"
        _put(folder, name, syn.encode_audio(wave, 16_000, fmt), syn.audio_caption(kind, freq))
    # the same tone at 44.1 kHz, 6 dB quieter: a near-duplicate clip
    quiet = 0.5 * syn.tone("tone", seconds=1.0, freq=1200.0, sample_rate=44_100)
    _put(folder, "high_quiet.wav", syn.encode_audio(quiet, 44_100), "a quieter high tone")
    good = syn.encode_audio(syn.tone("beeps", seconds=1.0), 16_000)
    _put(folder, "cut.wav", syn.truncate(good, 0.5), "beeps cut short")
    _put(folder, "junk.wav", syn.not_media(), "noise bytes")
    _put(folder, "blip.wav", syn.encode_audio(syn.tone("tone", seconds=0.02), 16_000), "a blip")
    return folder


def test_audio_decoding_fingerprints_and_quarantine(tmp_path, audio_folder):
    raw, interim = tmp_path / "raw", tmp_path / "interim"
    _collect(audio_folder, raw, "audio")
    m = _preprocess(raw, interim)
    s = _by_key(interim / "samples.parquet")
    assert set(s) == {"high.wav", "low.wav", "up.wav", "down.flac", "high_quiet.wav"}
    assert s["down.flac"]["format"] == "FLAC"
    assert (s["high.wav"]["width"], s["high.wav"]["n_frames"]) == (0, 0)
    assert json.loads(s["high_quiet.wav"]["media_info"])["native_rate"] == 44_100
    near = hamming64(s["high.wav"]["phash"], s["high_quiet.wav"]["phash"])
    far = min(hamming64(s["high.wav"]["phash"], s[k]["phash"]) for k in ("low.wav", "up.wav"))
    assert near <= 6 < far, (near, far)
    q = {k: r["reason"] for k, r in _by_key(interim / "quarantine.parquet").items()}
    assert q == {"cut.wav": "truncated_audio", "junk.wav": "unsupported_media",
                 "blip.wav": "audio_too_short"}  # fmt: skip
    assert m["media"] == {"audio": 5}
    meta = json.loads((interim / "features" / "meta.json").read_text())
    assert (meta["media"], meta["image"]["encoder"], meta["image"]["dim"]) == (
        "audio",
        "logmel-stats",
        192,
    )
    assert not (interim / "features" / "transcripts.parquet").exists()
    assert pq.read_table(interim / "thumbs.parquet").num_rows == 0  # videos only


def test_audio_encoder_model_and_transcripts(tmp_path, audio_folder):
    encoder = tiny_models.tiny_wav2vec2(tmp_path / "w2v")
    asr = tiny_models.tiny_wav2vec2_ctc(tmp_path / "ctc")
    raw = tmp_path / "raw"
    _collect(audio_folder, raw, "audio")
    plain, spoken = tmp_path / "plain", tmp_path / "spoken"
    _preprocess(raw, plain, audio={"encoder": str(encoder)})
    _preprocess(
        raw, spoken, audio={"encoder": str(encoder)}, asr={"model": str(asr), "as_caption": True}
    )
    meta = json.loads((spoken / "features" / "meta.json").read_text())
    assert meta["image"]["encoder"] == str(encoder)
    assert meta["transcripts"]["in_text"] is True
    t = pq.read_table(spoken / "features" / "transcripts.parquet").to_pylist()
    ids = pq.read_table(spoken / "samples.parquet")["sample_id"].to_pylist()
    assert [r["sample_id"] for r in t] == ids
    assert all(isinstance(r["transcript"], str) for r in t)
    a = np.load(plain / "features" / "image.npy")
    b = np.load(spoken / "features" / "image.npy")
    np.testing.assert_array_equal(a, b)  # the audio side does not depend on transcripts
    assert a.shape[1] == meta["image"]["dim"]
    spoke = [bool(r["transcript"]) for r in t]
    text_a = np.load(plain / "features" / "text.npy")
    text_b = np.load(spoken / "features" / "text.npy")
    for i, has in enumerate(spoke):  # a non-empty transcript joins the captions' mean
        assert np.array_equal(text_a[i], text_b[i]) != has


def test_one_media_kind_per_raw_table(tmp_path):
    from tests.raw_helpers import RawSample, write_raw

    raw = tmp_path / "raw"
    write_raw(
        raw,
        [
            RawSample("a.mp4", b"v" * 64, media="video"),
            RawSample("b.wav", b"a" * 64, media="audio"),
        ],
    )
    with pytest.raises(ValueError, match="one media kind per data set"):
        _preprocess(raw, tmp_path / "interim")
