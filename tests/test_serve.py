"""`bench serve`: the calibrated cascade behind an OpenAI-compatible API, its metrics and its errors.

In-process tests use FastAPI's TestClient over fake tiers; one test starts `bench serve` as a real server on
127.0.0.1 and drives it with the official `openai` client."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="bench serve needs the serve extra: pip install -e '.[serve]'")
pytest.importorskip("prometheus_client", reason="bench serve needs the serve extra: pip install -e '.[serve]'")

from tests.conftest import write_suite  # noqa: E402
from tests.servers.processes import free_port, running_process  # noqa: E402
from tests.test_router import TWO_FAKE_TIERS, _profile  # noqa: E402


@pytest.fixture(scope="module")
def routing(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from bench.config import load_suite
    from bench.runner import run_suite
    from bench.thresholds.document import build, write
    from bench.thresholds.gather import gather

    tmp = tmp_path_factory.mktemp("serve")
    rows = [{"id": f"t{i:02d}", "text": f"ticket number {i}", "label": "billing" if i % 3 else "technical"}
            for i in range(160)]
    suite = load_suite(write_suite(tmp / "suite", TWO_FAKE_TIERS, rows))
    run_suite(suite, results_dir=tmp / "results", isolation="inline", quiet=True, hardware=_profile())
    path = write(build(gather([tmp / "results"])), tmp / "routing.json")
    doc = json.loads(path.read_text())
    assert len(doc["tasks"]["route-fake"]["policy"]["chain"]) == 2  # a real cascade to serve
    return path


@pytest.fixture
def client(routing: Path, tmp_path: Path):
    from fastapi.testclient import TestClient

    from bench.serve.app import create_app

    app = create_app(routing, log_path=tmp_path / "requests.jsonl")
    with TestClient(app) as c:
        c.log_path = tmp_path / "requests.jsonl"
        yield c


def _ask(client, text: str, **extra):
    return client.post("/v1/chat/completions", json={"model": "route-fake",
                                                     "messages": [{"role": "user", "content": text}], **extra})


def test_answers_name_the_tier_and_match_the_router(client, routing: Path) -> None:
    from bench.router import Router

    router = Router.load(routing)
    seen_escalation = False
    for i in range(40):
        fields = {"text": f"ticket number {i}"}
        r = _ask(client, json.dumps(fields))
        assert r.status_code == 200, r.text
        doc = r.json()
        ext = doc["bench"]
        expected = router.run("route-fake", fields)
        assert doc["choices"][0]["message"]["content"] == expected["answer"]
        assert ext["tier"] == expected["cell"] == r.headers["X-Bench-Tier"]
        assert ext["tiers_tried"] == expected["path"] and ext["escalations"] == int(r.headers["X-Bench-Escalations"])
        assert ext["calibrated"] is True and set(ext["confidence"]) == set(ext["tiers_tried"])
        seen_escalation |= ext["escalations"] > 0
    router.close()
    assert seen_escalation
    metrics = client.get("/metrics").text
    assert 'bench_requests_total{calibrated="true",task="route-fake"} 40.0' in metrics
    answers = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                  if line.startswith("bench_answers_total{"))
    assert answers == 40
    lines = client.log_path.read_text().splitlines()
    assert len(lines) == 40 and all(json.loads(line)["task"] == "route-fake" for line in lines)


def test_fields_in_the_body_and_free_text_outside_calibration(client) -> None:
    r = client.post("/v1/chat/completions", json={"model": "route-fake", "messages": [{"role": "user",
                                                  "content": "ignored"}], "bench_fields": {"text": "ticket 3"}})
    assert r.status_code == 200 and r.json()["bench"]["calibrated"] is True
    r = _ask(client, "my invoice is wrong, please help")
    assert r.status_code == 200 and r.json()["bench"]["calibrated"] is False
    assert r.headers["X-Bench-Calibrated"] == "false"
    assert 'bench_requests_total{calibrated="false",task="route-fake"} 1.0' in client.get("/metrics").text


def test_bad_requests_are_clear_4xx(client) -> None:
    r = client.post("/v1/chat/completions", json={"model": "route-fak", "messages": [{"role": "user",
                                                                                      "content": "x"}]})
    assert r.status_code == 404 and "did you mean 'route-fake'" in r.json()["error"]["message"]
    assert client.post("/v1/chat/completions", content=b"{not json").status_code == 400
    assert client.post("/v1/chat/completions", json={"model": "route-fake"}).status_code == 400
    assert client.post("/v1/chat/completions", json={"model": "route-fake", "messages": "hi"}).status_code == 400
    assert client.post("/v1/chat/completions", json={"model": "route-fake", "messages": [{"role": "user",
                       "content": "x"}], "bench_fields": {"nope": 1}}).status_code == 400
    assert client.get("/v1/models").json()["data"][0]["id"] == "route-fake"
    assert client.get("/health").json()["status"] == "ok"
    assert 'bench_errors_total{kind="model_not_found",task="route-fak"} 1.0' in client.get("/metrics").text


@pytest.fixture(scope="module")
def served(routing: Path, tmp_path_factory: pytest.TempPathFactory):
    """`bench serve` over the fake routing as a real server on 127.0.0.1; yields its base URL."""
    port = free_port()
    cmd = [sys.executable, "-m", "bench", "serve", str(routing), "--host", "127.0.0.1", "--port", str(port)]
    with running_process(cmd, f"http://127.0.0.1:{port}/health", tmp_path_factory.mktemp("served") / "serve.log"):
        yield f"http://127.0.0.1:{port}/v1"


@pytest.mark.integration
def test_a_real_server_driven_by_the_openai_client(served: str) -> None:
    openai = pytest.importorskip("openai", reason="the openai client is not installed")
    client = openai.OpenAI(base_url=served, api_key="unused", max_retries=0, timeout=30)
    assert [m.id for m in client.models.list().data] == ["route-fake"]
    raw = client.chat.completions.with_raw_response.create(
        model="route-fake", messages=[{"role": "user", "content": json.dumps({"text": "ticket number 7"})}])
    reply = raw.parse()
    assert reply.choices[0].message.content and raw.headers["x-bench-tier"]
    assert reply.model_extra["bench"]["calibrated"] is True
    stream = client.chat.completions.create(model="route-fake", stream=True, messages=[
        {"role": "user", "content": json.dumps({"text": "ticket number 7"})}])
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == reply.choices[0].message.content
    assert chunks[-1].model_extra["bench"]["tier"] == raw.headers["x-bench-tier"]
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])


@pytest.mark.integration
def test_litellm_loads_the_export_and_answers_through_serve(routing: Path, served: str,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """LiteLLM, where installable, loads the exported config and completes one request through bench serve."""
    import yaml

    from bench.cli import main

    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no fetch of LiteLLM's price map from outside
    monkeypatch.setenv("BENCH_SERVE_KEY", "unused")
    litellm = pytest.importorskip("litellm", reason="LiteLLM is not installed (pip install litellm)")
    out = routing.parent / "routing-serve.json"
    assert main(["thresholds", str(routing.parent / "results"), "--format", "litellm", "--serve-url",
                 served, "-o", str(out)]) == 0
    config = yaml.safe_load(out.with_name("routing-serve.litellm.yaml").read_text())
    assert config["bench"]["mode"] == "bench-serve"
    assert [m["model_name"] for m in config["model_list"]] == ["route-fake"]
    router = litellm.Router(model_list=config["model_list"])
    reply = router.completion(model="route-fake", messages=[{"role": "user",
                                                              "content": json.dumps({"text": "ticket number 5"})}])
    assert reply.choices[0].message.content
    assert reply.model_extra["bench"]["calibrated"] is True  # the extension field passes through LiteLLM


def test_a_dead_upstream_escalates_then_502_and_never_hangs(routing: Path, tmp_path: Path) -> None:
    """Both tiers behind real OpenAI-compatible servers on 127.0.0.1; the cheap one dies: its requests escalate;
    then the other dies too: 502 with the reason, within the timeout."""
    from fastapi.testclient import TestClient

    from bench.serve.app import create_app

    try:
        from tests.servers.fault_server import FaultServer
    except ImportError:
        from servers.fault_server import FaultServer

    cheap, strong = FaultServer().start(), FaultServer().start()
    try:
        doc = json.loads(routing.read_text())
        tiers = doc["tasks"]["route-fake"]["tiers"]
        for tier, srv in zip(tiers, (cheap, strong)):  # cheapest first
            tier["runtime"]["backend"] = {"kind": "openai", "name": tier["cell"], "base_url": srv.url,
                                          "model": "m", "locality": "local", "max_retries": 0, "timeout_s": 2.0}
        edited = tmp_path / "routing.json"
        edited.write_text(json.dumps(doc))
        with TestClient(create_app(edited, timeout_s=20)) as client:
            ok = _ask(client, json.dumps({"text": "ticket 1"}))
            assert ok.status_code == 200  # the upstream's answer is no label: unverified, so it escalated
            assert ok.json()["bench"]["escalations"] == 1
            cheap.stop()
            t0 = time.monotonic()
            r = _ask(client, json.dumps({"text": "ticket 2"}))
            assert r.status_code == 200 and r.json()["bench"]["tier"] == tiers[1]["cell"]
            assert r.json()["bench"]["tiers_tried"] == [tiers[0]["cell"], tiers[1]["cell"]]
            strong.stop()
            r = _ask(client, json.dumps({"text": "ticket 3"}))
            assert r.status_code == 502 and "every tier failed" in r.json()["error"]["message"]
            assert time.monotonic() - t0 < 20
            assert 'bench_errors_total{kind="upstream_error",task="route-fake"} 1.0' in client.get("/metrics").text
    finally:
        for srv in (cheap, strong):
            try:
                srv.stop()
            except Exception:
                pass


@pytest.mark.parametrize("text, kinds", [
    ("Contact ana@example.com", ["email"]), ("due 2026-04-09, amount 450.00", []),
    ("call +44 20 7946 0958", ["phone"]), ("call (415) 555-0123", ["phone"]),
    ("card 4111 1111 1111 1111", ["card"]), ("card 4111 1111 1111 1112", []),
    ("IBAN GB82 WEST 1234 5698 7654 32", ["iban"]), ("IBAN GB82 WEST 1234 5698 7654 33", []),
    ("invoice INV-2026-0690, order 12345678", []),
])
def test_personal_data_rule(text: str, kinds: list[str]) -> None:
    from bench.routers.sensitivity import personal_data

    assert personal_data(text) == kinds
    assert personal_data("patient P-1234", [r"P-\d{4}"]) == ["pattern:0"]


def test_personal_data_stays_on_local_tiers_or_is_refused(routing: Path, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from bench.serve.app import create_app

    doc = json.loads(routing.read_text())
    tiers = doc["tasks"]["route-fake"]["tiers"]
    tiers[0]["locality"] = "cloud"  # the cheap tier becomes a cloud one
    edited = tmp_path / "routing.json"
    edited.write_text(json.dumps(doc))
    with TestClient(create_app(edited)) as client:
        plain = _ask(client, json.dumps({"text": "my order is late"}))
        assert plain.json()["bench"]["tiers_tried"][0] == tiers[0]["cell"]  # no personal data: the cascade
        r = _ask(client, json.dumps({"text": "my order is late, write to ana@example.com"}))
        assert r.status_code == 200 and r.json()["bench"]["tiers_tried"] == [tiers[1]["cell"]]
        assert r.json()["bench"]["personal_data"] == ["email"]
        assert 'bench_sensitive_requests_total{task="route-fake"} 1.0' in client.get("/metrics").text
    for tier in tiers:
        tier["locality"] = "cloud"
    edited.write_text(json.dumps(doc))
    with TestClient(create_app(edited)) as client:
        r = _ask(client, json.dumps({"text": "card 4111 1111 1111 1111 was charged twice"}))
        assert r.status_code == 422 and "local or on-prem" in r.json()["error"]["message"]
# ---------------------------------------------------------------- the cascade under limits, plan, stream, log


def _app(routing: Path, **kwargs):
    from bench.serve.app import create_app

    return create_app(routing, **kwargs)


def _slow_steps(app, delays: dict[int, float]):
    """Wrap the router's step: tier i (cheapest first) sleeps delays[i] s first; returns the peak calls at once
    per tier, as the wrapper saw them."""
    import threading

    router = app.state.router
    cells = [t.cell for t in router.doc.tasks["route-fake"].tiers]
    real, lock = router.step, threading.Lock()
    now = dict.fromkeys(cells, 0)
    peak = dict.fromkeys(cells, 0)

    def step(job, cell, **kw):
        with lock:
            now[cell] += 1
            peak[cell] = max(peak[cell], now[cell])
        try:
            time.sleep(delays.get(cells.index(cell), 0.0))
            return real(job, cell, **kw)
        finally:
            with lock:
                now[cell] -= 1

    router.step = step
    return cells, peak


def test_in_process_tiers_take_one_call_at_a_time(routing: Path) -> None:
    import asyncio

    import httpx

    app = _app(routing)
    cells, peak = _slow_steps(app, {0: 0.05, 1: 0.05})
    assert all(app.state.gates.limits[c] == 1 for c in cells)

    async def drive():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://serve") as c:
            return await asyncio.gather(*[c.post("/v1/chat/completions", json={
                "model": "route-fake", "bench_fields": {"text": f"ticket number {i}"}}) for i in range(8)])

    replies = asyncio.run(drive())
    assert [r.status_code for r in replies] == [200] * 8
    assert peak[cells[0]] == 1 and peak[cells[1]] <= 1


@pytest.mark.parametrize(("kind", "priced", "flag", "limit"), [
    ("llamacpp", 4, None, 4),      # a batching engine is served at the concurrency it was priced at
    ("llamacpp", 4, 2, 2),         # --concurrency overrides it
    ("llamacpp", None, None, 1),   # a routing file without the field: one at a time, as before
    ("llamacpp", 500, None, 64),   # no more sequences than a llama.cpp context is given
    ("fake", 8, None, 1),          # an in-process engine that cannot batch takes one call at a time
    ("openai", 1, None, 1),        # an upstream priced at 1 in flight (a latency budget) is not sent 4
    ("openai", None, None, 4),     # no field: the backend's own concurrency
])
def test_each_tier_is_served_at_the_concurrency_it_was_priced_at(routing: Path, kind: str, priced: int | None,
                                                                  flag: int | None, limit: int) -> None:
    from bench.router import Router
    from bench.serve.cascade import Gates

    doc = json.loads(routing.read_text())
    tier = doc["tasks"]["route-fake"]["tiers"][0]
    backend = {"llamacpp": {"kind": "llamacpp", "n_ctx": 512}, "fake": tier["runtime"]["backend"],
               "openai": {"kind": "openai", "name": "up", "base_url": "http://127.0.0.1:9/v1", "model": "m",
                          "concurrency": 4}}[kind]
    tier["runtime"]["backend"] = backend
    if priced is None:
        tier.pop("concurrency", None)
    else:
        tier["concurrency"] = priced
    router = Router(doc)
    gates = Gates(router, flag)
    try:
        assert gates.limits[tier["cell"]] == limit
        # a batching engine is loaded with as many sequences as the gate lets calls through; nothing else is
        assert router.parallel.get(tier["cell"]) == (limit if kind == "llamacpp" else None)
    finally:
        gates.close()


def test_a_slow_tier_escalates_at_the_tier_timeout_and_a_slow_cascade_is_a_504(routing: Path) -> None:
    from fastapi.testclient import TestClient

    app = _app(routing, tier_timeout_s=0.3, timeout_s=5)
    cells, _ = _slow_steps(app, {0: 2.0})
    with TestClient(app) as client:
        t0 = time.monotonic()
        r = _ask(client, json.dumps({"text": "ticket number 4"}))
        assert time.monotonic() - t0 < 1.8  # did not wait for the slow tier
        assert r.status_code == 200, r.text
        ext = r.json()["bench"]
        assert ext["tier"] == cells[1] and ext["tiers_tried"] == cells and ext["escalations"] == 1
        assert "no answer within" in ext["tier_errors"][cells[0]] and ext["confidence"][cells[0]] is None
        # the cheap tier's slot is still held by its stuck call: the next request finds it busy and escalates
        r = _ask(client, json.dumps({"text": "ticket number 5"}))
        assert r.status_code == 200 and "no free slot" in r.json()["bench"]["tier_errors"][cells[0]]
        text = client.get("/metrics").text
        assert f'bench_tier_errors_total{{kind="timeout",task="route-fake",tier="{cells[0]}"}} 1.0' in text
        assert f'bench_tier_errors_total{{kind="busy",task="route-fake",tier="{cells[0]}"}} 1.0' in text
        assert f'bench_escalations_total{{task="route-fake",tier="{cells[0]}"}} 2.0' in text
    app = _app(routing, timeout_s=0.5)
    _slow_steps(app, {0: 0.3, 1: 2.0})
    with TestClient(app) as client:
        t0 = time.monotonic()
        r = _ask(client, json.dumps({"text": "ticket number 6"}))
        assert r.status_code == 504 and "no answer within 0.5 s" in r.json()["error"]["message"]
        assert time.monotonic() - t0 < 1.5


def test_the_router_plan_and_personal_data_rule_are_applied_and_counted(routing: Path, monkeypatch) -> None:
    """Before H9a's Router.plan/sensitive exist the service follows the chain; with them, their plan."""
    from fastapi.testclient import TestClient

    from bench.router import Router

    calls = []

    def plan(self, task, fields, text):
        calls.append((task, fields, text))
        tiers = [t.cell for t in self.doc.tasks[task].tiers]
        return [] if "nobody" in text else ([tiers[-1]] if "@" in text else tiers)

    monkeypatch.setattr(Router, "plan", plan, raising=False)
    monkeypatch.setattr(Router, "sensitive", lambda self, task, text: "@" in text, raising=False)
    app = _app(routing)
    cells = [t.cell for t in app.state.router.doc.tasks["route-fake"].tiers]
    with TestClient(app) as client:
        r = _ask(client, json.dumps({"text": "mail ana@example.com"}))
        assert r.status_code == 200 and r.json()["bench"]["sensitive"] is True
        assert r.json()["bench"]["tiers_tried"] == [cells[-1]]
        assert calls[-1] == ("route-fake", {"text": "mail ana@example.com"}, "mail ana@example.com")
        r = _ask(client, "free text for a@b")  # outside calibration: fields None, the text as is
        assert r.status_code == 200 and calls[-1] == ("route-fake", None, "free text for a@b")
        r = _ask(client, json.dumps({"text": "nobody may take this"}))
        assert r.status_code == 422 and r.json()["error"]["type"] == "no_eligible_tier"
        text = client.get("/metrics").text
        assert 'bench_sensitive_requests_total{task="route-fake"} 2.0' in text


