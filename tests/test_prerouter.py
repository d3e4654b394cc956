"""Pre-generation routing: every router family fitted, saved, loaded and applied by bench.router with the same
decisions as calibration replay; artefacts refused when missing or altered; the families compared in routing.json;
the embedding family through llama.cpp's embedding mode of the default model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench.errors import UserInputError
from bench.router import Router
from bench.thresholds.document import build, write
from bench.thresholds.gather import gather
from tests.conftest import FAKE_SUITE, write_suite

# Tickets containing "escalation" are hard: the small tier gets them all wrong, the big one right; the small tier
# is ten times faster. A cascade pays the small tier on every request; a pre-router sends hard ones straight on.
PRE_SUITE = (FAKE_SUITE.replace("name: tickets", "name: pre-fake")
             .replace("target: 0.6", "split: {seed: 3, holdout_fraction: 0.5}\ntarget: 0.9\n"
                      "prerouter: {families: FAMILIES}")
             .replace("smollm2-135m-instruct: 0.5, qwen2.5-coder-0.5b-instruct: 1.0",
                      "smollm2-135m-instruct: 1.0, qwen2.5-coder-0.5b-instruct: 1.0}\n"
                      "      hard_pattern: escalation\n"
                      "      accuracy_hard_by_model: {smollm2-135m-instruct: 0.0}\n"
                      "      tokens_per_s_by_model: {qwen2.5-coder-0.5b-instruct: 100"))
assert "hard_pattern" in PRE_SUITE and "FAMILIES" in PRE_SUITE

EASY = ["my card was charged twice", "the app crashes on start", "invoice shows the wrong amount",
        "cannot upload a file", "refund the extra fee please", "login page is blank"]
HARD = ["this needs escalation: three teams bounced my case between billing and the technical desk for weeks",
        "formal escalation request after the outage broke our integration and the invoice still charged us"]


def _rows(n: int = 240) -> list[dict[str, Any]]:
    rows = []
    for i in range(n):
        hard = i % 3 == 0
        text = (HARD if hard else EASY)[i % (len(HARD) if hard else len(EASY))]
        rows.append({"id": f"t{i:03d}", "text": f"{text} (ref {i})", "label": "billing" if i % 2 else "technical"})
    return rows


def _run(tmp_path: Path, families: str, rows: list[dict[str, Any]] | None = None, slow: bool = False
         ) -> tuple[Any, Path]:
    """Run the suite on the fake tiers; `slow`: tiers whose (synthetic) answers take seconds to tens of seconds, so a
    router's own measured time costs little even when a busy machine slows it tenfold."""
    from bench.config import load_suite
    from bench.runner import run_suite

    text = PRE_SUITE.replace("FAMILIES", families)
    if slow:
        text = text.replace("tokens_per_s_by_model: {qwen2.5-coder-0.5b-instruct: 100",
                            "tokens_per_s: 0.5\n      tokens_per_s_by_model: {qwen2.5-coder-0.5b-instruct: 0.05")
        assert "tokens_per_s: 0.5" in text
    suite = load_suite(write_suite(tmp_path / "suite", text, rows or _rows()))
    run_suite(suite, results_dir=tmp_path / "results", isolation="inline", quiet=True)
    return suite, tmp_path / "results"


def _decisions_agree(tmp_path: Path, results: Path, suite: Any, family: str) -> dict[str, Any]:
    """Replay on holdout (calibration's own arrays) and bench.router decide identically, sample by sample."""
    from bench.data import load_samples
    from bench.thresholds.calibrate import calibrate
    from bench.thresholds.prerouting import fit_prerouters

    routing = write(build(gather([results])), tmp_path / "routing.json")
    doc = json.loads(routing.read_text())
    task = doc["tasks"]["pre-fake"]
    pre = task["prerouter"]
    assert pre is not None and pre["family"] == family, task["families"]["why"]
    assert (routing.parent / pre["artifact"]["path"]).is_file()
    cal = calibrate(gather([results])[0])
    fit_prerouters(cal)
    cheap = [i for i, t in enumerate(cal.tiers) if t.tier.cell_id == pre["cheap"]][0]
    probs = dict(zip(cal.hold.ids, cal.hold.prob[(family, cheap)]))
    router = Router.load(routing)
    try:
        holdout = [s for s in load_samples(suite) if s.split == "holdout"]
        for s in holdout:
            d = router.preroute("pre-fake", dict(s.fields), "")
            assert d["probability"] == probs[s.id]
            assert d["path"] == ("cheap" if probs[s.id] >= pre["threshold"] else "strong")
        results_ = [router.run("pre-fake", dict(s.fields) | {"label": s.reference}) for s in holdout]
    finally:
        router.close()
    # the router's realized holdout quality and model mix are the ones routing.json expects
    e = task["expected"]
    assert np.mean([r["score"] for r in results_]) == pytest.approx(e["quality"]["mean"], abs=1e-9)
    shares = {a["cell"]: a["share"] for a in e["answered_by"]}
    for cell, share in shares.items():
        assert np.mean([r["cell"] == cell for r in results_]) == pytest.approx(share, abs=1e-6)
    return task


