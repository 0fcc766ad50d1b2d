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
  dropped input: an image reason of :data:`cmrops.imaging.REASONS` (a video or audio one of
  :data:`cmrops.media.errors.REASONS`), ``empty_captions`` (no caption
  survives normalisation), ``missing_image`` / ``path_escape`` / ``image_hash_mismatch`` (the store
  does not hold the bytes the row names), ``duplicate_sample_id`` (the second row of an id);
* ``thumbs.parquet`` - ``sample_id``, ``jpeg``: a strip of each video's keyframes (the dashboard
  shows it; empty for images and audio);
* ``features/transcripts.parquet`` - ``sample_id``, ``transcript`` of each audio clip when
  ``asr.model`` is set (pooled into the text vector with ``asr.as_caption``);
* ``metrics.json`` - counts (in, kept, quarantined by reason, formats, captions), deterministic;
* ``throughput.json`` - wall-clock timings of this run (the only output that differs between runs).

**Shards and resume.** The raw rows, sorted by ``sample_id``, are cut into shards of
``shard_size``; ``shards/plan.parquet`` records which shard each sample is in. Worker processes
(``spawn``; Ray tasks with ``engine: ray``) decode, hash and normalise one shard each and write
``shards/shard-NNNNN.{samples,quarantine}.parquet`` atomically; the main process then records
``shard-NNNNN.json`` holding the shard's input hash (its rows plus every parameter that shapes the
result) and the files' SHA-256. Embeddings are computed batched per shard in the main process
(Ray actors with ``engine: ray``; a GPU when there is one) and recorded the same way
(``shard-NNNNN.emb.json``). A rerun - after a kill, or with nothing changed - redoes only shards
whose record is missing or stale, then merges all shards, so its outputs are byte-identical to an
uninterrupted run.

**Incremental.** A rerun on a raw table with added samples keeps every known sample in the shard
the plan gave it and appends the new samples as new shards, so only they are decoded and
embedded (a shard that lost samples is redone). The merge sorts by ``sample_id`` and streams each
shard's embeddings into place through memory-mapped ``.npy`` files, so memory holds the (image-
free) sample tables and one shard's embeddings, never all images or all features twice.

After every run: inputs = kept + quarantined (asserted).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cmrops import io
from cmrops.imaging import DecodeLimits, ImageRejected, decode_image, image_hashes
from cmrops.imaging import resize_for_encoder as _resize
from cmrops.media.errors import MediaRejected
from cmrops.media.sample import (
    AsrParams,
    AudioParams,
    Measured,
    VideoParams,
    measure_audio,
    measure_video,
)
from cmrops.schema import INTERIM_SAMPLES, QUARANTINE, RAW_SAMPLES
from cmrops.text import TokenCounter, normalize_captions, simhash64

log = logging.getLogger(__name__)

STAGE = "preprocess"
#: Bump when the per-sample computation changes, so recorded shards are redone.
SHARD_VERSION = 2
_RAW_COLUMNS = RAW_SAMPLES.names
#: Per-shard encoder inputs a decode worker leaves for the embedder (deleted once embedded).
_INPUT_FILES = ("pixels.npy", "waves.npy", "counts.npy")


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
    task_rows: int = 4096  # raw rows per Airflow mapped task (whole shards; scheduling only)
    video: VideoParams = field(default_factory=VideoParams)  # keyframes, caps (collect.media)
    audio: AudioParams = field(default_factory=AudioParams)  # decoding caps, audio encoder
    asr: AsrParams = field(default_factory=AsrParams)  # optional transcripts of audio clips

    def __post_init__(self) -> None:
        for name in (
            "n_workers", "shard_size", "encoder_size", "caption_max_chars", "batch_size",
            "task_rows",
        ):  # fmt: skip
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        DecodeLimits(self.max_pixels, self.min_side, self.max_aspect)  # validates the limits

    @property
    def limits(self) -> DecodeLimits:
        return DecodeLimits(self.max_pixels, self.min_side, self.max_aspect)

    def shard_fingerprint(self) -> dict[str, Any]:
        """Everything that shapes a shard's decoded output (not the embeddings)."""
        audio = dataclasses.asdict(self.audio)
        del audio["encoder"]  # shapes the embeddings only
        return {
            "version": SHARD_VERSION,
            "limits": dataclasses.asdict(self.limits),
            "caption_max_chars": self.caption_max_chars,
            "tokenizer": self.tokenizer,
            "video": dataclasses.asdict(self.video),
            "audio": audio,
        }


