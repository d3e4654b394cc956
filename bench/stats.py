"""Statistics used everywhere: percentiles, intervals that hold at small n, paired differences, sample-size estimates.

Quality scores live in [0, 1]. The rules, and the rates the test suite checks them at by simulation
(tests/test_statistical_guarantees.py):

- 0/1 scores: the exact Clopper-Pearson interval (never narrower than it should be at any n).
- continuous scores: the wider of the BCa bootstrap (scipy) and the Student-t interval on each side. BCa alone
  covers too rarely for skewed scores at n = 10-30; t alone does for left-skewed ones; their union covers
  at least 97% one-sided for the shapes simulated.
- zero variance ([1, 1, 1] or [0.8, 0.8]): no interval of zero width; the sum is treated as Clopper-Pearson
  successes, the widest a [0, 1] score of that mean can need.
- a quantile of latencies (is p95 within a budget?): a distribution-free one-sided upper bound, an order
  statistic picked by the binomial (quantile_upper_bound); tests/test_operating_point_sim.py checks the rate.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np

Z95 = 1.959963984540054

# Above this many values the interval of a mean is Student-t (normal to well within resampling noise), and
# bootstrapping would cost n_boot * n work.
NORMAL_ABOVE = 1_000
N_BOOT = 1999


def clean(values: Sequence[float | None] | np.ndarray) -> np.ndarray:
    """Drop None and NaN: a sample that could not be scored is not a zero."""
    if isinstance(values, np.ndarray) and values.dtype.kind in "fiub":  # no None in a numeric array
        arr = values.astype(float).ravel()
    else:
        arr = np.asarray([v for v in values if v is not None], dtype=float)
    return arr[~np.isnan(arr)] if arr.size else arr


def percentile(values: Sequence[float | None] | np.ndarray, q: float) -> float | None:
    arr = clean(values)
    return float(np.percentile(arr, q)) if arr.size else None


@lru_cache(maxsize=1024)
def quantile_upper_rank(n: int, q: float, alpha: float = 0.05) -> int | None:
    """The smallest 1-based rank k such that the order statistic X_(k) of n i.i.d. values lies at or above their
    true q-quantile with probability at least 1 - alpha; None when no k <= n does (n too small).

    X_(k) falls below the q-quantile only when at least k of the n values do, and each does with probability at
    most q (exactly q for a continuous distribution), so P(X_(k) >= quantile) >= P(Binomial(n, q) < k) =
    binom.cdf(k - 1, n, q), whatever the distribution. Distribution-free: no shape is assumed."""
    if n < 1 or not 0 < q < 1 or not 0 < alpha < 1:
        return None
    cover = binom_cdf(np.arange(n), n, q)  # cover[k - 1] = P(Binomial(n, q) < k), k = 1..n
    ok = np.flatnonzero(cover >= 1 - alpha)
    return int(ok[0]) + 1 if ok.size else None


def quantile_bound_min_n(q: float, alpha: float = 0.05) -> int:
    """The fewest values for which quantile_upper_rank exists: the largest value is a bound once q**n <= alpha
    (59 for p95 at 95% confidence, 299 for p99)."""
    n = max(1, math.ceil(math.log(alpha) / math.log(q)))
    while quantile_upper_rank(n, q, alpha) is None:  # guard the float edge of the closed form
        n += 1
    while n > 1 and quantile_upper_rank(n - 1, q, alpha) is not None:
        n -= 1
    return n


def quantile_upper_bound(values: Sequence[float | None], q: float, alpha: float = 0.05) -> float | None:
    """A one-sided (1 - alpha) upper confidence bound for the q-quantile (q in (0, 1)) of i.i.d. `values`:
    the order statistic X_(k) of quantile_upper_rank. None when there are too few values for any bound
    (quantile_bound_min_n). None and NaN are dropped; an infinite value (a request that never finished) may be
    the bound, and then says the quantile cannot be bounded below anything finite."""
    arr = np.sort(clean(values))
    k = quantile_upper_rank(int(arr.size), float(q), float(alpha))
    return None if k is None else float(arr[k - 1])


def is_binary(values: Sequence[float | None] | np.ndarray) -> bool:
    arr = clean(values) if not isinstance(values, np.ndarray) else values[~np.isnan(values)]
    return bool(arr.size) and bool(np.all((arr == 0) | (arr == 1)))


def wilson(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a proportion (descriptive; decisions use clopper_pearson)."""
    if n == 0:
        return (math.nan, math.nan)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo, hi = centre - half, centre + half
    return (0.0 if lo < 1e-12 else lo, 1.0 if hi > 1 - 1e-12 else hi)


