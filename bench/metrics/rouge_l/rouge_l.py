"""ROUGE-L F-measure (rouge-score, stemmed), as an evaluate module."""

import evaluate

from bench.metrics.base import mean_and_scores, string_pair_info
from bench.tasks.summarize import rouge_l


class RougeL(evaluate.Metric):
    def _info(self):
        return string_pair_info("ROUGE-L F-measure per sample and its mean.",
                                "Lin, ROUGE: A Package for Automatic Evaluation of Summaries, 2004.")

    def _compute(self, predictions, references):
        return mean_and_scores("rougeL", rouge_l, predictions, references)
