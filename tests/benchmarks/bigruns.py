"""Big synthetic run directories for the analysis benchmarks: manifest.json, samples.jsonl and summary.json shaped
as `bench run` writes them with the fake backend, rows written fast with orjson, one cell at a time."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

GEN = "3d6d4e4b"
HARDWARE = "cloud-vm-2c"
HOURLY_USD = 0.1008
RUN_ID = "20260101T000000Z-big0"

# (model, quantization, skill: the chance of a right answer on an average sample, decode tokens/s)
TIERS = [("smollm2-135m-instruct", "Q4_1", 0.62, 90.0), ("qwen2.5-coder-0.5b-instruct", "Q4_K_M", 0.80, 45.0),
         ("qwen2.5-coder-1.5b-instruct", "Q4_K_M", 0.95, 15.0), ("qwen2.5-coder-3b-instruct", "Q4_K_M", 0.97, 8.0)]
BACKEND = {"kind": "fake", "accuracy": 1.0, "accuracy_by_model": {m: s for m, _, s, _ in TIERS},
           "hard_pattern": None, "accuracy_hard_by_model": {}, "tokens_per_s": 1000.0,
           "tokens_per_s_by_model": {m: tps for m, _, _, tps in TIERS}, "delay_s": 0.0, "fail_load": False}
ERROR_RATE = 0.002


@dataclass
class BigRun:
    """What was written, with the truth a test checks the analysis against."""

    path: Path
    n_samples: int
    cells: list[str]                     # cell ids, tier order (cheapest first)
    calibration: int                     # samples in the calibration split
    quality: dict[str, dict[str, float]]  # cell_id -> split (or 'all') -> mean score (errors count 0)
    errors: dict[str, int]                # cell_id -> errored samples

    @property
    def rows(self) -> int:
        return self.n_samples * len(self.cells)


def cell_of(model: str, quant: str) -> tuple[dict[str, Any], str]:
    cell = {"model": model, "quantization": quant, "backend": "fake", "hardware": HARDWARE, "gen": GEN}
    return cell, f"{model}@{quant}/fake/{HARDWARE}#{GEN}"


def manifest(tiers: int, n_samples: int, run_id: str = RUN_ID, suite: str = "tickets") -> dict[str, Any]:
    """manifest.json of a fake-backend run of a classify suite (the fields `bench run` writes)."""
    models = [m for m, _, _, _ in TIERS[:tiers]]
    config = {
        "name": suite, "description": "synthetic tickets", "task": {"kind": "classify",
                                                                   "labels": ["billing", "technical"]},
        "dataset": {"path": "data.jsonl", "hub": None, "hub_split": "train", "revision": None, "id_field": "id",
                    "input_fields": ["text"], "reference_field": "label"},
        "split": {"seed": 0, "holdout_fraction": 0.5},
        "prompt": {"system": "Classify the ticket as billing or technical.", "template": "Ticket: {text}",
                   "few_shot": []},
        "metric": None, "target": 0.85, "tolerance": 0.02, "sensitive": False, "personal_data": [],
        "max_p95_latency_s": None, "min_samples": 30, "delta": 0.05, "limit": None,
        "prerouter": {"families": ["rules", "tfidf", "embedding"], "hard_patterns": [],
                      "embedding_model": "smollm2-135m-instruct"},
        "generation": {"max_tokens": 8, "temperature": 0.0, "seed": 0, "stop": []},
        "matrix": {"models": models, "backends": [BACKEND], "hardware": []},
        "executor": {"kind": "local", "address": None},
    }
    cells = [cell_of(m, q)[0] for m, q, _, _ in TIERS[:tiers]]
    return {
        "schema_version": 1, "run_id": run_id,
        "suite": {"name": suite, "path": "suite/suite.yaml", "sha256": "0" * 64, "identity": "b16b16b16b16b16b",
                  "task": "classify", "metric": "accuracy", "target": 0.85, "tolerance": 0.02, "sensitive": False,
                  "max_p95_latency_s": None, "n_samples": n_samples, "min_samples": 30, "delta": 0.05,
                  "config": config},
        "roofline": {"bandwidth_gbs": 27.01, "bandwidth_source": "probe", "peak_tflops_fp16": None,
                     "profile": HARDWARE},
        "bench_version": "0.1.0",
        "environment": {"python": "3.11.7", "platform": "Linux-x86_64", "packages": {"numpy": "2.4.6"}},
        "hardware": {"detected": {"cpu_model": "AMD EPYC", "arch": "x86_64", "physical_cores": 2,
                                  "logical_cores": 2, "ram_gb": 23.5, "isa": ["avx2"], "gpus": [],
                                  "os": "Linux", "python": "3.11.7", "fingerprint": "8c459e56c27d"},
                     "fingerprint": "8c459e56c27d", "profile": HARDWARE, "note": f"matched {HARDWARE}",
                     "cost_per_hour_usd": HOURLY_USD},
        "started_at": "2026-01-01T00:00:00Z", "finished_at": "2026-01-01T06:00:00Z", "resumed_at": [],
        "cells": cells, "cell_backends": {cell_of(m, q)[1]: BACKEND for m, q, _, _ in TIERS[:tiers]},
    }


def _cell_rows(cell: dict[str, Any], cid: str, skill: float, tps: float, ids: list[str], split: np.ndarray,
               difficulty: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> list[dict[str, Any]]:
    """One cell's rows, key for key as the runner writes a fake-backend sample."""
    n = len(ids)
    right = (rng.random(n) * 0.5 + difficulty * 0.5) < skill
    error = rng.random(n) < ERROR_RATE
    conf = np.where(right, -0.15, -1.1) + rng.normal(0.0, 0.35, n)
    prompt = rng.integers(40, 160, n)
    completion = rng.integers(1, 8, n)
    ttft = prompt / 2000.0 * (1.0 + rng.random(n) * 0.2)
    decode = (completion - 1) / tps
    latency = ttft + decode + 0.0001
    cost = latency * HOURLY_USD / 3600.0
    rss = 36.0 + rng.random(n)
    others = rng.random(n) * 0.2
    t0 = 1.79e9
    rows = []
    for i in range(n):
        sid, k = ids[i], int(completion[i])
        if error[i]:
            rows.append({"schema_version": 1, "cell": cell, "cell_id": cid, "sample_id": sid, "split": split[i],
                         "output": None, "parsed": None, "score": None, "scores": {}, "verified": False,
                         "confidence": None, "prompt_tokens": int(prompt[i]), "cached_tokens": 0,
                         "completion_tokens": 0, "ttft_s": None, "prefill_s": None, "decode_s": None,
                         "latency_s": None, "cost_usd": None, "error": "fake backend: timeout after 60 s",
                         "timings": None, "load_s": 0.01, "rss_peak_mb": float(rss[i]), "rss_model_mb": 0.25,
                         "gpu_peak_mb": None, "energy_j": None, "model_bytes": 0, "params_m": None,
                         "locality": "local", "metric": "accuracy", "retries": 2, "finish_reason": "error",
                         "concurrency": 1, "token_logprobs": [], "harness_s": None,
                         "contention": {"others_cores": float(others[i]), "steal_cores": 0.0, "contended": False},
                         "requantized": None})
            continue
        ok = bool(right[i])
        out = label[i] if ok else "unsure"
        c, f = float(conf[i]), float(ttft[i])
        lat = float(latency[i])
        score = 1.0 if ok else 0.0
        rows.append({"schema_version": 1, "cell": cell, "cell_id": cid, "sample_id": sid, "split": split[i],
                     "output": out, "parsed": out if ok else None, "score": score, "scores": {"accuracy": score},
                     "verified": ok, "confidence": c, "prompt_tokens": int(prompt[i]), "cached_tokens": 0,
                     "completion_tokens": k, "ttft_s": f, "prefill_s": f, "decode_s": float(decode[i]),
                     "latency_s": lat, "cost_usd": float(cost[i]), "error": None,
                     "timings": {"t_start": t0 + i, "t_prefill_end": f, "t_first_token": f,
                                 "token_times": [f + j / tps for j in range(k)], "t_end": lat},
                     "load_s": 0.01, "rss_peak_mb": float(rss[i]), "rss_model_mb": 0.25, "gpu_peak_mb": None,
                     "energy_j": None, "model_bytes": 0, "params_m": None, "locality": "local",
                     "metric": "accuracy", "retries": 0, "finish_reason": "stop", "concurrency": 1,
                     "token_logprobs": [c] * k, "harness_s": None,
                     "contention": {"others_cores": float(others[i]), "steal_cores": 0.0, "contended": False},
                     "requantized": None})
    return rows


