"""The OpenAI-compatible HTTP backend against a scripted fault server, and against a real llama-cpp-python server."""

from __future__ import annotations

import email.utils
import json
import math
import os
import pickle
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.backends.base import Generation, Request, create_backend
from bench.backends.openai_http import (
    BACKOFF_CAP_S,
    OpenAIBackend,
    backoff_s,
    retry_after_s,
)
from bench.config.suite import OpenAIBackendConfig
from bench.errors import ModelError

try:
    from tests.servers.fault_server import TOKENS, FaultServer
except ImportError:  # tests/ itself on sys.path (pytest's rootdir insertion)
    from servers.fault_server import TOKENS, FaultServer

TEXT = "".join(TOKENS)


@pytest.fixture
def server():
    srv = FaultServer().start()
    yield srv
    srv.stop()


def make(srv: FaultServer, **kw) -> OpenAIBackend:
    fields = dict(kind="openai", name="fault", base_url=srv.url, model="fault-model", locality="local",
                  timeout_s=2.0, max_retries=3, concurrency=4)
    fields.update(kw)
    backend = OpenAIBackend(OpenAIBackendConfig(**fields))
    backend.sleeps = []  # type: ignore[attr-defined]
    backend._sleep = backend.sleeps.append  # type: ignore[attr-defined]
    return backend


def req(i: int = 0, **kw) -> Request:
    fields = dict(id=f"r{i}", messages=[{"role": "user", "content": f"say hello {i}"}], prompt=f"Say hello {i}:",
                  max_tokens=16, temperature=0.0, seed=7)
    fields.update(kw)
    return Request(**fields)


def run_one(backend: OpenAIBackend, r: Request | None = None) -> Generation:
    backend.load()
    try:
        [gen] = backend.generate([r or req()])
    finally:
        backend.close()
    return gen


# ---------------------------------------------------------------- the happy path


def test_chat_stream_parsed(server):
    gen = run_one(make(server))
    assert gen.error is None and gen.retries == 0
    assert gen.text == TEXT
    assert gen.finish_reason == "stop"
    assert (gen.prompt_tokens, gen.completion_tokens, gen.cached_tokens) == (11, len(TOKENS), 3)
    assert "usage_estimated" not in gen.extra
    assert gen.token_logprobs == pytest.approx([-0.25 * i for i in range(len(TOKENS))])
    assert all(isinstance(x, float) for x in gen.token_logprobs)
    assert len(gen.token_times) == len(TOKENS)
    assert gen.token_times == sorted(gen.token_times)
    assert gen.t_prefill_end is None
    assert 0 <= gen.t_first_token <= gen.token_times[0] <= gen.t_end
    assert abs(gen.t_start - time.time()) < 30
    assert gen.extra["wall_s"] >= gen.t_end

    [post] = server.posts()
    assert post["path"] == "/v1/chat/completions"
    body = post["json"]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["logprobs"] is True and body["top_logprobs"] == 1
    assert (body["max_tokens"], body["temperature"], body["seed"]) == (16, 0.0, 7)
    assert body["messages"] == req().messages and body["model"] == "fault-model"
    assert "stop" not in body and "authorization" not in post["headers"]


def test_stop_sent_and_max_tokens_length(server):
    gen = run_one(make(server), req(stop=["\n\n", "END"], max_tokens=3))
    assert server.posts()[0]["json"]["stop"] == ["\n\n", "END"]
    assert gen.text == "".join(TOKENS[:3]) and gen.finish_reason == "length" and gen.completion_tokens == 3


def test_completions_mode(server):
    gen = run_one(make(server, chat=False))
    [post] = server.posts()
    assert post["path"] == "/v1/completions"
    assert post["json"]["prompt"] == req().prompt and "messages" not in post["json"]
    assert post["json"]["logprobs"] == 1 and "top_logprobs" not in post["json"]
    assert gen.text == TEXT and gen.completion_tokens == len(TOKENS)
    assert gen.token_logprobs == pytest.approx([-0.25 * i for i in range(len(TOKENS))])


def test_logprobs_off_in_config(server):
    gen = run_one(make(server, logprobs=False))
    assert "logprobs" not in server.posts()[0]["json"]
    assert gen.token_logprobs is None
    assert len(gen.token_times) == len(TOKENS)  # one time per text-bearing chunk


