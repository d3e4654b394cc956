"""Intervals: Wilson for proportions, bootstrap for continuous scores, paired differences; NaN is skipped."""

from __future__ import annotations

import math

import pytest

from bench.stats import (
    bootstrap_mean,
    mean_ci,
    paired_bootstrap_diff,
    percentile,
    wilson,
)


def test_wilson_known_values() -> None:
    lo, hi = wilson(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-3) and hi == pytest.approx(0.9433, abs=1e-3)
    assert wilson(0, 10)[0] == 0.0 and wilson(10, 10)[1] == pytest.approx(1.0)


def test_mean_ci_picks_the_method_and_skips_unscorable() -> None:
    binary = mean_ci([1, 0, 1, None, float("nan"), 1])
    assert binary["method"] == "wilson" and binary["n"] == 4 and binary["mean"] == 0.75
    cont = mean_ci([0.2, 0.4, 0.6, 0.8])
    assert cont["method"] == "bootstrap" and cont["ci_low"] < 0.5 < cont["ci_high"]
    assert mean_ci([])["mean"] is None


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


def test_percentile_ignores_none() -> None:
    assert percentile([None, 1, 2, 3], 50) == 2
    assert percentile([None], 50) is None
    assert math.isnan(wilson(0, 0)[0])