def test_stream_log_and_content_parts(routing: Path, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    log = tmp_path / "log" / "requests.jsonl"
    with TestClient(_app(routing, log_path=log)) as client:
        r = client.post("/v1/chat/completions", json={"model": "route-fake", "stream": True, "messages": [
            {"role": "user", "content": [{"type": "text", "text": json.dumps({"text": "ticket number 9"})}]}]})
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [line[6:] for line in r.text.splitlines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        chunks = [json.loads(e) for e in events[:-1]]
        assert chunks[0]["choices"][0]["delta"]["content"] and chunks[-1]["choices"][0]["finish_reason"] == "stop"
        ext = chunks[-1]["bench"]
        assert ext["calibrated"] is True and ext["tier"] == r.headers["X-Bench-Tier"]
        plain = _ask(client, json.dumps({"text": "ticket number 9"}))
        assert plain.json()["choices"][0]["message"]["content"] == chunks[0]["choices"][0]["delta"]["content"]
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(lines) == 2 and lines[1]["id"] == plain.json()["id"]
    for line in lines:
        assert line["schema_version"] == 1 and line["status"] == 200 and line["task"] == "route-fake"
        assert [s["cell"] for s in line["steps"]] == line["tiers_tried"] and line["steps"][-1]["accepted"] in (
            True, False) and line["latency_s"] > 0
        assert "ticket" not in json.dumps(line)  # no request text in the log


def test_bad_flags_are_exit_2(routing: Path, capsys) -> None:
    from bench.cli import main

    assert main(["serve", str(routing), "--concurrency", "0"]) == 2
    assert "--concurrency must be a positive number" in capsys.readouterr().err
