"""Pictures and sounds of samples for the dashboard: image thumbnails, the keyframe strips of
videos, audio clips, and :func:`preview`, which picks the right one for a sample of any media.
Nothing here raises for a bad file: the result says what is wrong instead.
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cmrops.media import MEDIA_KINDS
from cmrops.report_files import FILES
from cmrops.report_files import path as _path
from cmrops.report_files import read_json as _json
from cmrops.report_files import unreadable as _unreadable

__all__ = [
    "AudioClip",
    "Preview",
    "Thumbnail",
    "audio_clip",
    "audio_mime",
    "media_of",
    "preview",
    "thumbnail",
    "video_strip",
]


@dataclass(frozen=True)
class Thumbnail:
    """A small picture of a sample - a downscaled PNG of an image file, or the JPEG strip of a
    video's keyframes - or why there is none (a corrupt or missing file, no strip stored)."""

    data: bytes | None  # the encoded picture, ``mime`` says which format
    error: str | None = None
    width: int | None = None  # of the original image (a strip: of the strip)
    height: int | None = None
    mime: str = "image/png"


def thumbnail(path: str | os.PathLike[str] | None, max_side: int = 160) -> Thumbnail:
    """Decode ``path`` (bounded: at most 50 Mpx) and shrink it to ``max_side`` (a PNG); never
    raises for a bad image - the error says what is wrong instead."""
    if path is None or (isinstance(path, float) and math.isnan(path)):
        return Thumbnail(None, "no image stored for this sample")
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    try:
        with Image.open(p) as im:
            if im.width * im.height > 50_000_000:
                return Thumbnail(None, f"{im.width}x{im.height} is too large to preview",
                                 im.width, im.height)  # fmt: skip
            size = (im.width, im.height)
            im.draft("RGB", (max_side, max_side))
            im = im.convert("RGB")
            im.thumbnail((max_side, max_side))
            buf = io.BytesIO()
            im.save(buf, format="PNG")
    except FileNotFoundError:
        return Thumbnail(None, f"image file missing: {p}")
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        return Thumbnail(None, f"cannot decode the image ({e})")
    return Thumbnail(buf.getvalue(), None, *size)


def media_of(project: Path) -> str:
    """The data set's media - ``"image"``, ``"video"`` or ``"audio"`` (one kind per data set) -
    as preprocess recorded it (``features/meta.json``), else as the interim or raw sample table
    holds it (``media``; null means image); ``"image"`` before any stage ran and for tables
    written before video and audio."""
    recorded = _json(project, "features_meta").get("media")
    if recorded is not None:
        return _known_media(project, "features_meta", recorded)
    import pyarrow.parquet as pq

    for key in ("interim_samples", "raw_samples"):
        p = _path(project, key)
        if not p.is_file():
            continue
        try:
            if "media" not in pq.read_schema(p).names:
                return "image"
            kinds = pq.read_table(p, columns=["media"])["media"].drop_null().unique()
        except Exception as e:  # pyarrow raises several types for damaged files
            raise _unreadable(project, key, e) from e
        return _known_media(project, key, kinds[0].as_py()) if len(kinds) else "image"
    return "image"


def _known_media(project: Path, key: str, media: Any) -> str:
    if media not in MEDIA_KINDS:
        raise _unreadable(project, key, ValueError(f"unknown media {media!r}"))
    return str(media)


def video_strip(project: Path, sample_id: str | None) -> Thumbnail:
    """The JPEG strip of a video's keyframes that preprocess stored (``thumbs.parquet``), or
    why there is none: preprocess has not run, it could not decode the video (quarantined, see
    its evidence), or ran with ``preprocess.video.thumbnails`` off. Never raises: a damaged
    table is this sample's error, with the command that rewrites it."""
    if not isinstance(sample_id, str) or not sample_id:
        return Thumbnail(None, "no sample id, so no keyframe strip", mime="image/jpeg")
    p = _path(project, "thumbs")
    if not p.is_file():
        return Thumbnail(None, f"no keyframe strips yet ({FILES['thumbs'][0]} is not there): run "
                         "`cmrops preprocess`", mime="image/jpeg")  # fmt: skip
    import pyarrow.parquet as pq

    try:
        t = pq.read_table(
            p, columns=["sample_id", "jpeg"], filters=[("sample_id", "==", sample_id)]
        )
    except Exception as e:  # pyarrow raises several types for damaged files
        return Thumbnail(None, str(_unreadable(project, "thumbs", e)), mime="image/jpeg")
    jpeg = t["jpeg"][0].as_py() if t.num_rows else None
    if not jpeg:
        return Thumbnail(None, f"no keyframe strip stored for {sample_id}: preprocess did not "
                         "decode this video (see its quarantine evidence) or ran with "
                         "preprocess.video.thumbnails off", mime="image/jpeg")  # fmt: skip
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(jpeg)) as im:
            size = (im.width, im.height)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        return Thumbnail(None, f"the stored keyframe strip of {sample_id} is not an image ({e}); "
                         "rerun `cmrops preprocess`", mime="image/jpeg")  # fmt: skip
    return Thumbnail(jpeg, None, *size, mime="image/jpeg")


