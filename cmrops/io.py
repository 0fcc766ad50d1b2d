"""Atomic file output: every artefact is written to a temporary file beside it, then renamed.

A stage killed half-way therefore never leaves a truncated Parquet, JSON or ``.npy`` that a
rerun would mistake for a finished output.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file next to ``path``; on success fsync it and rename it over ``path``."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


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
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
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
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def read_npy(path: str | os.PathLike[str]) -> np.ndarray:
    return np.load(path, allow_pickle=False)


def write_parquet(path: str | os.PathLike[str], table: Any) -> None:
    """Write a ``pyarrow.Table`` atomically, without wall-clock metadata (byte-stable reruns)."""
    import pyarrow.parquet as pq

    with atomic_output(path, "wb") as fh:
        pq.write_table(table, fh, compression="zstd", write_statistics=True, store_schema=True)


def read_parquet(path: str | os.PathLike[str]) -> Any:
    import pyarrow.parquet as pq

    return pq.read_table(path)


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()
