"""One raw row decoded, checked, hashed and normalised - an image, a video or an audio clip - and
the decode worker that does a whole shard (:func:`process_shard`, an engine task).
"""

from __future__ import annotations

import hashlib
import json
import time
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from cmrops import io
from cmrops.imaging import ImageRejected, decode_image, image_hashes
from cmrops.imaging import resize_for_encoder as _resize
from cmrops.media.errors import MediaRejected
from cmrops.media.sample import Measured, measure_audio, measure_video
from cmrops.preprocessing import STAGE
from cmrops.schema import INTERIM_SAMPLES, QUARANTINE
from cmrops.text import TokenCounter, normalize_captions, simhash64

if TYPE_CHECKING:
    from cmrops.stages.preprocess import PreprocessParams


def decode_job(job: tuple[Any, ...]) -> dict[str, Any]:
    """An engine task: :func:`process_shard` on one shard (its rows arrive as an Arrow table)."""
    index, table, *rest = job
    return process_shard(index, table.to_pylist(), *rest)


@cache
def _token_counter(spec: str) -> TokenCounter:
    return TokenCounter.from_spec(spec)


def quarantine_row(
    row: dict[str, Any], reason: str, detail: str, evidence: dict[str, Any]
) -> dict[str, Any]:
    return {
        "sample_id": row.get("sample_id"),
        "stage": STAGE,
        "source": row.get("source"),
        "source_key": row.get("source_key"),
        "reason": reason,
        "detail": detail,
        "evidence": json.dumps(evidence, sort_keys=True, ensure_ascii=False),
    }


def _read_image(raw: Path, row: dict[str, Any]) -> bytes:
    """The bytes the row names, checked to lie inside ``raw`` and to match ``image_sha256``."""
    rel = row["image_path"]
    root = raw.resolve()
    path = (root / rel).resolve()
    if not path.is_relative_to(root):
        raise Reject("path_escape", f"image path {rel!r} leaves the raw folder", {})
    try:
        data = path.read_bytes()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as e:
        raise Reject("missing_image", f"image file {rel} is not in the store", {}) from e
    digest = hashlib.sha256(data).hexdigest()
    if row.get("image_sha256") and digest != row["image_sha256"]:
        raise Reject(
            "image_hash_mismatch",
            f"{rel} does not hash to image_sha256",
            {"expected": row["image_sha256"], "actual": digest},
        )
    return data


class Reject(Exception):
    def __init__(self, reason: str, detail: str, evidence: dict[str, Any]) -> None:
        super().__init__(detail)
        self.reason, self.detail, self.evidence = reason, detail, evidence


def process_sample(
    row: dict[str, Any], raw: Path, params: PreprocessParams, want_pixels: bool
) -> tuple[dict[str, Any], Measured]:
    """Decode, check, hash and normalise one raw row (an image, a video or an audio clip).

    Returns ``(measured columns, what the encoders and the dashboard need)``; raises
    ``Reject`` / ``ImageRejected`` / ``MediaRejected`` for a row to quarantine. Token counts
    are filled in per shard (batched).
    """
    data = _read_image(raw, row)
    media = row.get("media") or "image"
    if media == "video":
        decoded = measure_video(data, params.video, params.encoder_size, want_pixels)
    elif media == "audio":
        decoded = measure_audio(data, params.audio, want_pixels)
    else:
        image = decode_image(data, params.limits)
        phash, dhash = image_hashes(image.image)
        decoded = Measured(
            {
                "width": image.width,
                "height": image.height,
                "format": image.format,
                "n_frames": image.n_frames,
                "phash": phash,
                "dhash": dhash,
                "duration_s": None,
                "media_info": None,
            },
            pixels=_resize(image.image, params.encoder_size)[None] if want_pixels else None,
        )
    captions, cut = normalize_captions(row.get("captions") or [], params.caption_max_chars)
    if not captions:
        n = len(row.get("captions") or [])
        raise Reject(
            "empty_captions",
            f"none of the {n} caption(s) is left after normalisation",
            {"captions_in": n},
        )
    measured = {
        **decoded.columns,
        "caption_simhash": simhash64(captions),
        "captions_norm": captions,
        "caption_chars_cut": cut,
        "token_counts": None,
    }
    return measured, decoded


