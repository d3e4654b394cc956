"""Progress where no terminal shows it (CI logs): a line at every tenth of a cell and at least every 30 s, whole
lines however long the label; and the results table's numbers."""

from __future__ import annotations

import io
import re
import threading

from rich.console import Console

import bench.display as display
from bench.display import LogConsole, ProgressLog, duration, results_table


class FakeClock:
    """A clock the test moves by hand (or by `step` on every reading)."""

    def __init__(self, step: float = 0.0) -> None:
        self.now, self.step = 1000.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def _log(total: int, clock: FakeClock, done: int = 0, label: str = "m q4 fake") -> tuple[ProgressLog, io.StringIO]:
    buf = io.StringIO()
    target = Console(file=buf, force_terminal=False, width=40)
    return ProgressLog(label, total, done, target=target, clock=clock), buf


def _counts(text: str) -> list[int]:
    return [int(m) for m in re.findall(r"(\d+)/\d+ samples", text)]


def test_a_line_at_every_tenth_of_the_cell() -> None:
    clock = FakeClock()
    log, buf = _log(100, clock)
    for done in range(1, 101):
        clock.now += 1.0  # one sample a second: never 30 s without a line
        log.update(done, tps=42.0)
    assert _counts(buf.getvalue()) == list(range(10, 101, 10))
    first = buf.getvalue().splitlines()[0]
    assert first == "m q4 fake: 10/100 samples (10%), elapsed 10 s, ETA 1 min 30 s, 42.0 tok/s"


def test_tenths_of_a_cell_that_does_not_divide_by_ten() -> None:
    clock = FakeClock()
    log, buf = _log(25, clock)
    for done in range(1, 26):
        log.update(done)
    assert _counts(buf.getvalue()) == [3, 5, 8, 10, 13, 15, 18, 20, 23, 25]  # each crossing of a tenth


def test_a_line_at_least_every_30_seconds() -> None:
    clock = FakeClock()
    log, buf = _log(1000, clock)
    clock.now += 29.0
    log.update(1)
    log.tick()
    assert buf.getvalue() == ""  # under 30 s and under a tenth: nothing yet
    clock.now += 1.0
    log.update(2)
    assert _counts(buf.getvalue()) == [2]
    clock.now += 30.0
    log.tick()  # no sample finished for 30 s (a slow model): the heartbeat still writes a line
    assert _counts(buf.getvalue()) == [2, 2]
    assert buf.getvalue().splitlines()[-1].startswith("m q4 fake: 2/1000 samples (0%), elapsed 1 min 00 s, ETA ")
    clock.now += 10.0
    log.tick()
    assert _counts(buf.getvalue()) == [2, 2]


def test_a_resumed_cell_counts_all_its_samples_and_its_eta_from_this_session() -> None:
    clock = FakeClock()
    log, buf = _log(20, clock, done=10)
    clock.now += 5.0
    log.update(12)
    assert buf.getvalue().splitlines() == ["m q4 fake: 12/20 samples (60%), elapsed 5 s, ETA 20 s"]


def test_the_heartbeat_thread_ticks() -> None:
    clock = FakeClock()
    seen = threading.Event()

    class Target:
        def print(self, text: str, **kw) -> None:
            seen.set()

    log = ProgressLog("cell", 10, target=Target(), clock=clock)  # type: ignore[arg-type]
    clock.now += 31.0
    with log.heartbeat(poll_s=0.001):
        assert seen.wait(timeout=10)  # the thread called tick(), which found 31 s without a line


def test_long_paths_are_never_cut_mid_word() -> None:
    buf = io.StringIO()
    console = LogConsole(file=buf, force_terminal=False, width=40)
    path = "/very/long/" + "directory_name/" * 12 + "samples.jsonl"
    console.print(f"tickets: 8 samples x 2 cells -> {path}")
    assert buf.getvalue() == f"tickets: 8 samples x 2 cells -> {path}\n"
    clock = FakeClock()
    log, out = _log(1, clock, label="model-" + "x" * 80 + " Q4_K_M llamacpp")
    log.update(1)
    assert len(out.getvalue().splitlines()) == 1 and "x" * 80 + " Q4_K_M llamacpp: 1/1 samples" in out.getvalue()


