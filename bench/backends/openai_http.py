"""OpenAI-compatible HTTP backend: streamed chat/completions over SSE, with retries, timings and logprobs."""

from __future__ import annotations

import email.utils
import json
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from bench.backends.base import Generation, LoadInfo, OnResult, Request
from bench.config.suite import OpenAIBackendConfig
from bench.errors import ModelError

BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 20.0
RETRY_AFTER_CAP_S = 60.0
SNIPPET_CHARS = 200
OPTIONAL_FIELDS = ("logprobs", "stream_options")  # dropped for the rest of the run if a server rejects them


class _Secret:
    """Holds the API key; repr/str never show it and it refuses to pickle."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "'***'"

    def __reduce__(self) -> Any:
        raise TypeError("the API key is not serializable")


class _Retryable(Exception):
    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class _Fatal(Exception):
    """A failure that retrying will not fix (a 4xx other than 429)."""


class _Rejected(Exception):
    """A 400 that names an optional field we sent (args[0]); resend without it."""


def _snippet(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= SNIPPET_CHARS else text[:SNIPPET_CHARS] + "..."


def retry_after_s(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date), capped; None if absent/bad."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value.strip()).timestamp() - (now or time.time())
        except (TypeError, ValueError, IndexError, AttributeError):
            return None
    return min(max(seconds, 0.0), RETRY_AFTER_CAP_S) if seconds == seconds else None  # NaN -> None


def backoff_s(retry: int, retry_after: float | None = None, rand: Any = random.random) -> float:
    """Delay before retry number `retry` (0-based): Retry-After when given, else full-jitter exponential."""
    if retry_after is not None:
        return min(retry_after, RETRY_AFTER_CAP_S)
    return rand() * min(BACKOFF_CAP_S, BACKOFF_BASE_S * (2 ** retry))


class OpenAIBackend:
    """Talks to any server that speaks the OpenAI chat/completions streaming API."""

    kind = "openai"

    def __init__(self, config: OpenAIBackendConfig, model: Any = None):
        self.config = config
        self.model = model
        self.locality = config.locality
        self.concurrency = config.concurrency
        self.base_url = config.base_url.rstrip("/")
        self._key: _Secret | None = None
        self._client: httpx.Client | None = None
        self._dropped: set[str] = set()
        self._lock = threading.Lock()
        self._sleep = time.sleep  # tests replace these to run fast and deterministically
        self._rand = random.random

    def __repr__(self) -> str:
        from bench.redact import redact_url

        return (f"OpenAIBackend(name={self.config.name!r}, base_url={redact_url(self.base_url)!r}, "
                f"model={self.config.model!r})")

    def endpoint(self, path: str) -> str:
        """base_url's path joined with an API path, its query (if any) kept at the end."""
        from urllib.parse import urlsplit, urlunsplit

        parts = urlsplit(self.base_url)
        return urlunsplit(parts._replace(path=parts.path.rstrip("/") + "/" + path))

    # ------------------------------------------------------------ lifecycle

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "text/event-stream, application/json"}
        if self._key is not None:
            headers["Authorization"] = f"Bearer {self._key.reveal()}"
        return headers

    def _scrub(self, text: str) -> str:
        return text.replace(self._key.reveal(), "***") if self._key is not None else text

    def load(self) -> LoadInfo:
        self.close()
        t0 = time.perf_counter()
        env = self.config.api_key_env
        if env:
            value = os.environ.get(env)
            if not value:
                raise ModelError(f"environment variable {env} is not set; it must hold the API key for "
                                 f"{self.config.name!r}", field="api_key_env")
            self._key = _Secret(value)  # a non-empty key: _scrub relies on that
        t = self.config.timeout_s
        self._client = httpx.Client(
            timeout=httpx.Timeout(t, connect=min(t, 10.0)),
            limits=httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency),
        )
        url = self.endpoint("models")
        try:
            resp = self._client.get(url, headers=self._headers())
        except httpx.HTTPError as exc:
            self.close()
            raise ModelError(f"cannot reach the OpenAI-compatible server at {url}: "
                             f"{self._scrub(str(exc)) or type(exc).__name__}",
                             hint="is the server running and is base_url right?") from None
        if resp.status_code in (401, 403):
            self.close()
            raise ModelError(f"the server at {url} rejected the credentials (HTTP {resp.status_code}): "
                             f"{self._scrub(_snippet(resp.text))}",
                             hint=f"check the key in ${env}" if env else "set api_key_env")
        details: dict[str, Any] = {"base_url": self.base_url, "model": self.config.model,
                                   "models_status": resp.status_code}
        try:
            ids = [m.get("id") for m in resp.json().get("data", []) if isinstance(m, dict)]
            details.update(server_models=ids[:20], model_listed=self.config.model in ids)
        except (ValueError, AttributeError, TypeError):
            pass
        return LoadInfo(load_s=time.perf_counter() - t0, chat=self.config.chat, details=details)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    # ------------------------------------------------------------ generation

    def generate(self, requests: list[Request], on_result: OnResult | None = None) -> list[Generation]:
        if not requests:
            return []
        if self._client is None:
            self.load()
        results: list[Generation | None] = [None] * len(requests)
        lock = threading.Lock()

        def work(i: int, req: Request) -> None:
            try:
                gen = self._run(req)
            except Exception as exc:  # a bug here must not lose the other requests
                gen = Generation(request_id=req.id, t_start=time.time(),
                                 error=self._scrub(f"internal error: {type(exc).__name__}: {exc}"))
            with lock:
                results[i] = gen
                if on_result is not None:
                    on_result(gen)

        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(requests)),
                                thread_name_prefix="openai-http") as pool:
            futures = [pool.submit(work, i, r) for i, r in enumerate(requests)]
        for f in futures:
            f.result()  # re-raises only what on_result raised
        return [g for g in results if g is not None]

    def _run(self, req: Request) -> Generation:
        """One request with retries; never raises for HTTP or stream failures."""
        wall0, t0 = time.perf_counter(), time.time()
        attempts, errors, last = 0, [], None
        total = self.config.max_retries + 1
        while True:
            attempts += 1
            try:
                gen = self._attempt(req)
            except (_Retryable, _Fatal) as exc:
                last = exc
                errors.append(self._scrub(str(exc)))
                if isinstance(exc, _Fatal) or attempts >= total:
                    break
                self._sleep(backoff_s(attempts - 1, exc.retry_after, self._rand))
                continue
            gen.retries = attempts - 1
            gen.extra.update(wall_s=time.perf_counter() - wall0, attempts=attempts)
            gen.extra.update({"attempt_errors": errors} if errors else {})
            return gen
        fatal = not isinstance(last, _Retryable)
        where = f"attempt {attempts} of {total}" + ("; not retried" if fatal else "; giving up")
        wall = time.perf_counter() - wall0
        return Generation(request_id=req.id, t_start=t0, t_end=wall, error=f"{errors[-1]} ({where})",
                          retries=attempts - 1,
                          extra={"wall_s": wall, "attempts": attempts, "attempt_errors": errors})

    def _payload(self, req: Request) -> tuple[str, dict[str, Any]]:
        c = self.config
        body: dict[str, Any] = {"model": c.model, "stream": True, "max_tokens": req.max_tokens,
                                "temperature": req.temperature, "seed": req.seed}
        with self._lock:
            dropped = set(self._dropped)
        if "stream_options" not in dropped:
            body["stream_options"] = {"include_usage": True}
        if req.stop:
            body["stop"] = list(req.stop)
        logprobs = c.logprobs and "logprobs" not in dropped
        if c.chat:
            body["messages"] = req.messages
            if logprobs:
                body.update(logprobs=True, top_logprobs=1)
        else:
            body["prompt"] = req.prompt
            if logprobs:
                body["logprobs"] = 1
        return self.endpoint("chat/completions" if c.chat else "completions"), body

    def _attempt(self, req: Request) -> Generation:
        """One HTTP attempt; resends at once without each optional field a server rejects with a 400."""
        while True:
            try:
                return self._stream(req)
            except _Rejected as rej:
                with self._lock:
                    self._dropped.add(rej.args[0])

    def _stream(self, req: Request) -> Generation:
        url, body = self._payload(req)
        assert self._client is not None
        gen = Generation(request_id=req.id, t_start=time.time())
        p0 = time.perf_counter()
        try:
            with self._client.stream("POST", url, json=body, headers=self._headers()) as resp:
                if not 200 <= resp.status_code < 300:
                    text = resp.read().decode("utf-8", errors="replace")
                    self._raise_for_status(resp, url, body, text)
                if resp.headers.get("content-type", "").startswith("application/json"):
                    chunks = [resp.read().decode("utf-8", errors="replace")]  # server ignored stream: true
                else:
                    chunks = self._sse_data(resp)
                state = _StreamState(self.config.chat)
                for data in chunks:
                    try:
                        chunk = json.loads(data)
                        if isinstance(chunk, dict) and chunk.get("error"):
                            raise _Retryable(f"error in the stream from {url}: {_snippet(json.dumps(chunk['error']))}")
                        state.add(chunk, time.perf_counter() - p0)
                    except (ValueError, AttributeError, TypeError):  # bad JSON or an unexpected shape
                        raise _Retryable(f"malformed JSON chunk from {url}: {_snippet(data)!r}") from None
        except httpx.ReadTimeout:
            raise _Retryable(f"stream stalled: no bytes for {self.config.timeout_s:g} s ({url})") from None
        except httpx.TransportError as exc:
            raise _Retryable(f"{type(exc).__name__} talking to {url}: {exc}") from None
        gen.t_end = time.perf_counter() - p0
        if state.finish is None:  # e.g. llama-cpp-python's server interrupting a stream for a newer request
            raise _Retryable(f"the stream from {url} ended without a finish_reason (truncated or interrupted)")
        state.fill(gen)
        return gen

    def _raise_for_status(self, resp: httpx.Response, url: str, body: dict[str, Any], text: str) -> None:
        status = resp.status_code
        if status == 400:
            try:  # look at the error's message/param only: some servers echo the whole request body
                err = json.loads(text).get("error")
                text_400 = f"{err.get('message')} {err.get('param')}" if isinstance(err, dict) else str(err)
            except (ValueError, AttributeError):
                text_400 = text
            for field in OPTIONAL_FIELDS:
                if field in body and field in text_400.lower():
                    raise _Rejected(field)
        msg = f"HTTP {status} from {url}: {_snippet(text) or resp.reason_phrase}"
        if status == 429 or status >= 500:
            raise _Retryable(msg, retry_after_s(resp.headers.get("retry-after")))
        raise _Fatal(msg)

    @staticmethod
    def _sse_data(resp: httpx.Response) -> Any:
        for line in resp.iter_lines():
            if not line.startswith("data:"):
                continue  # blank separators, comments (':'), event:/id:/retry: fields
            data = line[5:].strip()
            if data == "[DONE]":
                return
            if data:
                yield data


