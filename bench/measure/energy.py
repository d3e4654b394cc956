"""Energy per request: a cumulative counter of the device a cell computes on, split among the requests in flight.

Which counter: NVML's GPU energy for an engine that runs on the GPU (vLLM; llama.cpp with `n_gpu_layers`), RAPL's
CPU package energy for one that runs on the CPU, and none for an HTTP backend, whose requests spend their energy
on another machine. A CPU cell on a machine with a GPU is not charged the GPU's idle draw.

How it is split: the counter is read when the cell starts and whenever a request finishes. Between two readings
the requests in flight share the energy equally, each for the part of the interval it ran. With continuous batching
(`--parallel N`) every slot is refilled as soon as it frees, so min(N, requests not yet finished) were in flight
in each interval; one at a time that is 1, and a request is charged what the device drew while it ran. A request
finishing right after another is no longer charged ~0 J because the other took the whole interval.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

Reader = Callable[[], float | None]  # cumulative joules, or None where the counter cannot be read


def reader(sampler: Any, traits: Any, config: dict[str, Any]) -> Reader | None:
    """The cumulative-energy reader (joules) for a cell's device; None where none applies (an HTTP backend)."""
    from bench.measure.memory import rapl_energy_uj

    if traits is None or not traits.in_process:
        return None
    if traits.needs_gpu(config):
        def gpu() -> float | None:
            mj = sampler.gpu.energy_mj()
            return None if mj is None else mj / 1000.0
        return gpu

    def cpu() -> float | None:
        uj = rapl_energy_uj()
        return None if uj is None else uj / 1e6
    return cpu


class EnergyMeter:
    """Per-request energy from a cumulative reader (see the module's docstring)."""

    def __init__(self, read: Reader | None, parallel: int, total: int, clock: Callable[[], float] = time.time):
        self.read = read
        self.parallel = max(1, int(parallel))
        self.total = total
        self.clock = clock
        self.finished = 0
        self.readings: list[tuple[float, float | None, int]] = []  # (epoch s, joules, requests finished by then)

    def start(self) -> None:
        self.readings.append((self.clock(), self._read(), 0))

    def _read(self) -> float | None:
        try:
            return None if self.read is None else self.read()
        except Exception:  # a counter that fails to read is an unknown, never an error of the cell
            return None

    def since_last(self) -> float | None:
        """Joules since the previous reading, taking a new one (the whole batch, for engines that report at its end);
        None where either reading is missing or the counter went backwards (wrapped or reset)."""
        before = self.readings[-1][1] if self.readings else None
        now = self._read()
        self.readings.append((self.clock(), now, self.finished))
        if now is None or before is None or now < before:
            return None
        return now - before

    def request(self, started: float, ended: float) -> float | None:
        """The energy of a request that ran from `started` to `ended` (epoch seconds) and has just finished."""
        self.finished += 1
        if self.read is None or not self.readings:
            return None
        self.readings.append((self.clock(), self._read(), self.finished))
        total, r = 0.0, self.readings
        for i in range(len(r) - 1, 0, -1):  # newest first: only the intervals of this request's life are read
            (t0, e0, done), (t1, e1, _) = r[i - 1], r[i]
            if t1 <= started:
                break
            overlap = min(ended, t1) - max(started, t0)
            if overlap <= 0 or t1 <= t0:
                continue
            if e0 is None or e1 is None or e1 < e0:
                return None  # the counter is unknown, or wrapped, over part of this request's life
            in_flight = max(1, min(self.parallel, self.total - done))
            total += (e1 - e0) * min(1.0, overlap / (t1 - t0)) / in_flight
        return total
