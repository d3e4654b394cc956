"""One results layer: every reader (summary, thresholds, compare, report, pytest plugin) sees the same cells.

Runs on the fake backend: a rerun that retries errored samples, a resumed run, and two runs of one suite."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from bench.config import load_suite
from bench.results.load import latest_rows, load_runs
from bench.results.rows import CellSummary, RunManifest, RunSummary, SampleRow, validate_row
from bench.results.schema import SAMPLE_FIELDS
from bench.results.store import RunDir
from bench.results.summary import build_summary, quality_value
from bench.runner import run_suite
from bench.stats import mean_ci
from tests.conftest import FAKE_SUITE, write_suite

SMOL, QWEN = "smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct"
Quality = dict[str, tuple[int, float | None, float | None, float | None]]  # cell_id -> (n, mean, ci_low, ci_high)


def _run(suite_path: Path, results: Path, **kw: Any) -> Any:
    return run_suite(load_suite(suite_path), results_dir=results, isolation="inline", quiet=True, **kw)


def _next_second() -> None:
    """Manifests stamp started_at to the second: make the next run start in a later one."""
    time.sleep(1.02 - time.time() % 1)


def _q(q: dict[str, Any], n: int) -> tuple[int, float | None, float | None, float | None]:
    return n, q["mean"], q["ci_low"], q["ci_high"]


def _rows_in_run_order(results: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every line of every run, runs by start time: what the summary's own latest_per_sample merges."""
    runs = sorted((RunDir(m.parent) for m in results.rglob("manifest.json")),
                  key=lambda r: (r.manifest()["started_at"], r.manifest()["run_id"]))
    return [row for r in runs for row in r.samples()], runs[-1].manifest()


# ---------------------------------------------------------------- each reader's per-cell quality

def by_summary(results: Path) -> Quality:
    rows, manifest = _rows_in_run_order(results)
    cells = build_summary(rows, manifest)["cells"]
    return {c["cell_id"]: _q(c["quality"], c["n"]) for c in cells}


def by_thresholds(results: Path) -> Quality:
    from bench.thresholds.gather import gather

    (task,) = gather([results])
    return {t.cell_id: _q(mean_ci([quality_value(r) for r in t.rows.values()]), len(t.rows)) for t in task.tiers}


def by_compare(results: Path) -> Quality:
    from bench.compare import compare

    (task,) = compare(results, results)["tasks"]
    assert all(p["paired_by"] == "same cell" for p in task["pairs"])
    return {p["baseline"]["cell_id"]: _q(p["quality"]["baseline"], p["samples"]["baseline"]) for p in task["pairs"]}


def by_report(results: Path) -> Quality:
    from bench.report.data import load_report_data

    data = load_report_data([results])
    assert len({c["cell_id"] for c in data.cells}) == len(data.cells)  # one row per cell, runs merged
    return {c["cell_id"]: (c["n"], c["quality"], c["ci_low"], c["ci_high"]) for c in data.cells}


def by_plugin(results: Path) -> Quality:
    from bench.pytest_plugin import cell_quality, cell_rows

    out: Quality = {}
    for manifest in results.rglob("manifest.json"):
        for cell in RunDir(manifest.parent).manifest()["cells"]:
            rows = cell_rows([results], cell)
            out[rows[0]["cell_id"]] = _q(cell_quality(rows), len(rows))
    return out


READERS = {"summary": by_summary, "thresholds": by_thresholds, "compare": by_compare, "report": by_report,
           "pytest plugin": by_plugin}


def assert_readers_agree(results: Path, expected: Quality) -> None:
    for name, reader in READERS.items():
        got = reader(results)
        assert got.keys() == expected.keys(), name
        for cid, (n, mean, lo, hi) in expected.items():
            assert got[cid][0] == n, f"{name}: {cid}: n {got[cid][0]} != {n}"
            assert got[cid][1:] == pytest.approx((mean, lo, hi)), f"{name}: {cid}"


