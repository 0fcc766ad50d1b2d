"""Packed binary codes: the one representation every cmrops stage searches.

Layout
------
A code of ``n_bits`` bits is a row of ``ceil(n_bits / 64)`` little-endian ``uint64`` words.
Bit ``j`` of the code is bit ``j % 64`` (least significant first) of word ``j // 64``; bits past
``n_bits`` in the last word are zero, so padding never changes a Hamming distance.

Viewed as bytes (``codes.view(np.uint8)``) this is exactly FAISS's binary layout (``IndexBinary*``
take ``uint8`` rows where bit ``j`` is bit ``j % 8`` of byte ``j // 8``), so converting between
the two is a zero-copy view whenever the byte count is a multiple of 8.
"""

from __future__ import annotations

import sys

import numpy as np
from numpy.typing import ArrayLike, NDArray

from cmrops import _core

__all__ = [
    "from_faiss",
    "hamming_histogram",
    "n_words",
    "pack_bits",
    "pack_labels",
    "to_faiss",
    "unpack_bits",
]

_LITTLE = sys.byteorder == "little"


def n_words(n_bits: int) -> int:
    """Number of ``uint64`` words that hold ``n_bits`` bits."""
    if n_bits < 1:
        raise ValueError(f"n_bits: must be at least 1, got {n_bits}")
    return (n_bits + 63) // 64


def _as_bool_bits(bits: ArrayLike, name: str) -> NDArray[np.bool_]:
    a = np.asarray(bits)
    if a.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D array of shape (n, n_bits), got shape {a.shape}")
    if a.shape[1] < 1:
        raise ValueError(f"{name}: n_bits (the second dimension) must be at least 1")
    if a.dtype == np.bool_:
        return a
    if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise TypeError(f"{name}: expected bool, integer or float bits, got dtype {a.dtype}")
    if a.size == 0:
        return a.astype(np.bool_)
    values = np.unique(a)
    if np.all(np.isin(values, (0, 1))):
        return a != 0
    if np.all(np.isin(values, (-1, 1))):
        return a > 0
    raise ValueError(
        f"{name}: values must be {{0, 1}}, bool or {{-1, +1}}; got {values[:5].tolist()}... "
        "(threshold real-valued outputs first, e.g. pack_bits(x > 0))"
    )


def pack_bits(bits: ArrayLike) -> NDArray[np.uint64]:
    """Pack a ``(n, n_bits)`` array of {0,1}, bool or ±1 (−1 → 0) into ``(n, ceil(n_bits/64))``
    ``uint64`` codes, bit ``j`` → bit ``j % 64`` of word ``j // 64``; the tail is zero-padded."""
    b = _as_bool_bits(bits, "bits")
    n, nb = b.shape
    words = n_words(nb)
    packed = np.packbits(b, axis=1, bitorder="little")  # (n, ceil(nb/8)) uint8
    pad = words * 8 - packed.shape[1]
    if pad:
        packed = np.concatenate([packed, np.zeros((n, pad), dtype=np.uint8)], axis=1)
    return _bytes_to_words(np.ascontiguousarray(packed))


def unpack_bits(codes: ArrayLike, n_bits: int) -> NDArray[np.uint8]:
    """Inverse of :func:`pack_bits`: ``(n, words)`` uint64 → ``(n, n_bits)`` uint8 of {0,1}."""
    c = _check_codes(codes, "codes")
    if n_bits < 1 or n_bits > c.shape[1] * 64:
        raise ValueError(
            f"n_bits: must be in 1..{c.shape[1] * 64} for codes with {c.shape[1]} words, "
            f"got {n_bits}"
        )
    as_bytes = _words_to_bytes(c)
    return np.unpackbits(as_bytes, axis=1, count=n_bits, bitorder="little")


def from_faiss(codes: ArrayLike) -> NDArray[np.uint64]:
    """FAISS ``uint8`` binary codes ``(n, d/8)`` → cmrops ``uint64`` codes (zero-copy when
    ``d`` is a multiple of 64, zero-padded otherwise)."""
    a = np.asarray(codes)
    if a.dtype != np.uint8 or a.ndim != 2:
        raise TypeError(
            f"codes: expected a 2-D uint8 array (FAISS layout), got {a.dtype} {a.shape}"
        )
    pad = (-a.shape[1]) % 8
    if pad:
        a = np.concatenate([a, np.zeros((a.shape[0], pad), dtype=np.uint8)], axis=1)
    return _bytes_to_words(np.ascontiguousarray(a))


