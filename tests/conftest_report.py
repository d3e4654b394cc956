"""Fixture runs for the report tests: a real fake-backend run, plus a copy edited onto a second machine."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from bench.results.schema import cell_id
from bench.results.store import RunDir, write_json_atomic
from bench.results.summary import build_summary
from bench.thresholds import ROUTING_SCHEMA_VERSION

REPO = Path(__file__).resolve().parents[1]
XSS_OUTPUT = "<script>alert(1)</script> and </script><img src=x onerror=alert(1)>"
XSS_ERROR = "backend said </script><img src=x onerror=alert(2)>"
XSS_INPUT = " <b>bold?</b></script><img src=x onerror=alert(3)>"
N_SAMPLES = 40

SUITE = """\
name: tickets
description: "Route support tickets <to> queues & more"
task:
  kind: classify
  labels: [billing, technical, account, shipping, refund, other]
dataset:
  path: {data}
  id_field: id
  input_fields: [text]
  reference_field: label
split: {{seed: 7, holdout_fraction: 0.5}}
prompt:
  system: "Answer with the label only."
  template: "Ticket: {{text}}\\nLabel:"
target: 0.8
tolerance: 0.03
generation: {{max_tokens: 8, temperature: 0.0}}
matrix:
  models:
    - id: smollm2-135m-instruct
      quantizations: [Q8_0, Q4_K_M]
    - id: qwen2.5-coder-0.5b-instruct
      quantizations: [Q8_0, Q4_K_M, Q2_K]
    - qwen2.5-coder-1.5b-instruct
  backends:
    - kind: fake
      accuracy_by_model:
        smollm2-135m-instruct: 0.55
        qwen2.5-coder-0.5b-instruct: 0.75
        qwen2.5-coder-1.5b-instruct: 0.92
