"""Collect: gather image-, video- or audio-caption samples (``media``) from the sources in
params into ``data/raw``.

Outputs (under ``out``)::

    samples.parquet          RAW_SAMPLES, one row per sample, sorted by sample_id
    quarantine.parquet       QUARANTINE (stage "collect"), sorted by source, source_key, reason
    synthetic_truth.parquet  SYNTHETIC_TRUTH, the defects synthetic sources planted (maybe empty)
    objects/ab/ab12...       image bytes, content-addressed by SHA-256
    metrics.json             inputs, kept, quarantined by reason, per source

Every record a source yields is either kept or quarantined: inputs = kept + quarantined, checked
before anything is written. A record the project withdrew (``withdrawn`` in params, the tombstone
file ``withdrawn.jsonl``: :mod:`cmrops.tombstones`) is quarantined as ``withdrawn`` - matched by
``source:key`` or URL before its media is read, by sample id or media digest right after - so its
media never stays in the store and a rescan cannot bring it back.

The tables are written last, atomically, and objects not referenced by ``samples.parquet`` are
removed, so a rerun (after a kill, too) leaves byte-identical outputs.
A run that keeps no sample (every input quarantined, or none at all) is an error
(:class:`cmrops.errors.NothingKeptError`: the quarantine counts by reason and an example of each)
raised before anything is written, so the failure shows here, not as an empty vocabulary later.

Memory stays bounded as sources grow: records are streamed from the sources, sample rows are
spilled to ``.collect-spill/`` in batches (bucketed by the first hex digit of ``sample_id``) and
streamed back sorted, one bucket at a time, into ``samples.parquet`` in fixed-size row groups.
Per sample only its id, source key and image digest stay in memory (duplicate detection).
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
from tqdm import tqdm

from cmrops.cas import ObjectStore, StoredObject, StoreWriteError, TooLargeError
from cmrops.errors import NothingKeptError
from cmrops.ids import sample_id
from cmrops.io import HexKeySorter, parquet_writer, write_json, write_parquet
from cmrops.params import load_section
from cmrops.schema import QUARANTINE, RAW_SAMPLES, SYNTHETIC_TRUTH
from cmrops.sources.audio_captions import AudioCapsSource, ClothoSource
from cmrops.sources.base import (
    MEDIA_KINDS,
    MediaKind,
    RawItem,
    Reason,
    Reject,
    Source,
    clean_labels,
    printable,
)
from cmrops.sources.coco import CocoSource
from cmrops.sources.folder import FolderSource
from cmrops.sources.manifest import ManifestSource
from cmrops.sources.msrvtt import MsrVttSource
from cmrops.sources.synthetic import DefectRates, SyntheticConfig, SyntheticSource
from cmrops.sources.urls import DownloadParams, UrlsSource
from cmrops.sources.webdataset import WebDatasetSource, expand_shards
from cmrops.tombstones import Tombstone, Tombstones

log = logging.getLogger(__name__)

STAGE = "collect"
SourceKind = Literal[
    "folder", "manifest", "coco", "webdataset", "synthetic", "urls", "msrvtt", "clotho", "audiocaps"
]
#: The media of the kinds that hold one kind only (folder and manifest read ``collect.media``).
KIND_MEDIA: dict[str, MediaKind] = {
    "coco": "image",
    "webdataset": "image",
    "synthetic": "image",
    "urls": "image",
    "msrvtt": "video",
    "clotho": "audio",
    "audiocaps": "audio",
}

#: Which optional fields of :class:`SourceSpec` each kind reads (``name``/``kind`` always).
KIND_FIELDS: dict[str, frozenset[str]] = {
    "folder": frozenset({"path"}),
    "manifest": frozenset(
        {"path", "format", "image_column", "captions_column", "labels_column", "separator"}
    ),
    "coco": frozenset({"path", "splits", "instances", "images", "labels"}),
    "webdataset": frozenset({"shards"}),
    "msrvtt": frozenset({"path", "media_dir", "splits", "labels"}),
    "clotho": frozenset({"path", "media_dir"}),
    "audiocaps": frozenset({"path", "media_dir"}),
    "urls": frozenset(
        {
            "path",
            "format",
            "url_column",
            "captions_column",
            "labels_column",
            "separator",
            "download",
        }
    ),
    "synthetic": frozenset(
        {
            "n",
            "seed",
            "min_size",
            "max_size",
            "min_captions",
            "max_captions",
            "jpeg_fraction",
            "defects",
        }
    ),
}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_SYN = SyntheticConfig()


@dataclass(frozen=True)
class SourceSpec:
    """One named source. Relative paths are resolved against the params file's folder."""

    name: str
    kind: SourceKind
    # folder: the media folder; manifest: the .csv/.jsonl file; coco: root or captions JSON;
    # msrvtt: the videodatainfo JSON; clotho / audiocaps: the caption CSV
    path: str | None = None
    # msrvtt / clotho / audiocaps: the folder of the clips (default: see their modules)
    media_dir: str | None = None
    # manifest
    format: Literal["auto", "csv", "jsonl", "parquet"] = "auto"  # parquet: urls only
    image_column: str = "image"
    captions_column: str = "captions"
    labels_column: str = "labels"
    separator: str = "|"
    # coco
    splits: tuple[str, ...] = ()
    instances: str | None = None
    images: str | None = None
    labels: bool = True
    # webdataset: shard paths, globs or {000..009} ranges
    shards: tuple[str, ...] = ()
    # urls (also path, format, captions_column, labels_column, separator): see sources/urls.py
    url_column: str = "url"
    download: DownloadParams = field(default_factory=DownloadParams)
    # synthetic
    n: int = _SYN.n
    seed: int = _SYN.seed
    min_size: int = _SYN.min_size
    max_size: int = _SYN.max_size
    min_captions: int = _SYN.min_captions
    max_captions: int = _SYN.max_captions
    jpeg_fraction: float = _SYN.jpeg_fraction
    defects: DefectRates = field(default_factory=DefectRates)

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"source name {self.name!r}: use letters, digits, '_', '-', '.'")
        allowed = KIND_FIELDS[self.kind]
        for f in fields(self):
            if f.name in ("name", "kind") or f.name in allowed:
                continue
            default = f.default_factory() if callable(f.default_factory) else f.default
            if getattr(self, f.name) != default:
                raise ValueError(
                    f"source {self.name!r}: {f.name!r} does not apply to kind {self.kind!r} "
                    f"(it reads: {', '.join(sorted(allowed))})"
                )
        if self.kind not in ("webdataset", "synthetic") and not self.path:
            raise ValueError(f"source {self.name!r} (kind {self.kind}) needs 'path'")
        if self.kind == "manifest" and self.format == "parquet":
            raise ValueError(f"source {self.name!r}: format parquet is for kind urls only")
        if self.kind == "webdataset" and not self.shards:
            raise ValueError(f"source {self.name!r} (kind webdataset) needs 'shards'")
        if self.kind == "synthetic":
            self.synthetic_config()  # validates

    def synthetic_config(self) -> SyntheticConfig:
        """The synthetic generator settings of this spec."""
        return SyntheticConfig(
            n=self.n,
            seed=self.seed,
            min_size=self.min_size,
            max_size=self.max_size,
            min_captions=self.min_captions,
            max_captions=self.max_captions,
            jpeg_fraction=self.jpeg_fraction,
            defects=self.defects,
        )