class _StreamState:
    """Accumulates text, per-token times, logprobs, usage and finish reason from chunks."""

    def __init__(self, chat: bool):
        self.chat = chat
        self.parts: list[str] = []
        self.times: list[float] = []
        self.logprobs: list[float] = []
        self.t_first: float | None = None
        self.usage: dict[str, Any] | None = None
        self.finish: str | None = None

    def add(self, chunk: dict[str, Any], now: float) -> None:
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        choices = chunk.get("choices") or []
        if not choices or not isinstance(choices[0], dict):
            return
        choice = choices[0]
        if self.chat:
            piece = (choice.get("delta") or choice.get("message") or {}).get("content") or ""
        else:
            piece = choice.get("text") or ""
        lp = choice.get("logprobs") or {}  # chat: content[i].logprob; completions: token_logprobs[i]
        lps = [t.get("logprob") for t in lp.get("content") or []] or lp.get("token_logprobs") or []
        lps = [float(x) for x in lps if isinstance(x, (int, float))]
        if piece:
            self.parts.append(piece)
            if self.t_first is None:
                self.t_first = now
        if lps:
            self.logprobs.extend(lps)
            self.times.extend([now] * len(lps))
        elif piece:
            self.times.append(now)
        if choice.get("finish_reason"):
            self.finish = choice["finish_reason"]

    def fill(self, gen: Generation) -> None:
        gen.text = "".join(self.parts)
        gen.t_first_token = self.t_first
        gen.t_prefill_end = None  # HTTP cannot separate prefill from the first token
        gen.token_times = self.times
        gen.token_logprobs = self.logprobs or None
        gen.finish_reason = self.finish
        u = self.usage
        if u and u.get("completion_tokens") is not None:
            gen.prompt_tokens = int(u.get("prompt_tokens") or 0)
            gen.completion_tokens = int(u["completion_tokens"])
            cached = (u.get("prompt_tokens_details") or {}).get("cached_tokens")
            gen.cached_tokens = int(cached) if cached is not None else None
        else:
            gen.completion_tokens = len(self.logprobs) if self.logprobs else len(self.parts)
            gen.prompt_tokens, gen.extra["usage_estimated"] = 0, True