def write_big_run(root: Path, n_samples: int, tiers: int = 3, *, seed: int = 0, run_id: str = RUN_ID,
                  suite: str = "tickets", summary: bool = True) -> BigRun:
    """results/<suite>/<run_id>/ with `tiers` cells x `n_samples` samples (the same samples and split on every
    cell; harder samples are wrong more often on every tier). With the same n_samples and tiers, two seeds give
    the same data, split and skills, drawn anew: a candidate with no real change."""
    from bench.results.summary import build_summary

    rng = np.random.default_rng(seed)
    split_rng = np.random.default_rng(12345)  # the suite's split, not the model's luck: the same for every seed
    ids = [f"s{i:07d}" for i in range(n_samples)]
    split = np.where(split_rng.random(n_samples) < 0.5, "calibration", "holdout").tolist()
    label = np.where(split_rng.random(n_samples) < 0.5, "billing", "technical").tolist()
    difficulty = split_rng.random(n_samples)
    doc = manifest(tiers, n_samples, run_id, suite)
    path = root / suite / run_id
    path.mkdir(parents=True)
    (path / "manifest.json").write_text(json.dumps(doc, indent=2) + "\n")
    cal = np.asarray(split) == "calibration"
    made = BigRun(path=path, n_samples=n_samples, cells=[], calibration=int(cal.sum()), quality={}, errors={})
    summaries = []
    dumps, newline = orjson.dumps, orjson.OPT_APPEND_NEWLINE
    with (path / "samples.jsonl").open("wb") as f:
        for model, quant, skill, tps in TIERS[:tiers]:
            cell, cid = cell_of(model, quant)
            rows = _cell_rows(cell, cid, skill, tps, ids, split, difficulty, label, rng)
            f.write(b"".join(dumps(r, option=newline) for r in rows))
            value = np.array([0.0 if r["error"] else r["score"] for r in rows])
            made.cells.append(cid)
            made.quality[cid] = {"calibration": float(value[cal].mean()) if cal.any() else float("nan"),
                                 "holdout": float(value[~cal].mean()) if (~cal).any() else float("nan"),
                                 "all": float(value.mean())}
            made.errors[cid] = sum(1 for r in rows if r["error"])
            if summary:
                summaries.extend(build_summary(rows, doc)["cells"])
            del rows
    if summary:
        whole = build_summary([], doc)
        whole["cells"] = sorted(summaries, key=lambda c: c["cell_id"])
        (path / "summary.json").write_text(json.dumps(whole, indent=2, default=str) + "\n")
    return made


