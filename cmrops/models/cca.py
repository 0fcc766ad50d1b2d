"""``cca``: canonical correlation analysis on the training pairs, the top-``bits`` directions,
centred, sign - the "CCA" row of cross-modal hashing tables.

:func:`canonical` is the regularised CCA that ``itq`` builds its shared space on too: with
centred ``x`` (n, dx) and ``y`` (n, dy), ``Cxx = XᵀX/n + r·(tr Cxx/dx)·I`` (likewise ``Cyy``),
Cholesky factors ``Cxx = Lx Lxᵀ``, ``Cyy = Ly Lyᵀ``, ``T = Lx⁻¹ Cxy Ly⁻ᵀ = U Σ Vᵀ``; the image
directions are ``Lx⁻ᵀ U``, the text ones ``Ly⁻ᵀ V`` (unit variance on the training pairs), their
canonical correlations ``Σ`` (descending). ``r`` is relative to the mean
variance, so it means the same at any embedding scale. Each direction pair's sign is fixed
(the largest entry of ``U``'s column positive), so the result does not depend on the LAPACK
build's sign choice.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cmrops.methods import CcaOptions


@dataclass
class Canonical:
    image: np.ndarray  # (dx, r) directions
    text: np.ndarray  # (dy, r)
    correlations: np.ndarray  # (r,) descending


@dataclass
class Solution:
    """What a closed-form solver returns (see :mod:`cmrops.models.closed_form`)."""

    image: np.ndarray  # (dx, bits): z = x_centred @ image
    text: np.ndarray  # (dy, bits)
    iterations: int
    history: list[dict[str, float]]  # one entry per iteration
    summary: dict[str, float]  # the final objective terms (train.json's final_losses)
    threshold: str = "zero"  # "zero": sign of the centred projection; "median": per-bit median


def directions_available(n: int, dx: int, dy: int) -> int:
    return max(0, min(dx, dy, n - 1))


def check_bits(method: str, bits: int, n: int, dx: int, dy: int) -> None:
    r = directions_available(n, dx, dy)
    if bits > r:
        raise ValueError(
            f"{method}-{bits}: only {r} canonical directions exist (min of image dim {dx}, text "
            f"dim {dy}, training samples - 1 = {n - 1}); use train.bits of at most {r}, or drop "
            f"{method} from train.methods for this data"
        )


def _whitener(c: np.ndarray) -> np.ndarray:
    """``L⁻¹`` with ``c = L Lᵀ`` (Cholesky: a tenth of an eigendecomposition's cost)."""
    return np.linalg.solve(np.linalg.cholesky(c), np.eye(len(c)))


def canonical(x: np.ndarray, y: np.ndarray, reg: float) -> Canonical:
    """Regularised CCA of centred float64 ``x`` and ``y`` (see module docstring)."""
    n = len(x)
    cxx, cyy, cxy = x.T @ x / n, y.T @ y / n, x.T @ y / n
    cxx[np.diag_indices_from(cxx)] += reg * max(np.trace(cxx) / len(cxx), 1e-300)
    cyy[np.diag_indices_from(cyy)] += reg * max(np.trace(cyy) / len(cyy), 1e-300)
    lx, ly = _whitener(cxx), _whitener(cyy)
    u, s, vh = np.linalg.svd(lx @ cxy @ ly.T, full_matrices=False)
    r = directions_available(n, x.shape[1], y.shape[1])
    u, v, s = u[:, :r], vh[:r].T, s[:r]
    flip = np.sign(u[np.abs(u).argmax(axis=0), np.arange(r)])
    flip[flip == 0] = 1.0
    return Canonical(lx.T @ (u * flip), ly.T @ (v * flip), s)


def solve(x: np.ndarray, y: np.ndarray, bits: int, options: CcaOptions, seed: int) -> Solution:
    """The top-``bits`` canonical directions of the centred training pairs."""
    del seed  # deterministic without one
    check_bits("cca", bits, len(x), x.shape[1], y.shape[1])
    c = canonical(x, y, options.reg)
    rho = c.correlations[:bits]
    return Solution(
        c.image[:, :bits],
        c.text[:, :bits],
        iterations=0,
        history=[],
        summary={"mean_correlation": float(rho.mean()), "min_correlation": float(rho.min())},
    )
