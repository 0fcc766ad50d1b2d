"""Audio caption CSVs in their published layouts: Clotho and AudioCaps.

**Clotho** (``clotho_captions_development.csv`` beside the folder ``development/``)::

    file_name,caption_1,caption_2,caption_3,caption_4,caption_5
    "Distorted AM Radio noise.wav","A muddled noise of broken channel of the TV", ...

One record per row: the file ``<media_dir>/<file_name>``, its non-empty captions in column
order. ``source_key`` is the file name.

**AudioCaps** (``train.csv`` / ``val.csv`` / ``test.csv``)::

    audiocap_id,youtube_id,start_time,caption
    91139,r1nicOVtvkQ,130,A woman talks nearby as water pours

Rows of the same ``(youtube_id, start_time)`` are one clip with several captions (val/test have
five). AudioCaps ships no audio; the clips are cut from YouTube by each user's downloader, which
names them ``<youtube_id>.wav``, ``Y<youtube_id>.wav``, ``<youtube_id>_<start_time>.wav`` or
``<audiocap_id>.wav`` (any audio extension) - all four are looked for. ``source_key`` is
``<youtube_id>@<start_time>``; ``extra`` keeps the audiocap ids and the start time.

Both: ``media_dir`` defaults to the folder beside the CSV named like it (without Clotho's
``clotho_captions_`` prefix: ``development/``, ``train/``), else ``audio/`` beside the CSV, else
the CSV's folder. A row whose file is absent is
``missing_image``; a malformed or non-UTF-8 row is ``malformed_row`` / ``invalid_utf8``; a CSV
without the expected header fails fast naming the file.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cmrops.sources.base import (
    AUDIO_SUFFIXES,
    PathEscapeError,
    RawItem,
    Reason,
    Record,
    Reject,
    check_image_file,
    has_surrogates,
    printable,
    resolve_inside,
)

CLOTHO_COLUMNS = ("file_name", "caption_1")
AUDIOCAPS_COLUMNS = ("audiocap_id", "youtube_id", "start_time", "caption")


def default_audio_dir(csv_path: Path) -> Path:
    """Where the clips of a caption CSV usually are (see the module docstring)."""
    stem = csv_path.stem.removeprefix("clotho_captions_")
    for candidate in (csv_path.parent / stem, csv_path.parent / "audio"):
        if candidate.is_dir():
            return candidate
    return csv_path.parent


def _read_csv(name: str, path: Path, need: tuple[str, ...], what: str) -> list[dict[str, Any]]:
    """Rows as dicts (``_line``: the line number; ``_bad``: a reason when unusable)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} CSV of source {name!r} not found (fix 'path')")
    with path.open(encoding="utf-8-sig", errors="surrogateescape", newline="") as fh:
        reader = csv.reader(fh)
        try:
            header = [h.strip() for h in next(reader, [])]
        except csv.Error as e:
            raise ValueError(f"{path}: not a CSV file ({e})") from e
        missing = [c for c in need if c not in header]
        if missing:
            raise ValueError(
                f"{path}: not a {what} caption CSV: the header lacks "
                f"{', '.join(map(repr, missing))} (found {', '.join(map(repr, header[:8]))})"
            )
        rows: list[dict[str, Any]] = []
        while True:
            try:
                fields = next(reader)
            except StopIteration:
                return rows
            except csv.Error as e:
                rows.append({"_line": reader.line_num, "_bad": (Reason.MALFORMED_ROW, str(e))})
                continue
            if not any(f.strip() for f in fields):
                continue
            row: dict[str, Any] = {"_line": reader.line_num}
            if len(fields) != len(header):
                row["_bad"] = (
                    Reason.MALFORMED_ROW,
                    f"{len(fields)} fields, the header has {len(header)}",
                )
            elif any(has_surrogates(f) for f in fields):
                row["_bad"] = (Reason.INVALID_UTF8, "not valid UTF-8")
            else:
                row.update(zip(header, (f.strip() for f in fields), strict=True))
            if "_bad" in row:
                row["_key"] = printable(fields[0].strip()) if fields else ""
            rows.append(row)


