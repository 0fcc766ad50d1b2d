"""Safe audio decoding to mono float32, log-mel spectrograms, a 64-bit audio fingerprint and the
built-in "logmel-stats" audio embedding.

:func:`decode_audio` reads with soundfile (libsndfile: WAV, FLAC, OGG/Vorbis/Opus, MP3, AIFF...)
and, when soundfile cannot open the bytes, with PyAV (FFmpeg: AAC/M4A, the audio track of a
video...). Either way no exception but :class:`~cmrops.media.errors.MediaRejected` gets out:

* **header facts first**: channels and duration (frames / sample rate) are checked against
  ``max_channels``, ``max_duration_s`` and ``min_duration_s`` before a sample is read, so a
  tiny header that claims ten hours costs nothing; PyAV's decoded sample count is capped as
  it goes (a container may understate its length);
* **truncation is detected**, not papered over: libsndfile quietly shortens a WAV whose
  ``data`` chunk is cut, so the chunk size is checked against the bytes present; a FLAC or
  MP3 that declares more frames than can be read, and an Ogg stream whose last page is
  incomplete or lacks the end-of-stream flag, are ``truncated_audio`` too;
* samples are read as float32, averaged to mono and resampled to ``sample_rate`` with
  :func:`scipy.signal.resample_poly` (up/down reduced by their gcd).

The fingerprint (:func:`audio_hashes`) treats the log-mel spectrogram as a grey picture and
hashes it; :func:`logmel_stats` is a 3 x ``n_mels`` summary vector used as the default audio
"encoder" when no model file is configured.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import math
import struct
from dataclasses import dataclass
from functools import cache
from typing import Any, Final

import numpy as np

from cmrops.media.errors import MediaRejected

#: Name of the built-in audio embedding (:func:`logmel_stats`).
LOGMEL_STATS_NAME: Final = "logmel-stats"

# Peak magnitude at or below which a wave counts as silent (about -80 dBFS).
SILENCE_PEAK: Final = 1e-4


@dataclass(frozen=True)
class AudioLimits:
    """Target rate and safety limits of :func:`decode_audio`.

    ``sample_rate`` is the rate of the returned wave; ``max_duration_s`` / ``min_duration_s``
    bound the duration, ``max_channels`` the channel count; ``reject_silent`` refuses a file
    whose every sample is below :data:`SILENCE_PEAK` in magnitude.
    """

    sample_rate: int = 16_000
    max_duration_s: float = 600.0
    min_duration_s: float = 0.1
    max_channels: int = 16
    reject_silent: bool = False

    def __post_init__(self) -> None:
        if self.sample_rate < 1:
            raise ValueError(f"sample_rate must be >= 1, got {self.sample_rate}")
        if not self.max_duration_s > 0:
            raise ValueError(f"max_duration_s must be > 0, got {self.max_duration_s}")
        if not 0 <= self.min_duration_s <= self.max_duration_s:
            raise ValueError(
                f"min_duration_s must lie in [0, max_duration_s={self.max_duration_s}], "
                f"got {self.min_duration_s}"
            )
        if self.max_channels < 1:
            raise ValueError(f"max_channels must be >= 1, got {self.max_channels}")


@dataclass(frozen=True)
class DecodedAudio:
    """A decoded audio file.

    ``wave`` is float32 mono at ``sample_rate`` (C-contiguous); ``duration_s`` its length;
    ``native_rate`` and ``channels`` are the file's; ``format`` / ``subtype`` are soundfile's
    names (``WAV`` / ``PCM_16``, ``FLAC``, ``OGG`` / ``VORBIS``, ``MP3`` / ``MPEG_LAYER_III``),
    or for files read by PyAV the container and codec (``M4A`` / ``AAC``).
    """

    wave: np.ndarray
    sample_rate: int
    duration_s: float
    native_rate: int
    channels: int
    format: str
    subtype: str


# -- structure checks ----------------------------------------------------------------------------


def audio_format(data: bytes) -> str | None:
    """The audio container its first bytes say (``WAV``, ``FLAC``, ``OGG``, ``MP3``, ``AIFF``,
    ``MP4`` for M4A/AAC, ``MATROSKA`` for WebM/MKV), or None."""
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        return "WAV"
    if data[:4] == b"fLaC":
        return "FLAC"
    if data[:4] == b"OggS":
        return "OGG"
    if data[:3] == b"ID3" or (len(data) > 1 and data[0] == 0xFF and data[1] & 0xE0 == 0xE0):
        return "MP3"
    if data[:4] == b"FORM" and data[8:12] in (b"AIFF", b"AIFC"):
        return "AIFF"
    if data[4:8] == b"ftyp":
        return "MP4"
    if data[:4] == b"\x1a\x45\xdf\xa3":
        return "MATROSKA"
    return None


def _wav_cut(data: bytes) -> dict[str, int] | None:
    """Facts about a WAV whose ``data`` chunk (or RIFF size) runs past the end, else None."""
    if len(data) < 12 or audio_format(data) != "WAV":
        return None
    pos = 12
    while pos + 8 <= len(data):
        cid, size = struct.unpack("<4sI", data[pos : pos + 8])
        if cid == b"data":
            if size in (0, 0xFFFFFFFF):  # a streamed WAV: length unknown
                return None
            have = len(data) - pos - 8
            return {"declared_bytes": size, "present_bytes": have} if size > have else None
        pos += 8 + size + (size & 1)
    return {"declared_bytes": -1, "present_bytes": 0}  # cut before the data chunk


def _ogg_cut(data: bytes) -> bool:
    """Whether an Ogg stream lacks a complete final page with the end-of-stream flag."""
    last = data.rfind(b"OggS")
    if last < 0 or last + 27 > len(data):
        return True
    flags, n_seg = data[last + 5], data[last + 26]
    if last + 27 + n_seg > len(data):
        return True
    body = sum(data[last + 27 : last + 27 + n_seg])
    return not (flags & 0x04) or last + 27 + n_seg + body > len(data)


# -- decoding ------------------------------------------------------------------------------------


def decode_audio(data: bytes, limits: AudioLimits | None = None) -> DecodedAudio:
    """Decode ``data`` to float32 mono at ``limits.sample_rate``, or raise
    :class:`MediaRejected`."""
    limits = limits or AudioLimits()
    if not data:
        raise MediaRejected(
            "unsupported_media", "the file is empty (0 bytes); fetch it again", {"bytes": 0}
        )
    import soundfile as sf

    try:
        f = sf.SoundFile(io.BytesIO(data))
    except Exception as sf_err:  # not something libsndfile reads: try FFmpeg
        return _decode_with_av(data, limits, sf_err)
    with f:
        try:
            return _decode_with_soundfile(f, data, limits)
        except MediaRejected:
            raise
        except Exception as e:  # defensive: nothing but MediaRejected leaves decode_audio
            raise MediaRejected(
                "corrupt_audio",
                f"reading the {f.format} file failed ({type(e).__name__}: {e}); re-encode it",
                {"bytes": len(data)},
            ) from e


def _decode_with_soundfile(f: Any, data: bytes, limits: AudioLimits) -> DecodedAudio:
    fmt, subtype = str(f.format), str(f.subtype)
    rate, channels, frames = int(f.samplerate), int(f.channels), int(f.frames)
    facts: dict[str, Any] = {"format": fmt, "sample_rate": rate, "channels": channels}
    cut = _wav_cut(data) if fmt == "WAV" else None
    if cut is not None:
        raise MediaRejected(
            "truncated_audio",
            f"the WAV data chunk declares {cut['declared_bytes']} bytes but "
            f"{cut['present_bytes']} are present; the file was cut short, fetch it again",
            {**facts, **cut},
        )
    if fmt == "OGG" and _ogg_cut(data):
        raise MediaRejected(
            "truncated_audio",
            "the Ogg stream ends without a complete end-of-stream page; the file was cut "
            "short, fetch it again",
            {**facts, "bytes": len(data)},
        )
    _check_header(rate, channels, frames, limits, facts)
    mono = _Downmix(facts)
    try:
        while True:  # not SoundFile.blocks: it pads a short read up to the declared length
            block = f.read(_BLOCK, dtype="float32", always_2d=True)
            if block.shape[0] == 0:
                break
            mono.add(block)
    except MediaRejected:
        raise
    except Exception as e:
        raise _read_error(e, frames, mono.n, facts) from e
    if mono.n < frames - 1:
        raise MediaRejected(
            "truncated_audio",
            f"the header declares {frames} frames but only {mono.n} can be read; "
            "the file was cut short, fetch it again",
            {**facts, "declared_frames": frames, "read_frames": mono.n},
        )
    return _finish(mono, rate, channels, fmt, subtype, limits, facts)


# frames read (and downmixed) at a time: memory stays at the mono wave's size
_BLOCK: Final = 1 << 16


class _Downmix:
    """Accumulates ``(n, channels)`` float32 blocks as their channel mean, checking each for
    NaN / infinity and tracking the peak magnitude over all channels."""

    def __init__(self, facts: dict[str, Any]) -> None:
        self.facts = facts
        self.parts: list[np.ndarray] = []
        self.n = 0
        self.peak = 0.0

    def add(self, block: np.ndarray) -> None:
        if block.shape[0] == 0:
            return
        if not np.isfinite(block).all():
            raise MediaRejected(
                "corrupt_audio", "samples include NaN or infinity; re-encode the file", self.facts
            )
        self.peak = max(self.peak, float(np.abs(block).max()))
        mono = block.mean(axis=1, dtype=np.float32) if block.shape[1] > 1 else block[:, 0]
        self.parts.append(np.array(mono, dtype=np.float32))  # a copy: blocks are reused
        self.n += block.shape[0]

    def wave(self) -> np.ndarray:
        return np.concatenate(self.parts) if self.parts else np.zeros(0, np.float32)


def _read_error(e: BaseException, declared: int, read: int, facts: dict[str, Any]) -> MediaRejected:
    msg = f"{type(e).__name__}: {e}"
    if declared > read:
        return MediaRejected(
            "truncated_audio",
            f"decoding stopped with an error before the {declared} declared frames ({msg}); "
            "the file is cut short or damaged, fetch it again",
            {**facts, "declared_frames": declared, "error": msg},
        )
    return MediaRejected(
        "corrupt_audio", f"decoding failed ({msg}); re-encode the file", {**facts, "error": msg}
    )


def _check_header(
    rate: int, channels: int, frames: int | None, limits: AudioLimits, facts: dict[str, Any]
) -> None:
    if rate < 1:
        raise MediaRejected(
            "corrupt_audio", f"the header declares a sample rate of {rate} Hz; re-encode it", facts
        )
    if channels > limits.max_channels:
        raise MediaRejected(
            "too_many_channels",
            f"{channels} channels, above max_channels={limits.max_channels}; raise "
            "preprocess.audio.max_channels",
            {**facts, "max_channels": limits.max_channels},
        )
    if channels < 1:
        raise MediaRejected("corrupt_audio", "the header declares 0 channels; re-encode it", facts)
    if frames is None:
        return
    _check_duration(frames / rate, limits, {**facts, "frames": frames}, "the header declares")


def _check_duration(duration: float, limits: AudioLimits, facts: dict[str, Any], what: str) -> None:
    if duration > limits.max_duration_s:
        raise MediaRejected(
            "audio_too_long",
            f"{what} {duration:.1f} s, above max_duration_s={limits.max_duration_s:g}; raise "
            "preprocess.audio.max_duration_s or cut the clip",
            {**facts, "duration_s": round(duration, 3), "max_duration_s": limits.max_duration_s},
        )
    if duration < limits.min_duration_s or duration == 0:
        raise MediaRejected(
            "audio_too_short",
            f"{what} {duration:.3f} s, below min_duration_s={limits.min_duration_s:g}; lower "
            "preprocess.audio.min_duration_s",
            {**facts, "duration_s": round(duration, 4), "min_duration_s": limits.min_duration_s},
        )


def _finish(
    mono: _Downmix,
    rate: int,
    channels: int,
    fmt: str,
    subtype: str,
    limits: AudioLimits,
    facts: dict[str, Any],
) -> DecodedAudio:
    _check_duration(mono.n / rate, limits, {**facts, "frames": mono.n}, "decoded samples last")
    if limits.reject_silent and mono.peak <= SILENCE_PEAK:
        raise MediaRejected(
            "silent_audio",
            f"every sample is within ±{SILENCE_PEAK:g} (silence); turn off "
            "preprocess.audio.reject_silent to keep silent clips",
            {**facts, "peak": mono.peak},
        )
    wave = resample(mono.wave(), rate, limits.sample_rate)
    return DecodedAudio(
        wave=wave,
        sample_rate=limits.sample_rate,
        duration_s=wave.shape[0] / limits.sample_rate,
        native_rate=rate,
        channels=channels,
        format=fmt,
        subtype=subtype,
    )


def resample(wave: np.ndarray, rate: int, target: int) -> np.ndarray:
    """``wave`` (1-D) from ``rate`` to ``target`` Hz with :func:`scipy.signal.resample_poly`
    (up = target / g, down = rate / g, g = gcd): float32, C-contiguous."""
    wave = np.asarray(wave, dtype=np.float32)
    if rate != target:
        from scipy.signal import resample_poly

        g = math.gcd(rate, target)
        wave = resample_poly(wave, target // g, rate // g).astype(np.float32, copy=False)
    return np.ascontiguousarray(wave, dtype=np.float32)


def _decode_with_av(data: bytes, limits: AudioLimits, sf_err: BaseException) -> DecodedAudio:
    import av

    magic = audio_format(data)
    try:
        container = av.open(io.BytesIO(data), mode="r", metadata_errors="replace")
    except Exception as e:
        raise _unreadable(data, magic, sf_err, e) from e
    try:
        return _av_audio(container, data, limits)
    except MediaRejected:
        raise
    except Exception as e:
        raise _unreadable(data, magic, sf_err, e) from e
    finally:
        with contextlib.suppress(Exception):
            container.close()


def _unreadable(
    data: bytes, magic: str | None, sf_err: BaseException, av_err: BaseException
) -> MediaRejected:
    facts = {"bytes": len(data), "soundfile": str(sf_err), "pyav": f"{type(av_err).__name__}"}
    if magic is None:
        head = data[:16].decode("ascii", "backslashreplace")
        return MediaRejected(
            "unsupported_media",
            f"bytes are not an audio format soundfile or FFmpeg can open (start {head!r}); "
            "check the file is audio",
            facts,
        )
    from cmrops.media.video import looks_cut

    if (
        (magic == "WAV" and _wav_cut(data))
        or (magic == "OGG" and _ogg_cut(data))
        or (magic == "MP4" and looks_cut(data))
    ):
        return MediaRejected(
            "truncated_audio",
            f"the {magic} file is cut short ({len(data)} bytes) and cannot be opened; fetch it "
            "again",
            facts,
        )
    return MediaRejected(
        "corrupt_audio",
        f"a {magic} file that neither soundfile nor FFmpeg can open; re-encode it",
        facts,
    )


def _av_audio(container: Any, data: bytes, limits: AudioLimits) -> DecodedAudio:
    import av

    from cmrops.media.video import container_name

    if not container.streams.audio:
        kinds = sorted({s.type for s in container.streams})
        raise MediaRejected(
            "unsupported_media",
            f"the {container_name(container.format.name, data, {})} file has no audio "
            f"stream (streams: "
            f"{kinds or 'none'}); list it as a video or image",
            {"streams": kinds},
        )
    stream = container.streams.audio[0]
    ctx = stream.codec_context
    rate = int(ctx.sample_rate or 0)
    channels = int(ctx.channels or 0)
    fmt = container_name(container.format.name, data, dict(container.metadata)).upper()
    subtype = str(ctx.name).upper()
    facts: dict[str, Any] = {"format": fmt, "sample_rate": rate, "channels": channels}
    declared = None
    if stream.duration and stream.time_base:
        declared = round(float(stream.duration * stream.time_base) * rate)
    elif container.duration:
        declared = round(container.duration / 1_000_000 * rate)
    _check_header(rate, channels, declared, limits, facts)
    cap = math.ceil(limits.max_duration_s * rate)
    resampler = av.AudioResampler(format="fltp", layout=ctx.layout, rate=rate)
    mono = _Downmix(facts)
    try:
        for frame in itertools.chain(container.decode(stream), [None]):  # None: flush
            for out in resampler.resample(frame):
                mono.add(out.to_ndarray().T)  # planar (channels, n) -> (n, channels)
                if mono.n > cap:
                    raise MediaRejected(
                        "audio_too_long",
                        f"decoded samples run past max_duration_s={limits.max_duration_s:g} "
                        "(the header understates the length); raise "
                        "preprocess.audio.max_duration_s or cut the clip",
                        {**facts, "max_duration_s": limits.max_duration_s},
                    )
    except MediaRejected:
        raise
    except Exception as e:
        raise _read_error(e, declared or 0, mono.n, facts) from e
    if declared and mono.n < 0.9 * declared - rate * 0.05:
        raise MediaRejected(
            "truncated_audio",
            f"the header declares {declared} frames but only {mono.n} decode; the file was "
            "cut short, fetch it again",
            {**facts, "declared_frames": declared, "read_frames": mono.n},
        )
    return _finish(mono, rate, channels, fmt, subtype, limits, facts)


# -- log-mel spectrogram -------------------------------------------------------------------------


def _hz_to_mel(f: np.ndarray | float) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)


@cache
def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int) -> np.ndarray:
    """``(n_mels, n_fft // 2 + 1)`` float32 HTK-style triangular filters, centres evenly spaced
    on the mel scale from 0 Hz to ``sample_rate / 2`` (peak 1, no area normalisation)."""
    freqs = np.arange(n_fft // 2 + 1) * sample_rate / n_fft
    edges = _mel_to_hz(np.linspace(0.0, float(_hz_to_mel(sample_rate / 2.0)), n_mels + 2))
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    up = (freqs[None, :] - lo) / (mid - lo)
    down = (hi - freqs[None, :]) / (hi - mid)
    fb = np.maximum(0.0, np.minimum(up, down)).astype(np.float32)
    fb.setflags(write=False)
    return fb


@cache
def _hann(n: int) -> np.ndarray:
    w = (0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)).astype(np.float32)  # periodic
    w.setflags(write=False)
    return w


def log_mel(
    wave: np.ndarray,
    sample_rate: int,
    n_mels: int = 64,
    win_s: float = 0.025,
    hop_s: float = 0.010,
) -> np.ndarray:
    """``(n_frames, n_mels)`` float32 log-mel spectrogram: frames of ``round(win_s * sr)``
    samples every ``round(hop_s * sr)``, Hann window, power of an ``n_fft``-point rfft (the
    next power of two at or above the window), :func:`mel_filterbank`, ``log(x + 1e-6)``.
    ``n_frames = 1 + (len(wave) - win) // hop``; a wave shorter than one window is zero-padded
    to one frame."""
    if sample_rate < 1 or n_mels < 1 or win_s <= 0 or hop_s <= 0:
        raise ValueError("sample_rate, n_mels, win_s and hop_s must be > 0")
    x = np.asarray(wave, dtype=np.float32).reshape(-1)
    win = max(1, round(win_s * sample_rate))
    hop = max(1, round(hop_s * sample_rate))
    n_fft = 1 << (win - 1).bit_length()
    if x.shape[0] < win:
        x = np.pad(x, (0, win - x.shape[0]))
    frames = np.lib.stride_tricks.sliding_window_view(x, win)[::hop] * _hann(win)
    spec = np.fft.rfft(frames, n=n_fft, axis=1)
    power = (spec.real**2 + spec.imag**2).astype(np.float32)
    mel = power @ mel_filterbank(sample_rate, n_fft, n_mels).T
    return np.log(mel + np.float32(1e-6)).astype(np.float32)


# -- fingerprint and embedding -------------------------------------------------------------------


def logmel_stats(mel: np.ndarray) -> np.ndarray:
    """The "logmel-stats" embedding: per-band mean, per-band standard deviation and per-band
    (mean of the second half of the frames - mean of the first half), concatenated
    (``3 * n_mels`` float32) and L2-normalised (all zeros stays zeros)."""
    m = np.asarray(mel, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] < 1:
        raise ValueError(f"expected a (n_frames >= 1, n_mels) array, got shape {m.shape}")
    half = m.shape[0] // 2
    first = m[:half] if half else m
    trend = m[half:].mean(axis=0) - first.mean(axis=0)
    v = np.concatenate([m.mean(axis=0), m.std(axis=0), trend])
    norm = float(np.linalg.norm(v))
    return (v / norm if norm > 0 else v).astype(np.float32)


#: Dynamic range of the fingerprint picture: log-mel values more than 40 dB below the loudest
#: cell are clipped to that floor, so background noise 30 dB down leaves the picture unchanged.
HASH_RANGE_DB: Final = 40.0
# The fraction of the mel bands, at the top (nearest Nyquist), left out of the fingerprint:
# resamplers' and codecs' low-pass filters act there, which would move a broadband sound's hash.
_HASH_TOP_BANDS_DROPPED: Final = 1 / 16
# pHash coefficient block: 16 frequencies x 4 time frequencies of the 32 x 32 DCT.
_PHASH_BLOCK: Final = (16, 4)
# A coefficient within this fraction of the largest AC magnitude of the median is a tie.
_PHASH_TIE: Final = 0.02
# A dHash cell is brighter than its neighbour only by more than this (the picture spans 0-1).
_DHASH_TIE: Final = 0.01


def spectrogram_picture(mel: np.ndarray) -> np.ndarray:
    """The fingerprint's grey picture of a log-mel spectrogram: ``(n_frames, n_bands)`` float64
    in [0, 1] (time down the rows, frequency rising along the columns), the top
    ``n_mels / 16`` bands dropped, values clipped to :data:`HASH_RANGE_DB` below the maximum,
    then min-max scaled (a constant input gives zeros)."""
    m = np.asarray(mel, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] < 1 or m.shape[1] < 1:
        raise ValueError(f"expected a (n_frames >= 1, n_mels >= 1) array, got shape {m.shape}")
    keep = max(1, m.shape[1] - int(m.shape[1] * _HASH_TOP_BANDS_DROPPED))
    m = m[:, :keep]
    top = float(m.max())
    m = np.maximum(m, top - HASH_RANGE_DB / 10.0 * math.log(10.0))
    lo = float(m.min())
    return (m - lo) / (top - lo) if top > lo else np.zeros_like(m)


def audio_hashes(mel: np.ndarray) -> tuple[int, int]:
    """``(phash64, dhash64)``: the audio fingerprint of a log-mel spectrogram (from
    :func:`log_mel`), bit order as in :mod:`cmrops.imaging`.

    Both hash :func:`spectrogram_picture` - the spectrogram as a grey picture, 40 dB of dynamic
    range, min-max scaled, so a gain change leaves it exactly unchanged and noise 30 dB down
    barely touches it. A steady sound's picture does not vary along time, which breaks the
    image recipes (their bits would compare noise), so the recipes are adapted:

    * **pHash**: the picture (frequency rising upwards, time to the right) is resized to
      32 x 32 (Lanczos) and DCT-II transformed with the matrix image pHash uses; the 64
      coefficients are the 16 lowest frequency x 4 lowest time frequencies (more pitch
      resolution than image pHash's 8 x 8), each compared with their median. A coefficient
      within 2 % of the largest AC magnitude of the median is a tie and takes the bit of the
      time-constant coefficient of the same frequency row, so a steady tone has 16 pitch bits
      repeated four times instead of 48 noise bits;
    * **dHash**: image dHash's recipe (9 x 8 Lanczos, each cell against its left neighbour)
      on the picture with frequency along *x* and time down, i.e. for 8 time slices whether
      each of 8 frequency cells is brighter than the one below it (along time a steady sound
      has nothing to compare). It runs in float, and a cell counts as brighter only by more
      than 1 % of the picture's range: a steady sound repeats its 8 comparisons in all 8
      slices, so one near-tie flipped by noise would otherwise cost 8 bits.

    Measured on the seeded sounds of :func:`cmrops.media.synthetic.tone` (the tests hold
    these): a copy at ±6 dB, with white noise at 30 dB SNR, re-encoded as FLAC or Ogg Vorbis,
    or resampled from 44.1 kHz is within 4 bits in both hashes (mostly 0); a different pitch
    (440 vs 1200 Hz, 220 vs 440 Hz), a rising vs a falling chirp, and noise vs a tone are 16
    or more apart in both.
    Beeps and a steady tone of the same pitch are *not* told apart: a 5 Hz on/off rhythm is
    finer than the hash's time resolution (as fine texture is for image pHash);
    :func:`logmel_stats` separates them.
    """
    from PIL import Image

    from cmrops.imaging import _dct_matrix, bits_to_uint64

    pic = spectrogram_picture(mel)
    up = Image.fromarray(np.ascontiguousarray(pic.T[::-1], dtype=np.float32), "F")
    grid = np.asarray(up.resize((32, 32), Image.Resampling.LANCZOS), dtype=np.float64)
    d = _dct_matrix(32)
    rows, cols = _PHASH_BLOCK
    coef = (d @ grid @ d.T)[:rows, :cols]
    med = float(np.median(coef))
    scale = float(np.abs(coef).reshape(-1)[1:].max())  # largest AC magnitude
    bits = coef > med
    tie = np.abs(coef - med) <= _PHASH_TIE * scale
    tie[:, 0] = False
    bits = np.where(tie, bits[:, :1], bits)
    small = Image.fromarray(np.ascontiguousarray(pic, dtype=np.float32), "F")
    cells = np.asarray(small.resize((9, 8), Image.Resampling.LANCZOS), dtype=np.float64)
    brighter = cells[:, 1:] > cells[:, :-1] + _DHASH_TIE
    return bits_to_uint64(bits), bits_to_uint64(brighter)
