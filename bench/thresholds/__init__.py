"""Routing thresholds: calibrate per-task cascades from runs, write routing.json, and check it against its schema."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from bench.errors import UserInputError

# routing.json's own version: bump on a breaking change to its fields (bench.router refuses newer files).
# 2: Learn-then-Test policies with `status`, `guarantee` and `fallback` per task; version 1 files carried no
#    guarantee and cannot be migrated (their thresholds were chosen without one): they are refused.
# 3: an optional pre-router per task (`prerouter`, its artefact by sha256) and the policy families compared
#    (`families`); version 2 files hold no pre-router and are read as they are.
ROUTING_SCHEMA_VERSION = 3
MIN_ROUTING_VERSION = 2
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


def read_routing(path: str | Path, flag: str | None = None, *, check_schema: bool = True) -> dict[str, Any]:
    """Read and validate a routing.json: the one loader every command uses. Exit-2 errors name the file and field
    (`flag`, the option that named the file, where it is missing). check_schema=False (the report, which renders
    whatever it is given) checks only that it is a routing file of this version with a `tasks` object."""
    where = str(path)
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserInputError("routing file not found", file=where, field=flag) from None
    except IsADirectoryError:
        raise UserInputError("expected a routing.json file, got a directory", file=where) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise UserInputError(f"not valid JSON: {exc}", file=where) from None
    except OSError as exc:
        raise UserInputError(f"cannot read: {exc.strerror or exc}", file=where, field=flag) from None
    if not isinstance(doc, dict):
        raise UserInputError(f"expected a JSON object (a routing file), got a JSON {type(doc).__name__}",
                             file=where)
    version = doc.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise UserInputError("no valid schema_version: not a routing file", file=where, field="schema_version")
    if version > ROUTING_SCHEMA_VERSION:
        raise UserInputError(f"schema_version {version} is newer than this bench understands "
                             f"({ROUTING_SCHEMA_VERSION})", file=where, field="schema_version", hint="upgrade bench")
    if version < MIN_ROUTING_VERSION:
        raise UserInputError(f"schema_version {version} routing files were calibrated without the statistical "
                             f"guarantee this bench requires (version {MIN_ROUTING_VERSION} or later)", file=where,
                             field="schema_version", hint="regenerate it with 'bench thresholds RESULTS -o FILE'")
    if check_schema:
        validate_routing(doc, where)
    elif not isinstance(doc.get("tasks"), dict):
        raise UserInputError("no `tasks` object: not a routing.json written by `bench thresholds`", file=where,
                             field="tasks")
    return doc