def expected_from(rows_by_cell: dict[str, dict[str, dict[str, Any]]]) -> Quality:
    return {cid: _q(mean_ci([quality_value(r) for r in rows.values()]), len(rows))
            for cid, rows in rows_by_cell.items()}


@pytest.fixture
def clean(tmp_path: Path, fake_suite: Path) -> Quality:
    """Each cell's quality from one uninterrupted run without errors: what every scenario must come back to."""
    out = _run(fake_suite, tmp_path / "clean")
    return {c["cell_id"]: _q(c["quality"], c["n"]) for c in json.loads(out.run.summary_path.read_text())["cells"]}


# ---------------------------------------------------------------- the scenarios

def test_a_rerun_replaces_errored_samples_with_their_retries(tmp_path: Path, clean: Quality) -> None:
    broken = write_suite(tmp_path / "s", FAKE_SUITE.replace("    - kind: fake\n",
                                                            "    - kind: fake\n      fail_load: true\n"))
    results = tmp_path / "results"
    first = _run(broken, results)
    assert all(r["error"] for r in first.run.samples())  # every sample errored: the model failed to load
    fixed = write_suite(tmp_path / "s", FAKE_SUITE)  # same data and prompt: the rerun resumes the same run
    second = _run(fixed, results)
    assert second.resumed and second.run.path == first.run.path
    lines = second.run.samples()
    assert len(lines) == 32 and sum(bool(r["error"]) for r in lines) == 16  # retries appended, nothing lost
    summary = json.loads(second.run.summary_path.read_text())
    assert all(c["errors"] == 0 and c["n"] == 8 for c in summary["cells"])
    assert {c["cell_id"]: _q(c["quality"], c["n"]) for c in summary["cells"]} == clean
    assert_readers_agree(results, clean)


def test_a_resumed_run_reads_as_one_uninterrupted_run(tmp_path: Path, fake_suite: Path, clean: Quality) -> None:
    results = tmp_path / "results"
    first = _run(fake_suite, results, limit=3)  # interrupted after three samples per cell ...
    with first.run.samples_path.open("ab") as f:
        f.write(b'{"schema_version": 1, "cell": {"model": "smo')  # ... and killed in the middle of a line
    second = _run(fake_suite, results)
    assert second.resumed and second.run.path == first.run.path
    assert len(second.run.samples()) == 16
    assert_readers_agree(results, clean)


def test_two_runs_of_one_suite_merge_sample_by_sample(tmp_path: Path, fake_suite: Path, clean: Quality) -> None:
    results = tmp_path / "results"
    first = _run(fake_suite, results)
    _next_second()
    better = write_suite(tmp_path / "better", FAKE_SUITE.replace(f"{SMOL}: 0.5", f"{SMOL}: 1.0"))
    second = _run(better, results, fresh=True, models=[SMOL], limit=5)  # re-runs five samples of one cell
    assert second.run.path != first.run.path
    old, new = first.run.samples(), second.run.samples()
    assert {r["cell"]["model"] for r in new} == {SMOL} and len(new) == 5
    merged: dict[str, dict[str, dict[str, Any]]] = {}
    for r in old + new:  # the rule, written out: runs by start time, then lines; the latest row wins
        merged.setdefault(r["cell_id"], {})[r["sample_id"]] = r
    expected = expected_from(merged)
    smol = new[0]["cell_id"]
    assert expected[smol][0] == 8  # the three samples the later run did not re-run are kept
    assert expected[smol][1] not in (clean[smol][1], 1.0)  # neither run alone
    assert {cid: q for cid, q in expected.items() if cid != smol} == {c: q for c, q in clean.items() if c != smol}
    assert_readers_agree(results, expected)


