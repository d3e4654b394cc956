"""Sentence-level chrF (sacrebleu) on a 0..1 scale, as an evaluate module."""

import datasets
import evaluate

from bench.tasks.rewrite import chrf


class ChrF(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="chrF per sample (sacrebleu, divided by 100) and its mean.",
            citation="Popovic, chrF: character n-gram F-score for automatic MT evaluation, 2015.",
            inputs_description="predictions and references: strings.",
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Value("string")}),
        )

    def _compute(self, predictions, references):
        scores = [chrf(p, r) for p, r in zip(predictions, references)]
        return {"chrf": sum(scores) / len(scores) if scores else float("nan"), "scores": scores}
