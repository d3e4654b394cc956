"""YAML loading that remembers the line of every key, so validation errors can point at it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from bench.errors import UserInputError

Loc = tuple[Any, ...]

# A suite is a small document. These caps keep a hostile one (nested aliases that expand exponentially, a list
# nested thousands deep) from taking the process down: past them the file is refused, not expanded.
MAX_NODES = 100_000   # nodes after expanding every alias
MAX_DEPTH = 64        # nesting of mappings and lists
MAX_ALIASES = 1_000


class _SafeLineLoader(yaml.SafeLoader):
    """SafeLoader (no tags that run code) that rejects duplicate keys."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if not isinstance(key_node, yaml.ScalarNode):
            raise UserInputError("a key must be a plain scalar (a name), not a list or mapping",
                                 line=key_node.start_mark.line + 1)
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise UserInputError(
                f"duplicate key {key!r} (first at line {seen[key]})",
                line=key_node.start_mark.line + 1,
            )
        seen[key] = key_node.start_mark.line + 1
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_SafeLineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _check_shape(root: yaml.Node) -> None:
    """Refuse documents that expand past MAX_NODES, nest past MAX_DEPTH or hold more than MAX_ALIASES aliases.

    Sizes are counted once per distinct node (aliases share nodes), so the check itself stays linear."""
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    refs: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:  # iterative post-order: no recursion limit to hit
        node, done = stack.pop()
        if done:
            kids = _children(node)
            size[id(node)] = 1 + sum(size[id(k)] for k in kids)
            depth[id(node)] = 1 + max((depth[id(k)] for k in kids), default=0)
            if size[id(node)] > MAX_NODES:
                raise UserInputError(f"the document expands to more than {MAX_NODES} values (through aliases?)",
                                     line=node.start_mark.line + 1)
            if depth[id(node)] > MAX_DEPTH:
                raise UserInputError(f"nested more than {MAX_DEPTH} levels deep", line=node.start_mark.line + 1)
            continue
        refs[id(node)] = refs.get(id(node), 0) + 1
        if refs[id(node)] > 1:
            if sum(refs.values()) - len(refs) > MAX_ALIASES:
                raise UserInputError(f"more than {MAX_ALIASES} aliases", line=node.start_mark.line + 1)
            if id(node) in size:
                continue
        stack.append((node, True))
        stack.extend((k, False) for k in _children(node) if id(k) not in size)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _index_lines(node: yaml.Node, loc: Loc, out: dict[Loc, int]) -> None:
    out[loc] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node.start_mark)
            out[loc + (key,)] = key_node.start_mark.line + 1
            _index_lines(value_node, loc + (key,), out)
            out[loc + (key,)] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _index_lines(item, loc + (i,), out)


def load_yaml_with_lines(path: Path) -> tuple[Any, dict[Loc, int]]:
    """Parse a YAML file safely; return the data and a map from key path to line number."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserInputError("file not found", file=str(path)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserInputError(f"cannot read file: {exc}", file=str(path)) from None
    try:
        node = yaml.compose(text, Loader=_SafeLineLoader)
        if node is not None:
            _check_shape(node)
        data = yaml.load(text, Loader=_SafeLineLoader)  # noqa: S506 - SafeLoader subclass
    except UserInputError as exc:
        exc.file = str(path)
        raise
    except RecursionError:
        raise UserInputError(f"nested too deeply (more than {MAX_DEPTH} levels)", file=str(path)) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise UserInputError(f"invalid YAML: {problem}", file=str(path), line=line) from None
    lines: dict[Loc, int] = {}
    if node is not None:
        _index_lines(node, (), lines)
    return data, lines


def line_for(lines: dict[Loc, int], loc: Loc) -> int | None:
    """The line of the deepest known prefix of loc."""
    loc = tuple(loc)
    while loc:
        if loc in lines:
            return lines[loc]
        loc = loc[:-1]
    return lines.get(())
