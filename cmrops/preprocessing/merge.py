"""The merge of the recorded shards into the stage outputs: samples and quarantine sorted by
``sample_id``, the feature files streamed into place, the side tables, the metrics.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cmrops import io
from cmrops.errors import NothingKeptError
from cmrops.preprocessing import STAGE
from cmrops.preprocessing.decode import THUMBS
from cmrops.preprocessing.embed import TRANSCRIPTS
from cmrops.preprocessing.shards import Shard, record_path
from cmrops.schema import INTERIM_SAMPLES, QUARANTINE

if TYPE_CHECKING:
    from cmrops.stages.preprocess import PreprocessParams


def merge(
    shards: list[Shard],
    stage_quarantine: list[dict[str, Any]],
    params: PreprocessParams,
    out: Path,
    n_in: int,
) -> dict[str, Any]:
    """Concatenate the shards' (small, image-free) tables, sort them by ``sample_id`` - shards
    hold id-sorted runs, and an incremental plan appends new shards after old ones - and stream
    each shard's embeddings into the sorted position of the memory-mapped feature files."""
    shard_dir = out / "shards"
    samples = [io.read_parquet(shard_dir / f"{s.stem}.samples.parquet") for s in shards]
    table = pa.concat_tables(samples) if samples else INTERIM_SAMPLES.empty_table()
    table = table.cast(INTERIM_SAMPLES)
    sizes = [t.num_rows for t in samples]
    del samples
    order = pc.sort_indices(table, [("sample_id", "ascending")]).to_numpy()
    if not np.array_equal(order, np.arange(len(order))):
        table = table.take(pa.array(order))
    ids, n = table["sample_id"], table.num_rows
    if ids.null_count or (n > 1 and pc.any(pc.equal(ids.slice(1), ids.slice(0, n - 1))).as_py()):
        raise AssertionError("merged samples are not unique, non-null sample_ids")
    n_kept = table.num_rows
    feature_rows = np.arange(n_kept, dtype=np.int64) if params.embeddings else np.full(n_kept, -1)
    table = table.set_column(
        table.schema.get_field_index("feature_row"),
        INTERIM_SAMPLES.field("feature_row"),
        pa.array(feature_rows, pa.int64()),
    )

    qtables = [io.read_parquet(shard_dir / f"{s.stem}.quarantine.parquet") for s in shards]
    qtables.append(pa.Table.from_pylist(stage_quarantine, schema=QUARANTINE))
    quarantine = pa.concat_tables(qtables).cast(QUARANTINE)
    keys = [(c, "ascending", "at_end") for c in ("sample_id", "source", "source_key", "reason")]
    quarantine = quarantine.take(pc.sort_indices(quarantine, sort_keys=keys))

    if n_in != n_kept + quarantine.num_rows:
        raise AssertionError(
            f"inputs ({n_in}) != kept ({n_kept}) + quarantined ({quarantine.num_rows})"
        )
    if n_kept == 0:  # nothing for the next stage: fail here, with why, before writing
        raise NothingKeptError(STAGE, n_in, *_reasons_and_examples(quarantine))
    # where each concatenated row lands in the sorted table
    position = np.empty(n_kept, np.int64)
    position[order] = np.arange(n_kept, dtype=np.int64)
    meta = _write_features(shards, sizes, position, params, out)
    _merge_side_table(shard_dir, shards, "thumbs", THUMBS, out / "thumbs.parquet")
    if meta.get("transcripts"):
        _merge_side_table(
            shard_dir, shards, "transcripts", TRANSCRIPTS, out / "features" / "transcripts.parquet"
        )
    else:
        (out / "features" / "transcripts.parquet").unlink(missing_ok=True)
    # one chunk each: the bytes written must not depend on how the rows were sharded
    io.write_parquet(out / "samples.parquet", table.combine_chunks())
    io.write_parquet(out / "quarantine.parquet", quarantine.combine_chunks())
    metrics = _metrics(table, quarantine, n_in, meta)
    io.write_json(out / "metrics.json", metrics)
    return metrics


def _reasons_and_examples(quarantine: pa.Table) -> tuple[Counter[str], dict[str, str]]:
    """Quarantine counts by reason, and the first row of each reason in words."""
    counts: Counter[str] = Counter()
    examples: dict[str, str] = {}
    cols = quarantine.select(["source", "source_key", "reason", "detail"]).to_pydict()
    for source, key, reason, detail in zip(*cols.values(), strict=True):
        counts[reason] += 1
        examples.setdefault(reason, f"{source}:{key}: {detail}")
    return counts, examples


def _merge_side_table(
    shard_dir: Path, shards: list[Shard], kind: str, schema: pa.Schema, dest: Path
) -> None:
    """The shards' ``<stem>.<kind>.parquet`` (thumbnails, transcripts) as one table sorted by
    sample_id at ``dest`` (empty when no shard has one: an image data set)."""
    parts = [
        io.read_parquet(p)
        for s in shards
        if (p := shard_dir / f"{s.stem}.{kind}.parquet").is_file()
    ]
    table = pa.concat_tables([schema.empty_table(), *parts]).cast(schema)
    table = table.take(pc.sort_indices(table, [("sample_id", "ascending")]))
    io.write_parquet(dest, table.combine_chunks())


