"""Synthetic sample rows for the harness's own benchmarks: shaped like samples.jsonl lines, made fast and seeded."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

MODELS = [("smollm2-135m-instruct", "Q4_1", 0.55), ("qwen2.5-coder-0.5b-instruct", "Q4_K_M", 0.72),
          ("qwen2.5-coder-1.5b-instruct", "Q4_K_M", 0.86), ("gpt-4o-mini", None, 0.93)]


def cells(k: int = 4) -> list[tuple[dict[str, Any], str, float]]:
    """Up to four tiers: three local quantized models and one cloud endpoint, each with its skill."""
    out = []
    for model, quant, skill in MODELS[:k]:
        backend, hw = ("openai", "remote") if quant is None else ("llamacpp", "cpu-bench")
        cell = {"model": model, "quantization": quant, "backend": backend, "hardware": hw, "gen": "bench000"}
        out.append((cell, f"{model}@{quant or '-'}/{backend}/{hw}#bench000", skill))
    return out


def synthetic_rows(n_samples: int, k_cells: int = 4, *, lean: bool = False, seed: int = 0) -> list[dict[str, Any]]:
    """n_samples x k_cells rows. Scores follow each cell's skill; confidence is higher on right answers, so
    calibration has a signal; lean rows carry only what threshold calibration reads (a million full rows with
    per-token timestamps would need gigabytes)."""
    rng = np.random.default_rng(seed)
    rows: list[dict[str, Any]] = []
    ids = [f"s{i:07d}" for i in range(n_samples)]
    split = np.where(rng.random(n_samples) < 0.5, "calibration", "holdout")
    difficulty = rng.random(n_samples)
    for cell, cid, skill in cells(k_cells):
        right = (rng.random(n_samples) * 0.6 + difficulty * 0.4) < skill
        conf = np.where(right, -0.1, -1.2) + rng.normal(0, 0.35, n_samples)
        errors = rng.random(n_samples) < 0.002
        prompt = rng.integers(150, 400, n_samples)
        completion = rng.integers(4, 40, n_samples)
        remote = cell["backend"] == "openai"
        tps = 400.0 if remote else 30.0 + 60.0 * (1 - skill)
        ttft = (0.25 if remote else prompt / 900.0) * (1 + rng.random(n_samples) * 0.2)
        latency = ttft + completion / tps
        cost = (prompt * 0.15 + completion * 0.6) / 1e6 if remote else latency * 0.05 / 3600
        for i in range(n_samples):
            err = "timeout after 60 s" if errors[i] else None
            score = None if err else float(right[i])
            row: dict[str, Any] = {"cell_id": cid, "sample_id": ids[i], "split": str(split[i]), "score": score,
                                   "error": err, "verified": bool(right[i] or conf[i] > -0.6) and not err,
                                   "confidence": None if err else float(conf[i]),
                                   "latency_s": None if err else float(latency[i]),
                                   "cost_usd": None if err else float(cost[i])}
            if not lean:
                n_tok = int(completion[i])
                t0 = float(ttft[i])
                row.update({
                    "schema_version": 1, "cell": cell, "output": "billing" if right[i] else "unsure",
                    "parsed": "billing" if right[i] else None, "scores": {"accuracy": score},
                    "prompt_tokens": int(prompt[i]), "cached_tokens": 0, "completion_tokens": n_tok,
                    "ttft_s": t0, "prefill_s": t0 * 0.95, "decode_s": (n_tok - 1) / tps,
                    "timings": {"t_start": 1.79e9 + i, "t_prefill_end": t0 * 0.95, "t_first_token": t0,
                                "token_times": [t0 + j / tps for j in range(n_tok)], "t_end": float(latency[i])},
                    "load_s": 1.2, "rss_peak_mb": 300.0 + 400 * skill + float(i % 7), "rss_model_mb": 250.0,
                    "gpu_peak_mb": None, "energy_j": None, "locality": "cloud" if remote else "local",
                    "metric": "accuracy", "retries": 0, "finish_reason": "stop", "concurrency": 1})
            rows.append(row)
    return rows


def manifest(name: str = "tickets", run_id: str = "20260101T000000Z-bnch") -> dict[str, Any]:
    return {"schema_version": 1, "run_id": run_id, "started_at": "2026-01-01T00:00:00Z",
            "finished_at": "2026-01-01T01:00:00Z", "bench_version": "0.1.0",
            "suite": {"name": name, "identity": "bench", "task": "classify", "metric": "accuracy", "target": 0.8,
                      "tolerance": 0.03, "sensitive": False, "max_p95_latency_s": None,
                      "config": {"description": "synthetic tickets"}},
            "hardware": {"profile": "cpu-bench", "fingerprint": "bench", "note": "synthetic",
                         "cost_per_hour_usd": 0.05}}


def write_run(root: Path, rows: list[dict[str, Any]], run_id: str = "20260101T000000Z-bnch") -> Path:
    """A run directory as `bench run` leaves it: manifest, samples.jsonl and summary.json."""
    from bench.results.summary import build_summary

    doc = manifest(run_id=run_id)
    path = root / doc["suite"]["name"] / run_id
    path.mkdir(parents=True)
    (path / "manifest.json").write_text(json.dumps(doc))
    with (path / "samples.jsonl").open("w") as f:
        for r in rows:
            f.write(json.dumps({"schema_version": 1, **r}) + "\n")
    (path / "summary.json").write_text(json.dumps(build_summary(rows, doc), default=str))
    return path


def full_size(config: pytest.Config) -> bool:
    """Benchmarks measure at full size only when enabled; with --benchmark-disable (CI, the default in
    pyproject) each runs once on a hundredth of the data, to prove the code path works and stay fast."""
    disabled = config.getoption("benchmark_disable", False) and not config.getoption("benchmark_enable", False)
    return not disabled


def scaled(config: pytest.Config, n: int) -> int:
    return n if full_size(config) else max(n // 100, 40)


@pytest.fixture(scope="session")
def rows_100k(pytestconfig: pytest.Config) -> list[dict[str, Any]]:
    """100,000 full rows (4 cells x 25,000 samples), or 1,000 when benchmarks are disabled."""
    return synthetic_rows(scaled(pytestconfig, 25_000), 4)


@pytest.fixture(scope="session")
def results_100k(tmp_path_factory: pytest.TempPathFactory, rows_100k: list[dict[str, Any]]) -> Path:
    """The same rows as a results folder on disk, with its summary.json, as `bench run` leaves it."""
    root = tmp_path_factory.mktemp("results-100k")
    write_run(root, rows_100k)
    return root
