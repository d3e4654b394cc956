"""bench thresholds on synthetic runs: tiers, cascades, constraints, holdout check, determinism, schema, LiteLLM."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from bench.cli import main
from bench.errors import UserInputError
from bench.results.schema import cell_id
from bench.thresholds import validate_routing
from bench.thresholds.document import build, dumps
from bench.thresholds.gather import gather, parse_targets
from bench.thresholds.policy import floor_sig

GOLDEN = Path(__file__).parent / "golden"


def _u(*parts: Any) -> float:
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:8], "big") / 2**64


def tier(model: str, acc: float, cost: float | None = 0.001, **kw: Any) -> dict[str, Any]:
    """A synthetic tier: accuracy (or acc_cal/acc_hold per split), cost per request, latency, locality."""
    return {"model": model, "acc": acc, "cost": cost, "latency": 0.5, "locality": "local", "conf": True,
            "backend": "fake"} | kw


def write_run(root: Path, tiers: list[dict[str, Any]], *, name: str = "tickets", n: int = 80, target: float = 0.8,
              sensitive: bool = False, budget: float | None = None, run_id: str = "20260101T000000Z-0001",
              reverse: bool = False, identity: str = "abc") -> Path:
    """A run directory as the runner writes it (manifest.json + samples.jsonl), from synthetic tiers."""
    run = root / name / run_id
    run.mkdir(parents=True)
    rows, backends = [], {}
    for t in tiers:
        cell = {"model": t["model"], "quantization": "Q4_1", "backend": t["backend"], "hardware": "hw", "gen": "g1"}
        cid = cell_id(cell)
        backends[cid] = ({"kind": "openai", "name": t["model"], "base_url": "https://api.example.com/v1",
                          "model": t["model"], "api_key_env": "EXAMPLE_KEY", "locality": t["locality"]}
                         if t["backend"] == "openai" else {"kind": "fake", "accuracy": t["acc"]})
        for j in range(n):
            sid = f"s{j:03d}"
            split = "calibration" if j % 2 == 0 else "holdout"
            acc = t.get("acc_cal" if split == "calibration" else "acc_hold", t["acc"])
            right = _u(t["model"], sid) < acc
            u = _u(t["model"], sid, "c")
            conf = (-0.05 - 0.3 * u if right else -0.6 - 0.8 * u) if t["conf"] else None
            row = {"schema_version": 1, "cell": cell, "cell_id": cid, "sample_id": sid, "split": split,
                   "output": "billing" if right else "?", "score": 1.0 if right else 0.0,
                   "verified": right or _u(t["model"], sid, "v") < 0.5, "confidence": conf,
                   "cost_usd": t["cost"], "latency_s": t["latency"] * (1 + 0.2 * _u(t["model"], sid, "l")),
                   "error": None, "locality": t["locality"], "metric": "accuracy"}
            if _u(t["model"], sid, "e") < t.get("errors", 0.0):
                row |= {"output": None, "score": None, "verified": False, "confidence": None, "cost_usd": None,
                        "latency_s": None, "error": "server said 500"}
            rows.append(row)
    if reverse:
        rows.reverse()
    config = {"name": name, "task": {"kind": "classify", "labels": ["billing", "?"]},
              "prompt": {"system": "Label it.", "template": "Ticket: {text}", "few_shot": []},
              "generation": {"max_tokens": 8, "temperature": 0.0, "seed": 0, "stop": []},
              "dataset": {"id_field": "id", "input_fields": ["text"], "reference_field": "label"}}
    manifest = {"schema_version": 1, "run_id": run_id,
                "suite": {"name": name, "identity": identity, "task": "classify", "metric": "accuracy", "target": target,
                          "tolerance": 0.02, "sensitive": sensitive, "max_p95_latency_s": budget, "config": config},
                "hardware": {"cost_per_hour_usd": None}, "cell_backends": backends}
    (run / "manifest.json").write_text(json.dumps(manifest))
    (run / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def routing(root: Path, targets: dict[str, float] | None = None, max_p95: float | None = None) -> dict[str, Any]:
    doc = build(gather([root], targets, max_p95))
    validate_routing(doc, "routing.json")
    return doc


def task_of(doc: dict[str, Any], name: str = "tickets") -> dict[str, Any]:
    return doc["tasks"][name]


def by_model(task: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["cell_detail"]["model"]: t for t in task["tiers"]}


# ---------------------------------------------------------------- calibration and policy

def test_a_cheap_tier_that_meets_the_target_alone_takes_everything(tmp_path) -> None:
    root = write_run(tmp_path, [tier("big", 0.99, cost=0.01), tier("small", 0.97, cost=0.0001)])
    t = task_of(routing(root))
    assert [x["cell_detail"]["model"] for x in t["tiers"]] == ["small", "big"]  # cheapest first
    small = t["tiers"][0]
    assert small["meets_target"] and small["quality"]["ci_low"] >= 0.8
    assert t["policy"]["chain"] == [small["cell"]] and t["default"] == small["cell"]
    assert small["accept_if"] == {"signal": "always", "threshold": None}
    assert t["tiers"][1]["accept_if"]["signal"] == "never"
    assert t["expected"]["escalation_rate"] == 0 and t["expected"]["meets_target_on_holdout"]
    assert t["cost_basis"] == "usd"


def test_a_cascade_is_cheaper_than_always_largest(tmp_path) -> None:
    root = write_run(tmp_path, [tier("small", 0.6, cost=0.0001), tier("big", 0.97, cost=0.01)], n=200, target=0.85)
    t = task_of(routing(root))
    tiers = by_model(t)
    assert not tiers["small"]["meets_target"] and tiers["big"]["meets_target"]
    assert t["policy"]["chain"] == [tiers["small"]["cell"], tiers["big"]["cell"]]
    rule = tiers["small"]["accept_if"]
    assert rule["signal"] == "confidence" and -1.4 < rule["threshold"] <= -0.05
    cal = t["policy"]["calibration"]
    assert cal["quality"]["ci_low"] >= 0.85  # the interval rule holds on calibration
    e = t["expected"]
    assert 0 < e["escalation_rate"] < 1 and e["n"] == 100
    big_cost = t["baselines"]["always_largest"]["cost_per_1k_usd"]
    assert e["cost_per_1k_usd"] < big_cost
    # cost counts every tier passed through: escalated requests pay for both
    assert e["cost_per_1k_usd"] == pytest.approx((0.0001 + e["escalation_rate"] * 0.01) * 1000, rel=1e-4)
    s = t["baselines"]["savings_vs_always_largest"]
    assert s["at_equal_quality"] and s["fraction"] > 0.3 and "cheaper" in s["message"]
    mix = t["baselines"]["random_mix_same_cost"]
    assert 0 < mix["share_to_largest"] < 1 and mix["quality_mean"] < e["quality"]["mean"]
    r = t["routellm"]
    assert r["apgr"] > 0.5 and 0 < r["cpt_50"] <= r["cpt_80"] <= 1


def test_sensitive_suite_leaves_out_cloud_tiers_and_says_why(tmp_path) -> None:
    root = write_run(tmp_path, [tier("local-small", 0.9, cost=0.001),
                                tier("cloud-big", 0.99, cost=0.0001, locality="cloud", backend="openai")],
                     sensitive=True)
    t = task_of(routing(root))
    cloud = by_model(t)["cloud-big"]
    assert cloud["eligible"] is False and cloud["accept_if"]["signal"] == "never"
    assert "sensitive" in cloud["excluded_because"][0] and "cloud" in cloud["excluded_because"][0]
    assert cloud["cell"] not in t["policy"]["chain"]
    assert t["constraints"]["shaped_by"] == ["sensitive"]
    assert t["constraints"]["excluded"][0]["cell"] == cloud["cell"]
    assert "api_key" not in json.dumps(cloud["runtime"]).replace("api_key_env", "")


def test_only_cloud_tiers_on_sensitive_data_route_nowhere(tmp_path) -> None:
    root = write_run(tmp_path, [tier("cloud", 0.99, locality="cloud", backend="openai")], sensitive=True)
    t = task_of(routing(root))
    assert t["default"] is None and t["status"] == "unreachable" and "no eligible tier" in t["policy"]["message"]
    assert t["expected"]["meets_target_on_holdout"] is False


def test_latency_budget_excludes_slow_tiers(tmp_path) -> None:
    root = write_run(tmp_path, [tier("fast", 0.95, cost=0.001, latency=0.2),
                                tier("slow", 0.99, cost=0.0001, latency=5.0)])
    t = task_of(routing(root, max_p95=1.0))
    slow = by_model(t)["slow"]
    assert not slow["eligible"] and "exceeds the 1 s budget" in slow["excluded_because"][0]
    assert t["constraints"]["max_p95_latency_s"] == 1.0
    assert t["constraints"]["latency_source"] == "--max-p95-latency"
    assert t["constraints"]["shaped_by"] == ["max_p95_latency_s"]
    assert t["policy"]["chain"] == [by_model(t)["fast"]["cell"]]
    unconstrained = task_of(routing(write_run(tmp_path / "b", [tier("fast", 0.95, cost=0.001, latency=0.2),
                                                              tier("slow", 0.99, cost=0.0001, latency=5.0)])))
    assert unconstrained["constraints"]["shaped_by"] == [] and unconstrained["default"] == slow["cell"]


def test_holdout_shortfall_is_reported_in_the_file_and_on_the_terminal(tmp_path, capsys) -> None:
    root = write_run(tmp_path, [tier("lucky", 0.3, acc_cal=1.0, acc_hold=0.3, cost=0.0001),
                                tier("big", 0.5, cost=0.01)])
    out = tmp_path / "routing.json"
    assert main(["thresholds", str(root), "-o", str(out)]) == 1  # a policy its holdout contradicts
    t = task_of(json.loads(out.read_text()))
    e = t["expected"]
    assert e["meets_target_on_holdout"] is False and "failed on holdout" in e["message"]
    assert t["status"] == "failed_holdout" and t["fallback"] == by_model(t)["big"]["cell"]
    err = capsys.readouterr().err
    assert "WARNING" in err and "whole interval is below the target 0.8" in err
    assert "failed on holdout: tickets" in err


def test_no_admissible_policy_falls_back_to_the_strongest_tier(tmp_path) -> None:
    root = write_run(tmp_path, [tier("a", 0.5, cost=0.001), tier("b", 0.6, cost=0.002)], target=0.95)
    t = task_of(routing(root))
    assert t["status"] == t["policy"]["status"] == "unreachable"
    assert t["policy"]["chain"] == [by_model(t)["b"]["cell"]]
    assert "no tier or cascade passes Learn-then-Test" in t["policy"]["message"]
    assert t["guarantee"]["holds"] is False


def test_tier_without_confidence_can_only_accept_verified_answers(tmp_path) -> None:
    # wrong answers of 'noconf' are unverified half the time: 'verified' is a usable (if weak) signal
    root = write_run(tmp_path, [tier("noconf", 0.85, cost=0.0001, conf=False), tier("big", 0.99, cost=0.01)],
                     n=200, target=0.85)
    t = task_of(routing(root))
    rule = by_model(t)["noconf"]["accept_if"]
    assert rule["signal"] in ("verified", "never", "always")
    assert rule["threshold"] is None
    assert by_model(t)["noconf"]["confidence_available"] is False


def test_unknown_cost_orders_by_latency_and_says_so(tmp_path) -> None:
    root = write_run(tmp_path, [tier("slow", 0.99, cost=None, latency=2.0), tier("quick", 0.98, cost=None,
                                                                              latency=0.1)])
    t = task_of(routing(root))
    assert t["cost_basis"] == "latency_s"
    assert [x["cell_detail"]["model"] for x in t["tiers"]] == ["quick", "slow"]
    assert any("by mean latency" in note for note in t["notes"])
    assert t["expected"]["cost_per_1k_usd"] is None


def test_errored_requests_count_as_wrong(tmp_path) -> None:
    root = write_run(tmp_path, [tier("flaky", 1.0, cost=0.0001, errors=0.3), tier("big", 0.99, cost=0.01)])
    flaky = by_model(task_of(routing(root)))["flaky"]
    assert flaky["errors"] > 0
    assert flaky["quality"]["mean"] == pytest.approx(1 - flaky["errors"] / flaky["quality"]["n"])


def test_runs_of_other_data_are_left_out_with_a_note(tmp_path) -> None:
    write_run(tmp_path, [tier("old", 0.2)], run_id="20250101T000000Z-0001", identity="other")
    write_run(tmp_path, [tier("new", 0.9)], run_id="20260101T000000Z-0002")
    doc = routing(tmp_path)
    t = task_of(doc)
    assert [x["cell_detail"]["model"] for x in t["tiers"]] == ["new"]
    assert doc["sources"] == ["20260101T000000Z-0002"]
    assert any("20250101T000000Z-0001" in note and "not comparable" in note for note in t["notes"])


def test_target_flag_overrides_the_suite(tmp_path) -> None:
    root = write_run(tmp_path, [tier("a", 0.9, cost=0.001)])
    t = task_of(routing(root, targets={"tickets": 0.5}))
    assert t["target"] == 0.5 and t["target_source"] == "--target"


@pytest.mark.parametrize("bad", ["tickets", "tickets=", "=0.8", "tickets=high", "tickets=nan"])
def test_malformed_target_is_a_user_error(bad) -> None:
    with pytest.raises(UserInputError) as err:
        parse_targets([bad])
    assert err.value.field == "--target"


def test_cli_errors_exit_2_naming_the_flag(tmp_path, capsys) -> None:
    root = write_run(tmp_path, [tier("a", 0.9)])
    out = str(tmp_path / "r.json")
    assert main(["thresholds", str(root), "--target", "tickets", "-o", out]) == 2
    assert "--target" in capsys.readouterr().err
    assert main(["thresholds", str(root), "--target", "tickts=0.7", "-o", out]) == 2
    err = capsys.readouterr().err
    assert "--target" in err and "did you mean 'tickets'" in err
    assert main(["thresholds", str(tmp_path / "missing"), "-o", out]) == 2
    assert main(["thresholds", str(root), "--max-p95-latency", "-1", "-o", out]) == 2
    assert "--max-p95-latency" in capsys.readouterr().err


# ---------------------------------------------------------------- output: determinism, schema, formats

def _without_time(text: str) -> str:
    doc = json.loads(text)
    doc.pop("created_at")
    return json.dumps(doc, sort_keys=True)


def test_output_is_byte_identical_for_the_same_results(tmp_path) -> None:
    tiers = [tier("small", 0.6, cost=0.0001), tier("mid", 0.8, cost=0.001), tier("big", 0.97, cost=0.01)]
    a = write_run(tmp_path / "a", tiers, n=120, target=0.85)
    b = write_run(tmp_path / "b", tiers, n=120, target=0.85, reverse=True)  # same rows, other file order
    texts = []
    for root, name in ((a, "1.json"), (a, "2.json"), (b, "3.json")):
        out = tmp_path / name
        assert main(["thresholds", str(root), "-o", str(out)]) == 0
        texts.append(out.read_text())
    first = texts[0].replace(json.loads(texts[0])["created_at"], "T")
    for text in texts[1:]:
        assert text.replace(json.loads(text)["created_at"], "T") == first


def test_written_file_validates_and_a_broken_one_is_refused(tmp_path) -> None:
    doc = routing(write_run(tmp_path, [tier("a", 0.9)]))
    schema = json.loads((Path(__file__).parent.parent / "bench" / "thresholds" / "routing.schema.json").read_text())
    assert schema["$schema"].endswith("2020-12/schema")
    broken = json.loads(dumps(doc))
    broken["tasks"]["tickets"]["tiers"][0]["accept_if"] = {"signal": "confidence", "threshold": None}
    with pytest.raises(UserInputError) as err:
        validate_routing(broken, "r.json")
    assert err.value.field == "tasks.tickets.tiers.0.accept_if.threshold"
    missing = json.loads(dumps(doc))
    del missing["tasks"]["tickets"]["expected"]
    with pytest.raises(UserInputError, match="expected"):
        validate_routing(missing, "r.json")


def test_floats_are_rounded_and_thresholds_still_accept_their_sample() -> None:
    for x in (-0.123456789, -12.3456789, -1e-7 * 3.3333333, -0.9999999):
        f = floor_sig(x)
        assert f <= x and float(f"{f:.6g}") == f


def test_litellm_config_is_labelled_fallback_only_and_keeps_no_cheaper_tier(tmp_path) -> None:
    root = write_run(tmp_path, [tier("small", 0.6, cost=0.0001),
                                tier("big", 0.97, cost=0.01, backend="openai", locality="cloud")], n=200,
                     target=0.85)
    out = tmp_path / "routing.json"
    assert main(["thresholds", str(root), "--format", "litellm", "-o", str(out)]) == 0
    text = (tmp_path / "routing.litellm.yaml").read_text()
    assert "FALLBACK-ONLY" in text and "does NOT deploy routing.json's policy" in text
    doc = json.loads(out.read_text())
    assert len(doc["tasks"]["tickets"]["policy"]["chain"]) == 2  # the policy is a cascade...
    config = yaml.safe_load(text)
    names = [m["model_name"] for m in config["model_list"]]
    assert names == ["tickets/big@Q4_1"]  # ...which LiteLLM cannot run: only the tier it ends in is deployed
    assert config["router_settings"]["model_group_alias"] == {"tickets": names[0]}
    assert config["bench"]["mode"] == "fallback-only" and "expected" not in config
    big = config["model_list"][0]["litellm_params"]
    assert big["api_key"] == "os.environ/EXAMPLE_KEY" and big["api_base"] == "https://api.example.com/v1"


def test_golden_routing_file(tmp_path) -> None:
    """The whole document for a small case; BENCH_UPDATE_GOLDEN=1 rewrites it after a deliberate change."""
    root = write_run(tmp_path, [tier("small", 0.6, cost=0.0001), tier("big", 0.95, cost=0.01)], n=160,
                     target=0.75, run_id="20260101T000000Z-0042")
    doc = routing(root)
    doc.pop("created_at")
    doc.pop("bench_version")
    text = dumps(doc)
    golden = GOLDEN / "routing_small.json"
    if os.environ.get("BENCH_UPDATE_GOLDEN"):
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(text)
    assert text == golden.read_text()