def test_usage_estimated_without_usage_chunk():
    with FaultServer(usage=False) as srv:
        gen = run_one(make(srv))
        assert gen.prompt_tokens == 0 and gen.completion_tokens == len(TOKENS)
        assert gen.cached_tokens is None and gen.extra["usage_estimated"] is True
        gen = run_one(make(srv, logprobs=False))
        assert gen.completion_tokens == len(TOKENS) and gen.extra["usage_estimated"] is True


def test_results_in_order_and_on_result_called(server):
    server.delay_s = 0.02
    backend = make(server, concurrency=3)
    seen = []
    backend.load()
    gens = backend.generate([req(i) for i in range(7)], on_result=lambda g: seen.append(g.request_id))
    backend.close()
    assert [g.request_id for g in gens] == [f"r{i}" for i in range(7)]
    assert sorted(seen) == sorted(g.request_id for g in gens)
    assert all(g.error is None and g.text == TEXT for g in gens)
    assert backend.generate([]) == []


def test_registry_builds_the_backend(server):
    cfg = OpenAIBackendConfig(kind="openai", name="x", base_url=server.url, model="m", concurrency=5)
    backend = create_backend(cfg)
    assert isinstance(backend, OpenAIBackend)
    assert (backend.kind, backend.locality, backend.concurrency) == ("openai", "cloud", 5)
    info = backend.load()
    backend.close()
    assert info.chat is True and info.load_s >= 0 and info.details["model_listed"] is False


# ---------------------------------------------------------------- faults and retries


def test_429_then_ok(server):
    server.push("429")
    gen = run_one(make(server))
    assert gen.error is None and gen.text == TEXT and gen.retries == 1
    assert gen.extra["attempts"] == 2 and "429" in gen.extra["attempt_errors"][0]
    assert gen.extra["wall_s"] >= gen.t_end
    assert len(server.posts()) == 2


def test_retry_after_zero_honoured(server):
    server.push("429", "429")
    backend = make(server)
    gen = run_one(backend)
    assert gen.retries == 2 and backend.sleeps == [0.0, 0.0]


def test_500_500_ok(server):
    server.push("500", "500")
    backend = make(server)
    gen = run_one(backend)
    assert gen.error is None and gen.retries == 2 and gen.text == TEXT
    assert len(backend.sleeps) == 2
    assert 0 <= backend.sleeps[0] <= 0.5 and 0 <= backend.sleeps[1] <= 1.0


def test_stall_is_retried():
    with FaultServer("stall", stall_s=5.0) as srv:
        t0 = time.perf_counter()
        gen = run_one(make(srv, timeout_s=0.4))
        assert time.perf_counter() - t0 < 4.0
    assert gen.error is None and gen.retries == 1 and gen.text == TEXT
    assert "stalled" in gen.extra["attempt_errors"][0]
    assert gen.extra["wall_s"] >= 0.4 > gen.t_end  # timing is from the successful attempt's start


def test_malformed_chunk_is_retried(server):
    server.push("malformed")
    gen = run_one(make(server))
    assert gen.error is None and gen.retries == 1 and gen.text == TEXT
    assert "malformed JSON" in gen.extra["attempt_errors"][0]


def test_dropped_connection_is_retried(server):
    server.push("disconnect")
    gen = run_one(make(server))
    assert gen.error is None and gen.retries == 1 and gen.text == TEXT


def test_stream_without_finish_reason_is_retried(server):
    server.push("truncated")
    gen = run_one(make(server))
    assert gen.error is None and gen.retries == 1 and gen.text == TEXT
    assert "without a finish_reason" in gen.extra["attempt_errors"][0]


def test_persistent_500_gives_up_without_raising(server):
    server.push(*["500"] * 10)
    backend = make(server, max_retries=2)
    gen = run_one(backend)
    assert gen.error is not None and "500" in gen.error and "internal server error" in gen.error
    assert "attempt 3 of 3" in gen.error
    assert gen.retries == 2 and len(server.posts()) == 3 and len(backend.sleeps) == 2
    assert gen.text == "" and gen.extra["attempts"] == 3


def test_400_not_retried(server):
    server.push("400")
    backend = make(server)
    gen = run_one(backend)
    assert gen.error is not None and "400" in gen.error and "max_tokens is too large" in gen.error
    assert "not retried" in gen.error
    assert gen.retries == 0 and len(server.posts()) == 1 and backend.sleeps == []


