"""`bench report`: one self-contained, offline HTML page (plotly embedded once) built from any set of runs."""

from __future__ import annotations

from pathlib import Path

from bench.report.data import ReportData, load_report_data, load_routing
from bench.report.html import render_report

__all__ = ["ReportData", "build_report", "load_report_data", "load_routing", "render_report"]


def build_report(results: list[str | Path], routing: str | None = None) -> str:
    """The whole HTML page for the runs at or below `results` (and a routing.json, when given)."""
    return render_report(load_report_data(results, routing=routing))