@dataclass(frozen=True)
class AudioClip:
    """The stored bytes of an audio clip to hand to a player, with their MIME type, or why
    there are none (a missing, oversized or unrecognised file)."""

    data: bytes | None
    mime: str | None
    error: str | None = None


#: Audio formats a browser plays, by the bytes they start with: (offset, magic, MIME type).
#: MPEG audio without an ID3 tag starts with a frame header (MPEG-1 / 2 layer III, no CRC).
#: The MIME type a browser plays each audio container as (:func:`cmrops.media.audio.audio_format`).
_AUDIO_MIME = {
    "WAV": "audio/wav",
    "FLAC": "audio/flac",
    "OGG": "audio/ogg",
    "MP3": "audio/mpeg",
    "AIFF": "audio/aiff",
    "MP4": "audio/mp4",  # M4A (AAC)
    "MATROSKA": "audio/webm",
}


def audio_mime(head: bytes) -> str | None:
    """The MIME type of an audio file from its first bytes (WAV, FLAC, Ogg, MP3, AIFF, M4A,
    WebM), or ``None`` for anything else."""
    from cmrops.media.audio import audio_format

    fmt = audio_format(head)
    return None if fmt is None else _AUDIO_MIME[fmt]


def audio_clip(path: str | os.PathLike[str] | None, max_bytes: int = 16 << 20) -> AudioClip:
    """The bytes of the clip at ``path`` (the content-addressed store has no file extensions,
    so the format is read from its magic bytes), at most ``max_bytes`` of them: a larger file
    is not read but named in the error. Never raises for a bad file - the error says what is
    wrong instead."""
    if path is None or (isinstance(path, float) and math.isnan(path)):
        return AudioClip(None, None, "no audio stored for this sample")
    p = Path(path)
    try:
        with p.open("rb") as f:
            data = f.read(max_bytes + 1)
    except FileNotFoundError:
        return AudioClip(None, None, f"audio file missing: {p}")
    except OSError as e:
        return AudioClip(None, None, f"cannot read the audio file ({e})")
    if len(data) > max_bytes:
        size = p.stat().st_size
        return AudioClip(None, None, f"the clip is {size / 2**20:.1f} MiB, more than the "
                         f"{max_bytes / 2**20:.1f} MiB a preview plays")  # fmt: skip
    mime = audio_mime(data[:16])
    if mime is None:
        what = "an empty file" if not data else f"starts {data[:8]!r}"
        return AudioClip(None, None, f"not an audio format a browser plays ({what})")
    return AudioClip(data, mime)


@dataclass(frozen=True)
class Preview:
    """What the dashboard shows for one sample: a picture (``mime`` ``image/*``: an image's
    thumbnail, a video's keyframe strip) or a clip to play (``audio/*``), or why there is none
    (``data`` None, ``error`` set)."""

    media: str  # the sample's media: image, video or audio
    data: bytes | None
    mime: str | None
    error: str | None = None

    @property
    def is_audio(self) -> bool:
        return self.data is not None and (self.mime or "").startswith("audio/")


def preview(
    project: Path,
    sample_id: str | None,
    path: str | os.PathLike[str] | None,
    media: str,
    max_side: int = 160,
) -> Preview:
    """The preview of one sample of a ``media`` data set (:func:`media_of`): an image's
    :func:`thumbnail` of ``path`` (at most ``max_side``), a video's :func:`video_strip` (by
    ``sample_id``; the file at ``path`` is not decoded again), an audio clip's
    :func:`audio_clip` of ``path``. Never raises for a bad sample."""
    if media == "image":
        t = thumbnail(path, max_side)
    elif media == "video":
        t = video_strip(project, sample_id)
    elif media == "audio":
        a = audio_clip(path)
        return Preview(media, a.data, a.mime, a.error)
    else:
        return Preview(media, None, None, f"unknown media {media!r}")
    return Preview(media, t.data, t.mime if t.data is not None else None, t.error)
