"""Records that every source yields, the quarantine reason codes, and path safety.

A source is an iterator of :class:`RawItem` (a would-be sample: image bytes or a path to them,
captions, labels) and :class:`Reject` (an input that cannot become a sample, with why). Sources
never write files and never decide about duplicates; the collect stage does that, so that every
record a source yields ends as exactly one kept sample or one quarantine row.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

#: What a data set pairs with its captions: one kind per data set (``collect.media``).
MediaKind = Literal["image", "video", "audio"]
MEDIA_KINDS: tuple[MediaKind, ...] = ("image", "video", "audio")

#: File name extensions (lower case, with the dot) read as images by the folder source.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})
#: ... as videos and as audio clips (by the folder, MSR-VTT, Clotho and AudioCaps sources).
VIDEO_SUFFIXES = frozenset({".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi"})
AUDIO_SUFFIXES = frozenset({".wav", ".flac", ".ogg", ".mp3"})
MEDIA_SUFFIXES: dict[str, frozenset[str]] = {
    "image": IMAGE_SUFFIXES,
    "video": VIDEO_SUFFIXES,
    "audio": AUDIO_SUFFIXES,
}


def media_kind_of(name: str | os.PathLike[str]) -> MediaKind | None:
    """The media kind a file name's extension says, or None for an unknown extension."""
    suffix = Path(name).suffix.lower()
    for kind in MEDIA_KINDS:
        if suffix in MEDIA_SUFFIXES[kind]:
            return kind
    return None


class Reason(StrEnum):
    """Stable quarantine reason codes written by the collect stage."""

    PATH_ESCAPE = "path_escape"  # ../, absolute, or a symlink that points outside the root
    MISSING_IMAGE = "missing_image"  # a caption / row / annotation whose media file is absent
    NOT_A_FILE = "not_a_file"  # the image path is a directory, fifo, device, socket
    UNREADABLE_FILE = "unreadable_file"  # open/read failed (permissions, vanished, I/O error)
    EMPTY_FILE = "empty_file"  # zero-byte image
    IMAGE_TOO_LARGE = "image_too_large"  # larger than collect.max_image_bytes
    MISSING_CAPTION = "missing_caption"  # an image with no caption at all
    INVALID_UTF8 = "invalid_utf8"  # a caption file / manifest row that is not UTF-8
    MALFORMED_ROW = "malformed_row"  # a manifest row that cannot be parsed or lacks fields
    MALFORMED_JSON = "malformed_json"  # a WebDataset .json member that is not a JSON object
    DUPLICATE_ID = "duplicate_id"  # a COCO image id listed twice
    ORPHAN_ANNOTATION = "orphan_annotation"  # COCO captions for an image id not in "images"
    UNSAFE_MEMBER = "unsafe_member"  # tar member: absolute, "..", link, device, fifo
    DUPLICATE_MEMBER = "duplicate_member"  # the same tar member name twice within one sample
    DUPLICATE_KEY = "duplicate_key"  # a tar sample key that reappears later in the shard
    MULTIPLE_IMAGES = "multiple_images"  # a tar sample with two image members
    TRUNCATED_SHARD = "truncated_shard"  # the tar ended mid-sample / without an end marker
    DUPLICATE_INPUT = "duplicate_input"  # the same (image, captions) already collected
    WRONG_MEDIA = "wrong_media"  # a manifest row naming a file of another kind than collect.media
    WITHDRAWN = "withdrawn"  # listed in the project's tombstone file (cmrops withdraw)


@dataclass(frozen=True, slots=True)
class RawItem:
    """One would-be sample as a source found it.

    Exactly one of ``data`` (bytes already in memory, e.g. from a tar stream) and ``path`` (a
    file checked to lie inside the source's root) is set; the bytes are an image, a video or an
    audio clip as ``media`` says. ``captions`` are as provided; ``extra`` holds
    JSON-serialisable source-specific facts (COCO id, licence, other columns).
    """

    source: str
    source_key: str
    captions: tuple[str, ...]
    labels: tuple[str, ...] = ()
    data: bytes | None = None
    path: Path | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    media: MediaKind = "image"

    def __post_init__(self) -> None:
        if (self.data is None) == (self.path is None):
            raise ValueError(f"{self.source}:{self.source_key}: set exactly one of data and path")