def test_a_later_run_wins_even_when_its_cell_errored(tmp_path: Path, fake_suite: Path) -> None:
    """The rule does not prefer answered rows: the latest attempt is what the cell does now."""
    results = tmp_path / "results"
    _run(fake_suite, results, models=[QWEN])
    _next_second()
    broken = write_suite(tmp_path / "b", FAKE_SUITE.replace("    - kind: fake\n",
                                                            "    - kind: fake\n      fail_load: true\n"))
    _run(broken, results, fresh=True, models=[QWEN], limit=2)
    (cell,) = load_runs([results]).suites["tickets"].cells.values()
    assert len(cell.rows) == 8 and sum(bool(r["error"]) for r in cell.rows.values()) == 2
    assert [r.run_id for r in cell.runs] == [r.run_id for r in load_runs([results]).suites["tickets"].runs]
    q = by_thresholds(results)[cell.cell_id]
    assert q[0] == 8 and q[1] == pytest.approx(6 / 8)  # the fake answers qwen right every time; 2 errors count 0
    assert_readers_agree(results, {cell.cell_id: q})


# ---------------------------------------------------------------- the models fit the files

def test_models_load_every_file_a_run_writes(tmp_path: Path, fake_suite: Path) -> None:
    out = _run(fake_suite, tmp_path / "results")
    assert set(SAMPLE_FIELDS) <= set(SampleRow.model_fields)
    for raw in out.run.samples():
        row = validate_row(raw)
        assert row.quality() == quality_value(raw)
        assert row.model_dump(exclude_unset=True, mode="json").keys() == raw.keys()  # nothing dropped or added
    manifest = RunManifest.model_validate(json.loads(out.run.manifest_path.read_text()))
    assert manifest.suite.name == "tickets" and manifest.finished_at is not None and len(manifest.cells) == 2
    summary = RunSummary.model_validate(json.loads(out.run.summary_path.read_text()))
    assert all(isinstance(c, CellSummary) and c.n == 8 for c in summary.cells)
    found = load_runs([tmp_path / "results"])
    typed = [r for c in found.suites["tickets"].cells.values() for r in c.typed()]
    assert len(typed) == 16 and all(isinstance(r, SampleRow) for r in typed)


def test_a_row_that_breaks_the_model_names_file_and_field(tmp_path: Path) -> None:
    from bench.errors import UserInputError

    row = {"schema_version": 1, "cell": {"model": "m", "backend": "fake"}, "cell_id": "c", "sample_id": 7,
           "latency_s": "slow"}
    with pytest.raises(UserInputError, match="latency_s") as err:
        validate_row(row, "x/samples.jsonl:3")
    assert err.value.file == "x/samples.jsonl:3"
    assert validate_row({**row, "latency_s": 0.5}).sample_id == "7"  # numeric ids read as strings


def test_latest_rows_keys_sample_ids_as_strings() -> None:
    a = {"cell_id": "c", "sample_id": 1, "score": 0.0}
    b = {"cell_id": "c", "sample_id": "1", "score": 1.0}
    c = {"cell_id": "d", "sample_id": "1", "score": 0.5}
    assert latest_rows([a, c, b]) == [b, c]


def test_a_malformed_concurrency_reads_as_one_at_a_time(tmp_path: Path, fake_suite: Path) -> None:
    """summary (report, project), the pytest plugin and compare read a row's `concurrency` through one helper:
    a value that is not a finite number >= 1 counts as 1, where `int(...)` raised a traceback on "x" or 1e999."""
    from bench.results.schema import row_concurrency

    assert [row_concurrency(v) for v in (None, "x", 1e999, float("nan"), True, 0, -3, [8], 4.0, 8)] == \
        [1, 1, 1, 1, 1, 1, 1, 1, 4, 8]
    out = _run(fake_suite, tmp_path / "results")
    rows = out.run.samples()
    manifest = json.loads(out.run.manifest_path.read_text())
    bad = [{**r, "concurrency": v} for r, v in zip(rows, ["x", 1e999, [8], None] * len(rows))]
    cells = build_summary(bad, manifest)["cells"]
    assert cells and all(c["load"] is None for c in cells)  # all read as one at a time: no batched pass
    loaded = build_summary([{**r, "concurrency": 8 if i % 2 else "x"} for i, r in enumerate(rows)], manifest)
    assert all(c["load"]["concurrency"] == 8 and c["load"]["mixed_concurrency"] for c in loaded["cells"])
