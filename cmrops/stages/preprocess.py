"""Preprocess stage: decode, hash, normalise and embed the collected samples.

``run(params, raw_dir, out_dir)`` reads ``<raw>/samples.parquet``
(:data:`~cmrops.schema.RAW_SAMPLES`) with the image bytes at ``<raw>/<image_path>`` and writes,
under ``out_dir``:

* ``samples.parquet`` - :data:`~cmrops.schema.INTERIM_SAMPLES`, one row per kept sample,
  sorted by ``sample_id``;
* ``features/image.npy``, ``features/text.npy`` - float32, L2-normalised, row ``i`` belongs to the
  sample whose ``feature_row`` is ``i``. The text row of a sample is the mean of the embeddings
  of its normalised captions, renormalised. ``features/meta.json`` names the encoders and dims.
  With ``embeddings: false`` only ``meta.json`` is written and ``feature_row`` is -1;
* ``quarantine.parquet`` - :data:`~cmrops.schema.QUARANTINE`, ``stage="preprocess"``, one row per
  dropped input: an image reason of :data:`cmrops.imaging.REASONS`, ``empty_captions`` (no caption
  survives normalisation), ``missing_image`` / ``path_escape`` / ``image_hash_mismatch`` (the store
  does not hold the bytes the row names), ``duplicate_sample_id`` (the second row of an id);
* ``metrics.json`` - counts (in, kept, quarantined by reason, formats, captions), deterministic;
* ``throughput.json`` - wall-clock timings of this run (the only output that differs between runs).

**Shards and resume.** The raw rows, sorted by ``sample_id``, are cut into shards of
``shard_size``. Worker processes (``spawn``) decode, hash and normalise one shard each and write
``shards/shard-NNNNN.{samples,quarantine}.parquet`` atomically; the main process then records
``shard-NNNNN.json`` holding the shard's input hash (its rows plus every parameter that shapes the
result) and the files' SHA-256. Embeddings are computed batched in the main process (GPU when
there is one) per shard and recorded the same way (``shard-NNNNN.emb.json``). A rerun - after a
kill, or with nothing changed - redoes only shards whose record is missing or stale, then merges
all shards in order, so its outputs are byte-identical to an uninterrupted run.

After every run: inputs = kept + quarantined (asserted).
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import hashlib
import json
import logging
import multiprocessing
import os
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cmrops import io
from cmrops.imaging import DecodeLimits, ImageRejected, decode_image, image_hashes
from cmrops.imaging import resize_for_encoder as _resize
from cmrops.schema import INTERIM_SAMPLES, QUARANTINE, RAW_SAMPLES
from cmrops.text import TokenCounter, normalize_captions, simhash64

log = logging.getLogger(__name__)

STAGE = "preprocess"
#: Bump when the per-sample computation changes, so recorded shards are redone.
SHARD_VERSION = 1
_RAW_COLUMNS = RAW_SAMPLES.names


@dataclass(frozen=True)
class PreprocessParams:
    """The ``preprocess:`` section of ``params.yaml``."""

    n_workers: int = 2  # decode/hash/normalise worker processes
    shard_size: int = 512  # raw rows per shard (the unit of parallelism and of resume)
    max_pixels: int = 50_000_000  # width x height cap (decompression bombs)
    min_side: int = 16  # smallest allowed width or height
    max_aspect: float = 10.0  # largest allowed long side / short side
    encoder_size: int = 224  # side of the square copy handed to the image encoder
    caption_max_chars: int = 1000  # normalised captions are cut to this many characters
    tokenizer: str = "sentence-transformers/all-MiniLM-L6-v2"  # or "words", a dir, an HF id
    image_encoder: str = "efficientnet-lite0"  # or a transformers dir / HF id (CLIP, SigLIP...)
    text_encoder: str = "sentence-transformers/all-MiniLM-L6-v2"  # or a dir / HF id
    batch_size: int = 64  # embedding batch size
    device: Literal["auto", "cpu", "cuda"] = "auto"
    embeddings: bool = True  # compute features/{image,text}.npy

    def __post_init__(self) -> None:
        for name in ("n_workers", "shard_size", "encoder_size", "caption_max_chars", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        DecodeLimits(self.max_pixels, self.min_side, self.max_aspect)  # validates the limits

    @property
    def limits(self) -> DecodeLimits:
        return DecodeLimits(self.max_pixels, self.min_side, self.max_aspect)

    def shard_fingerprint(self) -> dict[str, Any]:
        """Everything that shapes a shard's decoded output (not the embeddings)."""
        return {
            "version": SHARD_VERSION,
            "limits": dataclasses.asdict(self.limits),
            "caption_max_chars": self.caption_max_chars,
            "tokenizer": self.tokenizer,
        }


