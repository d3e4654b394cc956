"""Energy per request (bench.measure.energy): the counter of the device a cell computes on, split among the
requests in flight, checked against the exact split on simulated schedules."""

from __future__ import annotations

import heapq
import random
from types import SimpleNamespace

import pytest

from bench.measure.energy import EnergyMeter, reader
from bench.registry import backend_traits

WATTS = 300.0


def schedule(durations: list[float], parallel: int) -> list[tuple[float, float]]:
    """(start, end) of each request under continuous batching: admitted the moment a slot frees."""
    free = [0.0] * parallel
    out = []
    for d in durations:
        start = heapq.heappop(free)
        out.append((start, start + d))
        heapq.heappush(free, start + d)
    return out


def exact(spans: list[tuple[float, float]], i: int) -> float:
    """The request's share of constant power, integrated over its life with the true number in flight."""
    cuts = sorted({t for s in spans for t in s})
    a, b = spans[i]
    total = 0.0
    for t0, t1 in zip(cuts, cuts[1:]):
        if t0 >= a and t1 <= b:
            n = sum(1 for s, e in spans if s <= t0 and e >= t1)
            total += WATTS * (t1 - t0) / n
    return total


def metered(spans: list[tuple[float, float]], parallel: int) -> list[float | None]:
    """Feed the finish events to the meter, with a clock at the finish time and a counter at WATTS x time."""
    clock = [0.0]
    meter = EnergyMeter(lambda: WATTS * clock[0], parallel, len(spans), clock=lambda: clock[0])
    meter.start()
    out: list[float | None] = [None] * len(spans)
    for i in sorted(range(len(spans)), key=lambda k: spans[k][1]):
        clock[0] = spans[i][1]
        out[i] = meter.request(*spans[i])
    return out


@pytest.mark.parametrize("parallel", [1, 4, 8])
def test_requests_in_flight_share_the_energy(parallel: int) -> None:
    rng = random.Random(parallel)
    durations = [rng.uniform(0.2, 3.0) for _ in range(40)]
    spans = schedule(durations, parallel)
    got = metered(spans, parallel)
    for i in range(len(spans)):
        assert got[i] == pytest.approx(exact(spans, i), rel=1e-9), i
    assert sum(got) == pytest.approx(WATTS * max(e for _, e in spans), rel=1e-9)  # nothing lost or doubled
    if parallel > 1:  # the rule it replaced: each request charged what the counter moved since the last finish
        ends = sorted(e for _, e in spans)
        since_last = [WATTS * (b - a) for a, b in zip([0.0, *ends], ends)]
        assert min(since_last) < 0.2 * min(got)  # a request finishing right after another got next to nothing


def test_unknown_or_wrapped_counters_give_no_figure() -> None:
    meter = EnergyMeter(None, 1, 2)
    meter.start()
    assert meter.request(0.0, 1.0) is None
    values = iter([100.0, 50.0])  # the counter went backwards (a wrap or a driver reset)
    clock = iter([0.0, 1.0])
    meter = EnergyMeter(lambda: next(values), 1, 1, clock=lambda: next(clock))
    meter.start()
    assert meter.request(0.0, 1.0) is None


def test_each_cell_reads_the_counter_of_the_device_it_runs_on(monkeypatch) -> None:
    monkeypatch.setattr("bench.measure.memory.rapl_energy_uj", lambda: 5_000_000.0)
    sampler = SimpleNamespace(gpu=SimpleNamespace(energy_mj=lambda: 42_000.0))
    cpu_cell = reader(sampler, backend_traits("llamacpp"), {"kind": "llamacpp", "n_gpu_layers": 0})
    gpu_cell = reader(sampler, backend_traits("llamacpp"), {"kind": "llamacpp", "n_gpu_layers": 99})
    assert cpu_cell is not None and cpu_cell() == 5.0  # a CPU cell beside a GPU is not charged the GPU's draw
    assert gpu_cell is not None and gpu_cell() == 42.0
    assert reader(sampler, backend_traits("vllm"), {"kind": "vllm"})() == 42.0  # type: ignore[misc]
    assert reader(sampler, backend_traits("openai"), {"kind": "openai"}) is None  # spent on another machine
