"""Finite-sample guarantees for routing decisions: p-values of "quality below target" and fixed-sequence testing.

The policy search (bench/thresholds/policy.py) is Learn-then-Test (Angelopoulos et al., 2021): each candidate
policy is a null hypothesis "its true quality is below the target"; a policy is admissible only where that null is
rejected, and the rejections are made so that, over the whole search, the chance that any admitted policy in fact
falls below the target is at most delta. That holds when calibration samples are exchangeable with the traffic
the router will see.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def p_value_mean_below(values: np.ndarray, target: float, *, binary: bool) -> float:
    """p-value of H0 "the true mean is below target" for scores in [0, 1] (small p: evidence it reaches it).

    0/1 scores: exact binomial tail P(Binomial(n, target) >= successes). Continuous scores: one-sided Student-t;
    where every value is the same, the binomial tail of the (fractional) sum, the worst case for a [0, 1]
    score of that mean. NaN values are dropped; no values gives 1."""
    from scipy.special import betainc

    from bench.stats import binom_sf, t_sf

    x = np.asarray(values, dtype=float)
    x = x[~np.isnan(x)]
    n = x.size
    if n == 0:
        return 1.0
    if target <= 0:
        return 0.0
    if target >= 1:
        return 1.0
    s = float(x.sum())
    if binary:
        k = int(round(s))
        return float(binom_sf(k - 1, n, target))
    sd = float(x.std(ddof=1)) if n > 1 else 0.0
    if sd < 1e-12:
        # P(Binomial(n, target) >= s), continued to fractional s through the regularized incomplete beta
        return float(betainc(s, n - s + 1, target)) if 0 < s < n else (1.0 if s <= 0 else target ** n)
    stat = (float(x.mean()) - target) / (sd / math.sqrt(n))
    return t_sf(stat, n - 1)


def fixed_sequence(p_values: Sequence[float], alpha: float) -> int:
    """How many leading hypotheses are rejected when tested in the given order at level alpha each, stopping at
    the first that is not: family-wise error at most alpha, with no correction for the number of steps."""
    k = 0
    for p in p_values:
        if not (p <= alpha):
            break
        k += 1
    return k
