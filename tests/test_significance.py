"""The paired tests against references: scipy's permutation_test (exact, paired samples), a
brute-force enumeration of every sign assignment, scipy's bootstrap, and Holm's procedure by
hand."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import stats

from cmrops import significance as S


def _brute_p(a: np.ndarray, b: np.ndarray) -> float:
    d = b - a
    obs = abs(d.mean())
    hits = 0
    for signs in itertools.product((1.0, -1.0), repeat=len(d)):
        hits += abs((np.asarray(signs) * d).mean()) >= obs * (1 - 1e-12)
    return hits / 2 ** len(d)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_exact_p_matches_brute_force_and_scipy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 10
    a = rng.random(n)
    b = a + rng.normal(0.1 * seed, 0.2, n)
    r = S.paired_test(a, b, resamples=10_000)
    assert r.exact
    assert r.p_value == pytest.approx(_brute_p(a, b), abs=1e-12)
    ref = stats.permutation_test(
        (a, b), lambda x, y, axis: np.mean(y - x, axis=axis), permutation_type="samples",
        alternative="two-sided", n_resamples=np.inf,
    )  # fmt: skip
    assert r.p_value == pytest.approx(ref.pvalue, abs=1e-12)
    assert r.delta == pytest.approx((b - a).mean())


def test_tie_aware_values_with_exact_ties() -> None:
    """AP values tie often (0 and 1 for many queries): equal differences count as extreme."""
    a = np.array([0.0, 1.0, 0.5, 0.5, 0.25, 1.0])
    b = np.array([1.0, 1.0, 0.5, 1.0, 0.25, 0.0])
    r = S.paired_test(a, b)
    assert r.p_value == pytest.approx(_brute_p(a, b))
    same = S.paired_test(a, a)
    assert same.p_value == 1.0
    assert same.delta == 0.0
    assert same.ci_low == same.ci_high == 0.0


def test_monte_carlo_p_is_close_to_scipy_and_seeded() -> None:
    rng = np.random.default_rng(7)
    n = 200
    a = rng.random(n)
    b = np.clip(a + rng.normal(0.02, 0.15, n), 0, 1)
    r1 = S.paired_test(a, b, resamples=10_000, seed=3)
    r2 = S.paired_test(a, b, resamples=10_000, seed=3)
    assert r1 == r2  # seeded: the same numbers every run
    assert not r1.exact
    ref = stats.permutation_test(
        (a, b), lambda x, y, axis: np.mean(y - x, axis=axis), permutation_type="samples",
        alternative="two-sided", n_resamples=10_000, random_state=1,
    )  # fmt: skip
    # two Monte Carlo estimates of one p-value: within a few binomial standard errors
    se = np.sqrt(ref.pvalue * (1 - ref.pvalue) / 10_000) + 1e-4
    assert abs(r1.p_value - ref.pvalue) < 5 * se + 0.005


def test_bootstrap_ci_matches_scipy_percentile() -> None:
    rng = np.random.default_rng(11)
    n = 150
    d_a = rng.random(n)
    d_b = d_a + rng.normal(0.05, 0.1, n)
    r = S.paired_test(d_a, d_b, resamples=10_000, seed=0)
    ref = stats.bootstrap(
        (d_b - d_a,), np.mean, method="percentile", n_resamples=20_000, random_state=2,
        confidence_level=0.95,
    )  # fmt: skip
    assert r.ci_low == pytest.approx(ref.confidence_interval.low, abs=0.004)
    assert r.ci_high == pytest.approx(ref.confidence_interval.high, abs=0.004)
    assert r.ci_low < r.delta < r.ci_high


def test_a_real_difference_is_found_and_a_null_one_is_not() -> None:
    rng = np.random.default_rng(5)
    a = rng.random(300)
    better = np.clip(a + 0.08 + rng.normal(0, 0.05, 300), 0, 1)
    noise = np.clip(a + rng.normal(0, 0.05, 300), 0, 1)
    assert S.paired_test(a, better).p_value < 0.001
    assert S.paired_test(a, noise).p_value > 0.05


def test_rows_are_independent_of_each_other() -> None:
    """One stream of signs serves every comparison: a row's result does not depend on the
    other rows (the tests of a table do not change when a model is added)."""
    rng = np.random.default_rng(9)
    a = rng.random((3, 120))
    b = a + rng.normal(0.01, 0.1, (3, 120))
    together = S.paired_tests(a, b)
    alone = S.paired_tests(a[1:2], b[1:2])
    assert together[1].p_value == alone[0].p_value
    assert together[1].ci_low == pytest.approx(alone[0].ci_low, abs=1e-12)  # BLAS rounding
    assert together[1].ci_high == pytest.approx(alone[0].ci_high, abs=1e-12)


def test_holm_against_the_procedure_by_hand() -> None:
    p = [0.01, 0.04, 0.03, 0.005]
    # sorted: 0.005 (x4) = 0.02, 0.01 (x3) = 0.03, 0.03 (x2) = 0.06, 0.04 (x1) = 0.06 (monotone)
    assert S.holm(p).tolist() == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert S.holm([0.9, 0.8]).tolist() == [1.0, 1.0]


def test_compare_a_table_of_models() -> None:
    rng = np.random.default_rng(1)
    base = rng.random(80)
    per_query = {
        "itq-16": {"ap": base, "recall@10": base},
        "cca-16": {"ap": np.clip(base + 0.2, 0, 1), "recall@10": base},
        "itq-32": {"ap": base},
    }
    pairs = S.model_pairs({"itq-16": 16, "cca-16": 16, "itq-32": 32})
    assert pairs == [("cca-16", "itq-16")]
    assert len(S.model_pairs({"itq-16": 16, "cca-16": 16, "itq-32": 32}, "all")) == 3
    out = S.compare(per_query, pairs, S.SignificanceParams(resamples=2000))
    ap = out["ap"]["cca-16|itq-16"]
    assert ap["delta"] < 0
    assert ap["significant"]
    assert ap["p_holm"] < 0.001
    same = out["recall@10"]["cca-16|itq-16"]
    assert same["delta"] == 0
    assert not same["significant"]


def test_bad_input_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="one shape"):
        S.paired_tests(np.zeros((2, 3)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match="finite"):
        S.paired_test([0.0, np.nan], [0.0, 1.0])
    with pytest.raises(ValueError, match="no queries"):
        S.paired_test([], [])
    with pytest.raises(ValueError, match="alpha"):
        S.SignificanceParams(alpha=1.5)
