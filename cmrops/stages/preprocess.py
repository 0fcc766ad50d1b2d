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

After every run: inputs = kept + quarantined (asserted). A run that would keep no sample fails
before the merged outputs are written (:class:`cmrops.errors.NothingKeptError`, with the
quarantine counts by reason); the shards stay, so a rerun after a fix redoes only what changed.

The parts live in :mod:`cmrops.preprocessing`: the shard plan and records
(:mod:`~cmrops.preprocessing.shards`), the decode of one image, video or audio row and of a shard
(:mod:`~cmrops.preprocessing.decode`), the encoders (:mod:`~cmrops.preprocessing.embed`) and the
merge (:mod:`~cmrops.preprocessing.merge`); this module plans, runs and merges.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cmrops import io
from cmrops.imaging import DecodeLimits
from cmrops.media.sample import (
    AsrParams,
    AudioParams,
    VideoParams,
)
from cmrops.preprocessing import STAGE
from cmrops.preprocessing.decode import decode_job, quarantine_row
from cmrops.preprocessing.embed import embed_key, embed_shard, embedders, engine_device
from cmrops.preprocessing.merge import merge
from cmrops.preprocessing.shards import (
    INPUT_FILES,
    PLAN_FILE,
    Shard,
    decoded_files,
    inputs_ready,
    is_recorded,
    plan,
    record,
    remove_stale,
)
from cmrops.schema import RAW_SAMPLES

log = logging.getLogger(__name__)

#: Bump when the per-sample computation changes, so recorded shards are redone.
SHARD_VERSION = 2
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
    # auto: ONNX Runtime on the CPU (exported once, verified against torch), torch on a GPU
    runtime: Literal["auto", "torch"] = "auto"
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
    shards = plan(table, params, shard_dir)
    shard_dir.mkdir(parents=True, exist_ok=True)
    remove_stale(shard_dir, len(shards))

    timing = _execute(shards, params, raw, shard_dir)
    timing["shard_tasks"] = _shard_tasks(shard_dir, len(shards))
    for name in INPUT_FILES:  # all embedded (or not wanted) now
        for leftover in shard_dir.glob(f"shard-*.{name}"):
            leftover.unlink()
    n_in = table.num_rows + len(stage_quarantine)
    del table
    metrics = merge(shards, stage_quarantine, params, out, n_in)
    timing["seconds_total"] = round(time.perf_counter() - t_start, 3)
    # the stage's duration includes the work its mapped tasks did before this merge
    timing["seconds_with_shard_tasks"] = round(
        timing["seconds_total"] + timing["shard_tasks"]["wall_seconds"], 3
    )
    io.write_json(out / "throughput.json", timing)
    return metrics


def _shard_tasks(shard_dir: Path, n_shards: int) -> dict[str, Any]:
    """What the fan-out tasks (:func:`run_shards`) of this plan recorded since the last merge
    (their records are consumed): how many, the seconds they ran in all, and the wall-clock span
    from the first start to the last end."""
    records = []
    for path in sorted(shard_dir.glob("shard-*.task.json")):
        try:
            rec = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            rec = None
        path.unlink(missing_ok=True)
        if rec is not None and int(path.name[6:11]) < n_shards:
            records.append(rec)
    if not records:
        return {"tasks": 0, "seconds": 0.0, "wall_seconds": 0.0}
    span = max(r["finished_at"] for r in records) - min(r["started_at"] for r in records)
    return {
        "tasks": len(records),
        "seconds": round(sum(r["seconds"] for r in records), 3),
        "wall_seconds": round(span, 3),
    }


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
    shards = plan(table, params, shard_dir)
    shard_dir.mkdir(parents=True, exist_ok=True)
    remove_stale(shard_dir, len(shards))
    return _groups([s.num_rows for s in shards], params.task_rows)


def _groups(sizes: Sequence[int], task_rows: int) -> list[list[int]]:
    """Shard indices in groups of about ``task_rows`` rows (whole shards)."""
    groups: list[list[int]] = []
    rows = 0
    for index, size in enumerate(sizes):
        if not groups or rows >= task_rows:
            groups.append([])
            rows = 0
        groups[-1].append(index)
        rows += size
    return groups


def planned_tasks(params: PreprocessParams, out_dir: str | os.PathLike[str]) -> int:
    """How many groups :func:`plan_shards` made of the recorded plan (1 without one): the mapped
    tasks that may run side by side and share the machine's threads."""
    path = Path(out_dir) / "shards" / PLAN_FILE
    try:
        shard = io.read_parquet(path, columns=["shard"])["shard"].to_numpy()
    except (FileNotFoundError, pa.ArrowInvalid, OSError, KeyError):
        return 1
    sizes = np.bincount(shard) if len(shard) else np.zeros(0, np.int64)
    return max(1, len(_groups(sizes.tolist(), params.task_rows)))


