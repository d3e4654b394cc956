"""The run loop on the fake backend: files per CONTRACT.md, resume, errors, fresh runs, JSON output."""

from __future__ import annotations

import json
import os
from pathlib import Path

from bench.cli import main
from bench.config import load_suite
from bench.results.store import RunDir, SampleWriter, iter_samples
from bench.runner import run_suite
from tests.conftest import FAKE_SUITE, write_suite

SAMPLE_KEYS = {"cell", "sample_id", "split", "output", "score", "verified", "confidence", "prompt_tokens",
               "completion_tokens", "ttft_s", "prefill_s", "decode_s", "latency_s", "cost_usd", "error"}
CELL_KEYS = {"cell", "n", "errors", "quality", "ttft_s", "latency_s", "prefill_tps", "decode_tps", "peak_rss_mb",
             "peak_gpu_mb", "cost_per_1k_usd", "bandwidth_utilization", "energy_j"}


def _run(tmp_path: Path, suite_path: Path, **kw) -> tuple:
    suite = load_suite(suite_path)
    return run_suite(suite, results_dir=tmp_path / "results", isolation=kw.pop("isolation", "inline"),
                     quiet=True, **kw)


def test_files_follow_the_contract(tmp_path, fake_suite) -> None:
    outcome = _run(tmp_path, fake_suite)
    run = outcome.run
    assert run.path.parent == tmp_path / "results" / "tickets"
    manifest = json.loads(run.manifest_path.read_text())
    for key in ("schema_version", "run_id", "suite", "bench_version", "environment", "hardware", "started_at",
                "finished_at"):
        assert key in manifest
    assert manifest["suite"]["sha256"] == load_suite(fake_suite).sha256
    assert manifest["finished_at"] is not None
    rows = run.samples()
    assert len(rows) == 16  # 8 samples x 2 cells
    for row in rows:
        assert SAMPLE_KEYS <= set(row) and row["schema_version"] == 1
        assert row["split"] in ("calibration", "holdout")
    summary = json.loads(run.summary_path.read_text())
    assert summary["schema_version"] == 1
    by_model = {c["cell"]["model"]: c for c in summary["cells"]}
    for cell in by_model.values():
        assert CELL_KEYS <= set(cell)
        assert cell["n"] == 8 and cell["errors"] == 0
        q = cell["quality"]
        assert q["metric"] == "accuracy" and q["ci_low"] <= q["mean"] <= q["ci_high"]
    assert by_model["qwen2.5-coder-0.5b-instruct"]["quality"]["mean"] == 1.0
    assert by_model["smollm2-135m-instruct"]["quality"]["mean"] < 1.0
    assert "secret" not in run.manifest_path.read_text().lower()


def test_complete_run_is_not_repeated_and_fresh_starts_over(tmp_path, fake_suite) -> None:
    first = _run(tmp_path, fake_suite)
    again = _run(tmp_path, fake_suite)
    assert again.resumed and again.run.path == first.run.path
    assert len(again.skipped_cells) == 2
    assert len(again.run.samples()) == 16  # nothing appended
    fresh = _run(tmp_path, fake_suite, fresh=True)
    assert fresh.run.path != first.run.path and not fresh.resumed


def test_resume_fills_only_missing_samples(tmp_path, fake_suite) -> None:
    first = _run(tmp_path, fake_suite, limit=4)
    assert len(first.run.samples()) == 8
    second = _run(tmp_path, fake_suite)
    rows = second.run.samples()
    keys = [(r["cell_id"], r["sample_id"]) for r in rows]
    assert len(keys) == len(set(keys)) == 16


def test_torn_last_line_is_skipped_and_repaired(tmp_path) -> None:
    path = tmp_path / "samples.jsonl"
    w = SampleWriter(path)
    w.write({"cell": {}, "cell_id": "c", "sample_id": "1"})
    w.close()
    with path.open("ab") as f:
        f.write(b'{"schema_version": 1, "cell_id": "c", "sample_id": "2", "outp')  # killed mid-write
    assert [r["sample_id"] for r in iter_samples(path)] == ["1"]
    w = SampleWriter(path)
    w.write({"cell": {}, "cell_id": "c", "sample_id": "3"})
    w.close()
    assert [r["sample_id"] for r in iter_samples(path)] == ["1", "3"]


def test_a_whole_last_line_that_lost_only_its_newline_is_kept(tmp_path) -> None:
    path = tmp_path / "samples.jsonl"
    w = SampleWriter(path)
    w.write({"cell": {}, "cell_id": "c", "sample_id": "1"})
    w.write({"cell": {}, "cell_id": "c", "sample_id": "2"})
    w.close()
    os.truncate(path, path.stat().st_size - 1)  # `truncate -s -1`: the row is whole, only its newline is gone
    assert [r["sample_id"] for r in iter_samples(path)] == ["1", "2"]
    w = SampleWriter(path)
    w.write({"cell": {}, "cell_id": "c", "sample_id": "3"})
    w.close()
    assert [r["sample_id"] for r in iter_samples(path)] == ["1", "2", "3"]


