"""The one exception of :mod:`cmrops.media`: a video or audio file that cannot be used.

Same shape as :class:`cmrops.imaging.ImageRejected` so the preprocess stage turns either into a
quarantine row the same way: a short stable ``reason`` code from :data:`REASONS`, a ``detail``
sentence that says what is wrong and what to change, and ``evidence`` (measured facts and the
limits they broke) as a JSON-ready dict.
"""

from __future__ import annotations

from typing import Any, Final

#: Stable reason codes a :class:`MediaRejected` may carry.
REASONS: Final = frozenset(
    {
        "unsupported_media",  # not a container / format we can open (random bytes, text, ...)
        "corrupt_video",  # a known container whose data fails to demux or decode
        "truncated_video",  # a known container whose data ends early
        "no_video_stream",  # opens, but holds no video stream (an audio-only file)
        "video_too_long",  # declared or decoded duration above max_duration_s
        "video_too_large",  # frame width x height above max_pixels
        "too_many_frames",  # the decoder produced more than max_decoded_frames (a frame bomb)
        "no_frames",  # no usable frame: none decoded, or frames below min_side
        "corrupt_audio",  # a known audio format that fails to decode
        "truncated_audio",  # a known audio format whose data ends early
        "audio_too_long",  # duration above max_duration_s
        "audio_too_short",  # duration below min_duration_s (zero samples included)
        "too_many_channels",  # more channels than max_channels
        "silent_audio",  # every sample ~0 (only when reject_silent is on)
    }
)


class MediaRejected(Exception):
    """A video or audio file that cannot be used: ``reason`` is a code from :data:`REASONS`,
    ``detail`` one human sentence, ``evidence`` the measured facts (sizes, limits) as a
    JSON-ready dict."""

    def __init__(self, reason: str, detail: str, evidence: dict[str, Any] | None = None) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown media rejection reason {reason!r}")
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.evidence: dict[str, Any] = evidence or {}
