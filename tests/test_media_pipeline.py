"""Video-text and audio-text data sets through every stage of the pipeline (the same commands DVC
and the DAG run): an MSR-VTT-style and a Clotho-style corpus the test generates, real decoding,
the real offline encoders, CPU."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from cmrops import pipeline
from cmrops.media import synthetic as syn

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow  # about a minute each on 2 cores


def _run(work: Path, media: str, source: dict[str, Any], query: int, train: int) -> None:
    p = yaml.safe_load((REPO / "params.yaml").read_text())
    p["collect"]["media"] = media
    p["collect"]["sources"] = [source]
    p["preprocess"].update(shard_size=32, n_workers=1, device="cpu")
    p["split"]["protocol"] = "hashing"
    p["split"]["protocols"]["hashing"] = {"kind": "hashing", "query": query, "train": train}
    p["train"].update(
        bits=[16], epochs=10, batch_size=16, device="cpu", methods=["dcmh", "contrastive"]
    )
    (work / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    for stage in pipeline.stage_names():
        pipeline.run_stage(stage, work, str(work / "params.yaml"))


def _chance_map(work: Path) -> float:
    """The mAP a random ranking scores: the mean share of relevant database items."""
    labels = pq.read_table(work / "data/labelled/labels.parquet").to_pylist()
    of: dict[str, set[str]] = {}
    for r in labels:
        of.setdefault(r["sample_id"], set()).add(r["label"])
    a = pq.read_table(work / "data/split/assignments.parquet").to_pylist()
    query = [r["sample_id"] for r in a if r["split"] == "query"]
    database = [r["sample_id"] for r in a if r["split"] == "database"]
    shares = [np.mean([bool(of.get(q, set()) & of.get(d, set())) for d in database]) for q in query]
    return float(np.mean(shares))


def _check(work: Path, media: str) -> dict[str, Any]:
    r = json.loads((work / "metrics/retrieval.json").read_text())
    forward, backward = f"{media}_to_text", f"text_to_{media}"
    assert r["media"] == media
    assert r["directions"] == [forward, backward]
    assert set(r["models"]) == {"dcmh-16", "contrastive-16"}
    for name, m in r["models"].items():
        assert set(m["directions"]) == {forward, backward}
        assert set(m["code_health"]) == {media, "text"}
        for d in (forward, backward):
            plot = work / "plots" / m["directions"][d]["plots"]["pr"]
            assert plot.is_file()
            assert plot.name == f"{name}_{d}.json"
    chance = _chance_map(work)
    base = r["float_baseline"]["directions"]
    for d in (forward, backward):  # the aligned float baseline learns something real
        assert base[d]["map"] > 1.5 * chance, (d, base[d]["map"], chance)
    train = json.loads((work / "metrics/train.json").read_text())
    assert train["media"] == media
    meta = json.loads((work / "data/codes/dcmh-16/meta.json").read_text())
    assert meta["media"] == media
    return r


def _plant_video_copies(corpus: Path, k: int) -> set[frozenset[str]]:
    """Re-encode ``k`` corpus videos (libx264, 1.5x larger) as new entries with their captions."""
    import av
    from PIL import Image

    info = json.loads(corpus.read_text())
    planted = set()
    for i in range(k):
        src = info["videos"][i]["video_id"]
        with av.open(str(corpus.parent / "videos" / f"{src}.mp4")) as c:
            frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
        big = [np.asarray(Image.fromarray(f).resize((144, 96))) for f in frames]
        copy = f"copy{i}"
        (corpus.parent / "videos" / f"{copy}.mp4").write_bytes(
            syn.encode_frames(big, 8, codec="libx264")
        )
        info["videos"].append({**info["videos"][i], "video_id": copy, "id": 1000 + i})
        info["sentences"] += [
            {**t, "video_id": copy, "sen_id": 10_000 + t["sen_id"]}
            for t in info["sentences"]
            if t["video_id"] == src
        ]
        planted.add(frozenset({src, copy}))
    corpus.write_text(json.dumps(info))
    return planted


def _plant_audio_copies(corpus: Path, k: int) -> set[frozenset[str]]:
    """Re-encode ``k`` corpus clips as FLAC at 44.1 kHz, 6 dB quieter, with their captions."""
    import csv

    import soundfile as sf

    from cmrops.media.audio import resample

    rows = list(csv.reader(corpus.open()))
    planted = set()
    for i, row in enumerate(rows[1 : k + 1]):
        wave, rate = sf.read(corpus.parent / "audio" / row[0], dtype="float32")
        quiet = 0.5 * resample(wave, rate, 44_100)
        name = f"copy{i}.flac"
        (corpus.parent / "audio" / name).write_bytes(syn.encode_audio(quiet, 44_100, "FLAC"))
        rows.append([name, *row[1:]])
        planted.add(frozenset({row[0], name}))
    with corpus.open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    return planted


def _near_duplicates_found(work: Path, planted: set[frozenset[str]]) -> None:
    """Clean drops one clip of every planted copy pair, keeping the other, and nothing else."""
    samples = pq.read_table(work / "data/interim/samples.parquet").to_pylist()
    key = {r["sample_id"]: r["source_key"] for r in samples}
    found = set()
    for r in pq.read_table(work / "data/clean/quarantine.parquet").to_pylist():
        if r["reason"].startswith("near_duplicate"):
            found.add(frozenset({key[r["sample_id"]], key[json.loads(r["evidence"])["kept"]]}))
    assert found == planted


def test_video_text_pipeline(tmp_path: Path) -> None:
    corpus = syn.write_video_corpus(tmp_path / "corpus", 60)
    planted = _plant_video_copies(corpus, 4)
    source = {"name": "clips", "kind": "msrvtt", "path": str(corpus.relative_to(tmp_path))}
    _run(tmp_path, "video", source, query=10, train=20)
    _check(tmp_path, "video")
    _near_duplicates_found(tmp_path, planted)
    thumbs = pq.read_table(tmp_path / "data/interim/thumbs.parquet")
    assert thumbs.num_rows == 64


def test_audio_text_pipeline(tmp_path: Path) -> None:
    corpus = syn.write_audio_corpus(tmp_path / "corpus", 60)
    planted = _plant_audio_copies(corpus, 4)
    source = {"name": "clips", "kind": "clotho", "path": str(corpus.relative_to(tmp_path))}
    _run(tmp_path, "audio", source, query=10, train=20)
    _check(tmp_path, "audio")
    _near_duplicates_found(tmp_path, planted)
    quality = json.loads((tmp_path / "metrics/quality.json").read_text())
    assert "audio clips have no frame size" in quality["not_run"]["min_side"]