def _default_sources() -> tuple[SourceSpec, ...]:
    return (SourceSpec(name="synthetic", kind="synthetic"),)


@dataclass(frozen=True)
class CollectParams:
    """The ``collect:`` section of params.yaml. Without sources, the synthetic set is used."""

    sources: tuple[SourceSpec, ...] = field(default_factory=_default_sources)
    max_image_bytes: int = 64 << 20  # larger media files are quarantined (image_too_large)
    # what the captions describe: one kind per data set (image-text, video-text or audio-text)
    media: MediaKind = "image"
    # the tombstone file of withdrawn samples (relative to the params file; absent: none)
    withdrawn: str | None = "withdrawn.jsonl"

    def __post_init__(self) -> None:
        if not self.sources:
            raise ValueError("'sources' is empty: list at least one source (or omit it)")
        if self.media not in MEDIA_KINDS:  # the params loader checks the Literal already
            raise ValueError(f"media must be one of {', '.join(MEDIA_KINDS)}, got {self.media!r}")
        for s in self.sources:
            held = KIND_MEDIA.get(s.kind, self.media)
            if held != self.media:
                raise ValueError(
                    f"source {s.name!r} (kind {s.kind}) holds {held}, but collect.media is "
                    f"{self.media!r}: a data set pairs captions with one media kind; set "
                    f"collect.media: {held} or build the {held} data set in its own pipeline"
                )
        names = [s.name for s in self.sources]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"source names must be unique; repeated: {', '.join(dup)}")
        if self.max_image_bytes < 1:
            raise ValueError("max_image_bytes must be positive")


