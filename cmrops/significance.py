"""Paired significance tests over queries: is a difference between two models (or a model with
and without a cleaning rule) real, or what another draw of queries would undo?

Two retrieval runs evaluated on the **same queries** give, per query ``i``, a value of a metric
for each (tie-aware AP, R@K, ... from :class:`cmrops.metrics.RankingMetrics`) and so a
difference ``d_i = b_i - a_i``. The tests here use only those per-query differences (paired), as
the IR literature recommends for comparing systems on one test collection (Smucker, Allan &
Carterette, CIKM 2007):

* **p-value: paired randomisation test** (a sign-flip permutation test). Under the null
  hypothesis that the two runs are exchangeable per query, each ``d_i`` is as likely to be
  ``-d_i``; the p-value is the share of sign assignments whose mean difference is at least as
  far from 0 as the observed one (two-sided). With ``2 ** n <= resamples`` every assignment is
  enumerated (exact); otherwise ``resamples`` random ones are drawn and the p-value is
  ``(1 + hits) / (1 + resamples)`` (Phipson & Smyth 2010: never 0, valid at any resample count).
* **confidence interval: paired bootstrap** of the mean difference (queries drawn with
  replacement, percentile interval at ``1 - alpha``).
* **many comparisons**: :func:`holm` adjusts a family's p-values (Holm 1979); ``significant``
  is decided on the adjusted value, so a table of dozens of comparisons does not call one in
  twenty chance differences real.

Everything is seeded (``seed``) and vectorised over comparisons: one block of random signs and
bootstrap weights serves every comparison of a family (common random numbers), in chunks of
``_CHUNK`` resamples so memory stays ``O(chunk x queries)``. Ties count as "at least as
extreme" within a relative tolerance of ``1e-12`` (as scipy's ``permutation_test`` does), so a
float rounding difference never flips a hit.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "PairedResult",
    "SignificanceParams",
    "compare",
    "holm",
    "paired_test",
    "paired_tests",
]

#: Resamples drawn per numpy pass (memory: chunk x queries floats).
_CHUNK = 1000
#: Relative tolerance under which a resampled statistic counts as equal to the observed one.
_TIE_RTOL = 1e-12
#: Largest query count enumerated exactly whatever ``resamples`` says (2 ** 20 sign vectors).
_EXACT_MAX = 20

METHOD = (
    "paired randomisation (sign-flip) test over queries, two-sided, on the mean per-query "
    "difference; exact enumeration when 2^queries <= resamples, else (1 + hits) / (1 + "
    "resamples); percentile bootstrap CI of the mean difference; Holm-adjusted p-values per "
    "family (direction x metric); significant = adjusted p < alpha"
)


@dataclass(frozen=True)
class SignificanceParams:
    """How comparisons are tested (``evaluate.significance`` in params.yaml)."""

    enabled: bool = True
    resamples: int = 10_000  # random sign assignments and bootstrap draws per comparison
    seed: int = 0
    alpha: float = 0.05  # the CI is 1 - alpha; significant = Holm-adjusted p < alpha
    recall_at: list[int] = field(default_factory=lambda: [10])  # R@K tested beside AP
    # same_bits: every two models of one code length (the usual table); all: every two models
    pairs: str = "same_bits"

    def __post_init__(self) -> None:
        if self.resamples < 100:
            raise ValueError(f"resamples must be >= 100, got {self.resamples}")
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha}")
        if any(isinstance(k, bool) or k < 1 for k in self.recall_at):
            raise ValueError(f"recall_at: cut-offs must be integers >= 1, got {self.recall_at}")
        if self.pairs not in ("same_bits", "all"):
            raise ValueError(f"pairs must be 'same_bits' or 'all', got {self.pairs!r}")


@dataclass(frozen=True)
class PairedResult:
    """One comparison: ``b`` against ``a`` (``delta = mean(b) - mean(a)``)."""

    queries: int
    mean_a: float
    mean_b: float
    delta: float
    ci_low: float
    ci_high: float
    p_value: float
    exact: bool  # every sign assignment enumerated

    def to_json(self, digits: int = 6) -> dict[str, Any]:
        def r(x: float) -> float:
            return round(float(x), digits)

        return {
            "queries": self.queries,
            "mean_a": r(self.mean_a),
            "mean_b": r(self.mean_b),
            "delta": r(self.delta),
            "ci_low": r(self.ci_low),
            "ci_high": r(self.ci_high),
            "p_value": r(self.p_value),
            "exact": self.exact,
        }


def paired_test(
    a: ArrayLike, b: ArrayLike, resamples: int = 10_000, seed: int = 0, alpha: float = 0.05
) -> PairedResult:
    """Test ``b`` against ``a``, two per-query arrays of one metric over the same queries."""
    return paired_tests(np.asarray(a)[None, :], np.asarray(b)[None, :], resamples, seed, alpha)[0]


def paired_tests(
    a: ArrayLike, b: ArrayLike, resamples: int = 10_000, seed: int = 0, alpha: float = 0.05
) -> list[PairedResult]:
    """Test row ``j`` of ``b`` against row ``j`` of ``a`` for every ``j``: ``(comparisons,
    queries)`` arrays of per-query values. One seeded stream of signs and bootstrap draws
    serves every row, so the result of a row does not depend on the other rows."""
    x = np.atleast_2d(np.asarray(a, dtype=np.float64))
    y = np.atleast_2d(np.asarray(b, dtype=np.float64))
    if x.shape != y.shape:
        raise ValueError(f"a and b must have one shape, got {x.shape} and {y.shape}")
    t, n = x.shape
    if n == 0:
        raise ValueError("no queries to compare")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("per-query values must be finite")
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    d = y - x  # (t, n)
    observed = d.mean(axis=1)
    p, exact = _randomisation_p(d, observed, resamples, seed)
    low, high = _bootstrap_ci(d, resamples, seed, alpha)
    return [
        PairedResult(n, float(x[j].mean()), float(y[j].mean()), float(observed[j]),
                     float(low[j]), float(high[j]), float(p[j]), exact)
        for j in range(t)
    ]  # fmt: skip


def _randomisation_p(
    d: NDArray[np.float64], observed: NDArray[np.float64], resamples: int, seed: int
) -> tuple[NDArray[np.float64], bool]:
    t, n = d.shape
    target = np.abs(observed) * (1.0 - _TIE_RTOL)
    hits = np.zeros(t, np.int64)
    if n <= _EXACT_MAX and 2**n <= max(resamples, 1):
        total = 2**n
        for lo in range(0, total, _CHUNK * 8):
            codes = np.arange(lo, min(total, lo + _CHUNK * 8), dtype=np.int64)
            signs = 1.0 - 2.0 * ((codes[:, None] >> np.arange(n)) & 1)  # (m, n) of +-1
            stats = np.abs(signs @ d.T) / n  # (m, t)
            hits += (stats >= target).sum(axis=0)
        return hits / total, True
    rng = np.random.default_rng([seed, 0x5167])
    done = 0
    while done < resamples:
        m = min(_CHUNK, resamples - done)
        signs = rng.integers(0, 2, size=(m, n), dtype=np.int8).astype(np.float64) * 2.0 - 1.0
        stats = np.abs(signs @ d.T) / n
        hits += (stats >= target).sum(axis=0)
        done += m
    return (1.0 + hits) / (1.0 + resamples), False


def _bootstrap_ci(
    d: NDArray[np.float64], resamples: int, seed: int, alpha: float
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    t, n = d.shape
    rng = np.random.default_rng([seed, 0xB007])
    means = np.empty((resamples, t), np.float64)
    done = 0
    while done < resamples:
        m = min(_CHUNK, resamples - done)
        weights = rng.multinomial(n, np.full(n, 1.0 / n), size=m).astype(np.float64)  # (m, n)
        means[done : done + m] = weights @ d.T / n
        done += m
    low = np.quantile(means, alpha / 2, axis=0)
    high = np.quantile(means, 1 - alpha / 2, axis=0)
    return low, high


def holm(p_values: Sequence[float] | NDArray[np.float64]) -> NDArray[np.float64]:
    """Holm-Bonferroni adjusted p-values of one family (step-down, monotone, capped at 1)."""
    p = np.asarray(p_values, dtype=np.float64)
    m = len(p)
    if m == 0:
        return p.copy()
    order = np.argsort(p, kind="stable")
    adjusted = np.empty(m, np.float64)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted


# --------------------------------------------------------------------------- model tables


def model_pairs(models: Mapping[str, int], how: str = "same_bits") -> list[tuple[str, str]]:
    """The (a, b) model pairs a table compares: every two models of one code length
    (``same_bits``), or every two (``all``); in sorted name order."""
    names = sorted(models)
    return [
        (a, b) for a, b in itertools.combinations(names, 2)
        if how == "all" or models[a] == models[b]
    ]  # fmt: skip


def compare(
    per_query: Mapping[str, Mapping[str, NDArray[np.float64]]],
    pairs: Sequence[tuple[str, str]],
    params: SignificanceParams,
) -> dict[str, dict[str, Any]]:
    """Paired tests of one family per metric: ``per_query[run][metric]`` are per-query arrays
    over the same queries; every pair ``(a, b)`` tests ``b - a``. Returns
    ``{metric: {"a|b": {delta, ci_low, ci_high, p_value, p_holm, significant, ...}}}``, the
    p-values Holm-adjusted within each metric's family."""
    metrics = sorted({m for runs in per_query.values() for m in runs})
    out: dict[str, dict[str, Any]] = {}
    for metric in metrics:
        usable = [(a, b) for a, b in pairs if metric in per_query[a] and metric in per_query[b]]
        if not usable:
            continue
        xa = np.stack([per_query[a][metric] for a, _ in usable])
        xb = np.stack([per_query[b][metric] for _, b in usable])
        results = paired_tests(xa, xb, params.resamples, params.seed, params.alpha)
        adjusted = holm([r.p_value for r in results])
        family: dict[str, Any] = {}
        for (a, b), r, ph in zip(usable, results, adjusted, strict=True):
            family[f"{a}|{b}"] = {
                **r.to_json(),
                "p_holm": round(float(ph), 6),
                "significant": bool(ph < params.alpha),
            }
        out[metric] = family
    return out


