"""`bench serve`: a routing.json as an OpenAI-compatible service, on FastAPI.

`POST /v1/chat/completions` takes `model` = a task name and answers through `bench.router` (the calibrated cascade,
the holdout fallback included); `GET /v1/models` lists the tasks; `GET /health`; `GET /metrics` in Prometheus
format (requests, answers, escalations and tokens per task and tier, latency histograms, errors by kind, requests
outside calibration). Optionally one JSONL line per request.

Calibrated path: the request carries the task's input fields, as `bench_fields` in the body or as a JSON object in
the last user message; the suite's prompt renders them, as in calibration. Anything else (free text) is routed the
same way with the text as the first input field, and marked `calibrated: false` in the answer and in /metrics.
In-process tiers (llama.cpp) answer one request at a time; a request waits at most `timeout_s`.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from fastapi import Request  # at module level: FastAPI resolves the handler's annotation by name

from bench.errors import UserInputError, did_you_mean
from bench.redact import redact_text


class Metrics:
    """The service's Prometheus metrics in a registry of their own."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("bench_requests", "requests received", ["task", "calibrated"],
                                registry=self.registry)
        self.answers = Counter("bench_answers", "answers returned, by the tier that answered", ["task", "tier"],
                               registry=self.registry)
        self.escalations = Counter("bench_escalations", "escalations to a stronger tier", ["task"],
                                   registry=self.registry)
        self.tokens = Counter("bench_tokens", "tokens per task and tier", ["task", "tier", "kind"],
                              registry=self.registry)
        self.errors = Counter("bench_errors", "failed requests by kind", ["task", "kind"], registry=self.registry)
        self.personal = Counter("bench_personal_data_requests", "requests holding personal data, kept on local "
                                "or on-prem tiers", ["task", "kind"], registry=self.registry)
        self.latency = Histogram("bench_request_latency_seconds", "end-to-end latency", ["task"],
                                 registry=self.registry)
        self.tier_latency = Histogram("bench_tier_latency_seconds", "latency of each tier tried", ["tier"],
                                      registry=self.registry)

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


