"""The Prometheus metrics of `bench serve`, in a registry of their own (nothing global, one set per app).

Names and labels (counters carry prometheus_client's `_total` suffix in the exposition):

- `bench_requests_total{task, calibrated}`: requests routed; `calibrated="false"` are outside calibration
  (free-form messages rather than the task's input fields);
- `bench_sensitive_requests_total{task}`: requests the router judged to hold personal data (local tiers only);
- `bench_prerouted_total{task, path}`: pre-router decisions: `cheap` (the cheaper tier's path) or `strong`;
- `bench_answers_total{task, tier}`: answers returned, by the tier that answered: the model mix;
- `bench_escalations_total{task, tier}`: escalations away from a tier (its answer refused or its call failed);
- `bench_tier_requests_total{task, tier}`: calls made to each tier;
- `bench_tokens_total{task, tier, kind}`: prompt and completion tokens per tier, escalated calls included;
- `bench_errors_total{task, kind}`: failed requests (4xx and 5xx) by kind;
- `bench_tier_errors_total{task, tier, kind}`: failed tier calls (`upstream_error`, `timeout`, `busy`, `exception`);
- `bench_request_latency_seconds{task}`: end-to-end latency histogram;
- `bench_tier_latency_seconds{tier}`: latency of each tier call, escalated ones included;
- `bench_tier_in_flight{tier}`: tier calls running now (bounded by the tier's concurrency);
- `bench_tier_concurrency{tier}`: the calls a tier takes at once (bench.serve.cascade.tier_limit), set at start:
  in-flight at this level means the tier is saturated and calls queue.
"""

from __future__ import annotations

from typing import Any

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class Metrics:
    """The service's Prometheus metrics in a CollectorRegistry of their own."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        r = self.registry = CollectorRegistry()
        self.requests = Counter("bench_requests", "requests routed; calibrated=false: outside calibration",
                                ["task", "calibrated"], registry=r)
        self.sensitive = Counter("bench_sensitive_requests", "requests holding personal data (local tiers only)",
                                 ["task"], registry=r)
        self.prerouted = Counter("bench_prerouted", "pre-router decisions by path (cheap or strong)",
                                 ["task", "path"], registry=r)
        self.answers = Counter("bench_answers", "answers returned, by the tier that answered", ["task", "tier"],
                               registry=r)
        self.escalations = Counter("bench_escalations", "escalations away from a tier", ["task", "tier"],
                                   registry=r)
        self.tier_requests = Counter("bench_tier_requests", "calls made to each tier", ["task", "tier"], registry=r)
        self.tokens = Counter("bench_tokens", "tokens per task and tier", ["task", "tier", "kind"], registry=r)
        self.errors = Counter("bench_errors", "failed requests by kind", ["task", "kind"], registry=r)
        self.tier_errors = Counter("bench_tier_errors", "failed tier calls by kind", ["task", "tier", "kind"],
                                   registry=r)
        self.latency = Histogram("bench_request_latency_seconds", "end-to-end latency", ["task"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.tier_latency = Histogram("bench_tier_latency_seconds", "latency of each tier call", ["tier"],
                                      buckets=LATENCY_BUCKETS, registry=r)
        self.in_flight = Gauge("bench_tier_in_flight", "tier calls running now", ["tier"], registry=r)
        self.concurrency = Gauge("bench_tier_concurrency", "calls a tier takes at once", ["tier"], registry=r)

    def observe(self, task: str, steps: list[dict[str, Any]]) -> None:
        """Count one routed request's tier calls: tokens, latency, failures and escalations."""
        for i, step in enumerate(steps):
            tier = step["cell"]
            self.tier_requests.labels(task, tier).inc()
            self.tokens.labels(task, tier, "prompt").inc(step.get("prompt_tokens") or 0)
            self.tokens.labels(task, tier, "completion").inc(step.get("completion_tokens") or 0)
            if step.get("wall_s") is not None:
                self.tier_latency.labels(tier).observe(step["wall_s"])
            if step.get("error"):
                self.tier_errors.labels(task, tier, step.get("error_kind") or "upstream_error").inc()
            if i < len(steps) - 1:
                self.escalations.labels(task, tier).inc()

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)
