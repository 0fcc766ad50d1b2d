"""Retrieval metrics on hand-computed cases: ties, a cut-off inside a tie block, a query with no
relevant item, database-order tie breaking, the float baseline and code health."""

from __future__ import annotations

import math

import numpy as np
import pytest

import cmrops
from cmrops import metrics as M
from cmrops.code_health import bit_correlation, code_health

# ---------------------------------------------------------------------------------------------
# The worked example. 3-bit codes, query q0 = 000 with label {a}; the database, in row order:
#
#   row  code  distance  labels   relevant to q0
#   A    100   1         {a}      yes
#   B    000   0         {b}      no
#   C    010   1         {b}      no
#   D    111   3         {a, b}   yes
#   E    110   2         {a}      yes
#
# (bit j of a code is written j-th from the left.) q1 = 000 with label {c}: nothing is relevant.
# Blocks by distance: d0 {B}, d1 {A, C}, d2 {E}, d3 {D}: total = [1, 2, 1, 1],
# relevant = [0, 1, 1, 1], R = 3.
#
# Tie-aware AP(q0): A is at position 2 or 3 with probability 1/2 each, so the expected precision
# there is (1/2)(1/2) + (1/2)(1/3) = 5/12; E is 2nd relevant at position 4: 2/4; D is 3rd at
# position 5: 3/5. AP = (5/12 + 1/2 + 3/5) / 3 = (25 + 30 + 36) / 60 / 3 = 91/180.
# Database order (stable sort): B, A, C, E, D -> relevant at 2, 4, 5:
# AP = (1/2 + 2/4 + 3/5) / 3 = 1.6 / 3 = 8/15.
# AP(q1) = 0 by definition; mAP = (91/180 + 0) / 2 = 91/360; over queries with a relevant item
# it is 91/180 and one query has none.
#
# AP@2 (divided by the relevant items in the top 2): the top 2 are B and one of {A, C}.
#   tie-aware: with prob. 1/2 it is A (precision 1/2 at position 2, one relevant -> 1/2), else
#   no relevant item (0): 1/4.   database order: B, A -> 1/2.
# AP@3: the top 3 are B, A, C in some order; one relevant item with expected precision 5/12.
# P@2 tie-aware: (0 + 1 * 1/2) / 2 = 1/4; R@2 = (1/2) / 3 = 1/6.
# NDCG@2: position 2 holds A with prob. 1/2: E[DCG] = (1/2) / log2(3);
#   ideal DCG = 1 + 1 / log2(3); NDCG = 0.5/log2(3) / (1 + 1/log2(3)) = 0.5 / (log2(3) + 1).
# Radius curve (q0 only: q1 has no relevant item): radius 0 retrieves {B}: P 0, R 0;
#   radius 1 {B, A, C}: P 1/3, R 1/3; radius 2 + E: P 2/4, R 2/3; radius 3 + D: P 3/5, R 1.
# ---------------------------------------------------------------------------------------------

ROWS = {"A": [1, 0, 0], "B": [0, 0, 0], "C": [0, 1, 0], "D": [1, 1, 1], "E": [1, 1, 0]}
LABELS = {"A": [1, 0, 0], "B": [0, 1, 0], "C": [0, 1, 0], "D": [1, 1, 0], "E": [1, 0, 0]}


def worked_example():
    db = cmrops.pack_bits(np.array(list(ROWS.values())))
    q = cmrops.pack_bits(np.zeros((2, 3), dtype=np.uint8))
    ql = np.array([[1, 0, 0], [0, 0, 1]], dtype=bool)
    dl = np.array(list(LABELS.values()), dtype=bool)
    return q, db, ql, dl


def test_histogram_of_worked_example():
    q, db, ql, dl = worked_example()
    total, relevant = M.histograms(q, db, ql, dl)
    assert total[0, :4].tolist() == [1, 2, 1, 1]
    assert not total[:, 4:].any()
    assert relevant[0, :4].tolist() == [0, 1, 1, 1]
    assert relevant[1].sum() == 0