"""

# $/1k per (model, machine): the 1.5b model costs most; the second machine is dearer but faster.
PRICE = {"smollm2-135m-instruct": 0.02, "qwen2.5-coder-0.5b-instruct": 0.05, "qwen2.5-coder-1.5b-instruct": 0.12}


def run_fake_suite(root: Path, evil: bool = False) -> Path:
    """Run the fake-backend suite for real (inline) into root/results; return the run directory."""
    from bench.config import load_suite
    from bench.runner import run_suite

    data = root / "tickets.jsonl"
    with (REPO / "suites" / "data" / "classify.jsonl").open(encoding="utf-8") as src, data.open("w") as dst:
        for i, line in enumerate(src):
            if i >= N_SAMPLES:
                break
            row = json.loads(line)
            if evil:
                row["text"] += XSS_INPUT
            dst.write(json.dumps(row) + "\n")
    suite_path = root / "tickets.yaml"
    suite_path.write_text(SUITE.format(data=data), encoding="utf-8")
    outcome = run_suite(load_suite(suite_path), isolation="inline", results_dir=root / "results", quiet=True)
    return outcome.run.path


def _rewrite(run: RunDir, rows: list[dict[str, Any]], cell_extra: dict[str, dict[str, Any]] | None = None) -> None:
    with run.samples_path.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    summary = build_summary(rows, run.manifest(), cell_extra)
    write_json_atomic(run.summary_path, summary)


def make_results(root: Path, evil: bool = False) -> Path:
    """Two runs of one suite: this machine, and a copy edited onto an H100 with costs, a roofline and one
    quantization that really loses quality. With evil=True, answers, errors and inputs carry HTML payloads."""
    first = RunDir(run_fake_suite(root, evil))
    rows = first.samples()
    for r in rows:
        r["cost_usd"] = PRICE[r["cell"]["model"]] / 1000
        if r["cell"]["quantization"] == "Q2_K" and r["score"] == 1.0 and int(r["sample_id"][-3:]) % 3 == 0:
            r["score"], r["scores"], r["output"], r["verified"] = 0.0, {"accuracy": 0.0}, "other", True
    if evil:
        for r in rows:
            if r["cell"]["model"] == "smollm2-135m-instruct" and r["cell"]["quantization"] == "Q8_0":
                r["output"] = XSS_OUTPUT
        victim = next(r for r in rows if r["cell"]["model"] == "qwen2.5-coder-1.5b-instruct")
        victim.update(error=XSS_ERROR, score=None, output=None)
    _rewrite(first, rows)

    second_path = first.path.parent / (first.path.name + "-h100")
    shutil.copytree(first.path, second_path)
    second = RunDir(second_path)
    second.update_manifest(run_id=second_path.name, hardware={"fingerprint": "h100", "profile": "h100-sxm-cloud",
                                                              "note": "edited for a test", "cost_per_hour_usd": 2.5})
    moved = []
    for r in second.samples():
        r["cell"] = {**r["cell"], "hardware": "h100-sxm-cloud"}
        r["cell_id"] = cell_id(r["cell"])
        t = r.get("timings") or {}
        for k in ("t_prefill_end", "t_first_token", "t_end"):
            if t.get(k) is not None:
                t[k] *= 0.2
        t["token_times"] = [v * 0.2 for v in t.get("token_times") or []]
        r["rss_peak_mb"] = (r.get("rss_peak_mb") or 100) * 1.5
        r["gpu_peak_mb"] = 900.0 + 10 * len(r["cell"]["model"])
        r["cost_usd"] = (r.get("cost_usd") or 0) * 3
        moved.append(r)
    extra = {r["cell_id"]: {"decode_ceiling_tps": 9000.0, "bandwidth_utilization": 0.55} for r in moved}
    _rewrite(second, moved, extra)
    return root / "results"


def routing_doc(results: Path) -> dict[str, Any]:
    """A valid routing.json (routing.schema.json) in CONTRACT.md's shape, with extra keys a writer may add."""
    cells = json.loads(next(results.rglob("summary.json")).read_text())["cells"]
    by_model = {c["cell"]["model"]: c["cell"] for c in cells}
    small, large = by_model["smollm2-135m-instruct"], by_model["qwen2.5-coder-1.5b-instruct"]

    def detail(cell: dict[str, Any]) -> dict[str, Any]:
        return {k: cell.get(k) for k in ("model", "quantization", "backend", "hardware")}

    return {
        "schema_version": ROUTING_SCHEMA_VERSION, "created_at": "2026-01-01T00:00:00Z", "sources": ["run-a", "run-b"],
        "tasks": {"tickets": {
            "target": 0.8, "metric": "accuracy", "status": "meets_target", "fallback": cell_id(large),
            "guarantee": {"method": "learn-then-test", "delta": 0.05, "holds": True},
            "policy": {"chain": [cell_id(small), cell_id(large)], "status": "meets_target"},
            "tiers": [
                {"cell": cell_id(small), "cell_detail": detail(small),
                 "quality": {"mean": 0.55, "ci_low": 0.4, "ci_high": 0.7}, "cost_per_1k_usd": 0.02,
                 "latency_p95_s": 0.02, "meets_target": False, "locality": "local", "eligible": True,
                 "excluded_because": None, "accept_if": {"signal": "confidence", "threshold": -0.3}},
                {"cell": cell_id(large), "cell_detail": detail(large),
                 "quality": {"mean": 0.92, "ci_low": 0.85, "ci_high": 0.96}, "cost_per_1k_usd": 0.12,
                 "latency_p95_s": 0.03, "meets_target": True, "locality": "cloud", "eligible": True,
                 "excluded_because": None, "accept_if": {"signal": "always", "threshold": None}},
            ],
            "default": cell_id(small),
            "expected": {"quality": {"mean": 0.86, "ci_low": 0.8, "ci_high": 0.9}, "cost_per_1k_usd": 0.07,
                         "escalation_rate": 0.41, "n": 20, "meets_target_on_holdout": True,
                         "message": "meets the target on holdout"},
            "savings": {"vs_always_largest_usd_per_1k": 0.05, "share": 0.42},
            "baselines": {"always": [{"name": "always largest", "quality": 0.92, "cost_per_1k_usd": 0.12},
                                     {"name": "always smallest", "quality": 0.55, "cost_per_1k_usd": 0.02}]},
            "note": "<i>holdout</i> met the target",
        }},
    }
