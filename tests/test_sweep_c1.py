"""With --parallel N > 1: per-request latency from a concurrency-1 timing pass (the loaded figures kept apart), and
the share of answers that change between concurrency levels."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.cli import main
from bench.config import load_suite
from bench.results.summary import latency_figures
from bench.runner import run_suite
from bench.sweep import LOAD_FILE, changed_answers
from tests.conftest import FAKE_SUITE, REPO, write_suite


def _suite(tmp_path: Path, extra: str = "load:\n  timing_samples: 3\n") -> Path:
    return write_suite(tmp_path / "suite", FAKE_SUITE + extra)


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _run(suite: Path, res: Path, *flags: str) -> int:
    return main(["run", str(suite), "--results", str(res), "--no-probe", "--isolation", "inline", "--json", *flags])


def test_parallel_run_takes_latency_from_a_concurrency_1_pass(tmp_path, batching_fake, capsys) -> None:
    res = tmp_path / "res"
    assert _run(_suite(tmp_path), res, "--parallel", "4") == 0
    samples = _jsonl(next(res.rglob("samples.jsonl")))
    load = _jsonl(next(res.rglob(LOAD_FILE)))
    cells = {r["cell_id"] for r in samples}
    assert len(cells) == 2 and all(r["concurrency"] == 4 for r in samples)
    # the first three samples by id, once per cell, at concurrency 1
    assert sorted((r["cell_id"], r["sample_id"], r["level"], r["concurrency"]) for r in load) == sorted(
        (c, sid, 1, 1) for c in cells for sid in ("t1", "t2", "t3"))
    summary = json.loads(next(res.rglob("summary.json")).read_text())
    for cell in summary["cells"]:
        idle = latency_figures([r for r in load if r["cell_id"] == cell["cell_id"]])
        loaded = latency_figures([r for r in samples if r["cell_id"] == cell["cell_id"]])
        assert cell["latency_basis"] == "timing pass at concurrency 1 over 3 samples"
        for key in ("latency_s", "ttft_s", "decode_tps", "prefill_tps"):
            assert cell[key] == idle[key]
            assert cell["loaded_latency"][key] == loaded[key]
        assert cell["latency_raw_s"] == idle["latency_raw_s"]
        assert cell["loaded_latency"]["concurrency"] == 4
        # the fake's loaded requests take four times as long: the headline is the idle figure, not the loaded one
        assert cell["latency_s"]["p50"] == pytest.approx(cell["loaded_latency"]["latency_s"]["p50"] / 4, rel=0.5)
        assert cell["latency_s"]["p95"] < cell["loaded_latency"]["latency_s"]["p95"]
        assert cell["load"]["concurrency"] == 4 and cell["load"]["requests_per_s"] > 0   # the batched pass's
        assert "4 requests in flight" in cell["cost_basis"]
        assert cell["changed_answers"] == [{"between": [4, 1], "compared": 3, "changed": 1, "share": 1 / 3,
                                            "comparable": True}]   # t1 of t1..t3
    lines = len(load)
    assert _run(_suite(tmp_path), res, "--parallel", "4") == 0      # resumed: nothing timed again
    assert len(_jsonl(next(res.rglob(LOAD_FILE)))) == lines


def test_one_at_a_time_keeps_the_whole_run_and_times_no_extra_pass(tmp_path, batching_fake) -> None:
    res = tmp_path / "res"
    assert _run(_suite(tmp_path), res) == 0
    assert not list(res.rglob(LOAD_FILE))
    for cell in json.loads(next(res.rglob("summary.json")).read_text())["cells"]:
        assert cell["latency_basis"] == "whole run at concurrency 1"
        assert "loaded_latency" not in cell and cell["changed_answers"] is None
        assert cell["cost_basis"].startswith("one request at a time")


def test_a_sweep_counts_changed_answers_per_level(tmp_path, batching_fake) -> None:
    res = tmp_path / "res"
    assert _run(_suite(tmp_path, "load:\n  timing_samples: 6\n  concurrency: [1, 2, 4]\n"), res) == 0
    for cell in json.loads(next(res.rglob("summary.json")).read_text())["cells"]:
        # level 1 ran at the main pass's own concurrency: nothing to compare; t1 and t5 flip at 2 and at 4
        assert cell["changed_answers"] == [
            {"between": [1, lv], "compared": 6, "changed": 2, "share": 2 / 6, "comparable": True} for lv in (2, 4)]
        assert cell["latency_basis"] == "whole run at concurrency 1" and "loaded_latency" not in cell


def test_sampled_answers_are_not_compared(tmp_path, batching_fake) -> None:
    res = tmp_path / "res"
    body = FAKE_SUITE.replace("  max_tokens: 8\n", "  max_tokens: 8\n  temperature: 0.7\n")
    assert _run(write_suite(tmp_path / "suite", body + "load:\n  timing_samples: 2\n"), res, "--parallel", "2") == 0
    for cell in json.loads(next(res.rglob("summary.json")).read_text())["cells"]:
        (entry,) = cell["changed_answers"]
        assert entry["comparable"] is False and entry["changed"] is None and entry["share"] is None
        assert entry["compared"] == 2 and "temperature 0.7" in entry["reason"]


def test_changed_answers_pairs_each_concurrency_and_skips_errors() -> None:
    main_rows = [{"sample_id": "a", "output": "x", "concurrency": 8}, {"sample_id": "b", "output": "y", "concurrency": 8},
                 {"sample_id": "c", "output": "z", "concurrency": 8, "error": "boom"}]
    levels = {1: {"a": {"output": "x", "concurrency": 1}, "b": {"output": "Y", "concurrency": 1},
                  "c": {"output": "z", "concurrency": 1}},
              4: {"a": {"output": "q", "concurrency": 4}, "b": {"output": "y", "error": "timeout"}},
              8: {"a": {"output": "other", "concurrency": 8}}}   # the main pass's own concurrency: not compared
    assert changed_answers(main_rows, levels, 0.0) == [
        {"between": [8, 1], "compared": 2, "changed": 1, "share": 0.5, "comparable": True},
        {"between": [8, 4], "compared": 1, "changed": 1, "share": 1.0, "comparable": True}]
    assert changed_answers(main_rows, {8: levels[8]}, 0.0) is None
    assert changed_answers([], levels, 0.0) is None


def test_the_run_table_and_the_report_show_the_basis_throughput_and_changed_answers(tmp_path, batching_fake,
                                                                                    capsys) -> None:
    import io

    from rich.console import Console

    from bench.display import results_table
    from bench.report.data import load_report_data

    res = tmp_path / "res"
    assert _run(_suite(tmp_path), res, "--parallel", "4") == 0
    summary = json.loads(next(res.rglob("summary.json")).read_text())
    buf = io.StringIO()
    Console(file=buf, width=400).print(results_table(summary))
    text = buf.getvalue()
    assert "changed answers" in text and text.count("1/3 (33.3%) 4->1") == 2
    assert text.count(" @ 4") == 2                                       # the batched pass's requests/s
    assert "* per-request figures from the timing pass at concurrency 1 over 3 samples" in text
    data = load_report_data([res])
    for c in data.cells:
        assert c["latency_basis"] == "timing pass at concurrency 1 over 3 samples"
        assert c["changed_answers"] == "1/3 (33.3%) 4->1" and c["loaded_concurrency"] == 4
        cell = next(x for x in summary["cells"] if x["cell_id"] == c["cell_id"])
        assert c["latency_p95"] == cell["latency_s"]["p95"] != cell["loaded_latency"]["latency_s"]["p95"]
        assert sorted(data.dists[c["key"]]["latency"]) == sorted(cell["latency_raw_s"])   # idle, 3 values
        assert len(data.dists[c["key"]]["latency"]) == 3
    out = tmp_path / "report.html"
    assert main(["report", str(res), "-o", str(out)]) == 0
    html = out.read_text(encoding="utf-8")
    assert "Batched passes and concurrency levels" in html and html.count("1/3 (33.3%) 4-&gt;1") == 2
    plain = tmp_path / "plain"
    assert _run(_suite(tmp_path), plain) == 0
    assert main(["report", str(plain), "-o", str(tmp_path / "plain.html")]) == 0
    assert "Batched passes" not in (tmp_path / "plain.html").read_text(encoding="utf-8")


@pytest.mark.integration
def test_llamacpp_parallel_run_times_level_1_and_compares_answers(tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    suite = load_suite(REPO / "suites" / "normalize.yaml")
    suite.load = suite.load.model_copy(update={"timing_samples": 2})
    outcome = run_suite(suite, limit=4, results_dir=tmp_path, quiet=True, parallel=2)
    assert not outcome.errored_cells
    load = _jsonl(outcome.run.path / LOAD_FILE)
    assert sorted((r["level"], r["concurrency"]) for r in load) == [(1, 1), (1, 1)]
    assert all(r["error"] is None and r["latency_s"] > 0 for r in load)
    (cell,) = outcome.summary["cells"]
    assert cell["load"]["concurrency"] == 2
    assert cell["latency_basis"] == "timing pass at concurrency 1 over 2 samples"
    assert cell["loaded_latency"]["concurrency"] == 2 and cell["loaded_latency"]["latency_s"]["p50"] > 0
    assert cell["latency_s"] == latency_figures(load)["latency_s"]
    (changed,) = cell["changed_answers"]
    assert changed["between"] == [2, 1] and changed["compared"] == 2 and changed["comparable"] is True
    assert changed["changed"] in (0, 1, 2) and changed["share"] == changed["changed"] / 2
