"""COCO captions (``captions_<split>.json``) with optional labels from ``instances_<split>.json``.

``path`` is either a COCO root (``annotations/captions_<split>.json`` and the photos in
``<split>/``; every split found is read unless ``splits`` names some) or one captions JSON file
(its photos in ``images``, by default ``<json folder>/../<split>``). Labels are the distinct
category names of the image's instance annotations, sorted; without an instances file (or with
``labels: false``) samples have no labels.

Each ``images`` entry is one record: a sample (captions in annotation order), or a reject for a
second entry with an id already seen (``duplicate_id``), a file that is absent or outside the
image folder (``missing_image``, ``path_escape``), or an image without captions
(``missing_caption``). Captions whose ``image_id`` is not in ``images`` become one
``orphan_annotation`` reject per unknown id. ``source_key`` is ``"<split>/<file_name>"``.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cmrops.sources.base import (
    RawItem,
    Reason,
    Record,
    Reject,
    clean_labels,
    safe_image_path,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CocoSplit:
    """One split: its captions file, optional instances file and image folder."""

    split: str
    captions: Path
    instances: Path | None
    images: Path


class CocoSource:
    """Samples from COCO-format caption (and instance) annotation files."""

    def __init__(
        self,
        name: str,
        path: Path,
        *,
        splits: tuple[str, ...] = (),
        instances: Path | None = None,
        images: Path | None = None,
        labels: bool = True,
    ) -> None:
        self.name = name
        self.splits = _find_splits(name, path, splits, instances, images, labels)

    def size_hint(self) -> int | None:
        return None

    def __iter__(self) -> Iterator[Record]:
        for split in self.splits:
            yield from self._split_records(split)

    def _split_records(self, sp: CocoSplit) -> Iterator[Record]:
        data = _load_json(sp.captions, ("images", "annotations"))
        licenses = {
            lic.get("id"): lic.get("name")
            for lic in data.get("licenses", [])
            if isinstance(lic, dict)
        }
        captions: dict[Any, list[str]] = defaultdict(list)
        ann_ids: dict[Any, list[Any]] = defaultdict(list)
        for ann in data["annotations"]:
            if isinstance(ann, dict) and isinstance(ann.get("caption"), str):
                captions[ann.get("image_id")].append(ann["caption"])
                ann_ids[ann.get("image_id")].append(ann.get("id"))
            else:
                yield Reject(
                    self.name,
                    f"{sp.split}/annotation:{_id(ann)}",
                    Reason.MALFORMED_ROW,
                    f"{sp.captions.name}: annotation without a caption string",
                )
        labels = _labels(sp.instances) if sp.instances else {}
        first_file: dict[Any, str] = {}
        n_kept = 0
        for img in data["images"]:
            record = self._image_record(sp, img, first_file, captions, labels, licenses)
            n_kept += isinstance(record, RawItem)
            yield record
        for image_id in sorted(set(captions) - set(first_file), key=repr):
            ids = ann_ids[image_id]
            yield Reject(
                self.name,
                f"{sp.split}/image_id={image_id}",
                Reason.ORPHAN_ANNOTATION,
                f"{len(ids)} caption annotation(s) for image id {image_id!r}, which "
                f"{sp.captions.name} does not list in 'images'",
                {"image_id": image_id, "annotation_ids": ids[:50], "count": len(ids)},
            )
        log.info("%s: COCO %s: %d images read", self.name, sp.split, n_kept)

    def _image_record(
        self,
        sp: CocoSplit,
        img: Any,
        first_file: dict[Any, str],
        captions: dict[Any, list[str]],
        labels: dict[Any, set[str]],
        licenses: dict[Any, Any],
    ) -> Record:
        if (
            not isinstance(img, dict)
            or not isinstance(img.get("file_name"), str)
            or ("id" not in img)
        ):
            return Reject(
                self.name,
                f"{sp.split}/image:{_id(img)}",
                Reason.MALFORMED_ROW,
                f"{sp.captions.name}: an 'images' entry needs 'id' and 'file_name'",
            )
        image_id, file_name = img["id"], img["file_name"]
        key = f"{sp.split}/{file_name}"
        if image_id in first_file:
            return Reject(
                self.name,
                key,
                Reason.DUPLICATE_ID,
                f"image id {image_id!r} is listed twice in {sp.captions.name}",
                {"image_id": image_id, "first": first_file[image_id]},
            )
        first_file[image_id] = key
        where = safe_image_path(self.name, key, sp.images, file_name)
        if isinstance(where, Reject):
            return where
        caps = captions.get(image_id, [])
        if not caps:
            return Reject(
                self.name,
                key,
                Reason.MISSING_CAPTION,
                f"no caption annotation for image id {image_id!r}",
            )
        extra: dict[str, Any] = {"coco_id": image_id, "split": sp.split}
        if "license" in img:
            extra["license"] = licenses.get(img["license"], img["license"])
        if "flickr_url" in img:
            extra["flickr_url"] = img["flickr_url"]
        return RawItem(
            self.name,
            key,
            tuple(caps),
            clean_labels(sorted(labels.get(image_id, ()))),
            path=where,
            extra=extra,
        )


def _id(obj: Any) -> str:
    return str(obj.get("id", "?")) if isinstance(obj, dict) else "?"


def _load_json(path: Path, required: tuple[str, ...]) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            data = json.load(fh)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a valid COCO JSON file ({e}); re-download or fix it") from e
    if not isinstance(data, dict) or any(not isinstance(data.get(k), list) for k in required):
        raise ValueError(
            f"{path}: not a COCO annotation file: it needs the lists {', '.join(required)}"
        )
    return data


def _labels(path: Path) -> dict[Any, set[str]]:
    """Map image id -> category names from a COCO instances file."""
    data = _load_json(path, ("annotations", "categories"))
    names = {c.get("id"): c.get("name") for c in data["categories"] if isinstance(c, dict)}
    out: dict[Any, set[str]] = defaultdict(set)
    for ann in data["annotations"]:
        if isinstance(ann, dict) and isinstance(names.get(ann.get("category_id")), str):
            out[ann.get("image_id")].add(names[ann["category_id"]])
    return out


def _find_splits(
    name: str,
    path: Path,
    splits: tuple[str, ...],
    instances: Path | None,
    images: Path | None,
    labels: bool,
) -> list[CocoSplit]:
    """Work out the (captions, instances, images) triples; fail fast on what is missing."""
    if path.is_dir():
        if instances is not None or images is not None:
            raise ValueError(
                f"source {name!r}: 'instances'/'images' apply to a single captions file; with a "
                f"COCO root ({path}) they are found as annotations/instances_<split>.json, <split>/"
            )
        ann = path / "annotations"
        found = {
            p.name[len("captions_") : -len(".json")]: p for p in sorted(ann.glob("captions_*.json"))
        }
        if not found:
            raise FileNotFoundError(
                f"{ann}: no captions_<split>.json in the COCO root of source {name!r} "
                "(point 'path' at the folder holding annotations/, or at one captions file)"
            )
        wanted = list(splits) or sorted(found)
        missing = [s for s in wanted if s not in found]
        if missing:
            raise FileNotFoundError(
                f"{ann}: no captions_{missing[0]}.json for split {missing[0]!r} of source "
                f"{name!r} (found splits: {', '.join(sorted(found))})"
            )
        out = []
        for s in wanted:
            inst = ann / f"instances_{s}.json"
            out.append(
                CocoSplit(s, found[s], inst if labels and inst.is_file() else None, path / s)
            )
        return out
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: COCO captions file / root of source {name!r} not found (fix its 'path')"
        )
    if splits:
        raise ValueError(f"source {name!r}: 'splits' applies to a COCO root folder, not a file")
    split = path.stem[len("captions_") :] if path.stem.startswith("captions_") else path.stem
    if instances is not None and not instances.is_file():
        raise FileNotFoundError(f"{instances}: COCO instances file of source {name!r} not found")
    if instances is None and labels:
        guess = path.with_name(f"instances_{split}.json")
        instances = guess if guess.is_file() else None
    if images is None:
        images = path.parent.parent / split
        if not images.is_dir():
            images = path.parent / split
    if not images.is_dir():
        raise FileNotFoundError(
            f"{images}: image folder of COCO source {name!r} not found (set 'images')"
        )
    return [CocoSplit(split, path, instances if labels else None, images)]
