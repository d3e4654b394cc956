"""One samples.jsonl row from one generation: derived timings, the task's scores, confidence and cost."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from bench.config.suite import OpenAIBackendConfig, Suite
from bench.data import Sample
from bench.errors import BenchError
from bench.measure.timing import derive
from bench.tasks import get_task

if TYPE_CHECKING:
    from bench.runner import CellPlan


def confidence_of(logprobs: list[float] | None) -> float | None:
    """Mean log-probability of the answer's tokens; None when the backend gave none."""
    if not logprobs:
        return None
    vals = [lp for lp in logprobs if lp is not None and math.isfinite(lp)]
    return sum(vals) / len(vals) if vals else None


class CostModel:
    """Dollars per request: token prices for cloud tiers, the machine's hourly price for self-hosted ones."""

    def __init__(self, plan: CellPlan, profile: Any, profiles: dict[str, Any]):
        self.price_key: str | None = None
        self.hourly: float | None = None
        self.inline: tuple[float, float] | None = None
        b = plan.backend
        if isinstance(b, OpenAIBackendConfig):
            if b.hardware and b.hardware in profiles:
                self.hourly = profiles[b.hardware].cost_per_hour_usd
            elif b.input_usd_per_mtok is not None and b.output_usd_per_mtok is not None:
                self.inline = (b.input_usd_per_mtok, b.output_usd_per_mtok)
            else:
                self.price_key = b.price or b.model
        elif profile is not None:
            self.hourly = profile.cost_per_hour_usd
        self.concurrency = getattr(b, "concurrency", 1) or 1

    def cost(self, gen: dict[str, Any]) -> float | None:
        if self.hourly is not None:
            from bench import cost

            wall = gen.get("extra", {}).get("wall_s") or gen.get("t_end") or 0.0
            return cost.hourly_cost_usd(self.hourly, wall, self.concurrency)
        if self.inline:
            i, o = self.inline
            return ((gen.get("prompt_tokens") or 0) * i + (gen.get("completion_tokens") or 0) * o) / 1e6
        if self.price_key:
            from bench import cost

            try:
                return cost.token_cost_usd(self.price_key, gen.get("prompt_tokens") or 0,
                                           gen.get("completion_tokens") or 0, gen.get("cached_tokens") or 0)
            except BenchError:
                return None
        return None


def make_row(suite: Suite, plan: CellPlan, sample: Sample, gen: dict[str, Any], load: dict[str, Any],
             cost_model: CostModel) -> dict[str, Any]:
    """One samples.jsonl line: raw generation, its derived timings, the task's scores and the cost."""
    task = get_task(suite.kind)
    metric = suite.metric or task.metric
    error = gen.get("error")
    timings = {k: gen.get(k) for k in ("t_start", "t_prefill_end", "t_first_token", "token_times", "t_end")}
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
        "locality": plan.locality, "metric": metric, "retries": gen.get("retries", 0),
        "finish_reason": gen.get("finish_reason"), "concurrency": cost_model.concurrency,
        "token_logprobs": gen.get("token_logprobs"),
        # the harness's own time in this request (sampling, detokenizing, stop checks), outside the token times
        "harness_s": (gen.get("extra") or {}).get("harness_s"),
        # other processes' CPU while this sample ran (bench.measure.contention): a contended timing is flagged
        "contention": (gen.get("extra") or {}).get("contention"),
        "requantized": (getattr(plan.model, "provenance", None) or {}).get("requantized"),
    }
