"""summarize: ROUGE-L F against the reference, and whether the summary keeps to the length limit."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from bench.tasks.base import Scored, TaskKind, word_count


@lru_cache(maxsize=1)
def _scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(prediction: str, reference: str) -> float:
    return float(_scorer().score(reference, prediction)["rougeL"].fmeasure)


def score(output: str, reference: Any, sample: dict[str, Any], options: Any) -> Scored:
    text = output.strip()
    within = word_count(text) <= options.max_words
    return Scored(parsed=text, verified=bool(text) and within,
                  scores={"rougeL": rouge_l(text, str(reference)), "length_ok": float(within)})


TASK = TaskKind(name="summarize", metric="rougeL", metrics=("rougeL", "length_ok"), higher_is_better=True,
                score_fn=score)
