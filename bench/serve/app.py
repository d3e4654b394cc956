"""`bench serve`: a routing.json as an OpenAI-compatible service, on FastAPI.

`POST /v1/chat/completions` takes `model` = a task name and answers through `bench.router`'s plan (pre-router and
personal-data rule where the routing has them, else the calibrated cascade; a task whose policy failed on holdout
goes to its fallback tier), run tier by tier by `cascade.py` under per-tier limits and a deadline. `GET /v1/models`
lists the tasks; `GET /health`; `GET /metrics` in Prometheus format (metrics.py); `--log` one JSONL line per
request (log.py).

Calibrated path: the request carries the task's input fields, as `bench_fields` in the body or as a JSON object in
the last user message; the suite's prompt renders them, as in calibration. Anything else (free text) is routed the
same way with the text as the first input field, and marked `calibrated: false` in the answer and in /metrics.

The answer's extension field `bench` (and the headers X-Bench-Tier, X-Bench-Escalations, X-Bench-Calibrated):
`task`, `tier` (the cell that answered), `tiers_tried`, `confidence` ({cell: confidence or null}), `escalations`,
`verified`, `calibrated`, `sensitive` (true/false, null where the router has no personal-data rule), `fallback`,
`cost_usd`, `latency_s`, `tier_errors` ({cell: reason} for the tiers that failed and were escalated from) and
`prerouter` ({family, probability, threshold, path: cheap|strong} where the task has a pre-router, else null).
Errors are OpenAI-shaped ({"error": {"message", "type", "code"}}): 400 bad body, 404 unknown task (with "did you
mean"), 422 no tier may take the request, 502 every tier tried failed (each reason given), 504 no answer within
the timeout. With `stream: true` the accepted answer comes as server-sent events once the cascade has decided.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any

from fastapi import Request  # at module level: FastAPI resolves the handler's annotation by name

from bench.errors import UserInputError, did_you_mean
from bench.redact import redact_text
from bench.serve.cascade import Gates, cascade, plan, preroute, sensitive
from bench.serve.log import RequestLog
from bench.serve.metrics import Metrics


def _text(content: Any) -> str | None:
    """A message's text: a string, or the text parts of a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) for p in content):
        parts = [p.get("text") for p in content if p.get("type") == "text"]
        if parts and all(isinstance(p, str) for p in parts):
            return "".join(parts)
    return None


