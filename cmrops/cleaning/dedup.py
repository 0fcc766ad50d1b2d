"""Duplicate images: identical bytes and pHash near-duplicates, grouped, one representative kept.

**Edges.** Two samples are *exact* duplicates when their image SHA-256 are equal (every member of
a SHA-256 class is linked to the class's first row). They are *near* duplicates when their pHash
is within ``radius`` (the Hamming engine's exact radius search) and, when configured, the
candidate is confirmed by their dHash within ``dhash_radius`` and by the cosine of their image
embeddings reaching ``min_image_cosine``. A confirmation only removes pHash candidates: pHash
collides on simple, low-texture pictures (flat backgrounds, one small object), where dHash and
an image embedding still tell the pictures apart.

**Candidate search** (:func:`search_pairs`) is partitioned: the query rows are cut into chunks,
each chunk searched against a :class:`cmrops.HammingIndex` of every row, the chunks run as tasks
of the current engine (:mod:`cmrops.engine`: in this process on the local engine, Ray tasks over
codes put in the object store once on Ray). Querying only some rows (new samples) against all of
them finds every pair that has a queried end, which is what an incremental rerun needs
(:mod:`cmrops.cleaning.candidates`).

**Large identical classes.** Rows equal in everything a near edge is judged on - pHash, dHash
and (when the cosine confirmation runs) the image embedding; identical image bytes always are -
are interchangeable in the near graph. :func:`interchangeable_keys` builds that key; a class of
more than :data:`~cmrops.cleaning.graph.MAX_CLASS` such rows is searched through its first row
and its other rows are linked to that row by one candidate each
(:func:`~cmrops.cleaning.graph.collapse_identical`), so 30,000 copies of one image cost 29,999
candidates, not 450 million; the groups are exactly those of every pair. Smaller classes keep
all their pairs.

**Groups** are the connected components of the edges (id = smallest row, i.e. the smallest
``sample_id`` on a table sorted by it). **Representative** of a group: among the members still
*eligible* (not dropped by an earlier rule), the largest ``width * height``, then the smallest
row. Every other member of a group that has a representative is a duplicate of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from cmrops.cleaning.graph import as_codes, components, hamming, pairs_within

if TYPE_CHECKING:
    from cmrops.engine import Engine


@dataclass(frozen=True)
class Edges:
    """Duplicate edges ``pairs[k] = (i, j)``, ``i < j``, with what was measured on each."""

    pairs: np.ndarray  # (m, 2) int64
    phash: np.ndarray  # (m,) int64 pHash distance
    dhash: np.ndarray  # (m,) int64 dHash distance (-1 when not measured)
    cosine: np.ndarray  # (m,) float64 image-embedding cosine (nan when not measured)
    exact: np.ndarray  # (m,) bool: identical image bytes

    @staticmethod
    def empty() -> Edges:
        z = np.zeros(0, np.int64)
        return Edges(np.zeros((0, 2), np.int64), z, z.copy(), np.zeros(0), np.zeros(0, bool))

    def __len__(self) -> int:
        return len(self.pairs)

    def select(self, mask: np.ndarray) -> Edges:
        return Edges(
            self.pairs[mask],
            self.phash[mask],
            self.dhash[mask],
            self.cosine[mask],
            self.exact[mask],
        )

    @staticmethod
    def concat(parts: Sequence[Edges]) -> Edges:
        parts = [p for p in parts if len(p)]
        if not parts:
            return Edges.empty()
        return Edges(
            np.concatenate([p.pairs for p in parts]),
            np.concatenate([p.phash for p in parts]),
            np.concatenate([p.dhash for p in parts]),
            np.concatenate([p.cosine for p in parts]),
            np.concatenate([p.exact for p in parts]),
        )


def interchangeable_keys(
    phash: np.ndarray, dhash: np.ndarray, embeddings: np.ndarray | None = None
) -> np.ndarray:
    """One opaque key per row (``numpy.void``): equal keys mean equal pHash, dHash and, when
    given, byte-identical embedding rows - rows no near-duplicate rule can tell apart."""
    n = len(phash)
    parts = [
        np.ascontiguousarray(phash, dtype=np.uint64).view(np.uint8).reshape(n, 8),
        np.ascontiguousarray(dhash, dtype=np.uint64).view(np.uint8).reshape(n, 8),
    ]
    if embeddings is not None:
        parts.append(np.ascontiguousarray(embeddings).view(np.uint8).reshape(n, -1))
    raw = np.ascontiguousarray(np.concatenate(parts, axis=1))
    return raw.view(np.dtype((np.void, raw.shape[1]))).reshape(n)


def exact_edges(sha256: Sequence[str] | np.ndarray) -> Edges:
    """Star edges (first row of each SHA-256 class, other row) for identical image bytes."""
    keys = np.asarray(sha256, dtype=object)
    n = len(keys)
    if n < 2:
        return Edges.empty()
    _, first, inverse = np.unique(keys.astype(str), return_index=True, return_inverse=True)
    head = first[inverse]
    rows = np.flatnonzero(head != np.arange(n))
    m = len(rows)
    pairs = np.stack([head[rows], rows], axis=1).astype(np.int64)
    z = np.zeros(m, np.int64)
    return Edges(pairs, z, z.copy(), np.full(m, np.nan), np.ones(m, bool))


def search_pairs(
    phash: np.ndarray,
    radius: int,
    *,
    queried: np.ndarray | None = None,
    engine: Engine | None = None,
    chunk: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """pHash pairs ``(i, j)``, ``i < j``, within ``radius`` that have at least one end in
    ``queried`` (a bool mask; None: every row, i.e. all pairs), sorted, and their distances.

    Every row queried (a first run): the core's all-pairs search, in this process. Else the
    queried rows are searched in chunks of ``chunk`` (default: the engine's ``search_chunk``)
    against all rows; on Ray, with more than one chunk, the chunks are engine tasks, else they
    run here one after another."""
    from cmrops import engine as engines

    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    eng = engine or engines.current()
    h = np.asarray(phash, dtype=np.uint64)
    n = len(h)
    is_queried = np.ones(n, bool) if queried is None else np.asarray(queried, bool)
    if is_queried.shape != (n,):
        raise ValueError(f"queried must be a bool mask of {n} rows, got {is_queried.shape}")
    rows = np.flatnonzero(is_queried)
    size = chunk or eng.params.search_chunk
    if len(rows) == n and (n <= size or eng.kind == "local"):
        # every row: the core's all-pairs multi-index search; each pair is judged on its own
        # afterwards (dHash, embeddings), so equal pHashes are not collapsed here
        return pairs_within(h, radius, max_class=0)
    chunks = [rows[lo : lo + size] for lo in range(0, len(rows), size)]
    if len(chunks) <= 1 or eng.kind == "local":  # in this process, with its thread budget
        from cmrops.threads import current

        shared = (as_codes(h), is_queried, int(radius), current())
        parts = [_search_chunk(shared, rows) for rows in chunks]
    else:  # engine tasks of one thread each, the codes shipped once
        shared = (as_codes(h), is_queried, int(radius), 1)
        parts = [p for _, p in eng.map_unordered(_search_chunk, chunks, shared=shared)]
    pairs = np.concatenate(parts) if parts else np.zeros((0, 2), np.int64)
    pairs = pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]
    return pairs, hamming(h[pairs[:, 0]], h[pairs[:, 1]])


def _search_chunk(shared: tuple[Any, ...], rows: np.ndarray) -> np.ndarray:
    """An engine task: pairs of the query ``rows`` with every row within the radius (a pair of
    two queried rows comes from its smaller row only)."""
    import cmrops

    codes, is_queried, radius, n_threads = shared
    if len(rows) == 0 or len(codes) == 0:
        return np.zeros((0, 2), np.int64)
    # the core picks multi-index hashing or blocked brute force for these sizes and radius
    found = cmrops.near_duplicates(
        np.ascontiguousarray(codes[rows]), radius, other=codes, n_threads=n_threads
    )
    q = rows.astype(np.int64)[found[:, 0]]
    ids = found[:, 1].astype(np.int64)
    keep = (ids != q) & (~is_queried[ids] | (q < ids))
    a, b = q[keep], ids[keep]
    return np.stack([np.minimum(a, b), np.maximum(a, b)], axis=1)


def near_edges(
    phash: np.ndarray,
    radius: int,
    *,
    dhash: np.ndarray | None = None,
    dhash_radius: int | None = None,
    embeddings: np.ndarray | None = None,
    min_image_cosine: float | None = None,
    candidates: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[Edges, dict[str, int]]:
    """pHash pairs within ``radius``, kept when the configured confirmations agree.

    ``candidates``: the pHash pairs and distances found already (:func:`search_pairs`, e.g.
    incrementally); None: all pairs are searched here. ``embeddings`` are L2-normalised rows
    aligned with ``phash`` (rows of NaN, e.g. samples without a feature row, never confirm).
    Returns the edges and how many candidates each step kept (``candidates``, ``after_dhash``,
    ``after_cosine``)."""
    pairs, pd = candidates if candidates is not None else pairs_within(phash, radius, max_class=0)
    counts = {"candidates": len(pairs)}
    dd = np.full(len(pairs), -1, np.int64)
    cos = np.full(len(pairs), np.nan)
    keep = np.ones(len(pairs), bool)
    if dhash_radius is not None:
        if dhash is None:
            raise ValueError("dhash_radius is set but no dHash column was given")
        dh = np.asarray(dhash, dtype=np.uint64)
        dd = hamming(dh[pairs[:, 0]], dh[pairs[:, 1]])
        keep &= dd <= dhash_radius
        counts["after_dhash"] = int(keep.sum())
    if min_image_cosine is not None and embeddings is not None:
        sel = np.flatnonzero(keep)
        a, b = embeddings[pairs[sel, 0]], embeddings[pairs[sel, 1]]
        c = np.einsum("ij,ij->i", a, b, dtype=np.float64)
        cos[sel] = c
        ok = np.zeros(len(pairs), bool)
        ok[sel] = np.nan_to_num(c, nan=-2.0) >= min_image_cosine
        keep &= ok
        counts["after_cosine"] = int(keep.sum())
    edges = Edges(pairs, pd, dd, cos, np.zeros(len(pairs), bool))
    return edges.select(keep), counts


def representatives(labels: np.ndarray, resolution: np.ndarray, eligible: np.ndarray) -> np.ndarray:
    """Per row, the representative row of its group (-1 when no member is eligible).

    Among eligible members: largest ``resolution``, then the smallest row."""
    n = len(labels)
    if n == 0:
        return np.zeros(0, np.int64)
    idx = np.arange(n)
    order = np.lexsort((idx, -np.asarray(resolution, np.int64), ~eligible, labels))
    lab_sorted = labels[order]
    starts = np.flatnonzero(np.r_[True, lab_sorted[1:] != lab_sorted[:-1]])
    best = np.full(n, -1, np.int64)
    heads = order[starts]
    best[lab_sorted[starts]] = np.where(eligible[heads], heads, -1)
    return best[labels]


@dataclass(frozen=True)
class Duplicates:
    """Groups of a duplicate graph and who duplicates whom."""

    labels: np.ndarray  # component id per row (smallest row)
    size: np.ndarray  # component size per row
    rep: np.ndarray  # representative row per row, -1 when none is eligible
    duplicate: np.ndarray  # bool: in a group of >= 2 with a representative, and not it


def resolve(n: int, edges: Edges, resolution: np.ndarray, eligible: np.ndarray) -> Duplicates:
    """Components of ``edges``, a representative per component, the duplicates to drop."""
    labels = components(n, edges.pairs)
    size = np.bincount(labels, minlength=n)[labels] if n else np.zeros(0, np.int64)
    rep = representatives(labels, resolution, eligible)
    duplicate = (size >= 2) & (rep >= 0) & (rep != np.arange(n))
    return Duplicates(labels, size, rep, duplicate)


def nearest_neighbour(n: int, edges: Edges, prefer: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row, its closest direct neighbour over ``edges`` (by pHash distance, then the
    ``prefer``-red row, e.g. the representative, then the smallest row) and that distance;
    -1 / -1 for rows without an edge."""
    nb = np.full(n, -1, np.int64)
    dist = np.full(n, -1, np.int64)
    if not len(edges):
        return nb, dist
    src = np.concatenate([edges.pairs[:, 0], edges.pairs[:, 1]])
    dst = np.concatenate([edges.pairs[:, 1], edges.pairs[:, 0]])
    d = np.concatenate([edges.phash, edges.phash])
    not_preferred = dst != prefer[src]
    order = np.lexsort((dst, not_preferred, d, src))
    s = src[order]
    first = order[np.r_[True, s[1:] != s[:-1]]]
    nb[src[first]] = dst[first]
    dist[src[first]] = d[first]
    return nb, dist


def dedup_images(
    phash: np.ndarray,
    resolution: np.ndarray,
    radius: int,
    *,
    sha256: Sequence[str] | None = None,
    dhash: np.ndarray | None = None,
    dhash_radius: int | None = None,
) -> Duplicates:
    """The dedup rule on its own (as the benchmark runs it): exact edges when ``sha256`` is given,
    pHash (+ dHash) near edges, groups, one representative each; every row eligible."""
    n = len(phash)
    near, _ = near_edges(phash, radius, dhash=dhash, dhash_radius=dhash_radius)
    parts = [near] if sha256 is None else [exact_edges(sha256), near]
    return resolve(n, Edges.concat(parts), resolution, np.ones(n, bool))
