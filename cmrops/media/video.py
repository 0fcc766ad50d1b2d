"""Safe video decoding to a few sampled frames, a 64-bit video fingerprint, and dashboard strips.

:func:`decode_video` opens the bytes with PyAV (FFmpeg) and never lets a bad file through, nor
an exception other than :class:`~cmrops.media.errors.MediaRejected` out:

* **header facts first**: a video stream must exist, ``width x height`` must be within
  ``max_pixels`` and each side at least ``min_side``, the declared duration within
  ``max_duration_s`` and a declared frame count within ``max_decoded_frames`` - all checked
  before one frame is decoded, so a tiny file that claims 20000 x 20000 pixels costs nothing;
* **decoding is sequential and capped**: every frame the decoder produces is counted and its
  timestamp and size checked against the same caps, so a container that understates its
  length (a frame bomb) is stopped at ``max_decoded_frames`` or ``max_duration_s`` whatever
  its header says; only the frames kept are converted to RGB;
* **sampling is deterministic**: with a declared duration ``D`` the sample times are
  ``t_k = k / fps`` for ``k < ceil(D * fps)``, or, when that is more than ``max_frames``,
  ``t_k = k * D / max_frames`` for ``k < max_frames``; each ``t_k`` takes the first decoded
  frame at or after it (never the same frame twice). Without a declared duration, frames are
  taken every ``1 / fps`` seconds and the grid is thinned (every other one dropped, interval
  doubled) whenever ``2 * max_frames`` are held, then ``max_frames`` are picked evenly;
* **damage is an error, and classified**: the decoder runs with ``err_detect=explode``, so a
  damaged packet raises instead of being concealed (FFmpeg's default, which would let a
  smudged frame through). Bytes that are no container at all are ``unsupported_media``; a
  known container (ISO-BMFF ``ftyp``, Matroska/WebM EBML, RIFF/AVI, Ogg, FLV) that cannot be
  opened or decoded is ``truncated_video`` when its own size fields run past the end of the
  data (a cut MP4 usually loses its ``moov`` box, so FFmpeg fails at *open*, not mid-stream),
  else ``corrupt_video``. A cut Matroska or AVI file decodes without any error, just fewer
  frames, so a stream that ends well before its declared duration or frame count is
  ``truncated_video`` too, unless the container's size fields say it is complete.

The fingerprint (:func:`video_hashes`) is the per-bit majority of the sampled frames' pHash and
dHash bits, in the bit order of :mod:`cmrops.imaging`.
"""

from __future__ import annotations

import contextlib
import io
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Final

import numpy as np
from PIL import Image

from cmrops.imaging import bits_to_uint64, dhash_bits, phash_bits, resize_for_encoder
from cmrops.media.errors import MediaRejected

# FFmpeg demuxers that read single still images; their bytes are not videos.
_IMAGE_DEMUXERS: Final = ("image2", "_pipe")


@dataclass(frozen=True)
class VideoLimits:
    """Sampling and safety limits of :func:`decode_video`.

    ``fps`` frames are sampled per second of video, at most ``max_frames`` in all (evenly
    spaced over the duration when more would be sampled); ``max_duration_s`` caps the declared
    and the decoded duration, ``max_pixels`` the width x height of every frame,
    ``max_decoded_frames`` the number of frames the decoder may produce; ``min_side`` is the
    smallest allowed width or height.
    """

    fps: float = 1.0
    max_frames: int = 16
    max_duration_s: float = 600.0
    max_pixels: int = 3840 * 2160
    max_decoded_frames: int = 20_000
    min_side: int = 16

    def __post_init__(self) -> None:
        if not (math.isfinite(self.fps) and self.fps > 0):
            raise ValueError(f"fps must be a finite number > 0, got {self.fps}")
        if self.max_frames < 1:
            raise ValueError(f"max_frames must be >= 1, got {self.max_frames}")
        if not self.max_duration_s > 0:
            raise ValueError(f"max_duration_s must be > 0, got {self.max_duration_s}")
        if self.max_pixels < 1:
            raise ValueError(f"max_pixels must be >= 1, got {self.max_pixels}")
        if self.max_decoded_frames < 1:
            raise ValueError(f"max_decoded_frames must be >= 1, got {self.max_decoded_frames}")
        if self.min_side < 1:
            raise ValueError(f"min_side must be >= 1, got {self.min_side}")