def _fields(router: Any, task: str, body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """The request's input fields and whether they came the calibrated way."""
    names = router.input_fields(task)
    given = body.get("bench_fields")
    if given is not None:
        if not isinstance(given, dict) or not all(isinstance(given.get(n), str) for n in names):
            raise UserInputError(f"bench_fields must be an object with the string fields {', '.join(names)}",
                                 field="bench_fields")
        return dict(given), True
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise UserInputError("expected `messages`, a non-empty list of {role, content} objects", field="messages")
    text = next((m.get("content") for m in reversed(messages) if m.get("role") == "user"), None)
    if not isinstance(text, str):
        raise UserInputError("expected a user message with text content", field="messages")
    try:
        obj = json.loads(text)
    except ValueError:
        obj = None
    if isinstance(obj, dict) and names and all(isinstance(obj.get(n), str) for n in names):
        return obj, True
    return ({names[0]: text} if names else {"text": text}), False


def create_app(routing: str | Path, *, log_path: str | Path | None = None, timeout_s: float = 120.0,
               trust_failed_holdout: bool = False) -> Any:
    """The FastAPI application for one routing.json (validated here: a bad file is an exit-2 error at start)."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse, Response

    from bench.router import Router

    router = Router.load(routing, trust_failed_holdout=trust_failed_holdout)
    metrics = Metrics()
    engine = threading.Lock()  # in-process engines are not reentrant: one request at a time through them
    log_lock = threading.Lock()
    app = FastAPI(title="bench serve", version="1")

    def error(status: int, message: str, kind: str, task: str = "-") -> Any:
        metrics.errors.labels(task, kind).inc()
        return JSONResponse({"error": {"message": redact_text(message), "type": kind, "code": status}},
                            status_code=status)

    def log(line: dict[str, Any]) -> None:
        if not log_path:
            return
        data = (json.dumps(line, ensure_ascii=False, default=str) + "\n").encode("utf-8")
        with log_lock:
            fd = os.open(str(log_path), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)

    def answer(task: str, fields: dict[str, Any]) -> dict[str, Any]:
        with engine:
            return router.run(task, fields)

    @app.get("/health")
    async def health() -> Any:
        return {"status": "ok", "tasks": router.tasks()}

    @app.get("/v1/models")
    async def models() -> Any:
        return {"object": "list", "data": [{"id": t, "object": "model", "owned_by": "bench"} for t in router.tasks()]}

    @app.get("/metrics")
    async def prometheus() -> Any:
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        t0 = time.perf_counter()
        try:
            body = await request.json()
        except ValueError:
            return error(400, "the body is not valid JSON", "invalid_request_error")
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            return error(400, "expected a JSON object with `model` (a task name) and `messages`",
                         "invalid_request_error")
        task = body["model"]
        if task not in router.tasks():
            hint = did_you_mean(task, router.tasks())
            return error(404, f"no task {task!r}; known: {', '.join(router.tasks())}" + (f" ({hint})" if hint else ""),
                         "model_not_found", task)
        if body.get("stream"):
            return error(400, "streaming is not supported: send stream=false", "invalid_request_error", task)
        try:
            fields, calibrated = _fields(router, task, body)
        except UserInputError as exc:
            return error(400, str(exc), "invalid_request_error", task)
        metrics.requests.labels(task, str(calibrated).lower()).inc()
        try:
            result = await asyncio.wait_for(asyncio.to_thread(answer, task, fields), timeout=timeout_s)
        except asyncio.TimeoutError:
            return error(504, f"no answer within {timeout_s:g} s", "timeout", task)
        except UserInputError as exc:  # personal data and no local tier to take it
            return error(422, exc.message, "personal_data_no_local_tier", task)
        except Exception as exc:  # a tier that cannot even start (a missing model, a bad upstream)
            return error(502, f"the routing could not answer: {type(exc).__name__}: {exc}", "upstream_error", task)
        latency = time.perf_counter() - t0
        for step in result["steps"]:
            metrics.tier_latency.labels(step["cell"]).observe(step["latency_s"] or 0.0)
            metrics.tokens.labels(task, step["cell"], "prompt").inc(step.get("prompt_tokens") or 0)
            metrics.tokens.labels(task, step["cell"], "completion").inc(step.get("completion_tokens") or 0)
        metrics.escalations.labels(task).inc(result["escalations"])
        for kind in result.get("personal_data") or []:
            metrics.personal.labels(task, kind).inc()
        metrics.latency.labels(task).observe(latency)
        ext = {"task": task, "tier": result["cell"], "tiers_tried": result["path"], "confidence": result["confidence"],
               "escalations": result["escalations"], "verified": result["verified"], "calibrated": calibrated,
               "fallback": router.overridden(task), "personal_data": result.get("personal_data") or [],
               "cost_usd": result["cost_usd"], "latency_s": latency}
        log({"id": None, "time": time.time(), **ext,
             "tokens": {s["cell"]: [s.get("prompt_tokens"), s.get("completion_tokens")] for s in result["steps"]},
             "error": result["error"]})
        if result["error"]:
            return error(502, f"every tier failed; the last ({result['cell']}): {result['error']}", "upstream_error",
                         task)
        metrics.answers.labels(task, result["cell"]).inc()
        final = result["steps"][-1]
        doc = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()),
               "model": task,
               "choices": [{"index": 0, "message": {"role": "assistant", "content": result["answer"] or ""},
                            "finish_reason": "stop"}],
               "usage": {"prompt_tokens": final.get("prompt_tokens") or 0,
                         "completion_tokens": final.get("completion_tokens") or 0,
                         "total_tokens": (final.get("prompt_tokens") or 0) + (final.get("completion_tokens") or 0)},
               "bench": ext}
        headers = {"X-Bench-Tier": result["cell"], "X-Bench-Escalations": str(result["escalations"]),
                   "X-Bench-Calibrated": str(calibrated).lower()}
        return JSONResponse(doc, headers=headers)

    app.state.router = router
    return app


def run(args: Any) -> int:
    """`bench serve ROUTING.json [--host] [--port] [--log FILE]`."""
    import uvicorn

    app = create_app(args.routing, log_path=args.log, timeout_s=args.timeout,
                     trust_failed_holdout=args.trust_failed_holdout)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