THUMBS = pa.schema([("sample_id", pa.string()), ("jpeg", pa.binary())])


def process_shard(
    index: int,
    rows: list[dict[str, Any]],
    raw_dir: str,
    shard_dir: str,
    params: PreprocessParams,
    want_pixels: bool,
) -> dict[str, Any]:
    """Worker: process one shard and write its parquet files (and encoder inputs) atomically.

    Encoder inputs: ``pixels.npy`` (one image per row; a video's keyframes, ``counts.npy`` of
    them per row) or ``waves.npy`` (audio: the clips end to end, ``counts.npy`` samples per row).
    Videos also leave ``thumbs.parquet`` (a keyframe strip per sample)."""
    t0 = time.process_time()
    raw, out = Path(raw_dir), Path(shard_dir)
    stem = f"shard-{index:05d}"
    kept: list[dict[str, Any]] = []
    quarantine: list[dict[str, Any]] = []
    inputs: list[np.ndarray] = []
    thumbs: list[dict[str, Any]] = []
    media = (rows[0].get("media") if rows else None) or "image"
    for row in rows:
        try:
            measured, decoded = process_sample(row, raw, params, want_pixels)
        except (ImageRejected, MediaRejected) as e:
            evidence = {"image_path": row["image_path"], "image_bytes": row.get("image_bytes")}
            quarantine.append(quarantine_row(row, e.reason, e.detail, {**evidence, **e.evidence}))
            continue
        except Reject as e:
            quarantine.append(
                quarantine_row(
                    row, e.reason, e.detail, {"image_path": row["image_path"], **e.evidence}
                )
            )
            continue
        kept.append({**row, **measured})
        if want_pixels:
            x = decoded.wave if media == "audio" else decoded.pixels
            assert x is not None
            inputs.append(x)
        if decoded.thumbnail is not None:
            thumbs.append({"sample_id": row["sample_id"], "jpeg": decoded.thumbnail})
    counter = _token_counter(params.tokenizer)
    flat = counter([c for r in kept for c in r["captions_norm"]])
    pos = 0
    for r in kept:
        n = len(r["captions_norm"])
        r["token_counts"] = flat[pos : pos + n]
        pos += n
        r["feature_row"] = -1
    io.write_parquet(
        out / f"{stem}.samples.parquet", pa.Table.from_pylist(kept, schema=INTERIM_SAMPLES)
    )
    io.write_parquet(
        out / f"{stem}.quarantine.parquet", pa.Table.from_pylist(quarantine, schema=QUARANTINE)
    )
    if media == "video":
        io.write_parquet(out / f"{stem}.thumbs.parquet", pa.Table.from_pylist(thumbs, THUMBS))
    if want_pixels:
        counts = np.array([len(x) for x in inputs], np.int64)
        if media == "audio":
            waves = np.concatenate(inputs) if inputs else np.zeros(0, np.float32)
            io.write_npy(out / f"{stem}.waves.npy", waves.astype(np.float32, copy=False))
        else:
            size = params.encoder_size
            empty = np.zeros((0, size, size, 3), np.uint8)
            io.write_npy(out / f"{stem}.pixels.npy", np.concatenate(inputs) if inputs else empty)
        io.write_npy(out / f"{stem}.counts.npy", counts)
    return {
        "kept": len(kept),
        "images": len(rows),
        "frames": int(sum(r["n_frames"] for r in kept)) if media == "video" else 0,
        "media_seconds": float(sum(r["duration_s"] or 0.0 for r in kept)),
        "cpu_seconds": time.process_time() - t0,
    }
