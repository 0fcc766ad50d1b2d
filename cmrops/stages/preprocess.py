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
    task_rows: int = 4096  # raw rows per Airflow mapped task (whole shards; scheduling only)

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
        return {
            "version": SHARD_VERSION,
            "limits": dataclasses.asdict(self.limits),
            "caption_max_chars": self.caption_max_chars,
            "tokenizer": self.tokenizer,
        }


# --------------------------------------------------------------------------- entry points


def cli_main(args: Any) -> int:
    """``cmrops preprocess --params P --raw R --out O``."""
    from cmrops import engine
    from cmrops.params import load_section

    params = load_section(args.params, STAGE, PreprocessParams)
    with engine.session(engine.load_params(args.params)):
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
    for leftover in shard_dir.glob("shard-*.pixels.npy"):  # all embedded (or not wanted) now
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
        if s.index not in redo and not _pixels_ready(shard_dir, s, params.encoder_size):
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
                [f"{shard.stem}.samples.parquet", f"{shard.stem}.quarantine.parquet"],
                rows=shard.num_rows,
                kept=summary["kept"],
            )
            timing["images_decoded"] += summary["images"]
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
    """Both encoders, loaded on first use, wherever the engine runs it (this process or a Ray
    actor); ``threads`` pins torch's CPU threads (float sums depend on it)."""

    def __init__(self, params: PreprocessParams, device: str, threads: int | None = None) -> None:
        self.params = params
        self.device = device
        self.threads = threads
        self._image: Any = None
        self._text: Any = None

    def _pin_threads(self) -> None:
        if self.threads is not None:
            import torch

            torch.set_num_threads(self.threads)

    @property
    def image(self) -> Any:
        if self._image is None:
            from cmrops.encoders import load_image_encoder

            self._pin_threads()
            self._image = load_image_encoder(self.params.image_encoder, self.device)
        return self._image

    @property
    def text(self) -> Any:
        if self._text is None:
            from cmrops.encoders import load_text_encoder

            self._pin_threads()
            self._text = load_text_encoder(self.params.text_encoder, self.device)
        return self._text

    def embed(self, shard_dir: str, stem: str) -> dict[str, Any]:
        """Embed a decoded shard's pixels and captions (read from ``shard_dir``)."""
        params = self.params
        progress = sys.stderr.isatty()
        pixels_path = Path(shard_dir) / f"{stem}.pixels.npy"
        pixels = io.read_npy(pixels_path)
        table = io.read_parquet(Path(shard_dir) / f"{stem}.samples.parquet")
        if len(pixels) != table.num_rows:
            raise RuntimeError(
                f"{pixels_path}: {len(pixels)} images for {table.num_rows} kept rows"
            )

        image_encoder, text_encoder = self.image, self.text  # loaded outside the timings
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
        return {
            "image": image.astype(np.float32),
            "text": text.astype(np.float32),
            "facts": {
                "image_encoder": image_encoder.name,
                "image_dim": image_encoder.dim,
                "text_encoder": text_encoder.name,
                "text_dim": text_encoder.dim,
            },
            "images": len(pixels),
            "texts": len(flat),
            "image_seconds": t1 - t0,
            "text_seconds": t2 - t1,
        }


def _embed_shard(
    result: dict[str, Any], shard: Shard, shard_dir: Path, key: str, timing: dict[str, Any]
) -> None:
    """Write and record what :meth:`_Embedder.embed` computed for ``shard``."""
    io.write_npy(shard_dir / f"{shard.stem}.image.npy", result["image"])
    io.write_npy(shard_dir / f"{shard.stem}.text.npy", result["text"])
    _record(
        shard_dir,
        shard,
        "embed",
        key,
        [f"{shard.stem}.image.npy", f"{shard.stem}.text.npy"],
        **result["facts"],
    )
    (shard_dir / f"{shard.stem}.pixels.npy").unlink()
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
    # one chunk each: the bytes written must not depend on how the rows were sharded
    io.write_parquet(out / "samples.parquet", table.combine_chunks())
    io.write_parquet(out / "quarantine.parquet", quarantine.combine_chunks())
    metrics = _metrics(table, quarantine, n_in, meta)
    io.write_json(out / "metrics.json", metrics)
    return metrics


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
    meta = {
        "embeddings": True,
        "rows": n_kept,
        "image": {
            "encoder": first.get("image_encoder", params.image_encoder),
            "dim": int(dims["image"]),
            "input_size": params.encoder_size,
        },
        "text": {
            "encoder": first.get("text_encoder", params.text_encoder),
            "dim": int(dims["text"]),
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
