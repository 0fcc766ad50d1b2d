"""Validation mAP (tie-aware, from Hamming histograms) and the two losses."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cmrops import pack_bits
from cmrops.models.losses import contrastive_loss, dcmh_loss, label_similarity, sign
from cmrops.models.ranking import cross_modal_map


def _tie_aware_ap(dist: np.ndarray, rel: np.ndarray) -> float:
    """Mean AP over every order that keeps the distance order (brute force, tiny inputs)."""
    aps = []
    for perm in itertools.permutations(range(len(dist))):
        p = list(perm)
        if np.all(np.diff(dist[p]) >= 0):
            hits = np.cumsum(rel[p])
            prec = hits / np.arange(1, len(p) + 1)
            aps.append(float((prec * rel[p]).sum() / rel.sum()) if rel.any() else 0.0)
    return float(np.mean(aps))


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_validation_map_is_the_tie_aware_mean_ap(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_q, n_db = 3, 6
    bits = [rng.random((n, 64)) < p for n, p in ((n_q, 0.5), (n_db, 0.5))]
    bits[1][:, 3:] = bits[1][:1, 3:]  # few distinct distances: many ties
    codes = [pack_bits(b) for b in bits]
    labels_q, labels_db = rng.random((n_q, 3)) < 0.4, rng.random((n_db, 3)) < 0.4
    m = cross_modal_map(codes[0], codes[0], codes[1], codes[1], labels_q, labels_db)
    dist = np.bitwise_count(codes[0][:, None, :] ^ codes[1][None, :, :]).sum(axis=2, dtype=np.int64)
    rel = (labels_q.astype(int) @ labels_db.T.astype(int)) > 0
    expected = np.mean([_tie_aware_ap(dist[i], rel[i]) for i in range(n_q)])
    assert m["i2t"] == pytest.approx(expected, abs=1e-12)
    assert m["map"] == m["i2t"]


def test_paired_relevance() -> None:
    rng = np.random.default_rng(0)
    codes = pack_bits(rng.random((300, 64)) < 0.5)
    m = cross_modal_map(codes, codes, codes, codes, None, None)
    assert m["i2t"] == m["t2i"] == m["map"] == pytest.approx(1.0)  # each pair at distance 0
    other = pack_bits(rng.random((300, 64)) < 0.5)
    m = cross_modal_map(codes, other, codes, other, None, None)
    assert m["map"] < 0.1  # unrelated codes: the pair is anywhere
    with pytest.raises(ValueError, match="equal sizes"):
        cross_modal_map(codes, codes, codes[:5], codes[:5], None, None)


# --------------------------------------------------------------------------- losses


def test_dcmh_likelihood_matches_the_formula_and_is_stable() -> None:
    torch.manual_seed(0)
    f, g = torch.tanh(torch.randn(6, 16)), torch.tanh(torch.randn(6, 16))
    labels = torch.tensor([[1, 0], [0, 1], [1, 1], [0, 0], [1, 0], [0, 1]])
    s = label_similarity(labels, labels)
    assert s[3].sum() == 0  # no label: similar to nothing
    assert s[2].sum() == 5
    theta = 0.5 * f @ g.T
    expected = -(s * theta - torch.log1p(torch.exp(theta))).mean()
    _, parts = dcmh_loss(f, g, s, 0.0, 0.0)
    assert parts["likelihood"] == pytest.approx(float(expected), rel=1e-6)
    # huge inner products (256 bits at ±1): naive log(1 + e^θ) overflows, the loss does not
    big = torch.ones(4, 256, requires_grad=True)
    loss, parts = dcmh_loss(big, -big, torch.ones(4, 4), 1.0, 1.0)
    loss.backward()
    assert torch.isfinite(loss)
    assert float(parts["likelihood"]) == pytest.approx(128.0)
    assert torch.isfinite(big.grad).all()


def test_quantization_and_balance_terms() -> None:
    f = torch.tensor([[0.5, -1.0], [1.0, -0.5]])
    _, parts = dcmh_loss(f, f, torch.ones(2, 2), 1.0, 1.0)
    assert float(parts["quantization"]) == pytest.approx(2 * (0.25 + 0.25) / 4)
    assert float(parts["balance"]) == pytest.approx(2 * (0.75**2 + 0.75**2) / 2)
    assert sign(torch.tensor([-0.1, 0.0, 0.2])).tolist() == [-1.0, 1.0, 1.0]


def test_contrastive_loss_prefers_aligned_pairs_and_is_symmetric() -> None:
    torch.manual_seed(1)
    f = torch.tanh(torch.randn(8, 32))
    aligned, _ = contrastive_loss(f, f, 0.1, 0.0, 0.0)
    shuffled, _ = contrastive_loss(f, f[torch.randperm(8)], 0.1, 0.0, 0.0)
    assert aligned < shuffled
    g = torch.tanh(torch.randn(8, 32))
    assert contrastive_loss(f, g, 0.1, 0.0, 0.0)[0] == pytest.approx(
        float(contrastive_loss(g, f, 0.1, 0.0, 0.0)[0])
    )