class _AudioIndex:
    """The audio files of a folder by stem (the first extension in sorted order wins)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.by_stem: dict[str, str] = {}
        for p in sorted(root.rglob("*")):
            if p.suffix.lower() in AUDIO_SUFFIXES and not p.name.startswith("."):
                self.by_stem.setdefault(p.stem, p.relative_to(root).as_posix())

    def item(
        self, source: str, key: str, rel: str, captions: list[str], extra: dict[str, Any]
    ) -> Record:
        try:
            path = resolve_inside(self.root, rel)
        except PathEscapeError as e:
            return Reject(source, key, Reason.PATH_ESCAPE, f"audio path escapes: {e}")
        bad = check_image_file(source, key, path)
        if bad is not None:
            return bad
        if not captions:
            return Reject(source, key, Reason.MISSING_CAPTION, f"no caption for {rel}")
        return RawItem(source, key, tuple(captions), path=path, extra=extra, media="audio")


class ClothoSource:
    """Clotho's ``file_name,caption_1..caption_5`` CSV over a folder of clips."""

    def __init__(self, name: str, path: Path, media_dir: Path | None = None) -> None:
        self.name = name
        self.rows = _read_csv(name, path, CLOTHO_COLUMNS, "Clotho")
        self.root = media_dir if media_dir is not None else default_audio_dir(path)
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.root}: audio folder of {name!r} not found")
        self._index = _AudioIndex(self.root)

    def size_hint(self) -> int | None:
        return len(self.rows)

    def __iter__(self) -> Iterator[Record]:
        for row in self.rows:
            key = row.get("file_name", row.get("_key", ""))
            if "_bad" in row:
                reason, detail = row["_bad"]
                yield Reject(self.name, key, reason, f"CSV line {row['_line']}: {detail}")
                continue
            captions = [
                row[c] for c in sorted(k for k in row if k.startswith("caption_")) if row[c]
            ]
            extra = {
                k: v
                for k, v in row.items()
                if not k.startswith(("caption_", "_")) and k != "file_name"
            }
            rel = key if (self.root / key).exists() else self._index.by_stem.get(Path(key).stem)
            if rel is None:
                yield Reject(self.name, key, Reason.MISSING_IMAGE, f"{key} is not in {self.root}")
                continue
            yield self._index.item(self.name, key, rel, captions, extra)


class AudioCapsSource:
    """AudioCaps' ``audiocap_id,youtube_id,start_time,caption`` CSV over downloaded clips."""

    def __init__(self, name: str, path: Path, media_dir: Path | None = None) -> None:
        self.name = name
        self.rows = _read_csv(name, path, AUDIOCAPS_COLUMNS, "AudioCaps")
        self.root = media_dir if media_dir is not None else default_audio_dir(path)
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.root}: audio folder of {name!r} not found")
        self._index = _AudioIndex(self.root)

    def size_hint(self) -> int | None:
        return None

    def __iter__(self) -> Iterator[Record]:
        clips: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for row in self.rows:
            if "_bad" in row:
                reason, detail = row["_bad"]
                key = f"line{row['_line']}"
                yield Reject(self.name, key, reason, f"CSV line {row['_line']}: {detail}")
                continue
            if not row["youtube_id"]:
                yield Reject(
                    self.name,
                    f"line{row['_line']}",
                    Reason.MALFORMED_ROW,
                    f"CSV line {row['_line']}: empty youtube_id",
                )
                continue
            clips.setdefault((row["youtube_id"], row["start_time"]), []).append(row)
        for (yid, start), rows in clips.items():
            key = f"{yid}@{start}"
            ids = [r["audiocap_id"] for r in rows]
            rel = self._file(yid, start, ids)
            if rel is None:
                yield Reject(
                    self.name,
                    key,
                    Reason.MISSING_IMAGE,
                    f"no clip for YouTube id {yid} at {start} s in {self.root} (looked for "
                    f"{yid}, Y{yid}, {yid}_{start} and the audiocap ids, any audio extension)",
                )
                continue
            extra = {"audiocap_ids": ids, "youtube_id": yid, "start_time": start}
            captions = [r["caption"] for r in rows if r["caption"]]
            yield self._index.item(self.name, key, rel, captions, extra)

    def _file(self, yid: str, start: str, ids: list[str]) -> str | None:
        for stem in (yid, f"Y{yid}", f"{yid}_{start}", *ids):
            if stem in self._index.by_stem:
                return self._index.by_stem[stem]
        return None