@dataclass(frozen=True)
class DecodedVideo:
    """Sampled frames of a video and the facts about it.

    ``frames`` are RGB, ``times`` their timestamps in seconds from the stream start;
    ``width``/``height`` the decoded frame size; ``duration_s`` the end of the last decoded
    frame (its timestamp plus its duration); ``native_fps`` the stream's average frame rate
    (``None`` when unknown); ``codec`` FFmpeg's decoder name (``mpeg4``, ``h264``, ``vp8``...);
    ``container`` ``mp4``, ``mov``, ``webm``, ``matroska``, ``avi``... (the ISO brand or EBML
    doctype where FFmpeg's format name lists several); ``n_decoded`` how many frames were
    decoded; ``has_audio`` whether the file also holds an audio stream.
    """

    frames: tuple[Image.Image, ...]
    times: tuple[float, ...]
    width: int
    height: int
    duration_s: float
    native_fps: float | None
    codec: str
    container: str
    n_decoded: int
    has_audio: bool


# -- container structure -------------------------------------------------------------------------

_ISO_TOP: Final = (b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"styp")


def _container_magic(data: bytes) -> str | None:
    """The container family ``data`` starts like, or ``None``."""
    if data[4:8] in _ISO_TOP:
        return "iso"
    if data[:4] == b"\x1a\x45\xdf\xa3":
        return "ebml"
    if data[:4] == b"RIFF":
        return "riff"
    if data[:4] == b"OggS":
        return "ogg"
    if data[:3] == b"FLV":
        return "flv"
    return None


def looks_cut(data: bytes) -> bool | None:
    """Whether the container's own size fields run past the end of ``data``: ``True`` (cut
    short), ``False`` (every declared size fits) or ``None`` (a format whose sizes are not
    checked here, or an unknown size)."""
    kind = _container_magic(data)
    if kind == "iso":
        return _iso_cut(data)
    if kind == "riff":
        return struct.unpack("<I", data[4:8])[0] + 8 > len(data) if len(data) >= 8 else True
    if kind == "ebml":
        return _ebml_cut(data)
    return None


def _iso_cut(data: bytes) -> bool:
    pos, seen = 0, set()
    while pos + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[pos : pos + 8])
        if size == 1:
            if pos + 16 > len(data):
                return True
            size = struct.unpack(">Q", data[pos + 8 : pos + 16])[0]
        elif size == 0:  # the last box runs to the end of the file
            size = len(data) - pos
        if size < 8:
            return False  # not a box walk we understand; FFmpeg's error stands
        seen.add(kind)
        if pos + size > len(data):
            return True
        pos += size
    return pos != len(data) or b"moov" not in seen


def _vint(data: bytes, pos: int, *, keep_marker: bool) -> tuple[int, int] | None:
    """An EBML variable-length integer at ``pos``: ``(value, length)``; ``None`` if cut."""
    if pos >= len(data) or data[pos] == 0:
        return None
    length = 8 - data[pos].bit_length() + 1
    if pos + length > len(data):
        return None
    value = int.from_bytes(data[pos : pos + length], "big")
    if not keep_marker:
        value &= (1 << (7 * length)) - 1
    return value, length


def _ebml_cut(data: bytes) -> bool | None:
    pos = 0
    for expect in (0x1A45DFA3, 0x18538067):  # EBML header, then Segment
        ident = _vint(data, pos, keep_marker=True)
        if ident is None:
            return True
        size = _vint(data, pos + ident[1], keep_marker=False)
        if size is None:
            return True
        if ident[0] != expect:
            return None
        start = pos + ident[1] + size[1]
        if size[0] == (1 << (7 * size[1])) - 1:  # unknown size (a live stream)
            return None
        if start + size[0] > len(data):
            return True
        pos = start + size[0]
    return False


