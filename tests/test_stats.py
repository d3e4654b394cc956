"""Intervals: Clopper-Pearson for proportions, BCa-or-t for continuous scores, paired differences; NaN skipped.

How often they are wrong is measured in tests/test_statistical_guarantees.py."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bench.stats import (
    bootstrap_mean,
    mean_ci,
    paired_bootstrap_diff,
    percentile,
    quantile_bound_min_n,
    quantile_upper_bound,
    quantile_upper_rank,
    wilson,
)


def test_wilson_known_values() -> None:
    lo, hi = wilson(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-3) and hi == pytest.approx(0.9433, abs=1e-3)
    assert wilson(0, 10)[0] == 0.0 and wilson(10, 10)[1] == pytest.approx(1.0)


def test_mean_ci_picks_the_method_and_skips_unscorable() -> None:
    binary = mean_ci([1, 0, 1, None, float("nan"), 1])
    assert binary["method"] == "clopper-pearson" and binary["n"] == 4 and binary["mean"] == 0.75
    cont = mean_ci([0.2, 0.4, 0.6, 0.8])
    assert cont["method"] == "bca+t" and cont["ci_low"] < 0.5 < cont["ci_high"]
    assert 0 <= cont["ci_low"] and cont["ci_high"] <= 1
    assert mean_ci([])["mean"] is None


def test_known_exact_values() -> None:
    # Clopper-Pearson 8/10: [0.4439, 0.9748]
    q = mean_ci([1] * 8 + [0] * 2)
    assert q["ci_low"] == pytest.approx(0.4439, abs=1e-3) and q["ci_high"] == pytest.approx(0.9748, abs=1e-3)


def test_no_zero_width_interval_and_no_float_noise_pass() -> None:
    # the issue's cases: one sample of 0.9, and [1, 1, 0.8] whose naive bound was 0.8000000000000002
    one = mean_ci([0.9])
    assert one["ci_low"] < 0.5 and one["ci_high"] == 1.0
    three = mean_ci([1, 1, 0.8])
    assert three["ci_low"] < 0.8
    flat = mean_ci([0.8] * 5)
    assert flat["ci_low"] < 0.8 < flat["ci_high"]


def test_samples_to_decide() -> None:
    from bench.stats import samples_to_decide

    assert samples_to_decide([0.5] * 10, 0.8) is None  # the mean is below: more of the same would not help
    n = samples_to_decide([1] * 9 + [0], 0.8)
    assert n is not None and n > 10
    assert samples_to_decide([1] * 95 + [0] * 5, 0.5) < samples_to_decide([1] * 95 + [0] * 5, 0.9)


def test_bootstrap_is_seeded() -> None:
    vals = [0.1, 0.5, 0.9, 0.3, 0.7]
    assert bootstrap_mean(vals, seed=3) == bootstrap_mean(vals, seed=3)


def test_paired_difference_detects_a_drop() -> None:
    base = [1.0] * 40
    cand = [1.0] * 20 + [0.0] * 20
    d = paired_bootstrap_diff(base, cand)
    assert d["delta"] == -0.5 and d["ci_high"] < 0
    same = paired_bootstrap_diff(base, base)
    assert same["delta"] == 0 and same["ci_low"] == same["ci_high"] == 0
    shifted = paired_bootstrap_diff([0.5] * 10, [0.6] * 10)  # every pair moved the same: not a zero-width interval
    assert shifted["ci_low"] < 0.1 < shifted["ci_high"]


def test_mcnemar_exact_matches_the_issue_example() -> None:
    from bench.stats import mcnemar_exact

    assert mcnemar_exact(4, 0) == pytest.approx(0.125)


def test_percentile_ignores_none() -> None:
    assert percentile([None, 1, 2, 3], 50) == 2
    assert percentile([None], 50) is None
    assert math.isnan(wilson(0, 0)[0])


@pytest.mark.parametrize("q,alpha", [(0.95, 0.05), (0.5, 0.05), (0.9, 0.1), (0.99, 0.05)])
def test_quantile_upper_rank_is_the_smallest_with_exact_coverage(q, alpha) -> None:
    from scipy.stats import beta

    for n in (1, 10, 30, 58, 59, 64, 100, 300, 1000):
        k = quantile_upper_rank(n, q, alpha)
        if k is None:
            # even the largest value falls short: P(max >= quantile) = 1 - q**n < 1 - alpha
            assert 1 - q ** n < 1 - alpha
            continue
        # the k-th of n uniforms is Beta(k, n - k + 1): its chance to lie at or above the quantile q is the coverage
        assert beta.sf(q, k, n - k + 1) >= 1 - alpha - 1e-12
        if k > 1:
            assert beta.sf(q, k - 1, n - k + 2) < 1 - alpha          # one rank lower no longer covers


def test_quantile_bound_needs_59_values_for_p95() -> None:
    assert quantile_bound_min_n(0.95) == 59 and quantile_bound_min_n(0.99) == 299
    assert quantile_upper_rank(58, 0.95) is None and quantile_upper_rank(59, 0.95) == 59
    assert quantile_upper_rank(64, 0.95) == 64 and quantile_upper_rank(200, 0.95) < 200
    assert quantile_upper_bound([1.0] * 58, 0.95) is None


def test_quantile_upper_bound_is_that_order_statistic_and_covers() -> None:
    values = [float(v) for v in range(200, 0, -1)] + [None, math.nan]
    k = quantile_upper_rank(200, 0.95)
    assert quantile_upper_bound(values, 0.95) == float(k)               # None/NaN dropped, the k-th smallest
    rng = np.random.default_rng(7)
    true_p95 = -math.log(0.05)                                          # exponential(1)
    draws = np.sort(rng.exponential(size=(4000, 100)), axis=1)
    k = quantile_upper_rank(100, 0.95)
    covered = float(np.mean(draws[:, k - 1] >= true_p95))
    from scipy.stats import binom

    exact = float(binom.cdf(k - 1, 100, 0.95))
    assert abs(covered - exact) < 4 * math.sqrt(exact * (1 - exact) / 4000) and exact >= 0.95


def test_kernels_without_scipy_stats_equal_scipy_stats() -> None:
    """clopper_pearson, the t interval and McNemar's exact test skip importing scipy.stats (about 1 s of a
    `bench compare`); their figures must stay scipy.stats's to the bit."""
    from scipy.stats import beta, binomtest, t

    from bench.stats import _t_interval, clopper_pearson, mcnemar_exact

    for n in range(1, 160):
        for worse in range(n + 1):
            assert mcnemar_exact(worse, n - worse) == binomtest(worse, n, 0.5).pvalue, (worse, n)
    assert mcnemar_exact(0, 0) == 1.0
    rng = np.random.default_rng(3)
    n = 57
    s = rng.random(200) * n
    lo, hi = clopper_pearson(s, n)
    with np.errstate(invalid="ignore", divide="ignore"):
        assert np.array_equal(lo, np.where(s <= 0, 0.0, beta.ppf(0.025, np.maximum(s, 1e-12), n - s + 1)))
        assert np.array_equal(hi, np.where(s >= n, 1.0, beta.ppf(0.975, s + 1, np.maximum(n - s, 1e-12))))
    x = rng.random((5, 33))
    lo_t, hi_t = _t_interval(x, 0.05)
    half = t.ppf(0.975, 32) * x.std(axis=-1, ddof=1) / math.sqrt(33)
    assert np.array_equal(lo_t, x.mean(axis=-1) - half) and np.array_equal(hi_t, x.mean(axis=-1) + half)


