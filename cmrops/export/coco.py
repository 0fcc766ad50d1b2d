"""COCO captions: ``annotations/captions_<set>.json`` per set and the media under ``<set>/``
(``<sample_id>.<ext>``) - the layout of the COCO captions release, which ``cmrops collect``
(``kind: coco``) and every COCO captions reader take.

Each set's JSON holds ``info`` (the release), ``licenses`` (the distinct licences its samples
carry, numbered from 1), ``images`` (``id`` 1..n in ``sample_id`` order, ``file_name``,
``width``, ``height``, ``license``, ``coco_url`` = the source URL when there is one, and the
cmrops fields ``sample_id``, ``labels``, ``in_train``, ``source``, ``source_key``) and
``annotations`` (one per caption: ``id``, ``image_id``, ``caption``, in order). The JSON is
assembled from spill files, so memory holds one sample, not the set. A media file already in
place with the right SHA-256 is not written again (``--resume``); ``media: false`` writes the
JSON only."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import IO, Any

from cmrops import io
from cmrops.export.base import ExportOptions, Progress, write_card
from cmrops.export.stream import ReleaseSamples


def write(
    samples: ReleaseSamples,
    out: Path,
    progress: Progress,
    options: ExportOptions,
    card: dict[str, Any],
    mtime: int,
) -> dict[str, Any]:
    from cmrops import datacard

    write_card(out, card, progress, datacard.markdown(card))
    spill = out / ".coco-spill"
    spill.mkdir(exist_ok=True)
    sinks: dict[str, tuple[IO[str], IO[str]]] = {}
    counters = {s: [0, 0] for s in samples.sets}  # images, annotations
    licences: dict[str, list[str]] = {s: [] for s in samples.sets}
    ids: list[str] = []
    try:
        for s in samples:
            ids.append(s.sample_id)
            if s.split not in sinks:
                sinks[s.split] = (
                    open(spill / f"{s.split}.images.jsonl", "w", encoding="utf-8"),  # noqa: SIM115
                    open(spill / f"{s.split}.annotations.jsonl", "w", encoding="utf-8"),  # noqa: SIM115
                )
            images, annotations = sinks[s.split]
            n = counters[s.split]
            n[0] += 1
            meta = s.metadata()
            lic = meta["license"]
            if lic is not None and lic not in licences[s.split]:
                licences[s.split].append(lic)
            name = f"{s.sample_id}.{s.ext}"
            entry = {
                "id": n[0], "file_name": name, "width": s.width, "height": s.height,
                "license": licences[s.split].index(lic) + 1 if lic is not None else None,
                "coco_url": meta["url"], "sample_id": s.sample_id, "labels": s.labels,
                "in_train": s.in_train, "source": s.source, "source_key": s.source_key,
                "media": s.media,
            }  # fmt: skip
            images.write(json.dumps(entry, sort_keys=True, ensure_ascii=False) + "\n")
            for caption in s.captions:
                n[1] += 1
                ann = {"id": n[1], "image_id": n[0], "caption": caption}
                annotations.write(json.dumps(ann, sort_keys=True, ensure_ascii=False) + "\n")
            if options.media:
                _media(out / s.split / name, s, samples)
    finally:
        for a, b in sinks.values():
            a.close()
            b.close()
    rel = samples.data.release
    for split in samples.sets:
        name = f"annotations/captions_{split}.json"
        if progress.done(name):
            continue
        info = {
            "description": f"{card.get('name', 'cmrops')} - set {split} of release {rel.id}",
            "version": rel.id,
            "year": int(rel.created[:4]) if rel.created[:4].isdigit() else None,
            "date_created": rel.created,
            "contributor": "cmrops export",
        }
        lic = [{"id": i + 1, "name": x, "url": x if x.startswith("http") else None}
               for i, x in enumerate(licences[split])]  # fmt: skip
        with progress.unit(name, counters[split][0]) as fh:
            _assemble(fh, info, lic, spill / f"{split}.images.jsonl",
                      spill / f"{split}.annotations.jsonl")  # fmt: skip
    for p in spill.iterdir():
        p.unlink()
    spill.rmdir()
    captions = {s: n[1] for s, n in counters.items()}
    return {"sample_ids": ids, "sets": dict(samples.sets), "captions": captions,
            "media_files": options.media}  # fmt: skip


def _media(path: Path, s: Any, samples: ReleaseSamples) -> None:
    if path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == s.media_sha256:
        return  # written by an interrupted run
    io.write_bytes(path, samples.media(s))


def _assemble(fh: IO[bytes], info: dict[str, Any], licences: list[dict[str, Any]],
              images: Path, annotations: Path) -> None:  # fmt: skip
    """``{"annotations": [...], "images": [...], "info": ..., "licenses": [...]}`` from the spill
    files, one line at a time (keys in sorted order, as ``json.dumps(sort_keys=True)``)."""

    def array(path: Path) -> None:
        first = True
        with open(path, encoding="utf-8") as src:
            for line in src:
                fh.write((b"" if first else b",\n") + line.rstrip("\n").encode("utf-8"))
                first = False

    fh.write(b'{"annotations": [\n')
    array(annotations)
    fh.write(b'\n], "images": [\n')
    array(images)
    fh.write(b'\n], "info": ' + json.dumps(info, sort_keys=True).encode())
    fh.write(b', "licenses": ' + json.dumps(licences, sort_keys=True).encode() + b"}\n")