def container_name(format_name: str, data: bytes, metadata: dict[str, str]) -> str:
    """A short container name from FFmpeg's ``format_name`` (``"mov,mp4,m4a,..."``): the ISO
    major brand picks ``mp4`` / ``mov`` / ``m4v`` / ``m4a``, the EBML doctype ``webm`` /
    ``matroska``; otherwise FFmpeg's first name."""
    names = format_name.split(",")
    if "mp4" in names and "mov" in names:
        brand = metadata.get("major_brand", "").strip().lower()
        if brand == "qt":
            return "mov"
        return brand[:3] if brand[:3] in ("m4v", "m4a") else "mp4"
    if "matroska" in names:
        return "webm" if b"\x42\x82\x84webm" in data[:64] else "matroska"
    return names[0]


# -- decoding ------------------------------------------------------------------------------------


def sample_times(duration_s: float, limits: VideoLimits) -> tuple[float, ...]:
    """The sample times for a video of ``duration_s`` (see the module docstring)."""
    n = max(1, math.ceil(duration_s * limits.fps - 1e-9))
    if n <= limits.max_frames:
        return tuple(k / limits.fps for k in range(n))
    return tuple(k * duration_s / limits.max_frames for k in range(limits.max_frames))


def _seconds(value: Any, time_base: Fraction | None) -> float | None:
    if value is None or time_base is None:
        return None
    return float(value * time_base)


def _tag_seconds(tag: str | None) -> float | None:
    """A Matroska ``DURATION`` tag (``HH:MM:SS.nnnnnnnnn``) in seconds."""
    if not tag:
        return None
    try:
        h, m, s = tag.split(":")
        return int(h) * 3600 + int(m) * 60 + float(s)
    except ValueError:
        return None


def _open_error(data: bytes, err: BaseException) -> MediaRejected:
    msg = f"{type(err).__name__}: {err}"
    kind = _container_magic(data)
    facts: dict[str, Any] = {"bytes": len(data), "error": msg}
    if kind is None:
        head = data[:16].decode("ascii", "backslashreplace")
        return MediaRejected(
            "unsupported_media",
            f"bytes are not a video container FFmpeg can open (start {head!r}); "
            "check the file is a video",
            facts,
        )
    if looks_cut(data):
        return MediaRejected(
            "truncated_video",
            f"the {kind} container's size fields run past the end of the {len(data)} bytes "
            f"(FFmpeg: {msg}); the file was cut short, fetch it again",
            facts,
        )
    return MediaRejected(
        "corrupt_video", f"a {kind} container FFmpeg cannot open ({msg}); re-encode it", facts
    )


def decode_video(data: bytes, limits: VideoLimits | None = None) -> DecodedVideo:
    """Decode ``data`` to sampled RGB frames, or raise :class:`MediaRejected`."""
    limits = limits or VideoLimits()
    if not data:
        raise MediaRejected(
            "unsupported_media", "the file is empty (0 bytes); fetch it again", {"bytes": 0}
        )
    import av

    try:
        # a mangled metadata tag should not cost the video: decode tags leniently
        container = av.open(io.BytesIO(data), mode="r", metadata_errors="replace")
    except Exception as e:  # any malformed input is a rejection, never a crash
        raise _open_error(data, e) from e
    try:
        return _decode(container, data, limits)
    except MediaRejected:
        raise
    except Exception as e:  # defensive: a PyAV attribute/index error on a broken header
        raise _open_error(data, e) from e
    finally:
        with contextlib.suppress(Exception):
            container.close()


