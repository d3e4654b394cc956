"""Field-level precision, recall and F1 of extracted JSON objects, as an evaluate module."""

import json

import evaluate

from bench.metrics.base import string_pair_info
from bench.tasks.extract import field_prf, parse_json


class FieldF1(evaluate.Metric):
    def _info(self):
        return string_pair_info(
            "Per-field precision/recall/F1 of a JSON answer against a reference object, values normalized.",
            inputs="predictions: model answers (JSON, fences allowed); references: JSON objects as strings.")

    def _compute(self, predictions, references):
        rows = [field_prf(parse_json(p), json.loads(r)) for p, r in zip(predictions, references)]
        n = len(rows) or 1
        return {"field_f1": sum(r["f1"] for r in rows) / n, "field_precision": sum(r["precision"] for r in rows) / n,
                "field_recall": sum(r["recall"] for r in rows) / n, "scores": [r["f1"] for r in rows]}
