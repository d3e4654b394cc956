"""Other processes' CPU while a cell runs is measured and flags the timing `contended`; --require-quiet waits."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

from tests.conftest import FAKE_SUITE, write_suite


@pytest.fixture
def busy_neighbour():
    """A process that keeps one core busy (bounded: it ends itself after 60 s)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time\nt=time.time()\nwhile time.time()-t<60: pass"])
    time.sleep(0.5)
    yield proc
    proc.kill()
    proc.wait()


def test_a_busy_neighbour_is_measured_and_flagged(busy_neighbour) -> None:
    from bench.measure.contention import ContentionMeter

    meter = ContentionMeter()
    time.sleep(1.5)
    w = meter.window()
    assert w["others_cores"] > 0.5 and w["contended"]


def test_rows_summary_and_routing_carry_the_flag(tmp_path, busy_neighbour) -> None:
    from bench.cli import main

    body = FAKE_SUITE.replace("accuracy_by_model:", "delay_s: 0.1\n      accuracy_by_model:")
    p = write_suite(tmp_path / "s", body)
    assert main(["run", str(p), "--results", str(tmp_path / "r"), "--isolation", "inline"]) == 0
    rows = [json.loads(line) for line in next((tmp_path / "r").rglob("samples.jsonl")).read_text().splitlines()]
    assert all(r["contention"]["others_cores"] >= 0 for r in rows)
    assert sum(r["contention"]["contended"] for r in rows) > len(rows) / 2
    cells = json.loads(next((tmp_path / "r").rglob("summary.json")).read_text())["cells"]
    assert all(c["contended"] is True and c["others_cores_mean"] > 0.3 for c in cells)
    assert main(["thresholds", str(tmp_path / "r"), "-o", str(tmp_path / "routing.json")]) in (0, 1)
    tiers = json.loads((tmp_path / "routing.json").read_text())["tasks"]["tickets"]["tiers"]
    assert all(t["contended"] is True for t in tiers)


def test_require_quiet_waits_then_refuses_a_busy_machine(monkeypatch, busy_neighbour) -> None:
    from bench import runner

    monkeypatch.setattr(runner, "QUIET_WAIT_S", 2.0)
    plan = SimpleNamespace(backend=SimpleNamespace(kind="llamacpp"))
    t0 = time.monotonic()
    assert runner._quiet_enough(plan, quiet=True) is False
    assert time.monotonic() - t0 < 10
    assert runner._quiet_enough(SimpleNamespace(backend=SimpleNamespace(kind="openai")), quiet=True) is True


# ---------------------------------------------------------------- peak memory without a sampling thread

def test_peak_memory_comes_from_the_kernel_with_no_thread_beside_inference() -> None:
    """On Linux the RSS high-water mark is read and reset per window: each window's peak is its own allocation,
    the cell's peak the largest, and no sampling thread runs where there is no GPU to sample."""
    import threading

    import pytest

    from bench.measure.memory import MemorySampler, kernel_peak_available

    if not kernel_peak_available():
        pytest.skip("no /proc/self/clear_refs here: the 20 Hz sampler is used instead")
    before = threading.active_count()
    sampler = MemorySampler().start()
    try:
        if sampler.gpu.handle is None:
            assert sampler._thread is None and threading.active_count() == before
        assert sampler.method == "kernel VmHWM"
        sampler.window()
        big = bytearray(160 * 1024 * 1024)
        big[::4096] = b"x" * len(big[::4096])  # touch every page
        rss_with_big = sampler.rss_mb()
        del big
        first, _ = sampler.window()
        small = bytearray(16 * 1024 * 1024)
        small[::4096] = b"x" * len(small[::4096])
        second, _ = sampler.window()
        del small
    finally:
        sampler.stop()
    assert first >= rss_with_big - 1  # the peak of a window survives the free that follows it
    assert second < first - 100       # and the next window starts again from the current RSS
    assert sampler.peak_mb >= first
