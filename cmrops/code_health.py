"""Health of a set of hash codes: bit balance, bit correlation, bucket occupancy.

What a trained model's database codes look like, independent of any relevance: a bit that is
almost always 0 or 1 carries no information, correlated bits waste code length, and few distinct
codes (large buckets) make Hamming ranking tie-heavy. The evaluate stage reports
:func:`code_health` per modality; the dashboard and Prometheus show it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import NDArray

from cmrops.codes import unpack_bits

__all__ = ["bit_balance", "bit_correlation", "bucket_occupancy", "code_health"]


def bit_balance(codes: NDArray[np.uint64], n_bits: int) -> dict[str, Any]:
    """Mean of each bit over the codes: ``mean_abs_deviation`` = mean |p - 0.5| (0 = perfectly
    balanced, 0.5 = constant bits), the ``worst_bit`` and its mean, and ``constant_bits``."""
    p = _bit_means(unpack_bits(codes, n_bits))
    dev = np.abs(p - 0.5)
    worst = int(np.argmax(dev)) if len(p) else 0
    return {
        "mean_abs_deviation": float(dev.mean()),
        "worst_bit": worst,
        "worst_bit_mean": float(p[worst]),
        "constant_bits": int(((p == 0) | (p == 1)).sum()),
    }


def _bit_means(bits: NDArray[np.uint8]) -> NDArray[np.float64]:
    if len(bits) == 0:
        raise ValueError("codes: at least one code is needed")
    return bits.sum(axis=0, dtype=np.int64) / len(bits)


def bit_correlation(codes: NDArray[np.uint64], n_bits: int) -> float | None:
    """Mean absolute Pearson correlation between pairs of distinct, non-constant bits (None with
    fewer than two such bits)."""
    bits = unpack_bits(codes, n_bits)
    n = len(bits)
    p = _bit_means(bits)
    gram = np.zeros((n_bits, n_bits), dtype=np.float64)
    for s in range(0, n, 1 << 20):  # float32 sums of 0/1 products are exact below 2**24 rows
        x = bits[s : s + (1 << 20)].astype(np.float32)
        gram += (x.T @ x).astype(np.float64)
    cov = gram / n - np.outer(p, p)
    var = p * (1.0 - p)
    live = np.flatnonzero(var > 0)
    if len(live) < 2:
        return None
    sd = np.sqrt(var[live])
    corr = cov[np.ix_(live, live)] / np.outer(sd, sd)
    off = ~np.eye(len(live), dtype=bool)
    return float(np.abs(corr[off]).mean())


def bucket_occupancy(codes: NDArray[np.uint64], n_bits: int) -> dict[str, Any]:
    """How codes spread over buckets (identical codes): ``distinct`` codes, ``distinct_ratio``
    (distinct / n), ``largest`` bucket, and the bucket ``entropy_bits`` (Shannon, log2) beside
    its maximum ``min(n_bits, log2 n)``."""
    c = np.asarray(codes)
    if c.ndim != 2 or c.dtype != np.uint64 or len(c) == 0:
        raise ValueError(
            f"codes: expected non-empty (n, words) uint64 codes, got {c.dtype}{c.shape}"
        )
    if c.shape[1] == 1:
        _, counts = np.unique(c[:, 0], return_counts=True)
    else:
        _, counts = np.unique(c, axis=0, return_counts=True)
    n = len(c)
    prob = counts / n
    return {
        "distinct": len(counts),
        "distinct_ratio": len(counts) / n,
        "largest": int(counts.max()),
        "entropy_bits": float(-(prob * np.log2(prob)).sum()),
        "max_entropy_bits": float(min(n_bits, math.log2(n))),
    }


def code_health(codes: NDArray[np.uint64], n_bits: int) -> dict[str, Any]:
    """Bit balance, mean absolute bit correlation and bucket occupancy of a set of codes."""
    return {
        "codes": len(codes),
        "bit_balance": bit_balance(codes, n_bits),
        "mean_abs_bit_correlation": bit_correlation(codes, n_bits),
        "buckets": bucket_occupancy(codes, n_bits),
    }
