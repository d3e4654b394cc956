"""ROUGE-L F-measure (rouge-score, stemmed), as an evaluate module."""

import datasets
import evaluate

from bench.tasks.summarize import rouge_l


class RougeL(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="ROUGE-L F-measure per sample and its mean.",
            citation="Lin, ROUGE: A Package for Automatic Evaluation of Summaries, 2004.",
            inputs_description="predictions and references: strings.",
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Value("string")}),
        )

    def _compute(self, predictions, references):
        scores = [rouge_l(p, r) for p, r in zip(predictions, references)]
        return {"rougeL": sum(scores) / len(scores) if scores else float("nan"), "scores": scores}
