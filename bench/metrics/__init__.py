"""The project's metrics as `evaluate` modules, loaded by path (the hub's metrics are not needed)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from bench.registry import METRICS

HERE = Path(__file__).parent

# metric name -> evaluate module folder; per-sample score keys map onto these names.
for _name in ("accuracy", "field_f1", "rouge_l", "chrf", "exact_match"):
    METRICS.register(_name, str(HERE / _name / f"{_name}.py"))

# The per-sample score key a task writes, to the evaluate module that computes its corpus value.
SCORE_TO_METRIC = {"accuracy": "accuracy", "field_f1": "field_f1", "rougeL": "rouge_l", "chrf": "chrf",
                   "exact_match": "exact_match"}


@lru_cache(maxsize=None)
def load_metric(name: str) -> Any:
    """Load one of the project's evaluate modules by its file path."""
    import evaluate

    path = METRICS._entries.get(name)  # a path string, never imported as a Python module by the registry
    if path is None:
        METRICS.get(name)  # raises the 'unknown metric ... did you mean' error
    return evaluate.load(str(path))