def _decode(container: Any, data: bytes, limits: VideoLimits) -> DecodedVideo:
    fmt = container.format.name
    if any(x in fmt for x in _IMAGE_DEMUXERS):
        raise MediaRejected(
            "unsupported_media",
            f"FFmpeg reads these bytes as a still image ({fmt}), not a video; list it as an image",
            {"format": fmt},
        )
    if not container.streams.video and (
        looks_cut(data) or (not container.streams and _container_magic(data))
    ):
        # FFmpeg "opens" an MP4 cut inside its moov box with no stream, or a data stream only
        raise _open_error(data, RuntimeError("the container lists no video stream"))
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams})
        raise MediaRejected(
            "no_video_stream",
            f"the {fmt.split(',')[0]} file has no video stream (streams: {kinds or 'none'}); "
            "list audio-only files as audio",
            {"streams": kinds},
        )
    stream = container.streams.video[0]
    ctx = stream.codec_context
    width, height = int(ctx.width or 0), int(ctx.height or 0)
    if width and height:
        _check_size(width, height, limits, "the header declares")
    tb = stream.time_base
    declared = (
        _seconds(stream.duration, tb)
        or _tag_seconds(stream.metadata.get("DURATION"))
        or (container.duration / 1_000_000 if container.duration else None)
    )
    declared_frames = int(stream.frames or 0)
    if declared is not None and declared > limits.max_duration_s:
        raise MediaRejected(
            "video_too_long",
            f"the header declares {declared:.1f} s, above max_duration_s="
            f"{limits.max_duration_s:g}; raise preprocess.video.max_duration_s or cut the video",
            {"duration_s": round(declared, 3), "max_duration_s": limits.max_duration_s},
        )
    if declared_frames > limits.max_decoded_frames:
        raise MediaRejected(
            "too_many_frames",
            f"the header declares {declared_frames} frames, above max_decoded_frames="
            f"{limits.max_decoded_frames}; raise preprocess.video.max_decoded_frames",
            {"frames": declared_frames, "max_decoded_frames": limits.max_decoded_frames},
        )
    rate = stream.average_rate or stream.guessed_rate
    native_fps = float(rate) if rate else None
    start = _seconds(stream.start_time, tb) or 0.0
    tol = max(1e-6, min(0.5 * float(tb), 1e-3)) if tb else 1e-6  # "at" t: within half a tick
    frame_tb = float(tb) if tb else 0.0  # decoded frames carry the stream's time base
    stream.thread_type = "AUTO"
    # a damaged packet is an error, not a concealed smudge (FFmpeg's default) nor a cluster the
    # Matroska demuxer silently skips
    ctx.options = {**ctx.options, "err_detect": "explode"}

    sampler = _Sampler(declared, limits, tol)
    n_decoded, last_t, last_dur, last_end_pos = 0, 0.0, 0.0, 0
    last_frame = None
    try:
        for packet in container.demux(stream):
            if packet.pos is not None and packet.pos >= 0:
                last_end_pos = max(last_end_pos, packet.pos + packet.size)
            for frame in packet.decode():
                n_decoded += 1
                if n_decoded > limits.max_decoded_frames:
                    raise MediaRejected(
                        "too_many_frames",
                        f"the decoder produced more than max_decoded_frames="
                        f"{limits.max_decoded_frames} frames (the header declares "
                        f"{_fmt_s(declared)}); raise preprocess.video.max_decoded_frames",
                        {
                            "max_decoded_frames": limits.max_decoded_frames,
                            "declared_duration_s": declared,
                        },
                    )
                t = frame.time
                t = (t - start) if t is not None else (n_decoded - 1) / (native_fps or 25.0)
                if t > limits.max_duration_s:
                    raise MediaRejected(
                        "video_too_long",
                        f"decoded frames run past max_duration_s={limits.max_duration_s:g} "
                        f"(the header declares {_fmt_s(declared)}); raise "
                        "preprocess.video.max_duration_s or cut the video",
                        {"decoded_s": round(t, 3), "max_duration_s": limits.max_duration_s},
                    )
                if frame.width * frame.height > limits.max_pixels or not (width and height):
                    _check_size(frame.width, frame.height, limits, "a decoded frame is")
                    width, height = frame.width, frame.height
                dur = frame.duration * frame_tb if frame.duration else None
                last_dur = dur or (1.0 / native_fps if native_fps else 0.0)
                last_t, last_frame = t, frame
                sampler.offer(t, frame)
    except MediaRejected:
        raise
    except Exception as e:
        cut = looks_cut(data) or last_end_pos >= len(data)
        reason = "truncated_video" if cut else "corrupt_video"
        what = "the file was cut short, fetch it again" if cut else "re-encode it"
        raise MediaRejected(
            reason,
            f"decoding failed after {n_decoded} frames ({type(e).__name__}: {e}); {what}",
            {"n_decoded": n_decoded, "bytes": len(data), "error": f"{type(e).__name__}: {e}"},
        ) from e

    end = last_t + last_dur
    facts = {
        "n_decoded": n_decoded,
        "declared_duration_s": declared,
        "declared_frames": declared_frames or None,
        "decoded_s": round(end, 3),
        "bytes": len(data),
    }
    cut = looks_cut(data)
    frame_gap = 1.5 / native_fps if native_fps else 0.1
    short = (declared is not None and declared - end > max(frame_gap, 0.02 * declared)) or (
        declared_frames > 0 and n_decoded < declared_frames - 1
    )
    if n_decoded == 0:
        if cut:
            raise MediaRejected(
                "truncated_video",
                f"no frame decodes and the container is cut short ({len(data)} bytes); "
                "fetch the file again",
                facts,
            )
        raise MediaRejected(
            "no_frames", "the video stream holds no decodable frame; re-encode it", facts
        )
    if short and cut is not False:
        raise MediaRejected(
            "truncated_video",
            f"frames end at {end:.2f} s of {_fmt_s(declared)} declared ({n_decoded} decoded"
            f"{f' of {declared_frames}' if declared_frames else ''}); the file was cut short, "
            "fetch it again",
            facts,
        )
    kept = sampler.result()
    if not kept and last_frame is not None:  # every sample time lay past the last frame
        kept = [(last_t, sampler.rgb(last_frame))]
    return DecodedVideo(
        frames=tuple(im for _, im in kept),
        times=tuple(round(t, 6) for t, _ in kept),
        width=width,
        height=height,
        duration_s=round(end, 6),
        native_fps=native_fps,
        codec=stream.codec_context.name,
        container=container_name(container.format.name, data, dict(container.metadata)),
        n_decoded=n_decoded,
        has_audio=bool(container.streams.audio),
    )


