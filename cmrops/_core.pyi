"""Type stubs for ``cmrops._core``, the Rust extension (``rust_core/src/python.rs``).

Codes are C-contiguous ``uint64`` arrays of shape ``(n, n_bits // 64)``: bit ``j`` of a code is
bit ``j % 64`` of word ``j // 64`` (FAISS's binary layout when viewed as bytes). Every array
argument must already have the exact dtype and C order: a wrong dtype or a non-array raises
``TypeError``, a strided, misaligned or wrongly shaped array raises ``ValueError``; messages
name the argument. Integer arguments take any Python int: one out of range raises ``ValueError``
naming it. A result or working buffer that does not fit in memory raises ``MemoryError`` naming
its size (the call frees what it held; the interpreter carries on). Heavy calls release the
GIL. Results never depend on ``n_threads`` or on the SIMD path.
"""

from os import PathLike
from typing import final

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "CorruptIndexError",
    "HammingIndex",
    "duplicate_groups",
    "get_simd_path",
    "hamming_histogram",
    "near_duplicates",
    "set_simd_path",
    "simd_paths",
]

class CorruptIndexError(ValueError):
    """A saved HammingIndex file is truncated, corrupted, of a newer format version, or not an
    index file at all. The message names the path and what is wrong."""

@final
class HammingIndex:
    """Exact Hamming k-NN and radius search over packed binary codes.

    Ids default to ``0..n`` (stored implicitly, no memory per code); explicit ids must be
    unique and in ``0..=2**63 - 1`` (every non-negative ``int64``; -1 is FAISS's "no result").
    Every id accepted comes back unchanged from :meth:`ids`, :meth:`search`,
    :meth:`range_search` and :meth:`save` / :meth:`load`. Results are sorted by
    ``(distance, id)``: ties go to the smaller id.
    """

    def __new__(
        cls,
        codes: NDArray[np.uint64],
        ids: NDArray[np.int64] | None = None,
        n_threads: int | None = None,
    ) -> HammingIndex:
        """Index ``codes`` of shape ``(n, n_bits // 64)``, with ``ids`` of shape ``(n,)``.

        ``n_threads``: threads per call (``None``: every core).
        """

    def add(self, codes: NDArray[np.uint64], /, ids: NDArray[np.int64] | None = None) -> None:
        """Append codes of the index's width. Without ``ids`` they get largest id + 1, ...
        (0, 1, ... in an empty index). Raises ``ValueError`` (and changes nothing) on a width
        mismatch, an ids length mismatch, a negative or already present id, or when automatic
        ids would pass ``2**63 - 1`` (then pass explicit ids)."""

    def remove(self, ids: NDArray[np.int64], /) -> int:
        """Remove the codes with these ids; absent ids are ignored. Returns how many were
        removed. The remaining codes keep their order."""

    def search(
        self, queries: NDArray[np.uint64], /, k: int
    ) -> tuple[NDArray[np.int32], NDArray[np.int64]]:
        """Exact ``k`` nearest neighbours of each query: ``(distances, ids)``, both of shape
        ``(q, k)``, each row sorted by ``(distance, id)``.

        Raises ``ValueError`` when the index is empty, when ``k`` is not in ``1..len(self)``,
        or when the queries' width differs from the index's; ``MemoryError`` when the
        ``(q, k)`` result does not fit."""

    def range_search(
        self, queries: NDArray[np.uint64], /, radius: int
    ) -> tuple[NDArray[np.int64], NDArray[np.int32], NDArray[np.int64]]:
        """Every code within ``radius`` (inclusive) of each query, FAISS-style:
        ``(lims, distances, ids)`` where the hits of query ``i`` are
        ``distances[lims[i]:lims[i + 1]]`` / ``ids[...]``, sorted by ``(distance, id)``.
        ``lims`` has shape ``(q + 1,)``. ``radius`` must be in ``0..n_bits``. ``MemoryError``
        (naming the hits found) when the hits do not fit."""

    def __len__(self) -> int: ...
    @property
    def n_bits(self) -> int:
        """Bits per code (64 * n_words)."""

    @property
    def n_words(self) -> int:
        """uint64 words per code."""

    @property
    def n_threads(self) -> int:
        """Threads each call uses."""

    @property
    def memory_bytes(self) -> int:
        """Heap bytes held by the index (codes, plus ids only when they are explicit)."""

    def ids(self) -> NDArray[np.int64]:
        """Every id, in row order, shape ``(len(self),)``."""

    def save(self, path: str | PathLike[str], /) -> None:
        """Write the index atomically (temporary file in the same folder, then rename) in a
        little-endian, CRC-32-checked format. I/O failures raise ``OSError`` subclasses."""

    @staticmethod
    def load(path: str | PathLike[str], n_threads: int | None = None) -> HammingIndex:
        """Read an index written by :meth:`save`. Raises :class:`CorruptIndexError` for a
        truncated, corrupted, foreign or newer-version file, ``FileNotFoundError`` /
        ``PermissionError`` / ``OSError`` for I/O failures."""

    def __repr__(self) -> str: ...