def open_source(
    spec: SourceSpec,
    base_dir: Path,
    max_image_bytes: int,
    out_dir: Path | None = None,
    media: MediaKind = "image",
    tombstones: Tombstones | None = None,
) -> Source:
    """Build the source a spec describes; fails fast when its input is unusable as a whole.

    ``out_dir`` (the stage's output folder) is where a ``urls`` source keeps its downloads;
    ``media`` is what folder and manifest sources read (``collect.media``).
    """

    def resolve(p: str) -> Path:
        q = Path(p).expanduser()
        return q if q.is_absolute() else base_dir / q

    media_dir = resolve(spec.media_dir) if spec.media_dir else None
    if spec.kind == "folder":
        return FolderSource(spec.name, resolve(spec.path or ""), media)
    if spec.kind == "manifest":
        return ManifestSource(
            spec.name,
            resolve(spec.path or ""),
            spec.format,
            spec.image_column,
            spec.captions_column,
            spec.labels_column,
            spec.separator,
            media,
        )
    if spec.kind == "msrvtt":
        return MsrVttSource(
            spec.name, resolve(spec.path or ""), media_dir, spec.splits, spec.labels
        )
    if spec.kind == "clotho":
        return ClothoSource(spec.name, resolve(spec.path or ""), media_dir)
    if spec.kind == "audiocaps":
        return AudioCapsSource(spec.name, resolve(spec.path or ""), media_dir)
    if spec.kind == "coco":
        return CocoSource(
            spec.name,
            resolve(spec.path or ""),
            splits=spec.splits,
            instances=resolve(spec.instances) if spec.instances else None,
            images=resolve(spec.images) if spec.images else None,
            labels=spec.labels,
        )
    if spec.kind == "webdataset":
        return WebDatasetSource(
            spec.name, expand_shards(list(spec.shards), base_dir), max_image_bytes
        )
    if spec.kind == "urls":
        return UrlsSource(
            spec.name,
            resolve(spec.path or ""),
            spec.format,
            spec.url_column,
            spec.captions_column,
            spec.labels_column,
            spec.separator,
            spec.download,
            out_dir=out_dir,
            max_image_bytes=max_image_bytes,
            base_dir=base_dir,
            withdrawn=_url_check(tombstones) if tombstones else None,
        )
    return SyntheticSource(spec.name, spec.synthetic_config())


def _url_check(tombstones: Tombstones) -> Any:
    def why(url: str) -> str | None:
        t = tombstones.withdraws_url(url)
        return None if t is None else t.describe()

    return why


@dataclass
class _Outcome:
    sample_id: str | None
    reason: str | None


#: Quarantine rows held as Python dicts before they are packed into an Arrow table.
_QUARANTINE_BATCH = 8192


