"""Corpus-level metrics: the macro-F1 evaluate module, and the run summary taking its value from it."""

from __future__ import annotations

import json
import random

import pytest

evaluate = pytest.importorskip("evaluate")

import bench.metrics as metrics  # noqa: E402
from bench.errors import BenchError  # noqa: E402
from bench.registry import METRICS  # noqa: E402


def _module():
    return evaluate.load(METRICS._entries["macro_f1"], keep_in_memory=True)


def test_macro_f1_by_hand() -> None:
    out = _module().compute(predictions=["a", "a", "b", ""], references=["a", "b", "b", "b"], labels=["a", "b"])
    assert out["macro_f1"] == pytest.approx((2 / 3 + 1 / 2) / 2)  # a: 2/(2+1+0); b: 2*1/(2+0+2)
    assert out["per_label_f1"] == pytest.approx({"a": 2 / 3, "b": 1 / 2}) and out["accuracy"] == 0.5


def test_macro_f1_agrees_with_scikit_learn() -> None:
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = random.Random(7)
    labels = ["billing", "technical", "account", "other"]
    module = _module()
    for _ in range(20):
        refs = [rng.choice(labels[:3]) for _ in range(rng.randint(1, 40))]
        preds = [rng.choice(labels + [""]) for _ in refs]
        present = [x for x in labels if x in refs or x in preds]
        expected = sklearn_metrics.f1_score(refs, [p or "(none)" for p in preds], labels=present, average="macro",
                                            zero_division=0)
        assert module.compute(predictions=preds, references=refs, labels=labels)["macro_f1"] == pytest.approx(expected)


def test_unknown_metric_says_did_you_mean() -> None:
    with pytest.raises(BenchError, match="macro_f1"):
        metrics.load_metric("macro-f1")


def test_the_run_summary_takes_macro_f1_from_the_evaluate_module(tmp_path, fake_suite, monkeypatch) -> None:
    """`bench run`'s summary.json: each classify cell's macro_f1 is the module's compute on that cell's answers."""
    from bench.config import load_suite
    from bench.runner import run_suite

    calls = []
    real = metrics.load_metric

    def spy(name: str):
        calls.append(name)
        return real(name)

    monkeypatch.setattr(metrics, "load_metric", spy)
    suite = load_suite(fake_suite)
    outcome = run_suite(suite, results_dir=tmp_path / "r", isolation="inline", quiet=True)
    summary = json.loads(outcome.run.summary_path.read_text())
    refs = outcome.run.references()
    rows = outcome.run.samples()
    module = _module()
    assert calls and set(calls) == {"macro_f1"}
    for cell in summary["cells"]:
        mine = [r for r in rows if r["cell_id"] == cell["cell_id"]]
        expected = module.compute(predictions=[r["parsed"] or "" for r in mine],
                                  references=[refs[str(r["sample_id"])] for r in mine],
                                  labels=list(suite.task.labels))["macro_f1"]
        assert cell["macro_f1"] == pytest.approx(expected) and cell["macro_f1_n"] == len(mine) == 8
    assert sorted(c["macro_f1"] for c in summary["cells"])[-1] == 1.0  # the always-right fake model