def test_failing_load_errors_its_cells_and_the_rest_runs(tmp_path, capsys) -> None:
    body = FAKE_SUITE.replace("""    - kind: fake
      accuracy_by_model""", """    - kind: fake
      fail_load: true
    - kind: fake
      accuracy_by_model""")
    # two fake backends would collide on the cell key; the broken one gets a different generation key
    path = write_suite(tmp_path / "s", body)
    code = main(["run", str(path), "--results", str(tmp_path / "r"), "--isolation", "inline"])
    err = capsys.readouterr().err
    assert code == 1
    assert "model failed to load" in err
    run = RunDir(next((tmp_path / "r" / "tickets").iterdir()))
    rows = run.samples()
    errored = [r for r in rows if r["error"]]
    assert errored and all("fake backend told to fail" in r["error"] for r in errored)
    assert any(not r["error"] for r in rows)


def test_cells_run_in_their_own_process(tmp_path, fake_suite) -> None:
    outcome = _run(tmp_path, fake_suite, isolation="process", models=["qwen2.5-coder-0.5b-instruct"])
    rows = outcome.run.samples()
    assert len(rows) == 8 and not any(r["error"] for r in rows)
    assert all(r["rss_peak_mb"] and r["rss_peak_mb"] > 0 for r in rows)


def test_json_output_is_one_document(tmp_path, capsys, fake_suite) -> None:
    code = main(["run", str(fake_suite), "--results", str(tmp_path / "r"), "--isolation", "inline", "--json"])
    out = capsys.readouterr().out
    assert code == 0
    doc = json.loads(out)
    assert {c["cell"]["model"] for c in doc["summary"]["cells"]} == {"smollm2-135m-instruct",
                                                                     "qwen2.5-coder-0.5b-instruct"}


def test_quantizations_flag_crosses_catalog_models(tmp_path, fake_suite, capsys) -> None:
    code = main(["run", str(fake_suite), "--results", str(tmp_path / "r"), "--isolation", "inline",
                 "--models", "smollm2-135m-instruct", "--quantizations", "q8_0,Q2_K", "--json"])
    assert code == 0
    cells = json.loads(capsys.readouterr().out)["summary"]["cells"]
    assert sorted(c["cell"]["quantization"] for c in cells) == ["Q2_K", "Q8_0"]
    code = main(["run", str(fake_suite), "--results", str(tmp_path / "r"), "--quantizations", "Q9_X"])
    assert code == 2 and "cannot quantize to 'Q9_X'" in capsys.readouterr().err


def test_summary_is_derived_again_identically_from_the_manifests_figures(tmp_path, fake_suite) -> None:
    """The manifest records the roofline figures the run used; any command derives the same summary.json."""
    import json

    from bench.config import load_suite
    from bench.results.derive import derive_summary
    from bench.runner import run_suite

    out = run_suite(load_suite(fake_suite), results_dir=tmp_path / "r", isolation="inline", quiet=True,
                    hardware="cloud-vm-2c")
    manifest = out.run.manifest()
    assert set(manifest["roofline"]) == {"bandwidth_gbs", "bandwidth_source", "peak_tflops_fp16", "profile"}
    stored = json.loads(out.run.summary_path.read_text())
    # a command with no hardware context (no profile, no probe) gets the same document
    again = json.loads(json.dumps(derive_summary(out.run, profile=None, bandwidth=None)))
    assert again == stored
    assert any(c.get("bandwidth_gbs") for c in stored["cells"]) == bool(manifest["roofline"]["bandwidth_gbs"])


def test_first_run_on_a_machine_measures_bandwidth_once(tmp_path, monkeypatch, capsys) -> None:
    from bench.runner import _first_probe

    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path))
    calls = []

    def fake_probe() -> dict:
        calls.append(1)
        return {"schema_version": 1, "read_gbs": 12.5, "copy_gbs": 10.0, "triad_gbs": 9.0, "elapsed_s": 0.1}

    monkeypatch.setattr("bench.hardware.probe.probe", fake_probe)
    info = {"fingerprint": "abc123"}
    _first_probe(info, quiet=False)
    _first_probe(info, quiet=False)
    assert calls == [1]  # stored, so the second run does not measure again
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert "measuring it once" in text and "read 12.5 GB/s" in text
    from bench.hardware.probe import load_probe

    assert load_probe("abc123")["read_gbs"] == 12.5


def test_classify_summary_reports_macro_f1_beside_accuracy(tmp_path, fake_suite) -> None:
    """Macro-F1 per classify cell from the references inputs.jsonl keeps, checked against scikit-learn's."""
    import json

    import pytest
    from sklearn.metrics import f1_score

    from bench.config import load_suite
    from bench.runner import run_suite

    suite = load_suite(fake_suite)
    out = run_suite(suite, results_dir=tmp_path / "r", isolation="inline", quiet=True)
    summary = json.loads(out.run.summary_path.read_text())
    refs = out.run.references()
    rows = out.run.samples()
    labels = list(suite.task.labels)
    for cell in summary["cells"]:
        mine = [r for r in rows if r["cell_id"] == cell["cell_id"]]
        pred = [r["parsed"] if r["parsed"] is not None else "(none)" for r in mine]
        ref = [refs[str(r["sample_id"])] for r in mine]
        expected = f1_score(ref, pred, labels=[x for x in labels if x in ref or x in pred], average="macro")
        assert cell["macro_f1"] == pytest.approx(expected) and cell["macro_f1_n"] == len(mine)
    assert len({c["macro_f1"] for c in summary["cells"]}) == 2  # the two tiers differ
