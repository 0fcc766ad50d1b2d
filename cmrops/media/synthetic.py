"""Seeded synthetic video and audio (and broken media) for tests and benchmarks.

Everything is a pure function of its arguments: the same call gives the same samples and, with
the same PyAV / libsndfile build, the same bytes. Generation is fast (a 2 s 96 x 64 video is a
few milliseconds to encode).

- **Video**: :func:`moving_shape_video` draws one shape (circle, square, triangle) of one colour
  (red, green, blue, yellow) crossing a mild seeded background in one direction (left, right,
  up, down); :func:`video_caption` says so in words.
- **Audio**: :func:`tone` makes a sine, a log chirp up or down, white noise or beeps;
  :func:`encode_audio` writes any soundfile format; :func:`audio_caption` describes it.
- **Broken media**: :func:`truncate`, :func:`long_video` (a tiny file that decodes to many
  frames), :func:`huge_frame_video` (a tiny file with enormous frames), :func:`lie_about_duration`
  (a container whose header understates its length), :func:`not_media`; and
  :func:`add_audio_track`, :func:`encode_m4a` for files only FFmpeg reads.
- **Corpora**: :func:`write_video_corpus` (MSR-VTT-style JSON) and :func:`write_audio_corpus`
  (Clotho-style CSV). They plant no defects; broken files are the tests' job.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import struct
from fractions import Fraction
from functools import cache
from pathlib import Path
from typing import Final

import numpy as np
from PIL import Image, ImageDraw

SHAPES: Final = ("circle", "square", "triangle")
COLOURS: Final[dict[str, tuple[int, int, int]]] = {
    "red": (214, 39, 40),
    "green": (44, 160, 44),
    "blue": (31, 90, 200),
    "yellow": (240, 212, 30),
}
DIRECTIONS: Final = ("left", "right", "up", "down")
TONE_KINDS: Final = ("tone", "chirp_up", "chirp_down", "noise", "beeps")

# container name -> PyAV (FFmpeg) muxer name
_MUXERS: Final = {
    "mp4": "mp4",
    "m4v": "mp4",
    "mov": "mov",
    "mkv": "matroska",
    "matroska": "matroska",
    "webm": "webm",
    "avi": "avi",
}
_PHRASE: Final = {"left": "to the left", "right": "to the right", "up": "up", "down": "down"}


# -- video ---------------------------------------------------------------------------------------


def encode_frames(
    frames: list[np.ndarray],
    fps: float,
    *,
    codec: str = "mpeg4",
    container: str = "mp4",
    bit_rate: int = 2_000_000,
) -> bytes:
    """Encode RGB ``uint8`` frames of shape ``(h, w, 3)`` (even sides) as one video stream."""
    import av

    if not frames:
        raise ValueError("need at least one frame")
    if container not in _MUXERS:
        raise ValueError(f"unknown container {container!r}; expected one of {sorted(_MUXERS)}")
    h, w = frames[0].shape[:2]
    buf = io.BytesIO()
    with av.open(buf, mode="w", format=_MUXERS[container]) as out:
        rate = _fraction(fps)
        stream = out.add_stream(codec, rate=rate)
        stream.width, stream.height = w, h
        stream.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
        if codec not in ("libx264", "libvpx", "libvpx-vp9"):
            stream.bit_rate = bit_rate
        if codec == "libx264":
            stream.options = {"preset": "veryfast", "crf": "20"}
        for i, arr in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(arr), format="rgb24")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return buf.getvalue()


def _fraction(fps: float) -> int | Fraction:
    f = Fraction(fps).limit_denominator(1001)
    return int(f) if f.denominator == 1 else f


@cache
def _background(size: tuple[int, int], seed: int) -> np.ndarray:
    """A mild two-colour linear gradient at a seeded angle with soft seeded blotches:
    ``(height, width, 3)`` uint8. (On a flat background a frame's pHash would rest on codec
    noise: there is little else in it.)"""
    rng = np.random.default_rng([seed, 0xB6])
    light = rng.integers(175, 236, size=3).astype(np.float64)
    dark = light - rng.integers(45, 90)  # every channel darker, so luma differs
    angle = float(rng.uniform(0.0, 2.0 * math.pi))
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    along = xx * math.cos(angle) + yy * math.sin(angle)
    t = ((along - along.min()) / max(float(np.ptp(along)), 1.0))[..., None]
    # plus soft blotches (a 5 x 4 random field, bicubic upsampled): low-frequency texture, so
    # the frames' pHash bits rest on large DCT coefficients, not on codec noise
    field = rng.uniform(-1.0, 1.0, size=(4, 5)).astype(np.float32)
    blot = np.asarray(Image.fromarray(field, "F").resize((w, h), Image.Resampling.BICUBIC))
    out = light * (1.0 - t) + dark * t + 16.0 * blot[..., None].astype(np.float64)
    out = np.clip(out + 0.5, 0, 255).astype(np.uint8)
    out.setflags(write=False)
    return out


def shape_position(direction: str, u: float, size: tuple[int, int]) -> tuple[float, float]:
    """Centre ``(x, y)`` in pixels of the shape at fraction ``u`` in [0, 1] of the video."""
    w, h = size
    r = shape_radius(size)
    a, b = r + 2.0, None
    if direction in ("left", "right"):
        b = w - r - 2.0
        x = a + (b - a) * (u if direction == "right" else 1.0 - u)
        return x, h / 2.0
    if direction in ("up", "down"):
        b = h - r - 2.0
        y = a + (b - a) * (u if direction == "down" else 1.0 - u)
        return w / 2.0, y
    raise ValueError(f"unknown direction {direction!r}; expected one of {DIRECTIONS}")


def shape_radius(size: tuple[int, int]) -> float:
    """Radius in pixels of the moving shape in a video of ``size = (width, height)``."""
    return 0.22 * min(size)


def render_frame(
    shape: str,
    color: str,
    direction: str,
    u: float,
    size: tuple[int, int],
    seed: int = 0,
) -> np.ndarray:
    """One RGB frame (``(height, width, 3)`` uint8) of :func:`moving_shape_video` at ``u``."""
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    if color not in COLOURS:
        raise ValueError(f"unknown colour {color!r}; expected one of {tuple(COLOURS)}")
    img = Image.fromarray(_background(size, seed), "RGB")
    draw = ImageDraw.Draw(img)
    x, y = shape_position(direction, u, size)
    r = shape_radius(size)
    fill = COLOURS[color]
    if shape == "circle":
        draw.ellipse((x - r, y - r, x + r, y + r), fill=fill)
    elif shape == "square":
        s = 0.85 * r
        draw.rectangle((x - s, y - s, x + s, y + s), fill=fill)
    else:  # triangle, point up
        pts = [(x + r * math.cos(a), y + r * math.sin(a)) for a in (-math.pi / 2, math.pi / 6)]
        pts.append((x + r * math.cos(5 * math.pi / 6), y + r * math.sin(5 * math.pi / 6)))
        draw.polygon(pts, fill=fill)
    return np.asarray(img)


def moving_shape_video(
    shape: str,
    color: str,
    direction: str,
    *,
    seconds: float = 2.0,
    fps: int = 8,
    size: tuple[int, int] = (96, 64),
    seed: int = 0,
    codec: str = "mpeg4",
    container: str = "mp4",
    bit_rate: int = 2_000_000,
) -> bytes:
    """A ``seconds`` long video of ``size = (width, height)`` at ``fps``: one ``color`` ``shape``
    crossing a mild background (a two-colour gradient with soft blotches, drawn from ``seed``)
    towards ``direction``, from one edge at the first frame to the other at the last. Frame
    ``i`` is shown at ``i / fps``. ``bit_rate`` (mpeg4, mjpeg) is the encoder's target; at this
    size anything from 1 Mbit/s up decodes to the same frames, while the bytes differ (the rate
    is written in the header): an easy near copy."""
    if size[0] % 2 or size[1] % 2:
        raise ValueError(f"video sides must be even for yuv420p, got {size}")
    n = max(1, round(seconds * fps))
    frames = [
        render_frame(shape, color, direction, i / (n - 1) if n > 1 else 0.0, size, seed)
        for i in range(n)
    ]
    return encode_frames(frames, fps, codec=codec, container=container, bit_rate=bit_rate)


def add_audio_track(video: bytes, wave: np.ndarray, sample_rate: int = 16_000) -> bytes:
    """``video`` (an MP4 or Matroska file) with mono ``wave`` added as an AAC track: the video
    packets are copied untouched."""
    import av

    src = av.open(io.BytesIO(video))
    fmt = "mp4" if "mp4" in src.format.name.split(",") else "matroska"
    buf = io.BytesIO()
    x = np.ascontiguousarray(np.asarray(wave, dtype=np.float32).reshape(1, -1))
    with src, av.open(buf, mode="w", format=fmt) as out:
        vin = src.streams.video[0]
        vout = out.add_stream_from_template(vin)
        aout = out.add_stream("aac", rate=sample_rate)
        aout.layout = "mono"
        for packet in src.demux(vin):
            if packet.dts is not None:
                packet.stream = vout
                out.mux(packet)
        frame = av.AudioFrame.from_ndarray(x, format="flt", layout="mono")
        frame.sample_rate = sample_rate
        chunker = av.AudioResampler(format="fltp", layout="mono", rate=sample_rate, frame_size=1024)
        for chunk in [*chunker.resample(frame), *chunker.resample(None)]:
            out.mux(aout.encode(chunk))
        out.mux(aout.encode(None))
    return buf.getvalue()


def video_caption(shape: str, color: str, direction: str) -> str:
    """``"a red circle moving to the left"``."""
    return f"a {color} {shape} moving {_PHRASE[direction]}"


def _video_paraphrases(shape: str, color: str, direction: str) -> list[str]:
    way = _PHRASE[direction]
    return [
        f"a {color} {shape} moves {way}",
        f"a video of a {color} {shape} going {way} across the frame",
        f"the {shape}, which is {color}, slides {way}",
    ]


def long_video(seconds: float, fps: int = 1, size: tuple[int, int] = (16, 16)) -> bytes:
    """A small MP4 (mpeg4, flat frames: a few bytes each) that really lasts ``seconds`` and
    decodes to ``round(seconds * fps)`` frames: a duration or frame-count bomb."""
    n = max(1, round(seconds * fps))
    w, h = size
    flat = np.full((h, w, 3), 96, dtype=np.uint8)
    return encode_frames([flat] * n, fps, codec="mpeg4", container="mp4", bit_rate=20_000)


def huge_frame_video(width: int = 4096, height: int = 4096) -> bytes:
    """Two flat grey mpeg4 frames of ``width x height`` in an MP4: tens of kilobytes on disk,
    ``3 * width * height`` bytes per decoded frame."""
    flat = np.full((height, width, 3), 128, dtype=np.uint8)
    return encode_frames([flat, flat], 1, codec="mpeg4", container="mp4", bit_rate=100_000)


def lie_about_duration(data: bytes, seconds: float | None = 1.0) -> bytes:
    """The same video with its header claiming it lasts ``seconds``: the MP4 ``mvhd``/``tkhd``/
    ``mdhd`` durations, or the Matroska segment ``Duration`` (and ``DURATION`` tags), are
    overwritten; the frames and their timestamps are untouched. ``seconds=None`` (Matroska
    only) removes the declaration instead: ``Duration`` becomes a Void element of the same
    size and the tags are renamed, so FFmpeg reports no duration at all."""
    b = bytearray(data)
    if seconds is None:
        i = b.find(b"\x44\x89\x88")
        if b[:4] != b"\x1a\x45\xdf\xa3" or i < 0:
            raise ValueError("only a Matroska Duration element can be removed")
        b[i : i + 11] = b"\xec\x89" + bytes(9)  # Void, 9 bytes of payload
        return bytes(b).replace(b"DURATION", b"XURATION")
    if b[4:8] == b"ftyp":
        for box, scale_at, dur_at in ((b"mvhd", 12, 16), (b"mdhd", 12, 16)):
            i = b.find(box)
            if i < 0 or b[i + 4] != 0:  # version 1 boxes (64-bit times) are not produced here
                raise ValueError(f"no version-0 {box.decode()} box")
            (scale,) = struct.unpack(">I", b[i + 4 + scale_at : i + 8 + scale_at])
            b[i + 4 + dur_at : i + 8 + dur_at] = struct.pack(">I", max(1, round(seconds * scale)))
            if box == b"mvhd":
                movie_scale = scale
        i = b.find(b"tkhd")
        b[i + 24 : i + 28] = struct.pack(">I", max(1, round(seconds * movie_scale)))
        i = b.find(b"elst")
        if i >= 0 and b[i + 4] == 0:  # first edit's segment duration (movie time scale)
            b[i + 12 : i + 16] = struct.pack(">I", max(1, round(seconds * movie_scale)))
        return bytes(b)
    if b[:4] == b"\x1a\x45\xdf\xa3":
        i = b.find(b"\x44\x89\x88")  # Duration, 8-byte float, in TimecodeScale units (1 ms)
        if i < 0:
            raise ValueError("no 8-byte Matroska Duration element")
        b[i + 3 : i + 11] = struct.pack(">d", seconds * 1000.0)
        stamp = f"{int(seconds // 3600):02d}:{int(seconds % 3600 // 60):02d}:{seconds % 60:012.9f}"
        out = re.sub(rb"\d\d:\d\d:\d\d\.\d{9}", stamp.encode(), bytes(b))
        return out
    raise ValueError("only MP4 and Matroska headers can be rewritten")


# -- audio ---------------------------------------------------------------------------------------


def tone(
    kind: str,
    *,
    seconds: float = 1.0,
    sample_rate: int = 16_000,
    seed: int = 0,
    freq: float = 440.0,
    gain: float = 0.5,
) -> np.ndarray:
    """A mono float32 wave of ``round(seconds * sample_rate)`` samples, peak about ``gain``.

    ``tone``: a sine at ``freq``; ``chirp_up`` / ``chirp_down``: a logarithmic sweep between
    ``freq / 2`` and ``2 * freq``; ``noise``: white noise of the same RMS as the sine (clipped at
    ±1); ``beeps``: 0.1 s sine pulses at ``freq`` every 0.2 s. The seed sets the start phase (and
    the noise). Tones start and end with a 5 ms ramp, so there are no clicks.
    """
    if kind not in TONE_KINDS:
        raise ValueError(f"unknown tone kind {kind!r}; expected one of {TONE_KINDS}")
    if seconds <= 0 or sample_rate <= 0 or freq <= 0:
        raise ValueError("seconds, sample_rate and freq must be > 0")
    rng = np.random.default_rng([seed, TONE_KINDS.index(kind), 0xA0])
    n = max(1, round(seconds * sample_rate))
    t = np.arange(n, dtype=np.float64) / sample_rate
    phase0 = float(rng.uniform(0.0, 2.0 * math.pi))
    if kind == "noise":
        wave = np.clip(rng.standard_normal(n) * (gain / math.sqrt(2.0)), -1.0, 1.0)
        return wave.astype(np.float32)
    if kind in ("chirp_up", "chirp_down"):
        f0, f1 = (freq / 2.0, freq * 2.0) if kind == "chirp_up" else (freq * 2.0, freq / 2.0)
        k = math.log(f1 / f0)
        phase = 2.0 * math.pi * f0 * seconds / k * (np.exp(k * t / seconds) - 1.0)
        wave = np.sin(phase + phase0)
    else:
        wave = np.sin(2.0 * math.pi * freq * t + phase0)
    env = np.ones(n)
    if kind == "beeps":
        env = ((t % 0.2) < 0.1).astype(np.float64)
        env = np.convolve(env, np.hanning(max(3, int(0.01 * sample_rate))), mode="same")
        env /= env.max() or 1.0
    ramp = min(n // 2, max(1, int(0.005 * sample_rate)))
    env[:ramp] *= np.linspace(0.0, 1.0, ramp)
    env[n - ramp :] *= np.linspace(1.0, 0.0, ramp)
    return (gain * wave * env).astype(np.float32)


def encode_audio(
    wave: np.ndarray, sample_rate: int, format: str = "WAV", subtype: str | None = None
) -> bytes:
    """Encode ``wave`` (``(n,)`` mono or ``(n, channels)``, float in [-1, 1]) with soundfile,
    e.g. ``format="FLAC"``, ``"OGG"`` (Vorbis), ``"MP3"``; ``subtype`` defaults to soundfile's
    (``PCM_16`` for WAV and FLAC)."""
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, np.asarray(wave), sample_rate, format=format, subtype=subtype)
    return buf.getvalue()


def encode_m4a(wave: np.ndarray, sample_rate: int, bit_rate: int = 64_000) -> bytes:
    """Encode mono ``wave`` as AAC in an M4A (``ipod``) container with PyAV - a format
    soundfile cannot read, for the PyAV fallback of :func:`cmrops.media.decode_audio`."""
    import av

    x = np.ascontiguousarray(np.asarray(wave, dtype=np.float32).reshape(1, -1))
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="ipod") as out:
        stream = out.add_stream("aac", rate=sample_rate)
        stream.layout = "mono"
        stream.bit_rate = bit_rate
        frame = av.AudioFrame.from_ndarray(x, format="flt", layout="mono")
        frame.sample_rate = sample_rate
        chunker = av.AudioResampler(format="fltp", layout="mono", rate=sample_rate, frame_size=1024)
        for chunk in [*chunker.resample(frame), *chunker.resample(None)]:
            out.mux(stream.encode(chunk))
        out.mux(stream.encode(None))
    return buf.getvalue()


def audio_caption(kind: str, freq: float = 440.0) -> str:
    """``"a high pitched tone"``, ``"a low rising chirp"``, ``"white noise"``, ``"beeps"``...

    High means ``freq >= 600`` Hz, low ``freq < 300`` Hz; in between no pitch word is used.
    """
    pitch = "high" if freq >= 600 else "low" if freq < 300 else ""
    if kind == "noise":
        return "white noise"
    if kind == "tone":
        return f"a {pitch} pitched tone" if pitch else "a steady tone"
    if kind in ("chirp_up", "chirp_down"):
        way = "rising" if kind == "chirp_up" else "falling"
        return f"a {pitch} {way} chirp" if pitch else f"a {way} chirp"
    if kind == "beeps":
        return f"{pitch} pitched beeps" if pitch else "a series of beeps"
    raise ValueError(f"unknown tone kind {kind!r}; expected one of {TONE_KINDS}")


def _audio_paraphrases(kind: str, freq: float) -> list[str]:
    base = audio_caption(kind, freq)
    return [
        base,
        f"the sound of {base}",
        f"{base} is heard",
        f"a recording of {base}",
        f"{base} for a short while",
    ]


# -- broken media --------------------------------------------------------------------------------


def truncate(data: bytes, keep: float) -> bytes:
    """The first ``int(len(data) * keep)`` bytes, ``keep`` in [0, 1]."""
    if not 0.0 <= keep <= 1.0:
        raise ValueError(f"keep must lie in [0, 1], got {keep}")
    return data[: int(len(data) * keep)]


def not_media(n: int = 2048, seed: int = 0) -> bytes:
    """``n`` random bytes (no container magic at the start)."""
    data = np.random.default_rng([seed, 0x0B]).bytes(n)
    return b"\x00junk" + data[5:] if n >= 5 else data


# -- corpora -------------------------------------------------------------------------------------


def write_video_corpus(out: Path, n: int, seed: int = 0) -> Path:
    """``n`` two-second moving-shape videos (mpeg4 MP4, 96 x 64, 8 fps) as
    ``out/videos/video{i}.mp4`` and an MSR-VTT-style ``out/train_val_videodatainfo.json``:
    ``videos`` (``video_id``, ``category`` = shape x direction index, ``url``, ``start time``,
    ``end time``, ``split`` - the first 80 % ``train``, then 10 % ``validate``, then ``test`` -
    and ``id``) and two ``sentences`` per video, paraphrases of what it shows. Returns the JSON
    path.

    A draw whose fingerprint lies within pHash 8 *and* dHash 12 of an earlier video's (the
    clean stage's near-duplicate rule, with a margin) is redrawn, up to 50 times, so the corpus
    plants no near duplicates."""
    from cmrops.imaging import hamming64
    from cmrops.media.video import decode_video, video_hashes

    out = Path(out)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    videos, sentences = [], []
    seen: list[tuple[int, int]] = []
    n_train, n_val = round(0.8 * n), round(0.9 * n)
    for i in range(n):
        rng = np.random.default_rng([seed, i, 0x71])
        for _try in range(50):
            shape = SHAPES[int(rng.integers(len(SHAPES)))]
            color = tuple(COLOURS)[int(rng.integers(len(COLOURS)))]
            direction = DIRECTIONS[int(rng.integers(len(DIRECTIONS)))]
            data = moving_shape_video(shape, color, direction, seed=int(rng.integers(2**31)))
            ph, dh = video_hashes(decode_video(data).frames)
            if all(hamming64(ph, p) > 8 or hamming64(dh, d) > 12 for p, d in seen):
                break
        seen.append((ph, dh))
        vid = f"video{i}"
        (out / "videos" / f"{vid}.mp4").write_bytes(data)
        split = "train" if i < n_train else "validate" if i < n_val else "test"
        videos.append(
            {
                "video_id": vid,
                "category": SHAPES.index(shape) * len(DIRECTIONS) + DIRECTIONS.index(direction),
                "url": "",
                "start time": 0.0,
                "end time": 2.0,
                "split": split,
                "id": i,
            }
        )
        picks = rng.choice(3, size=2, replace=False)
        texts = _video_paraphrases(shape, color, direction)
        for k in picks:
            sentences.append({"video_id": vid, "caption": texts[int(k)], "sen_id": len(sentences)})
    path = out / "train_val_videodatainfo.json"
    path.write_text(json.dumps({"videos": videos, "sentences": sentences}, indent=1) + "\n")
    return path


def write_audio_corpus(out: Path, n: int, seed: int = 0) -> Path:
    """``n`` one-second clips (16 kHz PCM-16 WAV) as ``out/audio/clip{i}.wav`` and a Clotho-style
    ``out/clotho_captions.csv`` (``file_name,caption_1,...,caption_5``). Returns the CSV path.

    Each clip is a :func:`tone` of a seeded kind at a seeded pitch (log-uniform 150-2400 Hz).
    A draw whose fingerprint lies within pHash 8 *and* dHash 12 of an earlier clip's (the same
    sound by the clean stage's near-duplicate rule, e.g. beeps and a tone of one pitch) is
    redrawn, up to 50 times, so the corpus plants no near duplicates; white noise is always
    distinct, so a large corpus ends with more of it."""
    from cmrops.imaging import hamming64
    from cmrops.media.audio import audio_hashes, log_mel

    out = Path(out)
    (out / "audio").mkdir(parents=True, exist_ok=True)
    path = out / "clotho_captions.csv"
    seen: list[tuple[int, int]] = []
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["file_name", *(f"caption_{k}" for k in range(1, 6))])
        for i in range(n):
            rng = np.random.default_rng([seed, i, 0xC1])
            for _try in range(50):
                kind = TONE_KINDS[int(rng.integers(len(TONE_KINDS)))]
                freq = round(float(np.exp(rng.uniform(math.log(150.0), math.log(2400.0)))), 1)
                wave = tone(kind, seed=int(rng.integers(2**31)), freq=freq)
                ph, dh = audio_hashes(log_mel(wave, 16_000))
                if all(hamming64(ph, p) > 8 or hamming64(dh, d) > 12 for p, d in seen):
                    break
            seen.append((ph, dh))
            name = f"clip{i}.wav"
            (out / "audio" / name).write_bytes(encode_audio(wave, 16_000))
            writer.writerow([name, *_audio_paraphrases(kind, freq)])
    return path
