"""How much CPU other processes took while a cell ran: system-wide busy CPU time minus this process's own, and the
hypervisor's steal time. On 2 cores one busy neighbour halves llama.cpp's decode rate, so a timing taken beside one
is flagged `contended` rather than trusted (psutil: /proc/stat and the process's own times)."""

from __future__ import annotations

import os
import time
from typing import Any

# other processes' CPU, in cores, above which a sample's timing is flagged contended (BENCH_CONTENTION_CORES)
THRESHOLD_CORES = float(os.environ.get("BENCH_CONTENTION_CORES", "0.25"))


class ContentionMeter:
    """Windows of (other processes' CPU in cores, steal share of all CPU) between successive calls of window()."""

    def __init__(self) -> None:
        import psutil

        self._psutil = psutil
        self._proc = psutil.Process()
        self._last = self._read()

    def _read(self) -> tuple[float, float, float, float]:
        sys_t = self._psutil.cpu_times()
        busy = sum(getattr(sys_t, f, 0.0) for f in ("user", "nice", "system", "irq", "softirq", "steal"))
        own = self._proc.cpu_times()
        mine = own.user + own.system + getattr(own, "children_user", 0.0) + getattr(own, "children_system", 0.0)
        return time.monotonic(), busy - getattr(sys_t, "steal", 0.0), mine, getattr(sys_t, "steal", 0.0)

    def window(self) -> dict[str, Any]:
        """Since the last call: other processes' CPU in cores, steal in cores, and whether that is contended."""
        now = self._read()
        wall = max(now[0] - self._last[0], 1e-6)
        others = max((now[1] - self._last[1]) - (now[2] - self._last[2]), 0.0) / wall
        steal = max(now[3] - self._last[3], 0.0) / wall
        self._last = now
        return {"others_cores": round(others, 4), "steal_cores": round(steal, 4),
                "contended": others + steal > THRESHOLD_CORES}


def wait_for_quiet(max_wait_s: float = 60.0, probe_s: float = 1.0) -> dict[str, Any]:
    """Wait (bounded) until a probe window sees the machine quiet; returns the last window."""
    meter = ContentionMeter()
    deadline = time.monotonic() + max_wait_s
    while True:
        time.sleep(probe_s)
        w = meter.window()
        if not w["contended"] or time.monotonic() >= deadline:
            return w
