"""classify: the answer is one of the suite's labels; scored by accuracy (macro-F1, corpus-level: bench.metrics)."""

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


TASK = TaskKind(name="classify", metric="accuracy", metrics=("accuracy",), higher_is_better=True, score_fn=score)