def _write_features(
    shards: list[Shard],
    sizes: list[int],
    position: np.ndarray,
    params: PreprocessParams,
    out: Path,
) -> dict[str, Any]:
    """``features/{image,text}.npy`` written through memory maps, one shard at a time (row
    ``position[j]`` holds concatenated row ``j``): memory stays one shard's embeddings."""
    feat = out / "features"
    feat.mkdir(parents=True, exist_ok=True)
    n_kept = len(position)
    if not params.embeddings:
        for name in ("image.npy", "text.npy"):
            (feat / name).unlink(missing_ok=True)
        meta: dict[str, Any] = {"embeddings": False, "rows": 0}
        io.write_json(feat / "meta.json", meta)
        return meta
    shard_dir = out / "shards"
    records = [json.loads(record_path(shard_dir, s, "embed").read_text()) for s in shards]
    dims = {}
    for kind in ("image", "text"):
        dim = records[0][f"{kind}_dim"] if records else 0
        dims[kind] = dim
        with io.atomic_npy_memmap(feat / f"{kind}.npy", np.float32, (n_kept, dim)) as dest:
            offset = 0
            for s, size in zip(shards, sizes, strict=True):
                part = io.read_npy(shard_dir / f"{s.stem}.{kind}.npy", mmap_mode="r")
                if len(part) != size or (size and part.shape[1] != dim):
                    raise AssertionError(
                        f"{s.stem}.{kind}.npy holds {part.shape} for {size} samples of dim {dim}"
                    )
                dest[position[offset : offset + size]] = part
                offset += size
            if offset != n_kept:
                raise AssertionError(f"{kind} features have {offset} rows for {n_kept} samples")
    first = records[0] if records else {}
    media = first.get("media", "image")
    image: dict[str, Any] = {
        "encoder": first.get("image_encoder", params.image_encoder),
        "dim": int(dims["image"]),
        "input_size": params.encoder_size,
        "runtime": _runtime(records, "image"),
    }
    if media == "video":
        image["pooling"] = (
            f"mean of the keyframes' embeddings ({params.video.fps:g} per second, at most "
            f"{params.video.max_frames}), L2-renormalised"
        )
    elif media == "audio":
        image = {
            "encoder": first.get("image_encoder", params.audio.encoder),
            "dim": int(dims["image"]),
            "sample_rate": params.audio.sample_rate,
            "runtime": _runtime(records, "image"),
        }
    meta = {
        "embeddings": True,
        "rows": n_kept,
        # "image" is the media side whatever the media: the image, video or audio vectors
        "media": media,
        "image": image,
        "text": {
            "encoder": first.get("text_encoder", params.text_encoder),
            "dim": int(dims["text"]),
            "runtime": _runtime(records, "text"),
            "pooling": "mean of the sample's caption embeddings, L2-renormalised",
        },
        "dtype": "float32",
        "normalised": "L2",
    }
    if any("asr_model" in r for r in records):
        meta["transcripts"] = {
            "model": first.get("asr_model", params.asr.model),
            "file": "transcripts.parquet",
            "in_text": params.asr.as_caption,
        }
    io.write_json(feat / "meta.json", meta)
    return meta


def _runtime(records: list[dict[str, Any]], kind: str) -> str:
    """What embedded the ``kind`` side: ``onnxruntime``, ``torch``, or ``mixed`` when shards
    differ (a model that exported on one machine but not another)."""
    found = sorted({str(r.get(f"{kind}_runtime", "torch")) for r in records})
    return found[0] if len(found) == 1 else ("mixed" if found else "none")


def _metrics(
    table: pa.Table, quarantine: pa.Table, n_in: int, meta: dict[str, Any]
) -> dict[str, Any]:
    reasons = Counter(quarantine["reason"].to_pylist())
    formats = Counter(table["format"].to_pylist())
    media = Counter(table["media"].to_pylist())
    n_captions = pc.sum(pc.list_value_length(table["captions_norm"])).as_py() or 0
    return {
        "stage": STAGE,
        "in": n_in,
        "kept": table.num_rows,
        "quarantined": quarantine.num_rows,
        "quarantined_by_reason": dict(sorted(reasons.items())),
        "media": dict(sorted(media.items())),
        "media_seconds": round(float(pc.sum(table["duration_s"]).as_py() or 0.0), 3),
        "formats": dict(sorted(formats.items())),
        "animated": int(
            pc.sum(
                pc.and_(pc.equal(table["media"], "image"), pc.greater(table["n_frames"], 1))
            ).as_py()
            or 0
        ),
        "captions_kept": int(n_captions),
        "caption_chars_cut": int(pc.sum(table["caption_chars_cut"]).as_py() or 0),
        "embeddings": meta,
    }