# --------------------------------------------------------------------------- entry points


def cli_main(args: Any) -> int:
    """``cmrops preprocess --params P --raw R --out O``."""
    from cmrops import engine
    from cmrops.params import load_section

    params = load_section(args.params, STAGE, PreprocessParams)
    with engine.session(load_section(args.params, engine.SECTION, engine.EngineParams)):
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
    table, stage_quarantine = _load_raw(raw)
    shard_dir = out / "shards"
    shards = _plan(table, params, shard_dir)
    shard_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale(shard_dir, len(shards))

    timing = _execute(shards, params, raw, shard_dir)
    for name in _INPUT_FILES:  # all embedded (or not wanted) now
        for leftover in shard_dir.glob(f"shard-*.{name}"):
            leftover.unlink()
    n_in = table.num_rows + len(stage_quarantine)
    del table
    metrics = _merge(shards, stage_quarantine, params, out, n_in)
    timing["seconds_total"] = round(time.perf_counter() - t_start, 3)
    io.write_json(out / "throughput.json", timing)
    return metrics


# Fan-out hooks for schedulers (Airflow dynamic task mapping): plan_shards -> run_shards on
# each group of indices (any order, any worker sharing the out folder) -> run, which then finds
# every shard recorded and only merges. The bytes are those of a single `run`.


def plan_shards(
    params: PreprocessParams, raw_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str]
) -> list[list[int]]:
    """The shard indices of this input in groups of about ``task_rows`` rows (whole shards): one
    group per mapped task, so a task is coarse (thousands of samples) while a shard stays the unit
    of resume. Stale shard files of another plan are removed."""
    table, _ = _load_raw(Path(raw_dir))
    shard_dir = Path(out_dir) / "shards"
    shards = _plan(table, params, shard_dir)
    shard_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale(shard_dir, len(shards))
    groups: list[list[int]] = []
    rows = 0
    for s in shards:
        if not groups or rows >= params.task_rows:
            groups.append([])
            rows = 0
        groups[-1].append(s.index)
        rows += s.num_rows
    return groups


def run_shards(
    params: PreprocessParams,
    raw_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    indices: Sequence[int],
) -> dict[str, Any]:
    """Decode and embed the shards ``indices`` (those not recorded already); returns timings."""
    raw = Path(raw_dir)
    table, _ = _load_raw(raw)
    shard_dir = Path(out_dir) / "shards"
    shards = _plan(table, params, shard_dir)
    bad = [i for i in indices if not 0 <= i < len(shards)]
    if bad:
        raise ValueError(f"shard index(es) {bad} out of range: the plan has {len(shards)} shards")
    shard_dir.mkdir(parents=True, exist_ok=True)
    return _execute([shards[i] for i in sorted(set(indices))], params, raw, shard_dir)


# --------------------------------------------------------------------------- input and plan


def _load_raw(raw: Path) -> tuple[pa.Table, list[dict[str, Any]]]:
    """Raw rows as one columnar table sorted by (sample_id, source, source_key), first of each id
    kept; the others become ``duplicate_sample_id`` quarantine rows. Only the metadata columns are
    held (image bytes stay in the store), as Arrow arrays, never as Python rows."""
    path = raw / "samples.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found - run `cmrops collect` first (or pass --raw)")
    table = io.read_parquet(path)
    if "media" not in table.column_names:  # written before video and audio: all images
        table = table.append_column("media", pa.array(["image"] * table.num_rows, pa.string()))
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
    table = table.set_column(
        table.schema.get_field_index("media"),
        RAW_SAMPLES.field("media"),
        pc.fill_null(table["media"], "image"),
    )
    kinds = pc.value_counts(table["media"]).to_pylist()
    if len(kinds) > 1:
        found = ", ".join(f"{k['counts']} {k['values']}" for k in kinds)
        raise ValueError(
            f"{path}: one media kind per data set, found {found}; collect each kind into its "
            "own pipeline (collect.media)"
        )
    order = pc.sort_indices(
        table, [("sample_id", "ascending"), ("source", "ascending"), ("source_key", "ascending")]
    )
    table = table.take(order).combine_chunks()
    ids = table["sample_id"]
    if table.num_rows < 2:
        return table, []
    same = pc.equal(ids.slice(1), ids.slice(0, table.num_rows - 1)).to_numpy(zero_copy_only=False)
    repeat = np.flatnonzero(same) + 1  # rows whose id the row before them holds too
    if not len(repeat):
        return table, []
    first_of = np.flatnonzero(np.concatenate([[True], ~same]))  # start of each id's run
    firsts = first_of[np.searchsorted(first_of, repeat, side="right") - 1]
    dupes: list[dict[str, Any]] = []
    for i, f in zip(repeat.tolist(), firsts.tolist(), strict=True):
        row, first = table.slice(i, 1).to_pylist()[0], table.slice(f, 1).to_pylist()[0]
        dupes.append(
            _qrow(
                row,
                "duplicate_sample_id",
                f"sample_id also used by {first['source']}:{first['source_key']}",
                {"kept_source": first["source"], "kept_source_key": first["source_key"]},
            )
        )
    keep = np.ones(table.num_rows, bool)
    keep[repeat] = False
    return table.filter(pa.array(keep)), dupes


