"""Library pieces of clean and split against simple references: components, rounding,
hash preference, stratification, representatives."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from cmrops.cleaning.dedup import representatives
from cmrops.cleaning.graph import components, hamming, pairs_within, size_histogram
from cmrops.splitting.stratify import (
    GroupLabels,
    largest_remainder,
    preference_scores,
    stratify,
    unit_hash,
)


def _reference_components(n: int, pairs: list[tuple[int, int]]) -> list[int]:
    parent = list(range(n))

    def find(x: int) -> int:
        while parent[x] != x:
            x = parent[x]
        return x

    for a, b in pairs:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    roots = [find(i) for i in range(n)]
    smallest = {}
    for i, r in enumerate(roots):
        smallest.setdefault(r, i)
    return [smallest[r] for r in roots]


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 40).flatmap(
        lambda n: st.tuples(
            st.just(n),
            st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=60),
        )
    )
)
def test_components_match_union_find(case: tuple[int, list[tuple[int, int]]]) -> None:
    n, pairs = case
    arr = np.array(pairs, dtype=np.int64).reshape(-1, 2)
    assert components(n, arr).tolist() == _reference_components(n, pairs)


def test_pairs_within_matches_brute_force() -> None:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 2**63, size=40, dtype=np.uint64)
    h = np.concatenate([base, base ^ np.uint64(0b101), base[:10] ^ np.uint64(1 << 63)])
    pairs, dist = pairs_within(h, 3)
    ref = {
        (i, j)
        for i in range(len(h))
        for j in range(i + 1, len(h))
        if bin(int(h[i]) ^ int(h[j])).count("1") <= 3
    }
    assert {tuple(p) for p in pairs.tolist()} == ref
    assert (dist == hamming(h[pairs[:, 0]], h[pairs[:, 1]])).all()
    assert size_histogram(components(len(h), pairs)) == {"2": 30, "3": 10}


@given(st.integers(0, 500), st.lists(st.floats(0.01, 1.0), min_size=1, max_size=5))
def test_largest_remainder(total: int, fractions: list[float]) -> None:
    r = np.array(fractions)
    out = largest_remainder(total, r, minimum=1)
    assert out.sum() == total
    if total >= len(r):
        assert (out >= 1).all()
    plain = largest_remainder(total, r)
    assert np.abs(plain - r / r.sum() * total).max() < 1.0 + 1e-9


def test_preference_follows_the_fractions() -> None:
    keys = [f"g{i}" for i in range(20000)]
    r = np.array([0.8, 0.1, 0.1])
    first = np.argmin(preference_scores(keys, 0, ("a", "b", "c"), r), axis=1)
    share = np.bincount(first, minlength=3) / len(keys)
    assert np.abs(share - r).max() < 0.01
    u = unit_hash(keys[:5], 0)
    assert (u == unit_hash(keys[:5], 0)).all()
    assert not (u == unit_hash(keys[:5], 1)).any()


def test_stratify_respects_fixed_groups_and_sizes() -> None:
    n = 300
    keys = [f"k{i}" for i in range(n)]
    labels = [[i % 7] + ([7] if i < 4 else []) for i in range(n)]  # label 7: 4 samples only
    gl = GroupLabels.from_samples(np.arange(n), n, labels, 8)
    fixed = np.full(n, -1)
    fixed[10:20] = 2
    targets = np.array([240, 30, 30])
    out = stratify(
        keys, np.ones(n, np.int64), gl, ("a", "b", "c"), targets, 0, fixed=fixed, exact=True
    )
    assert (out[10:20] == 2).all()
    assert np.bincount(out, minlength=3).tolist() == [240, 30, 30]
    assert {int(out[i]) for i in range(4)} == {0, 1, 2}  # 4 samples of a label: in every set
    for lab in range(7):
        members = [i for i in range(n) if labels[i][0] == lab]
        counts = np.bincount(out[members], minlength=3)
        assert (counts > 0).all()


def test_representative_rule() -> None:
    labels = np.array([0, 0, 0, 3, 3, 5])
    resolution = np.array([10, 30, 30, 5, 5, 1])
    eligible = np.array([True, True, True, False, True, False])
    rep = representatives(labels, resolution, eligible)
    assert rep.tolist() == [1, 1, 1, 4, 4, -1]  # largest, then smallest row; -1: none eligible
