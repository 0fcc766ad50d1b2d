"""Video and audio for cmrops: safe decoding, fingerprints, embeddings inputs, synthetic media.

A pure library (no stage logic, no file layout): the pipeline stages call it.

- :mod:`cmrops.media.video` - :func:`decode_video` (a few deterministic sampled frames, with
  header and decode caps against media bombs), :func:`video_hashes`, :func:`thumbnail_strip`,
  :func:`encoder_frames`;
- :mod:`cmrops.media.audio` - :func:`decode_audio` (mono float32 at a target rate),
  :func:`log_mel`, :func:`audio_hashes`, :func:`logmel_stats` (the built-in "logmel-stats"
  audio embedding);
- :mod:`cmrops.media.errors` - :class:`MediaRejected`, the only exception decoding raises;
- :mod:`cmrops.media.synthetic` - seeded videos, sounds, broken files and small corpora.

PyAV, soundfile and scipy are imported on first use, so importing this package is cheap.
"""

from __future__ import annotations

from cmrops.media.audio import (
    LOGMEL_STATS_NAME,
    AudioLimits,
    DecodedAudio,
    audio_hashes,
    decode_audio,
    log_mel,
    logmel_stats,
)
from cmrops.media.errors import REASONS, MediaRejected
from cmrops.media.video import (
    DecodedVideo,
    VideoLimits,
    decode_video,
    encoder_frames,
    thumbnail_strip,
    video_hashes,
)

# one definition of the kinds and their file extensions, beside the sources that read them
from cmrops.sources.base import AUDIO_SUFFIXES, MEDIA_KINDS, VIDEO_SUFFIXES, media_kind_of

__all__ = [
    "AUDIO_SUFFIXES",
    "LOGMEL_STATS_NAME",
    "MEDIA_KINDS",
    "REASONS",
    "VIDEO_SUFFIXES",
    "AudioLimits",
    "DecodedAudio",
    "DecodedVideo",
    "MediaRejected",
    "VideoLimits",
    "audio_hashes",
    "decode_audio",
    "decode_video",
    "encoder_frames",
    "log_mel",
    "logmel_stats",
    "media_kind_of",
    "thumbnail_strip",
    "video_hashes",
]
