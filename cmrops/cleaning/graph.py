"""Near-duplicate graphs over 64-bit hashes: pairs within a radius, distances, components.

Pairs come from the Hamming engine (:func:`cmrops.near_duplicates`, exact multi-index hashing);
this module only adapts a column of ``uint64`` hashes to its ``(n, 1)`` code layout and turns
edge lists into connected components. Component ids follow the engine's
:func:`cmrops.duplicate_groups` convention: the smallest row index of the component, so on a
table sorted by ``sample_id`` the id is the row of the component's smallest ``sample_id``.

**Large identical classes** (:func:`collapse_identical`): ``k`` rows with one key (the same hash,
or the same image bytes) are ``k (k - 1) / 2`` pairs - 450 million, 7.2 GB, for 30,000 copies
of one image. A class of more than :data:`MAX_CLASS` rows is therefore searched through its
first row only and its other rows are linked to that row by one pair each: the components (the
groups) are exactly those of all pairs, while the pair lists stay linear in the rows. Classes of
at most :data:`MAX_CLASS` rows keep all their pairs, so ordinary data sets get the very same
pairs as a search of every row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

_EMPTY_PAIRS = np.zeros((0, 2), dtype=np.int64)

#: Rows sharing one key beyond which a class is searched through its first row only.
MAX_CLASS = 256


@dataclass(frozen=True)
class Collapsed:
    """Which rows to search, and the pairs that stand for the collapsed classes."""

    keep: np.ndarray  # (n,) bool: the row is searched
    star: np.ndarray  # (m, 2) int64 (first row, other row) of every collapsed class, sorted
    classes: int  # collapsed classes
    rows: int  # rows in them
    max_class: int  # classes above this size were collapsed

    def report(self) -> dict[str, int]:
        """What was collapsed, for a stage's metrics (empty when nothing was)."""
        if not self.classes:
            return {}
        return {"classes": self.classes, "rows": self.rows, "max_class": self.max_class}


def collapse_identical(
    keys: np.ndarray | Sequence[object], max_class: int | None = None
) -> Collapsed:
    """Classes of equal ``keys`` with more than ``max_class`` rows (default :data:`MAX_CLASS`,
    read at the call): every row but each class's first (smallest) row is left out of the
    search, and linked to the first by a ``(first, row)`` pair."""
    limit = MAX_CLASS if max_class is None else max_class
    k = np.asarray(keys)
    n = len(k)
    nothing = Collapsed(np.ones(n, bool), _EMPTY_PAIRS.copy(), 0, 0, limit)
    if n <= limit:
        return nothing
    if k.dtype == object:
        k = k.astype(str)
    _, first, inverse, counts = np.unique(
        k, return_index=True, return_inverse=True, return_counts=True
    )
    inverse = inverse.reshape(-1)
    big = counts[inverse] > limit
    if not big.any():
        return nothing
    head = first[inverse]
    rows = np.arange(n)
    members = np.flatnonzero(big & (head != rows))
    star = np.stack([head[members], members], axis=1).astype(np.int64)
    star = star[np.lexsort((star[:, 1], star[:, 0]))]
    return Collapsed(
        keep=~big | (head == rows),
        star=star,
        classes=int(np.count_nonzero(counts > limit)),
        rows=int(big.sum()),
        max_class=limit,
    )


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
    hashes: np.ndarray,
    radius: int,
    other: np.ndarray | None = None,
    *,
    max_class: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Every pair of rows whose hashes are within ``radius`` (inclusive) and their distances.

    Within one column: ``(i, j)`` with ``i < j``, except that a class of more than ``max_class``
    (default :data:`MAX_CLASS`) equal hashes contributes ``(first row, row)`` pairs instead of
    all of its own (:func:`collapse_identical`: the components are the same; 0 lists every pair,
    for callers that judge each pair on more than the hash). With ``other``: ``(i, j)``, ``i`` a
    row of ``hashes`` and ``j`` a row of ``other``. Pairs are sorted (the engine's order)."""
    import cmrops
    from cmrops.threads import current

    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    h = np.asarray(hashes, dtype=np.uint64)
    n_threads = current()  # this process's thread budget
    if other is None:
        if len(h) < 2:
            return _EMPTY_PAIRS.copy(), np.zeros(0, np.int64)
        collapsed = collapse_identical(h, max_class) if max_class != 0 else None
        if collapsed is not None and collapsed.classes:
            rows = np.flatnonzero(collapsed.keep)
            found = cmrops.near_duplicates(as_codes(h[rows]), int(radius), n_threads=n_threads)
            pairs = np.concatenate([rows[found], collapsed.star])
            pairs = pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]
        else:
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
