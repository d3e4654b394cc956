"""bench.router: loading and refusing files, first/accept, and run() end to end (fake backend, then the real model)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.errors import UserInputError
from bench.router import Router
from bench.thresholds.document import build, dumps, write
from bench.thresholds.gather import gather
from tests.conftest import FAKE_SUITE, write_suite
from tests.test_thresholds import tier, write_run


def _routing_file(tmp_path: Path, **kw: Any) -> Path:
    root = write_run(tmp_path / "results", [tier("small", 0.6, cost=0.0001), tier("big", 0.97, cost=0.01)], n=200,
                     target=0.85, **kw)
    return write(build(gather([root])), tmp_path / "routing.json")


def test_first_and_accept_follow_the_file(tmp_path) -> None:
    router = Router.load(_routing_file(tmp_path))
    assert router.tasks() == ["tickets"]
    small, big = router.chain("tickets")
    assert router.first("tickets") == small
    t = router.doc.task("tickets").tier(small).accept_if.threshold
    assert router.accept("tickets", small, t, True)
    assert router.accept("tickets", small, t + 0.01, True)
    assert not router.accept("tickets", small, t - 0.01, True)
    assert not router.accept("tickets", small, 0.0, False)      # unverified always escalates
    assert not router.accept("tickets", small, None, True)      # no confidence: escalate
    assert not router.accept("tickets", small, math.nan, True)
    assert router.accept("tickets", big, None, False)           # the last tier answers everything


def test_unknown_task_and_tier_are_user_errors(tmp_path) -> None:
    router = Router.load(_routing_file(tmp_path))
    with pytest.raises(UserInputError, match="did you mean 'tickets'"):
        router.first("tickets2")
    with pytest.raises(UserInputError, match="no tier"):
        router.accept("tickets", "nope", 0.0, True)


def test_newer_schema_version_is_refused(tmp_path) -> None:
    doc = json.loads(_routing_file(tmp_path).read_text())
    doc["schema_version"] = 99
    path = tmp_path / "future.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(UserInputError) as err:
        Router.load(path)
    assert err.value.hint == "upgrade bench" and err.value.exit_code == 2 and str(path) in str(err.value)


def test_invalid_files_are_refused_with_the_field(tmp_path) -> None:
    path = tmp_path / "r.json"
    path.write_text("{not json")
    with pytest.raises(UserInputError, match="not valid JSON"):
        Router.load(path)
    path.write_text(json.dumps({"tasks": {}}))
    with pytest.raises(UserInputError, match="schema_version"):
        Router.load(path)
    doc = json.loads(_routing_file(tmp_path).read_text())
    doc["tasks"]["tickets"]["tiers"][0]["accept_if"]["signal"] = "sometimes"
    path.write_text(json.dumps(doc))
    with pytest.raises(UserInputError) as err:
        Router.load(path)
    assert err.value.field == "tasks.tickets.tiers.0.accept_if.signal"
    with pytest.raises(UserInputError, match="file not found"):
        Router.load(tmp_path / "missing.json")


def test_importing_the_router_stays_light() -> None:
    code = ("import sys, bench.router; heavy = [m for m in ('numpy', 'pydantic', 'llama_cpp', 'datasets', 'httpx') "
            "if m in sys.modules]; print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


# ---------------------------------------------------------------- run(): the cascade through real backends

TWO_FAKE_TIERS = (FAKE_SUITE.replace("name: tickets", "name: route-fake")
                  .replace("target: 0.6", "split: {seed: 3, holdout_fraction: 0.5}\ntarget: 0.8")
                  .replace("smollm2-135m-instruct: 0.5, qwen2.5-coder-0.5b-instruct: 1.0",
                           "smollm2-135m-instruct: 0.6, qwen2.5-coder-0.5b-instruct: 0.97}\n"
                           "      tokens_per_s_by_model: {qwen2.5-coder-0.5b-instruct: 100"))
assert TWO_FAKE_TIERS.count("route-fake") == 1 and "0.97}" in TWO_FAKE_TIERS and "seed: 3" in TWO_FAKE_TIERS


def _route_holdout(routing: Path, task: str, samples: list[Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    router = Router.load(routing)
    try:
        results = [router.run(task, dict(s.fields)) for s in samples if s.split == "holdout"]
    finally:
        router.close()
    return results, router.doc.as_dict()["tasks"][task]


def _profile() -> str | None:
    """A priced hardware profile, so per-request cost is known; None (cost unknown) where profiles are absent."""
    try:
        from bench.hardware.profiles import get_profile

        return get_profile("cloud-vm-2c").id
    except (UserInputError, OSError):
        return None


def test_run_on_the_fake_backend_delivers_exactly_the_expected_numbers(tmp_path) -> None:
    from bench.config import load_suite
    from bench.data import load_samples
    from bench.runner import run_suite

    rows = [{"id": f"t{i:02d}", "text": f"ticket number {i}", "label": "billing" if i % 3 else "technical"}
            for i in range(160)]
    suite = load_suite(write_suite(tmp_path / "suite", TWO_FAKE_TIERS, rows))
    run_suite(suite, results_dir=tmp_path / "results", isolation="inline", quiet=True, hardware=_profile())
    routing = write(build(gather([tmp_path / "results"])), tmp_path / "routing.json")
    results, task = _route_holdout(routing, "route-fake", load_samples(suite))
    assert len(task["policy"]["chain"]) == 2 and task["expected"]["escalation_rate"] > 0  # a real cascade
    _check_agreement(results, task, exact=True)
    escalated = [r for r in results if r["escalations"]]
    assert escalated and all(len(r["steps"]) == 2 and not r["steps"][0]["accepted"] for r in escalated)
    e = task["expected"]
    if e["cost_per_1k_usd"] is not None:
        realized = sum(r["cost_usd"] for r in results) / len(results) * 1000
        assert realized == pytest.approx(e["cost_per_1k_usd"], rel=1e-4)


def _check_agreement(results: list[dict[str, Any]], task: dict[str, Any], exact: bool) -> None:
    e = task["expected"]
    n = len(results)
    assert n == e["n"] > 0
    quality = sum(r["score"] for r in results) / n
    escalated = sum(r["escalations"] > 0 for r in results) / n
    if exact:
        assert quality == pytest.approx(e["quality"]["mean"], abs=1e-6)
        assert escalated == pytest.approx(e["escalation_rate"], abs=1e-6)
    else:
        assert e["quality"]["ci_low"] - 1e-9 <= quality <= e["quality"]["ci_high"] + 1e-9
        assert abs(escalated - e["escalation_rate"]) <= 0.25
    assert all(r["path"][0] == task["default"] for r in results)
    for r in results:
        assert r["path"] == task["policy"]["chain"][:len(r["path"])]
        assert r["cell"] == r["path"][-1] and set(r["confidence"]) == set(r["path"])


# ---------------------------------------------------------------- the real embedded model

REAL_TIERS = """
name: route-real
task:
  kind: classify
  labels: [billing, technical]