@dataclass
class _Collector:
    """Turns records into sample rows and quarantine rows, storing image bytes.

    Sample rows go straight to ``samples`` (spilled to disk in batches, sorted at the end);
    quarantine rows are packed into Arrow tables every few thousand rows. What stays in memory
    per sample is its id, its image digest and (for duplicate evidence) its source key.
    """

    store: ObjectStore
    max_image_bytes: int
    samples: HexKeySorter
    media: MediaKind = "image"
    kept: int = 0
    digests: dict[str, int] = field(default_factory=dict)  # image sha256 -> bytes
    quarantine: list[dict[str, Any]] = field(default_factory=list)
    quarantine_tables: list[pa.Table] = field(default_factory=list)
    by_reason: Counter[str] = field(default_factory=Counter)
    seen: dict[str, tuple[str, str]] = field(default_factory=dict)  # sample_id -> (src, key)
    outcomes: dict[tuple[str, str], _Outcome] = field(default_factory=dict)
    track: set[str] = field(default_factory=set)  # sources whose outcomes truth needs
    order: dict[str, int] = field(default_factory=dict)
    tombstones: Tombstones = field(default_factory=Tombstones)
    examples: dict[str, str] = field(default_factory=dict)  # reason -> its first row, in words

    def add(self, record: RawItem | Reject) -> str | None:
        """Keep or quarantine one record; return the quarantine reason, or None when kept."""
        if isinstance(record, Reject):
            return self._reject(record)
        bad = _not_utf8(record)
        if bad:
            return self._reject(
                Reject(
                    record.source,
                    record.source_key,
                    Reason.INVALID_UTF8,
                    f"{bad} holds characters that are not valid UTF-8",
                )
            )
        if not record.captions:
            return self._reject(
                Reject(record.source, record.source_key, Reason.MISSING_CAPTION, "no caption")
            )
        urls = (record.extra.get("url"), record.extra.get("final_url")) if record.extra else ()
        gone = self.tombstones.match(source=record.source, source_key=record.source_key,
                                     urls=urls) if self.tombstones else None  # fmt: skip
        if gone is not None:  # before the media is stored
            return self._reject(_withdrawn(record, gone))
        stored = self._store(record)
        if isinstance(stored, Reject):
            return self._reject(stored)
        sid = sample_id(stored.sha256, record.captions)
        gone = self.tombstones.match(sample_id=sid, media_sha256=stored.sha256) \
            if self.tombstones else None  # fmt: skip
        if gone is not None:  # the object is pruned at the end: no kept sample refers to it
            return self._reject(_withdrawn(record, gone))
        if sid in self.seen:
            src, key = self.seen[sid]
            return self._reject(
                Reject(
                    record.source,
                    record.source_key,
                    Reason.DUPLICATE_INPUT,
                    f"same image and captions as {src}:{key}, collected earlier",
                    {"duplicate_of": sid, "duplicate_of_source": src, "duplicate_of_key": key},
                )
            )
        self.seen[sid] = (record.source, record.source_key)
        self.kept += 1
        self.digests[stored.sha256] = stored.size
        self.samples.add(
            {
                "sample_id": sid,
                "source": record.source,
                "source_key": printable(record.source_key),
                "image_sha256": stored.sha256,
                "image_path": stored.relpath,
                "image_bytes": stored.size,
                "captions": list(record.captions),
                "labels": list(clean_labels(record.labels)),
                "extra": _json(record.extra),
                "media": record.media,
            }
        )
        self._note(record.source, record.source_key, _Outcome(sid, None))
        return None

    def _store(self, item: RawItem) -> StoredObject | Reject:
        def reject(reason: Reason, detail: str, **evidence: Any) -> Reject:
            return Reject(item.source, item.source_key, reason, detail, evidence)

        limit = self.max_image_bytes
        if item.data is not None:
            size = len(item.data)
        else:
            assert item.path is not None
            try:
                size = item.path.stat().st_size
            except OSError as e:
                return reject(Reason.UNREADABLE_FILE, f"cannot stat the image: {e.strerror}")
        if size == 0:
            return reject(Reason.EMPTY_FILE, "the image file is empty (0 bytes)")
        if size > limit:
            return reject(
                Reason.IMAGE_TOO_LARGE,
                f"the image is {size} bytes, over max_image_bytes={limit}",
                bytes=size,
                limit=limit,
            )
        if item.data is not None:
            return self.store.put_bytes(item.data)
        assert item.path is not None
        try:
            return self.store.put_file(item.path, limit)
        except TooLargeError:
            return reject(Reason.IMAGE_TOO_LARGE, f"the image grew past max_image_bytes={limit}")
        except StoreWriteError:
            raise  # our disk, not the input: the stage fails (a full disk is no quarantine reason)
        except OSError as e:
            return reject(Reason.UNREADABLE_FILE, f"cannot read the image: {e.strerror or e}")

    def _reject(self, r: Reject) -> str:
        self.quarantine.append(
            {
                "sample_id": None,
                "stage": STAGE,
                "source": r.source,
                "source_key": printable(r.source_key),
                "reason": str(r.reason),
                "detail": printable(r.detail),
                "evidence": _json(r.evidence),
            }
        )
        self.by_reason[str(r.reason)] += 1
        self.examples.setdefault(str(r.reason), f"{r.source}:{r.source_key}: {r.detail}")
        if len(self.quarantine) >= _QUARANTINE_BATCH:
            self._pack()
        self._note(r.source, r.source_key, _Outcome(None, str(r.reason)))
        return str(r.reason)

    def _pack(self) -> None:
        if self.quarantine:
            self.quarantine_tables.append(pa.Table.from_pylist(self.quarantine, schema=QUARANTINE))
            self.quarantine = []

    def quarantine_table(self) -> pa.Table:
        """Every quarantine row, sorted by source (in params order), source_key, reason, detail."""
        self._pack()
        table = pa.concat_tables([QUARANTINE.empty_table(), *self.quarantine_tables])
        self.quarantine_tables = []
        names = pa.array(sorted(self.order, key=self.order.__getitem__), pa.string())
        rank = pc.index_in(table["source"], value_set=names)
        keyed = table.append_column("_order", rank)
        order = pc.sort_indices(
            keyed,
            [(c, "ascending") for c in ("_order", "source_key", "reason", "detail")],
        )
        return table.take(order).combine_chunks()

    def _note(self, source: str, key: str, outcome: _Outcome) -> None:
        if source in self.track:
            self.outcomes[(source, key)] = outcome


