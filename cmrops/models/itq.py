"""``itq``: the training-free baseline CCA-ITQ (Gong, Lazebnik, Gordo & Perronnin, "Iterative
Quantization: A Procrustean Approach to Learning Binary Codes for Large-Scale Image Retrieval",
TPAMI 2013, section on paired data).

1. Shared space: regularised CCA on the training pairs (:func:`cmrops.models.cca.canonical`;
   PCA over two unrelated embedding spaces would not be cross-modal), each direction weighted
   by its canonical correlation to the power ``p`` (Gong et al. use 4).
2. PCA of both modalities' projections of the training pairs, stacked, to ``bits`` dims.
3. ITQ: from a seeded random orthogonal rotation ``R``, alternate ``B = sign(V R)`` and the
   orthogonal Procrustes step ``R = Ŵ Uᵀ`` where ``Bᵀ V = U Σ Ŵᵀ``, ``iterations`` times; the
   quantisation loss ``mean (B - V R)²`` of each iteration is kept in the history.

Codes: ``sign((x - mean) W_cca diag(ρ^p) W_pca R)`` per modality.
"""

from __future__ import annotations

import numpy as np

from cmrops.methods import ItqOptions
from cmrops.models.cca import Solution, canonical, check_bits


def _sign(x: np.ndarray) -> np.ndarray:
    return np.where(x >= 0, 1.0, -1.0)


def random_rotation(bits: int, seed: int) -> np.ndarray:
    """A seeded orthogonal ``(bits, bits)`` matrix (QR of a Gaussian, signs fixed)."""
    q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((bits, bits)))
    return q * np.where(np.diag(r) < 0, -1.0, 1.0)


def rotate(v: np.ndarray, iterations: int, seed: int) -> tuple[np.ndarray, list[dict[str, float]]]:
    """ITQ's rotation of zero-mean ``v`` (n, bits) and the quantisation loss per iteration."""
    rot = random_rotation(v.shape[1], seed)
    history = []
    for i in range(iterations):
        vr = v @ rot
        b = _sign(vr)
        history.append({"iteration": i + 1, "quantization": float(np.mean((b - vr) ** 2))})
        u, _, wh = np.linalg.svd(b.T @ v)
        rot = wh.T @ u.T
    return rot, history


def solve(x: np.ndarray, y: np.ndarray, bits: int, options: ItqOptions, seed: int) -> Solution:
    check_bits("itq", bits, len(x), x.shape[1], y.shape[1])
    c = canonical(x, y, options.reg)
    scale = c.correlations**options.power
    wx, wy = c.image * scale, c.text * scale
    z = np.vstack([x @ wx, y @ wy])  # both zero-mean: the stack is too
    evals, evecs = np.linalg.eigh(z.T @ z / len(z))
    pca = evecs[:, np.argsort(-evals, kind="stable")[:bits]]
    pca = pca * np.where(pca[np.abs(pca).argmax(axis=0), np.arange(bits)] < 0, -1.0, 1.0)
    v = z @ pca
    rot, history = rotate(v, options.iterations, seed)
    vr = v @ rot
    summary = {"quantization": float(np.mean((_sign(vr) - vr) ** 2))}
    return Solution(wx @ pca @ rot, wy @ pca @ rot, options.iterations, history, summary)
