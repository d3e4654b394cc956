"""Accuracy and macro-F1 of label predictions, as an evaluate module."""

import evaluate

from bench.metrics.base import string_pair_info
from bench.tasks.classify import macro_f1


class Accuracy(evaluate.Metric):
    def _info(self):
        return string_pair_info(
            "Share of predictions equal to the reference label, and macro-F1 over the labels.",
            inputs="predictions: labels (empty string when unparsed); references: labels.")

    def _compute(self, predictions, references, labels=None):
        scores = [float(p == r) for p, r in zip(predictions, references)]
        labels = labels or sorted(set(references))
        preds = [p or None for p in predictions]
        return {"accuracy": sum(scores) / len(scores) if scores else float("nan"),
                "macro_f1": macro_f1(preds, list(references), list(labels)), "scores": scores}
