"""Macro-F1 of label predictions over a label set, as an evaluate module (standalone: it imports nothing of bench)."""

from __future__ import annotations

import datasets
import evaluate

_DESCRIPTION = """Macro-averaged F1: the F1 of each label, averaged with equal weight per label, so a rare class counts
as much as a common one. A prediction that names no label (empty string) is wrong for every label. Labels that
neither the predictions nor the references use are left out of the average (scikit-learn's `labels=` restricted to
the labels present). Also returns accuracy and each label's F1."""

_INPUTS = """predictions: labels, the empty string where the answer named none; references: labels;
labels (optional): the label set, default the labels the references use."""


def macro_f1(predictions: list[str | None], references: list[str], labels: list[str]) -> tuple[float, dict]:
    """(macro-F1, {label: F1}) over `labels`; None or "" as a prediction counts as wrong."""
    per_label = {}
    for label in labels:
        tp = sum(1 for p, r in zip(predictions, references) if p == label and r == label)
        fp = sum(1 for p, r in zip(predictions, references) if p == label and r != label)
        fn = sum(1 for p, r in zip(predictions, references) if p != label and r == label)
        if tp + fp + fn:
            per_label[label] = 2 * tp / (2 * tp + fp + fn)
    return (sum(per_label.values()) / len(per_label) if per_label else 0.0), per_label


class MacroF1(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation="", inputs_description=_INPUTS,
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Value("string")}))

    def _compute(self, predictions, references, labels=None):
        preds = [p or None for p in predictions]
        labels = list(labels) if labels else sorted(set(references))
        value, per_label = macro_f1(preds, list(references), labels)
        n = len(references)
        return {"macro_f1": value, "per_label_f1": per_label,
                "accuracy": sum(p == r for p, r in zip(preds, references)) / n if n else float("nan")}
