"""CSV and JSON Lines manifests: one row per sample, media paths relative to the manifest.

Columns (names configurable; defaults shown):

- ``image``: path of the image relative to the manifest's folder (must stay inside it) - or of
  the video / audio clip in a data set of that kind (``collect.media``; a row naming a file of
  another kind is quarantined as ``wrong_media``);
- ``captions``: in CSV, either a JSON list (``["a cat", "a dog"]``) or text split on
  ``separator`` (default ``|``; parts are stripped, empty parts dropped). In JSONL, a list of
  strings, or one string that is a single caption;
- ``labels`` (optional column): a JSON list, or text split on ``separator``;
- any other column is kept in the sample's ``extra`` JSON.

A UTF-8 byte-order mark is accepted. A row that is not valid UTF-8 or cannot be parsed is
quarantined (``invalid_utf8`` / ``malformed_row``) and the run goes on; a file that is not a
CSV/JSONL manifest at all (binary, UTF-16, no header with the image and captions columns, first
line not a JSON object) fails fast with a message naming the file. ``source_key`` is
``"<data row number>:<image path as written>"``.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from cmrops.sources.base import (
    MediaKind,
    RawItem,
    Reason,
    Record,
    Reject,
    clean_labels,
    has_surrogates,
    media_kind_of,
    printable,
    safe_image_path,
)

ManifestFormat = Literal["auto", "csv", "jsonl"]
_SNIFF_BYTES = 1 << 16
_MAX_FIELD = 64 << 20  # a caption cell may be large (preprocess caps it); bound it anyway


class ManifestSource:
    """Rows of a CSV (``.csv``/``.tsv``) or JSONL (``.jsonl``/``.ndjson``) manifest."""

    def __init__(
        self,
        name: str,
        path: Path,
        fmt: ManifestFormat = "auto",
        image_column: str = "image",
        captions_column: str = "captions",
        labels_column: str = "labels",
        separator: str = "|",
        media: MediaKind = "image",
    ) -> None:
        self.name = name
        self.path = path
        self.media: MediaKind = media
        self.image_column = image_column
        self.captions_column = captions_column
        self.labels_column = labels_column
        self.separator = separator
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: manifest of source {name!r} not found (fix its 'path' in params)"
            )
        self.format: Literal["csv", "jsonl"] = _detect_format(path, fmt)
        self.delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
        with path.open("rb") as fh:
            head = fh.read(_SNIFF_BYTES)
        _refuse_binary(path, head)
        if self.format == "csv":
            self.header = self._check_csv_header()
        else:
            self._check_jsonl_head()

    def size_hint(self) -> int | None:
        return None

    def __iter__(self) -> Iterator[Record]:
        yield from (self._csv_rows() if self.format == "csv" else self._jsonl_rows())

    # -- whole-file checks ---------------------------------------------------------------------

    def _check_csv_header(self) -> list[str]:
        with self.path.open(encoding="utf-8-sig", errors="surrogateescape", newline="") as fh:
            try:
                header = next(csv.reader(fh, delimiter=self.delimiter), [])
            except csv.Error as e:
                raise ValueError(f"{self.path}: not a CSV file ({e})") from e
        header = [h.strip() for h in header]
        if any(has_surrogates(h) for h in header):
            raise ValueError(f"{self.path}: the CSV header is not UTF-8; save the file as UTF-8")
        missing = [c for c in (self.image_column, self.captions_column) if c not in header]
        if missing:
            found = ", ".join(repr(h[:40]) for h in header[:10]) or "nothing"
            raise ValueError(
                f"{self.path}: not a CSV manifest: the header must name the columns "
                f"{self.image_column!r} and {self.captions_column!r} (missing "
                f"{', '.join(map(repr, missing))}; found {found}); fix the header or set "
                "image_column/captions_column in params"
            )
        return header

    def _check_jsonl_head(self) -> None:
        with self.path.open("rb") as fh:
            for raw in fh:
                if raw.strip():
                    try:
                        obj = json.loads(raw.decode("utf-8-sig"))
                    except (UnicodeDecodeError, json.JSONDecodeError) as e:
                        raise ValueError(
                            f"{self.path}: not a JSON Lines manifest (first line: {e}); "
                            "expected one JSON object per line"
                        ) from e
                    if not isinstance(obj, dict):
                        raise ValueError(
                            f"{self.path}: not a JSON Lines manifest: the first line is a "
                            f"{type(obj).__name__}, expected an object per line"
                        )
                    return

    # -- rows ------------------------------------------------------------------------------

    def _csv_rows(self) -> Iterator[Record]:
        csv.field_size_limit(max(csv.field_size_limit(), _MAX_FIELD))
        with self.path.open(encoding="utf-8-sig", errors="surrogateescape", newline="") as fh:
            reader = csv.reader(fh, delimiter=self.delimiter)
            next(reader)  # header, checked in __init__
            row_no = 0
            while True:
                try:
                    fields = next(reader)
                except StopIteration:
                    return
                except csv.Error as e:
                    row_no += 1
                    yield Reject(
                        self.name,
                        f"{row_no}:",
                        Reason.MALFORMED_ROW,
                        f"CSV line {reader.line_num}: {e}",
                    )
                    continue
                if not any(f.strip() for f in fields):
                    continue  # blank line
                row_no += 1
                yield self._csv_row(row_no, reader.line_num, fields)

    def _csv_row(self, row_no: int, line_no: int, fields: list[str]) -> Record:
        col = self.header.index(self.image_column)
        image = fields[col] if col < len(fields) else ""
        key = f"{row_no}:{printable(image.strip())}"
        if len(fields) != len(self.header):
            return Reject(
                self.name,
                key,
                Reason.MALFORMED_ROW,
                f"CSV line {line_no} has {len(fields)} fields, the header has {len(self.header)}",
            )
        if any(has_surrogates(f) for f in fields):
            return Reject(
                self.name,
                key,
                Reason.INVALID_UTF8,
                f"CSV line {line_no} is not valid UTF-8",
                {"line": line_no},
            )
        row = dict(zip(self.header, fields, strict=True))
        try:
            captions = self._split(row[self.captions_column])
            labels = self._split(row.get(self.labels_column, ""))
        except ValueError as e:
            return Reject(self.name, key, Reason.MALFORMED_ROW, f"CSV line {line_no}: {e}")
        extra = {
            k: v
            for k, v in row.items()
            if k not in (self.image_column, self.captions_column, self.labels_column)
        }
        return self._item(key, image.strip(), captions, labels, extra)

    def _jsonl_rows(self) -> Iterator[Record]:
        with self.path.open("rb") as fh:
            row_no = 0
            for line_no, raw in enumerate(fh, start=1):
                if not raw.strip():
                    continue
                row_no += 1
                yield self._jsonl_row(row_no, line_no, raw)

    def _jsonl_row(self, row_no: int, line_no: int, raw: bytes) -> Record:
        try:
            text = raw.decode("utf-8-sig" if line_no == 1 else "utf-8")
        except UnicodeDecodeError as e:
            return Reject(
                self.name,
                f"{row_no}:",
                Reason.INVALID_UTF8,
                f"JSONL line {line_no} is not valid UTF-8 (byte {e.start})",
                {"line": line_no},
            )
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            return Reject(
                self.name,
                f"{row_no}:",
                Reason.MALFORMED_ROW,
                f"JSONL line {line_no} is not JSON: {e}",
                {"line": line_no},
            )
        if not isinstance(obj, dict):
            return Reject(
                self.name,
                f"{row_no}:",
                Reason.MALFORMED_ROW,
                f"JSONL line {line_no} is a {type(obj).__name__}, not an object",
            )
        image = obj.get(self.image_column)
        key = f"{row_no}:{image if isinstance(image, str) else ''}"
        if not isinstance(image, str) or not image.strip():
            return Reject(
                self.name,
                key,
                Reason.MALFORMED_ROW,
                f"JSONL line {line_no}: {self.image_column!r} must be a path string",
            )
        caps = obj.get(self.captions_column)
        labels = obj.get(self.labels_column, [])
        if isinstance(caps, str):
            caps = [caps]
        if isinstance(labels, str):
            labels = self._split(labels)
        if caps is None:
            caps = []
        if not _str_list(caps) or not _str_list(labels):
            return Reject(
                self.name,
                key,
                Reason.MALFORMED_ROW,
                f"JSONL line {line_no}: {self.captions_column!r} and "
                f"{self.labels_column!r} must be strings or lists of strings",
            )
        extra = {
            k: v
            for k, v in obj.items()
            if k not in (self.image_column, self.captions_column, self.labels_column)
        }
        return self._item(key, image.strip(), list(caps), list(labels), extra)

    # -- shared ------------------------------------------------------------------------------

    def _split(self, cell: str) -> list[str]:
        """A caption/label cell: a JSON list of strings, or text split on the separator."""
        text = cell.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except json.JSONDecodeError as e:
                raise ValueError(f"cell starts with '[' but is not a JSON list: {e}") from e
            if not _str_list(value):
                raise ValueError("a JSON list cell must hold strings only")
            return list(value)
        return [p.strip() for p in text.split(self.separator) if p.strip()]

    def _item(
        self, key: str, image: str, captions: list[str], labels: list[str], extra: dict[str, Any]
    ) -> Record:
        where = safe_image_path(self.name, key, self.path.parent, image)
        if isinstance(where, Reject):
            return where
        if not captions:
            return Reject(self.name, key, Reason.MISSING_CAPTION, f"row for {image} has no caption")
        kind = media_kind_of(image)
        if kind is not None and kind != self.media:
            return Reject(
                self.name,
                key,
                Reason.WRONG_MEDIA,
                f"{image} is {'an' if kind == 'image' else 'a'} {kind} file but this data set "
                f"collects {self.media} (collect.media); list it in a {kind} data set",
                {"media": kind, "expected": self.media},
            )
        return RawItem(
            self.name,
            key,
            tuple(captions),
            clean_labels(labels),
            path=where,
            extra=extra,
            media=self.media,
        )


def _str_list(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _detect_format(path: Path, fmt: ManifestFormat) -> Literal["csv", "jsonl"]:
    if fmt != "auto":
        return fmt
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        return "csv"
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    raise ValueError(
        f"{path}: cannot tell the manifest format from the suffix {suffix!r}; name it .csv, "
        ".tsv, .jsonl or .ndjson, or set format: csv|jsonl for this source in params"
    )


def _refuse_binary(path: Path, head: bytes) -> None:
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ValueError(f"{path}: the manifest is UTF-16; save it as UTF-8")
    first_line = head.split(b"\n", 1)[0]
    if b"\x00" in first_line or head.count(b"\x00") * 100 > len(head):
        raise ValueError(
            f"{path}: the manifest looks binary (NUL bytes), not a CSV/JSONL text file; "
            "point the source at the manifest, not at an image or archive"
        )
