"""A slim reading of samples.jsonl: only the fields `bench thresholds` and `bench compare` read, decoded by msgspec.

`read_fields(path)` gives what `store.read_samples(path)` gives, row for row (the same rows kept, the same torn last
line skipped, the same file:line errors), but each row is a `SampleFields`: a small struct that holds the keys of
the merge rule and the analysis fields, and no dict. msgspec skips the other fields (outputs, per-token timings,
log-probabilities) while it scans, so a million rows read several times faster and in a fraction of the memory.
The file is memory-mapped, not read: blocks are decoded where the page cache holds them, and dropped from this
process's resident set once decoded.

A block of lines is decoded in one call. Whenever a block holds anything other than plain current-version rows
(a bad or blank line, an older schema_version, a number as sample_id, a cell that is not an object), it is read
again by store's exact line-by-line path and its rows projected onto SampleFields: so every odd case is decided by
the one dict reader, and the fast path only ever handles the rows that reader passes unchanged.
"""

from __future__ import annotations

import contextlib
import mmap
import os
from collections import deque
from collections.abc import Generator, Sequence
from itertools import compress, count, repeat
from operator import attrgetter, itemgetter, ne, or_
from pathlib import Path
from typing import Any, BinaryIO, Literal

import msgspec
import numpy as np
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
    concurrency: Any = None
    contention: Window | None = None

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key, default)

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)


class _Raw(SampleFields, gc=False, kw_only=True):
    """The decoding shape: `cell` kept as raw JSON until its stretch is known; anything but a current-version row
    with a string sample_id fails to decode, and goes to the exact path (a number as sample_id, an older version)."""

    cell: msgspec.Raw
    sample_id: str
    schema_version: Literal[SCHEMA_VERSION]  # type: ignore[valid-type]


FIELDS = tuple(f for f in SampleFields.__struct_fields__ if f != "schema_version")
_DECODER = msgspec.json.Decoder(_Raw)


def _project(row: dict[str, Any]) -> SampleFields:
    """A row the exact reader passed, as SampleFields (values kept as they are, whatever their type)."""
    values: dict[str, Any] = {k: row.get(k) for k in FIELDS}
    return SampleFields(**values, schema_version=SCHEMA_VERSION)


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


def _fast(block: memoryview, n: int) -> list[SampleFields] | None:
    """`n` whole lines decoded at once, or None where the exact path must decide (see the module's docstring)."""
    try:
        rows = _DECODER.decode_lines(block)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    if len(rows) != n or not rows:  # every line opens an object (checked by the caller): one holds two
        return None
    # a cell's object is decoded once per stretch of equal rows (the merge reads it at a stretch's first row) and
    # stored in each row in place of its raw slice, which would keep the whole block alive
    raws, cids = list(map(attrgetter("cell"), rows)), list(map(attrgetter("cell_id"), rows))
    starts = [0, *compress(count(1), map(or_, map(ne, raws[1:], raws), map(ne, cids[1:], cids))), len(rows)]
    cells: list[Any] = []
    for a, b in zip(starts, starts[1:]):
        cell = orjson.loads(memoryview(raws[a]))
        if type(cell) is not dict:
            return None
        cells += [cell] * (b - a)
    del raws
    deque(map(setattr, rows, repeat("cell"), cells), maxlen=0)
    return rows  # type: ignore[return-value]


def _lines(block: memoryview | bytes) -> tuple[int, bool]:
    """The block's newlines, and whether every line opens with '{' (not so: a blank line, or a value continued
    from the line before, which the exact path decides)."""
    data = np.frombuffer(block, dtype=np.uint8)
    ends = np.flatnonzero(data == 10)
    return len(ends), bool(data.size) and bool(data[0] == 123) and bool((data[ends[:-1] + 1] == 123).all())


def _blocks(mapped: mmap.mmap | None, torn: bytes) -> Generator[tuple[memoryview | bytes, bool], None, None]:
    """(block, final) for whole-line blocks of about _BLOCK bytes of the mapped whole lines, as views (let go of
    each before the file is closed); last, the bytes after the last newline (a torn line), final True."""
    if mapped is not None:
        start, size = 0, len(mapped)
        with memoryview(mapped) as data:
            while start < size:
                end = mapped.find(b"\n", min(start + _BLOCK, size) - 1) + 1  # the line crossing the limit kept whole
                with data[start:end] as block:
                    yield block, False
                if hasattr(mmap, "MADV_DONTNEED"):  # decoded pages leave the RSS (the page cache keeps them)
                    page = mmap.PAGESIZE
                    first, last = start // page * page, end // page * page
                    if last > first:
                        mapped.madvise(mmap.MADV_DONTNEED, first, last - first)
                start = end
    if torn:
        yield torn, True


def _whole_lines(f: BinaryIO, size: int) -> int:
    """Where the file's last whole line ends (0: none), read from the end backwards. Only that much is mapped: a
    writer resuming after a kill cuts a torn last line, and a mapped page past the end would then fault."""
    end, chunk = size, 1 << 16
    while end > 0:
        start = max(0, end - chunk)
        f.seek(start)
        at = f.read(end - start).rfind(b"\n")
        if at >= 0:
            return start + at + 1
        end = start
    return 0


def read_fields(path: Path) -> list[SampleFields]:
    """Every row of samples.jsonl as store.read_samples keeps it, as SampleFields (see the module's docstring)."""
    from bench.results.store import _no_gc

    try:
        with path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            whole = _whole_lines(f, size)
            f.seek(whole)
            torn = f.read(size - whole)
            mapped = mmap.mmap(f.fileno(), whole, access=mmap.ACCESS_READ) if whole else None
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        raise UserInputError(f"cannot read: {getattr(exc, 'strerror', None) or exc}", file=str(path)) from None
    if mapped is not None and hasattr(mmap, "MADV_SEQUENTIAL"):
        mapped.madvise(mmap.MADV_SEQUENTIAL)
    out: list[SampleFields] = []
    line = 1
    # the blocks' views are let go of (the generator closed) before the mapping closes, an error or not
    with mapped if mapped is not None else contextlib.nullcontext(), _no_gc(), \
            contextlib.closing(_blocks(mapped, torn)) as blocks:
        for block, final in blocks:
            n, plain = (0, False) if final else _lines(block)
            rows = _fast(block, n) if plain else None  # type: ignore[arg-type]
            out.extend(rows if rows is not None else _exact(bytes(block), line, final, path))
            del rows
            line += n
    return out


class _PointCell(msgspec.Struct, gc=False):
    cell_id: Any = None
    operating_point: Any = None
    cost_per_1k_usd_sequential: Any = None
    cost_basis: Any = None
    load: Any = None
    load_levels: Any = None


class _PointSummary(msgspec.Struct, gc=False):
    schema_version: Any = None
    cells: list[_PointCell] | None = None


def summary_points(path: Path) -> list[dict[str, Any]] | None:
    """summary.json's cells with only their operating-point keys (what thresholds prices a cell by), skipping the
    raw timings; None where the slim read cannot decide (not current-version, not plain JSON, odd `cells`): read
    the file whole then, for its errors and migrations."""
    try:
        doc = msgspec.json.decode(path.read_bytes(), type=_PointSummary)
    except (OSError, msgspec.DecodeError, msgspec.ValidationError):
        return None
    if type(doc.schema_version) is not int or doc.schema_version != SCHEMA_VERSION:
        return None
    keys = _PointCell.__struct_fields__
    return [{k: getattr(c, k) for k in keys} for c in doc.cells or []]
