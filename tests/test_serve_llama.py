"""`bench serve` in front of two real llama-cpp-python servers on 127.0.0.1, driven by the official `openai` client.

Both tiers serve the small default model (smollm2-135m-instruct) so the test fits a 2-core CI machine; they are two
tiers all the same: two servers, two cells, the cheap one's calibrated accept rule (confidence >= threshold) decides
per request whether the strong one is asked. The routing is the one `tests/test_serve.py` calibrates on fake tiers,
with each tier's backend pointed at one of the servers. The test checks answers, the escalation fields against the
accept rule, the /metrics counts against the request log, then kills the cheap upstream while requests are in flight
(they escalate: 200 from the strong tier) and the strong one (502 with the reason), each within a bound.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="bench serve needs the serve extra: pip install -e '.[serve]'")
pytest.importorskip("prometheus_client", reason="bench serve needs the serve extra: pip install -e '.[serve]'")

from tests.servers.processes import free_port, running_process  # noqa: E402
from tests.test_openai_backend import _gguf  # noqa: E402
from tests.test_serve import routing  # noqa: E402, F401  (the fixture)

pytestmark = pytest.mark.integration


def _llama(tmp: Path, name: str):
    pytest.importorskip("llama_cpp.server", reason="llama-cpp-python[server] is not installed")
    port = free_port()
    cmd = [sys.executable, "-m", "bench.backends.llamacpp_server", "--model", _gguf(), "--model_alias", "smollm2",
           "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "1024", "--n_threads", "1",
           "--chat_format", "chatml", "--interrupt_requests", "False"]
    return running_process(cmd, f"http://127.0.0.1:{port}/v1/models", tmp / f"{name}.log"), f"http://127.0.0.1:{port}/v1"


def _metric(text: str, name: str, **labels: str) -> float:
    """The sum of a metric's samples whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_serve_in_front_of_two_llama_servers(routing: Path, tmp_path: Path) -> None:  # noqa: F811
    openai = pytest.importorskip("openai", reason="the openai client is not installed")
    from bench.router import Router

    cheap_cm, cheap_url = _llama(tmp_path, "cheap")
    strong_cm, strong_url = _llama(tmp_path, "strong")
    with cheap_cm as cheap, strong_cm as strong:
        doc = json.loads(routing.read_text())
        tiers = doc["tasks"]["route-fake"]["tiers"]
        for tier, url in zip(tiers, (cheap_url, strong_url)):  # cheapest first
            tier["runtime"]["backend"] = {"kind": "openai", "name": tier["cell"], "base_url": url, "model": "smollm2",
                                          "locality": "local", "max_retries": 0, "timeout_s": 60.0, "logprobs": True}
        edited = tmp_path / "routing.json"
        edited.write_text(json.dumps(doc))
        cells = [t["cell"] for t in tiers]
        port, log = free_port(), tmp_path / "requests.jsonl"
        serve_cmd = [sys.executable, "-m", "bench", "serve", str(edited), "--host", "127.0.0.1", "--port", str(port),
                     "--log", str(log), "--timeout", "90"]
        with running_process(serve_cmd, f"http://127.0.0.1:{port}/health", tmp_path / "serve.log") as serve:
            client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0,
                                   timeout=120)
            assert [m.id for m in client.models.list().data] == ["route-fake"]
            router = Router.load(edited)
            texts = ["my invoice is charged twice", "the app crashes on start", "refund my payment",
                     "login page shows error 500"]
            for text in texts:
                raw = client.chat.completions.with_raw_response.create(
                    model="route-fake", messages=[{"role": "user", "content": json.dumps({"text": text})}])
                reply, ext = raw.parse(), raw.parse().model_extra["bench"]
                assert reply.choices[0].message.content.strip()  # a real model's answer
                assert ext["calibrated"] is True and ext["tier"] == raw.headers["x-bench-tier"] == ext["tiers_tried"][-1]
                assert ext["escalations"] == len(ext["tiers_tried"]) - 1 == int(raw.headers["x-bench-escalations"])
                assert ext["tiers_tried"] == cells[:len(ext["tiers_tried"])]
            lines = [json.loads(x) for x in log.read_text().splitlines()]
            assert len(lines) == len(texts)
            for line in lines:  # every escalation is the calibrated accept rule refusing the cheap answer
                for step in line["steps"][:-1]:
                    assert step["error"] is None and step["accepted"] is False
                    assert not router.accept("route-fake", step["cell"], step["confidence"], step["verified"])
                first = line["steps"][0]
                assert first["accepted"] == router.accept("route-fake", first["cell"], first["confidence"],
                                                          first["verified"])
            import httpx

            metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
            assert _metric(metrics, "bench_requests_total", task="route-fake", calibrated="true") == len(texts)
            for cell in cells:
                answered = sum(line["tier"] == cell for line in lines)
                called = sum(cell in line["tiers_tried"] for line in lines)
                assert _metric(metrics, "bench_answers_total", tier=cell) == answered
                assert _metric(metrics, "bench_tier_requests_total", tier=cell) == called
            assert _metric(metrics, "bench_escalations_total") == sum(line["escalations"] for line in lines)
            assert _metric(metrics, "bench_tokens_total", kind="completion") == sum(
                s["completion_tokens"] or 0 for line in lines for s in line["steps"])

            # the cheap upstream dies while requests are in flight: they escalate to the strong one
            results: list[tuple[int, dict, float]] = []

            def ask(i: int) -> None:
                t0 = time.monotonic()
                try:
                    raw = client.chat.completions.with_raw_response.create(
                        model="route-fake", messages=[{"role": "user", "content": json.dumps(
                            {"text": f"ticket {i}: card declined"})}])
                    results.append((200, raw.parse().model_extra["bench"], time.monotonic() - t0))
                except openai.APIStatusError as exc:
                    results.append((exc.status_code, exc.body or {}, time.monotonic() - t0))

            threads = [threading.Thread(target=ask, args=(i,)) for i in range(4)]
            for th in threads:
                th.start()
            time.sleep(0.5)
            cheap.send_signal(signal.SIGKILL)
            cheap.wait(timeout=15)
            for th in threads:
                th.join(timeout=150)
            assert not any(th.is_alive() for th in threads), "a request hung"
            assert len(results) == 4 and all(status == 200 for status, _, _ in results), results
            ask(99)  # sent after the kill: the cheap tier fails at once and the strong one answers
            status, ext, _ = results[-1]
            assert status == 200 and ext["tier"] == cells[1] and ext["tiers_tried"] == cells
            assert ext["escalations"] == 1 and cells[0] in ext["tier_errors"]

            # then the strong one: 502 with the reason, well within the timeout
            strong.send_signal(signal.SIGKILL)
            strong.wait(timeout=15)
            ask(100)
            status, body, took = results[-1]
            assert status == 502 and took < 60, (status, body, took)
            assert "every tier failed" in json.dumps(body)
            metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
            assert _metric(metrics, "bench_errors_total", kind="upstream_error") == 1
            assert _metric(metrics, "bench_tier_errors_total", tier=cells[0], kind="upstream_error") >= 2
            assert serve.poll() is None  # the service outlived both upstreams
            router.close()


