"""A slim reading of samples.jsonl: only the fields `bench thresholds` and `bench compare` read, decoded by msgspec.

`read_fields(path)` gives what `store.read_samples(path)` gives, row for row (the same rows kept, the same torn last
line skipped, the same file:line errors), but each row is a `SampleFields`: a small struct that holds the keys of
the merge rule and the analysis fields, and no dict. msgspec skips the other fields (outputs, per-token timings,
log-probabilities) while it scans, so a million rows read several times faster and in a fraction of the memory.

A block of lines is decoded in one call. Whenever a block holds anything other than plain current-version rows
(a bad or blank line, an older schema_version, a number as sample_id, a cell that is not an object), it is read
again by store's exact line-by-line path and its rows projected onto SampleFields: so every odd case is decided by
the one dict reader, and the fast path only ever handles the rows that reader passes unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from operator import attrgetter, itemgetter
from pathlib import Path
from typing import Any

import msgspec
import orjson

from bench import SCHEMA_VERSION
from bench.errors import UserInputError

_BLOCK = 8 << 20  # bytes read and decoded at once


class Window(msgspec.Struct, gc=False):
    """A row's `contention` object, reduced to what calibration reads (other keys skipped)."""

    contended: Any = None

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key, default)


class SampleFields(msgspec.Struct, gc=False):
    """One samples.jsonl row, only the fields the analysis reads; the others are not kept.

    Read with `get`/`[]` like the row dict it stands for (a field the dict lacks reads None); hot loops take a
    whole column with `column()`. `cell` is the decoded cell object (shared by the rows of a stretch of one cell)."""

    cell: Any
    cell_id: str
    sample_id: str | int
    schema_version: int = -1
    split: Any = None
    error: Any = None
    score: Any = None
    verified: Any = None
    confidence: Any = None
    cost_usd: Any = None
    latency_s: Any = None
    completion_tokens: Any = None
    decode_s: Any = None
    rss_peak_mb: Any = None
    gpu_peak_mb: Any = None
    locality: Any = None
    contention: Window | None = None

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key, default)

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)


class _Raw(SampleFields, gc=False):
    """The decoding shape: `cell` kept as raw JSON until its stretch is known."""

    cell: msgspec.Raw


FIELDS = tuple(f for f in SampleFields.__struct_fields__ if f != "schema_version")
_DECODER = msgspec.json.Decoder(_Raw)


def _project(row: dict[str, Any]) -> SampleFields:
    """A row the exact reader passed, as SampleFields (values kept as they are, whatever their type)."""
    return SampleFields(**{k: row.get(k) for k in FIELDS}, schema_version=SCHEMA_VERSION)


def column(rows: Sequence[Any], key: str) -> list[Any]:
    """`row.get(key)` of every row (None where a row lacks it), for dict rows and SampleFields alike; a column
    every row holds is read by one C-level pass (with a million rows alive, every tuple made costs)."""
    try:
        getter = itemgetter(key) if not rows or type(rows[0]) is dict else attrgetter(key)
        return list(map(getter, rows))
    except (KeyError, AttributeError, TypeError):
        return [r.get(key) if type(r) is dict else getattr(r, key, None) for r in rows]


def _exact(block: bytes, first: int, final: bool, path: Path) -> list[SampleFields]:
    """store's exact path over one block: its rows, its torn-line rule and its errors, projected."""
    from bench.results.store import _checked, _fast_check, _parse_lines

    pairs, bad = _parse_lines(block, first, final, True)
    rows = _checked(pairs, path, _fast_check, exact=True)  # a bad row before the bad line is the error
    if bad is not None:
        raise UserInputError(f"line {bad} is not valid JSON", file=str(path))
    return [_project(r) for r in rows or []]


def _fast(block: bytes, n: int) -> list[SampleFields] | None:
    """`n` whole lines decoded at once, or None where the exact path must decide (see the module's docstring)."""
    try:
        rows = _DECODER.decode_lines(block)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    if len(rows) != n:  # a blank line, or a line holding other than one value
        return None
    if rows and (set(map(attrgetter("schema_version"), rows)) != {SCHEMA_VERSION}
                 or set(map(type, map(attrgetter("sample_id"), rows))) != {str}):
        return None
    prev_id, prev_raw, cell = None, None, None
    for r in rows:  # decode a cell once per stretch (the merge reads it at a stretch's first row)
        raw = r.cell
        if r.cell_id != prev_id or raw != prev_raw:
            cell = orjson.loads(memoryview(raw))
            if type(cell) is not dict:
                return None
            prev_id, prev_raw = r.cell_id, raw
        r.cell = cell  # drops the raw slice, which would keep the whole block alive
    return rows  # type: ignore[return-value]


def read_fields(path: Path) -> list[SampleFields]:
    """Every row of samples.jsonl as store.read_samples keeps it, as SampleFields (see the module's docstring)."""
    from bench.results.store import _no_gc

    try:
        f = path.open("rb")
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise UserInputError(f"cannot read: {exc.strerror or exc}", file=str(path)) from None
    out: list[SampleFields] = []
    line, rest = 1, b""
    with f, _no_gc():
        while True:
            try:
                chunk = f.read(_BLOCK)
            except OSError as exc:
                raise UserInputError(f"cannot read: {exc.strerror or exc}", file=str(path)) from None
            if not chunk:
                break
            data = rest + chunk if rest else chunk
            end = data.rfind(b"\n") + 1
            if end == 0:
                rest = data
                continue
            block, rest = data[:end], data[end:]
            n = block.count(b"\n")
            rows = _fast(block, n)
            out.extend(rows if rows is not None else _exact(block, line, False, path))
            line += n
        if rest:  # a final line without its newline: kept if whole, skipped if torn
            out.extend(_exact(rest, line, True, path))
    return out
