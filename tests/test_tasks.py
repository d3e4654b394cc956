"""Scorers: parsing, structural checks and per-sample scores for each task kind, and the evaluate modules."""

from __future__ import annotations

import json
import math

import pytest

from bench.config.suite import (
    ClassifyTask,
    ExtractTask,
    NormalizeTask,
    RewriteTask,
    SummarizeTask,
)
from bench.metrics import load_metric
from bench.tasks import get_task
from bench.tasks.classify import macro_f1, parse_label
from bench.tasks.extract import field_prf, parse_json

LABELS = ClassifyTask(kind="classify", labels=["billing", "technical", "account"])


@pytest.mark.parametrize(("output", "label"), [
    ("billing", "billing"), ("  Billing.\n", "billing"), ("Label: technical", "technical"),
    ("**account**", "account"), ("It is billing", None), ("", None), ("shipping", None),
])
def test_classify_parse(output, label) -> None:
    assert parse_label(output, LABELS.labels) == label


def test_classify_score_and_verified() -> None:
    task = get_task("classify")
    s = task.score("Technical", "technical", {}, LABELS)
    assert s.verified and s.scores == {"accuracy": 1.0}
    s = task.score("I think it's billing", "billing", {}, LABELS)
    assert not s.verified and s.scores["accuracy"] == 0.0


def test_macro_f1() -> None:
    assert macro_f1(["a", "a", "b", None], ["a", "b", "b", "b"], ["a", "b"]) == pytest.approx((2 / 3 + 1 / 2) / 2)


SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}, "amount": {"type": ["number", "null"]}},
          "required": ["name", "amount"], "additionalProperties": False}


@pytest.mark.parametrize("output", [
    '{"name": "Ann", "amount": 12.5}',
    '```json\n{"name": "Ann", "amount": 12.5}\n```',
    'Sure! Here it is:\n{"name": "Ann", "amount": 12.5}\nAnything else?',
])
def test_extract_parses_fences_and_prose(output) -> None:
    assert parse_json(output) == {"name": "Ann", "amount": 12.5}


def test_extract_field_scores_normalize_values() -> None:
    prf = field_prf({"name": "  ann ", "amount": "12.50", "extra": "x"}, {"name": "Ann", "amount": 12.5,
                                                                           "phone": None})
    assert prf["recall"] == 1.0 and prf["precision"] == pytest.approx(2 / 3)
    task = get_task("extract")
    opts = ExtractTask(kind="extract", json_schema=SCHEMA)
    s = task.score('{"name": "Ann", "amount": "12.5"}', {"name": "Ann", "amount": 12.5}, {}, opts)
    assert not s.verified  # amount is a string: schema-invalid, though the values match
    assert s.scores["field_f1"] == 1.0 and s.scores["schema_valid"] == 0.0
    s = task.score("no json here", {"name": "Ann", "amount": None}, {}, opts)
    assert s.parsed is None and not s.verified and s.scores["field_f1"] == 0.0


def test_normalize_pattern_and_exact_match() -> None:
    opts = NormalizeTask(kind="normalize", pattern=r"^\d{4}-\d{2}-\d{2}$")
    task = get_task("normalize")
    s = task.score("2026-03-04\n", "2026-03-04", {}, opts)
    assert s.verified and s.scores["exact_match"] == 1.0
    s = task.score("March 4 2026", "2026-03-04", {}, opts)
    assert not s.verified and s.scores["exact_match"] == 0.0


def test_summarize_rouge_and_length() -> None:
    opts = SummarizeTask(kind="summarize", max_words=5)
    task = get_task("summarize")
    s = task.score("the team chose postgres", "the team chose postgres", {}, opts)
    assert s.scores["rougeL"] == pytest.approx(1.0) and s.verified
    s = task.score("the team talked for a long time and chose postgres", "the team chose postgres", {}, opts)
    assert 0 < s.scores["rougeL"] < 1 and not s.verified and s.scores["length_ok"] == 0.0


def test_rewrite_chrf_and_required_terms() -> None:
    opts = RewriteTask(kind="rewrite", required_terms_field="terms")
    task = get_task("rewrite")
    sample = {"terms": ["#4521", "Friday"]}
    s = task.score("Your order #4521 will arrive on Friday.", "Your order #4521 arrives Friday.", sample, opts)
    assert s.verified and s.scores["terms_kept"] == 1.0 and 0 < s.scores["chrf"] <= 1
    s = task.score("Your order will arrive soon.", "Your order #4521 arrives Friday.", sample, opts)
    assert not s.verified and s.scores["terms_kept"] == 0.0


def test_evaluate_modules_agree_with_the_scorers() -> None:
    acc = load_metric("accuracy").compute(predictions=["a", "b", ""], references=["a", "a", "b"])
    assert acc["accuracy"] == pytest.approx(1 / 3) and acc["scores"] == [1.0, 0.0, 0.0]
    refs = [{"name": "Ann", "amount": 1}, {"name": "Bo", "amount": None}]
    preds = ['{"name": "Ann", "amount": 1}', '```json\n{"name": "Bob"}\n```']
    f1 = load_metric("field_f1").compute(predictions=preds, references=[json.dumps(r) for r in refs])
    assert f1["scores"] == [field_prf(parse_json(p), r)["f1"] for p, r in zip(preds, refs)]
    rl = load_metric("rouge_l").compute(predictions=["a b c"], references=["a b d"])
    assert rl["rougeL"] == pytest.approx(get_task("summarize").score("a b c", "a b d", {},
                                         SummarizeTask(kind="summarize", max_words=9)).scores["rougeL"])
    em = load_metric("exact_match").compute(predictions=["`2026-01-01`"], references=["2026-01-01"])
    assert em["exact_match"] == 1.0
    ch = load_metric("chrf").compute(predictions=["hello"], references=["hello"])
    assert math.isclose(ch["chrf"], 1.0)