def test_an_in_process_tier_is_served_batched_at_the_concurrency_it_was_priced_at(tmp_path: Path) -> None:
    """`bench run --parallel 4` on the embedded default, `bench thresholds`, then `bench serve`'s app with eight
    requests at once: the tier is priced at 4 in flight, loaded with 4 sequences, its calls decode side by side, and
    the answers are the ones the run stored."""
    import asyncio

    import httpx

    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    from bench.cli import main
    from bench.config import load_suite
    from bench.data import load_samples
    from bench.models import is_cached
    from bench.results.store import find_runs
    from bench.runner import run_suite
    from bench.serve.app import create_app
    from tests.conftest import write_suite
    from tests.test_router import REAL_TIERS, TICKETS, _profile

    if not is_cached("smollm2-135m-instruct"):
        pytest.skip("the embedded default is not cached: run 'bench models pull smollm2-135m-instruct'")
    rows = [{"id": f"r{i:02d}", "text": text, "label": label} for i, (text, label) in enumerate(TICKETS)]
    one_tier = REAL_TIERS.replace("quantizations: [Q4_1, Q8_0]", "quantizations: [Q4_1]")
    suite = load_suite(write_suite(tmp_path / "suite", one_tier, rows))
    outcome = run_suite(suite, limit=16, isolation="inline", results_dir=tmp_path / "results", quiet=True,
                        hardware=_profile(), parallel=4)
    assert not outcome.errored_cells, outcome.summary
    out = tmp_path / "routing.json"
    assert main(["thresholds", str(tmp_path / "results"), "-o", str(out)]) == 0
    tier = json.loads(out.read_text())["tasks"]["route-real"]["tiers"][0]
    assert tier["concurrency"] == tier["main_concurrency"] == 4
    stored = {r["sample_id"]: r["output"] for r in find_runs([tmp_path / "results"])[0].samples()}
    samples = load_samples(suite, 16)[:8]

    app = create_app(out)
    cell = tier["cell"]
    assert app.state.gates.limits[cell] == 4 and app.state.router.parallel[cell] == 4
    assert _metric(app.state.metrics.render().decode(), "bench_tier_concurrency", tier=cell) == 4

    async def drive() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://serve", timeout=120) as c:
            return await asyncio.gather(*[c.post("/v1/chat/completions", json={
                "model": "route-real", "bench_fields": {"text": s.fields["text"]}}) for s in samples])

    try:
        replies = asyncio.run(drive())
        assert [r.status_code for r in replies] == [200] * len(samples), [r.text for r in replies]
        backend = app.state.router._backends[cell]
        assert backend.parallel == 4
        sizes = backend._scheduler.step_sizes
        assert max(sizes) > 1, sizes  # the calls decoded side by side in one context
        answers = [r.json()["choices"][0]["message"]["content"] for r in replies]
        changed = [s.id for s, a in zip(samples, answers) if a != stored[s.id]]
        assert len(changed) <= 1, (changed, answers)  # a near-tie may flip with the batch's make-up
    finally:
        app.state.gates.close()
        app.state.router.close()


