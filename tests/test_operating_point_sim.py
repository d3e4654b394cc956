"""How often the operating point's claim "p95 latency within the budget" is wrong, by seeded simulation.

The claim is made at 95% confidence (bench.sweep.within_budget): whatever the latency distribution, the chance that
it names a level whose true p95 exceeds the budget must be at most 5%. The old rule (the point p95 of the timing
samples) is run on the same draws as a contrast: it is wrong far more often when the true p95 sits near the budget.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.optimize import brentq
from scipy.stats import gamma, lognorm

from bench.sweep import latency_p95_upper as upper_bound
from bench.sweep import level_figures, operating_point

BUDGET = 2.0
TRIALS = 2000
ALPHA = 0.05
TOL = 3 * math.sqrt(ALPHA * (1 - ALPHA) / TRIALS)   # three Monte Carlo standard errors at the promised rate
LEVELS = (1, 4, 8)
COSTS = (0.30, 0.15, 0.10)                          # per 1k requests: falls as concurrency rises

# Each distribution as a standard draw and its true p95; scaled so the true p95 is what a scenario asks for.
MIX_FAST, MIX_SLOW = 0.85, (math.log(3.0), 0.25)    # 85% fast requests, 15% long answers


def _mix_cdf(x: float) -> float:
    return MIX_FAST * lognorm.cdf(x, 0.2) + (1 - MIX_FAST) * lognorm.cdf(x, MIX_SLOW[1], scale=math.exp(MIX_SLOW[0]))


def _mix_draw(rng: np.random.Generator, size: tuple[int, ...]) -> np.ndarray:
    slow = rng.random(size) >= MIX_FAST
    return np.where(slow, rng.lognormal(MIX_SLOW[0], MIX_SLOW[1], size), rng.lognormal(0.0, 0.2, size))


DISTRIBUTIONS = {
    "lognormal": (lambda rng, size: rng.lognormal(0.0, 0.4, size), float(lognorm.ppf(0.95, 0.4))),
    "gamma": (lambda rng, size: rng.gamma(4.0, 1.0, size), float(gamma.ppf(0.95, 4.0))),
    "two-mode mixture": (_mix_draw, brentq(lambda x: _mix_cdf(x) - 0.95, 0.1, 50.0)),
}


def _draw(name: str, true_p95: list[float], n: int, seed: int) -> np.ndarray:
    """TRIALS x levels x n latencies, level j's true p95 being true_p95[j] (seconds)."""
    draw, p95 = DISTRIBUTIONS[name]
    rng = np.random.default_rng(seed)
    return draw(rng, (TRIALS, len(true_p95), n)) * (np.asarray(true_p95) / p95)[None, :, None]


def _levels(lat: np.ndarray) -> list[dict]:
    """One trial's levels as level_figures gives them (the figures operating_point reads)."""
    p95 = np.percentile(lat, 95, axis=-1)
    return [{"level": lv, "n": lat.shape[-1], "latency_p95_s": float(p95[j]),
             "latency_p95_upper_s": upper_bound(lat[j].tolist()), "cost_per_1k_usd": COSTS[j]}
            for j, lv in enumerate(LEVELS[:lat.shape[0]])]


def _point_rule(levels: list[dict], budget: float) -> int | None:
    """The old rule: the cheapest level whose point p95 meets the budget (None when none does)."""
    meets = [lv for lv in levels if lv["latency_p95_s"] <= budget]
    return min(meets, key=lambda lv: (lv["cost_per_1k_usd"], -lv["level"]))["level"] if meets else None


def _rates(name: str, ratios: list[float], n: int, seed: int) -> dict[str, float]:
    """Over TRIALS seeded draws: how often a wrong level is claimed (any level shown within the budget whose true
    p95 exceeds it, and the priced one), how often the priced level is the one the truth allows at best, and the
    old point rule's wrong-claim rate."""
    true_p95 = [r * BUDGET for r in ratios]
    over = {lv for lv, t in zip(LEVELS, true_p95, strict=False) if t > BUDGET}
    ok_levels = [lv for lv, t in zip(LEVELS, true_p95, strict=False) if t <= BUDGET]
    ideal = ok_levels[-1] if ok_levels else None
    lat = _draw(name, true_p95, n, seed)
    any_wrong = priced_wrong = ideal_hit = old_wrong = 0
    for t in range(TRIALS):
        levels = _levels(lat[t])
        point = operating_point(levels, BUDGET)
        shown = set(point["levels_within_budget"])
        any_wrong += bool(shown & over)
        priced_wrong += bool(point["within_budget"] and point["level"] in over)
        ideal_hit += bool(point["within_budget"] and point["level"] == ideal)
        old_wrong += _point_rule(levels, BUDGET) in over
    return {"any_wrong": any_wrong / TRIALS, "priced_wrong": priced_wrong / TRIALS, "power": ideal_hit / TRIALS,
            "old_wrong": old_wrong / TRIALS}


