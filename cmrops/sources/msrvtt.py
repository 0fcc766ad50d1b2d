"""MSR-VTT-style video caption JSON: video files in a folder, captions in one JSON file.

The published layout (``train_val_videodatainfo.json``, ``test_videodatainfo.json``)::

    {"videos":    [{"video_id": "video0", "category": 9, "split": "train",
                    "start time": 137.72, "end time": 149.44, "url": "...", "id": 0}, ...],
     "sentences": [{"video_id": "video0", "caption": "a car is shown", "sen_id": 0}, ...]}

with the clips in ``TrainValVideo/video0.mp4`` (or ``videos/all/``, ``videos/``, or beside the
JSON; ``media_dir`` in params names another folder). One record per listed video, in the order
listed: its captions in ``sen_id`` order, ``extra`` = the video entry's other fields, and - with
``labels: true`` - the label ``category<N>`` (MSR-VTT's 20 categories are numbered; the JSON
does not name them). A listed video without a file is ``missing_image``; captions of a video id
not listed are ``orphan_annotation``; a video id listed twice is ``duplicate_id``. ``splits``
keeps the videos whose ``split`` is one of them (MSR-VTT: train / validate / test).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from cmrops.sources.base import (
    VIDEO_SUFFIXES,
    RawItem,
    Reason,
    Record,
    Reject,
    safe_image_path,
)

#: Where the clips usually are, relative to the JSON's folder, tried in this order.
DEFAULT_VIDEO_DIRS = ("TrainValVideo", "TestVideo", "videos/all", "videos", ".")


class MsrVttSource:
    """Videos named by an MSR-VTT-style JSON, with its sentences as captions."""

    def __init__(
        self,
        name: str,
        path: Path,
        media_dir: Path | None = None,
        splits: Sequence[str] = (),
        labels: bool = True,
    ) -> None:
        self.name = name
        self.path = path
        self.labels = labels
        self.splits = tuple(splits)
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: MSR-VTT JSON of source {name!r} not found (fix its 'path' in params)"
            )
        try:
            data = json.loads(path.read_text(encoding="utf-8-sig"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: not a UTF-8 JSON file ({e})") from e
        if not (
            isinstance(data, dict)
            and isinstance(data.get("videos"), list)
            and isinstance(data.get("sentences"), list)
        ):
            raise ValueError(
                f"{path}: not an MSR-VTT caption file: expected an object with 'videos' and "
                "'sentences' lists (train_val_videodatainfo.json layout)"
            )
        self._videos: list[Any] = data["videos"]
        self._sentences: list[Any] = data["sentences"]
        self.root = media_dir if media_dir is not None else _find_video_dir(path.parent)
        if not self.root.is_dir():
            raise FileNotFoundError(
                f"{self.root}: video folder of source {name!r} not found (set its 'media_dir')"
            )

    def size_hint(self) -> int | None:
        return len(self._videos)

    def __iter__(self) -> Iterator[Record]:
        captions: dict[str, list[tuple[int, str]]] = defaultdict(list)
        for i, s in enumerate(self._sentences):
            if (
                not isinstance(s, dict)
                or not isinstance(s.get("video_id"), str)
                or not isinstance(s.get("caption"), str)
            ):
                yield Reject(
                    self.name,
                    f"sentences[{i}]",
                    Reason.MALFORMED_ROW,
                    "a sentence needs a string 'video_id' and a string 'caption'",
                )
                continue
            order = s.get("sen_id")
            captions[s["video_id"]].append((order if isinstance(order, int) else i, s["caption"]))
        seen: set[str] = set()
        for i, v in enumerate(self._videos):
            if not isinstance(v, dict) or not isinstance(v.get("video_id"), str):
                yield Reject(
                    self.name,
                    f"videos[{i}]",
                    Reason.MALFORMED_ROW,
                    "a video entry needs a string 'video_id'",
                )
                continue
            vid = v["video_id"]
            if vid in seen:
                yield Reject(
                    self.name, vid, Reason.DUPLICATE_ID, f"video id {vid!r} is listed twice"
                )
                continue
            seen.add(vid)
            if self.splits and v.get("split") not in self.splits:
                captions.pop(vid, None)
                continue
            yield self._record(vid, v, [c for _, c in sorted(captions.pop(vid, []))])
        for vid in sorted(captions):
            if vid in seen:
                continue  # a video of a split left out on purpose
            yield Reject(
                self.name,
                vid,
                Reason.ORPHAN_ANNOTATION,
                f"{len(captions[vid])} caption(s) for video id {vid!r}, which 'videos' does not "
                "list",
            )

    def _record(self, vid: str, entry: dict[str, Any], captions: list[str]) -> Record:
        rel = _video_file(self.root, vid)
        where = safe_image_path(self.name, vid, self.root, rel)
        if isinstance(where, Reject):
            if where.reason == Reason.MISSING_IMAGE:
                return Reject(
                    self.name,
                    vid,
                    Reason.MISSING_IMAGE,
                    f"no video file for {vid!r} in {self.root} (looked for {vid}.mp4 and the "
                    "other video extensions)",
                )
            return where
        if not captions:
            return Reject(self.name, vid, Reason.MISSING_CAPTION, f"no sentence for {vid!r}")
        extra = {k: v for k, v in entry.items() if k != "video_id"}
        category = entry.get("category")
        labels = (f"category{category}",) if self.labels and isinstance(category, int) else ()
        return RawItem(
            self.name, vid, tuple(captions), labels, path=where, extra=extra, media="video"
        )


def _find_video_dir(base: Path) -> Path:
    for rel in DEFAULT_VIDEO_DIRS:
        if (base / rel).is_dir() and any(
            p.suffix.lower() in VIDEO_SUFFIXES for p in (base / rel).iterdir()
        ):
            return base / rel
    return base


def _video_file(root: Path, vid: str) -> str:
    """``<vid>.<ext>`` for the first video extension present (``<vid>.mp4`` when none is)."""
    for suffix in sorted(VIDEO_SUFFIXES, key=lambda s: (s != ".mp4", s)):
        if (root / f"{vid}{suffix}").exists():
            return f"{vid}{suffix}"
    return f"{vid}.mp4"