def test_a_batched_call_given_up_at_the_tier_timeout_stops_decoding(tmp_path: Path) -> None:
    """Extract on the embedded default at `--parallel 4`, served with a 2.5 s tier timeout (the prompt's shared
    prefix cached by a warm-up request), shorter than the four answers take together: each call is given up and
    leaves the batch, and the engine decodes a small part of what the answers took in the run (28 of 402 tokens
    on 2026-12-04; 401 when the router did not tell the tier)."""
    import asyncio

    import httpx

    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    from bench.cli import main
    from bench.config import load_suite
    from bench.data import load_samples
    from bench.models import is_cached
    from bench.results.store import find_runs
    from bench.runner import run_suite
    from bench.serve.app import create_app
    from tests.conftest import REPO

    if not is_cached("smollm2-135m-instruct"):
        pytest.skip("the embedded default is not cached: run 'bench models pull smollm2-135m-instruct'")
    suite = load_suite(REPO / "suites" / "extract.yaml")
    outcome = run_suite(suite, limit=4, isolation="inline", results_dir=tmp_path / "results", quiet=True,
                        parallel=4)
    assert not outcome.errored_cells
    out = tmp_path / "routing.json"
    assert main(["thresholds", str(tmp_path / "results"), "-o", str(out)]) in (0, 1)
    rows = [r for r in find_runs([tmp_path / "results"])[0].samples() if r["concurrency"] == 4]
    answered = sum(r["completion_tokens"] for r in rows)
    assert len(rows) == 4 and answered >= 4 * 20  # answers long enough to give up on

    texts = {s.id: s.fields["text"] for s in load_samples(suite, 4)}
    app = create_app(out, tier_timeout_s=2.5, timeout_s=60)
    cell = json.loads(out.read_text())["tasks"]["extract"]["tiers"][0]["cell"]

    async def drive() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://serve", timeout=120) as c:
            return await asyncio.gather(*[c.post("/v1/chat/completions", json={
                "model": "extract", "bench_fields": {"text": texts[r["sample_id"]]}}) for r in rows])

    try:
        router = app.state.router
        backend, _ = router._backend(router._tier("extract", cell))  # loaded first: the 2.5 s are the answers'
        router.run("extract", {"text": "Warm-up: the prompt's shared prefix is cached in a slot."})
        warm = sum(backend._scheduler.step_sizes)
        replies = asyncio.run(drive())
        assert all(r.status_code == 502 and "within 2.5 s" in r.text for r in replies), [r.text for r in replies]
        deadline = time.monotonic() + 120
        while (backend._calls._running or backend._calls._waiting) and time.monotonic() < deadline:
            time.sleep(0.05)  # until the tier is idle: the calls given up have left (or, uncancelled, finished)
        decoded = sum(backend._scheduler.step_sizes) - warm
        print(f"decoded {decoded} sequence-steps of the {answered} tokens the run answered")
        assert decoded < answered / 2, (decoded, answered)
    finally:
        app.state.gates.close()
        app.state.router.close()