def _withdrawn(record: RawItem, t: Tombstone) -> Reject:
    return Reject(
        record.source, record.source_key, Reason.WITHDRAWN, t.describe(),
        {"request": t.request, "kind": t.kind, "withdrawn_at": t.withdrawn_at},
    )  # fmt: skip


def _not_utf8(item: RawItem) -> str | None:
    for what, texts in (("a caption", item.captions), ("a label", item.labels)):
        for t in texts:
            try:
                t.encode("utf-8")
            except UnicodeEncodeError:
                return what
    return None


def _json(obj: Any) -> str:
    text = json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return printable(text)


def run(params: CollectParams, out_dir: Path, base_dir: Path | None = None) -> dict[str, Any]:
    """Collect every source of ``params`` into ``out_dir``; return the metrics written.

    Relative source paths are resolved against ``base_dir`` (default: the working directory).
    Raises ``FileNotFoundError``/``ValueError`` naming the file when a source is unusable as a
    whole, before anything is written.
    """
    base = base_dir if base_dir is not None else Path.cwd()
    tomb_path = None if params.withdrawn is None else base / params.withdrawn
    tombstones = Tombstones.load(tomb_path)  # a malformed file fails here, before any write
    sources = [
        open_source(s, base, params.max_image_bytes, out_dir, params.media, tombstones)
        for s in params.sources
    ]
    kinds = {s.name: s.kind for s in params.sources}
    store = ObjectStore(out_dir / "objects")
    # Always present (empty without a `urls` source), so dvc.yaml can declare it as an output.
    (out_dir / "downloads").mkdir(parents=True, exist_ok=True)
    swept = store.sweep_temporary()
    if swept:
        log.info("removed %d temporary file(s) left by an interrupted run", swept)
    spill = out_dir / ".collect-spill"  # sample rows, bucketed by sample_id, until sorted
    shutil.rmtree(spill, ignore_errors=True)  # left by a killed run
    try:
        col = _Collector(
            store,
            params.max_image_bytes,
            HexKeySorter(spill, RAW_SAMPLES, "sample_id"),
            params.media,
            track={s.name for s in sources if isinstance(s, SyntheticSource)},
            order={s.name: i for i, s in enumerate(sources)},
            tombstones=tombstones,
        )
        per_source: dict[str, Counter[str]] = {}
        for source in sources:
            per_source[source.name] = _drain(col, source)
        if col.kept == 0:  # nothing for preprocess: fail here, with why, before writing
            inputs = sum(c.total() for c in per_source.values())
            raise NothingKeptError(STAGE, inputs, col.by_reason, col.examples)

        truth = [
            row for s in sources if isinstance(s, SyntheticSource) for row in _truth_rows(col, s)
        ]
        metrics = {"media": params.media, **_metrics(col, per_source, kinds)}
        metrics["tombstones"] = len(tombstones)
        for source in sources:  # urls sources: download success rate and failure reasons
            if isinstance(source, UrlsSource):
                metrics["sources"][source.name]["downloads"] = source.metrics()
        col.seen.clear()
        write_parquet(out_dir / "quarantine.parquet", col.quarantine_table())
        write_parquet(
            out_dir / "synthetic_truth.parquet",
            pa.Table.from_pylist(truth, schema=SYNTHETIC_TRUTH),
        )
        with parquet_writer(out_dir / "samples.parquet", RAW_SAMPLES) as writer:
            col.samples.write_sorted(writer)
    finally:
        shutil.rmtree(spill, ignore_errors=True)
    pruned = store.prune(set(col.digests))
    if pruned:
        log.info("removed %d stored image(s) no sample refers to any more", pruned)
    write_json(out_dir / "metrics.json", metrics)
    return metrics


