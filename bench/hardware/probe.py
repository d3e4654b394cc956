"""Measure this machine's memory bandwidth STREAM-style with numpy, and keep the result per machine."""

from __future__ import annotations

import datetime as dt
import json
import re
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

PROBE_SCHEMA_VERSION = 1
CHUNK_ELEMENTS = 1 << 15  # 256 KiB of float64: the triad's scratch stays in L2 while a, b, c stream
# Bytes STREAM counts per element (8-byte doubles): copy reads a and writes c; triad reads b and c and
# writes a. Write-allocate traffic is not counted, as in STREAM. "read" (a max over a) is not a STREAM
# kernel: it reads only, like decoding reads weights, and counts 8.
COPY_BYTES, TRIAD_BYTES, READ_BYTES = 16, 24, 8
DEFAULT_ARRAY_MB = 512  # three arrays: 1.5 GiB, well past the last-level caches of today's servers


def _default_array_mb() -> float:
    """512 MiB per array, less where available memory is short (three arrays use at most a sixth of it)."""
    try:
        import psutil

        available_mb = psutil.virtual_memory().available / 1024**2
    except ImportError:
        return DEFAULT_ARRAY_MB
    return max(16.0, min(DEFAULT_ARRAY_MB, available_mb / 18))


def _default_threads() -> int:
    try:
        import psutil

        return int(psutil.cpu_count(logical=False) or psutil.cpu_count() or 1)
    except ImportError:
        import os

        return os.cpu_count() or 1


def _copy(src: np.ndarray, dst: np.ndarray) -> None:
    np.copyto(dst, src)


def _triad(a: np.ndarray, b: np.ndarray, c: np.ndarray, scalar: float) -> None:
    """a = b + scalar * c, a cache-sized chunk at a time so the product never goes to memory."""
    scratch = np.empty(min(CHUNK_ELEMENTS, len(a)), dtype=a.dtype)
    for start in range(0, len(a), CHUNK_ELEMENTS):
        stop = min(start + CHUNK_ELEMENTS, len(a))
        tmp = scratch[: stop - start]
        np.multiply(c[start:stop], scalar, out=tmp)
        np.add(b[start:stop], tmp, out=a[start:stop])


def _timed_parallel(work: list[Any]) -> float:
    """Run one callable per thread, started together; seconds from the first start to the last end."""
    barrier = threading.Barrier(len(work))
    starts = [0.0] * len(work)
    ends = [0.0] * len(work)

    def body(i: int) -> None:
        barrier.wait()
        starts[i] = time.perf_counter()
        work[i]()
        ends[i] = time.perf_counter()

    threads = [threading.Thread(target=body, args=(i,), daemon=True) for i in range(len(work))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return max(ends) - min(starts)


def probe(threads: int | None = None, array_mb: float | None = None, repetitions: int = 5) -> dict[str, Any]:
    """Best-of-N copy, triad and read bandwidth in GB/s (1e9 bytes) over three arrays of `array_mb` MiB.

    Arrays far larger than the last-level cache (512 MiB each by default) make the numbers memory-bound;
    each thread works on its own slice (numpy releases the GIL inside these operations), one thread per
    physical core by default. Bytes are counted as STREAM does: 16 per element for copy, 24 for triad.
    """
    threads = max(1, int(threads or _default_threads()))
    array_mb = float(array_mb or _default_array_mb())
    n = max(threads * 1024, int(array_mb * 1024 * 1024) // 8)
    started = time.perf_counter()
    a = np.full(n, 1.0)
    b = np.full(n, 2.0)
    c = np.zeros(n)
    bounds = np.linspace(0, n, threads + 1).astype(int)
    slices = [slice(bounds[i], bounds[i + 1]) for i in range(threads)]
    best_copy = best_triad = best_read = float("inf")
    for _ in range(max(1, repetitions)):
        best_copy = min(best_copy, _timed_parallel([lambda s=s: _copy(a[s], c[s]) for s in slices]))
        best_triad = min(best_triad, _timed_parallel([lambda s=s: _triad(a[s], b[s], c[s], 3.0) for s in slices]))
        best_read = min(best_read, _timed_parallel([lambda s=s: a[s].max() for s in slices]))
    # After the last triad a == b + 3c everywhere: check the work was really done.
    if not all(a[i] == b[i] + 3.0 * c[i] and c[i] > 1.0 for i in (0, n // 2, n - 1)):
        raise RuntimeError("bandwidth probe produced wrong values")
    elapsed = time.perf_counter() - started
    return {
        "schema_version": PROBE_SCHEMA_VERSION,
        "copy_gbs": round(COPY_BYTES * n / best_copy / 1e9, 2),
        "triad_gbs": round(TRIAD_BYTES * n / best_triad / 1e9, 2),
        "read_gbs": round(READ_BYTES * n / best_read / 1e9, 2),
        "threads": threads,
        "array_mb": round(n * 8 / 1024**2, 1),
        "repetitions": max(1, repetitions),
        "best_s": {"copy": round(best_copy, 6), "triad": round(best_triad, 6), "read": round(best_read, 6)},
        "method": "numpy STREAM-style copy and triad (plus a read-only max), best of repetitions; "
                  "bytes per element counted as STREAM does: copy 16, triad 24, read 8",
        "numpy": np.__version__,
        "elapsed_s": round(elapsed, 2),
        "measured_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def probe_path(fingerprint: str) -> Path:
    """Where the probe of the machine with this fingerprint is kept: <model cache>/hardware/<fp>.json."""
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", fingerprint):
        raise ValueError(f"not a machine fingerprint: {fingerprint!r}")
    from bench.models.cache import cache_dir

    return cache_dir() / "hardware" / f"{fingerprint}.json"


def save_probe(fingerprint: str, result: dict[str, Any]) -> Path:
    """Store a probe result for this machine, replacing an older one; returns the file."""
    path = probe_path(fingerprint)
    path.parent.mkdir(parents=True, exist_ok=True)
    from bench.fmt import write_text_atomic

    write_text_atomic(path, json.dumps({**result, "fingerprint": fingerprint}, indent=2))
    return path


def load_probe(fingerprint: str) -> dict[str, Any] | None:
    """The stored probe for this machine, or None when it was never probed (or the file is unreadable)."""
    path = probe_path(fingerprint)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("schema_version") != PROBE_SCHEMA_VERSION:
        return None
    return data