class _ToRGB:
    """Converts frames to RGB pictures through one reusable swscale context: PyAV's
    ``to_image`` / ``to_ndarray(format=...)`` set up a new one per frame, which costs more than
    the conversion (about 3 ms vs 0.3 ms for 320 x 240). One per decode, not shared between
    threads."""

    def __init__(self) -> None:
        self._reformatter: Any = None

    def __call__(self, frame: Any) -> Image.Image:
        if self._reformatter is None:
            from av.video.reformatter import VideoReformatter

            self._reformatter = VideoReformatter()
        rgb = self._reformatter.reformat(frame, format="rgb24")
        return Image.fromarray(rgb.to_ndarray(), "RGB")


def _fmt_s(seconds: float | None) -> str:
    return "no duration" if seconds is None else f"{seconds:.2f} s"


def _check_size(width: int, height: int, limits: VideoLimits, what: str) -> None:
    facts = {"width": width, "height": height}
    if width * height > limits.max_pixels:
        raise MediaRejected(
            "video_too_large",
            f"{what} {width}x{height} = {width * height} pixels per frame, above max_pixels="
            f"{limits.max_pixels}; raise preprocess.video.max_pixels",
            {**facts, "max_pixels": limits.max_pixels},
        )
    if min(width, height) < limits.min_side:
        raise MediaRejected(
            "no_frames",
            f"{what} {width}x{height} frames, a side below min_side={limits.min_side}; "
            "lower preprocess.video.min_side",
            {**facts, "min_side": limits.min_side},
        )