def parse_fields(names: list[str], body: dict[str, Any]) -> tuple[dict[str, Any], bool, str]:
    """The request's input fields, whether they came the calibrated way, and the request's text."""
    given = body.get("bench_fields")
    if given is not None:
        if not isinstance(given, dict) or not all(isinstance(given.get(n), str) for n in names):
            raise UserInputError(f"bench_fields must be an object with the string fields {', '.join(names)}",
                                 field="bench_fields")
        return dict(given), True, "\n".join(given[n] for n in names)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise UserInputError("expected `messages`, a non-empty list of {role, content} objects", field="messages")
    text = next((_text(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), None)
    if not isinstance(text, str):
        raise UserInputError("expected a user message with text content", field="messages")
    try:
        obj = json.loads(text)
    except ValueError:
        obj = None
    if isinstance(obj, dict) and names and all(isinstance(obj.get(n), str) for n in names):
        return obj, True, "\n".join(obj[n] for n in names)
    return ({names[0]: text} if names else {"text": text}), False, text


def create_app(routing: str | Path, *, log_path: str | Path | None = None, timeout_s: float = 120.0,
               tier_timeout_s: float | None = None, concurrency: int | None = None,
               trust_failed_holdout: bool = False) -> Any:
    """The FastAPI application for one routing.json (validated here: a bad file is an exit-2 error at start).

    timeout_s bounds each request end to end; tier_timeout_s each tier call; concurrency overrides the number of
    calls at once to each tier (bench.serve.cascade.tier_limit: by default the concurrency the routing file priced
    the tier at; an in-process llama.cpp tier decodes that many calls in one batch)."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI
    from fastapi.responses import JSONResponse, Response, StreamingResponse

    from bench.router import Router

    for flag, value in (("--timeout", timeout_s), ("--tier-timeout", tier_timeout_s), ("--concurrency", concurrency)):
        if value is not None and not value > 0:
            raise UserInputError(f"{flag} must be a positive number, got {value}", field=flag)
    router = Router.load(routing, trust_failed_holdout=trust_failed_holdout)
    metrics = Metrics()
    gates = Gates(router, concurrency)
    for cell, limit in gates.limits.items():
        metrics.concurrency.labels(cell).set(limit)
    request_log = RequestLog(log_path)

    @asynccontextmanager
    async def lifespan(app: Any):
        yield
        gates.close()
        await asyncio.to_thread(router.close)

    app = FastAPI(title="bench serve", version="1", lifespan=lifespan)

    def error(status: int, message: str, kind: str, task: str = "-", headers: dict[str, str] | None = None) -> Any:
        metrics.errors.labels(task, kind).inc()
        return JSONResponse({"error": {"message": redact_text(message), "type": kind, "code": status}},
                            status_code=status, headers=headers)

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
        t0 = time.monotonic()
        deadline = t0 + timeout_s
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
        try:
            fields, calibrated, text = parse_fields(router.input_fields(task), body)
        except UserInputError as exc:
            return error(400, str(exc), "invalid_request_error", task)
        metrics.requests.labels(task, str(calibrated).lower()).inc()
        try:
            job = router.prepare(task, fields)
        except UserInputError as exc:  # the routing file cannot render this task's prompt
            return error(500, f"the routing file cannot serve task {task!r}: {exc}", "routing_error", task)
        try:
            is_sensitive = sensitive(router, task, text)
            cells = plan(router, task, fields if calibrated else None, text)
            pre = preroute(router, task, fields if calibrated else None, text)
        except UserInputError as exc:
            return error(422, f"no tier may take this request: {exc}", "no_eligible_tier", task)
        if is_sensitive:
            metrics.sensitive.labels(task).inc()
        if pre is not None:
            metrics.prerouted.labels(task, pre["path"]).inc()
        if not cells:
            return error(422, "no tier may take this request" + (" (it holds personal data and no local tier is "
                                                                 "eligible)" if is_sensitive else ""),
                         "no_eligible_tier", task)
        steps = await cascade(router, gates, job, cells, deadline, tier_timeout_s, metrics)
        latency = time.monotonic() - t0
        metrics.observe(task, steps)
        metrics.latency.labels(task).observe(latency)
        result = router.result(job, steps)
        rid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        ext = {"task": task, "tier": result["cell"], "tiers_tried": result["path"], "confidence": result["confidence"],
               "escalations": result["escalations"], "verified": result["verified"], "calibrated": calibrated,
               "sensitive": is_sensitive, "personal_data": router.sensitive(task, text) if is_sensitive else [],
               "fallback": router.overridden(task), "cost_usd": result["cost_usd"],
               "prerouter": None if pre is None else {k: pre[k] for k in ("family", "probability", "threshold",
                                                                          "path")},
               "latency_s": latency,
               "tier_errors": {s["cell"]: redact_text(str(s["error"])) for s in steps if s.get("error")}}
        headers = {"X-Bench-Tier": result["cell"], "X-Bench-Escalations": str(result["escalations"]),
                   "X-Bench-Calibrated": str(calibrated).lower()}
        final = steps[-1]
        if final.get("error"):
            timed_out = final.get("error_kind") == "timeout" and time.monotonic() >= deadline - 0.05
            status, kind = (504, "timeout") if timed_out else (502, "upstream_error")
            reasons = "; ".join(f"{c}: {e}" for c, e in ext["tier_errors"].items())
            message = (f"no answer within {timeout_s:g} s" if timed_out
                       else f"every tier failed; the last ({result['cell']}): {final['error']}") + f" [{reasons}]"
        else:
            status, kind, message = 200, None, None
        await asyncio.to_thread(request_log.write, {
            "id": rid, "time": time.time(), "task": task, "status": status, "calibrated": calibrated,
            "sensitive": is_sensitive, "tier": result["cell"], "tiers_tried": result["path"],
            "steps": request_log.steps(steps), "escalations": result["escalations"], "latency_s": latency,
            "cost_usd": result["cost_usd"], "fallback": ext["fallback"], "prerouter": ext["prerouter"],
            "error": redact_text(message) if message else None})
        if status != 200:
            return error(status, message or "", kind or "upstream_error", task, headers)
        metrics.answers.labels(task, result["cell"]).inc()
        content = result["answer"] or ""
        usage = {"prompt_tokens": final.get("prompt_tokens") or 0,
                 "completion_tokens": final.get("completion_tokens") or 0}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        created = int(time.time())
        if body.get("stream"):
            return StreamingResponse(_events(rid, created, task, content, usage, ext), media_type="text/event-stream",
                                     headers=headers)
        doc = {"id": rid, "object": "chat.completion", "created": created, "model": task,
               "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                            "finish_reason": "stop"}],
               "usage": usage, "bench": ext}
        return JSONResponse(doc, headers=headers)

    app.state.router = router
    app.state.metrics = metrics
    app.state.gates = gates
    return app


async def _events(rid: str, created: int, task: str, content: str, usage: dict[str, int], ext: dict[str, Any]):
    """The accepted answer as OpenAI chat.completion.chunk events: the text, then the finish with `bench`."""
    head = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": task}
    yield f"data: {json.dumps({**head, 'choices': [{'index': 0, 'delta': {'role': 'assistant', 'content': content}, 'finish_reason': None}]})}\n\n"  # noqa: E501
    yield f"data: {json.dumps({**head, 'choices': [{'index': 0, 'delta': {}, 'finish_reason': 'stop'}], 'usage': usage, 'bench': ext})}\n\n"  # noqa: E501
    yield "data: [DONE]\n\n"


def run(args: Any) -> int:
    """`bench serve ROUTING.json [--host] [--port] [--log FILE] [--timeout S] [--tier-timeout S] [--concurrency N]`."""
    import uvicorn

    app = create_app(args.routing, log_path=args.log, timeout_s=args.timeout,
                     tier_timeout_s=getattr(args, "tier_timeout", None),
                     concurrency=getattr(args, "concurrency", None), trust_failed_holdout=args.trust_failed_holdout)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
