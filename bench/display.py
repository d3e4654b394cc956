"""Terminal output: per-cell progress bars (samples, ETA, live tokens/s) and the results table, on rich."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from bench.redact import RedactingStream

console = Console(file=RedactingStream(), stderr=True)   # progress and logs, credentials redacted
out = Console()                  # tables and results
if not out.is_terminal:          # a log or a pipe: don't squeeze the table into 80 columns
    out = Console(width=200)


def cell_progress(quiet: bool = False) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    TextColumn("{task.fields[tps]}"), console=console, disable=quiet, transient=False)


def _f(v: Any, fmt: str = "{:.2f}") -> str:
    return "-" if v is None else fmt.format(v)


def results_table(summary: dict[str, Any], title: str | None = None) -> Table:
    hw = sorted({c["cell"].get("hardware") or "?" for c in summary["cells"]})
    t = Table(title=title or f"{summary.get('suite')} ({summary.get('task')}), target {summary.get('target')}, "
              f"hardware {', '.join(hw)}")
    several = len(hw) > 1
    for col in ("model", "quant", "backend") + (("hardware",) if several else ()) + (
            "n", "quality [95% CI]", "TTFT p50/p95 s", "prefill tok/s", "decode tok/s", "peak RAM MB", "$/1k", "err"):
        t.add_column(col, justify="left" if col in ("model", "quant", "backend", "hardware") else "right")
    for c in summary["cells"]:
        q = c["quality"]
        quality = ("-" if q.get("mean") is None
                   else f"{q['metric']} {q['mean']:.3f} [{q['ci_low']:.3f}, {q['ci_high']:.3f}]")
        cell = c["cell"]
        t.add_row(cell["model"], cell.get("quantization") or "-", cell["backend"],
                  *((cell.get("hardware") or "?",) if several else ()), str(c["n"]), quality,
                  f"{_f(c['ttft_s']['p50'])}/{_f(c['ttft_s']['p95'])}", _f(c["prefill_tps"], "{:.0f}"),
                  _f(c["decode_tps"], "{:.1f}"), _f(c["peak_rss_mb"], "{:.0f}"),
                  _f(c["cost_per_1k_usd"], "{:.4f}"), str(c["errors"]))
    return t