# --------------------------------------------------------------------------- entry points


def cli_main(args: Any) -> int:
    """``cmrops preprocess --params P --raw R --out O``."""
    from cmrops.params import load_section

    params = load_section(args.params, STAGE, PreprocessParams)
    metrics = run(params, args.raw, args.out)
    q = metrics["quarantined"]
    print(
        f"preprocess: {metrics['in']} in, {metrics['kept']} kept, {q} quarantined "
        f"{dict(sorted(metrics['quarantined_by_reason'].items()))} -> {args.out}"
    )
    return 0


def run(
    params: PreprocessParams, raw_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str]
) -> dict[str, Any]:
    """Preprocess ``raw_dir`` into ``out_dir`` (see module docstring); returns the metrics."""
    t_start = time.perf_counter()
    raw, out = Path(raw_dir), Path(out_dir)
    rows, stage_quarantine = _load_raw(raw)
    shards = _plan(rows, params)
    shard_dir = out / "shards"
    shard_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale(shard_dir, len(shards))

    timing = _execute(shards, params, raw, shard_dir)
    for leftover in shard_dir.glob("shard-*.pixels.npy"):  # all embedded (or not wanted) now
        leftover.unlink()
    metrics = _merge(shards, stage_quarantine, params, out, len(rows) + len(stage_quarantine))
    timing["seconds_total"] = round(time.perf_counter() - t_start, 3)
    io.write_json(out / "throughput.json", timing)
    return metrics


# Fan-out hooks for schedulers (Airflow dynamic task mapping): plan_shards -> run_shards on
# each index (any order, any worker sharing the out folder) -> run, which then finds every shard
# recorded and only merges. The bytes are those of a single `run`.


def plan_shards(
    params: PreprocessParams, raw_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str]
) -> list[int]:
    """The shard indices of this input (stale shard files of another plan are removed)."""
    rows, _ = _load_raw(Path(raw_dir))
    shards = _plan(rows, params)
    shard_dir = Path(out_dir) / "shards"
    shard_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale(shard_dir, len(shards))
    return [s.index for s in shards]


def run_shards(
    params: PreprocessParams,
    raw_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    indices: Sequence[int],
) -> dict[str, Any]:
    """Decode and embed the shards ``indices`` (those not recorded already); returns timings."""
    raw = Path(raw_dir)
    rows, _ = _load_raw(raw)
    shards = _plan(rows, params)
    bad = [i for i in indices if not 0 <= i < len(shards)]
    if bad:
        raise ValueError(f"shard index(es) {bad} out of range: the plan has {len(shards)} shards")
    shard_dir = Path(out_dir) / "shards"
    shard_dir.mkdir(parents=True, exist_ok=True)
    return _execute([shards[i] for i in sorted(set(indices))], params, raw, shard_dir)


# --------------------------------------------------------------------------- input and plan


