"""normalize: one canonical string; scored by exact match, verified when it fits the suite's pattern."""

from __future__ import annotations

import re
from typing import Any

from bench.tasks.base import Scored, TaskKind, first_line


def parse_value(output: str) -> str:
    line = first_line(output)
    return line.strip().strip("`\"'").strip()


def score(output: str, reference: Any, sample: dict[str, Any], options: Any) -> Scored:
    value = parse_value(output)
    verified = re.fullmatch(options.pattern, value) is not None
    return Scored(parsed=value, verified=verified, scores={"exact_match": float(value == str(reference).strip())})


TASK = TaskKind(name="normalize", metric="exact_match", metrics=("exact_match",), higher_is_better=True,
                score_fn=score)
