"""One samples.jsonl row from one generation: derived timings, the task's scores, confidence and cost."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from bench.config.suite import Suite
from bench.data import Sample
from bench.measure.timing import derive
from bench.tasks import get_task

if TYPE_CHECKING:
    from bench.cost import CostModel
    from bench.matrix import CellPlan


def confidence_of(logprobs: list[float] | None) -> float | None:
    """Mean log-probability of the answer's tokens; None when the backend gave none."""
    if not logprobs:
        return None
    vals = [lp for lp in logprobs if lp is not None and math.isfinite(lp)]
    return sum(vals) / len(vals) if vals else None


def make_row(suite: Suite, plan: CellPlan, sample: Sample, gen: dict[str, Any], load: dict[str, Any],
             cost_model: CostModel) -> dict[str, Any]:
    """One samples.jsonl line: raw generation, its derived timings, the task's scores and the cost."""
    task = get_task(suite.kind)
    metric = suite.metric or task.metric
    error = gen.get("error")
    timings = {k: gen.get(k) for k in ("t_start", "t_prefill_end", "t_first_token", "token_times", "t_end")}
    scores: dict[str, Any]
    if error:
        scored_parsed, verified, scores, score = None, False, {}, None
    else:
        try:
            scored = task.score(gen.get("text") or "", sample.reference, sample.fields, suite.task)
        except Exception as exc:  # a scorer that fails on one answer makes an error row, not a crashed cell
            scored = None
            error = f"scoring failed: {type(exc).__name__}: {str(exc)[:300]}"
        if scored is None:
            scored_parsed, verified, scores, score = None, False, {}, None
        else:
            scored_parsed, verified, scores = scored.parsed, scored.verified, scored.scores
            score = scores.get(metric)
    d = derive(timings, gen.get("prompt_tokens") or 0, gen.get("completion_tokens") or 0, gen.get("cached_tokens"))
    return {
        "cell": plan.cell, "cell_id": plan.cell_id, "sample_id": sample.id, "split": sample.split,
        "output": gen.get("text"), "parsed": scored_parsed, "score": score, "scores": scores,
        "verified": verified, "confidence": confidence_of(gen.get("token_logprobs")),
        "prompt_tokens": gen.get("prompt_tokens"), "cached_tokens": gen.get("cached_tokens"),
        "completion_tokens": gen.get("completion_tokens"),
        "ttft_s": d["ttft_s"], "prefill_s": d["prefill_s"], "decode_s": d["decode_s"], "latency_s": d["latency_s"],
        "cost_usd": None if gen.get("error") else cost_model.cost(gen), "error": error, "timings": timings,
        "load_s": load.get("load_s"), "rss_peak_mb": gen.get("rss_peak_mb"),
        "rss_model_mb": load.get("rss_model_mb"), "gpu_peak_mb": gen.get("gpu_peak_mb"),
        "energy_j": gen.get("energy_j"), "model_bytes": load.get("model_bytes"),
        "params_m": load.get("params_m"),
        # llama.cpp, N >= 2 sequences: whether its logits are the same decoded alone and in a batch (probed at load)
        "batch_invariant": ((load.get("details") or {}).get("batching") or {}).get("batch_invariant"),
        "locality": plan.locality, "metric": metric, "retries": gen.get("retries", 0),
        "finish_reason": gen.get("finish_reason"), "concurrency": gen.get("concurrency") or cost_model.concurrency,
        "token_logprobs": gen.get("token_logprobs"),
        # the harness's own time in this request (sampling, detokenizing, stop checks), outside the token times
        "harness_s": (gen.get("extra") or {}).get("harness_s"),
        # other processes' CPU while this sample ran (bench.measure.contention): a contended timing is flagged
        "contention": (gen.get("extra") or {}).get("contention"),
        "requantized": (getattr(plan.model, "provenance", None) or {}).get("requantized"),
    }
