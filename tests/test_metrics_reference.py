"""Metrics against plain references on random codes (hypothesis).

* tie-aware values = the exact average over every order of the database (tiny sets: all n!
  permutations, each stably sorted by distance, which is a uniformly random order within ties);
* tie-aware values = a brute expectation summed position by position (no closed form) with
  ``math.comb`` hypergeometric weights, on larger sets;
* database order = a full stable sort per query with the usual ``calc_map`` arithmetic, and the
  order of ``HammingIndex.search``;
* the float baseline = a full sort per query of cosine similarities.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cmrops
from cmrops import metrics as M
from tests.reference import distances
from tests.reference import histogram as ref_histogram

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --------------------------------------------------------------------------- references


def ref_relevance(ql: np.ndarray, dl: np.ndarray) -> np.ndarray:
    if ql.ndim == 1:
        return ql[:, None] == dl[None, :]
    return (ql.astype(np.int64) @ dl.astype(np.int64).T) > 0


def ref_ranked(rel: list[bool] | np.ndarray, map_at, top_k) -> dict:
    """Metrics of one ranked relevance list, written out plainly."""
    rel = [bool(x) for x in rel]
    n_rel = sum(rel)
    precisions = []
    hits = 0
    for i, r in enumerate(rel, start=1):
        if r:
            hits += 1
            precisions.append((hits, i))
    out = {"ap": sum(h / i for h, i in precisions) / n_rel if n_rel else 0.0}
    for k in map_at:  # CalcTopMap: divided by the relevant items within the top k
        top = [(h, i) for h, i in precisions if i <= k]
        out[("ap_at", k)] = sum(h / i for h, i in top) / len(top) if top else 0.0
    for k in top_k:
        got = sum(rel[:k])
        out[("p", k)] = got / k
        out[("r", k)] = got / n_rel if n_rel else 0.0
        dcg = sum(1 / math.log2(i + 2) for i, r in enumerate(rel[:k]) if r)
        idcg = sum(1 / math.log2(i + 2) for i in range(min(n_rel, k)))
        out[("ndcg", k)] = dcg / idcg if idcg else 0.0
    return out


def ref_expected_over_permutations(d: np.ndarray, rel: np.ndarray, map_at, top_k) -> dict:
    """Average of every metric over all n! database orders, each stably sorted by distance."""
    n = len(d)
    acc: dict = {}
    perms = list(itertools.permutations(range(n)))
    for perm in perms:
        perm = np.array(perm)
        order = perm[np.argsort(d[perm], kind="stable")]
        for key, v in ref_ranked(rel[order], map_at, top_k).items():
            acc[key] = acc.get(key, 0.0) + v
    return {k: v / len(perms) for k, v in acc.items()}


def ref_expected_by_positions(total: np.ndarray, relevant: np.ndarray, map_at, top_k) -> dict:
    """Tie-aware expectations of one query summed position by position (no harmonic numbers),
    AP@k by enumerating the hypergeometric count of relevant items in the cut block."""
    n = int(total.sum())
    n_rel = int(relevant.sum())

    def block_sum(before, rel_before, t, r):  # E[sum of precision at relevant positions]
        if r == 0:
            return 0.0
        s = 0.0
        for i in range(1, t + 1):
            others = (i - 1) * (r - 1) / (t - 1) if t > 1 else 0.0
            s += (r / t) * (rel_before + 1 + others) / (before + i)
        return s

    blocks = []
    before = rel_before = 0
    for t, r in zip(total.tolist(), relevant.tolist(), strict=True):
        blocks.append((before, rel_before, t, r))
        before += t
        rel_before += r
    out = {"ap": sum(block_sum(*b) for b in blocks) / n_rel if n_rel else 0.0}
    for k in map_at:
        full, val = 0.0, 0.0
        for nb, rb, t, r in blocks:
            if nb + t < k:
                full += block_sum(nb, rb, t, r)
                continue
            m = k - nb
            for x in range(max(0, m - (t - r)), min(m, r) + 1):
                p = math.comb(r, x) * math.comb(t - r, m - x) / math.comb(t, m)
                if rb + x:
                    val += p * (full + block_sum(nb, rb, m, x)) / (rb + x)
            break
        out[("ap_at", k)] = val
    # chance that each position holds a relevant item: r / t throughout its block
    chance = [
        r / t for t, r in zip(total.tolist(), relevant.tolist(), strict=True) for _ in range(t)
    ]
    assert len(chance) == n
    for k in top_k:
        hits = sum(chance[:k])
        dcg = sum(c / math.log2(pos + 1) for pos, c in enumerate(chance[:k], start=1))
        idcg = sum(1 / math.log2(i + 2) for i in range(min(n_rel, k)))
        out[("p", k)] = hits / k
        out[("r", k)] = hits / n_rel if n_rel else 0.0
        out[("ndcg", k)] = dcg / idcg if idcg else 0.0
    return out


def flatten(m: M.RankingMetrics, i: int) -> dict:
    out = {"ap": m.ap[i]}
    out.update({("ap_at", k): v[i] for k, v in m.ap_at.items()})
    out.update({("p", k): v[i] for k, v in m.precision_at.items()})
    out.update({("r", k): v[i] for k, v in m.recall_at.items()})
    out.update({("ndcg", k): v[i] for k, v in m.ndcg_at.items()})
    return out


def assert_close(got: dict, want: dict, tol: float = 1e-9) -> None:
    assert got.keys() == want.keys()
    for key in want:
        assert got[key] == pytest.approx(want[key], abs=tol), key


# --------------------------------------------------------------------------- strategies


@st.composite
def problems(draw, max_db: int, max_q: int = 3, max_bits: int = 6):
    """Short codes (many ties), multi-hot or class-id labels, cut-offs within the database."""
    n_bits = draw(st.integers(1, max_bits))
    n_db = draw(st.integers(1, max_db))
    n_q = draw(st.integers(1, max_q))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    q = cmrops.pack_bits(rng.integers(0, 2, (n_q, n_bits)))
    db = cmrops.pack_bits(rng.integers(0, 2, (n_db, n_bits)))
    if draw(st.booleans()):
        n_labels = draw(st.integers(1, 4))
        density = draw(st.sampled_from([0.2, 0.5]))
        ql = rng.random((n_q, n_labels)) < density
        dl = rng.random((n_db, n_labels)) < density
    else:
        n_classes = draw(st.integers(1, 4))
        ql = rng.integers(0, n_classes, n_q)
        dl = rng.integers(0, n_classes, n_db)
    ks = draw(st.lists(st.integers(1, n_db), min_size=1, max_size=3, unique=True))
    return q, db, ql, dl, n_bits, ks


# --------------------------------------------------------------------------- properties


@SETTINGS
@given(problems(max_db=6))
def test_tie_aware_equals_average_over_all_orders(problem):
    q, db, ql, dl, _n_bits, ks = problem
    total, relevant = M.histograms(q, db, ql, dl)
    got = M.hamming_metrics(total, relevant, map_at=ks, top_k=ks)
    d = distances(q, db)
    rel = ref_relevance(ql, dl)
    for i in range(len(q)):
        assert_close(flatten(got, i), ref_expected_over_permutations(d[i], rel[i], ks, ks))


@SETTINGS
@given(problems(max_db=120, max_q=4, max_bits=8))
def test_tie_aware_equals_brute_expectation(problem):
    q, db, ql, dl, _n_bits, ks = problem
    total, relevant = M.histograms(q, db, ql, dl)
    np.testing.assert_array_equal(total, ref_histogram(q, db, *_as_hot(ql, dl))[0])
    got = M.hamming_metrics(total, relevant, map_at=ks, top_k=ks)
    for i in range(len(q)):
        want = ref_expected_by_positions(total[i], relevant[i], ks, ks)
        assert_close(flatten(got, i), want)


def _as_hot(ql, dl):
    if ql.ndim == 2:
        return ql, dl
    width = int(max(ql.max(), dl.max())) + 1
    return np.eye(width, dtype=bool)[ql], np.eye(width, dtype=bool)[dl]


@SETTINGS
@given(problems(max_db=80, max_q=4, max_bits=10))
def test_database_order_equals_stable_sort_and_index_order(problem):
    q, db, ql, dl, _n_bits, ks = problem
    got = M.database_order_metrics(q, db, ql, dl, map_at=ks, top_k=ks)
    d = distances(q, db)
    rel = ref_relevance(ql, dl)
    _, ids = cmrops.HammingIndex(db).search(q, k=len(db))
    for i in range(len(q)):
        order = np.argsort(d[i], kind="stable")
        np.testing.assert_array_equal(order, ids[i])
        assert_close(flatten(got, i), ref_ranked(rel[i][order], ks, ks))


@SETTINGS
@given(problems(max_db=60, max_q=4, max_bits=6))
def test_without_ties_both_rules_agree(problem):
    """Distinct distances (a permutation of 0..n-1 as 'codes' in a wide space) leave no ties."""
    q, db, ql, dl, _n_bits, ks = problem
    n = len(db)
    rng = np.random.default_rng(n)
    dist = rng.permutation(n)
    # query all zeros; database row j has dist[j] leading ones (needs up to n - 1 bits)
    bits = (np.arange(max(n - 1, 1))[None, :] < dist[:, None]).astype(np.uint8)
    dbc = cmrops.pack_bits(bits)
    qc = cmrops.pack_bits(np.zeros((len(q), bits.shape[1]), dtype=np.uint8))
    total, relevant = M.histograms(qc, dbc, ql, dl)
    tie = M.hamming_metrics(total, relevant, map_at=ks, top_k=ks)
    ordered = M.database_order_metrics(qc, dbc, ql, dl, map_at=ks, top_k=ks)
    for i in range(len(q)):
        assert_close(flatten(tie, i), flatten(ordered, i))


@SETTINGS
@given(problems(max_db=60, max_q=3, max_bits=8))
def test_float_baseline_equals_full_sort(problem):
    q, db, ql, dl, _n_bits, ks = problem
    rng = np.random.default_rng(len(db) * 7 + len(q))
    qv = rng.normal(size=(len(q), 5))
    dv = rng.normal(size=(len(db), 5))
    got = M.cosine_metrics(qv, dv, ql, dl, map_at=ks, top_k=ks)
    rel = ref_relevance(ql, dl)
    for i in range(len(q)):
        sim = [float(np.dot(qv[i], v) / np.linalg.norm(qv[i]) / np.linalg.norm(v)) for v in dv]
        order = sorted(range(len(dv)), key=lambda j: (-sim[j], j))
        assert_close(flatten(got, i), ref_ranked(rel[i][order], ks, ks))


@SETTINGS
@given(st.integers(1, 30), st.integers(0, 2**32 - 1))
def test_ap_at_n_is_ap_and_metrics_lie_in_unit_interval(n_db, seed):
    rng = np.random.default_rng(seed)
    q = cmrops.pack_bits(rng.integers(0, 2, (5, 4)))
    db = cmrops.pack_bits(rng.integers(0, 2, (n_db, 4)))
    total, relevant = M.histograms(q, db, rng.integers(0, 3, 5), rng.integers(0, 3, n_db))
    m = M.hamming_metrics(total, relevant, map_at=range(1, n_db + 1), top_k=range(1, n_db + 1))
    np.testing.assert_allclose(m.ap_at[n_db], m.ap, atol=1e-12)
    for part in (m.ap_at, m.precision_at, m.recall_at, m.ndcg_at):
        for v in part.values():
            assert np.all((v >= -1e-12) & (v <= 1 + 1e-12))


def test_large_cut_block_is_exact_despite_tail_truncation():
    """A single block of 3000 tied items (1000 relevant), k = 1500: the Hoeffding-truncated sum
    against the full hypergeometric sum with exact binomials."""
    total, relevant = np.array([[0, 3000]]), np.array([[0, 1000]])
    got = M.average_precision_at(total, relevant, 1500)[0]
    want = ref_expected_by_positions(total[0], relevant[0], [1500], [])[("ap_at", 1500)]
    assert got == pytest.approx(want, abs=1e-12)
    # many queries at once cross the chunk boundary of the vectorised sum
    many = M.average_precision_at(np.repeat(total, 2000, 0), np.repeat(relevant, 2000, 0), 1500)
    np.testing.assert_allclose(many, got, rtol=0, atol=1e-15)


def test_sparse_pair_histograms_equal_one_hot():
    rng = np.random.default_rng(3)
    n = 700  # more classes than the one-hot route takes
    q = cmrops.pack_bits(rng.integers(0, 2, (300, 70)))
    db = cmrops.pack_bits(rng.integers(0, 2, (n, 70)))
    ids = [f"s{i:04d}" for i in rng.permutation(n)]
    ql, dl = M.pair_labels(ids[:300], [f"s{i:04d}" for i in range(n)])
    assert int(max(ql.max(), dl.max())) + 1 > 256
    total, relevant = M.histograms(q, db, ql, dl)
    want_t, want_r = ref_histogram(q, db, *_as_hot(ql, dl))
    np.testing.assert_array_equal(total, want_t)
    np.testing.assert_array_equal(relevant, want_r)
    assert relevant.sum() == 300  # exactly the paired item


def test_database_order_blocks_match_one_pass(monkeypatch):
    rng = np.random.default_rng(5)
    q = cmrops.pack_bits(rng.integers(0, 2, (37, 300)))  # 5 words, uint16 distances
    db = cmrops.pack_bits(rng.integers(0, 2, (90, 300)))
    ql, dl = rng.random((37, 6)) < 0.3, rng.random((90, 6)) < 0.3
    whole = M.database_order_metrics(q, db, ql, dl, map_at=[10], top_k=[5])
    monkeypatch.setattr(M, "_BLOCK_CELLS", 200)  # 2 queries per block
    blocked = M.database_order_metrics(q, db, ql, dl, map_at=[10], top_k=[5])
    for i in range(37):
        assert flatten(whole, i) == flatten(blocked, i)
    d = distances(q, db)
    rel = ref_relevance(ql, dl)
    for i in range(37):
        order = np.argsort(d[i], kind="stable")
        assert_close(flatten(whole, i), ref_ranked(rel[i][order], [10], [5]))


# --------------------------------------------------------------------------- ranks (caption R@K)


def test_first_relevant_rank_and_hit_rate_against_every_tie_order() -> None:
    from tests.reference import first_relevant_ranks, hit_rates

    rng = np.random.default_rng(5)
    orders = list(itertools.permutations(range(6)))  # every order of the 6 database rows
    for _ in range(4):
        q = rng.integers(0, 2**63, size=(3, 1), dtype=np.uint64) & np.uint64(7)
        db = rng.integers(0, 2**63, size=(6, 1), dtype=np.uint64) & np.uint64(7)
        ql, dl = rng.integers(0, 3, size=3), rng.integers(0, 3, size=6)
        total, relevant = M.histograms(q, db, ql, dl)
        d, rel = distances(q, db), ref_relevance(ql, dl)
        want = first_relevant_ranks(d, rel, orders)
        np.testing.assert_allclose(M.first_relevant_rank(total, relevant), want, equal_nan=True)
        for k in (1, 2, 5):
            np.testing.assert_allclose(M.hit_at(total, relevant, k), hit_rates(d, rel, orders, k))
        # database order: the identity tie order; the float ranking: a full sort of cosines
        order = M.database_order_metrics(q, db, ql, dl, top_k=[1, 2, 5])
        ident = [tuple(range(6))]
        np.testing.assert_allclose(order.first_rank, first_relevant_ranks(d, rel, ident))
        np.testing.assert_allclose(order.hit_at[2], hit_rates(d, rel, ident, 2))
