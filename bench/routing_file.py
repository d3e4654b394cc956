"""routing.json's one loader: `load_routing(path)` reads, migrates, validates and types the file for every reader.

Every command that reads a routing.json goes through here (`bench.router` and so `bench serve`, `bench report
--routing`, `bench compare --routing`), so a bad file is refused by each of them with the same exit-2 message: the
file, the line (bad JSON) or the field (a schema violation), and what was expected. `bench thresholds` writes the
file (bench/thresholds/document.py) and checks it against the same schema, bench/thresholds/routing.schema.json.

Versions (asv's rule): an older file is brought up to ROUTING_SCHEMA_VERSION by explicit step functions
(MIGRATIONS); one older than MIN_ROUTING_VERSION, or newer than this bench, is refused. CONTRACT.md lets a writer
add fields, so every model here keeps keys it does not name (`extra="allow"`); the JSON Schema decides what is
valid, and the models type what the readers use.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

from bench.errors import UserInputError, did_you_mean

# routing.json's own version: bump on a breaking change to its fields, and add a step to MIGRATIONS.
# 2: Learn-then-Test policies with `status`, `guarantee` and `fallback` per task; version 1 files carried no
#    guarantee and cannot be migrated (their thresholds were chosen without one): they are refused.
# 3: an optional pre-router per task (`prerouter`, its artefact by sha256) and the policy families compared
#    (`families`); version 2 files hold neither, so their step only restamps the version.
ROUTING_SCHEMA_VERSION = 3
MIN_ROUTING_VERSION = 2
SCHEMA_PATH = Path(__file__).parent / "thresholds" / "routing.schema.json"

Status = Literal["meets_target", "insufficient_data", "unreachable", "failed_holdout"]


# ---------------------------------------------------------------- typed views of the contract's fields

class _Open(BaseModel):
    """A routing.json object: named fields typed, any other key kept as found (CONTRACT.md: fields may be added)."""

    model_config = ConfigDict(extra="allow", frozen=True)


class Quality(_Open):
    mean: float | None
    ci_low: float | None
    ci_high: float | None
    n: int | None = None


class AcceptIf(_Open):
    """When a tier's answer is kept: `confidence` at or above `threshold`, `verified`, `always` or `never`."""

    signal: Literal["confidence", "verified", "always", "never"]
    threshold: float | None


class Tier(_Open):
    cell: str
    quality: Quality
    cost_per_1k_usd: float | None
    latency_p95_s: float | None
    meets_target: bool
    accept_if: AcceptIf
    locality: Literal["local", "on-prem", "cloud"]
    eligible: bool
    excluded_because: list[str] | None
    cell_detail: dict[str, Any] | None = None
    runtime: dict[str, Any] | None = None  # the backend config and model a router loads this tier with
    concurrency: int | None = Field(None, gt=0)       # requests in flight it was priced and timed at
    main_concurrency: int | None = Field(None, gt=0)  # requests in flight in its run's main pass


class Expected(_Open):
    """What following the policy gave on holdout samples."""

    quality: Quality
    cost_per_1k_usd: float | None
    escalation_rate: float | None
    n: int
    meets_target_on_holdout: bool | None
    message: str
    answered_by: list[dict[str, Any]] = []


class Guarantee(_Open):
    method: str
    delta: float
    holds: bool


class Policy(_Open):
    chain: list[str]
    status: Status


class TaskPolicy(_Open):
    """One task's block: its tiers cheapest first, the policy over them, and what it is expected to deliver."""

    target: float
    metric: str
    tiers: list[Tier]
    default: str | None
    expected: Expected
    status: Status
    guarantee: Guarantee
    kind: str | None = None
    fallback: str | None = None
    policy: Policy | None = None
    prerouter: dict[str, Any] | None = None  # checked against its artefact by bench.routers.prerouter
    runtime: dict[str, Any] | None = None    # the suite's dataset, task, prompt and generation settings

    def tier(self, cell: str) -> Tier | None:
        return next((t for t in self.tiers if t.cell == cell), None)


