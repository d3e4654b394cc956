"""Exact match of canonical strings, as an evaluate module."""

import datasets
import evaluate

from bench.tasks.normalize import parse_value


class ExactMatch(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="Share of answers (first line, quotes stripped) equal to the canonical reference.",
            citation="",
            inputs_description="predictions and references: strings.",
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Value("string")}),
        )

    def _compute(self, predictions, references):
        scores = [float(parse_value(p) == r.strip()) for p, r in zip(predictions, references)]
        return {"exact_match": sum(scores) / len(scores) if scores else float("nan"), "scores": scores}
