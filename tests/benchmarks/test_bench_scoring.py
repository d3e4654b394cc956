"""Scoring speed: each task kind's score function over 1,000 answers (a mix of right, wrong and malformed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench.config import load_suite
from bench.tasks import get_task

REPO = Path(__file__).resolve().parents[2]
N = 1_000


def _answers(kind: str, reference: Any, i: int) -> str:
    """A model-like answer: right, slightly off, or wrong, by turns."""
    if kind == "extract":
        ref = reference if isinstance(reference, dict) else json.loads(reference)
        if i % 3 == 0:
            return json.dumps(ref)
        if i % 3 == 1:
            return "```json\n" + json.dumps({**ref, "amount": None}) + "\n```"
        return "Sure! Here is the JSON: {\"name\": \"x\""
    text = str(reference)
    if i % 3 == 0:
        return text
    if i % 3 == 1:
        return text.upper() + "."
    return text[: len(text) // 2] + " and more words"


def _workload(kind: str) -> tuple[Any, list[tuple[str, Any, dict[str, Any]]]]:
    suite = load_suite(REPO / "suites" / f"{kind}.yaml")
    cfg = suite.dataset
    lines = [json.loads(line) for line in suite.data_path().read_text().splitlines() if line.strip()]
    work = []
    for i in range(N):
        row = lines[i % len(lines)]
        reference = row[cfg.reference_field]
        fields = {k: row.get(k) for k in row if k != cfg.reference_field}
        work.append((_answers(kind, reference, i), reference, fields))
    return suite, work


@pytest.mark.parametrize("kind", ["classify", "extract", "normalize", "summarize", "rewrite"])
def test_score_1000_answers(benchmark: Any, kind: str) -> None:
    suite, work = _workload(kind)
    task = get_task(kind)
    metric = suite.metric or task.metric

    def score_all() -> list[float | None]:
        return [task.score(out, ref, fields, suite.task).scores.get(metric) for out, ref, fields in work]

    benchmark.extra_info.update({"answers": N, "metric": metric})
    scores = benchmark.pedantic(score_all, rounds=5, iterations=1, warmup_rounds=1)
    assert len(scores) == N and all(s is None or 0.0 <= s <= 1.0 for s in scores)
    assert max(s for s in scores if s is not None) == 1.0  # the verbatim answers score full marks
