"""WebDataset shards: ``<set>-000000.tar``, ``<set>-000001.tar``, ... (each set its own shards,
``shard_size`` samples each, in ``sample_id`` order), written with the ``webdataset`` package's
own ``TarWriter``. A sample is the members ``<sample_id>.<ext>`` (the media: ``jpg``, ``png``,
``mp4``, ``wav``, ...), ``<sample_id>.txt`` (its first caption, as img2dataset writes it) and
``<sample_id>.json`` (every caption, the labels, the set and ``in_train``, the source and its
key, the URL, size and licence): the layout ``webdataset.WebDataset`` and img2dataset's readers
expect. Members carry a fixed owner (empty), mode ``0444`` and mtime (the release's time), in
USTAR format, so the same release gives the same bytes. ``shards.json`` lists each set's shard
URLs in brace notation (``query-{000000..000003}.tar``) with their sample counts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cmrops.export.base import ExportOptions, Progress, write_card
from cmrops.export.stream import ReleaseSamples, Sample


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
    size = options.shard_size
    pending: dict[str, list[Sample]] = {s: [] for s in samples.sets}
    index: dict[str, int] = dict.fromkeys(samples.sets, 0)
    ids: list[str] = []
    counts: dict[str, list[int]] = {s: [] for s in samples.sets}

    def flush(split: str) -> None:
        batch = pending[split]
        name = f"{split}-{index[split]:06d}.tar"
        index[split] += 1
        counts[split].append(len(batch))
        if not progress.done(name):
            with progress.unit(name, len(batch)) as fh:
                _shard(fh, batch, samples, mtime)
        pending[split] = []

    for s in samples:
        ids.append(s.sample_id)
        pending[s.split].append(s)
        if len(pending[s.split]) >= size:
            flush(s.split)
    for split in samples.sets:
        if pending[split] or index[split] == 0:
            flush(split)
    listing = {
        split: {
            "url": f"{split}-{{000000..{n - 1:06d}}}.tar" if n > 1 else f"{split}-000000.tar",
            "shards": n,
            "samples": sum(counts[split]),
            "samples_per_shard": counts[split],
        }
        for split, n in index.items()
    }
    with progress.unit("shards.json") as fh:
        fh.write((json.dumps(listing, indent=2, sort_keys=True) + "\n").encode())
    return {"sample_ids": ids, "sets": {k: v["samples"] for k, v in listing.items()},
            "shards": listing}  # fmt: skip


def _shard(fh: Any, batch: list[Sample], samples: ReleaseSamples, mtime: int) -> None:
    from webdataset import TarWriter

    writer = TarWriter(fh, user="", group="", mode=0o444, encoder=False, mtime=mtime,
                       format="USTAR_FORMAT")  # fmt: skip
    try:
        for s in batch:
            meta = s.metadata()
            writer.write({
                "__key__": s.sample_id,
                s.ext: samples.media(s),
                "txt": (s.captions[0] if s.captions else "").encode("utf-8"),
                "json": json.dumps(meta, sort_keys=True, ensure_ascii=False).encode("utf-8"),
            })  # fmt: skip
    finally:
        writer.close()
