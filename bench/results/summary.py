"""summary.json: per-cell numbers derived from samples.jsonl alone (quality with intervals, speed, memory, cost)."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from bench import SCHEMA_VERSION
from bench.measure.timing import derive
from bench.results.load import latest_rows
from bench.results.schema import row_concurrency
from bench.stats import clean, mean_ci, percentile


def latest_per_sample(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (cell, sample): the merge rule of bench.results.load (a later line, a retry, replaces an earlier
    one), on rows already in order."""
    return latest_rows(rows)


def _p(values: list[Any]) -> dict[str, float | None]:
    return {"p50": percentile(values, 50), "p95": percentile(values, 95)}


def _mean(values: list[Any]) -> float | None:
    arr = clean(values)
    return float(arr.mean()) if arr.size else None


def _max(values: list[Any]) -> float | None:
    arr = clean(values)
    return float(arr.max()) if arr.size else None


def quality_value(row: dict[str, Any], key: str | None = None) -> float | None:
    """A row's quality (its metric, or the measure `key`): an errored request is a failed one, 0, everywhere in
    bench (summary, thresholds, compare, the pytest plugin); a sample that could not be scored is None."""
    if row.get("error"):
        return 0.0
    v = row.get("score") if key is None else (row.get("scores") or {}).get(key)
    return None if v is None or isinstance(v, bool) and key is None else v


