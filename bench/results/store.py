"""The run directory: manifest written first, samples appended and flushed per line, summary written last."""

from __future__ import annotations

import gc
import json
import os
import re
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import orjson

from bench import SCHEMA_VERSION
from bench.errors import UserInputError
from bench.fmt import write_text_atomic  # noqa: F401 - one atomic writer, re-exported here
from bench.redact import redact, redact_text
from bench.results.schema import check_version

MANIFEST = "manifest.json"
SAMPLES = "samples.jsonl"
INPUTS = "inputs.jsonl"      # each sample's input fields, once: what pre-routers are fitted on
SUMMARY = "summary.json"


def utcnow() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(2)


def write_json_atomic(path: Path, doc: dict[str, Any]) -> None:
    """A JSON document, redacted of credentials, written atomically."""
    write_text_atomic(path, json.dumps(redact(doc), indent=2, sort_keys=False, default=str) + "\n")


def read_json(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserInputError("file not found", file=str(path)) from None
    except ValueError as exc:
        raise UserInputError(f"not valid JSON: {exc}", file=str(path)) from None
    return check_version(doc, str(path))


ROW_KEYS = ("cell", "cell_id", "sample_id")


def check_row(row: Any, path: Path, line: int) -> dict[str, Any]:
    """A samples.jsonl line as a row, or an exit-2 error naming the file, the line and what was expected."""
    if not isinstance(row, dict):
        raise UserInputError(f"line {line}: expected a JSON object (one sample row), got a JSON "
                             f"{type(row).__name__}", file=str(path))
    row = check_version(row, f"{path}:{line}")
    missing = [k for k in ROW_KEYS if k not in row]
    if missing:
        raise UserInputError(f"line {line}: a sample row needs {', '.join(ROW_KEYS)}; missing {', '.join(missing)}",
                             file=str(path))
    if not isinstance(row["cell"], dict) or not isinstance(row["cell_id"], str) \
            or not isinstance(row["sample_id"], (str, int)) or isinstance(row["sample_id"], bool):
        raise UserInputError(f"line {line}: expected cell (an object), cell_id and sample_id (strings)",
                             file=str(path))
    return row


# The bulky per-token fields, cut from a line before parsing when the reader does not need them (`lean`).
# A quoted key followed by ':' cannot occur inside a JSON string (its quotes would be escaped there); a value
# never spans lines, so the cut stops at a newline even when it is applied to many lines at once. (The literal
# '"t' up front lets the regex engine skip ahead to candidates.)
_BULKY = re.compile(rb'"t(?:imings|oken_logprobs)"[ \t\r]*:[ \t\r]*(?:\{[^{}\n]*\}|\[[^\[\]\n]*\])')
_CHUNK = 1 << 20  # bytes of whole lines parsed in one orjson call


@contextmanager
def _no_gc() -> Iterator[None]:
    """The cyclic garbage collector paused while rows are parsed: parsed JSON holds no cycles, and with a million
    rows alive each collection walks them all, which doubles the time to parse them."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _parse_lines(block: bytes, first: int, final: bool, lean: bool) -> tuple[list[Any], int | None]:
    """Parse a block of lines one by one (the exact path: blank lines skipped, a torn final line dropped): the
    (line, row) pairs up to the first line that is not JSON, and that line's number (None when every line is).
    `final`: the block's last line is the file's last, with no newline."""
    lines = block.split(b"\n")
    with _no_gc():
        return _parse_split(lines, first, final, lean)


def _parse_split(lines: list[bytes], first: int, final: bool, lean: bool) -> tuple[list[Any], int | None]:
    loads, cut = orjson.loads, _BULKY.sub
    out: list[Any] = []
    for i, raw in enumerate(lines):
        if not raw or raw.isspace():  # (strip() would copy every line)
            continue
        try:
            row = loads(cut(b'"_": null', raw)) if lean else loads(raw)
        except ValueError:
            try:
                row = loads(raw)  # a line the cut could not handle: parse it whole
            except ValueError:
                if final and i == len(lines) - 1:  # the final line without its newline: an interrupted write
                    continue
                return out, first + i
        if lean and type(row) is dict:
            row.pop("_", None)
        out.append((first + i, row))
    return out, None


def _parse_block(block: bytes, n: int, lean: bool) -> list[Any] | None:
    """`n` whole lines (each ending in a newline) parsed as one JSON array in one orjson call, or None when that
    cannot be done exactly (a blank or bad line, a line holding other than one value)."""
    body = _BULKY.sub(b'"_": null', block) if lean else block
    try:
        with _no_gc():  # each newline becomes a comma; the 0 after the last one is dropped again
            rows = orjson.loads(b"".join((b"[", body.replace(b"\n", b","), b"0]")))
    except ValueError:
        return None
    if len(rows) != n + 1:
        return None
    rows.pop()
    if lean:
        for row in rows:
            if type(row) is dict:
                row.pop("_", None)
    return rows


def iter_jsonl(path: Path, check: Any = None, lean: bool = False) -> Iterator[dict[str, Any]]:
    """Read an append-only JSONL file of this run directory; a torn last line (a kill mid-write) is skipped, any
    other bad line is an exit-2 error naming the file and line. `check(row, path, line)` validates each row;
    `lean` drops `timings` and `token_logprobs` before parsing, which makes big files several times faster.

    Whole lines are parsed in blocks of about _CHUNK bytes, one orjson call each; a block that does not parse
    as exactly one JSON value per line, or whose rows fail `check`, is read again line by line, so errors and
    the rows kept are those of reading line by line."""
    try:
        with path.open("rb") as f:
            data = f.read()
    except FileNotFoundError:
        return
    except OSError as exc:
        raise UserInputError(f"cannot read: {exc.strerror or exc}", file=str(path)) from None
    end = data.rfind(b"\n") + 1  # data[:end] is whole lines; what follows is a final line without its newline
    start, line = 0, 1
    while start < len(data):
        if start < end:
            stop = data.find(b"\n", min(start + _CHUNK, end - 1)) + 1
            block, final = data[start:stop], False
        else:
            stop, block, final = len(data), data[start:], True
        n = block.count(b"\n")
        parsed = None if final else _parse_block(block, n, lean)
        rows = _checked_block(parsed, line, path, check) if parsed is not None else None
        if rows is None:
            pairs, bad = _parse_lines(block, line, final, lean)
            rows = _checked(pairs, path, check, exact=True)  # a bad row before the bad line is the error
            if bad is not None:
                raise UserInputError(f"line {bad} is not valid JSON", file=str(path))
        assert rows is not None
        yield from rows
        line += n
        start = stop


def _checked_block(rows: list[Any], first: int, path: Path, check: Any) -> list[dict[str, Any]] | None:
    """A block's rows, checked: current-version sample rows (samples.jsonl as the runner writes it) pass type
    tests inline, with no call per row; any other row goes through `_checked`."""
    if check is _fast_check:
        version = SCHEMA_VERSION
        for row in rows:
            if type(row) is dict:
                v, sid = row.get("schema_version"), row.get("sample_id")
                if type(v) is int and v == version and type(row.get("cell")) is dict \
                        and type(row.get("cell_id")) is str and (type(sid) is str or type(sid) is int):
                    continue
            break
        else:
            return rows
    elif check is None and all(type(row) is dict for row in rows):
        return rows
    return _checked(list(enumerate(rows, first)), path, check)


def _checked(pairs: list[Any], path: Path, check: Any, exact: bool = False) -> list[dict[str, Any]] | None:
    """The rows after `check` (or the object test); None where a row fails and this is not the exact pass."""
    out = []
    try:
        for i, row in pairs:
            if check is not None:
                row = check(row, path, i)
            elif not isinstance(row, dict):
                raise UserInputError(f"line {i}: expected a JSON object, got a JSON {type(row).__name__}",
                                     file=str(path))
            out.append(row)
    except UserInputError:
        if exact:
            raise
        return None
    return out


def _fast_check(row: Any, path: Path, line: int) -> dict[str, Any]:
    """check_row with the common case first: a current-version row with the right key types passes after a few
    type tests (no call, no migration); anything else goes through check_row for its migration or its error."""
    if type(row) is dict:
        version, sid = row.get("schema_version"), row.get("sample_id")
        if type(version) is int and version == SCHEMA_VERSION and type(row.get("cell")) is dict \
                and type(row.get("cell_id")) is str and (type(sid) is str or type(sid) is int):
            return row
    return check_row(row, path, line)


def iter_samples(path: Path, lean: bool = False) -> Iterator[dict[str, Any]]:
    """Read samples.jsonl; a torn last line (a kill mid-write) is skipped, any other bad line is an error."""
    return iter_jsonl(path, _fast_check, lean)


def read_samples(path: Path, lean: bool = False) -> list[dict[str, Any]]:
    """Every row of samples.jsonl as iter_samples reads it, with the garbage collector paused for the whole read
    (paused per block only, it wakes after each one and walks every row read so far, again and again)."""
    with _no_gc():
        return list(iter_samples(path, lean))


class SampleWriter:
    """Appends one JSON line per finished sample and flushes it to disk before returning."""

    def __init__(self, path: Path):
        import threading

        self.path = path
        self._lock = threading.Lock()  # cells streaming from a cluster write from several threads
        self._repair()
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def _repair(self) -> None:
        """Make the file end at a line boundary before appending: a final line that is whole JSON but lost only its
        newline is kept (its newline added); a torn one (a kill mid-write) is cut, as readers skip it anyway."""
        if not self.path.exists() or self.path.stat().st_size == 0:
            return
        with self.path.open("rb+") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) == b"\n":
                return
            f.seek(0)
            data = f.read()
            cut = data.rfind(b"\n") + 1
            try:
                orjson.loads(data[cut:])
                whole = True
            except ValueError:
                whole = False
            if whole:
                f.seek(0, os.SEEK_END)
                f.write(b"\n")
            else:
                f.truncate(cut)
            f.flush()
            os.fsync(f.fileno())

    def write(self, row: dict[str, Any]) -> None:
        row = {"schema_version": SCHEMA_VERSION, **row}
        if row.get("error"):
            row["error"] = redact_text(str(row["error"]))
        data = (json.dumps(row, default=str, ensure_ascii=False) + "\n").encode("utf-8")
        with self._lock:
            os.write(self._fd, data)  # one write call per line, with O_APPEND
            os.fsync(self._fd)

    def close(self) -> None:
        os.close(self._fd)


class RunDir:
    """One run of one suite: results/<suite>/<run-id>/."""

    def __init__(self, path: Path):
        self.path = path

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    @property
    def samples_path(self) -> Path:
        return self.path / SAMPLES

    @property
    def summary_path(self) -> Path:
        return self.path / SUMMARY

    @property
    def inputs_path(self) -> Path:
        return self.path / INPUTS

    def inputs(self) -> dict[str, dict[str, Any]]:
        """sample_id -> the sample's input fields, from inputs.jsonl (empty for runs made before it existed)."""
        return {str(r["sample_id"]): r.get("fields") or {} for r in iter_jsonl(self.inputs_path)
                if "sample_id" in r}

    def references(self) -> dict[str, Any]:
        """sample_id -> the sample's reference, from inputs.jsonl (runs before it stored them: empty)."""
        return {str(r["sample_id"]): r["reference"] for r in iter_jsonl(self.inputs_path)
                if "sample_id" in r and r.get("reference") is not None}

    def manifest(self) -> dict[str, Any]:
        return read_json(self.manifest_path)

    def samples(self) -> list[dict[str, Any]]:
        return list(iter_samples(self.samples_path))

    def done_keys(self) -> set[tuple[str, str]]:
        return {(r["cell_id"], r["sample_id"]) for r in iter_samples(self.samples_path)}

    def update_manifest(self, **fields: Any) -> None:
        doc = self.manifest()
        doc.update(fields)
        write_json_atomic(self.manifest_path, doc)


class SuiteLock:
    """An exclusive lock on results/<suite>/ for the whole of a run (filelock: an OS lock, released when the
    process dies). A second `bench run` of the same suite into the same results directory waits up to
    `wait_s` (BENCH_LOCK_WAIT, default 0) and then exits 2 naming the holder: no sample is generated, or
    billed, twice."""

    def __init__(self, results_dir: Path, suite_name: str, wait_s: float | None = None):
        from filelock import FileLock

        locks = Path(results_dir) / ".locks"  # beside the suite folders, so listing a suite shows only runs
        locks.mkdir(parents=True, exist_ok=True)
        self.path = locks / f"{suite_name}.lock"
        self.info = locks / f"{suite_name}.holder.json"
        self.wait_s = float(os.environ.get("BENCH_LOCK_WAIT", "0")) if wait_s is None else wait_s
        self._lock = FileLock(str(self.path))

    def __enter__(self) -> SuiteLock:
        from filelock import Timeout

        try:
            self._lock.acquire(timeout=self.wait_s)
        except Timeout:
            holder = "another process"
            for _ in range(20):  # the holder writes who it is just after taking the lock: give it a second
                try:
                    h = json.loads(self.info.read_text(encoding="utf-8"))
                    holder = f"pid {h.get('pid')} on {h.get('host')} since {h.get('since')}"
                    break
                except (OSError, ValueError):
                    time.sleep(0.05)
            raise UserInputError(f"another bench run holds this suite's results ({holder}); wait for it to "
                                 "finish, or set BENCH_LOCK_WAIT=SECONDS to wait", file=str(self.path),
                                 hint="two runs of one suite at once would generate (and bill) samples twice") \
                from None
        import socket

        write_text_atomic(self.info, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                                 "since": utcnow()}) + "\n")
        return self

    def __exit__(self, *exc: object) -> None:
        self.info.unlink(missing_ok=True)
        self._lock.release()


