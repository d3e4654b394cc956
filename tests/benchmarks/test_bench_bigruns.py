"""`bench thresholds` over a million sample rows and `bench compare` over 100,000 rows per side, reading included,
on run directories as `bench run` writes them (tests/benchmarks/bigruns.py).

Timed at full size only with --benchmark-enable (`tox -e bench`); under the default --benchmark-disable each runs
once on about 10,000 rows, so CI checks the outputs without spending minutes."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from bench.compare import compare
from bench.thresholds.document import build, write
from bench.thresholds.gather import gather
from tests.benchmarks.bigruns import BigRun, write_big_run
from tests.benchmarks.conftest import full_size

TIERS = 3
THRESHOLDS_SAMPLES = 333_334   # x 3 tiers: 1,000,002 rows
COMPARE_SAMPLES = 33_334       # x 3 tiers: 100,002 rows per side
SMALL_SAMPLES = 3_334          # x 3 tiers: about 10,000 rows, when benchmarks are disabled


def _samples(config: pytest.Config, n: int) -> int:
    return n if full_size(config) else SMALL_SAMPLES


@pytest.fixture(scope="module")
def thresholds_run(pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> BigRun:
    return write_big_run(tmp_path_factory.mktemp("thresholds-1m"), _samples(pytestconfig, THRESHOLDS_SAMPLES),
                         TIERS, seed=0)


@pytest.fixture(scope="module")
def compare_runs(pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> tuple[BigRun, BigRun]:
    n = _samples(pytestconfig, COMPARE_SAMPLES)
    base = write_big_run(tmp_path_factory.mktemp("compare-base"), n, TIERS, seed=1)
    cand = write_big_run(tmp_path_factory.mktemp("compare-cand"), n, TIERS, seed=2)  # the same skills, drawn anew
    return base, cand


def _thresholds(root: Path, out: Path) -> dict[str, Any]:
    """What `bench thresholds ROOT -o routing.json` does, less the terminal summary."""
    doc = build(gather([root]))
    write(doc, out)
    return doc


@pytest.mark.slow
def test_thresholds_1m_rows(benchmark: Any, thresholds_run: BigRun, tmp_path: Path) -> None:
    made = thresholds_run
    benchmark.extra_info["rows"] = made.rows
    doc = benchmark.pedantic(_thresholds, args=(made.path.parent.parent, tmp_path / "routing.json"),
                             rounds=1, iterations=1)
    assert (tmp_path / "routing.json").exists()
    task = doc["tasks"]["tickets"]
    assert task["n_calibration"] == made.calibration
    assert task["n_holdout"] == made.n_samples - made.calibration
    assert sorted(t["cell"] for t in task["tiers"]) == sorted(made.cells)
    for tier in task["tiers"]:
        truth = made.quality[tier["cell"]]
        assert math.isclose(tier["quality"]["mean"], truth["calibration"], rel_tol=1e-5)
        assert math.isclose(tier["quality_holdout"]["mean"], truth["holdout"], rel_tol=1e-5)
    costs = [t["cost_per_1k_usd"] for t in task["tiers"]]
    assert task["cost_basis"] == "usd" and costs == sorted(costs)
    # the strongest tier (skill 0.95) clears the 0.85 target with room: a policy is admitted and holds on holdout
    assert task["status"] == "meets_target" and task["policy"]["chain"]
    assert task["expected"]["meets_target_on_holdout"] is True


@pytest.mark.slow
def test_compare_100k_rows_per_side(benchmark: Any, compare_runs: tuple[BigRun, BigRun]) -> None:
    base, cand = compare_runs
    benchmark.extra_info["rows_per_side"] = base.rows
    result = benchmark.pedantic(compare, args=(base.path.parent.parent, cand.path.parent.parent),
                                rounds=3, iterations=1)
    assert result["exit_code"] == 0 and not result["regression"]
    pairs = result["tasks"][0]["pairs"]
    assert len(pairs) == TIERS and {p["paired_by"] for p in pairs} == {"same cell"}
    for p in pairs:
        cid = p["baseline"]["cell_id"]
        assert p["samples"]["shared"] == base.n_samples
        assert p["errors"]["baseline"] == base.errors[cid] and p["errors"]["candidate"] == cand.errors[cid]
        assert math.isclose(p["quality"]["baseline"]["mean"], base.quality[cid]["all"], rel_tol=1e-9)
        assert math.isclose(p["quality"]["candidate"]["mean"], cand.quality[cid]["all"], rel_tol=1e-9)
        assert p["speed"]["comparable"] and p["speed"]["latency_p95_s"]["n"] > 0.99 * base.n_samples - 100