class Shard:
    """One shard of the plan: its index and raw rows (RAW_SAMPLES, sorted by sample_id). The
    input hash (rows + decode parameters) is computed on first use, so a task that runs a few
    shards of a large plan hashes only those."""

    def __init__(self, index: int, table: pa.Table, fingerprint: str = "") -> None:
        self.index, self.table, self._fingerprint = index, table, fingerprint

    @property
    def stem(self) -> str:
        return f"shard-{self.index:05d}"

    @property
    def rows(self) -> list[dict[str, Any]]:
        """The shard's raw rows as dicts (materialised per call: one shard, not the table)."""
        return self.table.to_pylist()

    @property
    def num_rows(self) -> int:
        return self.table.num_rows

    @functools.cached_property
    def input_hash(self) -> str:
        h = hashlib.sha256(self._fingerprint.encode())
        for row in self.rows:
            h.update(json.dumps(row, sort_keys=True, ensure_ascii=False).encode("utf-8"))
            h.update(b"\n")
        return h.hexdigest()


#: The shard plan: which shard each sample belongs to (``sample_id``, ``shard``), with the
#: fingerprint of the planning parameters in the schema metadata.
PLAN_FILE = "plan.parquet"
_PLAN_SCHEMA = pa.schema([("sample_id", pa.string()), ("shard", pa.int32())])


def _plan_fingerprint(params: PreprocessParams) -> str:
    spec = {"shard_size": params.shard_size, **params.shard_fingerprint()}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def _read_plan(shard_dir: Path, fingerprint: str) -> pa.Table | None:
    """The recorded plan when it was made with these parameters; else None (plan afresh)."""
    path = shard_dir / PLAN_FILE
    try:
        table = io.read_parquet(path)
    except (FileNotFoundError, pa.ArrowInvalid, OSError):
        return None
    meta = table.schema.metadata or {}
    if meta.get(b"fingerprint") != fingerprint.encode() or table.schema.names != _PLAN_SCHEMA.names:
        return None
    return table.cast(_PLAN_SCHEMA)


def _plan(table: pa.Table, params: PreprocessParams, shard_dir: Path) -> list[Shard]:
    """Cut the raw rows into shards, **incrementally**: a sample the recorded plan
    (``shards/plan.parquet``) already places stays in its shard, so a rerun with added samples
    redoes only the new shards (appended after the last one, ``shard_size`` new samples each)
    and shards that lost samples. Without a plan (or after a change of ``shard_size`` or of the
    decode parameters), sorted rows are cut in order. Each shard's rows stay sorted by id."""
    fingerprint = _plan_fingerprint(params)
    n = table.num_rows
    previous = _read_plan(shard_dir, fingerprint)
    if previous is None or previous.num_rows == 0:
        assignment = np.arange(n, dtype=np.int64) // params.shard_size
    else:
        where = pc.index_in(table["sample_id"], value_set=previous["sample_id"])
        known = where.is_valid().to_numpy(zero_copy_only=False)
        assignment = np.full(n, -1, np.int64)
        prev_shard = previous["shard"].to_numpy()
        assignment[known] = prev_shard[where.drop_null().to_numpy()]
        fresh = np.flatnonzero(~known)
        start = int(prev_shard.max()) + 1
        assignment[fresh] = start + np.arange(len(fresh)) // params.shard_size
    n_shards = int(assignment.max()) + 1 if n else 0
    order = np.argsort(assignment, kind="stable")  # rows by shard, sorted by id within each
    bounds = np.searchsorted(assignment[order], np.arange(n_shards + 1))
    hash_fp = json.dumps(params.shard_fingerprint(), sort_keys=True)
    shards = [
        Shard(i, table.take(pa.array(order[bounds[i] : bounds[i + 1]])), hash_fp)
        for i in range(n_shards)
    ]
    plan = pa.table(
        {"sample_id": table["sample_id"], "shard": pa.array(assignment, pa.int32())},
        schema=_PLAN_SCHEMA,
    ).replace_schema_metadata({"fingerprint": fingerprint})
    if previous is None or not plan.equals(previous):
        shard_dir.mkdir(parents=True, exist_ok=True)
        io.write_parquet(shard_dir / PLAN_FILE, plan)
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
        "audio_encoder": params.audio.encoder,
        "asr": dataclasses.asdict(params.asr),
        "encoder_size": params.encoder_size,
        "batch_size": params.batch_size,
        "device": device,
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


