"""Scorers: parsing, structural checks and per-sample scores for each task kind (pure functions)."""

from __future__ import annotations

import pytest

from bench.config.suite import (
    ClassifyTask,
    ExtractTask,
    NormalizeTask,
    RewriteTask,
    SummarizeTask,
)
from bench.tasks import get_task
from bench.tasks.classify import parse_label
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
