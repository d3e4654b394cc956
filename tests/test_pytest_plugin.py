"""The pytest plugin: one test per cell, failing below the target or on errors; latencies into pytest-benchmark."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import FAKE_SUITE, REPO, write_suite

pytest_plugins = ["pytester"]
# Every inner session runs in a subprocess: an in-process run restores sys.modules afterwards, and numpy or
# pyarrow (which a suite run imports) cannot be imported twice in one process.

# tickets: 8 samples; the fake backend answers smollm2 at 0.5 and qwen 0.5b at 1.0; the target is 0.6
SMOL = "tickets::smollm2-135m-instruct@Q4_1"
QWEN = "tickets::qwen2.5-coder-0.5b-instruct@Q4_K_M"


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess(*args, timeout=600)


@pytest.fixture
def suite(pytester: pytest.Pytester) -> Path:
    return write_suite(pytester.path / "suite", FAKE_SUITE)


def _samples(results: Path) -> list[dict]:
    (path,) = results.rglob("samples.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_each_cell_is_a_test_that_fails_below_the_target(pytester: pytest.Pytester, suite: Path) -> None:
    res = run(pytester, "--bench-suite", "suite/suite.yaml", "--bench-results", "res", "-v",
              "--benchmark-disable")  # default isolation: each cell in its own process
    res.assert_outcomes(passed=1, failed=1)
    res.stdout.fnmatch_lines([f"{SMOL} FAILED*", f"{QWEN} PASSED*"])
    assert "accuracy 0.500 [95% CI 0.157, 0.843] on 8 samples, error rate 0.0%: the mean misses the target 0.6" in res.stdout.str()
    rows = _samples(pytester.path / "res")
    assert len(rows) == 16  # the suite ran once for both cells
    again = run(pytester, "--bench-suite", "suite/suite.yaml", "--bench-results", "res",
                "--benchmark-disable")
    again.assert_outcomes(passed=1, failed=1)
    assert len(_samples(pytester.path / "res")) == 16  # resumed: nothing ran twice


def test_without_bench_suite_the_plugin_does_nothing(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_light="""
        import sys

        def test_light():
            assert "bench.runner" not in sys.modules and "bench.config" not in sys.modules
    """)
    res = run(pytester, "-v")
    res.assert_outcomes(passed=1)
    assert "tickets" not in res.stdout.str()


def test_ids_select_and_collect_like_tests(pytester: pytest.Pytester, suite: Path) -> None:
    res = run(pytester, "--bench-suite", "suite/suite.yaml", "--collect-only", "-q")
    res.stdout.fnmatch_lines([SMOL, QWEN, "2 tests collected*"])
    res = run(pytester, "--bench-suite", "suite/suite.yaml", "--bench-isolation", "inline",
              "--bench-results", "res", "-k", "qwen", "--benchmark-disable")
    res.assert_outcomes(passed=1, deselected=1)
    assert {r["cell"]["model"] for r in _samples(pytester.path / "res")} == {"qwen2.5-coder-0.5b-instruct",
                                                                             "smollm2-135m-instruct"}


def test_lower_bound_criterion_is_stricter(pytester: pytest.Pytester) -> None:
    write_suite(pytester.path / "suite", FAKE_SUITE.replace("target: 0.6", "target: 0.7"))
    args = ["--bench-suite", "suite/suite.yaml", "--bench-isolation", "inline", "--bench-results", "res",
            "-k", "qwen", "--benchmark-disable"]
    run(pytester, *args).assert_outcomes(passed=1, deselected=1)  # mean 1.0
    res = run(pytester, *args, "--bench-criterion", "ci_low")
    res.assert_outcomes(failed=1, deselected=1)  # Clopper-Pearson lower bound of 8/8 is 0.631
    assert "accuracy 1.000 [95% CI 0.631, 1.000] on 8 samples, error rate 0.0%: the interval bound misses the " \
        "target 0.7" \
        in res.stdout.str()


def test_errored_cell_fails_and_bad_suite_is_a_usage_error(pytester: pytest.Pytester) -> None:
    failing = FAKE_SUITE.replace("    - kind: fake\n", "    - kind: fake\n      fail_load: true\n")
    write_suite(pytester.path / "suite", failing)
    res = run(pytester, "--bench-suite", "suite/suite.yaml", "--bench-isolation", "inline",
              "--bench-results", "res", "--bench-models", "smollm2-135m-instruct",
              "--benchmark-disable")
    res.assert_outcomes(failed=1)
    res.stdout.fnmatch_lines(["*8 of 8 samples errored: model failed to load: fake backend told to fail at load*"])
    res = run(pytester, "--bench-suite", "missing.yaml")
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    res.stderr.fnmatch_lines(["*--bench-suite missing.yaml:*missing.yaml*"])
    res = run(pytester, "--bench-suite", "suite/suite.yaml", "--bench-models", "smollm3")
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    res.stderr.fnmatch_lines(["*unknown model 'smollm3'*"])


def test_benchmark_rounds_are_the_measured_latencies(pytester: pytest.Pytester, suite: Path) -> None:
    pytest.importorskip("pytest_benchmark")
    storage = pytester.path / "bm"
    res = run(pytester, "--bench-suite", "suite/suite.yaml", "--bench-isolation", "inline",
              "--bench-results", "res", "--benchmark-enable", "--benchmark-autosave",
              "--benchmark-save-data", f"--benchmark-storage=file://{storage}")
    res.assert_outcomes(passed=1, failed=1)
    (saved,) = storage.rglob("0001_*.json")
    benchmarks = {b["fullname"]: b for b in json.loads(saved.read_text())["benchmarks"]}
    assert set(benchmarks) == {SMOL, QWEN}
    rows = _samples(pytester.path / "res")
    for name, b in benchmarks.items():
        model = name.split("::")[1].split("@")[0]
        measured = sorted(r["latency_s"] for r in rows if r["cell"]["model"] == model)
        assert sorted(b["stats"]["data"]) == pytest.approx(measured)  # the stored latencies, not a replay
        assert b["stats"]["rounds"] == 8 and b["stats"]["iterations"] == 1
        assert b["extra_info"]["n"] == 8 and b["extra_info"]["metric"] == "accuracy"
    # a slower candidate (a tenth of the decode speed) fails pytest-benchmark's own comparison gate
    write_suite(pytester.path / "slow", FAKE_SUITE.replace("- kind: fake", "- kind: fake\n      tokens_per_s: 100"))
    res = run(pytester, "--bench-suite", "slow/suite.yaml", "--bench-isolation", "inline",
              "--bench-results", "res-slow", "--benchmark-enable", f"--benchmark-storage=file://{storage}",
              "--benchmark-compare=0001", "--benchmark-compare-fail=mean:10%")
    assert res.ret != 0
    output = res.stdout.str() + res.stderr.str()
    assert "Performance has regressed" in output
    assert f"{SMOL.split('::')[1]} (0001_unversi) - Field 'mean' has failed PercentageRegressionCheck" in output


@pytest.mark.integration
def test_real_default_model_on_three_classify_samples(pytester: pytest.Pytester) -> None:
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    (pytester.path / "data").mkdir()
    shutil.copy(REPO / "suites" / "data" / "classify.jsonl", pytester.path / "data")
    shutil.copy(REPO / "suites" / "classify.yaml", pytester.path)
    res = run(pytester, "--bench-suite", "classify.yaml", "--bench-limit", "3",
              "--bench-results", "res", "-v", "--benchmark-enable", "--benchmark-autosave",
              f"--benchmark-storage=file://{pytester.path / 'bm'}")
    outcomes = res.parseoutcomes()
    assert outcomes.get("passed", 0) + outcomes.get("failed", 0) == 1, res.stdout.str()
    res.stdout.fnmatch_lines(["classify::smollm2-135m-instruct@Q4_1 *"])
    if outcomes.get("failed"):  # a 135M model may miss the target: then it must say by how much, not crash
        assert "on 3 samples, error rate" in res.stdout.str() and "the mean misses the target 0.8" in res.stdout.str()
    (saved,) = (pytester.path / "bm").rglob("*.json")
    (bm,) = json.loads(saved.read_text())["benchmarks"]
    assert bm["stats"]["rounds"] == 3 and 0 < bm["stats"]["min"] <= bm["stats"]["max"] < 60