def test_one_failure_does_not_sink_the_batch(server):
    server.push("400")
    backend = make(server, concurrency=1)
    backend.load()
    gens = backend.generate([req(i) for i in range(3)])
    backend.close()
    assert gens[0].error and all(g.error is None for g in gens[1:])


def test_logprobs_rejected_then_dropped_for_the_run():
    with FaultServer(reject_logprobs=True) as srv:
        backend = make(srv)
        backend.load()
        gens = backend.generate([req(0)])
        gens += backend.generate([req(1)])
        backend.close()
        bodies = [p["json"] for p in srv.posts()]
    assert all(g.error is None and g.text == TEXT and g.token_logprobs is None and g.retries == 0 for g in gens)
    assert [("logprobs" in b) for b in bodies] == [True, False, False]


def test_concurrency_cap():
    with FaultServer(delay_s=0.15) as srv:
        backend = make(srv, concurrency=2)
        backend.load()
        gens = backend.generate([req(i) for i in range(6)])
        backend.close()
        assert srv.max_in_flight == 2
    assert all(g.error is None for g in gens)


def test_backoff_and_retry_after_helpers():
    assert backoff_s(0, rand=lambda: 1.0) == 0.5
    assert backoff_s(3, rand=lambda: 1.0) == 4.0
    assert backoff_s(30, rand=lambda: 1.0) == BACKOFF_CAP_S
    assert backoff_s(2, rand=lambda: 0.0) == 0.0
    assert backoff_s(5, retry_after=7.0) == 7.0
    assert retry_after_s("3") == 3.0 and retry_after_s("1e9") == 60.0
    assert retry_after_s(None) is None and retry_after_s("soon") is None
    now = time.time()
    assert retry_after_s(email.utils.formatdate(now + 10, usegmt=True), now=now) == pytest.approx(10, abs=1)
    assert retry_after_s(email.utils.formatdate(now - 10, usegmt=True), now=now) == 0.0


# ---------------------------------------------------------------- the key and load


def test_key_from_env_sent_and_never_kept_visibly(server, monkeypatch):
    secret = "sk-test-very-secret-0123456789"
    monkeypatch.setenv("BENCH_FAULT_KEY", secret)
    backend = make(server, api_key_env="BENCH_FAULT_KEY")
    info = backend.load()
    server.push("400")
    gens = backend.generate([req(0), req(1)])
    assert secret not in repr(backend) and secret not in str(backend)
    assert secret not in repr(vars(backend)) and secret not in json.dumps(vars(backend), default=str)
    assert secret not in repr(info) and all(secret not in json.dumps(g.to_dict()) for g in gens)
    with pytest.raises(TypeError):
        pickle.dumps(backend._key)
    backend.close()
    assert {r["headers"].get("authorization") for r in server.requests} == {f"Bearer {secret}"}


def test_missing_key_env_is_a_model_error(server, monkeypatch):
    monkeypatch.delenv("BENCH_FAULT_MISSING_KEY", raising=False)
    with pytest.raises(ModelError, match="BENCH_FAULT_MISSING_KEY"):
        make(server, api_key_env="BENCH_FAULT_MISSING_KEY").load()
    assert server.requests == []


def test_connection_refused_on_load():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    backend = OpenAIBackend(OpenAIBackendConfig(kind="openai", name="down", base_url=f"http://127.0.0.1:{port}/v1",
                                                model="m"))
    with pytest.raises(ModelError) as err:
        backend.load()
    assert f"http://127.0.0.1:{port}/v1/models" in str(err.value)


def test_models_404_tolerated_and_401_rejected(monkeypatch):
    with FaultServer(models_status=404) as srv:
        info = make(srv).load()
        assert info.details["models_status"] == 404
    monkeypatch.setenv("BENCH_FAULT_KEY", "sk-wrong-key-abcdef")
    with FaultServer(models_status=401) as srv:
        with pytest.raises(ModelError, match="401") as err:
            make(srv, api_key_env="BENCH_FAULT_KEY").load()
        assert "sk-wrong-key-abcdef" not in str(err.value)


# ---------------------------------------------------------------- a real server


def _gguf() -> str:
    why = []
    try:
        from bench.models import resolve_model

        return str(resolve_model("smollm2-135m-instruct", quiet=True).path)
    except Exception as exc:  # bench.models not there yet, or the model cannot be resolved here
        why.append(f"bench.models.resolve_model failed: {type(exc).__name__}: {exc}")
    env = os.environ.get("BENCH_TEST_GGUF")
    if env and Path(env).is_file():
        return env
    why.append(f"BENCH_TEST_GGUF={env!r} is not a file")
    pytest.fail("no GGUF model for the integration test: " + "; ".join(why))