def clopper_pearson(successes: np.ndarray | float, n: int, alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Exact (conservative) binomial interval; `successes` may be fractional (a [0, 1] score's sum)."""
    from scipy.special import betaincinv  # beta.ppf's own kernel, without importing scipy.stats (about 1 s)

    s = np.asarray(successes, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        lo = np.where(s <= 0, 0.0, betaincinv(np.maximum(s, 1e-12), n - s + 1, alpha / 2))
        hi = np.where(s >= n, 1.0, betaincinv(s + 1, np.maximum(n - s, 1e-12), 1 - alpha / 2))
    return lo, hi


def _t_interval(x: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Student-t interval of the mean along the last axis."""
    from scipy.special import stdtrit  # t.ppf's own kernel, without importing scipy.stats

    n = x.shape[-1]
    m = x.mean(axis=-1)
    half = stdtrit(n - 1, 1 - alpha / 2) * x.std(axis=-1, ddof=1) / math.sqrt(n)
    return m - half, m + half


def _bca(x: np.ndarray, alpha: float, seed: int, n_boot: int) -> tuple[np.ndarray, np.ndarray]:
    """scipy's BCa bootstrap of the mean along the last axis; NaN where it cannot be computed."""
    from scipy.stats import bootstrap

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = bootstrap((x,), np.mean, axis=-1, vectorized=True, method="BCa", n_resamples=n_boot,
                        confidence_level=1 - alpha, random_state=np.random.default_rng(seed))
    return np.asarray(res.confidence_interval.low), np.asarray(res.confidence_interval.high)


def mean_interval(x: np.ndarray, *, alpha: float = 0.05, seed: int = 0, n_boot: int = N_BOOT,
                  binary: bool | None = None) -> tuple[np.ndarray, np.ndarray, str]:
    """The interval of the mean of each row of `x` (2-D: replicates x samples, no NaN), and the method's name.

    Batch-shaped so that the simulations in the test suite run exactly this code, vectorized."""
    x = np.atleast_2d(np.asarray(x, dtype=float))
    n = x.shape[-1]
    if binary is None:
        binary = bool(np.all((x == 0) | (x == 1)))
    sums = x.sum(axis=-1)
    if binary:
        lo, hi = clopper_pearson(sums, n, alpha)
        return lo, hi, "clopper-pearson"
    cp_lo, cp_hi = clopper_pearson(np.clip(sums, 0, n), n, alpha)
    if n < 2:
        return cp_lo, cp_hi, "clopper-pearson (one value)"
    t_lo, t_hi = _t_interval(x, alpha)
    if n > NORMAL_ABOVE:
        lo, hi, method = t_lo, t_hi, "student-t"
    else:
        b_lo, b_hi = _bca(x, alpha, seed, n_boot)
        lo = np.fmin(b_lo, t_lo)  # fmin/fmax: a NaN BCa (degenerate data) leaves the t bound
        hi = np.fmax(b_hi, t_hi)
        method = "bca+t"
    zero_var = x.std(axis=-1) < 1e-12
    in_unit = bool(np.all((x >= 0) & (x <= 1)))
    if in_unit:
        lo, hi = np.where(zero_var, cp_lo, lo), np.where(zero_var, cp_hi, hi)
        lo, hi = np.clip(lo, 0.0, 1.0), np.clip(hi, 0.0, 1.0)
    return lo, hi, method


def mean_ci(values: Sequence[float | None] | np.ndarray, *, seed: int = 0, alpha: float = 0.05) -> dict[str, Any]:
    """Mean with a (1 - alpha) interval: Clopper-Pearson for 0/1 scores, BCa-or-t for continuous ones."""
    arr = clean(values)
    if arr.size == 0:
        return {"mean": None, "ci_low": None, "ci_high": None, "n": 0, "method": None}
    lo, hi, method = mean_interval(arr[None, :], alpha=alpha, seed=seed)
    m = float(arr.mean())
    return {"mean": m, "ci_low": float(min(lo[0], m)), "ci_high": float(max(hi[0], m)), "n": int(arr.size),
            "method": method}


def samples_to_decide(values: Sequence[float | None] | np.ndarray, target: float, *, alpha: float = 0.05) -> int | None:
    """About how many samples would put the interval's lower bound at the target, if the observed mean and spread
    held; None where the observed mean does not exceed the target (more samples of the same would not decide it)."""
    arr = clean(values)
    if arr.size == 0:
        return None
    m = float(arr.mean())
    if m <= target:
        return None
    sd = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
    sd = max(sd, math.sqrt(max(m * (1 - m), 0.0)) if is_binary(arr) else sd, 0.05)
    from scipy.special import ndtri  # norm.ppf's own kernel

    z = float(ndtri(1 - alpha / 2))
    return int(math.ceil((z * sd / (m - target)) ** 2))


def _resampled_means(arr: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """Bootstrap means, drawn in blocks so memory stays bounded."""
    rng = np.random.default_rng(seed)
    block = max(1, 2_000_000 // arr.size)
    out = []
    for start in range(0, n_boot, block):
        idx = rng.integers(0, arr.size, size=(min(block, n_boot - start), arr.size))
        out.append(arr[idx].mean(axis=1))
    return np.concatenate(out)


def bootstrap_mean(values: Sequence[float | None], *, n_boot: int = 2000, seed: int = 0,
                   alpha: float = 0.05) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of a descriptive quantity (costs, latencies); not for verdicts."""
    arr = clean(values)
    if arr.size == 0:
        return (math.nan, math.nan)
    if arr.size == 1 or np.all(arr == arr[0]):
        return (float(arr.mean()), float(arr.mean()))
    if arr.size > NORMAL_ABOVE:
        half = Z95 * float(arr.std(ddof=1)) / math.sqrt(arr.size)
        return (float(arr.mean()) - half, float(arr.mean()) + half)
    means = _resampled_means(arr, n_boot, seed)
    return (float(np.quantile(means, alpha / 2)), float(np.quantile(means, 1 - alpha / 2)))


def diff_interval(d: np.ndarray, *, alpha: float = 0.05, seed: int = 0,
                  n_boot: int = N_BOOT) -> tuple[np.ndarray, np.ndarray, str]:
    """Interval of the mean paired difference for each row of `d` (replicates x pairs): the wider of BCa and t
    on each side (t alone above NORMAL_ABOVE pairs). A row of identical differences gets the t interval of
    zero width only when every difference is 0 (nothing changed); otherwise it is widened by one step of
    the metric's resolution on each side."""
    d = np.atleast_2d(np.asarray(d, dtype=float))
    n = d.shape[-1]
    if n < 2:
        v = d.mean(axis=-1)
        return v - 1.0, v + 1.0, "one pair"
    t_lo, t_hi = _t_interval(d, alpha)
    if n > NORMAL_ABOVE:
        return t_lo, t_hi, "student-t"
    b_lo, b_hi = _bca(d, alpha, seed, n_boot)
    lo, hi = np.fmin(b_lo, t_lo), np.fmax(b_hi, t_hi)
    same = d.std(axis=-1) < 1e-12
    if same.any():
        m = d.mean(axis=-1)
        pad = np.where(np.abs(m) < 1e-12, 0.0, 1.0 / n)
        lo, hi = np.where(same, m - pad, lo), np.where(same, m + pad, hi)
    return lo, hi, "bca+t"


def paired_bootstrap_diff(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, *, n_boot: int = N_BOOT,
                          seed: int = 0) -> dict[str, float]:
    """Mean of b - a over paired samples, with a 95% interval (diff_interval's rule)."""
    x = np.asarray(a, dtype=float)
    y = np.asarray(b, dtype=float)
    keep = ~(np.isnan(x) | np.isnan(y))
    d = (y - x)[keep]
    if d.size == 0:
        return {"delta": math.nan, "ci_low": math.nan, "ci_high": math.nan, "n": 0}
    lo, hi, _ = diff_interval(d[None, :], seed=seed, n_boot=n_boot)
    return {"delta": float(d.mean()), "ci_low": float(lo[0]), "ci_high": float(hi[0]), "n": int(d.size)}


def _binom_kernels() -> tuple[Any, Any, Any]:
    """scipy.stats.binom's own pmf, cdf and sf kernels (scipy.special, private), or, in a SciPy without them,
    binom's methods themselves (for k in 0..n-1 the same figures; importing scipy.stats costs about 1 s)."""
    try:
        from scipy.special._ufuncs import _binom_cdf, _binom_pmf, _binom_sf
    except ImportError:
        from scipy.stats import binom

        return binom.pmf, binom.cdf, binom.sf
    return _binom_pmf, _binom_cdf, _binom_sf


def binom_cdf(k: np.ndarray | int, n: int, p: float) -> np.ndarray:
    """scipy.stats.binom.cdf(k, n, p) for integer k, without importing scipy.stats (about 1 s of a command)."""
    _, cdf, _ = _binom_kernels()
    k = np.asarray(k, dtype=float)
    inside = np.clip(k, 0, max(n - 1, 0))
    return np.where(k < 0, 0.0, np.where(k >= n, 1.0, cdf(inside, n, p)))


def binom_sf(k: np.ndarray | int, n: int, p: float) -> np.ndarray:
    """scipy.stats.binom.sf(k, n, p) for integer k, without importing scipy.stats."""
    _, _, sf = _binom_kernels()
    k = np.asarray(k, dtype=float)
    inside = np.clip(k, 0, max(n - 1, 0))
    return np.where(k < 0, 1.0, np.where(k >= n, 0.0, sf(inside, n, p)))


def t_sf(x: float, df: float) -> float:
    """scipy.stats.t.sf(x, df) for finite x, df > 0: its own kernel, without importing scipy.stats."""
    from scipy.special import stdtr

    return float(stdtr(df, -x))


def mcnemar_exact(worse: int, better: int) -> float:
    """Two-sided exact McNemar p-value from the discordant pairs (worse: baseline right, candidate wrong)."""
    k = worse + better
    if k == 0:
        return 1.0
    return _binomtest_half(worse, k)


def _binomtest_half(k: int, n: int) -> float:
    """scipy.stats.binomtest(k, n, 0.5).pvalue, two-sided, step for step on the same binomial kernels, without
    importing scipy.stats (about 1 s, most of `bench compare`'s time on a big run); the test checks it is equal."""
    _binom_pmf, _binom_cdf, _binom_sf = _binom_kernels()

    def pmf(x: float) -> float:
        return float(_binom_pmf(x, n, 0.5))

    def search(a: Any, d: float, lo: int, hi: int) -> int:
        while lo < hi:
            mid = lo + (hi - lo) // 2
            if a(mid) < d:
                lo = mid + 1
            elif a(mid) > d:
                hi = mid - 1
            else:
                return mid
        return lo if a(lo) <= d else lo - 1

    d, rerr = pmf(k), 1 + 1e-7
    if k == 0.5 * n:
        return 1.0
    if k < 0.5 * n:
        ix = search(lambda x: -pmf(x), -d * rerr, math.ceil(0.5 * n), n)
        y = n - ix + int(d * rerr == pmf(ix))
        pval = float(_binom_cdf(k, n, 0.5)) + float(_binom_sf(n - y, n, 0.5))
    else:
        ix = search(pmf, d * rerr, 0, math.floor(0.5 * n))
        pval = float(_binom_cdf(ix, n, 0.5)) + float(_binom_sf(k - 1, n, 0.5))
    return min(1.0, pval)
