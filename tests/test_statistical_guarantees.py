"""How often bench's printed verdicts are wrong, measured by seeded simulation and asserted against what it promises.

Each test draws many synthetic calibrations or comparisons from a known truth, runs bench's own decision code on
them (the same functions `bench thresholds` and `bench compare` call, batched where they are batch-shaped), and
counts the wrong verdicts:
- the lower bound of a quality interval above the true mean (promise: at most 3% of the time);
- a routing policy admitted by the search whose true quality is below the target (promise: at most delta);
- `bench compare` calling a regression that is within the tolerance (promise: at most 5%), and its power.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from bench.compare.core import REGRESSION, quality_gate
from bench.stats import diff_interval, mean_interval

REPS = 4000


def _binomial_error(rate: float, reps: int) -> float:
    """Three standard errors of a rate estimated from `reps` draws: the simulation's own noise."""
    return 3 * math.sqrt(rate * (1 - rate) / reps)


# ---------------------------------------------------------------- interval coverage

def _binary(rng: np.random.Generator, shape: tuple[int, int], p: float) -> np.ndarray:
    return (rng.random(shape) < p).astype(float)


def _right_skewed(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """ROUGE-like scores: mostly low, a long tail towards 1. Beta(0.6, 3), mean 1/6."""
    return rng.beta(0.6, 3.0, shape)


def _left_skewed(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Field-F1-like scores: mostly perfect, sometimes partial, sometimes 0. Mean 0.78 + 0.15 * 0.25."""
    u = rng.random(shape)
    x = np.ones(shape)
    partial = u < 0.15
    x[partial] = rng.random(int(partial.sum())) * 0.5
    x[(u >= 0.15) & (u < 0.22)] = 0.0
    return x


SHAPES = {
    "binary p=0.8": (lambda rng, s: _binary(rng, s, 0.8), 0.8),
    "binary p=0.95": (lambda rng, s: _binary(rng, s, 0.95), 0.95),
    "right-skewed": (_right_skewed, 0.6 / 3.6),
    "left-skewed": (_left_skewed, 0.78 + 0.15 * 0.25),
}


@pytest.mark.parametrize("n", [10, 24, 100])
@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_lower_bound_covers_the_true_mean(shape: str, n: int) -> None:
    draw, true_mean = SHAPES[shape]
    rng = np.random.default_rng(1000 + n)
    reps = REPS
    covered = 0
    for start in range(0, reps, 500):  # bounded memory: the bootstrap is resamples x samples per replicate
        x = draw(rng, (min(500, reps - start), n))
        lo, _, _ = mean_interval(x, n_boot=999, seed=start)
        covered += int((lo <= true_mean + 1e-12).sum())
    coverage = covered / reps
    assert coverage >= 0.97, f"{shape}, n={n}: the lower bound was above the true mean {1 - coverage:.1%} of the time"


# ---------------------------------------------------------------- the routing search keeps its promise

def _simulated_task(rng: np.random.Generator, n_cal: int, target: float):
    """Three tiers whose truth is known: a cheap one with a useful confidence, a middle one, and a strong one
    whose true accuracy sits just above the target; every cascade's true quality is computable exactly."""
    acc = np.array([0.55, 0.72, target + 0.01])
    n = n_cal
    right = rng.random((3, n)) < acc[:, None]
    # confidence: right answers around -0.2, wrong ones around -1.2, overlapping
    conf = np.where(right, -0.2, -1.2) + rng.normal(0, 0.45, (3, n))
    conf = np.minimum(conf, 0.0)
    return _calibrated(right, conf, [1.0, 3.0, 10.0], target), acc


def _calibrated(right: np.ndarray, conf: np.ndarray, costs: list[float], target: float):
    """A Calibrated task of simulated tiers (rows of `right`) with the given confidences and per-request costs."""
    from bench.thresholds.calibrate import Calibrated, Split, TierStats
    from bench.thresholds.gather import TaskData, Tier

    k, n = right.shape
    cost = np.array(costs)[:, None] * np.ones((k, n))
    split = Split(ids=[str(i) for i in range(n)], value=right.astype(float), verified=np.ones((k, n), bool),
                  conf=conf, cost=cost, cost_usd=cost / 1e6, latency=cost / 10)
    empty = Split(ids=[], value=np.zeros((k, 0)), verified=np.zeros((k, 0), bool), conf=np.zeros((k, 0)),
                  cost=np.zeros((k, 0)), cost_usd=np.zeros((k, 0)), latency=np.zeros((k, 0)))
    tiers = [Tier(cell_id=f"t{i}", cell={}, rows={}, backend=None, locality="local", usd_per_hour=None, chat=True,
                  model_ref=None, run_id="sim") for i in range(k)]
    q = {"mean": 0.0, "ci_low": 0.0, "ci_high": 1.0, "n": n}
    stats = [TierStats(tier=t, quality=q, quality_holdout=q, cost_per_1k_usd=1.0, latency_mean_s=1.0,
                       latency_p95_s=1.0, meets_target=False, samples_needed=None,
                       confidence_available=not np.isnan(conf).all(), errors=0) for t in tiers]
    task = TaskData(name="sim", kind="classify", metric="accuracy", target=target, target_source="suite",
                    tolerance=0.02, sensitive=False, latency_budget_s=None, latency_source=None, runtime=None,
                    tiers=tiers, run_ids=["sim"], min_samples=30, delta=0.05)
    return Calibrated(task=task, tiers=stats, basis="usd", cal=split, hold=empty, notes=[])


def _true_quality(policy, acc: np.ndarray) -> float:
    """The policy's quality in the population the simulation draws from (the confidence model is known)."""
    from scipy.stats import norm

    from bench.thresholds.policy import VERIFIED_ONLY

    reach, quality = 1.0, 0.0
    for pos, tier in enumerate(policy.chain):
        a = acc[tier]
        if pos == len(policy.chain) - 1:
            return quality + reach * a
        t = policy.thresholds[pos]
        if t == VERIFIED_ONLY:
            return quality + reach * a
        # conf = min(base + N(0, 0.45), 0) >= t for a threshold t <= 0 exactly when base + noise >= t
        p_acc_right = 1 - norm.cdf((t + 0.2) / 0.45)
        p_acc_wrong = 1 - norm.cdf((t + 1.2) / 0.45)
        quality += reach * a * p_acc_right
        reach *= 1 - (a * p_acc_right + (1 - a) * p_acc_wrong)
    return quality


def _naive_choice(cal):
    """What the search did before: the cheapest policy whose calibration mean reaches the target."""
    from bench.thresholds.policy import chain_steps, chains, replay

    best = None
    for c in chains(cal):
        for p in chain_steps(c):
            r = replay(cal.cal, p)
            if r.mean >= cal.task.target and (best is None or r.cost.mean() < best[0]):
                best = (r.cost.mean(), p)
    return best[1] if best else None


def test_chosen_policy_misses_its_target_at_most_delta() -> None:
    from bench.thresholds.policy import search

    rng = np.random.default_rng(7)
    target, reps, misses, admitted, naive_misses = 0.8, 2000, 0, 0, 0
    for i in range(reps):
        cal, acc = _simulated_task(rng, 120, target)
        choice = search(cal)
        if i < 500:  # the contrast: an unprotected search over the same candidates
            naive = _naive_choice(cal)
            naive_misses += naive is not None and _true_quality(naive, acc) < target
        if choice.status != "meets_target":
            continue
        admitted += 1
        if _true_quality(choice.policy, acc) < target:
            misses += 1
    rate = misses / reps
    assert admitted > reps * 0.2, "the search admitted too few policies for the test to mean anything"
    assert rate <= 0.05 + _binomial_error(0.05, reps), f"chosen policy below target in {rate:.1%} of calibrations"
    # the simulation can tell a broken search apart: without the protection, the choice misses far more often
    assert naive_misses / 500 > 0.15


# ---------------------------------------------------------------- the compare gate

@pytest.mark.parametrize("n", [100, 500, 2000])
def test_a_drop_within_the_tolerance_is_rarely_called_a_regression(n: int) -> None:
    rng = np.random.default_rng(11 + n)
    reps, tol = 1000 if n > 100 else 2000, 0.02
    d = rng.normal(-0.015, 0.2, (reps, n))
    hi = np.concatenate([diff_interval(d[i:i + 250], n_boot=999, seed=i)[1] for i in range(0, reps, 250)])
    rate = float((hi < -tol).mean())
    assert rate <= 0.05, f"n={n}: a true drop of 0.015 was flagged {rate:.1%} of the time (tolerance 0.02)"
    # the verdict function the CLI calls, on a slice, agrees with the batched interval
    for i in range(5):
        x = np.full(n, 0.5)
        verdict = quality_gate(list(x), list(x + d[i]), tol)["verdict"]
        assert (verdict == REGRESSION) == bool(hi[i] < -tol)


def test_a_real_drop_is_caught() -> None:
    rng = np.random.default_rng(5)
    reps, n, tol = 1000, 500, 0.02
    d = rng.normal(-0.08, 0.2, (reps, n))
    hi = np.concatenate([diff_interval(d[i:i + 250], n_boot=999, seed=i)[1] for i in range(0, reps, 250)])
    power = float((hi < -tol).mean())
    assert power >= 0.80, f"a true drop of 0.08 at n=500 was caught only {power:.1%} of the time"


def test_exact_test_keeps_small_binary_comparisons_from_flaking() -> None:
    # the case: 4 of 10 samples worse, none better; exact McNemar p = 0.125, so no regression
    base = [1.0] * 10
    cand = [0.0] * 4 + [1.0] * 6
    gate = quality_gate(base, cand, 0.02)
    assert gate["verdict"] != REGRESSION and gate["exact_p"] == pytest.approx(0.125)
    # with no change in truth, a 0/1 comparison of 30 samples flags a regression rarely
    rng = np.random.default_rng(3)
    flagged = 0
    for _ in range(300):
        b = (rng.random(30) < 0.8).astype(float)
        c = (rng.random(30) < 0.8).astype(float)
        flagged += quality_gate(list(b), list(c), 0.02)["verdict"] == REGRESSION
    assert flagged / 300 <= 0.05


# ---------------------------------------------------------------- the pre-router search keeps the same promise

def _pre_task(rng: np.random.Generator, n: int, target: float):
    """Two tiers; a request's length in words (1..40) is its difficulty: the cheap tier is right with probability
    0.99 - 0.9 * length / 40, the strong one with target + 0.06 everywhere. Confidence is absent, so cascades can
    only accept on verification (always true here): the pre-router is the only way to be cheap and good."""
    lengths = rng.integers(1, 41, n)
    acc = np.vstack([0.99 - 0.9 * lengths / 40, np.full(n, target + 0.06)])
    right = rng.random((2, n)) < acc
    texts = [" ".join(["w"] * int(k)) for k in lengths]
    return _calibrated(right, np.full((2, n), np.nan), [1.0, 10.0], target), texts, right[0]


def _pre_true_quality(fit, threshold: float, target: float) -> float:
    """The deployed (refitted) rule's quality over the population: lengths uniform on 1..40."""
    lengths = np.arange(1, 41)
    p = fit.predict([" ".join(["w"] * int(k)) for k in lengths], None)
    cheap = p >= threshold
    return float(np.mean(np.where(cheap, 0.99 - 0.9 * lengths / 40, target + 0.06)))


def test_prerouted_policy_misses_its_target_at_most_delta() -> None:
    from bench.routers.families import RULES, cross_fit
    from bench.thresholds.policy import search

    rng = np.random.default_rng(11)
    target, reps, misses, admitted, naive_misses = 0.8, 600, 0, 0, 0
    for _ in range(reps):
        cal, texts, cheap_right = _pre_task(rng, 300, target)
        fit = cross_fit(RULES, texts, None, cheap_right.astype(int), {})
        cal.cal.prob[("rules", 0)] = fit.oof
        choice = search(cal, ["rules"])
        # the contrast: the loosest threshold whose calibration mean reaches the target, untested
        value = np.where(fit.oof[None, :] >= np.array([0.0, 0.3, 0.5, 0.7, 0.9])[:, None], cal.cal.value[0],
                         cal.cal.value[1]).mean(axis=1)
        ok = [t for t, v in zip([0.0, 0.3, 0.5, 0.7, 0.9], value) if v >= target]
        naive_misses += bool(ok) and _pre_true_quality(fit, ok[0], target) < target
        if choice.status != "meets_target" or choice.policy.pre is None:
            continue
        admitted += 1
        misses += _pre_true_quality(fit, choice.policy.pre.threshold, target) < target
    rate = misses / reps
    assert admitted > reps * 0.2, f"the search admitted a pre-router in only {admitted} of {reps} calibrations"
    assert rate <= 0.05 + _binomial_error(0.05, reps), f"pre-routed policy below target in {rate:.1%}"
    assert naive_misses / reps > 0.15, "the simulation cannot tell an untested threshold apart"


# ---------------------------------------------------------------- telemetry: "drift" is rarely a false alarm

def _drift_doc(share: float, n_hold: int) -> dict:
    return {"tasks": {"t": {"expected": {"n": n_hold, "answered_by": [{"cell": "cheap", "share": share},
                                                                      {"cell": "big", "share": 1 - share}]},
                            "policy": {"chain": ["cheap", "big"]}}}}


def _log(rng: np.random.Generator, share: float, n: int) -> list[dict]:
    return [{"task": "t", "status": 200, "tiers_tried": ["cheap"], "tier": "cheap" if rng.random() < share else "big"}
            for _ in range(n)]


def test_drift_is_called_at_most_alpha_of_the_time_when_traffic_is_unchanged() -> None:
    from bench.thresholds.telemetry import ALPHA, drift

    rng = np.random.default_rng(5)
    reps, alarms, caught = 1000, 0, 0
    for _ in range(reps):
        n_hold = 60
        hold_share = rng.binomial(n_hold, 0.6) / n_hold  # the holdout share is itself a sample
        alarms += drift(_drift_doc(hold_share, n_hold), _log(rng, 0.6, 300))["t"]["verdict"] == "drift"
    for _ in range(200):
        hold_share = rng.binomial(60, 0.6) / 60
        caught += drift(_drift_doc(hold_share, 60), _log(rng, 0.25, 300))["t"]["verdict"] == "drift"
    assert alarms / reps <= ALPHA + _binomial_error(ALPHA, reps), f"false drift in {alarms / reps:.1%}"
    assert caught / 200 > 0.9, "a real shift in the model mix went unnoticed"
