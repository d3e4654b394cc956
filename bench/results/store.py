"""The run directory: manifest written first, samples appended and flushed per line, summary written last."""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench import SCHEMA_VERSION
from bench.errors import UserInputError
from bench.results.schema import check_version

MANIFEST = "manifest.json"
SAMPLES = "samples.jsonl"
SUMMARY = "summary.json"


def utcnow() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(2)


def write_json_atomic(path: Path, doc: dict[str, Any]) -> None:
    """Write through a temporary file and rename, so a reader never sees half a document."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        json.dump(doc, f, indent=2, sort_keys=False, default=str)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def read_json(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserInputError("file not found", file=str(path)) from None
    except ValueError as exc:
        raise UserInputError(f"not valid JSON: {exc}", file=str(path)) from None
    return check_version(doc, str(path))


def iter_samples(path: Path) -> Iterator[dict[str, Any]]:
    """Read samples.jsonl; a torn last line (a kill mid-write) is skipped, any other bad line is an error."""
    if not path.exists():
        return
    with path.open("rb") as f:
        lines = f.read().split(b"\n")
    for i, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except ValueError:
            if i == len(lines):  # the final line without its newline: an interrupted write
                continue
            raise UserInputError(f"line {i} is not valid JSON", file=str(path)) from None
        yield check_version(row, f"{path}:{i}")


class SampleWriter:
    """Appends one JSON line per finished sample and flushes it to disk before returning."""

    def __init__(self, path: Path):
        self.path = path
        self._repair()
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def _repair(self) -> None:
        """Cut a torn final line left by a killed run, so the next line starts clean."""
        if not self.path.exists() or self.path.stat().st_size == 0:
            return
        with self.path.open("rb+") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) == b"\n":
                return
            f.seek(0)
            data = f.read()
            cut = data.rfind(b"\n") + 1
            f.truncate(cut)

    def write(self, row: dict[str, Any]) -> None:
        row = {"schema_version": SCHEMA_VERSION, **row}
        data = (json.dumps(row, default=str, ensure_ascii=False) + "\n").encode("utf-8")
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


def open_run(results_dir: Path, suite_name: str, identity: str, manifest: dict[str, Any],
             fresh: bool = False) -> tuple[RunDir, bool]:
    """Resume the latest run of this suite with the same identity, or start a new one. Returns (run, resumed)."""
    suite_dir = results_dir / suite_name
    if not fresh and suite_dir.is_dir():
        for candidate in sorted((p for p in suite_dir.iterdir() if (p / MANIFEST).exists()), reverse=True):
            try:
                doc = read_json(candidate / MANIFEST)
            except UserInputError:
                continue
            if doc.get("suite", {}).get("identity") == identity:
                run = RunDir(candidate)
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