def near_duplicates(
    codes: NDArray[np.uint64],
    radius: int,
    other: NDArray[np.uint64] | None = None,
    n_threads: int | None = None,
    max_pairs: int | None = None,
) -> NDArray[np.int64]:
    """Every pair of codes within ``radius`` (inclusive), shape ``(m, 2)``, sorted.

    Without ``other``: pairs ``(i, j)`` of rows of ``codes`` with ``i < j``. With ``other``
    (same width): pairs ``(i, j)`` with ``i`` a row of ``codes`` and ``j`` a row of ``other``.
    ``radius`` must be in ``0..n_bits``.

    The pairs can number ``n * (n - 1) / 2`` (one large group of near-identical codes, 16 bytes
    a pair): they are collected only while memory allows, else ``MemoryError`` naming how many
    were found and their size; with ``max_pairs``, more than that many raise ``ValueError``
    (naming ``max_pairs``) as soon as the search passes it. To group codes, use
    :func:`duplicate_groups`, which lists no pairs."""

def duplicate_groups(
    codes: NDArray[np.uint64], radius: int, n_threads: int | None = None
) -> NDArray[np.int64]:
    """Connected components of the "within ``radius``" graph: for each row, the smallest row
    index of its component. Shape ``(n,)``.

    Memory is linear in ``n`` whatever the groups: identical codes are merged first, and the
    pairs of the others go into a union-find as the search finds them (none is stored)."""

def hamming_histogram(
    queries: NDArray[np.uint64],
    database: NDArray[np.uint64],
    query_labels: NDArray[np.uint64],
    database_labels: NDArray[np.uint64],
    n_threads: int | None = None,
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Per-query Hamming-ranking histograms ``(total, relevant)``, each of shape
    ``(q, n_bits + 1)``: ``total[i, d]`` counts database codes at distance ``d`` from query
    ``i``, ``relevant[i, d]`` those whose labels share a bit with the query's.

    Labels are packed multi-hot ``uint64`` rows of one width for queries and database
    (``cmrops.pack_labels`` packs boolean matrices)."""

def simd_paths() -> list[str]:
    """The SIMD paths this CPU can run, slowest first: a subset of
    ``["portable", "scalar", "neon", "avx2", "avx512"]``, always starting with ``"portable"``
    (``u64::count_ones`` for the baseline target, no popcount instruction). ``"scalar"`` is the
    same code with the hardware popcount (x86-64 with POPCNT; every aarch64), ``"neon"``
    aarch64's vector path, ``"avx2"`` / ``"avx512"`` (VPOPCNTDQ) x86-64's."""

def get_simd_path() -> str:
    """The SIMD path in use (the best available, or ``CMROPS_SIMD`` if it names one; read once,
    at first use)."""

def set_simd_path(name: str, /) -> None:
    """Use the named SIMD path process-wide from now on. Raises ``ValueError`` for an unknown
    name or a path this CPU cannot run. Every path gives identical results."""