def test_duration() -> None:
    assert [duration(s) for s in (0, 44.6, 65, 3599, 7620)] == ["0 s", "45 s", "1 min 05 s", "59 min 59 s",
                                                                  "2 h 07 min"]


def test_a_fake_run_logs_progress_lines_on_a_non_terminal_stderr(tmp_path, monkeypatch, capsys) -> None:
    """`bench run` with stderr captured (not a terminal): a line at each tenth of each cell, then its closing line."""
    from bench.config import load_suite
    from bench.runner import run_suite
    from tests.conftest import FAKE_SUITE, write_suite

    rows = [{"id": f"s{i}", "text": f"ticket {i}", "label": "billing" if i % 2 else "technical"} for i in range(20)]
    suite = load_suite(write_suite(tmp_path / "suite", FAKE_SUITE, rows=rows))
    monkeypatch.setattr(display, "clock", FakeClock(step=0.01))  # far under 30 s between samples
    monkeypatch.setattr(display, "HEARTBEAT_S", 3600.0)
    run_suite(suite, results_dir=tmp_path / "r", isolation="inline", quiet=False)
    err = capsys.readouterr().err
    for model in ("smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct"):
        lines = [line for line in err.splitlines() if line.startswith(model)]
        assert _counts("\n".join(lines)) == list(range(2, 21, 2))  # 20 samples: every 2nd is a tenth
        assert "ETA" in lines[0] and lines[-2].endswith(" tok/s")  # the 100% line: no ETA left, a decode rate
        assert re.fullmatch(rf"{re.escape(model)} .*: 20 samples run, decode [\d.]+ tok/s", lines[-1])


def test_a_fake_run_logs_at_least_every_30_seconds(tmp_path, monkeypatch, capsys) -> None:
    """When each sample takes over 30 s (the clock says so), every sample gets its line, not only every tenth."""
    from bench.config import load_suite
    from bench.runner import run_suite
    from tests.conftest import FAKE_SUITE, write_suite

    rows = [{"id": f"s{i}", "text": f"ticket {i}", "label": "billing"} for i in range(20)]
    suite = load_suite(write_suite(tmp_path / "suite", FAKE_SUITE, rows=rows))
    monkeypatch.setattr(display, "clock", FakeClock(step=31.0))
    monkeypatch.setattr(display, "HEARTBEAT_S", 3600.0)
    run_suite(suite, results_dir=tmp_path / "r", isolation="inline", quiet=False, models=["smollm2-135m-instruct"])
    err = capsys.readouterr().err
    assert _counts(err) == list(range(1, 21))


def test_results_table_formats_numbers_and_dashes() -> None:
    cell = {"cell": {"model": "m", "quantization": None, "backend": "fake", "hardware": "h"}, "n": 3, "errors": 0,
            "quality": {"metric": "accuracy", "mean": 0.5, "ci_low": 0.25, "ci_high": 0.75},
            "ttft_s": {"p50": 0.123, "p95": None}, "prefill_tps": 1234.4, "decode_tps": None, "peak_rss_mb": 512.6,
            "cost_per_1k_usd": 0.00123}
    buf = io.StringIO()
    Console(file=buf, width=300).print(results_table({"suite": "s", "task": "classify", "target": 0.6,
                                                      "cells": [cell]}))
    text = buf.getvalue()
    for shown in ("accuracy 0.500 [0.250, 0.750]", "0.12/-", "1234", "513", "0.0012"):
        assert shown in text


def test_changed_answers_say_when_a_cells_logits_vary_with_batch_width() -> None:
    from bench.display import changed_text

    entries = [{"between": [8, 1], "compared": 32, "changed": 3, "share": 3 / 32, "comparable": True}]
    assert changed_text(entries) == changed_text(entries, True) == "3/32 (9.4%) 8->1"
    assert changed_text(entries, False) == "3/32 (9.4%) 8->1; logits vary with batch width"
    assert changed_text(None, False) == "-; logits vary with batch width"
