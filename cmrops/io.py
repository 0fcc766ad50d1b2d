"""Atomic file output: every artefact is written to a temporary file beside it, then renamed.

A stage killed half-way therefore never leaves a truncated Parquet, JSON or ``.npy`` that a
rerun would mistake for a finished output.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np


def _with_path(exc: OSError, path: Path) -> OSError:
    """``exc`` if it names a file, else a copy naming ``path`` (pyarrow and ``write`` raise
    without one); :func:`cmrops.errors.os_error_line` reads the errno from the chain."""
    if exc.filename is not None:
        return exc
    return type(exc)(exc.errno, exc.strerror or str(exc), os.fspath(path))


@contextlib.contextmanager
def _atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary path beside ``path``; when the block succeeds, the file there is fsynced and
    renamed over ``path``; when it fails, it is removed."""
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as e:
        raise _with_path(e, target) from e
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError):  # a full disk: say which output it was writing
            raise _with_path(e, target) from e
        raise


#: The name :func:`_atomic_path` gives a temporary file: ``.<target name>.<8 random>.tmp``.
_TEMPORARY = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")


def sweep_temporary(folder: str | os.PathLike[str], skip: frozenset[str] = frozenset()) -> int:
    """Delete the temporary files that writes killed mid-way (SIGKILL, a full disk) left under
    ``folder`` (sub-folders named in ``skip`` excepted); returns how many. Call it only while no
    other process writes there (the stage lock): a live write's temporary file looks the same."""
    n = 0
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if d not in skip]
        for name in filenames:
            if _TEMPORARY.match(name):
                with contextlib.suppress(OSError):  # gone already, or not ours to delete
                    os.unlink(os.path.join(dirpath, name))
                    n += 1
    return n


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file next to ``path``; on success fsync it and rename it over ``path``."""
    with _atomic_path(path) as tmp, open(tmp, mode) as fh:
        yield fh


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_output(path, "wb") as fh:
        fh.write(data)


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Deterministic JSON (sorted keys, fixed indent) so reruns produce identical bytes."""
    text = json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False)
    with atomic_output(path, "w") as fh:
        fh.write(text + "\n")


def write_npy(path: str | os.PathLike[str], array: np.ndarray) -> None:
    with atomic_output(path, "wb") as fh:
        np.save(fh, np.ascontiguousarray(array), allow_pickle=False)


@contextlib.contextmanager
def atomic_npy_memmap(
    path: str | os.PathLike[str], dtype: Any, shape: tuple[int, ...]
) -> Iterator[np.ndarray]:
    """A ``.npy`` written in place through a memory map (no copy of the whole array in memory),
    atomically: a temporary file beside ``path`` is filled, flushed, fsynced, then renamed. The
    bytes equal ``np.save`` of the same array."""
    with _atomic_path(path) as tmp:
        if int(np.prod(shape)) == 0:  # nothing to map: an empty array's header alone
            empty = np.zeros(shape, dtype)
            yield empty
            with open(tmp, "wb") as fh:
                np.save(fh, empty, allow_pickle=False)
        else:
            mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape)
            yield mm
            mm.flush()
            del mm


def read_npy(path: str | os.PathLike[str], mmap_mode: Any = None) -> np.ndarray:
    """A ``.npy`` array (memory-mapped with ``mmap_mode="r"``); never unpickles. A file that
    holds pickled objects or is no ``.npy`` at all is a ``ValueError`` that names the file."""
    try:
        return np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
    except (ValueError, EOFError) as e:
        raise ValueError(f"{os.fspath(path)}: refused, not a plain .npy array ({e})") from e


#: Rows per Parquet row group of every table cmrops writes: fixed, so the bytes of an output
#: depend on its rows only, never on how a stage happened to batch them.
ROW_GROUP_ROWS = 65_536
_PARQUET_OPTIONS: dict[str, Any] = {
    "compression": "zstd",
    "write_statistics": True,
    "store_schema": True,
}


def write_parquet(path: str | os.PathLike[str], table: Any) -> None:
    """Write a ``pyarrow.Table`` atomically, without wall-clock metadata (byte-stable reruns)."""
    with parquet_writer(path, table.schema) as writer:
        writer.write(table)


class ParquetStreamWriter:
    """Appends record batches / tables to one Parquet file in row groups of ``ROW_GROUP_ROWS``.

    Rows are buffered until a full row group is there, so the file is the same whatever sizes
    the batches come in; memory holds at most one row group. Made by :func:`parquet_writer`.
    """

    def __init__(self, writer: Any, schema: Any, row_group_rows: int) -> None:
        self._writer = writer
        self.schema = schema
        self._rows = row_group_rows
        self._pending: list[Any] = []
        self._pending_rows = 0
        self.rows_written = 0

    def write(self, data: Any) -> None:
        """Append a ``pyarrow.Table`` or ``RecordBatch`` (cast to the writer's schema)."""
        import pyarrow as pa

        table = data if isinstance(data, pa.Table) else pa.Table.from_batches([data])
        if table.schema != self.schema:
            table = table.select(self.schema.names).cast(self.schema)
        self._pending.append(table)
        self._pending_rows += table.num_rows
        while self._pending_rows >= self._rows:
            self._flush(self._rows)

    def write_rows(self, rows: list[dict[str, Any]]) -> None:
        """Append Python rows (dicts keyed by column)."""
        import pyarrow as pa

        if rows:
            self.write(pa.Table.from_pylist(rows, schema=self.schema))

    def _flush(self, n: int) -> None:
        import pyarrow as pa

        table = pa.concat_tables(self._pending)
        head, rest = table.slice(0, n), table.slice(n)
        self._writer.write_table(head.combine_chunks(), row_group_size=n)
        self.rows_written += head.num_rows
        self._pending = [rest] if rest.num_rows else []
        self._pending_rows = rest.num_rows

    def close(self) -> None:
        if self._pending_rows or self.rows_written == 0:
            import pyarrow as pa

            if not self._pending:
                self._pending = [self.schema.empty_table()]
            table = pa.concat_tables(self._pending).combine_chunks()
            self._writer.write_table(table, row_group_size=max(1, table.num_rows))
            self.rows_written += table.num_rows
            self._pending, self._pending_rows = [], 0
        self._writer.close()