@pytest.mark.parametrize("family", ["rules", "tfidf"])
def test_family_fit_save_load_apply_agree(tmp_path, family) -> None:
    suite, results = _run(tmp_path, f"[{family}]")
    task = _decisions_agree(tmp_path, results, suite, family)
    fam = task["families"]
    assert fam["winner"] in ("prerouter", "prerouter+cascade")
    assert fam["cascade"]["best"] is not None  # the cascade qualifies too, and costs more
    saving = fam["prerouter_vs_cascade"]
    assert saving["saving"] is not None and saving["saving"] > 0, saving
    assert task["expected"]["meets_target_on_holdout"] is True
    fitted = task["prerouting"]["fitted"]
    assert fitted and all(f["ece_calibration"] is not None and 0 <= f["ece_calibration"] <= 1 for f in fitted)


def test_rules_family_reads_the_suites_hard_patterns(tmp_path) -> None:
    """Same lengths for easy and hard requests: only the suite's hard pattern tells them apart."""
    rows = [{"id": f"t{i:03d}", "text": ("escalation " if i % 3 == 0 else "everything ") + f"is fine {i}",
             "label": "billing"} for i in range(240)]
    from bench.config import load_suite
    from bench.runner import run_suite

    text = PRE_SUITE.replace("FAMILIES", "[rules], hard_patterns: ['escalation']")
    suite = load_suite(write_suite(tmp_path / "suite", text, rows))
    run_suite(suite, results_dir=tmp_path / "results", isolation="inline", quiet=True)
    _decisions_agree(tmp_path, tmp_path / "results", suite, "rules")


def test_missing_or_altered_artifacts_are_refused(tmp_path) -> None:
    _, results = _run(tmp_path, "[tfidf]")
    routing = write(build(gather([results])), tmp_path / "routing.json")
    doc = json.loads(routing.read_text())
    art = routing.parent / doc["tasks"]["pre-fake"]["prerouter"]["artifact"]["path"]
    original = art.read_bytes()
    art.write_bytes(original.replace(b'"intercept": ', b'"intercept": 1.0e-3 + ', 1)[:-2] + b"}\n")
    with pytest.raises(UserInputError, match="sha256"):
        Router.load(routing)
    art.unlink()
    with pytest.raises(UserInputError, match="missing"):
        Router.load(routing)
    art.write_bytes(original)
    Router.load(routing).close()


def test_no_inputs_means_no_prerouter_and_says_why(tmp_path) -> None:
    _, results = _run(tmp_path, "[tfidf]")
    for p in results.rglob("inputs.jsonl"):
        p.unlink()
    doc = build(gather([results]))
    task = doc["tasks"]["pre-fake"]
    assert task["prerouter"] is None and task["families"]["prerouter"]["best"] is None
    assert any("no stored inputs" in n for n in task["notes"])


def test_serve_reports_the_prerouter_decision(tmp_path) -> None:
    from fastapi.testclient import TestClient

    from bench.serve.app import create_app

    _, results = _run(tmp_path, "[tfidf]")
    routing = write(build(gather([results])), tmp_path / "routing.json")
    app = create_app(routing)
    with TestClient(app) as client:
        paths = []
        for text in (HARD[0] + " (ref 9999)", EASY[1] + " (ref 9998)"):
            r = client.post("/v1/chat/completions", json={"model": "pre-fake", "messages": [
                {"role": "user", "content": json.dumps({"text": text})}]})
            assert r.status_code == 200, r.text
            paths.append(r.json()["bench"]["prerouter"]["path"])
        assert paths == ["strong", "cheap"]
        metrics = client.get("/metrics").text
        assert 'bench_prerouted_total{path="strong",task="pre-fake"} 1.0' in metrics
        assert 'bench_prerouted_total{path="cheap",task="pre-fake"} 1.0' in metrics


