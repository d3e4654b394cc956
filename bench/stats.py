"""Statistics used everywhere: percentiles, Wilson and bootstrap intervals, paired differences."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

Z95 = 1.959963984540054


def clean(values: Sequence[float | None]) -> np.ndarray:
    """Drop None and NaN: a sample that could not be scored is not a zero."""
    arr = np.asarray([v for v in values if v is not None], dtype=float)
    return arr[~np.isnan(arr)] if arr.size else arr


def percentile(values: Sequence[float | None], q: float) -> float | None:
    arr = clean(values)
    return float(np.percentile(arr, q)) if arr.size else None


def is_binary(values: Sequence[float | None]) -> bool:
    arr = clean(values)
    return bool(arr.size) and bool(np.all((arr == 0) | (arr == 1)))


def wilson(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a proportion."""
    if n == 0:
        return (math.nan, math.nan)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo, hi = centre - half, centre + half
    # round away the float noise that leaves e.g. 1e-17 where the bound is exactly 0 or 1
    return (0.0 if lo < 1e-12 else lo, 1.0 if hi > 1 - 1e-12 else hi)


# Above this many values the bootstrap distribution of a mean is normal to well within its own noise,
# and resampling would cost n_boot * n work: the normal interval is used instead.
NORMAL_ABOVE = 20_000


def _resampled_means(arr: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """Bootstrap means, drawn in blocks so memory stays bounded."""
    rng = np.random.default_rng(seed)
    block = max(1, 2_000_000 // arr.size)
    out = []
    for start in range(0, n_boot, block):
        idx = rng.integers(0, arr.size, size=(min(block, n_boot - start), arr.size))
        out.append(arr[idx].mean(axis=1))
    return np.concatenate(out)


def _interval(arr: np.ndarray, n_boot: int, seed: int, alpha: float) -> tuple[float, float]:
    if arr.size > NORMAL_ABOVE:
        half = Z95 * float(arr.std(ddof=1)) / math.sqrt(arr.size)
        return (float(arr.mean()) - half, float(arr.mean()) + half)
    means = _resampled_means(arr, n_boot, seed)
    return (float(np.quantile(means, alpha / 2)), float(np.quantile(means, 1 - alpha / 2)))


def bootstrap_mean(values: Sequence[float | None], *, n_boot: int = 2000, seed: int = 0,
                   alpha: float = 0.05) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean (a normal interval above NORMAL_ABOVE values)."""
    arr = clean(values)
    if arr.size == 0:
        return (math.nan, math.nan)
    if arr.size == 1 or np.all(arr == arr[0]):
        return (float(arr[0]) if arr.size == 1 else float(arr.mean()),) * 2  # type: ignore[return-value]
    return _interval(arr, n_boot, seed, alpha)


def mean_ci(values: Sequence[float | None], *, seed: int = 0) -> dict[str, float | int | None]:
    """Mean with a 95% interval: Wilson for 0/1 scores, bootstrap for continuous ones."""
    arr = clean(values)
    if arr.size == 0:
        return {"mean": None, "ci_low": None, "ci_high": None, "n": 0, "method": None}
    if is_binary(arr):
        lo, hi = wilson(float(arr.sum()), int(arr.size))
        method = "wilson"
    else:
        lo, hi = bootstrap_mean(arr, seed=seed)
        method = "bootstrap"
    return {"mean": float(arr.mean()), "ci_low": lo, "ci_high": hi, "n": int(arr.size), "method": method}


def paired_bootstrap_diff(a: Sequence[float], b: Sequence[float], *, n_boot: int = 5000,
                          seed: int = 0) -> dict[str, float]:
    """Mean of b - a over paired samples, with a bootstrap 95% interval."""
    x = np.asarray(a, dtype=float)
    y = np.asarray(b, dtype=float)
    keep = ~(np.isnan(x) | np.isnan(y))
    d = (y - x)[keep]
    if d.size == 0:
        return {"delta": math.nan, "ci_low": math.nan, "ci_high": math.nan, "n": 0}
    if np.all(d == d[0]):
        return {"delta": float(d[0]), "ci_low": float(d[0]), "ci_high": float(d[0]), "n": int(d.size)}
    lo, hi = _interval(d, n_boot, seed, 0.05)
    return {"delta": float(d.mean()), "ci_low": lo, "ci_high": hi, "n": int(d.size)}
