"""Terminal output: per-cell progress (live bars on a terminal, plain lines in a log) and the results table."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO, Any, cast

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from bench.fmt import num
from bench.redact import RedactingStream

LOG_EVERY_S = 30.0   # in a log, a progress line at least this often ...
LOG_STEPS = 10       # ... and at every tenth of a cell
HEARTBEAT_S = 1.0    # how often the heartbeat thread checks the 30 s rule
clock: Callable[[], float] = time.monotonic   # the log's clock (tests put a fake one here)


class LogConsole(Console):
    """A console that never folds a line where no terminal shows it (a CI log, a pipe): a long path or label
    stays whole on one line instead of being cut mid-word at the 80 columns rich assumes there."""

    def print(self, *objects: Any, soft_wrap: bool | None = None, **kwargs: Any) -> None:
        if soft_wrap is None and not self.is_terminal:
            soft_wrap = True
        super().print(*objects, soft_wrap=soft_wrap, **kwargs)


console = LogConsole(file=cast(IO[str], RedactingStream()), stderr=True)   # progress and logs, credentials redacted
out = Console()                  # tables and results
if not out.is_terminal:          # a log or a pipe: don't squeeze the table into 80 columns
    out = Console(width=200)


def cell_progress(quiet: bool = False) -> Progress:
    """Live per-cell bars on a terminal; elsewhere the bars stay hidden and ProgressLog writes lines instead."""
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    TextColumn("{task.fields[tps]}"), console=console, disable=quiet or not console.is_terminal,
                    transient=False)


def duration(seconds: float) -> str:
    """A duration for a log line: '45 s', '3 min 05 s', '2 h 07 min'."""
    s = max(int(round(seconds)), 0)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


class ProgressLog:
    """One cell's progress as plain lines, for where no live bar shows (a CI log, a pipe): a line at every tenth
    of the cell and at least every `every_s` seconds (`tick`, called by a heartbeat thread while no sample ends),
    each with samples done/total, elapsed time, ETA and tokens/s. `clock` is injectable for tests."""

    def __init__(self, label: str, total: int, done: int = 0, *, enabled: bool = True, target: Console | None = None,
                 clock: Callable[[], float] = time.monotonic, every_s: float = LOG_EVERY_S) -> None:
        self.label, self.total, self.done, self.tps = label, total, done, 0.0
        self.enabled = enabled and total > 0
        self._console = target if target is not None else console
        self._clock, self._every_s = clock, every_s
        self._done_at_start = done
        self._t_start = self._t_last = clock()
        self._step = self._step_of(done)
        self._lock = threading.Lock()

    def _step_of(self, done: int) -> int:
        return done * LOG_STEPS // self.total if self.total else 0

    def update(self, done: int, tps: float = 0.0) -> None:
        """`done` samples of the cell are finished; a line when that crosses a tenth or `every_s` has passed."""
        if not self.enabled:
            return
        with self._lock:
            self.done, self.tps = done, tps
            now = self._clock()
            step = self._step_of(done)
            if step > self._step or now - self._t_last >= self._every_s:
                self._step = max(step, self._step)
                self._emit(now)

    def tick(self) -> None:
        """The every-`every_s` rule while no sample finishes (a slow model, a long load)."""
        if not self.enabled:
            return
        with self._lock:
            now = self._clock()
            if now - self._t_last >= self._every_s and self.done < self.total:
                self._emit(now)

    def line(self, now: float) -> str:
        elapsed = now - self._t_start
        ran = self.done - self._done_at_start
        parts = [f"{self.label}: {self.done}/{self.total} samples ({100 * self.done // self.total}%)",
                 f"elapsed {duration(elapsed)}"]
        if 0 < ran and self.done < self.total and elapsed > 0:
            parts.append(f"ETA {duration((self.total - self.done) * elapsed / ran)}")
        if self.tps:
            parts.append(f"{num(self.tps, '.1f')} tok/s")
        return ", ".join(parts)

    def _emit(self, now: float) -> None:
        self._t_last = now
        self._console.print(self.line(now), markup=False, highlight=False, soft_wrap=True)

    @contextmanager
    def heartbeat(self, poll_s: float | None = None) -> Iterator[ProgressLog]:
        """Calls `tick` every `poll_s` seconds (HEARTBEAT_S) from a daemon thread while the block runs."""
        poll_s = HEARTBEAT_S if poll_s is None else poll_s
        if not self.enabled:
            yield self
            return
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(poll_s):
                self.tick()

        thread = threading.Thread(target=beat, name=f"progress {self.label}", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join()

    def finish(self, ran: int, decode_tps: float | None, errored: bool) -> None:
        """The cell's closing line: samples run in this session, decode tokens/s, whether any errored."""
        if not self.enabled:
            return
        text = f"{self.label}: {ran} samples run" + (f", decode {num(decode_tps, '.1f')} tok/s" if decode_tps else "")
        self._console.print(text + (", with errors" if errored else ""), markup=False, highlight=False,
                            soft_wrap=True)