def _drain(col: _Collector, source: Source) -> Counter[str]:
    """Feed every record of ``source`` to the collector; count outcomes (``kept`` or reason)."""
    counts: Counter[str] = Counter()
    t0 = time.perf_counter()
    records: Iterable[RawItem | Reject] = tqdm(
        source,
        total=source.size_hint(),
        desc=f"collect {source.name}",
        unit="item",
        disable=None,
        mininterval=1.0,
        leave=False,
    )
    for record in records:
        if record.source != source.name:
            raise RuntimeError(f"source {source.name!r} yielded a record of {record.source!r}")
        if isinstance(record, RawItem) and record.media != col.media:
            raise RuntimeError(f"source {source.name!r} yielded {record.media}, not {col.media}")
        counts[col.add(record) or "kept"] += 1
    quarantined = sum(v for k, v in counts.items() if k != "kept")
    log.info(
        "%s: %d inputs, %d kept, %d quarantined in %.1f s",
        source.name,
        counts.total(),
        counts["kept"],
        quarantined,
        time.perf_counter() - t0,
    )
    return counts


def _truth_rows(col: _Collector, source: SyntheticSource) -> list[dict[str, Any]]:
    rows = []
    for d in source.truth:
        own = col.outcomes.get((source.name, d.source_key), _Outcome(None, None))
        orig = (
            col.outcomes.get((source.name, d.original_source_key), _Outcome(None, None))
            if d.original_source_key
            else _Outcome(None, None)
        )
        rows.append(
            {
                "source": source.name,
                "source_key": d.source_key,
                "defect": d.defect,
                "original_source_key": d.original_source_key,
                "sample_id": own.sample_id,
                "original_sample_id": orig.sample_id,
                "collect_reason": own.reason,
                "detail": _json(d.detail),
            }
        )
    return rows


def _metrics(
    col: _Collector, per_source: dict[str, Counter[str]], kinds: dict[str, str]
) -> dict[str, Any]:
    inputs = sum(c.total() for c in per_source.values())
    kept, quarantined = col.kept, col.by_reason.total()
    if inputs != kept + quarantined:  # the stage's contract: nothing is dropped silently
        raise AssertionError(f"inputs {inputs} != kept {kept} + quarantined {quarantined}")
    by_reason = col.by_reason
    sources = {}
    for name, counts in per_source.items():
        reasons = {k: v for k, v in sorted(counts.items()) if k != "kept"}
        sources[name] = {
            "kind": kinds[name],
            "inputs": counts.total(),
            "kept": counts["kept"],
            "quarantined": sum(reasons.values()),
            "quarantined_by_reason": reasons,
        }
    unique = col.digests
    return {
        "inputs": inputs,
        "kept": kept,
        "quarantined": quarantined,
        "quarantined_by_reason": dict(sorted(by_reason.items())),
        "images_stored": len(unique),
        "image_bytes_stored": sum(unique.values()),
        "sources": sources,
    }


def cli_main(args: Any) -> int:
    """``cmrops collect --params params.yaml --out data/raw``."""
    params = load_section(args.params, "collect", CollectParams)
    out = Path(args.out)
    m = run(params, out, base_dir=Path(args.params).resolve().parent)
    reasons = ", ".join(f"{k} {v}" for k, v in m["quarantined_by_reason"].items()) or "none"
    print(
        f"collect: {m['inputs']} inputs -> {m['kept']} samples kept, {m['quarantined']} "
        f"quarantined ({reasons}); {m['images_stored']} {m['media']} files stored in "
        f"{out / 'objects'}"
    )
    for name, s in m["sources"].items():
        print(
            f"  {name} ({s['kind']}): {s['inputs']} inputs, {s['kept']} kept, "
            f"{s['quarantined']} quarantined"
        )
        if "downloads" in s:
            d = s["downloads"]
            failed = ", ".join(f"{k} {v}" for k, v in d["failed_by_reason"].items()) or "none"
            rate = f"{100 * d['success_rate']:.1f}%" if d["success_rate"] is not None else "-"
            print(f"    downloads: {d['ok']}/{d['rows']} ok ({rate}); failed: {failed}")
    return 0
