"""Near-duplicate graphs over 64-bit hashes: pairs within a radius, distances, components.

Pairs come from the Hamming engine (:func:`cmrops.near_duplicates`, exact multi-index hashing);
this module only adapts a column of ``uint64`` hashes to its ``(n, 1)`` code layout and turns
edge lists into connected components. Component ids follow the engine's
:func:`cmrops.duplicate_groups` convention: the smallest row index of the component, so on a
table sorted by ``sample_id`` the id is the row of the component's smallest ``sample_id``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

_EMPTY_PAIRS = np.zeros((0, 2), dtype=np.int64)


def as_codes(hashes: np.ndarray | Sequence[int]) -> np.ndarray:
    """A column of 64-bit hashes as the engine's ``(n, 1)`` C-contiguous ``uint64`` codes."""
    arr = np.asarray(hashes, dtype=np.uint64)
    if arr.ndim != 1:
        raise ValueError(f"expected a 1-d column of 64-bit hashes, got shape {arr.shape}")
    return np.ascontiguousarray(arr.reshape(-1, 1))


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Element-wise Hamming distance of two ``uint64`` arrays (``int64`` result)."""
    x = np.bitwise_xor(np.asarray(a, dtype=np.uint64), np.asarray(b, dtype=np.uint64))
    return np.bitwise_count(x).astype(np.int64)


def pairs_within(
    hashes: np.ndarray, radius: int, other: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Every pair of rows whose hashes are within ``radius`` (inclusive) and their distances.

    Within one column: ``(i, j)`` with ``i < j``. With ``other``: ``(i, j)``, ``i`` a row of
    ``hashes`` and ``j`` a row of ``other``. Pairs are sorted (the engine's order)."""
    import cmrops
    from cmrops.threads import current

    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    h = np.asarray(hashes, dtype=np.uint64)
    n_threads = current()  # this process's thread budget
    if other is None:
        if len(h) < 2:
            return _EMPTY_PAIRS.copy(), np.zeros(0, np.int64)
        pairs = cmrops.near_duplicates(as_codes(h), int(radius), n_threads=n_threads)
        o = h
    else:
        o = np.asarray(other, dtype=np.uint64)
        if len(h) == 0 or len(o) == 0:
            return _EMPTY_PAIRS.copy(), np.zeros(0, np.int64)
        pairs = cmrops.near_duplicates(
            as_codes(h), int(radius), other=as_codes(o), n_threads=n_threads
        )
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    return pairs, hamming(h[pairs[:, 0]], o[pairs[:, 1]])


def components(n: int, pairs: np.ndarray) -> np.ndarray:
    """Connected components of the graph on ``n`` nodes with edge list ``pairs`` (m, 2).

    Returns ``int64`` labels, each the smallest node index of its component. Vectorised
    min-label propagation with pointer jumping: O((n + m) * log(diameter)) numpy work."""
    labels = np.arange(n, dtype=np.int64)
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    if n == 0 or len(pairs) == 0:
        return labels
    a, b = pairs[:, 0], pairs[:, 1]
    if a.min() < 0 or max(a.max(), b.max()) >= n:
        raise ValueError(f"edge endpoints must lie in [0, {n})")
    while True:
        la, lb = labels[a], labels[b]
        low = np.minimum(la, lb)
        before = labels.copy()
        # hook each root of an edge's endpoints under the smaller label
        np.minimum.at(labels, la, low)
        np.minimum.at(labels, lb, low)
        while True:  # pointer jumping until every node points at its root
            jumped = labels[labels]
            if np.array_equal(jumped, labels):
                break
            labels = jumped
        if np.array_equal(labels, before):
            return labels


def group_sizes(labels: np.ndarray) -> np.ndarray:
    """Size of each node's component (``labels`` as returned by :func:`components`)."""
    counts = np.bincount(labels, minlength=len(labels))
    return counts[labels]


def size_histogram(labels: np.ndarray, min_size: int = 2) -> dict[str, int]:
    """``{size: number of components of that size}`` for components of at least ``min_size``."""
    if len(labels) == 0:
        return {}
    roots, counts = np.unique(labels, return_counts=True)
    del roots
    sizes, n = np.unique(counts[counts >= min_size], return_counts=True)
    return {str(int(s)): int(c) for s, c in zip(sizes, n, strict=True)}
