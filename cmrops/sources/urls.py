"""Image-text pairs listed by URL: a CSV/TSV, JSONL or Parquet manifest, downloaded politely,
safely and resumably into the collect stage's content-addressed store.

Manifest columns (names configurable): ``url`` (http/https), ``captions`` and optional
``labels``, read as the ``manifest`` kind reads them (CSV: a JSON list or text split on
``separator``, ``separator: ""`` for one caption per cell; JSONL/Parquet: a string or a list of
strings). Other columns go to the sample's ``extra`` with ``url`` (and ``final_url`` after
redirects). ``source_key`` is ``"<data row number>:<url>"``.

Downloading (see :mod:`cmrops.sources.http_fetch`): ``concurrency`` worker threads, per-host
rate limit, timeouts, retries with back-off and jitter, ``Retry-After``, a byte cap, content
type and magic-byte checks, ``X-Robots-Tag`` opt-out, each host's robots.txt and TDMRep
(:mod:`cmrops.sources.optout`; off only with ``respect_robots_txt: false`` /
``respect_tdmrep: false``), a User-Agent, and SSRF protection (every hop's resolved addresses
must be public unless ``allow_private_networks``/``allowed_networks``). A URL the project
withdrew (``withdrawn.jsonl``, :mod:`cmrops.tombstones`) is never requested: its row is
``withdrawn``.

Outputs under ``<out>/downloads/<source>/``::

    shards/shard-00000.parquet   DOWNLOAD_STATUS rows of shard 0 (written atomically when done)
    shards/shard-00001.journal.jsonl   outcomes of an unfinished shard, one line per URL
    status.parquet               every row of every shard, in manifest order
    summary.json                 rows, ok, success rate, failures by reason
    state.json                   the run number and whether it completed

Every manifest row gets one status row: ``ok`` or a reason (``timeout``, ``http_404``,
``too_large``, ``not_an_image``, ``blocked_address``, ``opt_out``, ``robots_disallowed``,
``tdm_reserved``, ``opt_out_unknown``, ``withdrawn``, ``connection_error``,
``too_many_redirects``, ``invalid_url``, ``dns_error``, ``tls_error``, ... and the manifest's
``malformed_row``/``missing_caption``/``invalid_utf8``), and one record for the collect stage: a
sample, or a quarantine row with the same reason. So inputs = kept + quarantined holds, and the
stage's metrics carry the success rate.

Resumable and incremental: the manifest is cut into shards of ``shard_size`` rows. An image is
written to the store and its outcome appended to the shard's journal as soon as it is
downloaded, so a run killed at any point (SIGKILL included) loses at most the requests in
flight; the rerun continues the same run and fetches every image once overall. A later run
reuses every recorded outcome (keyed by URL, so moved or repeated rows are not fetched again)
and fetches only: URLs never seen, images missing from the store, failures whose reason is
retryable (timeouts, connection/DNS errors, 429, 5xx; ``retry_failed: false`` turns this off)
and policy failures (too large, opt-out, blocked, not an image) when the policy changed. An
image behind two URLs is stored once; with the same captions the second row is
``duplicate_input`` (as with every source), with other captions it is a second sample.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import pyarrow as pa
import pyarrow.parquet as pq

from cmrops.cas import ObjectStore
from cmrops.io import write_json, write_parquet
from cmrops.redaction import redact
from cmrops.sources.base import RawItem, Reason, Record, Reject, clean_labels
from cmrops.sources.http_fetch import (
    DEFAULT_USER_AGENT,
    INVALID_URL,
    OK,
    POLICY_REASONS,
    TOO_LARGE,
    AddressPolicy,
    FetchConfig,
    Fetcher,
    InvalidURLError,
    Resolver,
    is_retryable,
    parse_networks,
    parse_target,
)
from cmrops.sources.manifest import ManifestSource

log = logging.getLogger(__name__)

UrlsFormat = Literal["auto", "csv", "jsonl", "parquet"]

#: ``<out>/downloads/<source>/status.parquet`` and its shard files: one row per manifest row.
DOWNLOAD_STATUS = pa.schema(
    [
        ("row", pa.int64()),  # data row number in the manifest, from 1
        ("source_key", pa.string()),  # "<row>:<url>", as in samples / quarantine
        ("url", pa.string()),  # as written in the manifest
        ("status", pa.string()),  # "ok" or the reason code
        ("retryable", pa.bool_()),  # a later run tries it again (retry_failed)
        ("http_status", pa.int32()),  # final HTTP status, null when none was received
        ("content_type", pa.string()),
        ("bytes", pa.int64()),  # image size when ok
        ("image_sha256", pa.string()),  # the stored image when ok
        ("final_url", pa.string()),  # after redirects; null when there were none
        ("attempts", pa.int32()),  # requests made for this URL, all runs together
        ("run", pa.int32()),  # the run that recorded this outcome (0: never fetched)
        ("policy", pa.string()),  # digest of the download policy it was fetched under
        ("detail", pa.string()),  # one human sentence
    ]
)
_COLUMNS = tuple(DOWNLOAD_STATUS.names)
_LOOKAHEAD = 1  # shards whose downloads run while the previous one is being finished


@dataclass(frozen=True)
class DownloadParams:
    """The ``download:`` block of a ``kind: urls`` source (all optional)."""

    concurrency: int = 16  # worker threads (parallel downloads)
    shard_size: int = 1000  # manifest rows per shard: the unit of progress records
    timeout: float = 10.0  # seconds, connect and each read
    deadline: float = 60.0  # seconds, one whole attempt (all redirects, whole body)
    retries: int = 2  # further attempts for retryable failures, within a run
    backoff: float = 1.0  # first back-off in seconds, doubled each retry, with jitter
    backoff_max: float = 30.0
    max_retry_after: float = 120.0  # a longer Retry-After ends the URL's attempts for this run
    per_host_rate: float = 10.0  # requests per second to one host; 0 = unlimited
    max_bytes: int | None = None  # per image; default and upper bound: collect.max_image_bytes
    max_redirects: int = 5
    user_agent: str = DEFAULT_USER_AGENT
    respect_opt_out: bool = True  # honour X-Robots-Tag opt-out directives
    respect_robots_txt: bool = True  # honour each host's robots.txt (RFC 9309)
    respect_tdmrep: bool = True  # honour TDMRep (tdmrep.json, tdm-reservation header)
    opt_out_directives: tuple[str, ...] = ("noai", "noimageai")
    allow_private_networks: bool = False  # allow loopback/private/link-local (not metadata)
    allowed_networks: tuple[str, ...] = ()  # or allow just these CIDRs, e.g. ["10.1.2.0/24"]
    retry_failed: bool = True  # a rerun retries retryable failures of earlier runs
    ca_bundle: str | None = None  # PEM file of CAs for https (default: the system's)

    def __post_init__(self) -> None:
        checks = (
            (1 <= self.concurrency <= 1024, "concurrency must be 1..1024"),
            (self.shard_size >= 1, "shard_size must be positive"),
            (self.timeout > 0 and self.deadline > 0, "timeout and deadline must be positive"),
            (0 <= self.retries <= 20, "retries must be 0..20"),
            (self.backoff >= 0 and self.backoff_max >= 0, "backoff must not be negative"),
            (self.max_retry_after >= 0, "max_retry_after must not be negative"),
            (self.per_host_rate >= 0, "per_host_rate must not be negative (0 = unlimited)"),
            (self.max_bytes is None or self.max_bytes >= 1, "max_bytes must be positive"),
            (0 <= self.max_redirects <= 30, "max_redirects must be 0..30"),
            (
                bool(self.user_agent.strip()) and all(32 <= ord(c) < 127 for c in self.user_agent),
                "user_agent must be non-empty printable ASCII",
            ),
        )
        for ok, message in checks:
            if not ok:
                raise ValueError(f"download: {message}")
        parse_networks(self.allowed_networks)  # validates


@dataclass(frozen=True, slots=True)
class _Row:
    """A manifest row with a URL to fetch."""

    row: int
    key: str
    url: str
    captions: tuple[str, ...]
    labels: tuple[str, ...]
    extra: dict[str, Any]


class _UrlManifest(ManifestSource):
    """The CSV/JSONL reader of the manifest kind, yielding URL rows instead of file paths."""

    def _split(self, cell: str) -> list[str]:
        if not self.separator and not cell.strip().startswith("["):
            return [cell.strip()] if cell.strip() else []
        return super()._split(cell)

    def _item(  # type: ignore[override]
        self, key: str, image: str, captions: list[str], labels: list[str], extra: dict[str, Any]
    ) -> _Row | Reject:
        return _make_row(self.name, key, image, captions, labels, extra)


def _make_row(
    name: str, key: str, url: str, captions: list[str], labels: list[str], extra: dict[str, Any]
) -> _Row | Reject:
    # credentials in a URL are never sent (http_fetch drops them), so they are never kept either:
    # not in source_key, extra, quarantine rows, download status or logs
    key, url = redact(key), redact(url)
    if not captions:
        return Reject(name, key, Reason.MISSING_CAPTION, f"row for {url[:200]} has no caption")
    try:
        parse_target(url)
    except InvalidURLError as e:
        return Reject(name, key, cast(Reason, INVALID_URL), f"{e}", {"url": url[:2000]})
    return _Row(
        _row_number(key), key, url, tuple(captions), clean_labels(labels), {**extra, "url": url}
    )


def _redacted(rec: Reject) -> Reject:
    evidence = {k: redact(v) if isinstance(v, str) else v for k, v in rec.evidence.items()}
    return dataclasses.replace(
        rec, source_key=redact(rec.source_key), detail=redact(rec.detail), evidence=evidence
    )


def _row_number(key: str) -> int:
    return int(key.split(":", 1)[0])


@dataclass
class _Journal:
    """Append-only outcomes of one unfinished shard (one JSON object per line)."""

    path: Path
    lock: threading.Lock = field(default_factory=threading.Lock)
    fh: Any = None
    closed: bool = False  # the shard file now holds everything: late writes are dropped

    def write(self, entry: dict[str, Any]) -> None:
        line = json.dumps(entry, sort_keys=True, ensure_ascii=False) + "\n"
        with self.lock:
            if self.closed:
                return
            if self.fh is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.fh = self.path.open("a", encoding="utf-8")
            self.fh.write(line)
            self.fh.flush()  # in the page cache: survives SIGKILL of this process

    def close(self) -> None:
        with self.lock:
            self.closed = True
            if self.fh is not None:
                self.fh.close()
                self.fh = None


@dataclass
class _Slot:
    record: _Row | Reject
    entry: dict[str, Any] | None = None  # known without downloading
    future: Future[dict[str, Any]] | None = None


@dataclass
class _Shard:
    index: int
    slots: list[_Slot]
    file_rows: list[dict[str, Any]] | None  # the shard file's rows, when it exists
    journal: _Journal


class UrlsSource:
    """Rows of a URL manifest, downloaded into ``<out_dir>/objects``; see the module doc."""

    def __init__(
        self,
        name: str,
        path: Path,
        fmt: UrlsFormat = "auto",
        url_column: str = "url",
        captions_column: str = "captions",
        labels_column: str = "labels",
        separator: str = "|",
        download: DownloadParams | None = None,
        out_dir: Path | None = None,
        max_image_bytes: int = 64 << 20,
        base_dir: Path | None = None,
        resolve: Resolver | None = None,
        withdrawn: Callable[[str], str | None] | None = None,
    ) -> None:
        if out_dir is None:
            raise ValueError(f"source {name!r} (kind urls) needs the stage's output folder")
        self.name = name
        self.path = path
        self.params = download or DownloadParams()
        self.url_column, self.captions_column = url_column, captions_column
        self.labels_column, self.separator = labels_column, separator
        self.out_dir = out_dir
        self.dir = out_dir / "downloads" / name
        self.cap = min(self.params.max_bytes or max_image_bytes, max_image_bytes)
        self.resolve = resolve
        self.withdrawn = withdrawn  # url -> why it was withdrawn, or None
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: URL manifest of source {name!r} not found (fix its 'path' in params)"
            )
        self.format = _detect_format(path, fmt)
        self._manifest: _UrlManifest | None = None
        self._rows_total: int | None = None
        if self.format == "parquet":
            self._check_parquet()
        else:
            try:
                self._manifest = _UrlManifest(
                    name, path, self.format, url_column, captions_column, labels_column, separator
                )
            except ValueError as e:
                raise ValueError(str(e).replace("image_column", "url_column")) from None
        ca = self.params.ca_bundle
        if ca is not None and base_dir is not None and not Path(ca).is_absolute():
            ca = str(base_dir / ca)
        if ca is not None and not Path(ca).is_file():
            raise FileNotFoundError(f"{ca}: ca_bundle of source {name!r} not found")
        p = self.params
        self.fetch_config = FetchConfig(
            timeout=p.timeout,
            deadline=p.deadline,
            retries=p.retries,
            backoff=p.backoff,
            backoff_max=p.backoff_max,
            max_retry_after=p.max_retry_after,
            per_host_rate=p.per_host_rate,
            max_bytes=self.cap,
            max_redirects=p.max_redirects,
            user_agent=p.user_agent,
            opt_out_directives=frozenset(d.strip().lower() for d in p.opt_out_directives)
            if p.respect_opt_out
            else frozenset(),
            policy=AddressPolicy(p.allow_private_networks, parse_networks(p.allowed_networks)),
            ca_bundle=ca,
            max_idle_per_host=p.concurrency,
            robots_txt=p.respect_robots_txt,
            tdmrep=p.respect_tdmrep,
        )
        self.policy = _policy_digest(self.fetch_config)
        self.summary: dict[str, Any] | None = None

    def size_hint(self) -> int | None:
        return self._rows_total

    def metrics(self) -> dict[str, Any]:
        """Download outcome counts of the last iteration (for the stage's metrics.json)."""
        return dict(self.summary or {})

    # -- manifest --------------------------------------------------------------------------

    def _check_parquet(self) -> None:
        try:
            pf = pq.ParquetFile(self.path)
        except (pa.ArrowException, OSError) as e:
            raise ValueError(f"{self.path}: not a Parquet file ({e})") from e
        names = pf.schema_arrow.names
        missing = [c for c in (self.url_column, self.captions_column) if c not in names]
        if missing:
            raise ValueError(
                f"{self.path}: the Parquet manifest lacks the column(s) "
                f"{', '.join(map(repr, missing))} (found {', '.join(map(repr, names[:10]))}); "
                "set url_column/captions_column in params"
            )
        self._rows_total = pf.metadata.num_rows

    def _records(self) -> Iterator[_Row | Reject]:
        """The manifest's rows, URL credentials masked in every key, detail and evidence."""
        for rec in self._raw_records():
            yield rec if isinstance(rec, _Row) else _redacted(rec)

    def _raw_records(self) -> Iterator[_Row | Reject]:
        if self._manifest is not None:
            yield from cast(Iterator[_Row | Reject], iter(self._manifest))
            return
        pf = pq.ParquetFile(self.path)
        n = 0
        for batch in pf.iter_batches(batch_size=4096):
            for obj in batch.to_pylist():
                n += 1
                yield self._parquet_row(n, obj)

    def _parquet_row(self, n: int, obj: dict[str, Any]) -> _Row | Reject:
        url = obj.get(self.url_column)
        key = f"{n}:{url.strip() if isinstance(url, str) else ''}"
        if not isinstance(url, str) or not url.strip():
            return Reject(
                self.name, key, Reason.MALFORMED_ROW, f"row {n}: {self.url_column!r} is empty"
            )
        caps, labels = obj.get(self.captions_column), obj.get(self.labels_column)
        caps = [] if caps is None else [caps] if isinstance(caps, str) else caps
        labels = [] if labels is None else labels
        if isinstance(labels, str):
            labels = (
                [s.strip() for s in labels.split(self.separator)] if self.separator else [labels]
            )
        if not _str_list(caps) or not _str_list(labels):
            return Reject(
                self.name,
                key,
                Reason.MALFORMED_ROW,
                f"row {n}: {self.captions_column!r} and {self.labels_column!r} must be "
                "strings or lists of strings",
            )
        captions = [c for c in caps if c.strip()]
        skip = (self.url_column, self.captions_column, self.labels_column)
        extra = {k: v for k, v in obj.items() if k not in skip}
        return _make_row(self.name, key, url.strip(), captions, labels, extra)

    # -- iteration ---------------------------------------------------------------------------

    def __iter__(self) -> Iterator[Record]:
        shards_dir = self.dir / "shards"
        self._store = ObjectStore(self.out_dir / "objects")
        by_shard, journals, self._cache = _load_outcomes(shards_dir)
        self._run = _begin_run(self.dir, by_shard, journals)
        self._fetcher = Fetcher(self.fetch_config, self.resolve)
        self._pool = ThreadPoolExecutor(self.params.concurrency, f"urls-{self.name}")
        self._inflight: dict[str, Future[dict[str, Any]]] = {}
        self._counts: Counter[str] = Counter()
        self._fetched = self._reused = 0
        self._lock = threading.Lock()
        self._max_run = 0
        pending: list[_Shard] = []
        n_shards = 0
        try:
            for index, chunk in enumerate(_chunks(self._records(), self.params.shard_size)):
                n_shards = index + 1
                pending.append(self._start_shard(shards_dir, index, chunk, by_shard, journals))
                while len(pending) > _LOOKAHEAD:
                    yield from self._finish_shard(shards_dir, pending.pop(0))
            while pending:
                yield from self._finish_shard(shards_dir, pending.pop(0))
            self._end_run(shards_dir, n_shards)
        finally:
            self._fetcher.stop.set()
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._fetcher.close()
            for shard in pending:
                shard.journal.close()

    def _start_shard(
        self,
        shards_dir: Path,
        index: int,
        chunk: list[_Row | Reject],
        by_shard: dict[int, list[dict[str, Any]]],
        journals: dict[int, dict[int, dict[str, Any]]],
    ) -> _Shard:
        file_rows = by_shard.get(index)
        prior = {r["row"]: r for r in file_rows or []}
        prior.update(journals.get(index, {}))
        shard = _Shard(index, [], file_rows, _Journal(shards_dir / _journal_name(index)))
        for rec in chunk:
            if isinstance(rec, Reject):
                shard.slots.append(_Slot(rec, self._reject_entry(rec)))
                continue
            why = self.withdrawn(rec.url) if self.withdrawn is not None else None
            if why is not None:  # never requested again
                gone = Reject(self.name, rec.key, Reason.WITHDRAWN, why, {"url": rec.url})
                shard.slots.append(_Slot(gone, self._reject_entry(gone)))
                continue
            old = prior.get(rec.row)
            if old is None or old["url"] != rec.url:
                old = self._cache.get(rec.url)
            reuse = self._reusable(old) if old is not None else None
            if reuse is not None:
                self._reused += 1
                entry = {**reuse, "row": rec.row, "source_key": rec.key}
                shard.slots.append(_Slot(rec, entry))
                continue
            fut = self._inflight.get(rec.url)
            if fut is None:
                attempts = old["attempts"] if old is not None else 0
                fut = self._pool.submit(self._download, rec.url, attempts)
                self._inflight[rec.url] = fut
            fut.add_done_callback(_journal_callback(shard.journal, rec))
            shard.slots.append(_Slot(rec, future=fut))
        return shard

    def _reusable(self, old: dict[str, Any]) -> dict[str, Any] | None:
        """The recorded outcome to keep for this URL, or None to download it (again)."""
        status = old["status"]
        if status == OK:
            sha, size = old["image_sha256"], old["bytes"]
            if size is not None and size > self.cap:
                return {
                    **old,
                    "status": TOO_LARGE,
                    "retryable": False,
                    "image_sha256": None,
                    "policy": self.policy,
                    "detail": f"{size} bytes (downloaded earlier) is over the cap of {self.cap}",
                }
            try:
                present = self._store.path(sha).stat().st_size == size
            except (OSError, TypeError):
                present = False
            return old if present else None
        if status in POLICY_REASONS and old["policy"] != self.policy:
            return None
        if is_retryable(status) and self.params.retry_failed and old["run"] < self._run:
            return None
        return old

    def _download(self, url: str, prior_attempts: int) -> dict[str, Any]:
        """Worker thread: fetch one URL, store the image, return its outcome (without row)."""
        r = self._fetcher.fetch(url)
        with self._lock:
            self._fetched += 1
        entry: dict[str, Any] = {
            "url": url,
            "status": r.status,
            "retryable": r.retryable,
            "http_status": r.http_status,
            "content_type": r.content_type,
            "bytes": None,
            "image_sha256": None,
            "final_url": r.final_url,
            "attempts": prior_attempts + r.attempts,
            "run": self._run,
            "policy": self.policy,
            "detail": r.detail,
        }
        if r.ok:
            assert r.data is not None
            stored = self._store.put_bytes(r.data)
            entry["bytes"], entry["image_sha256"] = stored.size, stored.sha256
        self._cache[url] = entry
        return entry

    def _reject_entry(self, rec: Reject) -> dict[str, Any]:
        url = rec.source_key.split(":", 1)[1] if ":" in rec.source_key else ""
        return {
            "row": _row_number(rec.source_key),
            "source_key": rec.source_key,
            "url": url,
            "status": str(rec.reason),
            "retryable": False,
            "http_status": None,
            "content_type": None,
            "bytes": None,
            "image_sha256": None,
            "final_url": None,
            "attempts": 0,
            "run": 0,
            "policy": "",
            "detail": rec.detail,
        }

    def _finish_shard(self, shards_dir: Path, shard: _Shard) -> Iterator[Record]:
        entries = []
        for slot in shard.slots:
            if slot.future is not None:
                rec = cast(_Row, slot.record)
                entry = {**slot.future.result(), "row": rec.row, "source_key": rec.key}
            else:
                assert slot.entry is not None
                entry = slot.entry
            record, entry = self._record(slot.record, entry, shard.journal)
            entries.append({c: entry.get(c) for c in _COLUMNS})
            self._counts[entry["status"]] += 1
            self._max_run = max(self._max_run, entry["run"])
            yield record
        shard.journal.close()
        path = shards_dir / _shard_name(shard.index)
        if shard.file_rows != entries or shard.journal.path.exists():
            write_parquet(path, pa.Table.from_pylist(entries, schema=DOWNLOAD_STATUS))
        with contextlib.suppress(FileNotFoundError):
            shard.journal.path.unlink()

    def _record(
        self, rec: _Row | Reject, entry: dict[str, Any], journal: _Journal
    ) -> tuple[Record, dict[str, Any]]:
        if isinstance(rec, Reject):
            return rec, entry
        if entry["status"] == OK:
            data = self._stored_bytes(entry)
            if data is None:  # damaged or vanished since it was checked: fetch it again
                with contextlib.suppress(OSError, TypeError):
                    self._store.path(entry["image_sha256"]).unlink()
                entry = {
                    **self._download(rec.url, entry["attempts"]),
                    "row": rec.row,
                    "source_key": rec.key,
                }
                journal.write(entry)
                data = self._stored_bytes(entry) if entry["status"] == OK else None
                if entry["status"] == OK and data is None:
                    raise OSError(f"{self._store.root}: cannot read back {entry['image_sha256']}")
            if data is not None:
                extra = dict(rec.extra)
                if entry["final_url"]:
                    extra["final_url"] = entry["final_url"]
                item = RawItem(self.name, rec.key, rec.captions, rec.labels, data=data, extra=extra)
                return item, entry
        evidence = {"url": rec.url, "attempts": entry["attempts"]}
        for k in ("http_status", "final_url"):
            if entry[k] is not None:
                evidence[k] = entry[k]
        reject = Reject(
            self.name, rec.key, cast(Reason, entry["status"]), entry["detail"], evidence
        )
        return reject, entry

    def _stored_bytes(self, entry: dict[str, Any]) -> bytes | None:
        try:
            data = self._store.path(entry["image_sha256"]).read_bytes()
        except OSError:
            return None
        return data if hashlib.sha256(data).hexdigest() == entry["image_sha256"] else None

    def _end_run(self, shards_dir: Path, n_shards: int) -> None:
        for p in sorted(shards_dir.glob("shard-*")) if shards_dir.is_dir() else []:
            if _shard_index(p) >= n_shards:  # the manifest got shorter
                p.unlink()
        tables = [pq.read_table(shards_dir / _shard_name(i)) for i in range(n_shards)]
        status = pa.concat_tables(tables) if tables else pa.Table.from_pylist([], DOWNLOAD_STATUS)
        write_parquet(self.dir / "status.parquet", status.cast(DOWNLOAD_STATUS))
        rows = sum(self._counts.values())
        ok = self._counts[OK]
        failed = {k: v for k, v in sorted(self._counts.items()) if k != OK}
        self.summary = {
            "rows": rows,
            "ok": ok,
            "failed": rows - ok,
            "success_rate": round(ok / rows, 6) if rows else None,
            "failed_by_reason": failed,
            "retryable_failed": sum(v for k, v in failed.items() if is_retryable(k)),
            "shards": n_shards,
            # site opt-out files read this run (once per host: robots.txt, tdmrep.json)
            "opt_out_files_read": dict(self._fetcher.optout.fetched),
        }
        write_json(self.dir / "summary.json", self.summary)
        write_json(self.dir / "state.json", {"complete": True, "run": self._max_run})
        log.info(
            "%s: %d URL rows, %d ok (%.1f%%); %d downloaded this run, %d outcomes reused; "
            "failures: %s",
            self.name,
            rows,
            ok,
            100.0 * ok / rows if rows else 0.0,
            self._fetched,
            self._reused,
            ", ".join(f"{k} {v}" for k, v in failed.items()) or "none",
        )


# -- helpers -------------------------------------------------------------------------------


def _journal_callback(journal: _Journal, rec: _Row) -> Any:
    def done(fut: Future[dict[str, Any]]) -> None:
        if fut.cancelled() or fut.exception() is not None:
            return
        journal.write({**fut.result(), "row": rec.row, "source_key": rec.key})

    return done


def _chunks(it: Iterator[_Row | Reject], size: int) -> Iterator[list[_Row | Reject]]:
    chunk: list[_Row | Reject] = []
    for rec in it:
        chunk.append(rec)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _shard_name(i: int) -> str:
    return f"shard-{i:05d}.parquet"


def _journal_name(i: int) -> str:
    return f"shard-{i:05d}.journal.jsonl"


def _shard_index(p: Path) -> int:
    try:
        return int(p.name.split(".", 1)[0].split("-", 1)[1])
    except (IndexError, ValueError):
        return -1


def _load_outcomes(
    shards_dir: Path,
) -> tuple[
    dict[int, list[dict[str, Any]]], dict[int, dict[int, dict[str, Any]]], dict[str, dict[str, Any]]
]:
    """Recorded outcomes: shard files, journals of unfinished shards, and the best per URL."""
    by_shard: dict[int, list[dict[str, Any]]] = {}
    journals: dict[int, dict[int, dict[str, Any]]] = {}
    if shards_dir.is_dir():
        for p in sorted(shards_dir.glob("shard-*.parquet")):
            try:
                by_shard[_shard_index(p)] = pq.read_table(p).cast(DOWNLOAD_STATUS).to_pylist()
            except (pa.ArrowException, OSError, ValueError) as e:
                log.warning("%s: unreadable shard record (%s); its URLs are checked again", p, e)
        for p in sorted(shards_dir.glob("shard-*.journal.jsonl")):
            rows: dict[int, dict[str, Any]] = {}
            with p.open(encoding="utf-8", errors="replace") as fh:
                for line in fh:
                    try:
                        entry = json.loads(line)
                    except json.JSONDecodeError:
                        continue  # the line a kill cut short
                    if isinstance(entry, dict) and set(_COLUMNS) <= set(entry):
                        rows[entry["row"]] = {c: entry[c] for c in _COLUMNS}
            journals[_shard_index(p)] = rows
        for p in [*shards_dir.glob(".*.tmp"), *shards_dir.parent.glob(".*.tmp")]:
            with contextlib.suppress(OSError):  # atomic writes a kill interrupted
                p.unlink()
    cache: dict[str, dict[str, Any]] = {}
    for entry in [e for rows in by_shard.values() for e in rows] + [
        e for rows in journals.values() for e in rows.values()
    ]:
        if entry["run"] == 0:
            continue
        best = cache.get(entry["url"])
        if best is None or (best["status"] != OK and entry["run"] >= best["run"]):
            cache[entry["url"]] = entry
    return by_shard, journals, cache


def _begin_run(
    folder: Path,
    by_shard: dict[int, list[dict[str, Any]]],
    journals: dict[int, dict[int, dict[str, Any]]],
) -> int:
    """This run's number: the interrupted run's when it did not complete, else the next."""
    try:
        state = json.loads((folder / "state.json").read_text())
        last, complete = int(state["run"]), bool(state["complete"])
    except (OSError, ValueError, KeyError, TypeError):
        runs = [e["run"] for rows in by_shard.values() for e in rows]
        runs += [e["run"] for rows in journals.values() for e in rows.values()]
        last, complete = max(runs, default=0), True
    run = last + 1 if complete else last
    write_json(folder / "state.json", {"complete": False, "run": run})
    return run


def _policy_digest(cfg: FetchConfig) -> str:
    """What outcomes depend on besides the server: a change retries policy failures."""
    facts = {
        "cap": cfg.max_bytes,
        "opt_out": sorted(cfg.opt_out_directives),
        "ua_token": cfg.ua_token,
        "allow_private": cfg.policy.allow_private,
        "allowed": sorted(str(n) for n in cfg.policy.allowed_networks),
        "max_redirects": cfg.max_redirects,
        "robots_txt": cfg.robots_txt,
        "tdmrep": cfg.tdmrep,
        "version": 1,
    }
    text = json.dumps(facts, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _detect_format(path: Path, fmt: UrlsFormat) -> Literal["csv", "jsonl", "parquet"]:
    if fmt != "auto":
        return fmt
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        return "csv"
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if suffix in (".parquet", ".pq"):
        return "parquet"
    raise ValueError(
        f"{path}: cannot tell the manifest format from the suffix {suffix!r}; name it .csv, "
        ".tsv, .jsonl, .ndjson or .parquet, or set format: csv|jsonl|parquet for this source"
    )


def _str_list(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


__all__ = ["DOWNLOAD_STATUS", "DownloadParams", "UrlsSource"]
