"""Generated video-text and audio-text projects, every stage run in-process (the same commands
DVC and the DAG run) on an MSR-VTT-style or Clotho-style corpus of 60 samples, 4 re-encoded
copies of some of them (:data:`COPIES`: the near-duplicates clean must find) and two broken
files each (:data:`BROKEN`: one cut short, one not media at all), real decoding, the real
offline encoders, CPU. About a minute and a half each on 2 cores.

``tests/conftest.py`` builds one of each per session (``video_project``, ``audio_project``);
test_media_pipeline checks the pipeline's outputs on them and the dashboard tests show them.
The broken files are extra corpus entries, so the 64 decodable samples go through the later
stages exactly as they would alone.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from cmrops import pipeline
from cmrops.media import synthetic as syn

REPO = Path(__file__).resolve().parents[1]
N = 64  # decodable samples per corpus: 60 drawn, 4 copies
#: The re-encoded copies planted in each corpus: copy source_key -> its original's.
COPIES: dict[str, dict[str, str]] = {
    "video": {f"copy{i}": f"video{i}" for i in range(4)},
    "audio": {f"copy{i}.flac": f"clip{i}.wav" for i in range(4)},
}

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
    """60 moving-shape videos, the :data:`COPIES` (libx264, 1.5x larger, the same captions) and
    the two broken ones of :data:`BROKEN` through every stage in ``work`` (query 10, train 20);
    returns ``work``."""
    import av
    from PIL import Image

    info = syn.write_video_corpus(work / "corpus", N - len(COPIES["video"]))
    corpus = json.loads(info.read_text())
    videos = info.parent / "videos"
    for copy, src in COPIES["video"].items():
        with av.open(str(videos / f"{src}.mp4")) as c:
            frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
        big = [np.asarray(Image.fromarray(f).resize((144, 96))) for f in frames]
        (videos / f"{copy}.mp4").write_bytes(syn.encode_frames(big, 8, codec="libx264"))
        entry = next(v for v in corpus["videos"] if v["video_id"] == src)
        corpus["videos"].append({**entry, "video_id": copy, "id": len(corpus["videos"])})
        corpus["sentences"] += [
            {**t, "video_id": copy, "sen_id": 10_000 + t["sen_id"]}
            for t in corpus["sentences"]
            if t["video_id"] == src
        ]
    good = (videos / "video0.mp4").read_bytes()
    for key in BROKEN["video"]:
        (videos / f"{key}.mp4").write_bytes(_broken(good, key))
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
    """60 one-second clips, the :data:`COPIES` (FLAC at 44.1 kHz, 6 dB quieter, the same
    captions) and the two broken ones of :data:`BROKEN` through every stage in ``work`` (query
    10, train 20); returns ``work``."""
    import soundfile as sf

    from cmrops.media.audio import resample

    captions = syn.write_audio_corpus(work / "corpus", N - len(COPIES["audio"]))
    audio = captions.parent / "audio"
    rows = {r[0]: r for r in csv.reader(captions.open(encoding="utf-8"))}
    good = (audio / "clip0.wav").read_bytes()
    with captions.open("a", newline="", encoding="utf-8") as f:
        for copy, src in COPIES["audio"].items():
            wave, rate = sf.read(audio / src, dtype="float32")
            quiet = 0.5 * resample(wave, rate, 44_100)
            (audio / copy).write_bytes(syn.encode_audio(quiet, 44_100, "FLAC"))
            csv.writer(f).writerow([copy, *rows[src][1:]])
        for key in BROKEN["audio"]:
            (audio / key).write_bytes(_broken(good, key))
            csv.writer(f).writerow([key, *(f"a clip that will not play {i}" for i in range(5))])
    source = {"name": "clips", "kind": "clotho", "path": str(captions.relative_to(work))}
    run_pipeline(work, "audio", source, query=10, train=20)
    return work
