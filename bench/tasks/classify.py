"""classify: the answer is one of the suite's labels; scored by accuracy (macro-F1 at the corpus level)."""

from __future__ import annotations

import re
from typing import Any

from bench.tasks.base import Scored, TaskKind, first_line, norm_text


def parse_label(output: str, labels: list[str]) -> str | None:
    """The label the answer names: exact after normalizing case, space and trailing punctuation."""
    by_norm = {norm_text(label): label for label in labels}
    line = first_line(output)
    line = re.sub(r"^(label|category|answer)\s*[:\-]\s*", "", line, flags=re.I)
    candidate = norm_text(line.strip(" \t.\"'`*"))
    return by_norm.get(candidate)


def score(output: str, reference: Any, sample: dict[str, Any], options: Any) -> Scored:
    label = parse_label(output, options.labels)
    ok = label is not None
    correct = float(ok and norm_text(label) == norm_text(reference))
    return Scored(parsed=label, verified=ok, scores={"accuracy": correct})


def macro_f1(predictions: list[str | None], references: list[str], labels: list[str]) -> float:
    """Macro-averaged F1 over the label set; an unparsed prediction counts as wrong."""
    f1s = []
    for label in labels:
        tp = sum(1 for p, r in zip(predictions, references) if p == label and r == label)
        fp = sum(1 for p, r in zip(predictions, references) if p == label and r != label)
        fn = sum(1 for p, r in zip(predictions, references) if p != label and r == label)
        if tp + fp + fn == 0:
            continue
        f1s.append(2 * tp / (2 * tp + fp + fn))
    return sum(f1s) / len(f1s) if f1s else 0.0


TASK = TaskKind(name="classify", metric="accuracy", metrics=("accuracy",), higher_is_better=True, score_fn=score)
