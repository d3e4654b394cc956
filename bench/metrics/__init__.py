"""Corpus-level metrics (not a mean of per-sample scores) as `evaluate` modules, loaded by path, offline.

Per-sample scores are pure functions in `bench.tasks`; the summary's mean and interval of a metric come from those
scores (bench.results.summary). A metric that only exists over the whole set of answers, like macro-F1, is an
evaluate module here, and the summary takes its value from the module's `compute`."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from bench.registry import METRICS

HERE = Path(__file__).parent

# metric name -> its evaluate module file (a path string: evaluate imports it, the registry never does)
for _name in ("macro_f1",):
    METRICS.register(_name, str(HERE / _name / f"{_name}.py"))


@lru_cache(maxsize=None)
def load_metric(name: str) -> Any:
    """One of the project's evaluate modules, by its file path; computed in memory (no cache files)."""
    import evaluate

    path = METRICS._entries.get(name)
    if path is None:
        METRICS.get(name)  # raises the 'unknown metric ... did you mean' error
    return evaluate.load(str(path), keep_in_memory=True)


def macro_f1(predictions: Sequence[str | None], references: Sequence[str], labels: Sequence[str]) -> float:
    """Classify's corpus-level macro-F1 over `labels` (None: an answer that named no label, counted wrong)."""
    result = load_metric("macro_f1").compute(predictions=[p or "" for p in predictions],
                                             references=list(references), labels=list(labels))
    return float(result["macro_f1"])
