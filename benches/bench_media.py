"""Video and audio decoding throughput against plain PyAV / soundfile, in one process (one core).

    .venv/bin/python benches/bench_media.py            # 20 videos x 10 s, 20 clips x 10 s
    .venv/bin/python benches/bench_media.py --quick    # 6 videos, 6 clips, one round

**Video.** Seeded moving-shape videos (:func:`cmrops.media.synthetic.moving_shape_video`): 10 s
at 25 fps, 320 x 240, mpeg4 in MP4 and H.264 (libx264) in MP4, bytes in memory. Rows:

- ``cmrops decode_video``: :func:`cmrops.media.decode_video` with the default limits (1 frame
  per second, at most 16): header checks, every frame decoded (counted, capped, timestamps
  checked, ``err_detect=explode``), only the kept ones converted to RGB;
- ``cmrops decode+hash+224``: the same plus :func:`video_hashes` and the 224 x 224
  :func:`encoder_frames` - what the preprocess stage does per video;
- baseline ``PyAV decode all``: ``av.open`` + decode every frame, nothing converted (the
  floor: what any sampler that does not seek must pay);
- baseline ``PyAV decode all + RGB``: every frame also converted to an RGB array through one
  reused ``VideoReformatter`` (PyAV's fastest route; ``to_image()`` per frame is ~10x slower,
  as it sets up a swscale context each time) - the naive "extract the frames, then pick".

Throughput is video-seconds per second (how many seconds of video one core gets through per
second) and kept frames per second; the ratio is baseline time / cmrops time (> 1: cmrops is
faster).

**Audio.** Seeded tones, chirps, noise and beeps (:func:`cmrops.media.synthetic.tone`), 10 s
at 44.1 kHz, as PCM-16 WAV and FLAC. Rows: ``cmrops decode+resample+mel+hash``
(:func:`decode_audio` to 16 kHz, :func:`log_mel`, :func:`audio_hashes`, :func:`logmel_stats`)
against baseline ``soundfile.read`` (float32, nothing else) and against ``cmrops decode at
native rate`` (:func:`decode_audio` with ``sample_rate=44100``: the checks without the
resampling). Throughput is audio-seconds per second.

Times are the best of ``repeat`` (5) rounds over the whole set: rounds interleave the functions,
so a busy machine slows them alike, and on a shared machine the fastest round is the one least
disturbed by other work (the median wandered by 30 % between runs here). A warm-up pass keeps
lazy imports (scipy.signal: seconds) out. Results are also written to
``benches/results/media.json``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import av
import soundfile as sf

from cmrops.media import (
    AudioLimits,
    audio_hashes,
    decode_audio,
    decode_video,
    encoder_frames,
    log_mel,
    logmel_stats,
    video_hashes,
)
from cmrops.media import synthetic as syn

REPO = Path(__file__).resolve().parents[1]
VIDEO_SECONDS, VIDEO_FPS, VIDEO_SIZE = 10.0, 25, (320, 240)
AUDIO_SECONDS, AUDIO_RATE = 10.0, 44_100


def make_videos(n: int, codec: str) -> list[bytes]:
    out = []
    for i in range(n):
        shape = syn.SHAPES[i % len(syn.SHAPES)]
        color = list(syn.COLOURS)[i % len(syn.COLOURS)]
        direction = syn.DIRECTIONS[(i // 3) % len(syn.DIRECTIONS)]
        out.append(
            syn.moving_shape_video(
                shape,
                color,
                direction,
                seconds=VIDEO_SECONDS,
                fps=VIDEO_FPS,
                size=VIDEO_SIZE,
                seed=i,
                codec=codec,
            )
        )
    return out


def make_clips(n: int, fmt: str) -> list[bytes]:
    out = []
    for i in range(n):
        kind = syn.TONE_KINDS[i % len(syn.TONE_KINDS)]
        wave = syn.tone(
            kind, seconds=AUDIO_SECONDS, sample_rate=AUDIO_RATE, seed=i, freq=220.0 * (1 + i % 5)
        )
        out.append(syn.encode_audio(wave, AUDIO_RATE, fmt))
    return out


def timed_rounds(
    fns: dict[str, Callable[[bytes], Any]], items: list[bytes], repeat: int
) -> dict[str, float]:
    """Best over ``repeat`` rounds of the seconds each function takes for all ``items``."""
    for fn in fns.values():
        for data in items[:2]:
            fn(data)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            t = time.perf_counter()
            for data in items:
                fn(data)
            times[name].append(time.perf_counter() - t)
    return {name: min(v) for name, v in times.items()}


# -- video ---------------------------------------------------------------------------------------


def pyav_decode_all(data: bytes) -> int:
    with av.open(io.BytesIO(data)) as c:
        stream = c.streams.video[0]
        stream.thread_type = "AUTO"
        return sum(1 for _ in c.decode(stream))


def pyav_decode_all_rgb(data: bytes) -> int:
    from av.video.reformatter import VideoReformatter

    to_rgb = (
        VideoReformatter()
    )  # one swscale context: per-frame to_ndarray(format=) sets up one each
    with av.open(io.BytesIO(data)) as c:
        stream = c.streams.video[0]
        stream.thread_type = "AUTO"
        return sum(
            1 for f in c.decode(stream) if to_rgb.reformat(f, format="rgb24").to_ndarray().size
        )


def ours_decode(data: bytes) -> int:
    return len(decode_video(data).frames)


def ours_pipeline(data: bytes) -> int:
    v = decode_video(data)
    video_hashes(v.frames)
    encoder_frames(v.frames, 224)
    return len(v.frames)


def bench_video(codec: str, n: int, repeat: int) -> list[dict[str, Any]]:
    videos = make_videos(n, codec)
    kept = sum(ours_decode(d) for d in videos)
    decoded = sum(pyav_decode_all(d) for d in videos)
    t = timed_rounds(
        {
            "all": pyav_decode_all,
            "all_rgb": pyav_decode_all_rgb,
            "ours": ours_decode,
            "pipeline": ours_pipeline,
        },
        videos,
        repeat,
    )
    seconds = n * VIDEO_SECONDS
    rows = []
    for what, key in (("cmrops decode_video", "ours"), ("cmrops decode+hash+224", "pipeline")):
        rows.append(
            {
                "codec": codec,
                "videos": n,
                "what": what,
                "video_s_per_s": round(seconds / t[key], 1),
                "kept_frames_per_s": round(kept / t[key], 1),
                "kept_frames": kept,
                "decoded_frames": decoded,
                "pyav_decode_all_video_s_per_s": round(seconds / t["all"], 1),
                "pyav_decode_all_rgb_video_s_per_s": round(seconds / t["all_rgb"], 1),
                "ratio_vs_decode_all": round(t["all"] / t[key], 2),
                "ratio_vs_decode_all_rgb": round(t["all_rgb"] / t[key], 2),
            }
        )
    return rows


# -- audio ---------------------------------------------------------------------------------------


def sf_read(data: bytes) -> np.ndarray:
    return sf.read(io.BytesIO(data), dtype="float32")[0]


NATIVE = AudioLimits(sample_rate=AUDIO_RATE)


def ours_native(data: bytes) -> np.ndarray:
    return decode_audio(data, NATIVE).wave


def ours_audio(data: bytes) -> tuple[int, int]:
    a = decode_audio(data)
    mel = log_mel(a.wave, a.sample_rate)
    logmel_stats(mel)
    return audio_hashes(mel)


def bench_audio(fmt: str, n: int, repeat: int) -> dict[str, Any]:
    clips = make_clips(n, fmt)
    t = timed_rounds({"sf": sf_read, "native": ours_native, "ours": ours_audio}, clips, repeat)
    seconds = n * AUDIO_SECONDS
    return {
        "format": fmt,
        "clips": n,
        "what": "cmrops decode+resample+mel+hash",
        "audio_s_per_s": round(seconds / t["ours"], 1),
        "soundfile_read_audio_s_per_s": round(seconds / t["sf"], 1),
        "native_rate_decode_audio_s_per_s": round(seconds / t["native"], 1),
        "ratio_vs_soundfile_read": round(t["sf"] / t["ours"], 2),
        "ratio_vs_native_rate_decode": round(t["native"] / t["ours"], 2),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer videos and clips, one round")
    ap.add_argument("--out", default=str(REPO / "benches" / "results" / "media.json"))
    args = ap.parse_args()
    n, repeat = (6, 1) if args.quick else (20, 5)

    video_rows = [row for codec in ("mpeg4", "libx264") for row in bench_video(codec, n, repeat)]
    audio_rows = [bench_audio(fmt, n, repeat) for fmt in ("WAV", "FLAC")]

    cpu = platform.processor() or platform.machine()
    print(
        f"\nvideo, one at a time ({cpu}): {n} x {VIDEO_SECONDS:g} s at {VIDEO_FPS} fps, "
        f"{VIDEO_SIZE[0]}x{VIDEO_SIZE[1]}, default limits (1 fps, <= 16 frames)"
    )
    print(
        f"{'codec':<8} {'what':<24} {'video-s/s':>9} {'kept f/s':>8} "
        f"{'all/s':>7} {'ratio':>6} {'all+rgb/s':>9} {'ratio':>6}"
    )
    for r in video_rows:
        print(
            f"{r['codec']:<8} {r['what']:<24} {r['video_s_per_s']:>9} "
            f"{r['kept_frames_per_s']:>8} {r['pyav_decode_all_video_s_per_s']:>7} "
            f"{r['ratio_vs_decode_all']:>6} {r['pyav_decode_all_rgb_video_s_per_s']:>9} "
            f"{r['ratio_vs_decode_all_rgb']:>6}"
        )
    print(f"\naudio, one at a time: {n} x {AUDIO_SECONDS:g} s at {AUDIO_RATE} Hz -> 16 kHz")
    print(
        f"{'format':<6} {'what':<32} {'audio-s/s':>9} {'sf.read/s':>9} {'ratio':>6} "
        f"{'native/s':>8} {'ratio':>6}"
    )
    for r in audio_rows:
        print(
            f"{r['format']:<6} {r['what']:<32} {r['audio_s_per_s']:>9} "
            f"{r['soundfile_read_audio_s_per_s']:>9} {r['ratio_vs_soundfile_read']:>6} "
            f"{r['native_rate_decode_audio_s_per_s']:>8} {r['ratio_vs_native_rate_decode']:>6}"
        )

    result = {
        "video": video_rows,
        "audio": audio_rows,
        "cpu_count": os.cpu_count(),
        "pyav": av.__version__,
        "soundfile": sf.__version__,
        "quick": args.quick,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