def summarize_cell(rows: list[dict[str, Any]], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every number of one cell, from its sample rows."""
    ok = [r for r in rows if not r.get("error")]
    metric = next((r.get("metric") for r in rows if r.get("metric")), None)
    quality = mean_ci([quality_value(r) for r in rows]) | {"metric": metric,
                                                            "error_rate": (len(rows) - len(ok)) / len(rows)}
    by_split = {s: mean_ci([quality_value(r) for r in rows if r.get("split") == s])
                for s in ("calibration", "holdout")}
    score_keys = sorted({k for r in ok for k in (r.get("scores") or {})})
    measures = {k: mean_ci([quality_value(r, k) for r in rows]) for k in score_keys}
    costs = [r.get("cost_usd") for r in ok]
    latency, load = latency_figures(ok), _load(ok)
    cost_mean = _mean(costs)
    first = rows[0]
    out: dict[str, Any] = {
        "cell": first["cell"],
        "cell_id": first["cell_id"],
        "locality": first.get("locality"),
        "n": len(rows),
        "errors": len(rows) - len(ok),
        "error_rate": (len(rows) - len(ok)) / len(rows),
        "error_examples": sorted({r["error"] for r in rows if r.get("error")})[:3],
        "quality": quality,
        "quality_by_split": by_split,
        "measures": measures,
        "verified_rate": _mean([float(bool(r.get("verified"))) for r in ok]),
        "confidence_available": any(r.get("confidence") is not None for r in ok),
        **{k: v for k, v in latency.items() if k not in RAW_KEYS},
        "latency_basis": (WHOLE_RUN if load is None else
                          f"main pass under load, {load['concurrency']} requests in flight (no concurrency-1 "
                          "timing pass)"),
        "prompt_tokens_mean": _mean([r.get("prompt_tokens") for r in ok]),
        "completion_tokens_mean": _mean([r.get("completion_tokens") for r in ok]),
        "cached_prompt_share": (sum(r.get("cached_tokens") or 0 for r in ok)
                                / max(sum(r.get("prompt_tokens") or 0 for r in ok), 1)),
        "load_s": _max([r.get("load_s") for r in rows]),
        "peak_rss_mb": _max([r.get("rss_peak_mb") for r in rows]),
        "model_rss_mb": _max([r.get("rss_model_mb") for r in rows]),
        "peak_gpu_mb": _max([r.get("gpu_peak_mb") for r in rows]),
        "cost_per_1k_usd": cost_mean * 1000 if cost_mean is not None else None,
        "energy_j": sum(r["energy_j"] for r in ok if r.get("energy_j") is not None)
        if any(r.get("energy_j") is not None for r in ok) else None,
        "bandwidth_utilization": None,
        "decode_ceiling_tps": None,
        "harness_s_per_token": _harness_per_token(ok),
        **contention(ok),
        "load": load,
        # False where a batched load found its logits change with the batch's width (answers may then change)
        "batch_invariant": (False if any(r.get("batch_invariant") is False for r in rows)
                            else True if any(r.get("batch_invariant") for r in rows) else None),
        **{k: latency[k] for k in RAW_KEYS},
    }
    if extra:
        out.update(extra)
    return out


WHOLE_RUN = "whole run at concurrency 1"
# the per-request figures latency_figures gives; with --parallel N > 1 they come from the concurrency-1 timing
# pass (bench/sweep.py), and the main pass's own figures stay under `loaded_latency`
LATENCY_KEYS = ("ttft_s", "latency_s", "prefill_tps", "decode_tps", "prefill_tps_p50", "decode_tps_p50")
RAW_KEYS = ("latency_raw_s", "ttft_raw_s")


def latency_figures(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-request speed of error-free rows from their raw timings: TTFT and latency percentiles, prefill and decode
    tokens/s (token-weighted, and per-sample medians), and the raw per-request values (RAW_KEYS)."""
    derived = [derive(r.get("timings") or {}, r.get("prompt_tokens") or 0, r.get("completion_tokens") or 0,
                      r.get("cached_tokens")) for r in rows if r.get("timings")]
    # tokens/s as a ratio of sums (token-weighted), like llama-bench's per-run rates
    pre_tok = sum(max((r.get("prompt_tokens") or 0) - (r.get("cached_tokens") or 0), 0) for r in rows)
    pre_s = sum(d["prefill_s"] or 0 for d in derived)
    dec_tok = sum(max((r.get("completion_tokens") or 0) - 1, 0) for r in rows)
    dec_s = sum(d["decode_s"] or 0 for d in derived)
    return {
        "ttft_s": _p([d["ttft_s"] for d in derived]),
        "latency_s": _p([d["latency_s"] for d in derived]),
        "prefill_tps": pre_tok / pre_s if pre_s else None,
        "decode_tps": dec_tok / dec_s if dec_s else None,
        # per-sample medians: robust to a few samples slowed by something else on the machine
        "prefill_tps_p50": percentile([d["prefill_tps"] for d in derived], 50),
        "decode_tps_p50": percentile([d["decode_tps"] for d in derived], 50),
        "latency_raw_s": [d["latency_s"] for d in derived],
        "ttft_raw_s": [d["ttft_s"] for d in derived],
    }


def _harness_per_token(rows: list[dict[str, Any]]) -> float | None:
    """The harness's own seconds per generated token (sampling, detokenizing): small beside the model's."""
    spent = [r["harness_s"] for r in rows if isinstance(r.get("harness_s"), (int, float))]
    tokens = sum(r.get("completion_tokens") or 0 for r in rows if isinstance(r.get("harness_s"), (int, float)))
    return sum(spent) / tokens if spent and tokens else None


def _load(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """A batched pass (rows run with concurrency > 1): its aggregate throughput over the pass's wall time (the union
    of the rows' spans from their absolute timestamps, so a pause between two resumed passes is not counted), at the highest concurrency the cell's rows ran at. Per-request latency, TTFT and token
    times of those rows were measured with that many requests in flight: under load, not on an idle engine.
    None when every row ran one at a time."""
    level = max((row_concurrency(r.get("concurrency")) for r in rows), default=1)
    if level <= 1:
        return None
    return {"concurrency": level, **throughput([r for r in rows if row_concurrency(r.get("concurrency")) == level]),
            "per_request": f"latency, TTFT and token times measured under load: {level} requests in flight",
            "mixed_concurrency": any(row_concurrency(r.get("concurrency")) != level for r in rows)}


def throughput(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Requests and output tokens per second over the busy wall time of `rows` (the union of their spans from
    absolute timestamps, so a pause between two passes is not counted); `n` counts the rows with timestamps."""
    spans = []
    tokens = 0
    for r in rows:
        t = r.get("timings") or {}
        if isinstance(t.get("t_start"), (int, float)) and isinstance(t.get("t_end"), (int, float)):
            spans.append((float(t["t_start"]), float(t["t_start"]) + float(t["t_end"])))
            tokens += r.get("completion_tokens") or 0
    wall = busy_s(spans)
    return {"n": len(spans), "wall_s": wall if spans else None,
            "requests_per_s": len(spans) / wall if wall > 0 else None,
            "output_tps": tokens / wall if wall > 0 else None}


def busy_s(spans: list[tuple[float, float]]) -> float:
    """Seconds covered by the union of (start, end) spans."""
    total, end = 0.0, float("-inf")
    for a, b in sorted(spans):
        if b > end:
            total += b - max(a, end)
            end = b
    return total


def contention(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Whether other processes took CPU while the cell ran: its timings and cost are then not to be trusted."""
    windows = [r["contention"] for r in rows if isinstance(r.get("contention"), dict)]
    if not windows:
        return {"contended": None, "contended_share": None, "others_cores_mean": None}
    share = sum(bool(w.get("contended")) for w in windows) / len(windows)
    return {"contended": share > 0.1, "contended_share": share,
            "others_cores_mean": sum(float(w.get("others_cores") or 0) for w in windows) / len(windows)}


def build_summary(rows: list[dict[str, Any]], manifest: dict[str, Any],
                  cell_extra: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """The whole summary.json document for a run."""
    rows = latest_per_sample(rows)
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[r["cell_id"]].append(r)
    cells = [summarize_cell(groups[cid], (cell_extra or {}).get(cid)) for cid in sorted(groups)]
    return {
        "schema_version": SCHEMA_VERSION,
        "run_id": manifest.get("run_id"),
        "suite": manifest.get("suite", {}).get("name"),
        "task": manifest.get("suite", {}).get("task"),
        "target": manifest.get("suite", {}).get("target"),
        "hardware": manifest.get("hardware"),
        "cells": cells,
    }
