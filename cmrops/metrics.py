"""Retrieval metrics for Hamming ranking and float baselines: pure functions, no I/O.

Ranking a database by Hamming distance only sorts it into ``n_bits + 1`` buckets of *tied* items,
so every ranking metric follows from two tables per query (``cmrops.hamming_histogram``):
``total[q, d]`` database items at distance ``d`` and ``relevant[q, d]`` relevant ones among them.
The functions here compute them from the tables with vectorised numpy over ``(q, n_bits + 1)``:
no sort, no loop over queries.

Ties
----
Items at equal distance have no order. Two rules are computed:

* **tie-aware** (the default, the "honest" value): the expected value of the metric when each
  block of tied items is put in a uniformly random order (McSherry & Najork 2008, "Computing
  information retrieval performance measures efficiently in the presence of tied scores").
  For a block of ``t`` items, ``r`` of them relevant, after ``N`` items of which ``R_b`` are
  relevant, position ``N + i`` holds a relevant item with probability ``r / t``, and given that,
  the other ``r - 1`` relevant items of the block fall among its ``i - 1`` predecessors at rate
  ``(r - 1) / (t - 1)``. So the expected sum of precision at the block's relevant positions is::

      E = r/t * sum_{i=1..t} (R_b + 1 + (i - 1)(r - 1)/(t - 1)) / (N + i)
        = r/t * [ (R_b + 1) dH + (r - 1)/(t - 1) * (t - (N + 1) dH) ],   dH = H(N + t) - H(N)

  with ``H`` the harmonic numbers (the second term is 0 when ``t = 1``). AP is the sum over
  blocks divided by the query's relevant count. P@K, R@K and NDCG@K are linear in the items, so a
  cut-off ``K`` inside a block contributes ``(K - N) r / t`` relevant items (NDCG: ``r / t`` at each
  of the block's positions up to ``K``). mAP@k divides by the (random) number ``X`` of relevant
  items in the top ``k``, so it is averaged over ``X`` exactly: ``X`` is hypergeometric
  (``m = k - N`` of the cut block's ``t`` items are taken, ``r`` relevant), and given ``X = x``
  the block's share of precision is the same closed form with ``(t, r) -> (m, x)``. The sum
  over ``x`` skips only values whose total probability is below 1e-16 (Hoeffding's bound for
  sampling without replacement), so the result is exact to float precision.
* **database order** (what most papers compute, a stable sort by distance): ties are broken by
  database row, exactly as :meth:`cmrops.HammingIndex.search` orders results. Computed exactly
  from the per-query distances in blocks of queries: a linear-time radix sort of the small-integer
  distances gives each relevant item's position.

Definitions
-----------
* relevance: a database item is relevant to a query when their labels share at least one label
  (multi-hot ``(n, L)`` labels) or, for 1-D integer class ids, when the ids are equal. Unlabelled
  image-text data use the *paired* item only: class id = sample (:func:`pair_labels`).
* AP over the whole ranking: mean of precision at the relevant positions. **A query with no
  relevant item has AP 0** (it is kept in the mean, so a model is not rewarded for queries nobody
  can answer); :meth:`RankingMetrics.summary` also reports how many such queries there were and
  the mAP over the others.
* mAP@k: the definition of the hashing literature (DPSH/HashNet ``CalcTopMap``): the mean of
  precision at the relevant positions within the top ``k``, i.e. divided by the number of relevant
  items retrieved in the top ``k``; 0 when there is none.
* P@K = relevant in top K / K; R@K = relevant in top K / all relevant (0 without any);
  NDCG@K with binary gains and ``1 / log2(position + 1)`` discounts, the ideal DCG putting
  ``min(R, K)`` relevant items first (0 without any relevant item).
* rank of the first relevant item (caption retrieval with pair relevance, Flickr8k/30k style):
  its 1-based position; R@K (success) = the share of queries with a relevant item in the top K
  (with one relevant item per query, as under pair relevance, R@K = recall@K); median and mean
  rank over the queries that have a relevant item. Tie-aware, a block of ``t`` tied items holding
  ``r`` relevant ones puts the first of them at expected position ``before + (t + 1) / (r + 1)``,
  and the chance that none of the ``m = K - before`` items taken from the cut block is relevant
  is ``C(t - r, m) / C(t, m)``; the median and mean are those of the per-query expected ranks.
* within radius ``rho`` (Hamming ranking as a lookup): precision = relevant within ``rho`` /
  retrieved within ``rho``, recall = relevant within ``rho`` / all relevant, per query, averaged
  over the queries with at least one relevant item (precision over those that retrieve
  something; ``coverage`` is the fraction that do).

Cut-offs must lie in ``1..database size``; :func:`clip_cutoffs` maps requested values onto that.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from cmrops.codes import hamming_histogram, pack_labels

__all__ = [
    "RankingMetrics",
    "average_precision",
    "average_precision_at",
    "clip_cutoffs",
    "cosine_metrics",
    "database_order_metrics",
    "first_relevant_rank",
    "hamming_metrics",
    "histograms",
    "hit_at",
    "ndcg_at",
    "pair_labels",
    "precision_at",
    "radius_curve",
    "recall_at",
]

# Support points of the hypergeometric sums (mAP@k) handled per numpy pass (memory bound).
_SUPPORT_CHUNK = 1 << 18
# Probability mass of the hypergeometric tails left out of the mAP@k expectation.
_TAIL_MASS = 1e-16
# Distance / similarity matrix cells per block of queries (database order, float baseline).
_BLOCK_CELLS = 1 << 22
# 1-D class ids with more classes than this are matched sparsely, not one-hot (pair relevance).
_ONE_HOT_MAX = 256


# --------------------------------------------------------------------------- tables


def _readonly(a: NDArray[Any]) -> NDArray[Any]:
    a.setflags(write=False)
    return a


@functools.lru_cache(maxsize=4)
def _harmonic(n: int) -> NDArray[np.float64]:
    """``H[i] = sum_{j=1..i} 1/j`` for ``i = 0..n``."""
    return _readonly(
        np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, n + 1, dtype=np.float64))])
    )


@functools.lru_cache(maxsize=4)
def _discount(n: int) -> NDArray[np.float64]:
    """``D[i] = sum_{j=1..i} 1/log2(j + 1)`` (DCG of ``i`` relevant items in a row)."""
    j = np.arange(1, n + 1, dtype=np.float64)
    return _readonly(np.concatenate([[0.0], np.cumsum(1.0 / np.log2(j + 1.0))]))


@functools.lru_cache(maxsize=4)
def _log_factorial(n: int) -> NDArray[np.float64]:
    """``log(i!)`` for ``i = 0..n``, each term from ``math.lgamma`` (no accumulated error)."""
    return _readonly(np.array([math.lgamma(i + 1.0) for i in range(n + 1)], dtype=np.float64))


# --------------------------------------------------------------------------- tie-aware, from tables


@dataclass(frozen=True)
class _Blocks:
    """Per query and distance: the block sizes and what comes before each block."""

    total: NDArray[np.int64]  # (q, B) items per block
    relevant: NDArray[np.int64]  # (q, B) relevant items per block
    before: NDArray[np.int64]  # (q, B) items ranked before the block
    rel_before: NDArray[np.int64]  # (q, B) relevant items ranked before the block
    n_relevant: NDArray[np.int64]  # (q,)
    n: int  # database size

    def cut(self, k: int) -> tuple[NDArray[np.intp], ...]:
        """The block holding position ``k`` of each query, and its row of each table."""
        rows = np.arange(self.total.shape[0])
        c = (self.before + self.total < k).sum(axis=1)
        return (
            rows,
            c,
            self.before[rows, c],
            self.rel_before[rows, c],
            self.total[rows, c],
            self.relevant[rows, c],
        )


def _blocks(total: ArrayLike, relevant: ArrayLike) -> _Blocks:
    t = np.asarray(total)
    r = np.asarray(relevant)
    if t.ndim != 2 or t.shape != r.shape:
        raise ValueError(
            f"total, relevant: expected two (n_queries, n_bits + 1) tables of one shape, "
            f"got {t.shape} and {r.shape}"
        )
    if not (np.issubdtype(t.dtype, np.integer) and np.issubdtype(r.dtype, np.integer)):
        raise TypeError(f"total, relevant: expected integer counts, got {t.dtype}, {r.dtype}")
    t = t.astype(np.int64, copy=False)
    r = r.astype(np.int64, copy=False)
    if t.size and (r.min() < 0 or np.any(r > t)):
        raise ValueError("relevant: counts must satisfy 0 <= relevant <= total")
    sizes = t.sum(axis=1)
    if sizes.size and np.any(sizes != sizes[0]):
        raise ValueError("total: every query must rank the same database (row sums differ)")
    n = int(sizes[0]) if sizes.size else 0
    cum_t = np.cumsum(t, axis=1)
    cum_r = np.cumsum(r, axis=1)
    n_rel = cum_r[:, -1] if t.shape[1] else np.zeros(t.shape[0], dtype=np.int64)
    return _Blocks(t, r, cum_t - t, cum_r - r, n_rel, n)


def _check_k(k: int, n: int, name: str = "k") -> int:
    if isinstance(k, bool) or not isinstance(k, int | np.integer):
        raise TypeError(f"{name}: expected an integer cut-off, got {k!r}")
    if not 1 <= k <= n:
        raise ValueError(f"{name}: must be in 1..{n} (the database size), got {k} (clip_cutoffs)")
    return int(k)


def _precision_sum(
    before: NDArray[Any],
    rel_before: NDArray[Any],
    t: NDArray[Any],
    r: NDArray[Any],
    h: NDArray[Any],
) -> NDArray[np.float64]:
    """Expected sum of precision at the relevant positions of a block of ``t`` tied items (``r``
    relevant) ranked after ``before`` items (``rel_before`` relevant): the closed form above."""
    return _share(before, rel_before, t, r, h[before + t] - h[before])


def _share(
    before: NDArray[Any],
    rel_before: NDArray[Any],
    t: NDArray[Any],
    r: NDArray[Any],
    dh: NDArray[Any],
) -> NDArray[np.float64]:
    """:func:`_precision_sum` given ``dh = H(before + t) - H(before)``."""
    pair = np.where(t > 1, (r - 1) / np.maximum(t - 1, 1), 0.0)
    inner = (rel_before + 1) * dh + pair * (t - (before + 1) * dh)
    return np.where(r > 0, r / np.maximum(t, 1) * inner, 0.0)


def _ratio(num: NDArray[Any], den: NDArray[Any]) -> NDArray[np.float64]:
    """``num / den`` with 0 where ``den`` is 0."""
    num = np.asarray(num, dtype=np.float64)
    return np.divide(num, den, out=np.zeros_like(num), where=np.asarray(den) > 0)


def average_precision(total: ArrayLike, relevant: ArrayLike) -> NDArray[np.float64]:
    """Tie-aware AP of each query over the whole ranking (0 for a query with no relevant item)."""
    b = _blocks(total, relevant)
    e = _precision_sum(b.before, b.rel_before, b.total, b.relevant, _harmonic(b.n))
    return _ratio(e.sum(axis=1), b.n_relevant)


def average_precision_at(total: ArrayLike, relevant: ArrayLike, k: int) -> NDArray[np.float64]:
    """Tie-aware AP@k of each query (``CalcTopMap``: divided by the relevant items in the top
    ``k``; 0 when there is none), the expectation taken over the cut block exactly."""
    b = _blocks(total, relevant)
    return _ap_at(b, _check_k(k, b.n))


def _ap_at(b: _Blocks, k: int) -> NDArray[np.float64]:
    h = _harmonic(b.n)
    e = _precision_sum(b.before, b.rel_before, b.total, b.relevant, h)
    rows, c, nb, rb, t, r = b.cut(k)
    full = (np.cumsum(e, axis=1) - e)[rows, c]  # blocks entirely inside the top k
    m = k - nb  # items taken from the cut block, 1..t
    lo = np.maximum(0, m - (t - r))
    hi = np.minimum(m, r)
    # Hoeffding (valid without replacement): P(|X - E X| >= d) <= 2 exp(-2 d^2 / m).
    mean = m * _ratio(r, t)
    d = np.ceil(np.sqrt(m * math.log(2.0 / _TAIL_MASS) / 2.0))
    lo = np.maximum(lo, np.floor(mean - d).astype(np.int64))
    hi = np.minimum(hi, np.ceil(mean + d).astype(np.int64))
    lf = _log_factorial(b.n)
    log_norm = lf[t] - lf[m] - lf[t - m]  # log C(t, m)
    dh = h[nb + m] - h[nb]

    size = hi - lo + 1
    ends = np.cumsum(size)
    out = np.zeros(len(rows), dtype=np.float64)
    start = 0
    while start < len(rows):
        base = int(ends[start - 1]) if start else 0
        stop = max(start + 1, int(np.searchsorted(ends, base + _SUPPORT_CHUNK, side="right")))
        s = size[start:stop]
        owner = np.repeat(np.arange(stop - start), s)
        first = np.cumsum(s) - s
        x = lo[start:stop][owner] + (np.arange(owner.size) - first[owner])

        def per(a: NDArray[Any], _o: NDArray[Any] = owner, _a: int = start, _b: int = stop):
            return a[_a:_b][_o]

        tt, rr, mm = per(t), per(r), per(m)
        log_p = (
            lf[rr] - lf[x] - lf[rr - x]
            + lf[tt - rr] - lf[mm - x] - lf[tt - rr - mm + x]
            - per(log_norm)
        )  # fmt: skip
        # given X = x: the x relevant items sit at random among the block's first m positions
        share = _share(per(nb), per(rb), mm, x, per(dh))
        val = np.exp(log_p) * _ratio(per(full) + share, per(rb) + x)
        out[start:stop] = np.bincount(owner, weights=val, minlength=stop - start)
        start = stop
    return out


def precision_at(total: ArrayLike, relevant: ArrayLike, k: int) -> NDArray[np.float64]:
    """Tie-aware precision@K of each query."""
    b = _blocks(total, relevant)
    return _hits_at(b, _check_k(k, b.n)) / k


def recall_at(total: ArrayLike, relevant: ArrayLike, k: int) -> NDArray[np.float64]:
    """Tie-aware recall@K of each query (0 for a query with no relevant item)."""
    b = _blocks(total, relevant)
    return _ratio(_hits_at(b, _check_k(k, b.n)), b.n_relevant)


def _hits_at(b: _Blocks, k: int) -> NDArray[np.float64]:
    """Expected relevant items in the top ``k``."""
    _, _, nb, rb, t, r = b.cut(k)
    return rb + (k - nb) * _ratio(r, t)


def ndcg_at(total: ArrayLike, relevant: ArrayLike, k: int) -> NDArray[np.float64]:
    """Tie-aware NDCG@K of each query (binary gains; 0 for a query with no relevant item)."""
    b = _blocks(total, relevant)
    return _ndcg_at(b, _check_k(k, b.n))


def _ndcg_at(b: _Blocks, k: int) -> NDArray[np.float64]:
    disc = _discount(b.n)
    w = _ratio(b.relevant, b.total)  # chance that a position of the block holds a relevant item
    gain = w * (disc[b.before + b.total] - disc[b.before])
    rows, c, nb, _, _, _ = b.cut(k)
    dcg = (np.cumsum(gain, axis=1) - gain)[rows, c] + w[rows, c] * (disc[k] - disc[nb])
    return _ratio(dcg, disc[np.minimum(b.n_relevant, k)])


def first_relevant_rank(total: ArrayLike, relevant: ArrayLike) -> NDArray[np.float64]:
    """Tie-aware expected 1-based position of each query's first relevant item (NaN for a query
    with none): ``before + (t + 1) / (r + 1)`` in the first block holding a relevant item."""
    return _first_rank(_blocks(total, relevant))


def _first_rank(b: _Blocks) -> NDArray[np.float64]:
    rows = np.arange(b.total.shape[0])
    if not b.total.shape[1]:
        return np.full(len(rows), np.nan)
    first = (b.relevant > 0).argmax(axis=1)
    t, r = b.total[rows, first], b.relevant[rows, first]
    rank = b.before[rows, first] + (t + 1) / (r + 1)
    return np.where(b.n_relevant > 0, rank, np.nan)


def hit_at(total: ArrayLike, relevant: ArrayLike, k: int) -> NDArray[np.float64]:
    """Tie-aware probability that the top ``k`` of each query holds a relevant item (R@K of
    caption retrieval; equal to recall@K when a query has one relevant item)."""
    b = _blocks(total, relevant)
    return _hit_at(b, _check_k(k, b.n))


def _hit_at(b: _Blocks, k: int) -> NDArray[np.float64]:
    _, _, nb, rb, t, r = b.cut(k)
    m = k - nb  # items taken from the cut block, 1..t
    lf = _log_factorial(b.n)
    possible = m <= t - r  # else a relevant item is surely among them
    tr = np.maximum(t - r, 0)
    mm = np.minimum(m, tr)
    # C(t - r, m) / C(t, m): none of the m items taken is relevant
    log_none = (lf[tr] - lf[mm] - lf[tr - mm]) - (lf[t] - lf[m] - lf[t - m])
    none = np.where(possible & (r > 0), np.exp(np.minimum(log_none, 0.0)), 0.0)
    none = np.where(r == 0, 1.0, none)
    return np.where(rb > 0, 1.0, 1.0 - none)


def radius_curve(total: ArrayLike, relevant: ArrayLike) -> dict[str, Any]:
    """Precision and recall of a Hamming-radius lookup for radius ``0..B-1`` (see module doc).

    Returns ``radius``, ``precision`` (NaN where no query retrieves anything), ``recall`` and
    ``coverage`` arrays of length ``B``, plus ``queries`` (how many queries were averaged: those
    with at least one relevant item)."""
    b = _blocks(total, relevant)
    keep = b.n_relevant > 0
    got = (b.before + b.total)[keep]
    hit = (b.rel_before + b.relevant)[keep]
    n_rel = b.n_relevant[keep]
    answered = got > 0
    n_answered = answered.sum(axis=0)
    prec_sum = _ratio(hit, got).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(n_answered > 0, prec_sum / np.maximum(n_answered, 1), np.nan)
    queries = int(keep.sum())
    recall = (hit / n_rel[:, None]).mean(axis=0) if queries else np.zeros(b.total.shape[1])
    coverage = n_answered / queries if queries else np.zeros(b.total.shape[1])
    return {
        "radius": np.arange(b.total.shape[1], dtype=np.float64),
        "precision": precision,
        "recall": recall,
        "coverage": coverage,
        "queries": queries,
    }


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class RankingMetrics:
    """Per-query values of the ranking metrics (one array of shape ``(q,)`` each)."""

    n_relevant: NDArray[np.int64]
    ap: NDArray[np.float64]
    ap_at: dict[int, NDArray[np.float64]] = field(default_factory=dict)
    precision_at: dict[int, NDArray[np.float64]] = field(default_factory=dict)
    recall_at: dict[int, NDArray[np.float64]] = field(default_factory=dict)
    ndcg_at: dict[int, NDArray[np.float64]] = field(default_factory=dict)
    first_rank: NDArray[np.float64] | None = None  # first relevant item's position (NaN: none)
    hit_at: dict[int, NDArray[np.float64]] = field(default_factory=dict)  # P(relevant in top K)

    def without(self, drop: NDArray[np.bool_]) -> RankingMetrics:
        """The same metrics over the queries where ``drop`` is False (e.g. without the queries
        that have a near-duplicate in the database)."""
        keep = ~np.asarray(drop, dtype=bool)
        if keep.shape != self.ap.shape:
            raise ValueError(f"drop: expected a mask of {self.ap.shape}, got {keep.shape}")

        def sub(d: dict[int, NDArray[np.float64]]) -> dict[int, NDArray[np.float64]]:
            return {k: v[keep] for k, v in d.items()}

        return RankingMetrics(
            n_relevant=self.n_relevant[keep],
            ap=self.ap[keep],
            ap_at=sub(self.ap_at),
            precision_at=sub(self.precision_at),
            recall_at=sub(self.recall_at),
            ndcg_at=sub(self.ndcg_at),
            first_rank=None if self.first_rank is None else self.first_rank[keep],
            hit_at=sub(self.hit_at),
        )

    def rank_summary(self) -> dict[str, Any]:
        """R@K (success: a relevant item in the top K) for the cut-offs computed, and the median
        and mean rank of the first relevant item over the queries that have one."""
        if self.first_rank is None:
            raise ValueError("these metrics were computed without ranks")
        ranks = self.first_rank[np.isfinite(self.first_rank)]
        return {
            "recall_at": {k: _mean(v) for k, v in sorted(self.hit_at.items())},
            "median_rank": float(np.median(ranks)) if ranks.size else None,
            "mean_rank": float(np.mean(ranks)) if ranks.size else None,
            "queries_ranked": int(ranks.size),
        }

    def summary(self) -> dict[str, Any]:
        """Means over queries (AP 0 for queries with no relevant item, kept in the mean), with
        ``queries_without_relevant`` and ``map_relevant_only`` (the mean over the others)."""
        has = self.n_relevant > 0
        out: dict[str, Any] = {
            "queries": len(self.ap),
            "queries_without_relevant": int((~has).sum()),
            "map": _mean(self.ap),
            "map_relevant_only": _mean(self.ap[has]),
        }
        for name in ("ap_at", "precision_at", "recall_at", "ndcg_at"):
            key = "map_at" if name == "ap_at" else name
            out[key] = {k: _mean(v) for k, v in sorted(getattr(self, name).items())}
        return out


def _mean(a: NDArray[Any]) -> float:
    return float(np.mean(a)) if a.size else 0.0


def hamming_metrics(
    total: ArrayLike,
    relevant: ArrayLike,
    map_at: Iterable[int] = (),
    top_k: Iterable[int] = (),
) -> RankingMetrics:
    """Every tie-aware ranking metric of each query from the histogram tables: AP, AP@k for
    ``map_at``, and P@K, R@K, NDCG@K for ``top_k``."""
    b = _blocks(total, relevant)
    ap = _ratio(
        _precision_sum(b.before, b.rel_before, b.total, b.relevant, _harmonic(b.n)).sum(axis=1),
        b.n_relevant,
    )
    ks = sorted({_check_k(k, b.n, "top_k") for k in top_k})
    hits = {k: _hits_at(b, k) for k in ks}
    return RankingMetrics(
        n_relevant=b.n_relevant,
        ap=ap,
        ap_at={k: _ap_at(b, k) for k in sorted({_check_k(k, b.n, "map_at") for k in map_at})},
        precision_at={k: hits[k] / k for k in ks},
        recall_at={k: _ratio(hits[k], b.n_relevant) for k in ks},
        ndcg_at={k: _ndcg_at(b, k) for k in ks},
        first_rank=_first_rank(b),
        hit_at={k: _hit_at(b, k) for k in ks},
    )


def clip_cutoffs(requested: Iterable[int], n: int) -> dict[int, int]:
    """Each requested cut-off → the one used: ``min(k, n)`` (``n`` = database size)."""
    out = {}
    for k in requested:
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise ValueError(f"cut-offs must be positive integers, got {k!r}")
        out[int(k)] = min(int(k), n)
    return out


# --------------------------------------------------------------------------- relevance


def pair_labels(
    query_ids: Sequence[Any], database_ids: Sequence[Any]
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Class ids that make exactly the paired item relevant: equal ids (e.g. sample ids) get
    the same class. Returns ``(query_classes, database_classes)``, 1-D ``int64``."""
    q = np.asarray(query_ids)
    d = np.asarray(database_ids)
    _, inv = np.unique(np.concatenate([q, d]), return_inverse=True)
    inv = inv.astype(np.int64)
    return inv[: len(q)], inv[len(q) :]


