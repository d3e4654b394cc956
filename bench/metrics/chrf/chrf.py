"""Sentence-level chrF (sacrebleu) on a 0..1 scale, as an evaluate module."""

import evaluate

from bench.metrics.base import mean_and_scores, string_pair_info
from bench.tasks.rewrite import chrf


class ChrF(evaluate.Metric):
    def _info(self):
        return string_pair_info("chrF per sample (sacrebleu, divided by 100) and its mean.",
                                "Popovic, chrF: character n-gram F-score for automatic MT evaluation, 2015.")

    def _compute(self, predictions, references):
        return mean_and_scores("chrf", chrf, predictions, references)