def test_embedding_family_on_the_default_model(tmp_path) -> None:
    """llama.cpp embeddings of the default model: computed once per sample and cached with the run, then the
    router computes the same vectors live and decides identically."""
    from bench.routers.features import cache_path

    suite, results = _run(tmp_path, "[embedding]", _rows(120), slow=True)
    _decisions_agree(tmp_path, results, suite, "embedding")
    caches = list(results.rglob("features/embeddings-*.jsonl"))
    assert len(caches) == 1
    lines = caches[0].read_text().splitlines()
    assert len(lines) == 120  # one per sample, calibration and holdout
    before = caches[0].stat().st_mtime_ns
    build(gather([results]))  # a second calibration reads the cache and computes nothing
    assert caches[0].stat().st_mtime_ns == before
    assert caches[0].name == cache_path(caches[0].parents[1], "smollm2-135m-instruct",
                                        json.loads(lines[0])["model_sha256"]).name


def test_embedding_seconds_measured_beside_other_work_are_flagged(tmp_path, monkeypatch) -> None:
    """The embedding family's cost is its measured seconds: texts embedded while other processes took CPU are
    marked `contended` in the cache, and past a tenth of them the routing file's notes say the seconds are suspect.
    The meter reports a busy neighbour here (a real one would slow the test several-fold); the embeddings are real."""
    from bench.measure import contention

    suite, results = _run(tmp_path, "[embedding]", _rows(90), slow=True)
    monkeypatch.setattr(contention.ContentionMeter, "window",
                        lambda self: {"others_cores": 1.0, "steal_cores": 0.0, "contended": True})
    doc = build(gather([results]))
    (task,) = doc["tasks"].values()
    assert any("embedding pre-router's seconds are suspect: 100% of the texts" in n for n in task["notes"])
    (cache,) = results.rglob("features/embeddings-*.jsonl")
    assert all(json.loads(line)["contended"] is True for line in cache.read_text().splitlines())
    monkeypatch.undo()  # a quiet meter now, but the cached seconds keep their flag
    (task,) = build(gather([results]))["tasks"].values()
    assert any("seconds are suspect" in n for n in task["notes"])


def test_serve_log_fed_back_to_thresholds_reports_drift(tmp_path) -> None:
    """`bench serve --log` telemetry into `bench thresholds --telemetry`: traffic like holdout is consistent; a
    flood of hard requests (all sent past the cheap tier) is drift; a file that is not a request log is exit 2."""
    from fastapi.testclient import TestClient

    from bench.cli import main
    from bench.serve.app import create_app

    _, results = _run(tmp_path, "[tfidf]")
    routing = write(build(gather([results])), tmp_path / "routing.json")

    def serve(texts: list[str], log: Path) -> None:
        with TestClient(create_app(routing, log_path=log)) as client:
            for text in texts:
                r = client.post("/v1/chat/completions", json={"model": "pre-fake", "messages": [
                    {"role": "user", "content": json.dumps({"text": text})}]})
                assert r.status_code == 200, r.text

    like = [row["text"] for row in _rows(300)[240:]]       # new requests drawn like the suite's
    hard = [f"{HARD[i % 2]} (ref {1000 + i})" for i in range(60)]
    serve(like, tmp_path / "like.jsonl")
    serve(hard, tmp_path / "hard.jsonl")
    for log, verdict in (("like.jsonl", "consistent"), ("hard.jsonl", "drift")):
        out = tmp_path / f"routing-{verdict}.json"
        assert main(["thresholds", str(results), "--telemetry", str(tmp_path / log), "-o", str(out)]) == 0
        tel = json.loads(out.read_text())["tasks"]["pre-fake"]["telemetry"]
        assert tel["verdict"] == verdict, tel
        assert tel["requests"] == 60
    (tmp_path / "bad.jsonl").write_text('{"hello": 1}\n')
    assert main(["thresholds", str(results), "--telemetry", str(tmp_path / "bad.jsonl"), "-o",
                 str(tmp_path / "x.json")]) == 2