# --------------------------------------------------------------------------- execution


def _execute(
    shards: list[Shard], params: PreprocessParams, raw: Path, shard_dir: Path
) -> dict[str, Any]:
    """Run the unrecorded shards on the current engine (:mod:`cmrops.engine`): decode tasks,
    encoder workers fed each shard as it is decoded; the records are written here, in this
    process, only for what finished."""
    from cmrops import engine as engines

    eng = engines.current()
    device = _engine_device(eng, params) if params.embeddings else "none"
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
        if s.index not in redo and not _inputs_ready(shard_dir, s, params.encoder_size):
            todo_decode.append(s)
            redo.add(s.index)
    todo_decode.sort(key=lambda s: s.index)
    embed_set = {s.index for s in todo_embed}
    log.info(
        "preprocess: %d shards, %d to decode, %d to embed (engine %s)",
        len(shards),
        len(todo_decode),
        len(embed_set),
        eng.kind,
    )
    timing: dict[str, Any] = {
        "engine": eng.kind,
        "shards": len(shards),
        "shards_decoded": len(todo_decode),
        "shards_embedded": len(embed_set),
        "n_workers": params.n_workers,
        "device": device,
        "images_decoded": 0,
        "frames_decoded": 0,
        "media_seconds_decoded": 0.0,
        "decode_seconds": 0.0,
        "decode_cpu_seconds": 0.0,
        "images_embedded": 0,
        "texts_embedded": 0,
        "image_embed_seconds": 0.0,
        "text_embed_seconds": 0.0,
    }
    by_index = {s.index: s for s in shards}
    embedders = _embedders(eng, params, device, len(embed_set)) if embed_set else None

    def embed(shard: Shard) -> None:
        assert embedders is not None
        embedders.submit(shard.index, "embed", str(shard_dir), shard.stem)

    def finish(results: Any) -> None:
        for index, result in results:
            _embed_shard(result, by_index[index], shard_dir, keys[index], timing)

    t0 = time.perf_counter()
    try:
        for s in shards:  # embed what is decoded already
            if s.index in embed_set and s.index not in redo:
                embed(s)
        jobs = [  # Arrow slices, not Python rows: the worker makes its shard's rows
            (s.index, s.table, str(raw), str(shard_dir), params, s.index in embed_set)
            for s in todo_decode
        ]
        for job, summary in eng.map_unordered(_decode_job, jobs, workers=params.n_workers):
            shard = by_index[job[0]]
            _record(
                shard_dir,
                shard,
                "decode",
                shard.input_hash,
                _decoded_files(shard_dir, shard),
                rows=shard.num_rows,
                kept=summary["kept"],
            )
            timing["images_decoded"] += summary["images"]
            timing["frames_decoded"] += summary["frames"]
            timing["media_seconds_decoded"] += summary["media_seconds"]
            timing["decode_cpu_seconds"] += summary["cpu_seconds"]
            if shard.index in embed_set:
                embed(shard)
            if embedders is not None:
                finish(embedders.ready())
        if embedders is not None:
            finish(embedders.drain())
    finally:
        if embedders is not None:
            embedders.close()
    timing["decode_seconds"] = round(time.perf_counter() - t0, 3)
    if timing["decode_cpu_seconds"]:
        timing["images_per_s_per_worker"] = round(
            timing["images_decoded"] / timing["decode_cpu_seconds"], 1
        )
    if timing["decode_seconds"] and timing["media_seconds_decoded"]:
        timing["media_seconds_per_s"] = round(
            timing["media_seconds_decoded"] / timing["decode_seconds"], 1
        )
    timing["media_seconds_decoded"] = round(timing["media_seconds_decoded"], 3)
    for key in ("decode_cpu_seconds", "image_embed_seconds", "text_embed_seconds"):
        timing[key] = round(timing[key], 3)
    for kind, secs in (("images", "image_embed_seconds"), ("texts", "text_embed_seconds")):
        if timing[secs]:
            timing[f"{kind}_embedded_per_s"] = round(timing[f"{kind}_embedded"] / timing[secs], 1)
    return timing