def _labels(labels: ArrayLike, name: str) -> NDArray[Any]:
    a = np.asarray(labels)
    if a.ndim == 1:
        if not np.issubdtype(a.dtype, np.integer):
            raise TypeError(f"{name}: 1-D labels must be integer class ids, got {a.dtype}")
        return a.astype(np.int64, copy=False)
    if a.ndim != 2:
        raise ValueError(f"{name}: expected (n, L) multi-hot labels or (n,) class ids")
    return a


def _relevance_fn(query_labels: ArrayLike, database_labels: ArrayLike):
    """A function ``rows -> (len(rows), n_db) bool`` relevance for a block of queries."""
    ql = _labels(query_labels, "query_labels")
    dl = _labels(database_labels, "database_labels")
    if ql.ndim != dl.ndim or (ql.ndim == 2 and ql.shape[1] != dl.shape[1]):
        raise ValueError(
            f"query_labels, database_labels: shapes {ql.shape} and {dl.shape} do not match"
        )
    if ql.ndim == 1:
        return ql.shape[0], dl.shape[0], lambda sl: ql[sl, None] == dl[None, :]
    qp, dp = pack_labels(ql), pack_labels(dl)

    def rel(sl: slice) -> NDArray[np.bool_]:
        out = (qp[sl, None, 0] & dp[None, :, 0]) != 0
        for w in range(1, qp.shape[1]):
            out |= (qp[sl, None, w] & dp[None, :, w]) != 0
        return out

    return ql.shape[0], dl.shape[0], rel


