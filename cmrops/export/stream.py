"""The samples of a release, streamed in ``sample_id`` order with their set, labels and media.

A release's dataset is its clean samples (``data/clean/samples.parquet``) placed by its split
(``data/split/assignments.parquet``) and labelled by ``data/labelled/labels.parquet`` - three
tables sorted by ``sample_id``, read batch by batch and merged, so memory holds a batch of rows,
not the data set. The media bytes are read one sample at a time from the release's
``data/raw/objects`` in the DVC cache (:class:`cmrops.release_data.ReleaseData`).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from cmrops import io
from cmrops.release_data import ReleaseData

CLEAN = "data/clean/samples.parquet"
SPLIT = "data/split/assignments.parquet"
LABELS = "data/labelled/labels.parquet"
RAW = "data/raw"
#: The clean-sample columns an export reads (the features, hashes and norms stay behind).
COLUMNS = (
    "sample_id", "source", "source_key", "image_sha256", "image_path", "image_bytes", "captions",
    "labels", "extra", "media", "width", "height", "format", "duration_s",
)  # fmt: skip
_IMAGE_EXT = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "GIF": "gif", "WEBP": "webp",
              "BMP": "bmp", "TIFF": "tiff"}  # fmt: skip
_AUDIO_EXT = {"WAV": "wav", "FLAC": "flac", "OGG": "ogg", "MP3": "mp3", "AIFF": "aiff",
              "MP4": "m4a", "MATROSKA": "mka"}  # fmt: skip
_VIDEO_EXT = {"matroska": "mkv"}


@dataclass
class Sample:
    """One sample of a release, as exports write it."""

    sample_id: str
    split: str
    in_train: bool
    source: str
    source_key: str
    captions: list[str]
    labels: list[str]  # the effective labels (label stage), sorted
    provided_labels: list[str]  # what the source said
    media: str  # image | video | audio
    media_sha256: str
    media_path: str  # in the release's data/raw (objects/ab/ab12...)
    media_bytes: int
    width: int | None
    height: int | None
    duration_s: float | None
    format: str | None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ext(self) -> str:
        """The media's file extension (from its decoded format; the source's name otherwise)."""
        fmt = (self.format or "").strip()
        if self.media == "image" and fmt.upper() in _IMAGE_EXT:
            return _IMAGE_EXT[fmt.upper()]
        if self.media == "audio" and fmt.upper() in _AUDIO_EXT:
            return _AUDIO_EXT[fmt.upper()]
        if self.media == "video" and fmt:
            return _VIDEO_EXT.get(fmt.lower(), fmt.lower().split(",")[0])
        suffix = PurePosixPath(self.source_key.split("?")[0]).suffix.lower().lstrip(".")
        return suffix if suffix.isalnum() and 0 < len(suffix) <= 5 else "bin"

    @property
    def url(self) -> str | None:
        u = self.extra.get("url")
        return u if isinstance(u, str) else None

    def metadata(self) -> dict[str, Any]:
        """Everything but the bytes, JSON-ready (the ``.json`` of a WebDataset sample, the
        columns of a Parquet row)."""
        return {
            "sample_id": self.sample_id,
            "split": self.split,
            "in_train": self.in_train,
            "source": self.source,
            "source_key": self.source_key,
            "url": self.url,
            "captions": self.captions,
            "labels": self.labels,
            "provided_labels": self.provided_labels,
            "media": self.media,
            "media_sha256": self.media_sha256,
            "media_bytes": self.media_bytes,
            "format": self.format,
            "width": self.width,
            "height": self.height,
            "duration_s": self.duration_s,
            "license": _licence(self.extra),
        }


def _licence(extra: dict[str, Any]) -> str | None:
    for key in ("license", "licence", "license_name", "license_url"):
        v = extra.get(key)
        if v is not None and str(v).strip():
            return str(v)
    return None


class ReleaseSamples:
    """The samples of a release (its clean, split and labelled outputs), streamed."""

    def __init__(self, data: ReleaseData, splits: tuple[str, ...] = ()) -> None:
        self.data = data
        self.wanted = set(splits)
        for rel in (CLEAN, SPLIT):
            if not data.has(rel):
                raise FileNotFoundError(
                    f"release {data.release.id} has no {rel}: an export needs a release whose run "
                    "reached split (stop_after split or later)"
                )
        self.sets = self._counts()
        unknown = sorted(self.wanted - set(self.sets))
        if unknown:
            raise ValueError(
                f"release {data.release.id} has no set(s) {', '.join(unknown)}; its sets: "
                f"{', '.join(self.sets)}"
            )

    def _counts(self) -> dict[str, int]:
        counts: Counter[str] = Counter()
        for batch in io.iter_parquet(self.data.path(SPLIT), columns=["split"]):
            counts.update(batch.column(0).to_pylist())
        order = ("train", "val", "test", "query", "database")
        names = sorted(counts, key=lambda s: (order.index(s) if s in order else len(order), s))
        return {s: counts[s] for s in names if not self.wanted or s in self.wanted}

    def __iter__(self) -> Iterator[Sample]:
        split = _Cursor(self.data.path(SPLIT), ["sample_id", "split", "in_train"])
        labels = _Grouped(self.data.path(LABELS), "label") if self.data.has(LABELS) else None
        for batch in io.iter_parquet(self.data.path(CLEAN), columns=list(COLUMNS), batch_rows=4096):
            for row in batch.to_pylist():
                sid = row["sample_id"]
                where = split.find(sid)
                if where is None:
                    raise ValueError(
                        f"release {self.data.release.id}: clean sample {sid} has no split "
                        "assignment (its split is stale)"
                    )
                if self.wanted and where["split"] not in self.wanted:
                    continue
                yield Sample(
                    sample_id=sid,
                    split=str(where["split"]),
                    in_train=bool(where["in_train"]),
                    source=row["source"],
                    source_key=row["source_key"],
                    captions=list(row["captions"] or []),
                    labels=sorted(labels.get(sid)) if labels is not None else [],
                    provided_labels=list(row["labels"] or []),
                    media=row["media"] or "image",
                    media_sha256=row["image_sha256"],
                    media_path=row["image_path"],
                    media_bytes=int(row["image_bytes"] or 0),
                    width=row["width"],
                    height=row["height"],
                    duration_s=row["duration_s"],
                    format=row["format"],
                    extra=_json(row["extra"]),
                )

    def media(self, s: Sample) -> bytes:
        """The sample's media bytes (checked against its SHA-256)."""
        import hashlib

        data = Path(self.data.path(f"{RAW}/{s.media_path}")).read_bytes()
        if hashlib.sha256(data).hexdigest() != s.media_sha256:
            raise ValueError(
                f"release {self.data.release.id}: the stored media of {s.sample_id} does not "
                f"match its SHA-256 {s.media_sha256} (a damaged DVC cache object?)"
            )
        return data