def test_binomial_t_and_normal_kernels_equal_scipy_stats() -> None:
    """binom_cdf, binom_sf, t_sf (routing p-values, the p95 bound) skip importing scipy.stats; equal to the bit,
    out-of-range k included."""
    from scipy.special import ndtri
    from scipy.stats import binom, norm, t

    from bench.stats import binom_cdf, binom_sf, t_sf

    for n in (1, 2, 7, 59, 64, 333, 250_000):
        for p in (0.0, 0.05, 0.5, 0.8, 0.95, 1.0):
            k = np.unique(np.r_[-3, -1, 0, 1, n // 3, n // 2, n - 2, n - 1, n, n + 4])
            assert np.array_equal(binom_cdf(k, n, p), binom.cdf(k, n, p), equal_nan=True), (n, p)
            assert np.array_equal(binom_sf(k, n, p), binom.sf(k, n, p), equal_nan=True), (n, p)
    rng = np.random.default_rng(5)
    for x, df in zip(rng.normal(0, 4, 300), rng.integers(1, 400_000, 300)):
        assert t_sf(float(x), float(df)) == t.sf(x, df)
    assert float(ndtri(0.975)) == norm.ppf(0.975)


def test_binomial_kernels_fall_back_to_scipy_stats_with_the_same_figures(monkeypatch: pytest.MonkeyPatch) -> None:
    """A SciPy without the private kernels: binom's own methods stand in, and every figure stays the same."""
    from scipy.stats import binom, binomtest

    import bench.stats as st

    monkeypatch.setattr(st, "_binom_kernels", lambda: (binom.pmf, binom.cdf, binom.sf))
    for n in range(1, 60):
        for worse in range(n + 1):
            assert st.mcnemar_exact(worse, n - worse) == binomtest(worse, n, 0.5).pvalue, (worse, n)
    k = np.arange(-2, 70)
    assert np.array_equal(st.binom_cdf(k, 64, 0.95), binom.cdf(k, 64, 0.95))
    assert np.array_equal(st.binom_sf(k, 64, 0.95), binom.sf(k, 64, 0.95))
