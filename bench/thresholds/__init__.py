"""Routing thresholds: calibrate per-task cascades from runs, write routing.json, and check it against its schema.

routing.json's versions, schema check and the one loader every reader uses live in bench/routing_file.py; the
names below are re-exported from there (on first use, so importing this package stays light) for the writer
(document.py) and older imports."""

from __future__ import annotations

from typing import Any

__all__ = ["MIN_ROUTING_VERSION", "ROUTING_SCHEMA_VERSION", "SCHEMA_PATH", "load_routing", "routing_schema",
           "validate_routing"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from bench import routing_file

        return getattr(routing_file, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
