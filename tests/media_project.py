"""Generated video-text and audio-text projects, every stage run in-process (the same commands
DVC and the DAG run) on an MSR-VTT-style or Clotho-style corpus of 64 clean samples plus two
broken files each (:data:`BROKEN`: one cut short, one not media at all), real decoding, the
real offline encoders, CPU. About a minute and a half each on 2 cores.

``tests/conftest.py`` builds one of each per session (``video_project``, ``audio_project``);
test_media_pipeline checks the pipeline's outputs on them and the dashboard tests show them.
The broken files are extra corpus entries, so the 64 clean samples go through the later stages
exactly as they would alone.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import yaml

from cmrops import pipeline
from cmrops.media import synthetic as syn

REPO = Path(__file__).resolve().parents[1]
N = 64  # clean samples per corpus

#: The broken files added to each corpus: source_key -> the reason preprocess quarantines it for.
BROKEN: dict[str, dict[str, str]] = {
    "video": {"broken_cut": "truncated_video", "broken_junk": "unsupported_media"},
    "audio": {"broken_cut.wav": "truncated_audio", "broken_junk.wav": "unsupported_media"},
}


def run_pipeline(
    work: Path,
    media: str,
    source: dict[str, Any],
    query: int,
    train: int,
    train_params: dict[str, Any] | None = None,
) -> None:
    """Write ``work/params.yaml`` (params.yaml with this one source of ``media``, a small
    hashing split, dcmh and contrastive at 16 bits, CPU, then ``train_params`` over the train
    section) and run every stage in ``work``."""
    p = yaml.safe_load((REPO / "params.yaml").read_text())
    p["collect"]["media"] = media
    p["collect"]["sources"] = [source]
    p["preprocess"].update(shard_size=32, n_workers=1, device="cpu")
    p["split"]["protocol"] = "hashing"
    p["split"]["protocols"]["hashing"] = {"kind": "hashing", "query": query, "train": train}
    p["train"].update(
        bits=[16], epochs=10, batch_size=16, device="cpu", methods=["dcmh", "contrastive"]
    )
    p["train"].update(train_params or {})
    (work / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    for stage in pipeline.stage_names():
        pipeline.run_stage(stage, work, str(work / "params.yaml"))


def _broken(good: bytes, key: str) -> bytes:
    return syn.truncate(good, 0.4) if "cut" in key else syn.not_media(seed=len(key))


def video_project(work: Path) -> Path:
    """:data:`N` moving-shape videos and the two broken ones of :data:`BROKEN` through every
    stage in ``work`` (query 10, train 20); returns ``work``."""
    info = syn.write_video_corpus(work / "corpus", N)
    corpus = json.loads(info.read_text())
    good = (info.parent / "videos" / "video0.mp4").read_bytes()
    for key in BROKEN["video"]:
        (info.parent / "videos" / f"{key}.mp4").write_bytes(_broken(good, key))
        corpus["videos"].append(
            {**corpus["videos"][0], "video_id": key, "id": len(corpus["videos"])}
        )
        corpus["sentences"].append(
            {
                "video_id": key,
                "caption": "a video that will not play",
                "sen_id": len(corpus["sentences"]),
            }
        )
    info.write_text(json.dumps(corpus, indent=1) + "\n")
    source = {"name": "clips", "kind": "msrvtt", "path": str(info.relative_to(work))}
    run_pipeline(work, "video", source, query=10, train=20)
    return work


def audio_project(work: Path) -> Path:
    """:data:`N` one-second clips and the two broken ones of :data:`BROKEN` through every stage
    in ``work`` (query 6, train 10); returns ``work``."""
    captions = syn.write_audio_corpus(work / "corpus", N)
    good = (captions.parent / "audio" / "clip0.wav").read_bytes()
    with captions.open("a", newline="", encoding="utf-8") as f:
        for key in BROKEN["audio"]:
            (captions.parent / "audio" / key).write_bytes(_broken(good, key))
            csv.writer(f).writerow([key, *(f"a clip that will not play {i}" for i in range(5))])
    source = {"name": "clips", "kind": "clotho", "path": str(captions.relative_to(work))}
    # No validation slice: clean keeps 25 of the 64 tones (the rest are near-duplicates) and the
    # split's caption links put 17 of them in one group, which train's slice holds out whole,
    # leaving 1 training sample ("need at least 2"). Drop this once train bounds the slice.
    run_pipeline(work, "audio", source, query=6, train=10, train_params={"val_fraction": 0.0})
    return work
