"""Peak memory: RSS sampled at 200 Hz from a thread beside inference; GPU memory and energy through NVML."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import psutil

MB = 1024 * 1024


class MemorySampler:
    """Samples this process's RSS (and GPU memory when NVML sees a GPU) until stopped; keeps the peaks.

    `window()` starts a new window for the next sample: its peak is reported per sample, while `peak_mb`
    is the whole cell's peak.
    """

    def __init__(self, interval_s: float = 0.005, pid: int | None = None):
        self.interval_s = interval_s
        self.proc = psutil.Process(pid or os.getpid())
        self.peak_mb = 0.0
        self.window_peak_mb = 0.0
        self.gpu = GpuReader()
        self.gpu_peak_mb: float | None = None
        self.window_gpu_peak_mb: float | None = None
        self.samples = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def rss_mb(self) -> float:
        return self.proc.memory_info().rss / MB

    def _tick(self) -> None:
        rss = self.rss_mb()
        self.peak_mb = max(self.peak_mb, rss)
        self.window_peak_mb = max(self.window_peak_mb, rss)
        gpu = self.gpu.used_mb()
        if gpu is not None:
            self.gpu_peak_mb = max(self.gpu_peak_mb or 0.0, gpu)
            self.window_gpu_peak_mb = max(self.window_gpu_peak_mb or 0.0, gpu)
        self.samples += 1

    def _run(self) -> None:
        while not self._stop.is_set():
            self._tick()
            self._stop.wait(self.interval_s)

    def start(self) -> MemorySampler:
        self._tick()
        self._thread = threading.Thread(target=self._run, name="bench-memory", daemon=True)
        self._thread.start()
        return self

    def window(self) -> tuple[float, float | None]:
        """Return the peaks since the last call and start a new window."""
        self._tick()
        out = (self.window_peak_mb, self.window_gpu_peak_mb)
        self.window_peak_mb = 0.0
        self.window_gpu_peak_mb = None
        return out

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=1.0)
        self._tick()
        self.gpu.close()


class GpuReader:
    """NVML readings for GPU 0 (memory used by everyone, energy counter); None everywhere without a GPU."""

    def __init__(self, index: int = 0):
        self.handle: Any = None
        self._nvml: Any = None
        try:
            import pynvml

            pynvml.nvmlInit()
            if pynvml.nvmlDeviceGetCount() > index:
                self.handle = pynvml.nvmlDeviceGetHandleByIndex(index)
                self._nvml = pynvml
        except Exception:  # no driver, no GPU, no library: all mean "no GPU readings"
            self.handle = None

    def _memory_mb(self, which: str) -> float | None:
        if self.handle is None:
            return None
        try:
            return getattr(self._nvml.nvmlDeviceGetMemoryInfo(self.handle), which) / MB
        except Exception:
            return None

    def used_mb(self) -> float | None:
        return self._memory_mb("used")

    def total_mb(self) -> float | None:
        return self._memory_mb("total")

    def energy_mj(self) -> float | None:
        """Total energy since the driver loaded, in millijoules (Volta and newer)."""
        if self.handle is None:
            return None
        try:
            return float(self._nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle))
        except Exception:
            return None

    def close(self) -> None:
        if self._nvml is not None:
            try:
                self._nvml.nvmlShutdown()
            except Exception:
                pass
            self._nvml = None
            self.handle = None


def rapl_energy_uj() -> float | None:
    """CPU package energy from RAPL in microjoules, where the kernel lets us read it."""
    base = "/sys/class/powercap/intel-rapl:0/energy_uj"
    try:
        with open(base) as f:
            return float(f.read().strip())
    except (OSError, ValueError):
        return None


def now() -> float:
    return time.perf_counter()