class _Sampler:
    """Chooses the frames to keep as they are decoded (see the module docstring).

    With a declared duration it follows :func:`sample_times`. Without one - or once frames run
    past the declared end, i.e. the header understated the length - it takes a frame every
    ``step`` seconds, halving what it holds (and doubling ``step``) at ``2 * max_frames``, so at
    most that many RGB frames are ever held."""

    def __init__(self, declared: float | None, limits: VideoLimits, tol: float) -> None:
        self.plan = sample_times(declared, limits) if declared else None
        self.declared = declared or 0.0
        self.limits = limits
        self.tol = tol
        self.j = 0  # next plan entry
        self.step = 1.0 / limits.fps  # grid interval without a plan
        self.next_t = 0.0
        self.kept: list[tuple[float, Image.Image]] = []
        self.rgb = _ToRGB()

    def offer(self, t: float, frame: Any) -> None:
        if self.plan is not None:
            if self.j < len(self.plan) and t >= self.plan[self.j] - self.tol:
                self.kept.append((t, self.rgb(frame)))
                self.j += 1
                return
            if t <= self.declared + self.tol:
                return
            # the stream outlasts its header: go on with the plan's spacing, on a thinned grid
            plan = self.plan
            self.step = plan[1] - plan[0] if len(plan) > 1 else self.declared or self.step
            self.next_t = (self.kept[-1][0] if self.kept else 0.0) + self.step
            self.plan = None
        if t >= self.next_t - self.tol:
            self.kept.append((t, self.rgb(frame)))
            while self.next_t <= t + self.tol:
                self.next_t += self.step
            if len(self.kept) >= 2 * self.limits.max_frames:
                self.kept = self.kept[::2]
                self.step *= 2.0
                self.next_t = self.kept[-1][0] + self.step
                while self.next_t <= t + self.tol:
                    self.next_t += self.step

    def result(self) -> list[tuple[float, Image.Image]]:
        kept, m = self.kept, self.limits.max_frames
        if len(kept) <= m:
            return kept
        idx = np.round(np.linspace(0, len(kept) - 1, m)).astype(int)
        return [kept[i] for i in idx]


# -- fingerprints and derived images -------------------------------------------------------------


def video_hashes(frames: Sequence[Image.Image]) -> tuple[int, int]:
    """``(phash64, dhash64)`` of a video: for each of the 64 bits, the majority over the frames
    of that bit of :func:`cmrops.imaging.phash_bits` (resp. ``dhash_bits``); a tie (an even
    number of frames) takes the bit of the middle frame ``frames[len(frames) // 2]``."""
    if not frames:
        raise ValueError("video_hashes needs at least one frame")
    greys = [f.convert("L") for f in frames]
    p = np.stack([phash_bits(g).reshape(-1) for g in greys])
    d = np.stack([dhash_bits(g).reshape(-1) for g in greys])
    return bits_to_uint64(_majority(p)), bits_to_uint64(_majority(d))


def _majority(bits: np.ndarray) -> np.ndarray:
    n = bits.shape[0]
    ones = bits.sum(axis=0) * 2
    return np.where(ones == n, bits[n // 2], ones > n)


def _evenly(n: int, k: int) -> list[int]:
    if n <= k:
        return list(range(n))
    return [int(i) for i in np.round(np.linspace(0, n - 1, k)).astype(int)]


def thumbnail_strip(frames: Sequence[Image.Image], height: int = 72, max_frames: int = 8) -> bytes:
    """A JPEG of up to ``max_frames`` evenly chosen frames side by side, each scaled to
    ``height`` pixels (aspect kept), for the dashboard."""
    if not frames:
        raise ValueError("thumbnail_strip needs at least one frame")
    if height < 1 or max_frames < 1:
        raise ValueError(f"height and max_frames must be >= 1, got {height}, {max_frames}")
    tiles = []
    for i in _evenly(len(frames), max_frames):
        f = frames[i].convert("RGB")
        w = max(1, round(f.width * height / f.height))
        tiles.append(f.resize((w, height), Image.Resampling.BILINEAR))
    strip = Image.new("RGB", (sum(t.width for t in tiles), height))
    x = 0
    for t in tiles:
        strip.paste(t, (x, 0))
        x += t.width
    buf = io.BytesIO()
    strip.save(buf, "JPEG", quality=85)
    return buf.getvalue()


def encoder_frames(frames: Sequence[Image.Image], size: int) -> np.ndarray:
    """``(len(frames), size, size, 3)`` uint8: each frame centre-cropped and resized by
    :func:`cmrops.imaging.resize_for_encoder`."""
    if size < 1:
        raise ValueError(f"encoder size must be >= 1, got {size}")
    if not frames:
        return np.zeros((0, size, size, 3), dtype=np.uint8)
    return np.stack([resize_for_encoder(f, size) for f in frames])
