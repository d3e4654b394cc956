"""Building the HTML report (`bench report`) from a results folder of 100,000 sample rows, reading included."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest


def test_report_from_100k_rows(benchmark: Any, results_100k: Path, rows_100k: list) -> None:
    report = pytest.importorskip("bench.report", reason="bench.report is not written yet")
    build_report = getattr(report, "build_report", None)
    if build_report is None:
        pytest.skip("bench.report has no build_report(results, routing=None) yet")
    benchmark.extra_info["rows"] = len(rows_100k)
    html = benchmark.pedantic(build_report, args=([str(results_100k)],), rounds=3, iterations=1)
    assert html.lstrip().lower().startswith("<!doctype html") and "qwen2.5-coder-1.5b-instruct" in html
