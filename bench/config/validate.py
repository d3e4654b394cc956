"""Validation of a YAML-loaded document into a typed model, with the file, line and field of the first error."""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Annotated, Any, TypeVar, Union

from pydantic import BaseModel, ValidationError

from bench.config.yamlpos import Loc, line_for
from bench.errors import UserInputError, did_you_mean

M = TypeVar("M", bound=BaseModel)


def validate(model: type[M], data: Any, lines: dict[Loc, int], path: Path) -> M:
    """model.model_validate(data), turning the first error into a UserInputError with file, line, field, hint."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        # a misspelt key shows up as both "unknown" and "missing": report the misspelling
        first = next((e for e in errors if e.get("type") == "extra_forbidden"), errors[0])
        keys = _loc_to_keys(tuple(first["loc"]), data)
        field = ".".join(str(k) for k in keys) or None
        hint = _hint_for_extra(model, keys, data) if first.get("type") == "extra_forbidden" and keys else None
        more = len(errors) - 1
        message = _explain(dict(first)) + (f" (and {more} more error{'s' if more > 1 else ''})" if more else "")
        raise UserInputError(message, file=str(path), line=line_for(lines, keys), field=field, hint=hint) from None


def _loc_to_keys(loc: tuple[Any, ...], data: Any) -> tuple[Any, ...]:
    """Drop pydantic's union-branch names (e.g. 'classify') that are not keys in the data."""
    out: list[Any] = []
    node = data
    for part in loc:
        if isinstance(node, dict) and part in node:
            out.append(part)
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            out.append(part)
            node = node[part]
        elif isinstance(node, dict) and node.get("kind") == part:
            continue  # pydantic's name for the union branch the 'kind' selected: not a key in the file
        elif isinstance(node, dict) and isinstance(part, str):
            # an unknown key (extra_forbidden) or a missing one: keep it for the message
            out.append(part)
            node = None
    return tuple(out)


def _known_keys(model: type[BaseModel]) -> list[str]:
    return [k for k, f in model.model_fields.items() if not f.exclude]


def _explain(err: dict[str, Any]) -> str:
    kind = err.get("type", "")
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    if kind == "union_tag_invalid":
        ctx = err.get("ctx", {})
        return f"unknown kind {ctx.get('tag')!r}; expected one of {ctx.get('expected_tags')}"
    if kind == "union_tag_not_found":
        return "missing 'kind'"
    msg = err.get("msg", "invalid value")
    return msg.removeprefix("Value error, ")


def _hint_for_extra(root: type[BaseModel], keys: tuple[Any, ...], data: Any) -> str | None:
    """For an unknown key, find the model it sits in and suggest the closest known key."""
    ann: Any = root
    node = data
    for part in keys[:-1]:
        if isinstance(part, int):
            args = typing.get_args(ann)
            if typing.get_origin(ann) is Annotated:
                args = typing.get_args(args[0])
            ann = args[0] if args else None
            node = node[part] if isinstance(node, list) and part < len(node) else None
            continue
        model = _field_model(ann, node)
        if model is None or part not in model.model_fields:
            return None
        ann = model.model_fields[part].annotation
        node = node.get(part) if isinstance(node, dict) else None
    model = _field_model(ann, node)
    if model is not None:
        return did_you_mean(str(keys[-1]), _known_keys(model))
    return None


def _field_model(annotation: Any, node: Any) -> Any:
    """The BaseModel class an annotation resolves to for this data node (following unions and lists)."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if origin is Annotated:
        return _field_model(args[0], node)
    if origin in (list,):
        return _field_model(args[0], node)
    if origin is Union or origin is types.UnionType:
        kind = node.get("kind") if isinstance(node, dict) else None
        for arg in args:
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                f = arg.model_fields.get("kind")
                if kind is None or f is None or kind in typing.get_args(f.annotation):
                    return arg
    return None