def cell_log(label: str, total: int, done: int = 0, quiet: bool = False) -> ProgressLog:
    """The cell's log lines: on only where no live bar shows (not quiet, and stderr not a terminal)."""
    return ProgressLog(label, total, done, enabled=not quiet and not console.is_terminal, clock=clock)


def results_table(summary: dict[str, Any], title: str | None = None) -> Table:
    """The run's table. Where a cell ran several requests at once or at several levels, two more columns: the
    throughput of its batched pass or operating point and the answers that changed between concurrencies; a `*` marks per-request figures
    taken from the concurrency-1 timing pass (the main pass ran under load)."""
    hw = sorted({c["cell"].get("hardware") or "?" for c in summary["cells"]})
    t = Table(title=title or f"{summary.get('suite')} ({summary.get('task')}), target {summary.get('target')}, "
              f"hardware {', '.join(hw)}")
    several = len(hw) > 1
    loaded = any(c.get("load") or c.get("load_levels") or c.get("changed_answers") for c in summary["cells"])
    for col in ("model", "quant", "backend") + (("hardware",) if several else ()) + (
            "n", "quality [95% CI]", "TTFT p50/p95 s", "prefill tok/s", "decode tok/s", "peak RAM MB", "$/1k", "err") + (
            ("req/s @ concurrency", "changed answers") if loaded else ()):
        t.add_column(col, justify="left" if col in ("model", "quant", "backend", "hardware") else "right")
    marked = []
    for c in summary["cells"]:
        q = c["quality"]
        quality = ("-" if q.get("mean") is None
                   else f"{q['metric']} {q['mean']:.3f} [{q['ci_low']:.3f}, {q['ci_high']:.3f}]")
        cell = c["cell"]
        star = "*" if c.get("loaded_latency") else ""
        if star:
            marked.append(str(c.get("latency_basis")))
        t.add_row(cell["model"], cell.get("quantization") or "-", cell["backend"],
                  *((cell.get("hardware") or "?",) if several else ()), str(c["n"]), quality,
                  f"{num(c['ttft_s']['p50'], '.2f')}/{num(c['ttft_s']['p95'], '.2f')}{star}",
                  num(c["prefill_tps"], ".0f") + star, num(c["decode_tps"], ".1f") + star, num(c["peak_rss_mb"], ".0f"),
                  num(c["cost_per_1k_usd"], ".4f"), str(c["errors"]),
                  *((best_throughput(c), changed_text(c.get("changed_answers"), c.get("batch_invariant")))
                    if loaded else ()))
    if marked:
        t.caption = (f"* per-request figures from the {'; '.join(sorted(set(marked)))} (the main pass ran several "
                     "requests at once; its loaded figures: summary.json loaded_latency)")
    return t


def _as(value: Any, kind: type, default: Any) -> Any:
    """`value` where it is of `kind`, else `default` (summary fields a reader cannot trust to be present)."""
    return value if isinstance(value, kind) else default


def best_throughput(cell: dict[str, Any]) -> str:
    """Requests/s of the batched main pass at its concurrency (`load`), else of the operating point's level."""
    load: dict[str, Any] = _as(cell.get("load"), dict, {})
    point: dict[str, Any] = _as(cell.get("operating_point"), dict, {})
    if isinstance(load.get("requests_per_s"), (int, float)):
        return f"{num(load['requests_per_s'], '.2f')} @ {load.get('concurrency')}"
    levels: list[Any] = _as(cell.get("load_levels"), list, [])
    level = next((lv for lv in levels if isinstance(lv, dict) and lv.get("level") == point.get("level")), None)
    if level is None or not isinstance(level.get("requests_per_s"), (int, float)):
        return "-"
    return f"{num(level['requests_per_s'], '.2f')} @ {level.get('level')} (priced)"


def changed_text(entries: Any, batch_invariant: Any = None) -> str:
    """'1/32 (3.1%) 8->1' per pair of concurrencies; 'not comparable (temperature > 0)' for sampled decoding. A
    cell whose batched load found its logits change with the batch's width says so after it."""
    text = _changed_text(entries)
    return f"{text}; logits vary with batch width" if batch_invariant is False else text


def _changed_text(entries: Any) -> str:
    entries = [e for e in entries if isinstance(e, dict)] if isinstance(entries, list) else []
    shown = [e for e in entries if e.get("comparable") and isinstance(e.get("changed"), int)
             and isinstance(e.get("compared"), int) and e["compared"] > 0
             and isinstance(e.get("between"), list) and len(e["between"]) == 2]
    if shown:
        return ", ".join(f"{e['changed']}/{e['compared']} ({e['changed'] / e['compared']:.1%}) "
                         f"{e['between'][0]}->{e['between'][1]}" for e in shown)
    if any(e.get("comparable") is False for e in entries):
        return "not comparable (temperature > 0)"
    return "-"