@contextlib.contextmanager
def parquet_writer(
    path: str | os.PathLike[str], schema: Any, row_group_rows: int = ROW_GROUP_ROWS
) -> Iterator[ParquetStreamWriter]:
    """Stream a Parquet file to ``path`` atomically: batches go to a temporary file beside it,
    renamed over ``path`` only when the block ends without an error."""
    import pyarrow.parquet as pq

    with atomic_output(path, "wb") as fh:
        pq_writer = pq.ParquetWriter(fh, schema, **_PARQUET_OPTIONS)
        writer = ParquetStreamWriter(pq_writer, schema, row_group_rows)
        try:
            yield writer
            writer.close()
        except BaseException:
            # close it while its file is open: left to the garbage collector, it would write its
            # footer into the closed file ("write to closed file") after the real error
            with contextlib.suppress(Exception):
                pq_writer.close()
            raise


class HexKeySorter:
    """Sorts rows by a hex-string key (a content hash, so uniformly spread) in bounded memory.

    Rows are spilled, in batches, to one Arrow IPC file per leading hex digit of the key under
    ``folder``; :meth:`write_sorted` then loads one bucket at a time (about 1/16 of the rows),
    sorts it and streams it to a :class:`ParquetStreamWriter`. The caller owns ``folder``.
    """

    BUCKETS = "0123456789abcdef"

    def __init__(self, folder: Path, schema: Any, key: str, batch_rows: int = 2048) -> None:
        self.folder, self.schema, self.key = folder, schema, key
        self._batch_rows = batch_rows
        self._rows: dict[str, list[dict[str, Any]]] = {b: [] for b in self.BUCKETS}
        self._writers: dict[str, Any] = {}
        self._sinks: dict[str, Any] = {}
        folder.mkdir(parents=True, exist_ok=True)

    def add(self, row: dict[str, Any]) -> None:
        bucket = row[self.key][:1]
        if bucket not in self._rows:
            raise ValueError(f"{self.key} {row[self.key]!r} is not a lower-case hex string")
        rows = self._rows[bucket]
        rows.append(row)
        if len(rows) >= self._batch_rows:
            self._spill(bucket)

    def _spill(self, bucket: str) -> None:
        import pyarrow as pa

        rows = self._rows[bucket]
        if not rows:
            return
        if bucket not in self._writers:
            sink = pa.OSFile(str(self.folder / f"{bucket}.arrow"), "wb")
            self._sinks[bucket] = sink
            self._writers[bucket] = pa.ipc.new_stream(sink, self.schema)
        self._writers[bucket].write_table(pa.Table.from_pylist(rows, schema=self.schema))
        self._rows[bucket] = []

    def write_sorted(self, writer: ParquetStreamWriter) -> None:
        """Stream every row, sorted by the key (ascending, byte order), into ``writer``."""
        import pyarrow as pa
        import pyarrow.compute as pc

        for bucket in self.BUCKETS:
            self._spill(bucket)
        for bucket in self.BUCKETS:
            if bucket not in self._writers:
                continue
            self._writers.pop(bucket).close()
            self._sinks.pop(bucket).close()
            path = self.folder / f"{bucket}.arrow"
            with pa.OSFile(str(path), "rb") as fh:
                table = pa.ipc.open_stream(fh).read_all()
            writer.write(table.take(pc.sort_indices(table, [(self.key, "ascending")])))
            del table
            path.unlink()


def read_parquet(path: str | os.PathLike[str], columns: list[str] | None = None) -> Any:
    import pyarrow.parquet as pq

    return pq.read_table(path, columns=columns)


def iter_parquet(
    path: str | os.PathLike[str], columns: list[str] | None = None, batch_rows: int = 65_536
) -> Iterator[Any]:
    """The record batches of a Parquet file, ``batch_rows`` at a time (bounded memory)."""
    import pyarrow.parquet as pq

    with pq.ParquetFile(path) as pf:
        yield from pf.iter_batches(batch_size=batch_rows, columns=columns)


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """SHA-256 of a file; of a folder (a label folder such as MIRFlickr's annotations): of every
    file under it, in sorted relative-path order, each as its path, a NUL and its digest."""
    p = Path(path)
    if p.is_dir():
        h = hashlib.sha256()
        for f in sorted(q for q in p.rglob("*") if q.is_file()):
            h.update(f.relative_to(p).as_posix().encode("utf-8") + b"\0")
            h.update(bytes.fromhex(sha256_file(f, chunk)))
        return h.hexdigest()
    h = hashlib.sha256()
    with open(p, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def project_cache(project: str | os.PathLike[str], name: str) -> Path:
    """``<project>/.cmrops/cache/<name>``, created; a folder of the temp dir named after the
    project when that one cannot be written (a read-only checkout)."""
    d = Path(project) / ".cmrops" / "cache" / name
    try:
        d.mkdir(parents=True, exist_ok=True)
        if os.access(d, os.W_OK):
            return d
    except OSError:
        pass
    tag = hashlib.sha256(str(Path(project).resolve()).encode()).hexdigest()[:12]
    d = Path(tempfile.gettempdir()) / f"cmrops-{name}-{tag}"
    d.mkdir(parents=True, exist_ok=True)
    return d
