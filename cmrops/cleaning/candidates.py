"""Incremental pHash candidate search: a rerun queries only the samples it has not seen.

The cache (one ``.npz`` in a folder the caller names, outside DVC's outputs) holds the samples of
the last search - ``sample_id`` and pHash, sorted by id - and every pHash pair within ``radius``
among them. On the next run a sample is *old* when its id is cached with the same pHash; the
pairs of two old samples are taken from the cache (pairs of samples that are gone are dropped),
and only the new samples are queried against an index of all samples
(:func:`cmrops.cleaning.dedup.search_pairs`). Radius search is symmetric, so the union is
exactly the all-vs-all result, in the same (sorted) order.

The cache holds the pHash candidates *before* any confirmation (dHash, embedding cosine): those
are recomputed every run from the current columns, so only ``radius`` keys the cache. A cache
that is unreadable, corrupt (zip CRC, SHA-256 of its arrays), of another version or radius, or
inconsistent (a pair beyond the radius) is ignored and rewritten, never trusted.
"""

from __future__ import annotations

import hashlib
import io as _io
import logging
import time
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cmrops import io
from cmrops.cleaning.dedup import search_pairs
from cmrops.cleaning.graph import hamming

if TYPE_CHECKING:
    from cmrops.engine import Engine

log = logging.getLogger(__name__)

CACHE_VERSION = 1
CACHE_FILE = "phash-pairs.npz"


@dataclass(frozen=True)
class _Cached:
    ids: np.ndarray  # (n,) str, sorted, unique
    phash: np.ndarray  # (n,) uint64
    pairs: np.ndarray  # (m, 2) int64 rows of ids, i < j


def _digest(radius: int, ids: np.ndarray, phash: np.ndarray, pairs: np.ndarray) -> str:
    h = hashlib.sha256(f"v{CACHE_VERSION}:r{radius}:".encode())
    for arr in (ids, phash, pairs):
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def _load(path: Path, radius: int) -> tuple[_Cached | None, str]:
    """The cache at ``path`` when it is sound and of this radius, else None and why."""
    if not path.is_file():
        return None, "none"
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in ("version", "radius", "ids", "phash", "pairs", "digest")}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        return None, f"unreadable ({type(e).__name__})"
    if int(data["version"]) != CACHE_VERSION:
        return None, "another version"
    if int(data["radius"]) != radius:
        return None, "another radius"
    ids, phash, pairs = data["ids"], data["phash"], data["pairs"]
    if str(data["digest"]) != _digest(radius, ids, phash, pairs):
        return None, "corrupt (digest)"
    n = len(ids)
    ok = (
        ids.ndim == 1
        and ids.dtype.kind == "U"
        and phash.dtype == np.uint64
        and phash.shape == (n,)
        and pairs.dtype == np.int64
        and pairs.ndim == 2
        and pairs.shape[1] == 2
        and bool(np.all(ids[1:] > ids[:-1]))
    )
    if ok and len(pairs):
        a, b = pairs[:, 0], pairs[:, 1]
        ok = bool(a.min() >= 0 and b.max() < n and np.all(a < b))
        ok = ok and bool(np.all(hamming(phash[a], phash[b]) <= radius))
    if not ok:
        return None, "inconsistent"
    return _Cached(ids, phash, pairs), "used"


def _save(path: Path, radius: int, ids: np.ndarray, phash: np.ndarray, pairs: np.ndarray) -> None:
    buf = _io.BytesIO()
    np.savez(
        buf,
        version=np.int64(CACHE_VERSION),
        radius=np.int64(radius),
        ids=ids,
        phash=phash,
        pairs=pairs,
        digest=np.array(_digest(radius, ids, phash, pairs)),
    )
    io.write_bytes(path, buf.getvalue())


def near_candidates(
    sample_ids: Sequence[str],
    phash: np.ndarray,
    radius: int,
    *,
    cache_dir: Path | None,
    engine: Engine | None = None,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Every pHash pair ``(i, j)``, ``i < j``, of rows within ``radius``, sorted, with its
    distance - what :func:`cmrops.cleaning.dedup.search_pairs` finds over all rows - reusing
    and updating the cache in ``cache_dir`` (None: no cache). ``sample_ids`` must be sorted and
    unique. Also returns what was done: ``queried``, ``reused_pairs``, ``index_size``,
    ``cache`` (``used`` or why not), ``seconds``."""
    t0 = time.perf_counter()
    ids = np.asarray(list(sample_ids), dtype=str)
    h = np.asarray(phash, dtype=np.uint64)
    n = len(ids)
    if len(ids) > 1 and not bool(np.all(ids[1:] > ids[:-1])):
        raise ValueError("sample_ids must be sorted and unique")
    path = cache_dir / CACHE_FILE if cache_dir is not None else None
    cached, status = _load(path, radius) if path is not None else (None, "off")
    old = np.zeros(n, bool)
    reused = np.zeros((0, 2), np.int64)
    if cached is not None and len(cached.ids):
        pos = np.minimum(np.searchsorted(ids, cached.ids), n - 1)
        same = (ids[pos] == cached.ids) & (h[pos] == cached.phash)
        old[pos[same]] = True
        both = same[cached.pairs[:, 0]] & same[cached.pairs[:, 1]]
        reused = pos[cached.pairs[both]]
    if status not in ("none", "off", "used"):
        log.warning("near-duplicate cache %s ignored (%s): searching all samples", path, status)
    fresh, _ = search_pairs(h, radius, queried=~old, engine=engine)
    pairs = np.concatenate([reused, fresh])
    pairs = pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]
    dist = hamming(h[pairs[:, 0]], h[pairs[:, 1]])
    unchanged = cached is not None and int(old.sum()) == n == len(cached.ids)
    if path is not None and not unchanged:
        _save(path, radius, ids, h, pairs)
    stats = {
        "queried": int(n - old.sum()),
        "reused_pairs": len(reused),
        "index_size": n,
        "cache": status,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    return pairs, dist, stats
