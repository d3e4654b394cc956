"""Operating points: timing passes at several concurrency levels, priced at the level the latency budget allows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.cli import main
from bench.sweep import LOAD_FILE, attach, level_figures, operating_point
from tests.conftest import REPO


def _level(level, p95, cost, n=64):
    upper = p95 if n >= 59 else None                                  # the 95% bound, as level_figures gives it
    return {"level": level, "n": n, "latency_p95_s": p95, "latency_p95_upper_s": upper, "cost_per_1k_usd": cost}


def test_the_cheapest_level_within_the_budget_prices_the_cell() -> None:
    levels = [_level(1, 1.0, 0.30), _level(4, 2.0, 0.12), _level(8, 5.0, 0.08)]
    assert operating_point(levels, 3.0)["level"] == 4                 # 8 is cheaper but breaks the budget
    assert operating_point(levels, None)["level"] == 8                # no budget: the cheapest
    none = operating_point(levels, 0.5)
    assert none["level"] == 1 and "no level meets" in none["reason"]
    # a level that costs more (a contended pass, say) is not chosen just for being higher
    assert operating_point([_level(1, 1.0, 0.10), _level(4, 1.5, 0.12)], 3.0)["level"] == 1


def test_level_figures_come_from_the_busy_wall_time() -> None:
    rows = [{"level": 4, "sample_id": str(i), "latency_s": 1.0, "completion_tokens": 10, "cost_usd": 0.001,
             "timings": {"t_start": 100.0 + 0.5 * i, "t_end": 1.0}} for i in range(4)]
    f = level_figures(rows)
    assert f["level"] == 4 and f["n"] == 4 and f["wall_s"] == pytest.approx(2.5)
    assert f["requests_per_s"] == pytest.approx(4 / 2.5) and f["output_tps"] == pytest.approx(40 / 2.5)
    assert f["cost_per_1k_usd"] == pytest.approx(1.0)


def test_attach_keeps_the_sequential_cost_and_says_the_basis() -> None:
    summary = {"cells": [{"cell_id": "a", "cost_per_1k_usd": 0.5}, {"cell_id": "b", "cost_per_1k_usd": 0.7}]}
    rows = [{"cell_id": "a", "level": lv, "sample_id": str(i), "latency_s": 0.1 * lv, "completion_tokens": 5,
             "cost_usd": 0.0005 / lv, "timings": {"t_start": float(i), "t_end": 0.1}} for lv in (1, 4) for i in range(3)]
    attach(summary, rows, None)
    a, b = summary["cells"]
    assert a["operating_point"]["level"] == 4 and a["cost_per_1k_usd"] == pytest.approx(0.125)
    assert a["cost_per_1k_usd_sequential"] == 0.5 and "concurrency 4" in a["cost_basis"]
    assert b["operating_point"] is None and b["cost_per_1k_usd"] == 0.7 and "one request at a time" in b["cost_basis"]


def test_bad_levels_exit_2(fake_suite, tmp_path, capsys) -> None:
    for bad in ("0,4", "x", "1,999"):
        assert main(["run", str(fake_suite), "--results", str(tmp_path / "r"), "--concurrency", bad]) == 2
        assert "--concurrency" in capsys.readouterr().err


def test_fake_run_times_each_level_apart_and_resumes(fake_suite, tmp_path) -> None:
    res = tmp_path / "res"
    args = ["run", str(fake_suite), "--results", str(res), "--no-probe", "--concurrency", "1,2",
            "--isolation", "inline"]
    assert main(args) == 0
    load = next(res.rglob(LOAD_FILE))
    rows = [json.loads(line) for line in load.read_text().splitlines()]
    samples = [json.loads(line) for line in next(res.rglob("samples.jsonl")).read_text().splitlines()]
    cells = {r["cell_id"] for r in samples}
    assert {(r["cell_id"], r["level"]) for r in rows} == {(c, lv) for c in cells for lv in (1, 2)}
    assert all(r.get("level") is None for r in samples)            # quality rows are the main pass's alone
    summary = json.loads(next(res.rglob("summary.json")).read_text())
    for cell in summary["cells"]:
        assert [lv["level"] for lv in cell["load_levels"]] == [1, 2]
        assert cell["operating_point"]["level"] in (1, 2)
    assert main(args) == 0                                          # a rerun times nothing again
    assert load.read_text().count("\n") == len(rows)


@pytest.mark.integration
def test_llamacpp_levels_decode_that_many_sequences(tmp_path) -> None:
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    res = tmp_path / "res"
    assert main(["run", str(REPO / "suites" / "normalize.yaml"), "--limit", "4", "--results", str(res),
                 "--concurrency", "1,4", "--no-probe"]) == 0
    rows = [json.loads(line) for line in next(res.rglob(LOAD_FILE)).read_text().splitlines()]
    assert sorted((r["level"], r["concurrency"]) for r in rows) == [(1, 1)] * 4 + [(4, 4)] * 4
    cell = json.loads(next(Path(res).rglob("summary.json")).read_text())["cells"][0]
    assert {lv["level"] for lv in cell["load_levels"]} == {1, 4}
    assert all(lv["requests_per_s"] > 0 and lv["latency_p95_s"] > 0 for lv in cell["load_levels"])
    assert cell["cost_per_1k_usd"] == cell["operating_point"]["cost_per_1k_usd"]


def test_thresholds_price_a_swept_cell_at_its_operating_point(fake_suite, tmp_path) -> None:
    res = tmp_path / "res"
    assert main(["run", str(fake_suite), "--results", str(res), "--no-probe", "--concurrency", "1,2",
                 "--isolation", "inline"]) == 0
    # make the operating point plainly cheaper than one at a time, so the factor cannot pass unapplied
    path = next(res.rglob("summary.json"))
    doc = json.loads(path.read_text())
    for c in doc["cells"]:
        c["operating_point"]["cost_per_1k_usd"] = c["cost_per_1k_usd"] = c["cost_per_1k_usd_sequential"] / 3
    path.write_text(json.dumps(doc))
    summary = {c["cell_id"]: c for c in doc["cells"]}
    rows = [json.loads(line) for line in next(res.rglob("samples.jsonl")).read_text().splitlines()]
    out = tmp_path / "routing.json"
    assert main(["thresholds", str(res), "--target", "tickets=0.5", "-o", str(out)]) in (0, 1)
    (task,) = json.loads(out.read_text())["tasks"].values()
    for tier in task["tiers"]:
        cell = summary[tier["cell"]]
        assert tier["cost_basis"] == cell["cost_basis"] and tier["cost_basis"].startswith("concurrency")
        factor = cell["operating_point"]["cost_per_1k_usd"] / cell["cost_per_1k_usd_sequential"]
        cal = [r["cost_usd"] for r in rows if r["cell_id"] == tier["cell"] and r["split"] == "calibration"
               and not r["error"]]
        assert tier["cost_per_1k_usd"] == pytest.approx(sum(cal) / len(cal) * 1000 * factor, rel=1e-4)