def add_retries_and_rerun(made: BigRun, *, rerun_share: float = 0.1, seed: int = 7, torn: bool = True) -> Path:
    """Make `made` look like a run with history: every errored row retried later in the same file (the retry
    answers), a torn final line (a kill mid-write), and a second run of the suite, started later, that re-ran the
    first `rerun_share` of the samples on the first cell. Returns the second run's directory."""
    path = made.path / "samples.jsonl"
    retries = []
    with path.open("rb") as f:
        for line in f:
            row = orjson.loads(line)
            if row["error"]:
                retries.append({**row, "output": "billing", "parsed": "billing", "score": 1.0,
                                "scores": {"accuracy": 1.0}, "verified": True, "confidence": -0.2,
                                "completion_tokens": 2, "ttft_s": 0.05, "prefill_s": 0.05, "decode_s": 0.01,
                                "latency_s": 0.07, "cost_usd": 0.07 * HOURLY_USD / 3600.0, "error": None,
                                "retries": 3, "finish_reason": "stop"})
    with path.open("ab") as f:
        f.write(b"".join(orjson.dumps(r, option=orjson.OPT_APPEND_NEWLINE) for r in retries))
        if torn:
            f.write(b'{"schema_version": 1, "cell": {"model": "x"}, "cell_id": "torn", "sample_id": "s00')
    k = max(1, int(made.n_samples * rerun_share))
    second = write_big_run(made.path.parent.parent / "rerun", k, 1, seed=seed, run_id=made.path.name[:-1] + "9",
                           summary=False)
    target = made.path.parent / second.path.name
    second.path.rename(target)
    doc = json.loads((target / "manifest.json").read_text())
    doc["started_at"] = "2026-01-02T00:00:00Z"
    (target / "manifest.json").write_text(json.dumps(doc, indent=2) + "\n")
    (made.path.parent.parent / "rerun" / made.path.parent.name).rmdir()
    (made.path.parent.parent / "rerun").rmdir()
    return target