def to_faiss(codes: ArrayLike, n_bits: int | None = None) -> NDArray[np.uint8]:
    """cmrops codes → FAISS ``uint8`` layout ``(n, n_bits/8)`` (a view when possible)."""
    c = _check_codes(codes, "codes")
    b = _words_to_bytes(c)
    if n_bits is None:
        return b
    if n_bits % 8 or not 0 < n_bits <= b.shape[1] * 8:
        raise ValueError(
            f"n_bits: FAISS needs a multiple of 8 within the code length, got {n_bits}"
        )
    return b[:, : n_bits // 8]


def pack_labels(labels: ArrayLike, n_labels: int | None = None) -> NDArray[np.uint64]:
    """Multi-hot labels ``(n, L)`` (bool/0-1) or single-label class ids ``(n,)`` → packed uint64."""
    a = np.asarray(labels)
    if a.ndim == 1:
        if not np.issubdtype(a.dtype, np.integer):
            raise TypeError(f"labels: 1-D labels must be integer class ids, got {a.dtype}")
        if a.size and a.min() < 0:
            raise ValueError("labels: class ids must be non-negative")
        width = n_labels if n_labels is not None else (int(a.max()) + 1 if a.size else 1)
        hot = np.zeros((a.shape[0], width), dtype=np.bool_)
        hot[np.arange(a.shape[0]), a] = True
        return pack_bits(hot)
    try:
        return pack_bits(labels)
    except (ValueError, TypeError) as e:
        raise type(e)(str(e).replace("bits:", "labels:", 1)) from None


def hamming_histogram(
    queries: NDArray[np.uint64],
    database: NDArray[np.uint64],
    query_labels: ArrayLike,
    database_labels: ArrayLike,
    n_threads: int | None = None,
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """For each query, how many database codes sit at each Hamming distance 0..n_bits, in total
    and among the relevant ones (sharing at least one label).

    Labels are multi-hot ``(n, L)`` arrays (bool or 0/1) or 1-D integer class ids. Returns
    ``(total, relevant)``, both ``int64`` of shape ``(n_queries, n_bits + 1)`` where ``n_bits`` is
    64 × the word count. Tie-aware mAP, mAP@k, P@K and precision/recall within a radius all follow
    from these two tables without sorting (see :mod:`cmrops.metrics`).
    """
    ql = np.asarray(query_labels)
    dl = np.asarray(database_labels)
    if ql.ndim == 1 and dl.ndim == 1:
        width = int(max(ql.max(initial=0), dl.max(initial=0))) + 1
        qp, dp = pack_labels(ql, width), pack_labels(dl, width)
    else:
        if ql.ndim != 2 or dl.ndim != 2 or ql.shape[1] != dl.shape[1]:
            raise ValueError(
                "query_labels, database_labels: expected multi-hot arrays with the same number of "
                f"labels, got shapes {ql.shape} and {dl.shape}"
            )
        qp, dp = pack_labels(ql), pack_labels(dl)
    if qp.shape[0] != np.shape(queries)[0]:
        raise ValueError(f"query_labels: {qp.shape[0]} rows for {np.shape(queries)[0]} queries")
    if dp.shape[0] != np.shape(database)[0]:
        raise ValueError(f"database_labels: {dp.shape[0]} rows for {np.shape(database)[0]} codes")
    if n_threads is None:  # this process's thread budget
        from cmrops.threads import current

        n_threads = current()
    return _core.hamming_histogram(queries, database, qp, dp, n_threads=n_threads)


def _check_codes(codes: ArrayLike, name: str) -> NDArray[np.uint64]:
    c = np.asarray(codes)
    if c.dtype != np.uint64:
        raise TypeError(f"{name}: expected uint64 packed codes, got dtype {c.dtype}")
    if c.ndim != 2:
        raise ValueError(f"{name}: expected shape (n, words), got {c.shape}")
    return c


def _bytes_to_words(b: NDArray[np.uint8]) -> NDArray[np.uint64]:
    words = b.view("<u8")
    return words if _LITTLE else words.astype(np.uint64)


def _words_to_bytes(c: NDArray[np.uint64]) -> NDArray[np.uint8]:
    c = np.ascontiguousarray(c)
    return (c if _LITTLE else c.astype("<u8")).view(np.uint8)