@dataclass(frozen=True, slots=True)
class Reject:
    """An input that cannot become a sample; it becomes one quarantine row."""

    source: str
    source_key: str
    reason: Reason
    detail: str
    evidence: Mapping[str, Any] = field(default_factory=dict)


Record = RawItem | Reject


@runtime_checkable
class Source(Protocol):
    """What the collect stage needs from a source: a name, a size hint and a record stream.

    Constructing a source checks what makes the input unusable as a whole (a missing folder, a
    manifest that is not CSV) and raises ``FileNotFoundError``/``ValueError`` naming the file;
    iterating never raises for a bad *item*, it yields a :class:`Reject` instead.
    """

    name: str

    def __iter__(self) -> Iterator[Record]: ...

    def size_hint(self) -> int | None:
        """Number of records the iteration will yield, when known cheaply (for progress bars)."""
        ...


class PathEscapeError(ValueError):
    """A relative path from an input resolves outside the root it must stay under."""


def resolve_inside(root: Path, rel: str) -> Path:
    """Join ``rel`` to ``root`` and return the resolved path, refusing anything outside ``root``.

    Absolute paths, ``..`` that climbs above the root and symlinks (anywhere on the way) that
    point outside it raise :class:`PathEscapeError`. The file need not exist.
    """
    if not rel or "\x00" in rel:
        raise PathEscapeError(f"invalid path {rel!r}")
    if os.path.isabs(rel) or rel.startswith(("\\", "/")) or (len(rel) > 1 and rel[1] == ":"):
        raise PathEscapeError(f"absolute path {rel!r}")
    base = root.resolve()
    target = (base / rel).resolve(strict=False)
    if not target.is_relative_to(base):
        raise PathEscapeError(f"{rel!r} resolves to {target}, outside {base}")
    return target


def check_image_file(source: str, key: str, path: Path) -> Reject | None:
    """Return a :class:`Reject` when ``path`` is not a readable regular file, else ``None``."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return Reject(source, key, Reason.MISSING_IMAGE, f"image file {path} does not exist")
    except OSError as e:
        return Reject(source, key, Reason.UNREADABLE_FILE, f"cannot stat {path}: {e.strerror}")
    if not stat.S_ISREG(st.st_mode):
        kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        return Reject(source, key, Reason.NOT_A_FILE, f"{path} is {kind}")
    return None


def safe_image_path(source: str, key: str, root: Path, rel: str) -> Path | Reject:
    """Resolve ``rel`` under ``root`` for an image: the path, or a Reject saying what is wrong."""
    try:
        path = resolve_inside(root, rel)
    except PathEscapeError as e:
        return Reject(
            source, key, Reason.PATH_ESCAPE, f"image path escapes its root: {e}", {"path": rel}
        )
    return check_image_file(source, key, path) or path


def clean_labels(labels: Sequence[object]) -> tuple[str, ...]:
    """Labels as a sorted tuple of distinct, stripped, non-empty strings."""
    return tuple(sorted({s for s in (str(x).strip() for x in labels) if s}))


def caption_lines(text: str) -> tuple[str, ...]:
    """Captions from a text file: one per line; blank lines are ignored, text kept as written."""
    return tuple(line.rstrip("\r") for line in text.split("\n") if line.strip())


def has_surrogates(text: str) -> bool:
    """True when ``text`` was decoded with ``surrogateescape`` from bytes that are not UTF-8."""
    return any("\udc80" <= ch <= "\udcff" for ch in text)


def printable(text: str) -> str:
    """``text`` made encodable as UTF-8: undecodable bytes (surrogates) become U+FFFD."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
