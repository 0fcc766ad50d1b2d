"""Plain numpy references the Rust core is checked against. Slow and obviously correct."""

from __future__ import annotations

import numpy as np


def distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) int64 Hamming distances between uint64 code rows."""
    return np.bitwise_count(a[:, None, :] ^ b[None, :, :]).sum(axis=2, dtype=np.int64)


def knn(db: np.ndarray, ids: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    d = distances(q, db)
    out_d = np.empty((len(q), k), dtype=np.int32)
    out_i = np.empty((len(q), k), dtype=np.int64)
    for r in range(len(q)):
        order = np.lexsort((ids, d[r]))[:k]  # by distance, then by smaller id
        out_d[r], out_i[r] = d[r, order], ids[order]
    return out_d, out_i


def range_search(db: np.ndarray, ids: np.ndarray, q: np.ndarray, radius: int):
    d = distances(q, db)
    lims, dist, found = [0], [], []
    for r in range(len(q)):
        hit = np.flatnonzero(d[r] <= radius)
        order = hit[np.lexsort((ids[hit], d[r, hit]))]
        dist.extend(d[r, order].tolist())
        found.extend(ids[order].tolist())
        lims.append(len(dist))
    return (
        np.asarray(lims, dtype=np.int64),
        np.asarray(dist, dtype=np.int32),
        np.asarray(found, dtype=np.int64),
    )


def near_duplicates(codes: np.ndarray, radius: int, other: np.ndarray | None = None) -> np.ndarray:
    if other is None:
        d = distances(codes, codes)
        i, j = np.nonzero(np.triu(d <= radius, k=1))
    else:
        i, j = np.nonzero(distances(codes, other) <= radius)
    pairs = np.stack([i, j], axis=1).astype(np.int64).reshape(-1, 2)
    return pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]


def duplicate_groups(codes: np.ndarray, radius: int) -> np.ndarray:
    n = len(codes)
    parent = list(range(n))

    def find(x: int) -> int:
        while parent[x] != x:
            x = parent[x]
        return x

    for a, b in near_duplicates(codes, radius):
        ra, rb = find(int(a)), find(int(b))
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return np.asarray([find(i) for i in range(n)], dtype=np.int64)


def histogram(q, db, ql, dl) -> tuple[np.ndarray, np.ndarray]:
    n_bits = q.shape[1] * 64
    d = distances(q, db)
    rel = (ql.astype(bool).astype(np.int64) @ dl.astype(bool).astype(np.int64).T) > 0
    total = np.zeros((len(q), n_bits + 1), dtype=np.int64)
    relevant = np.zeros_like(total)
    for r in range(len(q)):
        total[r] = np.bincount(d[r], minlength=n_bits + 1)
        relevant[r] = np.bincount(d[r][rel[r]], minlength=n_bits + 1)
    return total, relevant


def first_relevant_ranks(d: np.ndarray, rel: np.ndarray, tie_orders) -> np.ndarray:
    """Mean over the given tie orders (each a permutation of the database rows, used to break
    equal distances) of the 1-based position of each query's first relevant item (NaN: none)."""
    out = np.full(len(d), np.nan)
    for q in range(len(d)):
        if not rel[q].any():
            continue
        pos = []
        for perm in tie_orders:
            order = sorted(range(d.shape[1]), key=lambda j, q=q, perm=perm: (d[q, j], perm[j]))
            pos.append(next(i for i, j in enumerate(order) if rel[q, j]) + 1)
        out[q] = float(np.mean(pos))
    return out


def hit_rates(d: np.ndarray, rel: np.ndarray, tie_orders, k: int) -> np.ndarray:
    """Mean over the tie orders of whether the top ``k`` holds a relevant item, per query."""
    out = np.zeros(len(d))
    for q in range(len(d)):
        got = []
        for perm in tie_orders:
            order = sorted(range(d.shape[1]), key=lambda j, q=q, perm=perm: (d[q, j], perm[j]))
            got.append(any(rel[q, j] for j in order[:k]))
        out[q] = float(np.mean(got))
    return out
