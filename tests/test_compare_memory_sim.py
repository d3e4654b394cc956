"""How often `bench compare` calls peak memory "worse" when it is not, by seeded simulation.

The claim: a candidate's memory is worse when the 95% paired-bootstrap interval of its footprint (the mean of the
per-sample window peaks) over the baseline's lies wholly above the factor (1.10). The promise: where the footprint
is truly at most 1.10 times the baseline's, "worse" is said at most 2.5% of the time (one side of a 95% interval).

The windows: each sample's window peak is the cell's footprint, plus a slow creep over the cell (the allocator,
1% of the footprint by the end), plus what the request itself holds (0.004 MB a prompt token) and a lognormal MB
of noise; on the spiky machine 3% of the windows also hold an exponential 25 MB transient (a long prompt's
buffers, the allocator growing an arena). The whole peak users see is the largest window. On these seeds the rule
says worse for at most 2 of 300 comparisons at each truth up to 1.10, and for all 100 at 1.3. The rule it replaced
(the ratio of the two whole peaks past the factor, with an interval of the mean difference above zero) said so
for 86 and 120 of 300 spiky comparisons whose footprint was truly 5% larger (20 and 200 samples), and for 16 and
12 of 300 truly equal ones; the contrast test shows it.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
from scipy.stats import binom

from bench.compare.speed import DEFAULT_FACTOR, compare_speed, judge_memory

PROMISE = 0.025
FLAKE = 1e-3
FOOTPRINT = 150.0  # MB: a small model's process
MACHINES = {"steady": 0.0, "spiky": 0.03}  # share of windows holding a transient
CELL = {"model": "m", "quantization": "Q4_K_M", "backend": "fake", "hardware": "cpu-test", "gen": "g0"}


def _windows(rng: np.random.Generator, n: int, footprint: float, spikes: float) -> np.ndarray:
    prompt = np.maximum(8, rng.lognormal(np.log(300), 0.5, n))
    peak = footprint + np.linspace(0, 0.01 * footprint, n) + 0.004 * prompt + rng.lognormal(0.0, 0.5, n)
    return peak + np.where(rng.random(n) < spikes, rng.exponential(25.0, n), 0.0)


@functools.cache
def _verdicts(truth: float, machine: str, n: int, trials: int) -> tuple[np.ndarray, np.ndarray]:
    """Per trial: whether judge_memory said worse, and whether the rule it replaced would have."""
    return _all_verdicts(truth, machine, n, trials)[:2]


@functools.cache
def _all_verdicts(truth: float, machine: str, n: int, trials: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per trial: worse (judge_memory), worse by the rule it replaced, and better (judge_memory)."""
    rng = np.random.default_rng([int(truth * 1000), list(MACHINES).index(machine), n])
    said, old, better = [], [], []
    for _ in range(trials):
        wb = _windows(rng, n, FOOTPRINT, MACHINES[machine])
        wc = _windows(rng, n, FOOTPRINT * truth, MACHINES[machine])
        m = judge_memory(float(wb.max()), float(wc.max()), wb, wc, factor=DEFAULT_FACTOR, comparable=True)
        said.append(m["verdict"] == "worse")
        old.append(m["ratio"] > DEFAULT_FACTOR and m["ci_footprint_ratio"][0] > 1.0)
        better.append(m["verdict"] == "better")
    return np.array(said), np.array(old), np.array(better)


def _most(trials: int) -> int:
    return int(binom.ppf(1 - FLAKE, trials, PROMISE))


@pytest.mark.parametrize("machine", list(MACHINES))
@pytest.mark.parametrize("truth", [0.95, 1.0, 1.05, 1.10])
@pytest.mark.parametrize("n", [20, 200])
def test_a_footprint_at_most_the_factor_is_rarely_called_worse(truth: float, machine: str, n: int) -> None:
    said, _ = _verdicts(truth, machine, n, 300)
    assert said.sum() <= _most(said.size), f"worse in {said.sum()} of {said.size}"


def test_the_whole_peaks_ratio_alone_would_break_the_promise() -> None:
    """The contrast: on the spiky machine a footprint 5% larger passes the old rule far beyond the bound."""
    for n in (20, 200):
        _, old = _verdicts(1.05, "spiky", n, 300)
        assert old.sum() > 3 * _most(old.size), f"old rule: worse in {old.sum()} of {old.size}"


@pytest.mark.parametrize("machine", list(MACHINES))
@pytest.mark.parametrize("n", [20, 200])
def test_a_footprint_1_3x_larger_is_called_worse(machine: str, n: int) -> None:
    """Power, so the promise cannot be kept by never saying worse."""
    said, _ = _verdicts(1.3, machine, n, 100)
    assert said.mean() >= 0.95, f"worse in {said.sum()} of {said.size}"


def test_compare_speed_judges_memory_by_the_footprint() -> None:
    """The wiring: compare_speed passes each cell's whole peak and the paired windows to judge_memory, and names
    the footprint in what it reports as worse."""
    rng = np.random.default_rng(1)
    wb, wc = _windows(rng, 40, FOOTPRINT, 0.03), _windows(rng, 40, FOOTPRINT * 1.3, 0.03)

    def rows(w: np.ndarray) -> list[dict]:
        return [{"sample_id": f"s{i:02d}", "latency_s": 1.0, "completion_tokens": 10, "decode_s": 0.5,
                 "rss_peak_mb": float(v)} for i, v in enumerate(w)]

    speed = compare_speed(CELL, CELL, rows(wb), rows(wc), rows(wb), rows(wc))
    m = speed["peak_rss_mb"]
    assert m["baseline"] == pytest.approx(wb.max()) and m["candidate"] == pytest.approx(wc.max())
    assert m["verdict"] == "worse" and m["footprint_ratio"] == pytest.approx(wc.mean() / wb.mean())
    assert "peak_rss_mb" in speed["worse"] and f"footprint x{m['footprint_ratio']:.2f} [" in speed["worse_details"][0]


@pytest.mark.parametrize("machine", list(MACHINES))
@pytest.mark.parametrize("truth", [1.0, 1.05])
def test_a_footprint_no_smaller_is_rarely_called_better(truth: float, machine: str) -> None:
    """"better" is the mirror claim (the interval wholly below 1 / 1.10): a candidate whose footprint is not
    smaller is called better at most at the promised rate, and one at 0.7x is called better in nearly all."""
    for n in (20, 200):
        better = _all_verdicts(truth, machine, n, 300)[2]
        assert better.sum() <= _most(better.size), f"better in {better.sum()} of {better.size}"
        smaller = _all_verdicts(0.7, machine, n, 100)[2]
        assert smaller.mean() >= 0.95, f"0.7x: better in {smaller.sum()} of {smaller.size}"
