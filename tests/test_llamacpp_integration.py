"""The real embedded default model (SmolLM2-135M Q4_1) through llama.cpp: every suite, resume after SIGKILL."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.cli import main
from bench.config import load_suite
from bench.results.store import RunDir
from bench.runner import run_suite
from tests.conftest import REPO, write_suite

pytestmark = pytest.mark.integration

pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")


@pytest.mark.parametrize("name", ["classify", "extract", "normalize", "summarize", "rewrite"])
def test_each_suite_runs_on_the_default_model(tmp_path, name) -> None:
    suite = load_suite(REPO / "suites" / f"{name}.yaml")
    outcome = run_suite(suite, limit=3, results_dir=tmp_path, quiet=True)
    rows = outcome.run.samples()
    assert len(rows) == 3 and not outcome.errored_cells
    for r in rows:
        assert r["error"] is None
        assert r["cell"]["model"] == "smollm2-135m-instruct" and r["cell"]["backend"] == "llamacpp"
        assert r["prompt_tokens"] > 20 and r["completion_tokens"] >= 1
        assert 0 < r["ttft_s"] <= r["latency_s"]
        assert r["prefill_s"] <= r["ttft_s"]
        assert r["confidence"] is not None and r["confidence"] <= 0 and math.isfinite(r["confidence"])
        assert r["cached_tokens"] is not None
        assert r["rss_peak_mb"] > 50
        assert r["timings"]["token_times"] == sorted(r["timings"]["token_times"])
    # the system prompt and few-shot examples are shared, so later prompts reuse the KV cache
    assert any(r["cached_tokens"] > 0 for r in rows[1:])
    cell = outcome.summary["cells"][0]
    assert cell["prefill_tps"] > 0 and cell["decode_tps"] > 0
    assert cell["load_s"] > 0 and cell["model_rss_mb"] > 0
    assert cell["peak_gpu_mb"] is None


def _rows(results: Path) -> list[dict]:
    files = list(results.rglob("samples.jsonl"))
    if not files:
        return []
    out = []
    for line in files[0].read_bytes().split(b"\n"):
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


def test_sigkill_mid_run_then_resume_loses_and_repeats_nothing(tmp_path) -> None:
    results = tmp_path / "results"
    cmd = [sys.executable, "-m", "bench.cli", "run", str(REPO / "suites" / "classify.yaml"), "--limit", "10",
           "--results", str(results)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and len(_rows(results)) < 3:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the parent and its cell process, with no chance to clean up
    proc.wait()
    before = _rows(results)
    assert 3 <= len(before) < 10, "the run must be killed mid-way"
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300)
    after = _rows(results)
    ids = [r["sample_id"] for r in after]
    assert len(ids) == len(set(ids)) == 10
    assert after[: len(before)] == before  # what was measured before the kill is kept as it was
    # a complete run makes no model call: it only re-derives the summary
    t0 = time.time()
    done = subprocess.run(cmd + ["--json"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0
    assert len(_rows(results)) == 10
    assert time.time() - t0 < 30
    doc = json.loads(done.stdout)
    assert doc["resumed"] and doc["summary"]["cells"][0]["n"] == 10


def test_corrupt_model_file_errors_its_cell_exit_1(tmp_path, capsys) -> None:
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + os.urandom(4096))
    body = f"""
name: broken
task: {{kind: classify, labels: [billing, technical]}}
dataset: {{path: data.jsonl, input_fields: [text], reference_field: label}}
prompt: {{template: "Ticket: {{text}}"}}
target: 0.5
matrix:
  models:
    - id: broken-local
      source: {{kind: path, path: {bad}}}
  backends: [{{kind: llamacpp}}]
"""
    path = write_suite(tmp_path / "s", body)
    code = main(["run", str(path), "--results", str(tmp_path / "r"), "--limit", "2"])
    err = capsys.readouterr().err
    assert code == 1
    assert "model failed to load" in err
    run = RunDir(next((tmp_path / "r" / "broken").iterdir()))
    assert all(r["error"] for r in run.samples())


def test_the_harness_reports_its_own_time_apart_from_the_models(tmp_path) -> None:
    """Token times are taken when llama.cpp returns; sampling and detokenizing are timed apart (harness_s)."""
    res = tmp_path / "r"
    assert main(["run", str(REPO / "suites" / "normalize.yaml"), "--limit", "3", "--results", str(res),
                 "--isolation", "inline"]) == 0
    rows = [json.loads(line) for line in next(res.rglob("samples.jsonl")).read_text().splitlines()]
    assert all(isinstance(r["harness_s"], float) and r["harness_s"] >= 0 for r in rows)
    assert all(r["harness_s"] < r["latency_s"] for r in rows)
    cell = json.loads(next(res.rglob("summary.json")).read_text())["cells"][0]
    assert cell["harness_s_per_token"] is not None and cell["harness_s_per_token"] >= 0