def _decode_job(job: tuple[Any, ...]) -> dict[str, Any]:
    """An engine task: :func:`_process_shard` on one shard (its rows arrive as an Arrow table)."""
    index, table, *rest = job
    return _process_shard(index, table.to_pylist(), *rest)


def _engine_device(eng: Any, params: PreprocessParams) -> str:
    """Where the encoders run: resolved here for the local engine, from the cluster's GPUs on
    Ray (``auto``: cuda when the cluster has a GPU)."""
    gpus = eng.gpus()
    if gpus is None:
        return _device(params)
    if params.device == "cuda" and not gpus:
        raise ValueError('preprocess.device is "cuda" but the Ray cluster has no GPU; use "auto"')
    return "cuda" if params.device != "cpu" and gpus else "cpu"


def _embedders(eng: Any, params: PreprocessParams, device: str, n_shards: int) -> Any:
    """The encoder workers: this process on the local engine, Ray actors otherwise (one GPU
    each on cuda). A CPU actor uses this process's torch thread count, so its floats are those
    the local engine computes."""
    if eng.kind == "local":
        return eng.actors(functools.partial(_Embedder, params, device), size=1, gpu=False)
    threads = None
    if device == "cpu":
        import torch

        threads = torch.get_num_threads()
    size = eng.params.embed_actors or (eng.gpus() if device == "cuda" else 1)
    factory = functools.partial(_Embedder, params, device, threads)
    return eng.actors(factory, size=min(size, n_shards), gpu=device == "cuda")


def _decoded_files(shard_dir: Path, shard: Shard) -> list[str]:
    """The files a decode worker wrote for ``shard`` that its record vouches for."""
    names = [f"{shard.stem}.samples.parquet", f"{shard.stem}.quarantine.parquet"]
    if (shard_dir / f"{shard.stem}.thumbs.parquet").is_file():
        names.append(f"{shard.stem}.thumbs.parquet")
    return names


def _npy_shape(path: Path) -> tuple[int, ...] | None:
    """The shape in an ``.npy`` header (not the data), or None when unreadable."""
    try:
        with path.open("rb") as fh:
            major, _ = np.lib.format.read_magic(fh)
            read_header = (
                np.lib.format.read_array_header_1_0
                if major == 1
                else np.lib.format.read_array_header_2_0
            )
            shape, _, _ = read_header(fh)
    except (FileNotFoundError, ValueError, OSError):
        return None
    return tuple(shape)


def _inputs_ready(shard_dir: Path, shard: Shard, size: int) -> bool:
    """A worker left this shard's encoder inputs (pixels at the size asked for now, or waves)."""
    if _npy_shape(shard_dir / f"{shard.stem}.counts.npy") is None:
        return False
    waves = _npy_shape(shard_dir / f"{shard.stem}.waves.npy")
    if waves is not None:
        return len(waves) == 1
    shape = _npy_shape(shard_dir / f"{shard.stem}.pixels.npy")
    return shape is not None and len(shape) == 4 and shape[1:] == (size, size, 3)


def _device(params: PreprocessParams) -> str:
    from cmrops.encoders import resolve_device

    return resolve_device(params.device)