@pytest.fixture
def llama_server(tmp_path):
    pytest.importorskip("llama_cpp.server", reason="llama-cpp-python[server] is not installed")
    model = _gguf()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(tmp_path / "server.log", "w+b")
    cmd = [sys.executable, "-m", "bench.backends.llamacpp_server", "--model", model, "--model_alias", "smollm2",
           "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--n_threads", "2", "--chat_format", "chatml",
           "--interrupt_requests", "False"]  # by default a new request cuts the running stream short
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)

    def tail() -> str:
        log.flush()
        return (tmp_path / "server.log").read_text(errors="replace")[-3000:]

    import httpx

    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 60
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"llama_cpp.server exited with {proc.returncode}:\n{tail()}")
            try:
                if httpx.get(f"{url}/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"llama_cpp.server did not answer {url}/models within 60 s:\n{tail()}")
            time.sleep(0.25)
        yield url, proc, tail
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


@pytest.mark.integration
def test_real_llama_cpp_server(llama_server):
    url, proc, tail = llama_server
    cfg = OpenAIBackendConfig(kind="openai", name="llama-cpp-server", base_url=url, model="smollm2",
                              locality="local", concurrency=2, timeout_s=120, max_retries=1, logprobs=True)
    backend = OpenAIBackend(cfg)
    info = backend.load()
    assert info.details["models_status"] == 200 and info.details["model_listed"] is True
    questions = ["What is the capital of France?", "Name a colour.", "Say hello."]
    requests = [Request(id=f"q{i}", messages=[{"role": "user", "content": q}], prompt=q, max_tokens=16)
                for i, q in enumerate(questions)]
    try:
        gens = backend.generate(requests)
    finally:
        backend.close()
    if proc.poll() is not None:
        why = (" (SIGILL: this llama.cpp build uses CPU instructions the machine cannot run, e.g. AMX in a VM;"
               " rebuild llama-cpp-python with CMAKE_ARGS='-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON"
               " -DGGML_F16C=ON')"
               if proc.returncode == -signal.SIGILL else "")
        pytest.fail(f"llama_cpp.server died with exit code {proc.returncode}{why} during the requests:\n{tail()}")
    assert [g.request_id for g in gens] == ["q0", "q1", "q2"]
    for g in gens:
        assert g.error is None, g.error
        assert g.text.strip()
        assert g.completion_tokens > 0
        assert g.t_first_token is not None and 0 <= g.t_first_token <= g.t_end
        assert g.token_times and g.token_times == sorted(g.token_times)
        if g.token_logprobs is not None:
            assert all(math.isfinite(x) and x <= 0 for x in g.token_logprobs)


@pytest.mark.integration
def test_bench_run_with_an_http_cell_end_to_end(llama_server, tmp_path):
    """`bench run` over a real server: the HTTP cell is measured, scored and priced from the price table."""
    from bench.cli import main
    from bench.results.store import find_runs
    from tests.conftest import write_suite

    url, proc, tail = llama_server
    body = f"""
name: http-e2e
task: {{kind: classify, labels: [billing, technical]}}
dataset: {{path: data.jsonl, input_fields: [text], reference_field: label}}
prompt:
  system: Classify the ticket as billing or technical. Answer with the label only.
  template: "Ticket: {{text}}"
target: 0.5
generation: {{max_tokens: 8}}
matrix:
  backends:
    - {{kind: openai, name: local-server, base_url: "{url}", model: smollm2, locality: on-prem,
        price: gpt-4o-mini, concurrency: 1, max_retries: 1}}
"""
    suite = write_suite(tmp_path / "s", body)
    code = main(["run", str(suite), "--limit", "3", "--results", str(tmp_path / "r")])
    assert code == 0, tail()
    rows = find_runs([tmp_path / "r"])[0].samples()
    assert len(rows) == 3
    for r in rows:
        assert r["error"] is None and r["cell"]["backend"] == "openai" and r["locality"] == "on-prem"
        assert r["cost_usd"] is not None and r["cost_usd"] > 0
        assert r["ttft_s"] is not None and r["ttft_s"] <= r["latency_s"]
        assert r["confidence"] is not None
