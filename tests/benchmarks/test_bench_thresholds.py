"""Threshold calibration (`bench thresholds`) over a million sample rows: 4 tiers x 250,000 samples, in memory."""

from __future__ import annotations

from typing import Any

import pytest

from tests.benchmarks.conftest import cells, scaled, synthetic_rows

thresholds = pytest.importorskip("bench.thresholds.document", reason="bench.thresholds is not written yet")
gather = pytest.importorskip("bench.thresholds.gather")


def _task(n_per_tier: int) -> Any:
    """The TaskData `bench.thresholds.gather.gather` would build from runs holding these rows."""
    by_cell: dict[str, dict[str, dict[str, Any]]] = {}
    for r in synthetic_rows(n_per_tier, 4, lean=True):
        by_cell.setdefault(r["cell_id"], {})[r["sample_id"]] = r
    tiers = [gather.Tier(cell_id=cid, cell=cell, rows=by_cell[cid], backend={"kind": cell["backend"]},
                         locality="cloud" if cell["backend"] == "openai" else "local", usd_per_hour=None,
                         chat=True, model_ref=None, run_id="20260101T000000Z-bnch") for cell, cid, _ in cells(4)]
    return gather.TaskData(name="tickets", kind="classify", metric="accuracy", target=0.85, target_source="suite",
                           tolerance=0.03, sensitive=False, latency_budget_s=None, latency_source=None,
                           runtime=None, tiers=tiers, run_ids=["20260101T000000Z-bnch"])


@pytest.fixture(scope="module")
def task_1m(pytestconfig: pytest.Config) -> Any:
    return _task(scaled(pytestconfig, 250_000))


@pytest.mark.slow
def test_routing_document_from_1m_rows(benchmark: Any, task_1m: Any) -> None:
    """The whole of `bench thresholds` after reading: calibrate, search the policy, replay it on holdout."""
    benchmark.extra_info["rows"] = sum(len(t.rows) for t in task_1m.tiers)
    doc = benchmark.pedantic(thresholds.build, args=([task_1m],), rounds=1, iterations=1)
    entry = doc["tasks"]["tickets"]
    assert entry["policy"]["status"] in ("meets_target", "unreachable") and entry["tiers"]
