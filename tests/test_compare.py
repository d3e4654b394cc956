"""bench compare: pairing, paired quality deltas, errors, routing targets, speed, exit codes, golden markdown."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from bench.cli import main
from bench.compare import compare, pair_cells
from bench.compare.core import CellData
from bench.compare.speed import in_flight, judge

GOLDEN = Path(__file__).parent / "golden"
HW = "cpu-test"


# ---------------------------------------------------------------- synthetic runs

def cell(model: str, quant: str = "Q4_K_M", hardware: str = HW, backend: str = "fake") -> dict[str, Any]:
    return {"model": model, "quantization": quant, "backend": backend, "hardware": hardware, "gen": "g0"}


def cid(c: dict[str, Any]) -> str:
    return f"{c['model']}@{c['quantization']}/{c['backend']}/{c['hardware']}#{c['gen']}"


def rows(c: dict[str, Any], n: int = 60, *, quality: float = 0.9, binary: bool = False, latency: float = 0.5,
         rss: float = 800.0, errors: tuple[int, ...] = (), metric: str = "field_f1",
         pattern: int = 37) -> list[dict[str, Any]]:
    """Deterministic rows: scores spread around `quality` (how, by `pattern`), latencies around `latency` s."""
    out = []
    for i in range(n):
        if binary:
            score = 1.0 if (i * pattern % 100) < quality * 100 else 0.0
        else:
            score = min(1.0, max(0.0, quality + 0.08 * (((i * pattern) % 11) - 5) / 5))
        lat = latency * (1 + 0.1 * (((i * 13) % 7) - 3) / 3)
        err = "timeout after 60 s" if i in errors else None
        out.append({"schema_version": 1, "cell": c, "cell_id": cid(c), "sample_id": f"s{i:03d}",
                    "split": "holdout" if i % 2 else "calibration", "score": None if err else score,
                    "error": err, "metric": metric, "latency_s": None if err else lat,
                    "completion_tokens": 21, "decode_s": None if err else lat * 0.8,
                    "rss_peak_mb": rss + (i % 5), "gpu_peak_mb": None, "timings": {"t_start": 1.0e9 + i}})
    return out


def write_run(root: Path, suite: str, cells_rows: list[list[dict[str, Any]]], *, task: str = "extract",
              metric: str = "field_f1", tolerance: float = 0.03, target: float = 0.8,
              run_id: str = "20260101T000000Z-0001", identity: str = "id0") -> Path:
    path = root / suite / run_id
    path.mkdir(parents=True)
    manifest = {"schema_version": 1, "run_id": run_id, "started_at": "2026-01-01T00:00:00Z",
                "suite": {"name": suite, "identity": identity, "task": task, "metric": metric, "target": target,
                          "tolerance": tolerance}}
    (path / "manifest.json").write_text(json.dumps(manifest))
    with (path / "samples.jsonl").open("w") as f:
        for rs in cells_rows:
            for r in rs:
                f.write(json.dumps(r) + "\n")
    return path


QWEN15, QWEN05, SMOL = "qwen2.5-coder-1.5b-instruct", "qwen2.5-coder-0.5b-instruct", "smollm2-135m-instruct"


def baseline(root: Path) -> Path:
    write_run(root, "extract", [rows(cell(QWEN15), quality=0.9, latency=0.8, rss=1400)])
    write_run(root, "classify", [rows(cell(SMOL, "Q4_1"), quality=0.55, binary=True, metric="accuracy"),
                                 rows(cell(QWEN05), quality=0.85, binary=True, metric="accuracy")],
              task="classify", metric="accuracy")
    return root


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("BENCH_UPDATE_GOLDEN"):
        path.parent.mkdir(exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert text == path.read_text(encoding="utf-8"), f"{name} differs; BENCH_UPDATE_GOLDEN=1 rewrites it"


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)  # relative paths in the output, so golden files do not hold tmp_path
    return tmp_path


# ---------------------------------------------------------------- verdicts and exit codes

def test_a_run_compared_with_itself_exits_0(here: Path, capsys: pytest.CaptureFixture) -> None:
    baseline(here / "base")
    assert main(["compare", "base", "base", "--markdown", "same.md"]) == 0
    text = (here / "same.md").read_text()
    check_golden("compare_same.md", text)
    assert "✅ no regression (2 tasks compared)" in capsys.readouterr().out


def test_a_model_swap_that_drops_quality_exits_1_and_names_task_and_drop(here: Path,
                                                                           capsys: pytest.CaptureFixture) -> None:
    baseline(here / "base")
    write_run(here / "cand", "extract", [rows(cell(SMOL, "Q4_1"), quality=0.45, latency=0.2, rss=300,
                                              errors=(3, 17), pattern=41)])
    assert main(["compare", "base", "cand", "--markdown", "swap.md"]) == 1
    err = capsys.readouterr().err
    assert "extract" in err and "field_f1 dropped by 0.4" in err
    text = (here / "swap.md").read_text()
    assert "2 sample(s) errored in the candidate" in text and "counted as failures" in text
    check_golden("compare_regression.md", text)


def test_json_is_one_document_naming_the_pairs(here: Path, capsys: pytest.CaptureFixture) -> None:
    baseline(here / "base")
    write_run(here / "cand", "extract", [rows(cell(SMOL, "Q4_1"), quality=0.45)])
    assert main(["compare", "base", "cand", "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)  # the whole of stdout is one JSON document
    assert doc["exit_code"] == 1 and doc["regression"] and doc["schema_version"] == 1
    (task,) = doc["tasks"]
    assert task["task"] == "extract" and task["verdict"] == "regression"
    (pair,) = task["pairs"]
    assert pair["baseline"]["cell"]["model"] == QWEN15 and pair["candidate"]["cell"]["model"] == SMOL
    assert pair["paired_by"].startswith("swap: the only unmatched cell")
    q = pair["quality"]
    assert q["delta"] == pytest.approx(-0.45, abs=0.01) and q["ci_high"] < 0 and q["n"] == 60
    assert "classify: only in the baseline; not compared" in doc["notes"]


def test_drop_within_tolerance_or_not_significant_is_ok(here: Path) -> None:
    baseline(here / "base")
    write_run(here / "small", "extract", [rows(cell(QWEN15), quality=0.88, latency=0.8, rss=1400)])
    result = compare("base", "small")
    q = result["tasks"][0]["pairs"][0]["quality"]
    assert q["delta"] == pytest.approx(-0.02) and q["ci_high"] < 0  # significant, but within tolerance 0.03
    assert result["exit_code"] == 0
    # beyond the tolerance, but on 6 samples the interval reaches zero
    write_run(here / "b6", "classify", [rows(cell(QWEN05), n=6, quality=0.7, binary=True, metric="accuracy")],
              task="classify", metric="accuracy")
    c6 = rows(cell(QWEN05), n=6, quality=0.7, binary=True, metric="accuracy")
    c6[0]["score"] = 0.0 if c6[0]["score"] else 1.0
    write_run(here / "c6", "classify", [c6], task="classify", metric="accuracy")
    r6 = compare("b6", "c6")
    p6 = r6["tasks"][0]["pairs"][0]["quality"]
    assert abs(p6["delta"]) > 0.03 and p6["ci_low"] <= 0 <= p6["ci_high"]
    assert r6["exit_code"] == 0


def test_new_errors_go_through_the_paired_comparison_as_failures(here: Path) -> None:
    write_run(here / "b", "extract", [rows(cell(QWEN15))])
    write_run(here / "c", "extract", [rows(cell(QWEN15), errors=(5,))])
    result = compare("b", "c")
    pair = result["tasks"][0]["pairs"][0]
    assert pair["errors"] == {"baseline": 0, "candidate": 1, "new": 1, "new_sample_ids": ["s005"]}
    # one failure in 60 is a drop of about 0.015, inside the tolerance 0.03: not a regression on its own
    assert pair["quality"]["delta"] < 0 and pair["verdict"] != "regression" and result["exit_code"] == 0
    assert pair["error_rate"]["candidate"] == pytest.approx(1 / 60)
    # --max-error-rate fails the job outright
    assert compare("b", "c", max_error_rate=0.0)["exit_code"] == 1
    # many new errors are a drop like any other
    write_run(here / "many", "extract", [rows(cell(QWEN15), errors=tuple(range(0, 60, 3)))])
    assert compare("b", "many")["tasks"][0]["pairs"][0]["verdict"] == "regression"
    # the same errors on both sides are not a change
    write_run(here / "b2", "extract", [rows(cell(QWEN15), errors=(5,))])
    assert compare("b2", "c")["exit_code"] == 0


def test_routing_target_no_longer_met_is_a_regression(here: Path, capsys: pytest.CaptureFixture) -> None:
    write_run(here / "b", "classify", [rows(cell(QWEN05), n=200, quality=0.9, binary=True, metric="accuracy")],
              task="classify", metric="accuracy")
    write_run(here / "c", "classify", [rows(cell(QWEN05), n=200, quality=0.88, binary=True, metric="accuracy")],
              task="classify", metric="accuracy")
    assert main(["thresholds", "b", "--target", "classify=0.84", "-o", "routing.json"]) == 0
    capsys.readouterr()
    assert main(["compare", "b", "c"]) == 0  # a 0.02 drop: within tolerance
    capsys.readouterr()
    assert main(["compare", "b", "c", "--routing", "routing.json", "--json"]) == 1
    pair = json.loads(capsys.readouterr().out)["tasks"][0]["pairs"][0]
    assert pair["routing"]["baseline_meets"] and not pair["routing"]["candidate_meets"]
    assert "no longer meets the routing target 0.84" in pair["reasons"][0]


def test_worse_speed_is_reported_and_gated_only_when_asked(here: Path, capsys: pytest.CaptureFixture) -> None:
    write_run(here / "b", "extract", [rows(cell(QWEN15), latency=0.5)])
    write_run(here / "c", "extract", [rows(cell(QWEN15), latency=0.75, rss=1000)])
    assert main(["compare", "b", "c", "--markdown", "speed.md"]) == 0
    assert "warning (not gated)" in capsys.readouterr().err
    check_golden("compare_speed.md", (here / "speed.md").read_text())
    assert main(["compare", "b", "c", "--gate-speed"]) == 1
    err = capsys.readouterr().err
    assert "regression: extract" in err and "p95 latency" in err and "peak RSS" in err
    write_run(here / "c5", "extract", [rows(cell(QWEN15), latency=0.525)])  # 5% slower: inside the factor
    assert main(["compare", "b", "c5", "--gate-speed"]) == 0


def test_speed_rule_needs_factor_and_significance() -> None:
    assert judge(1.0, 1.5, lower_is_better=True, interval=(0.3, 0.7), factor=1.1)["verdict"] == "worse"
    assert judge(1.0, 1.5, lower_is_better=True, interval=(-0.1, 0.9), factor=1.1)["verdict"] == "same"
    assert judge(1.0, 1.05, lower_is_better=True, interval=(0.01, 0.09), factor=1.1)["verdict"] == "same"
    assert judge(100, 50, lower_is_better=False, interval=(-60, -40), factor=1.1)["verdict"] == "worse"
    assert judge(100, 150, lower_is_better=False, interval=(40, 60), factor=1.1)["verdict"] == "better"
    assert judge(1.0, 1.5, lower_is_better=True, interval=None, factor=1.1)["verdict"] == "worse"  # untestable
    assert judge(1.0, 1.5, lower_is_better=True, interval=(0.3, 0.7), factor=1.1,
                 comparable=False)["verdict"] == "n/a"


# ---------------------------------------------------------------- pairing

def _cd(c: dict[str, Any]) -> CellData:
    return CellData(cell=c, cell_id=cid(c), run_id="r")


def test_pairing_same_cell_then_other_hardware_then_swap_by_position() -> None:
    a, b, c = cell(SMOL, "Q4_1"), cell(QWEN05), cell(QWEN15)
    base = [_cd(a), _cd(b), _cd(c)]
    cand = [_cd(cell(QWEN15, hardware="gpu")), _cd(a), _cd(cell("gemma-3-270m"))]
    pairs, left_b, left_c = pair_cells(base, cand)
    got = [(p[0].cell["model"], p[1].cell["model"], p[2].split(" (")[0].split(":")[0]) for p in pairs]
    assert got == [(SMOL, SMOL, "same cell"), (QWEN05, "gemma-3-270m", "swap"),
                   (QWEN15, QWEN15, "same model on other hardware")]
    assert not left_b and not left_c
    pairs, left_b, left_c = pair_cells(base, [_cd(cell("x")), _cd(cell("y"))])
    assert [p[2] for p in pairs] == ["swap by position: unmatched cell 1 of each side",
                                     "swap by position: unmatched cell 2 of each side"]
    assert [x.cell["model"] for x in left_b] == [QWEN15] and left_c == []


def test_other_hardware_shows_speed_without_judging_it(here: Path) -> None:
    write_run(here / "b", "extract", [rows(cell(QWEN15), latency=0.5)])
    write_run(here / "c", "extract", [rows(cell(QWEN15, hardware="ci-runner"), latency=2.0)])
    result = compare("b", "c", gate_speed=True)
    speed = result["tasks"][0]["pairs"][0]["speed"]
    assert speed["latency_p95_s"]["ratio"] == pytest.approx(4.0) and speed["latency_p95_s"]["verdict"] == "n/a"
    assert "different hardware" in speed["note"] and result["exit_code"] == 0


def test_another_load_shows_speed_without_judging_it(here: Path) -> None:
    """A baseline run one request at a time against the same cell run with 8 in flight (--parallel 8): the loaded
    per-request latency is shown, not called a regression, even with --gate-speed; at equal loads it is judged."""
    def loaded(rs: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
        return [{**r, "concurrency": n} for r in rs]

    write_run(here / "b", "extract", [rows(cell(QWEN15), latency=0.5)])  # rows without the field: one at a time
    write_run(here / "c", "extract", [loaded(rows(cell(QWEN15), latency=3.0, rss=1400), 8)])
    result = compare("b", "c", gate_speed=True)
    speed = result["tasks"][0]["pairs"][0]["speed"]
    assert speed["latency_p95_s"]["ratio"] == pytest.approx(6.0) and speed["latency_p95_s"]["verdict"] == "n/a"
    assert speed["peak_rss_mb"]["verdict"] == "n/a" and speed["worse"] == []
    assert "different load (1 vs 8 requests in flight" in speed["note"] and result["exit_code"] == 0
    write_run(here / "b8", "extract", [loaded(rows(cell(QWEN15), latency=0.5), 8)])
    result = compare("b8", "c", gate_speed=True)  # both at 8 in flight: judged as usual
    assert result["tasks"][0]["pairs"][0]["speed"]["latency_p95_s"]["verdict"] == "worse"
    assert result["exit_code"] == 1
    assert in_flight([{"concurrency": v} for v in (None, "8", 1e999, float("nan"), True, 0, 4.0)]) == (1, 4)


def test_later_run_of_a_suite_replaces_its_cells(here: Path) -> None:
    write_run(here / "b", "extract", [rows(cell(QWEN15), quality=0.3)], run_id="20260101T000000Z-0001")
    write_run(here / "b", "extract", [rows(cell(QWEN15), quality=0.9)], run_id="20260102T000000Z-0002")
    write_run(here / "c", "extract", [rows(cell(QWEN15), quality=0.9)])
    result = compare("b", "c")
    assert result["tasks"][0]["pairs"][0]["quality"]["delta"] == 0.0
    assert result["baseline"]["runs"]["extract"] == ["20260101T000000Z-0001", "20260102T000000Z-0002"]


# ---------------------------------------------------------------- bad input (exit 2)

def test_bad_input_exits_2(here: Path, capsys: pytest.CaptureFixture) -> None:
    write_run(here / "b", "extract", [rows(cell(QWEN15))])
    assert main(["compare", "missing", "b"]) == 2
    assert "missing: no such results directory" in capsys.readouterr().err
    write_run(here / "other", "summarize", [rows(cell(QWEN15), metric="rougeL")], task="summarize", metric="rougeL")
    assert main(["compare", "b", "other"]) == 2
    assert "no task in common" in capsys.readouterr().err
    shifted = rows(cell(QWEN15))
    for r in shifted:
        r["sample_id"] = "x" + r["sample_id"]
    write_run(here / "noshared", "extract", [shifted])
    assert main(["compare", "b", "noshared"]) == 2
    assert "share no sample ids" in capsys.readouterr().err
    write_run(here / "metric", "extract", [rows(cell(QWEN15), metric="schema_valid")], metric="schema_valid")
    assert main(["compare", "b", "metric"]) == 2
    assert "not comparable" in capsys.readouterr().err
    assert main(["compare", "b", "b", "--routing", "nope.json"]) == 2
    assert "nope.json: --routing: routing file not found" in capsys.readouterr().err
    (here / "bad.json").write_text(json.dumps({"schema_version": 2, "tasks": {"extract": {"target": "high"}}}))
    assert main(["compare", "b", "b", "--routing", "bad.json"]) == 2
    assert "bad.json" in capsys.readouterr().err
    (here / "list.json").write_text("[1, 2]")
    assert main(["compare", "b", "b", "--routing", "list.json"]) == 2
    assert "list.json: expected a JSON object (a routing file), got a JSON list" in capsys.readouterr().err
    (here / "v1.json").write_text(json.dumps({"schema_version": 1, "tasks": {}}))
    assert main(["compare", "b", "b", "--routing", "v1.json"]) == 2
    assert "regenerate it with 'bench thresholds" in capsys.readouterr().err
    (here / "b" / "extract" / "20260101T000000Z-0001" / "samples.jsonl").write_text("{oops\n{}\n")
    assert main(["compare", "b", "b"]) == 2
    assert "line 1 is not valid JSON" in capsys.readouterr().err


# ---------------------------------------------------------------- real runs on the fake backend

def test_fake_backend_swap_end_to_end(tmp_path: Path) -> None:
    from bench.config import load_suite
    from bench.runner import run_suite
    from tests.conftest import FAKE_SUITE, write_suite

    base_suite = write_suite(tmp_path / "s", FAKE_SUITE.replace("[smollm2-135m-instruct, qwen2.5-coder-0.5b-instruct]",
                                                                "[qwen2.5-coder-0.5b-instruct]"), name="base.yaml")
    run_suite(load_suite(base_suite), results_dir=tmp_path / "baseline", isolation="inline", quiet=True)
    run_suite(load_suite(base_suite), models=["smollm2-135m-instruct"], results_dir=tmp_path / "candidate",
              isolation="inline", quiet=True)
    result = compare(tmp_path / "baseline", tmp_path / "candidate")
    (pair,) = result["tasks"][0]["pairs"]
    assert pair["baseline"]["cell"]["model"] == "qwen2.5-coder-0.5b-instruct"
    assert pair["candidate"]["cell"]["model"] == "smollm2-135m-instruct"
    assert pair["quality"]["n"] == 8 and pair["quality"]["delta"] < 0
    assert compare(tmp_path / "baseline", tmp_path / "baseline")["exit_code"] == 0


# ---------------------------------------------------------------- CI

def test_job_summary_is_appended_to(here: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    baseline(here / "base")
    summary = here / "step_summary.md"
    summary.write_text("# earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    assert main(["compare", "base", "base", "--markdown", str(summary)]) == 0
    text = summary.read_text()
    assert text.startswith("# earlier step\n## bench compare: ✅ no regression")


def test_example_ci_workflow_runs_the_swap_and_compares() -> None:
    import yaml

    path = Path(__file__).resolve().parents[1] / "examples" / "ci" / "bench-regression.yml"
    doc = yaml.safe_load(path.read_text())
    steps = doc["jobs"]["compare"]["steps"]
    runs = "\n".join(s.get("run", "") for s in steps)
    assert 'bench run "$suite" --models "$CANDIDATE_MODEL" --results results/candidate' in runs
    assert "for suite in suites/extract.yaml" in runs
    assert 'bench compare results/baseline results/candidate --markdown "$GITHUB_STEP_SUMMARY"' in runs
    assert any(s.get("uses", "").startswith("actions/checkout") for s in steps)