def describe(params: SignificanceParams) -> dict[str, Any]:
    """How the tests of a report were made (for its protocol card)."""
    return {
        "method": METHOD,
        "resamples": params.resamples,
        "seed": params.seed,
        "alpha": params.alpha,
        "ci": f"{1 - params.alpha:.0%} percentile bootstrap of mean(b - a)",
        "key": "'a|b' tests b against a: delta = mean(b) - mean(a) over the same queries",
    }


def ranking_values(m: Any, recall_at: Sequence[int], n_database: int) -> dict[str, Any]:
    """The per-query arrays a retrieval comparison tests, from a
    :class:`cmrops.metrics.RankingMetrics`: ``map`` (tie-aware AP; its mean is the mAP) and
    ``recall_at_<K>`` for each K of ``recall_at`` that was computed (K clipped to the database
    size, named as requested)."""
    out: dict[str, Any] = {"map": np.asarray(m.ap, np.float64)}
    for k in recall_at:
        used = min(int(k), n_database)
        if used in m.recall_at:
            out[f"recall_at_{k}"] = np.asarray(m.recall_at[used], np.float64)
    return out


def retrieval_comparisons(
    per_query: Mapping[str, Mapping[str, Mapping[str, Any]]],
    bits: Mapping[str, int],
    params: SignificanceParams,
) -> dict[str, Any]:
    """The ``significance`` section of a retrieval report: ``per_query[model][direction]`` are
    :func:`ranking_values`; the models are paired as ``params.pairs`` says (``bits``: each
    model's code length), one family per direction and metric."""
    pairs = model_pairs(bits, params.pairs)
    directions = sorted({d for runs in per_query.values() for d in runs})
    out: dict[str, Any] = {**describe(params), "pairs": params.pairs, "directions": {}}
    for direction in directions:
        runs = {m: d[direction] for m, d in per_query.items() if direction in d}
        usable = [(a, b) for a, b in pairs if a in runs and b in runs]
        out["directions"][direction] = compare(runs, usable, params) if usable else {}
    return out
