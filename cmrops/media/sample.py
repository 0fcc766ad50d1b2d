"""What preprocess measures of one video or audio sample, and the settings it reads.

The measured columns are the image columns of :data:`cmrops.schema.INTERIM_SAMPLES` (so clean,
split and the Rust near-duplicate engine work unchanged) plus ``duration_s`` and ``media_info``:

========== ================================================ ====================================
column     video                                            audio
========== ================================================ ====================================
width      frame width                                      0
height     frame height                                     0
format     container (``MP4``, ``MATROSKA``, ...)           soundfile format (``WAV``, ``FLAC``)
n_frames   keyframes used (sampled at ``video.fps``)        0
phash      majority vote of the keyframes' pHash bits       pHash of the log-mel spectrogram
dhash      majority vote of the keyframes' dHash bits       dHash of the log-mel spectrogram
========== ================================================ ====================================

The encoder inputs are the keyframes at the encoder's size (their embeddings are averaged into
the sample's "image" vector) or the mono waveform at ``audio.sample_rate``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from cmrops.media.audio import AudioLimits, audio_hashes, decode_audio, log_mel
from cmrops.media.video import (
    VideoLimits,
    decode_video,
    encoder_frames,
    thumbnail_strip,
    video_hashes,
)


@dataclass(frozen=True)
class VideoParams:
    """``preprocess.video``: keyframe sampling and the caps against media bombs."""

    fps: float = 1.0  # keyframes sampled per second of video
    max_frames: int = 16  # at most this many, evenly spread over a longer video
    max_duration_s: float = 600.0  # longer videos are quarantined (video_too_long)
    max_pixels: int = 3840 * 2160  # per frame (video_too_large)
    max_decoded_frames: int = 20_000  # frames the decoder may produce (too_many_frames)
    min_side: int = 16
    thumbnails: bool = True  # thumbs.parquet: a strip of keyframes per video (dashboard)

    def __post_init__(self) -> None:
        self.limits  # validates  # noqa: B018

    @property
    def limits(self) -> VideoLimits:
        return VideoLimits(
            fps=self.fps,
            max_frames=self.max_frames,
            max_duration_s=self.max_duration_s,
            max_pixels=self.max_pixels,
            max_decoded_frames=self.max_decoded_frames,
            min_side=self.min_side,
        )


@dataclass(frozen=True)
class AudioParams:
    """``preprocess.audio``: decoding caps, the target rate and the audio encoder."""

    sample_rate: int = 16_000  # every clip is resampled to this rate (mono)
    max_duration_s: float = 600.0  # longer clips are quarantined (audio_too_long)
    min_duration_s: float = 0.1  # shorter ones too (audio_too_short)
    max_channels: int = 16
    reject_silent: bool = False  # quarantine all-zero clips (silent_audio)
    # "logmel-stats" (built in, no model file) or a transformers audio model: a directory or a
    # Hugging Face id already in the local cache (CLAP, AST, wav2vec2, HuBERT, Whisper encoder)
    encoder: str = "logmel-stats"

    def __post_init__(self) -> None:
        self.limits  # validates  # noqa: B018

    @property
    def limits(self) -> AudioLimits:
        return AudioLimits(
            sample_rate=self.sample_rate,
            max_duration_s=self.max_duration_s,
            min_duration_s=self.min_duration_s,
            max_channels=self.max_channels,
            reject_silent=self.reject_silent,
        )


@dataclass(frozen=True)
class AsrParams:
    """``preprocess.asr``: an optional speech-recognition model for audio clips."""

    model: str = ""  # "" = off; a directory or a cached Hugging Face id (Whisper, wav2vec2-CTC)
    as_caption: bool = False  # also pool the transcript into the sample's text embedding
    batch_size: int = 8

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"asr.batch_size must be >= 1, got {self.batch_size}")


@dataclass
class Measured:
    """One decoded sample: its measured columns, encoder input and thumbnail (video)."""

    columns: dict[str, Any]
    pixels: np.ndarray | None = None  # video: (n_frames, size, size, 3) uint8
    wave: np.ndarray | None = None  # audio: float32 mono at audio.sample_rate
    thumbnail: bytes | None = None  # video: JPEG strip of keyframes


def measure_video(
    data: bytes, params: VideoParams, encoder_size: int, want_pixels: bool
) -> Measured:
    """Decode keyframes and fingerprint a video; raises ``MediaRejected`` for a bad one."""
    video = decode_video(data, params.limits)
    phash, dhash = video_hashes(video.frames)
    info = {
        "codec": video.codec,
        "native_fps": video.native_fps,
        "frames_decoded": video.n_decoded,
        "frame_times": [round(t, 3) for t in video.times],
        "has_audio": video.has_audio,
    }
    columns = {
        "width": video.width,
        "height": video.height,
        "format": video.container.upper(),
        "n_frames": len(video.frames),
        "phash": phash,
        "dhash": dhash,
        "duration_s": round(float(video.duration_s), 3),
        "media_info": json.dumps(info, sort_keys=True),
    }
    return Measured(
        columns,
        pixels=encoder_frames(video.frames, encoder_size) if want_pixels else None,
        thumbnail=thumbnail_strip(video.frames) if params.thumbnails else None,
    )


def measure_audio(data: bytes, params: AudioParams, want_wave: bool) -> Measured:
    """Decode, resample and fingerprint an audio clip; raises ``MediaRejected`` for a bad one."""
    audio = decode_audio(data, params.limits)
    mel = log_mel(audio.wave, audio.sample_rate)
    phash, dhash = audio_hashes(mel)
    info = {
        "native_rate": audio.native_rate,
        "sample_rate": audio.sample_rate,
        "channels": audio.channels,
        "subtype": audio.subtype,
    }
    columns = {
        "width": 0,
        "height": 0,
        "format": audio.format,
        "n_frames": 0,
        "phash": phash,
        "dhash": dhash,
        "duration_s": round(float(audio.duration_s), 3),
        "media_info": json.dumps(info, sort_keys=True),
    }
    return Measured(columns, wave=audio.wave if want_wave else None)
