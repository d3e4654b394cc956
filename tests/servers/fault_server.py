"""A scripted OpenAI-compatible streaming server on 127.0.0.1 for testing the HTTP backend's fault handling.

Each POST to /v1/chat/completions or /v1/completions takes the next behaviour from a queue
(``ok`` once the queue is empty):

- ``ok``: a realistic SSE stream (role chunk, one chunk per token with logprobs when asked,
  a finish chunk, a usage chunk when ``stream_options.include_usage``, ``[DONE]``)
- ``429``: Too Many Requests with ``Retry-After: 0``
- ``500``: an internal error with a JSON body
- ``400``: a bad request (not about logprobs)
- ``stall``: headers and one chunk, then silence for ``stall_s`` seconds
- ``malformed``: one good chunk, then ``data: {not json``
- ``disconnect``: one good chunk, then the connection is dropped mid-stream
- ``truncated``: one good chunk, then ``[DONE]`` with no finish_reason (as an interrupted llama-cpp-python stream)
"""

from __future__ import annotations

import collections
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

TOKENS = ["Hello", " there", ",", " friend", "!"]


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # clients hanging up is part of the tests
            super().handle_error(request, client_address)


class FaultServer:
    def __init__(self, *behaviours: str, delay_s: float = 0.0, stall_s: float = 3.0, usage: bool = True,
                 reject_logprobs: bool = False, models_status: int = 200, tokens: list[str] | None = None,
                 prompt_tokens: int = 11, cached_tokens: int | None = 3):
        self.script: collections.deque[str] = collections.deque(behaviours)
        self.delay_s = delay_s
        self.stall_s = stall_s
        self.usage = usage
        self.reject_logprobs = reject_logprobs
        self.models_status = models_status
        self.tokens = list(tokens or TOKENS)
        self.prompt_tokens = prompt_tokens
        self.cached_tokens = cached_tokens
        self.requests: list[dict[str, Any]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._httpd: _QuietServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------ control

    @property
    def port(self) -> int:
        assert self._httpd is not None
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def push(self, *behaviours: str) -> None:
        with self._lock:
            self.script.extend(behaviours)

    def posts(self) -> list[dict[str, Any]]:
        """The generation requests received (not the /models checks)."""
        with self._lock:
            return [r for r in self.requests if r["method"] == "POST"]

    def start(self) -> FaultServer:
        handler = type("Handler", (_Handler,), {"fault": self})
        self._httpd = _QuietServer(("127.0.0.1", 0), handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fault-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()  # wakes stalled handlers
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FaultServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _next(self) -> str:
        with self._lock:
            return self.script.popleft() if self.script else "ok"

    # ------------------------------------------------------------ response bodies

    def chunks(self, chat: bool, body: dict[str, Any]) -> list[dict[str, Any]]:
        """The SSE chunks of a complete, successful stream for this request body."""
        created, model = int(time.time()), body.get("model", "fault-model")
        want_lp = bool(body.get("logprobs"))
        max_tokens = int(body.get("max_tokens") or len(self.tokens))
        toks = self.tokens[:max_tokens]
        finish = "length" if len(toks) < len(self.tokens) else "stop"
        head = {"id": "cmpl-fault", "created": created, "model": model,
                "object": "chat.completion.chunk" if chat else "text_completion"}
        out = []
        if chat:
            out.append({**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                             "logprobs": None, "finish_reason": None}]})
        for i, tok in enumerate(toks):
            lp = -0.25 * i
            if chat:
                logprobs = {"content": [{"token": tok, "logprob": lp, "bytes": list(tok.encode()),
                                         "top_logprobs": [{"token": tok, "logprob": lp,
                                                           "bytes": list(tok.encode())}]}]}
                choice = {"index": 0, "delta": {"content": tok}, "finish_reason": None}
            else:
                logprobs = {"tokens": [tok], "token_logprobs": [lp], "top_logprobs": [{tok: lp}],
                            "text_offset": [sum(len(t) for t in toks[:i])]}
                choice = {"index": 0, "text": tok, "finish_reason": None}
            choice["logprobs"] = logprobs if want_lp else None
            out.append({**head, "choices": [choice]})
        last: dict[str, Any] = {"index": 0, "finish_reason": finish, "logprobs": None}
        last.update({"delta": {}} if chat else {"text": ""})
        out.append({**head, "choices": [last]})
        if self.usage and (body.get("stream_options") or {}).get("include_usage"):
            usage: dict[str, Any] = {"prompt_tokens": self.prompt_tokens, "completion_tokens": len(toks),
                                     "total_tokens": self.prompt_tokens + len(toks)}
            if self.cached_tokens is not None:
                usage["prompt_tokens_details"] = {"cached_tokens": self.cached_tokens}
            out.append({**head, "choices": [], "usage": usage})
        return out


