"""`bench compare` on a results folder of 100,000 sample rows against a copy of itself, reading included."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from bench.compare import compare


def test_compare_100k_rows(benchmark: Any, results_100k: Path, rows_100k: list, tmp_path: Path) -> None:
    copy = tmp_path / "candidate"
    shutil.copytree(results_100k, copy)  # a second folder, so both sides are read as they would be in CI
    benchmark.extra_info["rows_per_side"] = len(rows_100k)
    result = benchmark.pedantic(compare, args=(results_100k, copy), rounds=3, iterations=1)
    assert result["exit_code"] == 0 and len(result["tasks"][0]["pairs"]) == 4