def _load_raw(raw: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Raw rows sorted by (sample_id, source, source_key), first of each id kept; the others
    become ``duplicate_sample_id`` quarantine rows."""
    path = raw / "samples.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found - run `cmrops collect` first (or pass --raw)")
    table = io.read_parquet(path)
    missing = [c for c in _RAW_COLUMNS if c not in table.column_names]
    if missing:
        raise ValueError(
            f"{path}: missing column(s) {', '.join(missing)}; expected the RAW_SAMPLES contract "
            "of cmrops/schema.py (re-run `cmrops collect`)"
        )
    table = table.select(_RAW_COLUMNS).cast(RAW_SAMPLES)
    nulls = [c for c in ("sample_id", "image_path") if table[c].null_count]
    if nulls:
        raise ValueError(
            f"{path}: column(s) {', '.join(nulls)} hold nulls; re-run `cmrops collect`"
        )
    order = pc.sort_indices(
        table, [("sample_id", "ascending"), ("source", "ascending"), ("source_key", "ascending")]
    )
    kept: list[dict[str, Any]] = []
    dupes: list[dict[str, Any]] = []
    for row in table.take(order).to_pylist():
        if kept and kept[-1]["sample_id"] == row["sample_id"]:
            first = kept[-1]
            dupes.append(
                _qrow(
                    row,
                    "duplicate_sample_id",
                    f"sample_id also used by {first['source']}:{first['source_key']}",
                    {"kept_source": first["source"], "kept_source_key": first["source_key"]},
                )
            )
        else:
            kept.append(row)
    return kept, dupes


@dataclass(frozen=True)
class Shard:
    index: int
    rows: list[dict[str, Any]]
    input_hash: str

    @property
    def stem(self) -> str:
        return f"shard-{self.index:05d}"


def _plan(rows: list[dict[str, Any]], params: PreprocessParams) -> list[Shard]:
    fingerprint = json.dumps(params.shard_fingerprint(), sort_keys=True)
    shards = []
    for i, lo in enumerate(range(0, len(rows), params.shard_size)):
        chunk = rows[lo : lo + params.shard_size]
        h = hashlib.sha256(fingerprint.encode())
        for row in chunk:
            h.update(json.dumps(row, sort_keys=True, ensure_ascii=False).encode("utf-8"))
            h.update(b"\n")
        shards.append(Shard(i, chunk, h.hexdigest()))
    return shards


def _remove_stale(shard_dir: Path, n_shards: int) -> None:
    """Delete files of shards beyond the plan (a smaller input or another shard_size)."""
    for path in shard_dir.iterdir():
        name = path.name
        if name.startswith(".") and name.endswith(".tmp"):
            path.unlink()  # a temporary file of a killed write
        elif name.startswith("shard-"):
            try:
                index = int(name[6:11])
            except ValueError:
                continue
            if index >= n_shards:
                path.unlink()


# --------------------------------------------------------------------------- records


def _record_path(shard_dir: Path, shard: Shard, kind: str) -> Path:
    return shard_dir / f"{shard.stem}.{kind}.json"


def _is_recorded(shard_dir: Path, shard: Shard, kind: str, key: str) -> bool:
    """The record exists, names ``key`` and every file it lists is there with its SHA-256."""
    path = _record_path(shard_dir, shard, kind)
    try:
        record = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return False
    if record.get("key") != key:
        return False
    for name, digest in record.get("files", {}).items():
        f = shard_dir / name
        if not f.is_file() or io.sha256_file(f) != digest:
            return False
    return True


def _record(
    shard_dir: Path, shard: Shard, kind: str, key: str, files: Sequence[str], **facts: Any
) -> None:
    body = {"key": key, "files": {n: io.sha256_file(shard_dir / n) for n in files}, **facts}
    io.write_json(_record_path(shard_dir, shard, kind), body)


def _embed_key(shard: Shard, params: PreprocessParams, device: str) -> str:
    spec = {
        "shard": shard.input_hash,
        "image_encoder": params.image_encoder,
        "text_encoder": params.text_encoder,
        "encoder_size": params.encoder_size,
        "batch_size": params.batch_size,
        "device": device,
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


# --------------------------------------------------------------------------- execution


def _execute(
    shards: list[Shard], params: PreprocessParams, raw: Path, shard_dir: Path
) -> dict[str, Any]:
    """Run the unrecorded shards in worker processes and embed each as it finishes."""
    device = _device(params) if params.embeddings else "none"
    keys = {s.index: _embed_key(s, params, device) for s in shards}
    todo_decode = [s for s in shards if not _is_recorded(shard_dir, s, "decode", s.input_hash)]
    todo_embed = [
        s
        for s in shards
        if params.embeddings and not _is_recorded(shard_dir, s, "embed", keys[s.index])
    ]
    redo = {s.index for s in todo_decode}
    # an embedding to redo needs the encoder-size pixels, which only a worker writes
    for s in todo_embed:
        if s.index not in redo and not _pixels_ready(shard_dir, s, params.encoder_size):
            todo_decode.append(s)
            redo.add(s.index)
    todo_decode.sort(key=lambda s: s.index)
    embed_set = {s.index for s in todo_embed}
    log.info(
        "preprocess: %d shards, %d to decode, %d to embed",
        len(shards),
        len(todo_decode),
        len(embed_set),
    )
    timing: dict[str, Any] = {
        "shards": len(shards),
        "shards_decoded": len(todo_decode),
        "shards_embedded": len(embed_set),
        "n_workers": params.n_workers,
        "device": device,
        "images_decoded": 0,
        "decode_seconds": 0.0,
        "decode_cpu_seconds": 0.0,
        "images_embedded": 0,
        "texts_embedded": 0,
        "image_embed_seconds": 0.0,
        "text_embed_seconds": 0.0,
    }
    embedder = _Embedder(params, device) if embed_set else None
    ready = [s for s in shards if s.index in embed_set and s.index not in redo]
    t0 = time.perf_counter()
    workers = min(params.n_workers, len(todo_decode))

    def decoded(shard: Shard, summary: dict[str, Any]) -> None:
        _record(
            shard_dir,
            shard,
            "decode",
            shard.input_hash,
            [f"{shard.stem}.samples.parquet", f"{shard.stem}.quarantine.parquet"],
            rows=len(shard.rows),
            kept=summary["kept"],
        )
        timing["images_decoded"] += summary["images"]
        timing["decode_cpu_seconds"] += summary["cpu_seconds"]
        if shard.index in embed_set:
            _embed_shard(embedder, shard, shard_dir, keys[shard.index], timing)

    if len(todo_decode) == 1 and not ready:
        # one shard and nothing to embed meanwhile (a mapped Airflow task): decode it here. A
        # worker process would add nothing but its start-up, and inside Airflow it cannot always
        # start: an Airflow 3 task process's spawned children re-import its ``airflow``
        # __main__ with the metadata DB blocked, and Celery's prefork pool runs tasks in
        # daemonic processes, which may not have children.
        (s,) = todo_decode
        args = (str(raw), str(shard_dir), params, s.index in embed_set)
        decoded(s, _process_shard(s.index, s.rows, *args))
    elif workers:
        ctx = multiprocessing.get_context("spawn")
        with cf.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
            futures = {
                pool.submit(
                    _process_shard,
                    s.index,
                    s.rows,
                    str(raw),
                    str(shard_dir),
                    params,
                    s.index in embed_set,
                ): s
                for s in todo_decode
            }
            for s in ready:  # embed what is decoded already while the workers run
                _embed_shard(embedder, s, shard_dir, keys[s.index], timing)
            for fut in cf.as_completed(futures):
                decoded(futures[fut], fut.result())
    else:
        for s in ready:
            _embed_shard(embedder, s, shard_dir, keys[s.index], timing)
    timing["decode_seconds"] = round(time.perf_counter() - t0, 3)
    if timing["decode_cpu_seconds"]:
        timing["images_per_s_per_worker"] = round(
            timing["images_decoded"] / timing["decode_cpu_seconds"], 1
        )
    for key in ("decode_cpu_seconds", "image_embed_seconds", "text_embed_seconds"):
        timing[key] = round(timing[key], 3)
    for kind, secs in (("images", "image_embed_seconds"), ("texts", "text_embed_seconds")):
        if timing[secs]:
            timing[f"{kind}_embedded_per_s"] = round(timing[f"{kind}_embedded"] / timing[secs], 1)
    return timing


def _pixels_ready(shard_dir: Path, shard: Shard, size: int) -> bool:
    """A worker left this shard's encoder pixels, at the size asked for now."""
    path = shard_dir / f"{shard.stem}.pixels.npy"
    try:
        with path.open("rb") as fh:
            major, _ = np.lib.format.read_magic(fh)
            read_header = (
                np.lib.format.read_array_header_1_0
                if major == 1
                else np.lib.format.read_array_header_2_0
            )
            shape, _, _ = read_header(fh)  # the header only, not the pixels
    except (FileNotFoundError, ValueError, OSError):
        return False
    return len(shape) == 4 and shape[1:] == (size, size, 3)


def _device(params: PreprocessParams) -> str:
    from cmrops.encoders import resolve_device

    return resolve_device(params.device)


class _Embedder:
    """Both encoders, loaded on first use in the main process."""

    def __init__(self, params: PreprocessParams, device: str) -> None:
        self.params = params
        self.device = device
        self._image: Any = None
        self._text: Any = None

    @property
    def image(self) -> Any:
        if self._image is None:
            from cmrops.encoders import load_image_encoder

            self._image = load_image_encoder(self.params.image_encoder, self.device)
        return self._image

    @property
    def text(self) -> Any:
        if self._text is None:
            from cmrops.encoders import load_text_encoder

            self._text = load_text_encoder(self.params.text_encoder, self.device)
        return self._text


def _embed_shard(
    embedder: Any, shard: Shard, shard_dir: Path, key: str, timing: dict[str, Any]
) -> None:
    params: PreprocessParams = embedder.params
    progress = sys.stderr.isatty()
    pixels_path = shard_dir / f"{shard.stem}.pixels.npy"
    pixels = io.read_npy(pixels_path)
    table = io.read_parquet(shard_dir / f"{shard.stem}.samples.parquet")
    if len(pixels) != table.num_rows:
        raise RuntimeError(f"{pixels_path}: {len(pixels)} images for {table.num_rows} kept rows")

    image_encoder, text_encoder = embedder.image, embedder.text  # loaded outside the timings
    t0 = time.perf_counter()
    image = image_encoder.encode(pixels, params.batch_size, progress)
    t1 = time.perf_counter()
    captions = table["captions_norm"].to_pylist()
    flat = [c for caps in captions for c in caps]
    per_caption = text_encoder.encode(flat, params.batch_size, progress)
    owner = np.repeat(np.arange(len(captions)), [len(c) for c in captions])
    text = np.zeros((len(captions), per_caption.shape[1]), np.float64)
    np.add.at(text, owner, per_caption.astype(np.float64))
    text /= np.maximum(np.linalg.norm(text, axis=1, keepdims=True), 1e-12)
    t2 = time.perf_counter()

    io.write_npy(shard_dir / f"{shard.stem}.image.npy", image.astype(np.float32))
    io.write_npy(shard_dir / f"{shard.stem}.text.npy", text.astype(np.float32))
    _record(
        shard_dir,
        shard,
        "embed",
        key,
        [f"{shard.stem}.image.npy", f"{shard.stem}.text.npy"],
        image_encoder=image_encoder.name,
        image_dim=image_encoder.dim,
        text_encoder=text_encoder.name,
        text_dim=text_encoder.dim,
    )
    pixels_path.unlink()
    timing["images_embedded"] += len(pixels)
    timing["texts_embedded"] += len(flat)
    timing["image_embed_seconds"] += t1 - t0
    timing["text_embed_seconds"] += t2 - t1


# --------------------------------------------------------------------------- worker


@cache
def _token_counter(spec: str) -> TokenCounter:
    return TokenCounter.from_spec(spec)


def _qrow(
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
        raise _Reject("path_escape", f"image path {rel!r} leaves the raw folder", {})
    try:
        data = path.read_bytes()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as e:
        raise _Reject("missing_image", f"image file {rel} is not in the store", {}) from e
    digest = hashlib.sha256(data).hexdigest()
    if row.get("image_sha256") and digest != row["image_sha256"]:
        raise _Reject(
            "image_hash_mismatch",
            f"{rel} does not hash to image_sha256",
            {"expected": row["image_sha256"], "actual": digest},
        )
    return data


class _Reject(Exception):
    def __init__(self, reason: str, detail: str, evidence: dict[str, Any]) -> None:
        super().__init__(detail)
        self.reason, self.detail, self.evidence = reason, detail, evidence


def process_sample(
    row: dict[str, Any], raw: Path, params: PreprocessParams, want_pixels: bool
) -> tuple[dict[str, Any], np.ndarray | None]:
    """Decode, check, hash and normalise one raw row.

    Returns ``(measured columns, encoder pixels or None)``; raises ``_Reject`` / ``ImageRejected``
    for a row to quarantine. Token counts are filled in per shard (batched).
    """
    decoded = decode_image(_read_image(raw, row), params.limits)
    captions, cut = normalize_captions(row.get("captions") or [], params.caption_max_chars)
    if not captions:
        n = len(row.get("captions") or [])
        raise _Reject(
            "empty_captions",
            f"none of the {n} caption(s) is left after normalisation",
            {"captions_in": n},
        )
    phash, dhash = image_hashes(decoded.image)
    measured = {
        "width": decoded.width,
        "height": decoded.height,
        "format": decoded.format,
        "n_frames": decoded.n_frames,
        "phash": phash,
        "dhash": dhash,
        "caption_simhash": simhash64(captions),
        "captions_norm": captions,
        "caption_chars_cut": cut,
        "token_counts": None,
    }
    pixels = _resize(decoded.image, params.encoder_size) if want_pixels else None
    return measured, pixels


def _process_shard(
    index: int,
    rows: list[dict[str, Any]],
    raw_dir: str,
    shard_dir: str,
    params: PreprocessParams,
    want_pixels: bool,
) -> dict[str, Any]:
    """Worker: process one shard and write its parquet files (and pixels) atomically."""
    t0 = time.process_time()
    raw, out = Path(raw_dir), Path(shard_dir)
    stem = f"shard-{index:05d}"
    kept: list[dict[str, Any]] = []
    quarantine: list[dict[str, Any]] = []
    pixels: list[np.ndarray] = []
    for row in rows:
        try:
            measured, px = process_sample(row, raw, params, want_pixels)
        except ImageRejected as e:
            evidence = {"image_path": row["image_path"], "image_bytes": row.get("image_bytes")}
            quarantine.append(_qrow(row, e.reason, e.detail, {**evidence, **e.evidence}))
            continue
        except _Reject as e:
            quarantine.append(
                _qrow(row, e.reason, e.detail, {"image_path": row["image_path"], **e.evidence})
            )
            continue
        kept.append({**row, **measured})
        if px is not None:
            pixels.append(px)
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
    if want_pixels:
        size = params.encoder_size
        stack = np.stack(pixels) if pixels else np.zeros((0, size, size, 3), np.uint8)
        io.write_npy(out / f"{stem}.pixels.npy", stack)
    return {"kept": len(kept), "images": len(rows), "cpu_seconds": time.process_time() - t0}


# --------------------------------------------------------------------------- merge


def _merge(
    shards: list[Shard],
    stage_quarantine: list[dict[str, Any]],
    params: PreprocessParams,
    out: Path,
    n_in: int,
) -> dict[str, Any]:
    shard_dir = out / "shards"
    samples = [io.read_parquet(shard_dir / f"{s.stem}.samples.parquet") for s in shards]
    table = pa.concat_tables(samples) if samples else INTERIM_SAMPLES.empty_table()
    table = table.cast(INTERIM_SAMPLES)
    ids = table["sample_id"].to_pylist()
    if ids != sorted(ids) or len(set(ids)) != len(ids):
        raise AssertionError("merged samples are not sorted by unique sample_id")
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
    meta = _write_features(shards, params, out, n_kept)
    # one chunk each: the bytes written must not depend on how the rows were sharded
    io.write_parquet(out / "samples.parquet", table.combine_chunks())
    io.write_parquet(out / "quarantine.parquet", quarantine.combine_chunks())
    metrics = _metrics(table, quarantine, n_in, meta)
    io.write_json(out / "metrics.json", metrics)
    return metrics


def _write_features(
    shards: list[Shard], params: PreprocessParams, out: Path, n_kept: int
) -> dict[str, Any]:
    feat = out / "features"
    feat.mkdir(parents=True, exist_ok=True)
    if not params.embeddings:
        for name in ("image.npy", "text.npy"):
            (feat / name).unlink(missing_ok=True)
        meta: dict[str, Any] = {"embeddings": False, "rows": 0}
        io.write_json(feat / "meta.json", meta)
        return meta
    shard_dir = out / "shards"
    records = [json.loads(_record_path(shard_dir, s, "embed").read_text()) for s in shards]
    arrays = {}
    for kind in ("image", "text"):
        parts = [io.read_npy(shard_dir / f"{s.stem}.{kind}.npy") for s in shards]
        dim = records[0][f"{kind}_dim"] if records else 0
        arrays[kind] = np.concatenate(parts) if parts else np.zeros((0, dim), np.float32)
        if len(arrays[kind]) != n_kept:
            raise AssertionError(
                f"{kind} features have {len(arrays[kind])} rows for {n_kept} samples"
            )
    for kind, arr in arrays.items():
        io.write_npy(feat / f"{kind}.npy", arr.astype(np.float32, copy=False))
    first = records[0] if records else {}
    meta = {
        "embeddings": True,
        "rows": n_kept,
        "image": {
            "encoder": first.get("image_encoder", params.image_encoder),
            "dim": int(arrays["image"].shape[1]),
            "input_size": params.encoder_size,
        },
        "text": {
            "encoder": first.get("text_encoder", params.text_encoder),
            "dim": int(arrays["text"].shape[1]),
            "pooling": "mean of the sample's caption embeddings, L2-renormalised",
        },
        "dtype": "float32",
        "normalised": "L2",
    }
    io.write_json(feat / "meta.json", meta)
    return meta


def _metrics(
    table: pa.Table, quarantine: pa.Table, n_in: int, meta: dict[str, Any]
) -> dict[str, Any]:
    reasons = Counter(quarantine["reason"].to_pylist())
    formats = Counter(table["format"].to_pylist())
    n_captions = pc.sum(pc.list_value_length(table["captions_norm"])).as_py() or 0
    return {
        "stage": STAGE,
        "in": n_in,
        "kept": table.num_rows,
        "quarantined": quarantine.num_rows,
        "quarantined_by_reason": dict(sorted(reasons.items())),
        "formats": dict(sorted(formats.items())),
        "animated": int(pc.sum(pc.greater(table["n_frames"], 1)).as_py() or 0),
        "captions_kept": int(n_captions),
        "caption_chars_cut": int(pc.sum(table["caption_chars_cut"]).as_py() or 0),
        "embeddings": meta,
    }