class _Embedder:
    """The encoders, loaded on first use, wherever the engine runs it (this process or a Ray
    actor); ``threads`` pins torch's CPU threads (float sums depend on it)."""

    def __init__(self, params: PreprocessParams, device: str, threads: int | None = None) -> None:
        self.params = params
        self.device = device
        self.threads = threads
        self._models: dict[str, Any] = {}

    def _load(self, what: str) -> Any:
        if what not in self._models:
            if self.threads is not None:
                import torch

                torch.set_num_threads(self.threads)
            if what == "image":
                from cmrops.encoders import load_image_encoder

                model = load_image_encoder(self.params.image_encoder, self.device)
            elif what == "text":
                from cmrops.encoders import load_text_encoder

                model = load_text_encoder(self.params.text_encoder, self.device)
            elif what == "audio":
                from cmrops.audio_models import load_audio_encoder

                model = load_audio_encoder(self.params.audio.encoder, self.device)
            else:
                from cmrops.audio_models import load_transcriber

                model = load_transcriber(self.params.asr.model, self.device)
            self._models[what] = model
        return self._models[what]

    @property
    def image(self) -> Any:
        return self._load("image")

    @property
    def text(self) -> Any:
        return self._load("text")

    def embed(self, shard_dir: str, stem: str) -> dict[str, Any]:
        """Embed a decoded shard's encoder inputs and captions (read from ``shard_dir``): one
        vector per image; a video's keyframes averaged; an audio clip through the audio encoder
        (and, with ``asr.model``, transcribed)."""
        params = self.params
        progress = sys.stderr.isatty()
        folder = Path(shard_dir)
        table = io.read_parquet(folder / f"{stem}.samples.parquet")
        counts = io.read_npy(folder / f"{stem}.counts.npy")
        if len(counts) != table.num_rows:
            raise RuntimeError(f"{stem}: encoder inputs of {len(counts)} rows for {table.num_rows}")
        media = table["media"][0].as_py() if table.num_rows else "image"
        bounds = np.concatenate([[0], np.cumsum(counts)])
        transcripts: list[str] | None = None
        if media == "audio":
            waves = io.read_npy(folder / f"{stem}.waves.npy")
            clips = [waves[bounds[i] : bounds[i + 1]] for i in range(len(counts))]
            media_encoder = self._load("audio")
            transcriber = self._load("asr") if params.asr.model else None
            text_encoder = self.text  # loaded outside the timings
            t0 = time.perf_counter()
            rate = params.audio.sample_rate
            image = media_encoder.encode(
                _at_rate(clips, rate, media_encoder.sample_rate), params.batch_size, progress
            )
            if transcriber is not None:
                transcripts = transcriber.transcribe(
                    _at_rate(clips, rate, transcriber.sample_rate), params.asr.batch_size, progress
                )
            n_inputs = len(clips)
        else:
            pixels = io.read_npy(folder / f"{stem}.pixels.npy")
            if int(counts.sum()) != len(pixels):
                raise RuntimeError(f"{stem}: {len(pixels)} frames, the counts say {counts.sum()}")
            media_encoder, text_encoder = self.image, self.text
            t0 = time.perf_counter()
            image = media_encoder.encode(pixels, params.batch_size, progress)
            if media == "video":  # the mean of the keyframes, renormalised
                image = _pool(image, counts)
            n_inputs = len(pixels)
        t1 = time.perf_counter()
        captions = table["captions_norm"].to_pylist()
        if transcripts is not None and params.asr.as_caption:
            captions = [[*c, t] if t else c for c, t in zip(captions, transcripts, strict=True)]
        flat = [c for caps in captions for c in caps]
        per_caption = text_encoder.encode(flat, params.batch_size, progress)
        text = _pool(per_caption, np.array([len(c) for c in captions], np.int64))
        t2 = time.perf_counter()
        facts = {
            "media": media,
            "image_encoder": media_encoder.name,
            "image_dim": media_encoder.dim,
            "text_encoder": text_encoder.name,
            "text_dim": text_encoder.dim,
        }
        if transcripts is not None:
            facts["asr_model"] = self._load("asr").name
        return {
            "image": image.astype(np.float32),
            "text": text.astype(np.float32),
            "transcripts": transcripts,
            "sample_ids": table["sample_id"].to_pylist(),
            "facts": facts,
            "images": n_inputs,
            "texts": len(flat),
            "image_seconds": t1 - t0,
            "text_seconds": t2 - t1,
        }