def test_tie_aware_values_by_hand():
    q, db, ql, dl = worked_example()
    total, relevant = M.histograms(q, db, ql, dl)
    assert M.average_precision(total, relevant) == pytest.approx([91 / 180, 0.0], abs=1e-12)
    assert M.average_precision_at(total, relevant, 2) == pytest.approx([1 / 4, 0], abs=1e-12)
    assert M.average_precision_at(total, relevant, 3) == pytest.approx([5 / 12, 0], abs=1e-12)
    assert M.average_precision_at(total, relevant, 5) == pytest.approx([91 / 180, 0], abs=1e-12)
    assert M.precision_at(total, relevant, 2) == pytest.approx([1 / 4, 0], abs=1e-12)
    assert M.recall_at(total, relevant, 2) == pytest.approx([1 / 6, 0], abs=1e-12)
    ndcg = 0.5 / (math.log2(3) + 1)
    assert M.ndcg_at(total, relevant, 2) == pytest.approx([ndcg, 0], abs=1e-12)

    s = M.hamming_metrics(total, relevant, map_at=[2, 3], top_k=[2]).summary()
    assert s["queries"] == 2
    assert s["queries_without_relevant"] == 1
    assert s["map"] == pytest.approx(91 / 360, abs=1e-12)
    assert s["map_relevant_only"] == pytest.approx(91 / 180, abs=1e-12)
    assert s["map_at"] == pytest.approx({2: 1 / 8, 3: 5 / 24}, abs=1e-12)
    assert s["precision_at"] == pytest.approx({2: 1 / 8}, abs=1e-12)


def test_radius_curve_by_hand():
    q, db, ql, dl = worked_example()
    total, relevant = M.histograms(q, db, ql, dl)
    curve = M.radius_curve(total[:, :4], relevant[:, :4])  # radii 0..n_bits
    assert curve["queries"] == 1  # q1 has no relevant item and is left out
    assert curve["precision"] == pytest.approx([0, 1 / 3, 1 / 2, 3 / 5], abs=1e-12)
    assert curve["recall"] == pytest.approx([0, 1 / 3, 2 / 3, 1], abs=1e-12)
    assert curve["coverage"].tolist() == [1, 1, 1, 1]


def test_radius_curve_precision_undefined_where_nothing_is_retrieved():
    # one query: nothing at distance 0, 2 items (1 relevant) at distance 1
    curve = M.radius_curve([[0, 2]], [[0, 1]])
    assert np.isnan(curve["precision"][0])
    assert curve["precision"][1] == 0.5
    assert curve["coverage"].tolist() == [0.0, 1.0]


def test_database_order_values_by_hand():
    q, db, ql, dl = worked_example()
    m = M.database_order_metrics(q, db, ql, dl, map_at=[2, 3], top_k=[2])
    assert m.ap == pytest.approx([8 / 15, 0], abs=1e-12)
    assert m.ap_at[2] == pytest.approx([1 / 2, 0], abs=1e-12)  # B, A
    assert m.ap_at[3] == pytest.approx([1 / 2, 0], abs=1e-12)  # B, A, C
    assert m.precision_at[2] == pytest.approx([1 / 2, 0], abs=1e-12)
    assert m.n_relevant.tolist() == [3, 0]
    # the same order as HammingIndex.search: ties to the smaller row
    _, ids = cmrops.HammingIndex(db).search(q[:1], k=5)
    assert ids[0].tolist() == [1, 0, 2, 4, 3]  # B, A, C, E, D


def test_one_tie_block_closed_form():
    # 3 tied items, 2 relevant, nothing before. The 3 equally likely placements of the relevant
    # pair: {1,2}: 1 + 1 = 2; {1,3}: 1 + 2/3 = 5/3; {2,3}: 1/2 + 2/3 = 7/6; mean 29/18, so
    # AP = 29/18 / 2 = 29/36. The closed form: dH = 11/6, (r-1)/(t-1) = 1/2,
    # 2/3 * [1 * 11/6 + 1/2 * (3 - 11/6)] = 2/3 * 29/12 = 29/18.
    assert M.average_precision([[3]], [[2]]) == pytest.approx([29 / 36], abs=1e-12)
    # AP@1 in the same block: position 1 is relevant with prob. 2/3 (then AP@1 = 1): 2/3
    assert M.average_precision_at([[3]], [[2]], 1) == pytest.approx([2 / 3], abs=1e-12)
    # AP@2: X = 2 with prob. 1/3 (AP 1), X = 1 with prob. 2/3 (relevant at 1 or 2: 1 or 1/2,
    # mean 3/4): 1/3 + 2/3 * 3/4 = 5/6
    assert M.average_precision_at([[3]], [[2]], 2) == pytest.approx([5 / 6], abs=1e-12)


def test_ndcg_all_relevant_is_one_and_recall_at_n_is_one():
    total, relevant = [[2, 3, 0]], [[2, 3, 0]]
    assert M.ndcg_at(total, relevant, 4) == pytest.approx([1.0])
    assert M.recall_at(total, relevant, 5) == pytest.approx([1.0])
    assert M.average_precision(total, relevant) == pytest.approx([1.0])


