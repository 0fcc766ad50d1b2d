"""A folder of images (or videos, or audio clips: ``collect.media``) with captions beside them.

Layout (walked recursively in sorted order; names starting with ``.`` are skipped)::

    root/
      a.jpg  a.txt            # same-stem .txt: one caption a line, blank lines ignored
      sub/b.png sub/b.txt
      captions.json           # optional index at the root: {"a.jpg": "one" | ["one", "two"]}
                              #   or [{"image": "a.jpg", "captions": [...]}, ...]
      captions.txt            # optional Flickr8k-style index: "image,caption" lines (header
                              #   "image,caption" optional; "image.jpg#0<TAB>caption" also read)

      meta/tags/tags<N>.txt   # MIRFlickr-25K: the tags of im<N>.jpg, one a line - read as one
                              #   caption, the tags joined by spaces (an image without tags
                              #   has no caption)

An index entry names an image by its path relative to the root, or by its bare file name (as
Flickr8k does, with the photos in ``Images/``). An image's captions are its index entries followed
by its sidecar lines. Records yielded: one per image file, plus one ``missing_image`` reject per
caption (index entry or sidecar ``.txt``) whose image is absent, and one ``path_escape`` reject
per symlink or index path that leaves the root.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

from cmrops.sources.base import (
    MEDIA_SUFFIXES,
    MediaKind,
    PathEscapeError,
    RawItem,
    Reason,
    Record,
    Reject,
    caption_lines,
    check_image_file,
    has_surrogates,
    resolve_inside,
)

log = logging.getLogger(__name__)

INDEX_NAMES = ("captions.json", "captions.txt")
MIRFLICKR_TAGS = Path("meta") / "tags"  # MIRFlickr-25K's tags<N>.txt, the tags of im<N>.jpg
_MIRFLICKR_TAG_FILE = re.compile(r"tags(\d+)\.txt")


class FolderSource:
    """Images under ``root`` with same-stem ``.txt`` captions and/or a root caption index."""

    def __init__(self, name: str, root: Path, media: MediaKind = "image") -> None:
        self.name = name
        self.root = root
        self.media: MediaKind = media
        self._suffixes = MEDIA_SUFFIXES[media]
        if not root.is_dir():
            raise FileNotFoundError(
                f"{root}: {media} folder of source {name!r} not found (fix its 'path' in params)"
            )
        self._index_rejects: list[Reject] = []
        self._index = self._load_index()

    def size_hint(self) -> int | None:
        return None

    # -- caption index ------------------------------------------------------------------------

    def _load_index(self) -> dict[str, list[str]]:
        index: dict[str, list[str]] = defaultdict(list)
        json_path, txt_path = (self.root / n for n in INDEX_NAMES)
        if json_path.is_file():
            self._read_json_index(json_path, index)
        if txt_path.is_file():
            self._read_txt_index(txt_path, index)
        tags = self.root / MIRFLICKR_TAGS
        if tags.is_dir():
            self._read_mirflickr_tags(tags, index)
        return index

    def _read_mirflickr_tags(self, folder: Path, index: dict[str, list[str]]) -> None:
        for path in sorted(folder.iterdir()):
            m = _MIRFLICKR_TAG_FILE.fullmatch(path.name)
            if not m or not path.is_file():
                continue
            text = path.read_text(encoding="utf-8-sig", errors="surrogateescape")
            tags = [t.strip() for t in text.splitlines() if t.strip()]
            rel = path.relative_to(self.root).as_posix()
            if has_surrogates(text):
                self._index_rejects.append(
                    Reject(self.name, rel, Reason.INVALID_UTF8, "tag file is not valid UTF-8")
                )
            elif tags:
                index[f"im{int(m.group(1))}.jpg"].append(" ".join(tags))

    def _read_json_index(self, path: Path, index: dict[str, list[str]]) -> None:
        try:
            data = json.loads(path.read_text(encoding="utf-8-sig"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(
                f"{path}: not a UTF-8 JSON caption index ({e}); expected "
                '{"image.jpg": ["caption", ...]} or [{"image": ..., "captions": [...]}]'
            ) from e
        if isinstance(data, dict):
            entries = list(data.items())
        elif isinstance(data, list) and all(isinstance(x, dict) for x in data):
            entries = [(x.get("image"), x.get("captions", x.get("caption"))) for x in data]
        else:
            raise ValueError(f"{path}: a caption index must be a JSON object or a list of objects")
        for i, (image, caps) in enumerate(entries):
            if isinstance(caps, str):
                caps = [caps]
            if (
                not isinstance(image, str)
                or not isinstance(caps, list)
                or not all(isinstance(c, str) for c in caps)
            ):
                self._index_rejects.append(
                    Reject(
                        self.name,
                        f"captions.json[{i}]",
                        Reason.MALFORMED_ROW,
                        "index entry needs an image path (string) and captions (string or list)",
                    )
                )
                continue
            index[_norm_key(image)].extend(caps)

    def _read_txt_index(self, path: Path, index: dict[str, list[str]]) -> None:
        with path.open(encoding="utf-8-sig", errors="surrogateescape", newline="") as fh:
            for line_no, line in enumerate(fh, start=1):
                line = line.rstrip("\r\n")
                if not line.strip():
                    continue
                key = f"captions.txt:{line_no}"
                if has_surrogates(line):
                    self._index_rejects.append(
                        Reject(
                            self.name, key, Reason.INVALID_UTF8, "caption line is not valid UTF-8"
                        )
                    )
                    continue
                if "\t" in line and "#" in line.split("\t", 1)[0]:  # Flickr8k.token.txt
                    image, caption = line.split("\t", 1)
                    image = image.rsplit("#", 1)[0]
                else:
                    fields = next(csv.reader([line]))
                    if len(fields) < 2:
                        self._index_rejects.append(
                            Reject(
                                self.name,
                                key,
                                Reason.MALFORMED_ROW,
                                "expected 'image,caption' on this line of captions.txt",
                            )
                        )
                        continue
                    image, caption = fields[0], ",".join(fields[1:])
                    if line_no == 1 and (image.strip().lower(), caption.strip().lower()) == (
                        "image",
                        "caption",
                    ):
                        continue  # header
                index[_norm_key(image)].append(caption)

    # -- walk ---------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[Record]:
        yield from self._index_rejects
        used: set[str] = set()
        root = self.root.resolve()
        for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
            here = Path(dirpath)
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for d in list(dirnames):
                if (here / d).is_symlink():
                    dirnames.remove(d)  # never descend through links
                    rel = (here / d).relative_to(root).as_posix()
                    if not (here / d).resolve().is_relative_to(root):
                        yield Reject(
                            self.name,
                            rel,
                            Reason.PATH_ESCAPE,
                            f"directory symlink {rel} points outside {root}",
                        )
            yield from self._dir_records(root, here, sorted(filenames), used)
        for image in sorted(set(self._index) - used):
            yield self._orphan_index_entry(root, image)

    def _dir_records(
        self, root: Path, here: Path, filenames: list[str], used: set[str]
    ) -> Iterator[Record]:
        files = [f for f in filenames if not f.startswith(".")]
        images = [f for f in files if Path(f).suffix.lower() in self._suffixes]
        stems = {Path(f).stem for f in images}
        for fname in images:
            yield self._image_record(root, here / fname, used)
        for fname in files:
            p = here / fname
            if (
                p.suffix.lower() == ".txt"
                and p.stem not in stems
                and not (here == root and fname in INDEX_NAMES)
                and not (here == root / MIRFLICKR_TAGS and _MIRFLICKR_TAG_FILE.fullmatch(fname))
            ):
                rel = p.relative_to(root).as_posix()
                yield Reject(
                    self.name,
                    rel,
                    Reason.MISSING_IMAGE,
                    f"caption file {rel} has no {self.media} file with the same stem beside it",
                )

    def _image_record(self, root: Path, path: Path, used: set[str]) -> Record:
        rel = path.relative_to(root).as_posix()
        try:
            real = resolve_inside(root, rel)
        except PathEscapeError as e:
            return Reject(
                self.name, rel, Reason.PATH_ESCAPE, f"image symlink escapes: {e}", {"path": rel}
            )
        bad = check_image_file(self.name, rel, real)
        if bad is not None:
            return bad
        captions: list[str] = []
        for key in (rel, path.name):
            if key in self._index:
                captions.extend(self._index[key])
                used.add(key)
                break
        sidecar = path.with_suffix(".txt")
        if sidecar.is_symlink():
            try:
                resolve_inside(root, sidecar.relative_to(root).as_posix())
            except PathEscapeError as e:
                return Reject(
                    self.name,
                    rel,
                    Reason.PATH_ESCAPE,
                    f"caption file symlink escapes: {e}",
                    {"path": sidecar.name},
                )
        if sidecar.is_file():
            try:
                text = sidecar.read_bytes().decode("utf-8-sig")
            except UnicodeDecodeError as e:
                return Reject(
                    self.name,
                    rel,
                    Reason.INVALID_UTF8,
                    f"caption file {sidecar.name} is not UTF-8 (byte {e.start})",
                )
            except OSError as e:
                return Reject(
                    self.name,
                    rel,
                    Reason.UNREADABLE_FILE,
                    f"cannot read {sidecar.name}: {e.strerror}",
                )
            captions.extend(caption_lines(text))
        if not captions:
            return Reject(
                self.name,
                rel,
                Reason.MISSING_CAPTION,
                f"no captions for {rel} (add {sidecar.name} or an index entry)",
            )
        return RawItem(self.name, rel, tuple(captions), path=real, media=self.media)

    def _orphan_index_entry(self, root: Path, image: str) -> Reject:
        try:
            resolve_inside(root, image)
        except PathEscapeError as e:
            return Reject(
                self.name,
                image,
                Reason.PATH_ESCAPE,
                f"caption index names a path outside the folder: {e}",
                {"path": image},
            )
        return Reject(
            self.name,
            image,
            Reason.MISSING_IMAGE,
            f"caption index names {image!r} but no such image is in the folder",
            {"captions": len(self._index[image])},
        )


def _norm_key(image: str) -> str:
    image = image.strip().replace("\\", "/")
    return image[2:] if image.startswith("./") else image
