"""What the project's evaluate modules share: their info block and the mean-plus-per-sample result shape."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import datasets
import evaluate


def string_pair_info(description: str, citation: str = "", inputs: str = "predictions and references: strings.") \
        -> evaluate.MetricInfo:
    return evaluate.MetricInfo(
        description=description, citation=citation, inputs_description=inputs,
        features=datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}),
    )


def mean_and_scores(name: str, score: Callable[[str, str], float], predictions: Sequence[str],
                    references: Sequence[str]) -> dict:
    scores = [score(p, r) for p, r in zip(predictions, references)]
    return {name: sum(scores) / len(scores) if scores else float("nan"), "scores": scores}