def test_cutoffs_are_checked_and_clipped():
    with pytest.raises(ValueError, match=r"1\.\.5"):
        M.precision_at([[1, 4]], [[0, 1]], 6)
    with pytest.raises(ValueError, match="database size"):
        M.average_precision_at([[1, 4]], [[0, 1]], 0)
    assert M.clip_cutoffs([50, 1000, 5000], 1800) == {50: 50, 1000: 1000, 5000: 1800}
    with pytest.raises(ValueError, match="positive"):
        M.clip_cutoffs([0], 10)


def test_bad_tables_are_refused():
    with pytest.raises(ValueError, match="relevant <= total"):
        M.average_precision([[1, 1]], [[2, 0]])
    with pytest.raises(ValueError, match="same database"):
        M.average_precision([[1, 1], [1, 0]], [[0, 0], [0, 0]])
    with pytest.raises(ValueError, match="one shape"):
        M.average_precision([[1, 1]], [[1]])
    with pytest.raises(TypeError, match="integer"):
        M.average_precision([[1.0, 1.0]], [[0.0, 0.0]])


def test_pair_labels_make_only_the_paired_item_relevant():
    ql, dl = M.pair_labels(["s2", "s0"], ["s0", "s1", "s2", "s3"])
    assert (ql[:, None] == dl[None, :]).tolist() == [
        [False, False, True, False],
        [True, False, False, False],
    ]


def test_float_baseline_by_hand():
    # query (1, 0); database rows at angles 0, 90, 45 and 180 degrees: cosine 1, 0, .707, -1.
    # Ranking: row 0, row 2, row 1, row 3. Relevant rows 2 and 3 -> positions 2 and 4:
    # AP = (1/2 + 2/4) / 2 = 1/2; AP@2 = (1/2) / 1 = 1/2; P@2 = 1/2; R@2 = 1/2.
    dv = np.array([[2.0, 0], [0, 1], [1, 1], [-3, 0]])
    m = M.cosine_metrics([[1.0, 0]], dv, np.array([0]), np.array([1, 1, 0, 0]), [2], [2])
    assert m.ap == pytest.approx([0.5])
    assert m.ap_at[2] == pytest.approx([0.5])
    assert m.precision_at[2] == pytest.approx([0.5])
    assert m.recall_at[2] == pytest.approx([0.5])
    # NDCG@2: DCG = 1/log2(3), ideal = 1 + 1/log2(3)
    assert m.ndcg_at[2] == pytest.approx([(1 / math.log2(3)) / (1 + 1 / math.log2(3))])
    with pytest.raises(ValueError, match="NaN"):
        M.cosine_metrics([[np.nan, 0]], dv, np.array([0]), np.array([1, 1, 0, 0]))


def test_code_health_by_hand():
    # four 2-bit codes (bit 0, bit 1): (0,0), (1,0), (1,0), (1,1)
    codes = cmrops.pack_bits(np.array([[0, 0], [1, 0], [1, 0], [1, 1]]))
    h = code_health(codes, 2)
    # bit means 3/4 and 1/4: mean |p - 1/2| = 1/4, the first worst bit is bit 0
    assert h["bit_balance"] == {
        "mean_abs_deviation": 0.25,
        "worst_bit": 0,
        "worst_bit_mean": 0.75,
        "constant_bits": 0,
    }
    # E[b0 b1] = 1/4, cov = 1/4 - 3/4 * 1/4 = 1/16, var = 3/16 each: correlation 1/3
    assert h["mean_abs_bit_correlation"] == pytest.approx(1 / 3)
    # buckets {00: 1, 10: 2, 11: 1}: entropy = 1/4*2 + 1/2*1 + 1/4*2 = 1.5 bits; max min(2, 2)
    assert h["buckets"] == {
        "distinct": 3,
        "distinct_ratio": 0.75,
        "largest": 2,
        "entropy_bits": 1.5,
        "max_entropy_bits": 2.0,
    }


def test_code_health_constant_bits():
    codes = cmrops.pack_bits(np.array([[1, 0, 1], [1, 1, 0], [1, 0, 1]]))
    h = code_health(codes, 3)
    assert h["bit_balance"]["constant_bits"] == 1
    assert h["bit_balance"]["worst_bit"] == 0
    assert h["bit_balance"]["worst_bit_mean"] == 1.0
    # bits 1 and 2 are exact complements: |correlation| 1; the constant bit is left out
    assert h["mean_abs_bit_correlation"] == pytest.approx(1.0)
    assert bit_correlation(cmrops.pack_bits(np.array([[1, 0], [1, 0]])), 2) is None


def test_code_health_multiword_buckets():
    rng = np.random.default_rng(1)
    bits = rng.integers(0, 2, (50, 100))
    bits[10:20] = bits[0]
    h = code_health(cmrops.pack_bits(bits), 100)
    assert h["buckets"]["largest"] == 11
    assert h["buckets"]["distinct"] == 40