def _json(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        v = json.loads(text)
    except ValueError:
        return {}
    return v if isinstance(v, dict) else {}


class _Cursor:
    """Rows of a table sorted by ``sample_id``, found in ascending order (a merge join)."""

    def __init__(self, path: Path, columns: list[str]) -> None:
        self._batches = io.iter_parquet(path, columns=columns, batch_rows=8192)
        self._rows: list[dict[str, Any]] = []
        self._i = 0

    def find(self, sid: str) -> dict[str, Any] | None:
        while True:
            while self._i < len(self._rows):
                row = self._rows[self._i]
                if row["sample_id"] < sid:
                    self._i += 1
                    continue
                return row if row["sample_id"] == sid else None
            batch = next(self._batches, None)
            if batch is None:
                return None
            self._rows, self._i = batch.to_pylist(), 0


class _Grouped:
    """Values of a (sample_id, value) table sorted by sample_id, gathered per sample."""

    def __init__(self, path: Path, column: str) -> None:
        self._cursor = _Cursor(path, ["sample_id", column])
        self._column = column

    def get(self, sid: str) -> list[str]:
        out = []
        c = self._cursor
        while True:
            row = c.find(sid)
            if row is None:
                return out
            if row[self._column] is not None:
                out.append(str(row[self._column]))
            c._i += 1