def open_run(results_dir: Path, suite_name: str, identity: str, manifest: dict[str, Any],
             fresh: bool = False) -> tuple[RunDir, bool]:
    """Resume the latest run of this suite with the same identity, or start a new one. Returns (run, resumed).

    Call it holding SuiteLock. A resumed run's samples are read (and a bad file refused) before its manifest is
    touched."""
    suite_dir = results_dir / suite_name
    if not fresh and suite_dir.is_dir():
        for candidate in sorted((p for p in suite_dir.iterdir() if (p / MANIFEST).exists()), reverse=True):
            try:
                doc = read_json(candidate / MANIFEST)
            except UserInputError:
                continue
            if doc.get("suite", {}).get("identity") == identity:
                run = RunDir(candidate)
                for _ in iter_samples(run.samples_path):  # a bad line stops here, the manifest untouched
                    pass
                resumes = doc.get("resumed_at", []) + [utcnow()]
                run.update_manifest(resumed_at=resumes, finished_at=None)
                return run, True
    run_id = new_run_id()
    path = suite_dir / run_id
    path.mkdir(parents=True, exist_ok=False)
    doc = {"schema_version": SCHEMA_VERSION, "run_id": run_id, **manifest, "started_at": utcnow(),
           "finished_at": None, "resumed_at": []}
    write_json_atomic(path / MANIFEST, doc)
    return RunDir(path), False


def find_runs(paths: list[str | Path]) -> list[RunDir]:
    """Every run directory at or below the given paths (a run dir, a suite dir, or results/ itself)."""
    runs: list[RunDir] = []
    for p in paths:
        p = Path(p)
        if not p.exists():
            raise UserInputError("no such results directory", file=str(p))
        if (p / MANIFEST).exists():
            runs.append(RunDir(p))
            continue
        found = sorted(m.parent for m in p.rglob(MANIFEST))
        if not found:
            raise UserInputError("no runs found (no manifest.json at or below it)", file=str(p))
        runs.extend(RunDir(f) for f in found)
    seen: set[Path] = set()
    out = []
    for r in runs:
        if r.path.resolve() not in seen:
            seen.add(r.path.resolve())
            out.append(r)
    return out
