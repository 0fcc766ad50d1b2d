"""Split grouping and leakage audit: near-duplicate pairs that cross the boundary of two sets.

**Groups** (:func:`near_duplicate_groups`): samples are linked when their image pHash is within
``image_radius`` or their caption SimHash within ``caption_radius`` (SimHash 0 - no caption
features - links nothing); a group is a connected component of the union of both graphs, so no
chain of near-duplicates can cross a split.

**Audit** (:func:`leakage`): every such pair whose two samples sit in two sets that must stay
apart (train/val/test pairwise; query vs database and query vs the training subset), counted per
set pair and kind, and listed up to a cap. A group-aware split has none; an imported split is
reported as it is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cmrops.cleaning.graph import components, pairs_within


@dataclass(frozen=True)
class Pairs:
    """Near-duplicate pairs of one kind (image or caption), rows ``i < j``."""

    kind: str
    pairs: np.ndarray  # (m, 2) int64
    distance: np.ndarray  # (m,) int64
    radius: int


def near_pairs(
    phash: np.ndarray, simhash: np.ndarray, image_radius: int, caption_radius: int
) -> list[Pairs]:
    """Image pHash pairs within ``image_radius`` and caption SimHash pairs within
    ``caption_radius`` (rows with SimHash 0 left out)."""
    ip, idist = pairs_within(phash, image_radius)
    rows = np.flatnonzero(np.asarray(simhash) != 0)
    sub, cdist = pairs_within(np.asarray(simhash)[rows], caption_radius)
    cp = rows[sub] if len(sub) else np.zeros((0, 2), np.int64)
    return [Pairs("image", ip, idist, image_radius), Pairs("caption", cp, cdist, caption_radius)]


def near_duplicate_groups(n: int, pairs: Sequence[Pairs]) -> np.ndarray:
    """Component (smallest row) of every row in the union of the pair graphs."""
    edges = [p.pairs for p in pairs if len(p.pairs)]
    return components(n, np.concatenate(edges) if edges else np.zeros((0, 2), np.int64))


def _crossing(p: Pairs, ma: np.ndarray, mb: np.ndarray) -> np.ndarray:
    """Per pair of ``p``: one sample in set ``a`` and the other in set ``b``."""
    i, j = p.pairs[:, 0], p.pairs[:, 1]
    return (ma[i] & mb[j]) | (mb[i] & ma[j])


def linked_rows(pairs: Sequence[Pairs], ma: np.ndarray, mb: np.ndarray) -> np.ndarray:
    """Bool mask of the rows of set ``a`` with a near-duplicate (a pair of any kind) in set
    ``b``: e.g. the query samples that have a near-duplicate in the database - the pairs the
    leakage audit counts, seen from the ``a`` side."""
    out = np.zeros(len(ma), bool)
    for p in pairs:
        if len(p.pairs):
            c = _crossing(p, ma, mb)
            i, j = p.pairs[c, 0], p.pairs[c, 1]
            out[i[ma[i]]] = True
            out[j[ma[j]]] = True
    return out


def leakage(
    pairs: Sequence[Pairs],
    membership: Mapping[str, np.ndarray],
    apart: Sequence[tuple[str, str]],
    sample_ids: Sequence[str],
    max_listed: int = 50,
) -> dict[str, Any]:
    """Near-duplicate pairs across each ``(a, b)`` of ``apart``; ``membership[name]`` is a bool
    mask of the rows in set ``name`` (sets may nest, e.g. train inside database)."""
    counts: dict[str, dict[str, int]] = {}
    listed: list[dict[str, Any]] = []
    total = 0
    for a, b in apart:
        key = f"{a}-{b}"
        counts[key] = {}
        ma, mb = membership[a], membership[b]
        for p in pairs:
            if not len(p.pairs):
                counts[key][p.kind] = 0
                continue
            i, j = p.pairs[:, 0], p.pairs[:, 1]
            hits = np.flatnonzero(_crossing(p, ma, mb))
            counts[key][p.kind] = len(hits)
            total += len(hits)
            for h in hits[: max(0, max_listed - len(listed))]:
                x, y = int(i[h]), int(j[h])
                if not ma[x]:
                    x, y = y, x
                listed.append(
                    {"sets": key, "kind": p.kind, "distance": int(p.distance[h]),
                     a: sample_ids[x], b: sample_ids[y]}
                )  # fmt: skip
    return {
        "radius": {p.kind: p.radius for p in pairs},
        "pairs": counts,
        "total": total,
        "listed": listed,
        "listed_cap": max_listed,
    }