def run_shards(
    params: PreprocessParams,
    raw_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    indices: Sequence[int],
) -> dict[str, Any]:
    """Decode and embed the shards ``indices`` (those not recorded already); returns timings,
    also kept as ``shards/shard-NNNNN.task.json`` (NNNNN: the group's first shard) so that
    :func:`run`'s merge reports the stage's whole duration."""
    t0, started = time.perf_counter(), time.time()
    raw = Path(raw_dir)
    table, _ = _load_raw(raw)
    shard_dir = Path(out_dir) / "shards"
    shards = plan(table, params, shard_dir)
    bad = [i for i in indices if not 0 <= i < len(shards)]
    if bad:
        raise ValueError(f"shard index(es) {bad} out of range: the plan has {len(shards)} shards")
    shard_dir.mkdir(parents=True, exist_ok=True)
    todo = sorted(set(indices))
    timing = _execute([shards[i] for i in todo], params, raw, shard_dir)
    if todo:
        seconds = time.perf_counter() - t0
        task = {"indices": todo, "seconds": round(seconds, 3), "started_at": started,
                "finished_at": started + seconds}  # fmt: skip
        io.write_json(shard_dir / f"shard-{todo[0]:05d}.task.json", task)
    return timing


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
            quarantine_row(
                row,
                "duplicate_sample_id",
                f"sample_id also used by {first['source']}:{first['source_key']}",
                {"kept_source": first["source"], "kept_source_key": first["source_key"]},
            )
        )
    keep = np.ones(table.num_rows, bool)
    keep[repeat] = False
    return table.filter(pa.array(keep)), dupes


# --------------------------------------------------------------------------- records


# --------------------------------------------------------------------------- execution


def _execute(
    shards: list[Shard], params: PreprocessParams, raw: Path, shard_dir: Path
) -> dict[str, Any]:
    """Run the unrecorded shards on the current engine (:mod:`cmrops.engine`): decode tasks,
    encoder workers fed each shard as it is decoded; the records are written here, in this
    process, only for what finished."""
    from cmrops import engine as engines

    eng = engines.current()
    device = engine_device(eng, params) if params.embeddings else "none"
    keys = {s.index: embed_key(s, params, device) for s in shards}
    todo_decode = [s for s in shards if not is_recorded(shard_dir, s, "decode", s.input_hash)]
    todo_embed = [
        s
        for s in shards
        if params.embeddings and not is_recorded(shard_dir, s, "embed", keys[s.index])
    ]
    redo = {s.index for s in todo_decode}
    # an embedding to redo needs the encoder-size pixels, which only a worker writes
    for s in todo_embed:
        if s.index not in redo and not inputs_ready(shard_dir, s, params.encoder_size):
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
    encoders = embedders(eng, params, device, len(embed_set)) if embed_set else None

    def embed(shard: Shard) -> None:
        assert encoders is not None
        encoders.submit(shard.index, "embed", str(shard_dir), shard.stem)

    def finish(results: Any) -> None:
        for index, result in results:
            embed_shard(result, by_index[index], shard_dir, keys[index], timing)

    t0 = time.perf_counter()
    try:
        for s in shards:  # embed what is decoded already
            if s.index in embed_set and s.index not in redo:
                embed(s)
        jobs = [  # Arrow slices, not Python rows: the worker makes its shard's rows
            (s.index, s.table, str(raw), str(shard_dir), params, s.index in embed_set)
            for s in todo_decode
        ]
        for job, summary in eng.map_unordered(decode_job, jobs, workers=params.n_workers):
            shard = by_index[job[0]]
            record(
                shard_dir,
                shard,
                "decode",
                shard.input_hash,
                decoded_files(shard_dir, shard),
                rows=shard.num_rows,
                kept=summary["kept"],
            )
            timing["images_decoded"] += summary["images"]
            timing["frames_decoded"] += summary["frames"]
            timing["media_seconds_decoded"] += summary["media_seconds"]
            timing["decode_cpu_seconds"] += summary["cpu_seconds"]
            if shard.index in embed_set:
                embed(shard)
            if encoders is not None:
                finish(encoders.ready())
        if encoders is not None:
            finish(encoders.drain())
    finally:
        if encoders is not None:
            encoders.close()
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


# --------------------------------------------------------------------------- worker


# --------------------------------------------------------------------------- merge
