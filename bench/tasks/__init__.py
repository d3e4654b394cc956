"""Task kinds: how an answer is parsed, checked (`verified`) and scored, one module per kind."""

from bench.tasks.base import Scored, TaskKind, get_task

__all__ = ["Scored", "TaskKind", "get_task"]
