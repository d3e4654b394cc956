"""Routing thresholds: calibrate per-task cascades from runs, write routing.json, and check it against its schema."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from bench.errors import UserInputError

# routing.json's own version: bump on a breaking change to its fields (bench.router refuses newer files).
ROUTING_SCHEMA_VERSION = 1
SCHEMA_PATH = Path(__file__).with_name("routing.schema.json")


@lru_cache(maxsize=1)
def routing_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) that every routing.json must satisfy."""
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


def validate_routing(doc: Any, where: str) -> None:
    """Raise UserInputError naming the file and the first failing field when `doc` breaks the schema."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(routing_schema())
    errors = sorted(validator.iter_errors(doc), key=lambda e: (list(e.absolute_path).__repr__(), e.message))
    if errors:
        first = errors[0]
        field = ".".join(str(p) for p in first.absolute_path) or None
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise UserInputError(f"not a valid routing file: {first.message}{more}", file=where, field=field)
