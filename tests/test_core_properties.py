"""Every core function against the numpy reference, on every SIMD path this CPU has."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cmrops
from tests import reference as ref

SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
WORDS = st.sampled_from([1, 2, 3, 4, 5, 8])


@pytest.fixture(params=cmrops.simd_paths())
def simd_path(request):
    """Force each SIMD path the CPU has; restore the default afterwards."""
    before = cmrops.get_simd_path()
    cmrops.set_simd_path(request.param)
    yield request.param
    cmrops.set_simd_path(before)


@st.composite
def code_sets(draw, min_n: int = 1, max_n: int = 120, words=None):
    """Codes drawn from a small pool of patterns plus bit flips, so ties and near-duplicates
    (the cases where exactness and tie-breaking matter) are common."""
    w = draw(words if words is not None else WORDS)
    n = draw(st.integers(min_n, max_n))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    pool = rng.integers(0, 2**64, size=(max(1, n // 4), w), dtype=np.uint64)
    codes = pool[rng.integers(0, len(pool), size=n)]
    flips = rng.integers(0, 64 * w, size=(n, 3))
    mask = rng.random((n, 3)) < 0.5
    for c in range(3):
        rows = np.flatnonzero(mask[:, c])
        bit = flips[rows, c]
        codes[rows, bit // 64] ^= np.left_shift(np.uint64(1), (bit % 64).astype(np.uint64))
    return np.ascontiguousarray(codes), rng


@given(
    data=code_sets(),
    k=st.integers(1, 12),
    nq=st.integers(1, 40),  # up to 40: batches of 16 and more take AVX2's byte-sliced kernel
    threads=st.sampled_from([1, 2, 3]),
)
@SETTINGS
def test_knn_matches_reference(simd_path, data, k, nq, threads):
    db, rng = data
    q = np.ascontiguousarray(
        db[rng.integers(0, len(db), size=nq)]
        ^ rng.integers(0, 2, size=(nq, db.shape[1]), dtype=np.uint64)
    )
    k = min(k, len(db))
    index = cmrops.HammingIndex(db, n_threads=threads)
    d, i = index.search(q, k)
    rd, ri = ref.knn(db, np.arange(len(db)), q, k)
    assert d.dtype == np.int32
    assert i.dtype == np.int64
    np.testing.assert_array_equal(d, rd)
    np.testing.assert_array_equal(i, ri)


@given(data=code_sets(), radius=st.integers(0, 70), nq=st.integers(1, 40))
@SETTINGS
def test_range_search_matches_reference(simd_path, data, radius, nq):
    db, rng = data
    radius = min(radius, db.shape[1] * 64)
    q = np.ascontiguousarray(db[rng.integers(0, len(db), size=nq)])
    ids = rng.permutation(10 * len(db))[: len(db)].astype(np.int64)
    index = cmrops.HammingIndex(db, ids=ids)
    got = index.range_search(q, radius)
    want = ref.range_search(db, ids, q, radius)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)


@given(data=code_sets(max_n=150), radius=st.integers(0, 12))
@SETTINGS
def test_near_duplicates_and_groups_match_reference(simd_path, data, radius):
    codes, _ = data
    pairs = cmrops.near_duplicates(codes, radius)
    np.testing.assert_array_equal(pairs, ref.near_duplicates(codes, radius))
    np.testing.assert_array_equal(
        cmrops.duplicate_groups(codes, radius), ref.duplicate_groups(codes, radius)
    )


@given(
    a=code_sets(max_n=60, words=st.just(2)),
    b=code_sets(max_n=60, words=st.just(2)),
    radius=st.integers(0, 40),
)
@SETTINGS
def test_near_duplicates_across_sets(simd_path, a, b, radius):
    pairs = cmrops.near_duplicates(a[0], radius, other=b[0])
    np.testing.assert_array_equal(pairs, ref.near_duplicates(a[0], radius, b[0]))


@given(data=code_sets(max_n=80), n_labels=st.integers(1, 130), nq=st.integers(1, 15))
@SETTINGS
def test_histogram_matches_reference(simd_path, data, n_labels, nq):
    db, rng = data
    q = np.ascontiguousarray(db[rng.integers(0, len(db), size=nq)])
    dl = rng.random((len(db), n_labels)) < 0.1
    ql = rng.random((nq, n_labels)) < 0.1
    total, relevant = cmrops.hamming_histogram(q, db, ql, dl)
    rt, rr = ref.histogram(q, db, ql, dl)
    np.testing.assert_array_equal(total, rt)
    np.testing.assert_array_equal(relevant, rr)
    assert (total.sum(axis=1) == len(db)).all()


@given(data=code_sets(min_n=40, max_n=300), k=st.integers(1, 40))
@settings(max_examples=25, deadline=None)
def test_results_identical_for_any_thread_count(data, k):
    db, rng = data
    q = np.ascontiguousarray(db[rng.integers(0, len(db), size=17)])
    k = min(k, len(db))
    results = [cmrops.HammingIndex(db, n_threads=t).search(q, k) for t in (1, 2, 4, 7)]
    for d, i in results[1:]:
        np.testing.assert_array_equal(d, results[0][0])
        np.testing.assert_array_equal(i, results[0][1])
    pairs = [cmrops.near_duplicates(db, 6, n_threads=t) for t in (1, 2, 5)]
    for p in pairs[1:]:
        np.testing.assert_array_equal(p, pairs[0])
    hist = [
        cmrops.hamming_histogram(
            q, db, np.zeros(len(q), np.int64), np.zeros(len(db), np.int64), n_threads=t
        )
        for t in (1, 3)
    ]
    np.testing.assert_array_equal(hist[0][0], hist[1][0])


@given(bits=st.integers(1, 600), n=st.integers(0, 20), seed=st.integers(0, 2**32 - 1))
@settings(max_examples=80, deadline=None)
def test_pack_unpack_roundtrip_and_bit_order(bits, n, seed):
    rng = np.random.default_rng(seed)
    b = rng.integers(0, 2, size=(n, bits), dtype=np.uint8)
    codes = cmrops.pack_bits(b)
    assert codes.dtype == np.uint64
    assert codes.shape == (n, (bits + 63) // 64)
    np.testing.assert_array_equal(cmrops.unpack_bits(codes, bits), b)
    # bit j is bit j % 64 of word j // 64
    for row in range(n):
        for j in rng.integers(0, bits, size=5):
            assert ((int(codes[row, j // 64]) >> int(j % 64)) & 1) == b[row, j]
    # ±1 and bool give the same codes; padding bits are zero
    np.testing.assert_array_equal(cmrops.pack_bits(b.astype(np.int8) * 2 - 1), codes)
    np.testing.assert_array_equal(cmrops.pack_bits(b.astype(bool)), codes)
    if bits % 64 and n:
        assert (codes[:, -1] >> np.uint64(bits % 64) == 0).all()


def test_faiss_layout_is_the_byte_view():
    rng = np.random.default_rng(1)
    b = rng.integers(0, 2, size=(5, 128), dtype=np.uint8)
    codes = cmrops.pack_bits(b)
    fa = cmrops.to_faiss(codes)
    assert fa.dtype == np.uint8
    assert fa.shape == (5, 16)
    # FAISS packs bit j into byte j // 8 at position j % 8 (fvec2bitvec)
    manual = np.array(
        [[sum(int(b[r, 8 * i + t]) << t for t in range(8)) for i in range(16)] for r in range(5)],
        dtype=np.uint8,
    )
    np.testing.assert_array_equal(fa, manual)
    np.testing.assert_array_equal(cmrops.from_faiss(fa), codes)
    np.testing.assert_array_equal(
        cmrops.from_faiss(fa[:, :3])[:, 0], cmrops.pack_bits(b[:, :24])[:, 0]
    )


def test_golden_cases():
    # Hand-written: three database codes, distances known by construction.
    db = np.array([[0b0000], [0b0111], [0b0001], [0b1111]], dtype=np.uint64)
    index = cmrops.HammingIndex(db, ids=np.array([40, 30, 20, 10], dtype=np.int64))
    d, i = index.search(np.array([[0b0011]], dtype=np.uint64), 4)
    # distances: 40->2, 30->1, 20->1, 10->2; ties by smaller id
    assert d.tolist() == [[1, 1, 2, 2]]
    assert i.tolist() == [[20, 30, 10, 40]]
    lims, dd, ii = index.range_search(np.array([[0], [0b1111]], dtype=np.uint64), 1)
    assert lims.tolist() == [0, 2, 4]
    assert dd.tolist() == [0, 1, 0, 1]
    assert ii.tolist() == [40, 20, 10, 30]
    # pairwise distances: (0,2)=1 (1,3)=1 (1,2)=2 (0,1)=3 (2,3)=3 (0,3)=4
    assert cmrops.near_duplicates(db, 1).tolist() == [[0, 2], [1, 3]]
    assert cmrops.near_duplicates(db, 2).tolist() == [[0, 2], [1, 2], [1, 3]]
    assert cmrops.duplicate_groups(db, 1).tolist() == [0, 1, 0, 1]
    assert cmrops.duplicate_groups(db, 2).tolist() == [0, 0, 0, 0]
    assert cmrops.duplicate_groups(db, 0).tolist() == [0, 1, 2, 3]
    full = np.array([[np.uint64(2**64 - 1)] * 8], dtype=np.uint64)
    d, _ = cmrops.HammingIndex(np.zeros((1, 8), np.uint64)).search(full, 1)
    assert d.tolist() == [[512]]
