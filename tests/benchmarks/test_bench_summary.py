"""summary.json from 100,000 sample rows: intervals, percentiles and token rates for 4 cells of 25,000 samples."""

from __future__ import annotations

from typing import Any

from bench.results.summary import build_summary
from tests.benchmarks.conftest import manifest


def test_build_summary_100k_rows(benchmark: Any, rows_100k: list[dict[str, Any]]) -> None:
    benchmark.extra_info["rows"] = len(rows_100k)
    summary = benchmark.pedantic(build_summary, args=(rows_100k, manifest()), rounds=3, iterations=1)
    assert len(summary["cells"]) == 4
    assert sum(c["n"] for c in summary["cells"]) == len(rows_100k)
    for c in summary["cells"]:
        q = c["quality"]
        assert q["ci_low"] <= q["mean"] <= q["ci_high"] and c["decode_tps"] > 0