class RoutingDoc(_Open):
    """A validated routing.json at ROUTING_SCHEMA_VERSION (older files migrated), and where it was read from."""

    schema_version: Literal[3]
    created_at: str
    sources: list[str]
    tasks: dict[str, TaskPolicy]
    bench_version: str | None = None
    rules: dict[str, str] | None = None
    _path: str | None = PrivateAttr(default=None)
    _migrated_from: int | None = PrivateAttr(default=None)
    _raw: dict[str, Any] = PrivateAttr(default_factory=dict)

    @property
    def path(self) -> str | None:
        """The file it was read from (None for a document validated in memory)."""
        return self._path

    @property
    def migrated_from(self) -> int | None:
        """The file's own schema_version where it was older and migrated on load, else None."""
        return self._migrated_from

    def as_dict(self) -> dict[str, Any]:
        """The document as JSON values, every key as found (after migration); a copy, so the model stays as read."""
        return copy.deepcopy(self._raw)

    def task(self, name: str) -> TaskPolicy:
        """The task's block; an unknown name is an exit-2 error with "did you mean"."""
        if name not in self.tasks:
            raise UserInputError(f"no task {name!r} in the routing file; known: {', '.join(sorted(self.tasks))}",
                                 file=self.path, field="tasks", hint=did_you_mean(name, self.tasks))
        return self.tasks[name]


# ---------------------------------------------------------------- schema and migrations

@lru_cache(maxsize=1)
def routing_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) that every routing.json must satisfy."""
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


def validate_routing(doc: Any, where: str | None) -> None:
    """Raise UserInputError naming the file and the first failing field when `doc` breaks the schema."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(routing_schema())
    errors = sorted(validator.iter_errors(doc), key=lambda e: (list(e.absolute_path).__repr__(), e.message))
    if errors:
        first = errors[0]
        field = ".".join(str(p) for p in first.absolute_path) or None
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise UserInputError(f"not a valid routing file: {first.message}{more}", file=where, field=field)


def _v2_to_v3(doc: dict[str, Any]) -> dict[str, Any]:
    """Version 3 added optional fields only (`prerouter`, `families`): a version 2 file is a valid version 3 one."""
    return {**doc, "schema_version": 3}


# MIGRATIONS[v] takes a version-v document to version v + 1.
MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {2: _v2_to_v3}


def _check_version(doc: dict[str, Any], where: str | None) -> int:
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
    return version


def migrate(doc: dict[str, Any], where: str | None = None) -> tuple[dict[str, Any], int]:
    """The document at ROUTING_SCHEMA_VERSION, and the version it had; refuses versions it cannot take there."""
    version = _check_version(doc, where)
    out = doc
    for v in range(version, ROUTING_SCHEMA_VERSION):
        out = MIGRATIONS[v](out)
    return out, version


# ---------------------------------------------------------------- loading

def parse_routing(doc: Any, where: str | None = None) -> RoutingDoc:
    """A routing document already parsed from JSON, checked and typed exactly as `load_routing` does for a file."""
    if not isinstance(doc, dict):
        raise UserInputError(f"expected a JSON object (a routing file), got a JSON {type(doc).__name__}", file=where)
    current, version = migrate(doc, where)
    validate_routing(current, where)
    try:
        routing = RoutingDoc.model_validate(current)
    except ValidationError as exc:  # the schema admitted it, so this is a model stricter than the schema
        first = exc.errors()[0]
        raise UserInputError(f"not a valid routing file: {first['msg']}", file=where,
                             field=".".join(str(p) for p in first["loc"]) or None) from None
    routing._path = where
    routing._migrated_from = version if version != ROUTING_SCHEMA_VERSION else None
    routing._raw = copy.deepcopy(current)
    return routing


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number (bench writes null)")


def load_routing(path: str | Path, flag: str | None = None) -> RoutingDoc:
    """Read and validate a routing.json: the one loader every reader uses. Every failure is an exit-2
    UserInputError naming the file, and the line (bad JSON) or field (a schema violation); `flag` is the option
    that named the file, given where the file is missing."""
    where = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserInputError("routing file not found", file=where, field=flag) from None
    except IsADirectoryError:
        raise UserInputError("expected a routing.json file, got a directory", file=where) from None
    except UnicodeDecodeError as exc:
        raise UserInputError(f"not valid JSON: not UTF-8 text ({exc.reason})", file=where) from None
    except OSError as exc:
        raise UserInputError(f"cannot read: {exc.strerror or exc}", file=where, field=flag) from None
    try:
        doc = json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise UserInputError(f"not valid JSON: {exc.msg} (column {exc.colno})", file=where,
                             line=exc.lineno) from None
    except ValueError as exc:
        raise UserInputError(f"not valid JSON: {exc}", file=where) from None
    return parse_routing(doc, where)
