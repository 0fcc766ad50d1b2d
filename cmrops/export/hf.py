"""A Hugging Face ``datasets`` folder: ``data/<set>-00000-of-0000N.parquet`` (``shard_size``
rows each, in ``sample_id`` order, row groups of :data:`ROW_GROUP` rows) and ``README.md``, the
dataset card with the YAML header the Hub and ``datasets.load_dataset(folder)`` read (one split
per set, licence, task categories, size category).

The media column is named after the media (``image``, ``video`` or ``audio``) and holds
``{"bytes", "path"}`` structs typed as the ``datasets`` ``Image`` / ``Video`` / ``Audio``
feature; the Parquet schema carries the ``datasets`` features (its ``huggingface`` metadata,
made by ``datasets.Features`` itself), so ``load_dataset("parquet", data_dir=...)`` decodes the
images too. Other columns: ``sample_id``, ``captions`` (every caption), ``labels`` (effective),
``provided_labels``, ``in_train``, ``source``, ``source_key``, ``url``, ``license``, ``width``,
``height``, ``duration_s``, ``format``, ``media_sha256``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from cmrops import io
from cmrops.export.base import ExportOptions, Progress, write_card
from cmrops.export.stream import ReleaseSamples, Sample

#: Rows per Parquet row group: the rows (with their media) held in memory at once.
ROW_GROUP = 64


def features(media: str) -> Any:
    """The ``datasets.Features`` of an export's rows."""
    import datasets

    kind = {"image": datasets.Image, "audio": datasets.Audio, "video": datasets.Video}[media]
    text = datasets.Value("string")
    return datasets.Features(
        {
            "sample_id": text,
            media: kind(decode=True),
            "captions": datasets.List(text),
            "labels": datasets.List(text),
            "provided_labels": datasets.List(text),
            "in_train": datasets.Value("bool"),
            "source": text,
            "source_key": text,
            "url": text,
            "license": text,
            "width": datasets.Value("int32"),
            "height": datasets.Value("int32"),
            "duration_s": datasets.Value("float64"),
            "format": text,
            "media_sha256": text,
        }
    )


def write(
    samples: ReleaseSamples,
    out: Path,
    progress: Progress,
    options: ExportOptions,
    card: dict[str, Any],
    mtime: int,
) -> dict[str, Any]:
    from cmrops import datacard

    media = str(card.get("composition", {}).get("media") or "image")
    size = options.shard_size
    files = {s: math.ceil(n / size) for s, n in samples.sets.items()}
    configs = [{"split": s, "path": f"data/{s}-*.parquet"} for s in samples.sets]
    readme = datacard.markdown(card, hf={"configs": configs, "media": media})
    with progress.unit("README.md") as fh:
        fh.write(readme.encode("utf-8"))
    write_card(out, card, progress, datacard.markdown(card))
    schema = features(media).arrow_schema
    rows: dict[str, list[Sample]] = {s: [] for s in samples.sets}
    index = dict.fromkeys(samples.sets, 0)
    ids: list[str] = []

    def flush(split: str) -> None:
        name = f"data/{split}-{index[split]:05d}-of-{files[split]:05d}.parquet"
        index[split] += 1
        batch, rows[split] = rows[split], []
        if progress.done(name):
            return
        with io.parquet_writer(out / name, schema, row_group_rows=ROW_GROUP) as writer:
            for lo in range(0, len(batch), ROW_GROUP):
                writer.write_rows([_row(s, samples, media) for s in batch[lo : lo + ROW_GROUP]])
        progress.record(name, len(batch))

    for s in samples:
        ids.append(s.sample_id)
        rows[s.split].append(s)
        if len(rows[s.split]) >= size:
            flush(s.split)
    for split in samples.sets:
        if rows[split]:
            flush(split)
    return {"sample_ids": ids, "sets": dict(samples.sets), "files_per_set": files}


def _row(s: Sample, samples: ReleaseSamples, media: str) -> dict[str, Any]:
    meta = s.metadata()
    return {
        "sample_id": s.sample_id,
        media: {"bytes": samples.media(s), "path": f"{s.sample_id}.{s.ext}"},
        "captions": s.captions,
        "labels": s.labels,
        "provided_labels": s.provided_labels,
        "in_train": s.in_train,
        "source": s.source,
        "source_key": s.source_key,
        "url": meta["url"],
        "license": meta["license"],
        "width": s.width,
        "height": s.height,
        "duration_s": s.duration_s,
        "format": s.format,
        "media_sha256": s.media_sha256,
    }