def _at_rate(clips: list[np.ndarray], rate: int, target: int) -> list[np.ndarray]:
    """The clips (decoded at ``audio.sample_rate``) at the rate a model expects (CLAP: 48 kHz)."""
    if rate == target:
        return clips
    from cmrops.media.audio import resample

    return [resample(c, rate, target) for c in clips]


def _pool(vectors: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Mean of consecutive runs of ``counts`` rows, L2-renormalised (float64 sums)."""
    owner = np.repeat(np.arange(len(counts)), counts)
    out = np.zeros((len(counts), vectors.shape[1]), np.float64)
    np.add.at(out, owner, vectors.astype(np.float64))
    out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
    return out


_TRANSCRIPTS = pa.schema([("sample_id", pa.string()), ("transcript", pa.string())])


def _embed_shard(
    result: dict[str, Any], shard: Shard, shard_dir: Path, key: str, timing: dict[str, Any]
) -> None:
    """Write and record what :meth:`_Embedder.embed` computed for ``shard``."""
    io.write_npy(shard_dir / f"{shard.stem}.image.npy", result["image"])
    io.write_npy(shard_dir / f"{shard.stem}.text.npy", result["text"])
    files = [f"{shard.stem}.image.npy", f"{shard.stem}.text.npy"]
    if result["transcripts"] is not None:
        rows = {"sample_id": result["sample_ids"], "transcript": result["transcripts"]}
        io.write_parquet(
            shard_dir / f"{shard.stem}.transcripts.parquet", pa.table(rows, schema=_TRANSCRIPTS)
        )
        files.append(f"{shard.stem}.transcripts.parquet")
    _record(shard_dir, shard, "embed", key, files, **result["facts"])
    for name in _INPUT_FILES:
        (shard_dir / f"{shard.stem}.{name}").unlink(missing_ok=True)
    timing["images_embedded"] += result["images"]
    timing["texts_embedded"] += result["texts"]
    timing["image_embed_seconds"] += result["image_seconds"]
    timing["text_embed_seconds"] += result["text_seconds"]


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
) -> tuple[dict[str, Any], Measured]:
    """Decode, check, hash and normalise one raw row (an image, a video or an audio clip).

    Returns ``(measured columns, what the encoders and the dashboard need)``; raises
    ``_Reject`` / ``ImageRejected`` / ``MediaRejected`` for a row to quarantine. Token counts
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
        raise _Reject(
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


_THUMBS = pa.schema([("sample_id", pa.string()), ("jpeg", pa.binary())])


def _process_shard(
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
            quarantine.append(_qrow(row, e.reason, e.detail, {**evidence, **e.evidence}))
            continue
        except _Reject as e:
            quarantine.append(
                _qrow(row, e.reason, e.detail, {"image_path": row["image_path"], **e.evidence})
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
        io.write_parquet(out / f"{stem}.thumbs.parquet", pa.Table.from_pylist(thumbs, _THUMBS))
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


# --------------------------------------------------------------------------- merge


def _merge(
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
    # where each concatenated row lands in the sorted table
    position = np.empty(n_kept, np.int64)
    position[order] = np.arange(n_kept, dtype=np.int64)
    meta = _write_features(shards, sizes, position, params, out)
    _merge_side_table(shard_dir, shards, "thumbs", _THUMBS, out / "thumbs.parquet")
    if meta.get("transcripts"):
        _merge_side_table(
            shard_dir, shards, "transcripts", _TRANSCRIPTS, out / "features" / "transcripts.parquet"
        )
    else:
        (out / "features" / "transcripts.parquet").unlink(missing_ok=True)
    # one chunk each: the bytes written must not depend on how the rows were sharded
    io.write_parquet(out / "samples.parquet", table.combine_chunks())
    io.write_parquet(out / "quarantine.parquet", quarantine.combine_chunks())
    metrics = _metrics(table, quarantine, n_in, meta)
    io.write_json(out / "metrics.json", metrics)
    return metrics


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
    records = [json.loads(_record_path(shard_dir, s, "embed").read_text()) for s in shards]
    dims = {}
    for kind in ("image", "text"):
        dim = records[0][f"{kind}_dim"] if records else 0
        dims[kind] = dim
        with io.atomic_npy_memmap(feat / f"{kind}.npy", np.float32, (n_kept, dim)) as dest:
            offset = 0
            for s, size in zip(shards, sizes, strict=True):
                part = np.load(shard_dir / f"{s.stem}.{kind}.npy", mmap_mode="r")
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