class _Handler(BaseHTTPRequestHandler):
    fault: FaultServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass

    def _record(self, body: Any) -> None:
        with self.fault._lock:
            self.fault.requests.append({"method": self.command, "path": self.path,
                                        "headers": {k.lower(): v for k, v in self.headers.items()},
                                        "json": body})

    def _json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):X}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _event(self, payload: str) -> None:
        self._chunk(f"data: {payload}\n\n".encode())

    def do_GET(self) -> None:
        self._record(None)
        if self.path.rstrip("/") != "/v1/models":
            return self._json(404, {"error": {"message": f"no route {self.path}"}})
        if self.fault.models_status != 200:
            return self._json(self.fault.models_status, {"error": {"message": "models check refused"}})
        self._json(200, {"object": "list", "data": [{"id": "fault-model", "object": "model"}]})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw or b"{}")
        except json.JSONDecodeError:
            body = None
        self._record(body)
        route = self.path.rstrip("/")
        if route not in ("/v1/chat/completions", "/v1/completions"):
            return self._json(404, {"error": {"message": f"no route {self.path}"}})
        if not isinstance(body, dict):
            return self._json(400, {"error": {"message": "body is not a JSON object"}})
        fault = self.fault
        with fault._lock:
            fault.in_flight += 1
            fault.max_in_flight = max(fault.max_in_flight, fault.in_flight)
        try:
            if fault.delay_s:
                time.sleep(fault.delay_s)
            self._respond(route == "/v1/chat/completions", body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        finally:
            with fault._lock:
                fault.in_flight -= 1

    def _respond(self, chat: bool, body: dict[str, Any]) -> None:
        fault = self.fault
        if fault.reject_logprobs and body.get("logprobs"):
            return self._json(400, {"error": {"message": "logprobs are not supported by this server",
                                              "type": "invalid_request_error", "param": "logprobs"}})
        behaviour = fault._next()
        if behaviour == "429":
            return self._json(429, {"error": {"message": "rate limit reached"}}, {"Retry-After": "0"})
        if behaviour == "500":
            return self._json(500, {"error": {"message": "internal server error (scripted)"}})
        if behaviour == "400":
            return self._json(400, {"error": {"message": "max_tokens is too large (scripted)",
                                              "type": "invalid_request_error"}})
        chunks = fault.chunks(chat, body)
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        if behaviour in ("stall", "malformed", "disconnect", "truncated"):
            self._event(json.dumps(chunks[0]))
            if behaviour == "stall":
                fault._stop.wait(fault.stall_s)
            elif behaviour in ("malformed", "truncated"):
                if behaviour == "malformed":
                    self._event("{not json")
                self._event("[DONE]")
                self._chunk(b"")
                return
            self.close_connection = True
            return  # ends the connection without the terminating chunk: an incomplete stream
        self._chunk(b": keep-alive comment\n\n")
        for c in chunks:
            self._event(json.dumps(c))
        self._event("[DONE]")
        self._chunk(b"")  # zero-length chunk ends the body