def histograms(
    queries: NDArray[np.uint64],
    database: NDArray[np.uint64],
    query_labels: ArrayLike,
    database_labels: ArrayLike,
    n_threads: int | None = None,
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """``cmrops.hamming_histogram``, plus a sparse route for 1-D class ids with many classes
    (pair relevance: one class per sample), where one-hot labels would need ``n x classes``
    memory: ``total`` from the kernel, ``relevant`` from the matching pairs' distances."""
    ql = _labels(query_labels, "query_labels")
    dl = _labels(database_labels, "database_labels")
    if ql.ndim == 2 or dl.ndim == 2:
        return hamming_histogram(queries, database, ql, dl, n_threads=n_threads)
    n_classes = int(max(ql.max(initial=0), dl.max(initial=0))) + 1
    if n_classes <= _ONE_HOT_MAX:
        return hamming_histogram(queries, database, ql, dl, n_threads=n_threads)
    if (ql.size and ql.min() < 0) or (dl.size and dl.min() < 0):
        raise ValueError("labels: class ids must be non-negative")
    order = np.argsort(dl, kind="stable")
    lo = np.searchsorted(dl[order], ql, side="left")
    hi = np.searchsorted(dl[order], ql, side="right")
    counts = hi - lo
    if int(counts.sum()) > _BLOCK_CELLS * 8:  # few big classes: the kernel's one-hot is cheaper
        return hamming_histogram(queries, database, ql, dl, n_threads=n_threads)
    zeros_q = np.zeros(len(ql), dtype=np.int64)
    total, _ = hamming_histogram(
        queries, database, zeros_q, np.zeros(len(dl), dtype=np.int64), n_threads=n_threads
    )
    qi = np.repeat(np.arange(len(ql)), counts)
    first = np.cumsum(counts) - counts
    dj = order[lo[qi] + (np.arange(qi.size) - first[qi])]
    dist = np.bitwise_count(queries[qi] ^ database[dj]).sum(axis=1, dtype=np.int64)
    width = total.shape[1]
    relevant = np.bincount(qi * width + dist, minlength=total.size).reshape(total.shape)
    return total, relevant.astype(np.int64)


# --------------------------------------------------------------------------- explicit rankings


def _metrics_from_sorted(
    ranked: NDArray[np.bool_],
    map_at: Sequence[int],
    top_k: Sequence[int],
    disc: NDArray[np.float64],
) -> dict[str, Any]:
    """Metrics of a block of queries from relevance in ranked order, ``(b, n)`` bool.

    Dense and vectorised: ``hits[:, i]`` = relevant items in the top ``i + 1``; the precision
    sum at the relevant positions is a matrix-vector product with ``1 / position`` (``einsum``,
    not BLAS, so a query's value does not depend on the other queries of its block)."""
    n = ranked.shape[1]
    hits = np.cumsum(ranked, axis=1, dtype=np.int32)
    n_rel = hits[:, -1].astype(np.int64)
    at_relevant = (hits * ranked).astype(np.float64)  # relevant rank, at relevant positions only
    inv_pos = 1.0 / np.arange(1, n + 1, dtype=np.float64)
    out: dict[str, Any] = {
        "n_relevant": n_rel,
        "ap": _ratio(_dot(at_relevant, inv_pos), n_rel),
        "ap_at": {},
        "precision_at": {},
        "recall_at": {},
        "ndcg_at": {},
        "hit_at": {},
        "first_rank": np.where(n_rel > 0, ranked.argmax(axis=1) + 1.0, np.nan),
    }
    for k in map_at:
        out["ap_at"][k] = _ratio(_dot(at_relevant[:, :k], inv_pos[:k]), hits[:, k - 1])
    gains = np.diff(disc[: n + 1])  # 1 / log2(position + 1)
    for k in top_k:
        got = hits[:, k - 1].astype(np.float64)
        out["precision_at"][k] = got / k
        out["recall_at"][k] = _ratio(got, n_rel)
        out["hit_at"][k] = (got > 0).astype(np.float64)
        dcg = _dot(ranked[:, :k].astype(np.float64), gains[:k])
        out["ndcg_at"][k] = _ratio(dcg, disc[np.minimum(n_rel, k)])
    return out


def _dot(a: NDArray[np.float64], v: NDArray[np.float64]) -> NDArray[np.float64]:
    return np.einsum("ij,j->i", a, v)


def _ranked_metrics(
    n_q: int,
    n_db: int,
    rank_block,
    relevance,
    map_at: Iterable[int],
    top_k: Iterable[int],
) -> RankingMetrics:
    mk = sorted({_check_k(k, n_db, "map_at") for k in map_at})
    tk = sorted({_check_k(k, n_db, "top_k") for k in top_k})
    disc = _discount(n_db)
    step = max(1, _BLOCK_CELLS // max(n_db, 1))
    parts = []
    for s in range(0, n_q, step):
        sl = slice(s, min(s + step, n_q))
        order = rank_block(sl)
        parts.append(
            _metrics_from_sorted(np.take_along_axis(relevance(sl), order, 1), mk, tk, disc)
        )

    def cat(key: str) -> NDArray[Any]:
        return np.concatenate([p[key] for p in parts]) if parts else np.zeros(0)

    def cat_k(key: str, ks: list[int]) -> dict[int, NDArray[np.float64]]:
        return {k: np.concatenate([p[key][k] for p in parts]) if parts else np.zeros(0) for k in ks}

    return RankingMetrics(
        n_relevant=cat("n_relevant").astype(np.int64),
        ap=cat("ap"),
        ap_at=cat_k("ap_at", mk),
        precision_at=cat_k("precision_at", tk),
        recall_at=cat_k("recall_at", tk),
        ndcg_at=cat_k("ndcg_at", tk),
        first_rank=cat("first_rank").astype(np.float64),
        hit_at=cat_k("hit_at", tk),
    )


def _distances(q: NDArray[np.uint64], db: NDArray[np.uint64]) -> NDArray[Any]:
    """``(len(q), len(db))`` Hamming distances as the smallest unsigned type that holds them."""
    dtype = np.uint8 if q.shape[1] * 64 < 256 else np.uint16
    d = np.bitwise_count(q[:, None, 0] ^ db[None, :, 0]).astype(dtype, copy=False)
    for w in range(1, q.shape[1]):
        d += np.bitwise_count(q[:, None, w] ^ db[None, :, w]).astype(dtype, copy=False)
    return d


def database_order_metrics(
    queries: NDArray[np.uint64],
    database: NDArray[np.uint64],
    query_labels: ArrayLike,
    database_labels: ArrayLike,
    map_at: Iterable[int] = (),
    top_k: Iterable[int] = (),
) -> RankingMetrics:
    """Ranking metrics with ties broken by database order (a stable sort by distance, the order
    of ``HammingIndex.search``), computed exactly in blocks of queries."""
    q = np.ascontiguousarray(queries)
    db = np.ascontiguousarray(database)
    if q.dtype != np.uint64 or db.dtype != np.uint64 or q.ndim != 2 or db.shape[1:] != q.shape[1:]:
        raise ValueError(
            f"queries, database: expected uint64 codes of one width, got {q.dtype}{q.shape} and "
            f"{db.dtype}{db.shape}"
        )
    n_q, n_db, relevance = _relevance_fn(query_labels, database_labels)
    if n_q != len(q) or n_db != len(db):
        raise ValueError(f"labels: {n_q} / {n_db} rows for {len(q)} queries / {len(db)} codes")

    def rank(sl: slice) -> NDArray[np.intp]:
        return np.argsort(_distances(q[sl], db), axis=1, kind="stable")  # radix sort: O(n)

    return _ranked_metrics(n_q, n_db, rank, relevance, map_at, top_k)


def cosine_metrics(
    query_vectors: ArrayLike,
    database_vectors: ArrayLike,
    query_labels: ArrayLike,
    database_labels: ArrayLike,
    map_at: Iterable[int] = (),
    top_k: Iterable[int] = (),
) -> RankingMetrics:
    """The float baseline: rank the database by cosine similarity of continuous vectors (float64;
    exact ties are practically absent and broken by database order)."""
    qv = np.asarray(query_vectors, dtype=np.float64)
    dv = np.asarray(database_vectors, dtype=np.float64)
    if qv.ndim != 2 or dv.ndim != 2 or qv.shape[1] != dv.shape[1]:
        raise ValueError(
            f"vectors: expected (n, dim) arrays of one dim, got {qv.shape}, {dv.shape}"
        )
    if not (np.isfinite(qv).all() and np.isfinite(dv).all()):
        raise ValueError("vectors: NaN or infinite values")
    qn = qv / np.maximum(np.linalg.norm(qv, axis=1, keepdims=True), 1e-300)
    dn = dv / np.maximum(np.linalg.norm(dv, axis=1, keepdims=True), 1e-300)
    dn = np.ascontiguousarray(dn.T)
    n_q, n_db, relevance = _relevance_fn(query_labels, database_labels)
    if n_q != len(qv) or n_db != len(dv):
        raise ValueError(f"labels: {n_q} / {n_db} rows for {len(qv)} queries / {len(dv)} vectors")

    def rank(sl: slice) -> NDArray[np.intp]:
        return np.argsort(-(qn[sl] @ dn), axis=1, kind="stable")

    return _ranked_metrics(n_q, n_db, rank, relevance, map_at, top_k)


