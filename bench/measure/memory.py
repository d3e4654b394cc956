"""Peak memory without slowing inference: the kernel's RSS high-water mark (VmHWM, reset per sample through
/proc/self/clear_refs) on Linux, so no thread runs beside the engine; a 20 Hz sampling thread only where no such
counter exists (other systems) or for GPU memory through NVML. Energy through NVML or RAPL.

A 200 Hz sampler thread cost 8-18% of decode speed on a 2-core machine: every extra runnable thread stalls
llama.cpp's synchronized workers. Reading VmHWM costs one small file read per sample, outside the token times.
"""

from __future__ import annotations

import os
import re
import threading
import time
from typing import Any

import psutil

MB = 1024 * 1024
SAMPLE_HZ = 20.0  # where something must be sampled: a rate whose cost is well under 1%
_HWM = re.compile(rb"VmHWM:\s+(\d+) kB")


def kernel_peak_available() -> bool:
    """Whether this process can read its RSS high-water mark and reset it (Linux /proc)."""
    try:
        with open("/proc/self/status", "rb") as f:
            if not _HWM.search(f.read()):
                return False
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class MemorySampler:
    """This process's peak RSS (and GPU memory when NVML sees a GPU) per window and for the whole cell.

    `window()` returns the peaks since the previous call and starts a new window: the per-sample peaks, while
    `peak_mb` is the whole cell's. `method` says how RSS peaks were taken.
    """

    def __init__(self, interval_s: float | None = None, pid: int | None = None):
        self.proc = psutil.Process(pid or os.getpid())
        forced = os.environ.get("BENCH_MEMORY_SAMPLE_HZ")  # a sampling thread at this rate, kernel or not
        if forced:
            interval_s = 1.0 / float(forced)
        self.kernel = pid is None and not forced and kernel_peak_available()
        self.method = "kernel VmHWM" if self.kernel else f"sampled at {1.0 / (interval_s or 1.0 / SAMPLE_HZ):g} Hz"
        self.peak_mb = 0.0
        self.window_peak_mb = 0.0
        self.gpu = GpuReader()
        self.gpu_peak_mb: float | None = None
        self.window_gpu_peak_mb: float | None = None
        self.samples = 0
        # a thread only for what the kernel does not keep: RSS elsewhere, GPU memory everywhere
        needs_thread = not self.kernel or self.gpu.handle is not None
        self.interval_s = (interval_s or 1.0 / SAMPLE_HZ) if needs_thread else None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def rss_mb(self) -> float:
        return self.proc.memory_info().rss / MB

    def _hwm_mb(self) -> float:
        with open("/proc/self/status", "rb") as f:
            m = _HWM.search(f.read())
        return int(m.group(1)) / 1024 if m else self.rss_mb()

    def _tick(self) -> None:
        rss = self._hwm_mb() if self.kernel else self.rss_mb()
        self.peak_mb = max(self.peak_mb, rss)
        self.window_peak_mb = max(self.window_peak_mb, rss)
        gpu = self.gpu.used_mb()
        if gpu is not None:
            self.gpu_peak_mb = max(self.gpu_peak_mb or 0.0, gpu)
            self.window_gpu_peak_mb = max(self.window_gpu_peak_mb or 0.0, gpu)
        self.samples += 1

    def _run(self) -> None:
        while not self._stop.is_set():
            if self.kernel:  # RSS comes from the kernel: only GPU memory is sampled here
                gpu = self.gpu.used_mb()
                if gpu is not None:
                    self.gpu_peak_mb = max(self.gpu_peak_mb or 0.0, gpu)
                    self.window_gpu_peak_mb = max(self.window_gpu_peak_mb or 0.0, gpu)
            else:
                self._tick()
            self._stop.wait(self.interval_s)

    def _reset_kernel_peak(self) -> None:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # the high-water mark restarts from the current RSS
        except OSError:
            pass

    def start(self) -> MemorySampler:
        self._tick()
        if self.interval_s is not None:
            self._thread = threading.Thread(target=self._run, name="bench-memory", daemon=True)
            self._thread.start()
        return self

    def window(self) -> tuple[float, float | None]:
        """Return the peaks since the last call and start a new window."""
        self._tick()
        out = (self.window_peak_mb, self.window_gpu_peak_mb)
        self.window_peak_mb = 0.0
        self.window_gpu_peak_mb = None
        if self.kernel:
            self._reset_kernel_peak()
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
