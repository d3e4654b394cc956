"""Routing thresholds: calibrate per-task cascades from runs, write routing.json, and check it against its schema.

routing.json's versions, schema check and the one loader every reader uses live in bench/routing_file.py; the
names below are re-exported for the writer (document.py) and older imports."""

from __future__ import annotations

from bench.routing_file import (
    MIN_ROUTING_VERSION,
    ROUTING_SCHEMA_VERSION,
    SCHEMA_PATH,
    load_routing,
    routing_schema,
    validate_routing,
)

__all__ = ["MIN_ROUTING_VERSION", "ROUTING_SCHEMA_VERSION", "SCHEMA_PATH", "load_routing", "routing_schema",
           "validate_routing"]
