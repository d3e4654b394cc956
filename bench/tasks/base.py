"""What every task kind provides: parse, a structural check, per-sample scores, a default metric."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from bench.registry import TASKS


@dataclass
class Scored:
    """One sample's outcome: the parsed answer, whether it passed the structural check, and its scores."""

    parsed: Any
    verified: bool
    scores: dict[str, float | None] = field(default_factory=dict)


@dataclass(frozen=True)
class TaskKind:
    """A task kind: `score(output, reference, sample, options)` is a pure function of its inputs."""

    name: str
    metric: str                     # the default metric: a key of Scored.scores
    metrics: tuple[str, ...]        # every per-sample score the kind produces
    higher_is_better: bool
    score_fn: Any

    def score(self, output: str, reference: Any, sample: dict[str, Any], options: Any) -> Scored:
        return self.score_fn(output, reference, sample, options)


def get_task(kind: str) -> TaskKind:
    return TASKS.get(kind)


_WS = re.compile(r"\s+")


def norm_text(s: Any) -> str:
    """Case- and space-insensitive form of a value, for comparisons."""
    return _WS.sub(" ", str(s)).strip().casefold()


def first_line(text: str) -> str:
    for line in text.strip().splitlines():
        if line.strip():
            return line.strip()
    return ""


def word_count(text: str) -> int:
    return len(text.split())