# true p95 over the budget for the level(s) the cost would choose: the one level; the top level; the top two; all
WRONG_SCENARIOS = [[1.02], [0.5, 0.8, 1.02], [0.5, 1.02, 1.1], [1.02, 1.05, 1.1]]


@pytest.mark.parametrize("name", list(DISTRIBUTIONS))
@pytest.mark.parametrize("ratios", WRONG_SCENARIOS, ids=lambda r: "x".join(f"{v:g}" for v in r))
def test_a_level_over_the_budget_is_claimed_at_most_5_percent_of_the_time(name, ratios) -> None:
    seed = 1000 * list(DISTRIBUTIONS).index(name) + WRONG_SCENARIOS.index(ratios)
    rates = _rates(name, ratios, n=64, seed=seed)
    assert rates["priced_wrong"] <= rates["any_wrong"] <= ALPHA + TOL, rates
    # the old point-p95 rule, on the same draws, is wrong far more often: this test can fail
    assert rates["old_wrong"] > 0.2, rates


@pytest.mark.parametrize("name", list(DISTRIBUTIONS))
def test_the_old_point_rule_fails_at_the_old_default_of_32_samples(name) -> None:
    rates = _rates(name, [1.02], n=32, seed=77 + list(DISTRIBUTIONS).index(name))
    assert rates["old_wrong"] > 0.2 and rates["any_wrong"] == 0.0, rates   # 32 samples: no claim at all


@pytest.mark.parametrize("name", list(DISTRIBUTIONS))
@pytest.mark.parametrize("ratios", [[0.6], [0.3, 0.45, 0.6]], ids=["one level", "three levels"])
def test_a_level_well_within_the_budget_is_claimed_most_of_the_time(name, ratios) -> None:
    rates = _rates(name, ratios, n=64, seed=500 + list(DISTRIBUTIONS).index(name) + 10 * len(ratios))
    assert rates["power"] > 0.5 and rates["any_wrong"] == 0.0, rates


def _fixed(level: int, upper: float | None, cost: float, n: int = 64) -> dict:
    return {"level": level, "n": n, "latency_p95_s": upper, "latency_p95_upper_s": upper, "cost_per_1k_usd": cost}


def test_testing_stops_at_the_first_level_not_shown() -> None:
    # concurrency 4 is not shown within the budget, so 8 is not tested, though its own bound is lower
    point = operating_point([_fixed(1, 1.0, 0.3), _fixed(4, 2.5, 0.2), _fixed(8, 1.5, 0.1)], 2.0)
    assert point["level"] == 1 and point["within_budget"] and point["levels_within_budget"] == [1]
    assert "stopped at concurrency 4" in point["reason"] and point["confidence"] == 0.95


def test_too_few_samples_make_no_claim_and_say_so() -> None:
    lat = [0.1] * 32
    rows = [{"level": 4, "sample_id": str(i), "latency_s": v, "cost_usd": 0.001, "completion_tokens": 5,
             "timings": {"t_start": float(i), "t_end": 0.1}} for i, v in enumerate(lat)]
    fig = level_figures(rows)
    assert fig["latency_p95_s"] == pytest.approx(0.1) and fig["latency_p95_upper_s"] is None
    point = operating_point([fig | {"level": 1}, fig], 5.0)
    assert point["within_budget"] is False and point["levels_within_budget"] == []
    assert "needs >= 59 timing samples for a 95% bound on p95" in point["reason"]


def test_errored_requests_count_as_never_finishing() -> None:
    assert upper_bound([0.1] * 64) == pytest.approx(0.1)
    assert upper_bound([0.1] * 63, errors=1) is None                 # the bound would be the errored request
    assert upper_bound([0.1] * 199, errors=1) == pytest.approx(0.1)  # at n = 200 the bound is the 196th value


def test_no_budget_makes_no_latency_claim() -> None:
    point = operating_point([_fixed(1, 1.0, 0.3), _fixed(8, 9.0, 0.1)], None)
    assert point["level"] == 8 and point["within_budget"] is None and "no latency claim" in point["reason"]