dataset:
  path: data.jsonl
  input_fields: [text]
  reference_field: label
split: {seed: 3, holdout_fraction: 0.5}  # 8 calibration and 8 holdout samples of the 16
prompt:
  system: "Classify the support ticket as billing or technical. Answer with the label only."
  template: "Ticket: {text}\nLabel:"
  few_shot:
    - input: {text: "I want my money back for the double charge"}
      output: billing
    - input: {text: "The app shows a blank screen after login"}
      output: technical
target: 0.5
generation:
  max_tokens: 3
  stop: ["\n"]
matrix:
  models:
    - id: smollm2-135m-instruct
      quantizations: [Q4_1, Q8_0]
  backends:
    - kind: llamacpp
      n_ctx: 512
      n_threads: 1  # a 135M model needs no more; on a shared 2-core machine more threads wait on each other
      warmup: false
"""

TICKETS = [
    ("I was charged twice this month", "billing"), ("The app crashes when I open settings", "technical"),
    ("Please refund my last payment", "billing"), ("Error 500 when uploading a file", "technical"),
    ("Why is my invoice higher than usual?", "billing"), ("The page will not load on Firefox", "technical"),
    ("My card was declined but I was still billed", "billing"), ("Sync stopped working after the update", "technical"),
    ("Can I pay by bank transfer instead of card?", "billing"), ("The export button does nothing", "technical"),
    ("I need a copy of last year's receipts", "billing"), ("Login fails with a timeout error", "technical"),
    ("You billed me after I cancelled", "billing"), ("The mobile app freezes on startup", "technical"),
    ("How do I change the card you charge?", "billing"), ("Search results never finish loading", "technical"),
]


@pytest.mark.integration
def test_router_on_the_real_model_agrees_with_expected(tmp_path) -> None:
    """Two tiers of the embedded default (Q4_1 and its Q8_0 derivative) through llama.cpp: run, calibrate,
    then route every holdout sample through bench.router and compare with routing.json's `expected`."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    pytest.importorskip("bench.models.quantize", reason="bench.models.quantize (for the Q8_0 tier) is missing")
    from bench.cli import main
    from bench.config import load_suite
    from bench.data import load_samples
    from bench.models import is_cached
    from bench.results.store import find_runs
    from bench.runner import run_suite

    if not is_cached("smollm2-135m-instruct"):
        pytest.skip("the embedded default is not cached: run 'bench models pull smollm2-135m-instruct'")
    rows = [{"id": f"r{i:02d}", "text": text, "label": label} for i, (text, label) in enumerate(TICKETS)]
    suite = load_suite(write_suite(tmp_path / "suite", REAL_TIERS, rows))
    outcome = run_suite(suite, limit=16, isolation="inline", results_dir=tmp_path / "results", quiet=True,
                        hardware=_profile())
    assert not outcome.errored_cells, outcome.summary
    out = tmp_path / "routing.json"
    assert main(["thresholds", str(tmp_path / "results"), "-o", str(out)]) == 0
    samples = load_samples(suite, 16)
    results, task = _route_holdout(out, "route-real", samples)
    _check_agreement(results, task, exact=False)

    # the router's answers and confidences are the ones calibration saw (same model, prompt, greedy decoding)
    stored = {(r["cell_id"], r["sample_id"]): r for r in find_runs([tmp_path / "results"])[0].samples()}
    holdout = [s for s in samples if s.split == "holdout"]
    for s, r in zip(holdout, results):
        first = r["steps"][0]
        row = stored[(first["cell"], s.id)]
        assert first["output"] == row["output"]
        assert first["confidence"] == pytest.approx(row["confidence"], abs=1e-3)
    e = task["expected"]
    if e["cost_per_1k_usd"] is not None:
        realized = sum(r["cost_usd"] for r in results) / len(results) * 1000
        lo, hi = e["cost_per_1k_usd_ci"]
        assert lo / 2 <= realized <= hi * 2, (realized, e["cost_per_1k_usd"], lo, hi)

    # and a forced two-tier cascade escalates exactly the samples its threshold says it should
    doc = json.loads(out.read_text())
    t = doc["tasks"]["route-real"]
    cells = [x["cell"] for x in t["tiers"]]
    confs = sorted(stored[(cells[0], s.id)]["confidence"] for s in holdout)
    threshold = round(confs[len(confs) // 2], 6)
    t["policy"]["chain"], t["default"] = cells[:2], cells[0]
    t["tiers"][0]["accept_if"] = {"signal": "confidence", "threshold": threshold}
    t["tiers"][1]["accept_if"] = {"signal": "always", "threshold": None}
    forced = tmp_path / "forced.json"
    forced.write_text(dumps(doc))
    results, _ = _route_holdout(forced, "route-real", samples)
    for s, r in zip(holdout, results):
        row = stored[(cells[0], s.id)]
        if abs(row["confidence"] - threshold) < 1e-3:
            continue  # too close to call: numerics of a reused KV cache may tip it
        should_accept = bool(row["verified"]) and row["confidence"] >= threshold
        assert r["path"] == (cells[:1] if should_accept else cells[:2])
    assert any(r["escalations"] for r in results)
