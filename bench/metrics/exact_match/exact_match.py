"""Exact match of canonical strings, as an evaluate module."""

import evaluate

from bench.metrics.base import mean_and_scores, string_pair_info
from bench.tasks.normalize import parse_value


def _match(prediction: str, reference: str) -> float:
    return float(parse_value(prediction) == reference.strip())


class ExactMatch(evaluate.Metric):
    def _info(self):
        return string_pair_info("Share of answers (first line, quotes stripped) equal to the canonical reference.")

    def _compute(self, predictions, references):
        return mean_and_scores("exact_match", _match, predictions, references)
