"""Load run directories into one typed collection, merged by the one rule every results reader uses.

The merge rule, for reruns, resumes and several runs of one suite alike:

    Rows are ordered by their run's start time (manifest `started_at`, then `run_id`, then the run's path), and
    within a run by line order in samples.jsonl. For each (suite, cell_id, sample_id) the latest row wins.

So a retried errored sample is replaced by its retry (the runner appends the retry to the same run); a resumed run
simply continues its file; and a later run of the same cell replaces the samples it re-ran and keeps the others.
Sample ids are compared as strings. `started_at` is stamped to the second: runs started in the same second are
ordered by run id. `bench thresholds` then keeps only the runs whose suite identity (data, split, prompt) matches
its latest run's; the summary, compare, the report and the pytest plugin use the rule as it is.

Rows stay dicts (the JSONL on disk, parsed by orjson) so that a million of them load without a million objects;
`CellRows.typed()` validates a cell's rows into `SampleRow` models when typed access is wanted. With `slim`, rows
are `bench.results.columns.SampleFields` instead: only the fields thresholds and compare read, the same rows kept
and merged by the same rule (read them with `columns.column()` or `.get`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from itertools import compress, count
from operator import attrgetter, itemgetter, ne
from pathlib import Path
from typing import Any

from bench.errors import UserInputError
from bench.results.rows import RunManifest, RunSummary, SampleRow, validate_manifest
from bench.results.store import RunDir, find_runs, read_json, read_samples

Row = dict[str, Any]


def latest_rows(rows: Iterable[Row]) -> list[Row]:
    """The merge rule on rows already in order (one run's lines, or several runs' in run order): one row per
    (cell_id, sample_id), the latest; each kept where its key first appeared."""
    last: dict[tuple[str, str], Row] = {}
    for r in rows:
        last[(r["cell_id"], str(r["sample_id"]))] = r
    return list(last.values())


@dataclass(eq=False)
class Run:
    """One run directory: its manifest and its rows in line order (retries and superseded rows included)."""

    dir: RunDir
    manifest: RunManifest
    rows: list[Row]

    @property
    def path(self) -> Path:
        return self.dir.path

    @property
    def run_id(self) -> str:
        return self.manifest.run_id or self.dir.path.name

    @property
    def suite_name(self) -> str | None:
        return self.manifest.suite.name

    def order(self) -> tuple[str, str, str]:
        """The merge order of runs: start time, then run id, then path."""
        return self.manifest.started_at or "", self.run_id, str(self.dir.path)

    def summary(self) -> dict[str, Any] | None:
        """summary.json as written (version-checked), or None when the run has not written one yet."""
        return read_json(self.dir.summary_path) if self.dir.summary_path.exists() else None

    def typed_summary(self) -> RunSummary | None:
        doc = self.summary()
        return None if doc is None else RunSummary.model_validate(doc)


@dataclass
class CellRows:
    """One cell of one suite after the merge: its latest row per sample."""

    cell_id: str
    cell: dict[str, Any]
    rows: dict[str, Row] = field(default_factory=dict)  # sample_id -> the latest row
    run: Run | None = None                               # the latest run that wrote a row of this cell
    wrote: list[Run] = field(default_factory=list)       # every run that wrote a row of it, oldest first

    @property
    def run_id(self) -> str:
        return self.run.run_id if self.run is not None else ""

    @property
    def runs(self) -> list[Run]:
        """The runs whose rows survived the merge, oldest first (one, unless a later run re-ran only some)."""
        if len(self.wrote) <= 1:
            return list(self.wrote)
        rows = self.rows
        return [run for run in self.wrote
                if any(r["cell_id"] == self.cell_id and rows.get(str(r["sample_id"])) is r for r in run.rows)]

    def typed(self) -> list[SampleRow]:
        """The rows validated as SampleRow models (one object per row: for typed access, not for hot loops)."""
        from bench.results.rows import validate_row

        where = str(self.run.dir.samples_path) if self.run is not None else "samples.jsonl"
        return [validate_row(r, where) for r in self.rows.values()]


def merge(runs: list[Run]) -> dict[str, CellRows]:
    """The merge rule over runs of one suite: runs in `Run.order`, lines in file order, the latest row per
    (cell_id, sample_id) wins. Cells come ordered by the latest run that wrote them, then first line there."""
    runs = sorted(runs, key=Run.order)
    cells: dict[str, CellRows] = {}
    where: dict[str, tuple[int, int]] = {}
    for i, run in enumerate(runs):
        rows = run.rows
        if not rows:
            continue
        get = itemgetter if type(rows[0]) is dict else attrgetter  # dict rows, or SampleFields (slim)
        cids = list(map(get("cell_id"), rows))
        sids = list(map(get("sample_id"), rows))
        if set(map(type, sids)) != {str}:
            sids = [str(s) for s in sids]
        # rows of one cell come in long stretches: the cell is looked up once per stretch, its rows stored at once
        starts = [0, *compress(count(1), map(ne, cids[1:], cids)), len(rows)]
        for line, end in zip(starts, starts[1:]):
            cid, r = cids[line], rows[line]
            c = cells.get(cid)
            if c is None:
                c = cells[cid] = CellRows(cell_id=cid, cell=r["cell"])
            if c.run is not run:
                c.run, c.cell = run, r["cell"]
                c.wrote.append(run)
                where[cid] = (i, line)
            c.rows.update(zip(sids[line:end], rows[line:end]))
    return {cid: cells[cid] for cid in sorted(cells, key=where.__getitem__)}


@dataclass
class SuiteRuns:
    """Every run of one suite (by the name its manifest gives), oldest first, and its merged cells."""

    name: str
    runs: list[Run]
    _cells: dict[str, CellRows] | None = None

    @property
    def latest(self) -> Run:
        return self.runs[-1]

    @property
    def cells(self) -> dict[str, CellRows]:
        """cell_id -> the merged cell (computed once, on first use)."""
        if self._cells is None:
            self._cells = merge(self.runs)
        return self._cells

    def rows(self) -> list[Row]:
        """Every merged row (the latest per cell and sample), cell by cell."""
        return [r for c in self.cells.values() for r in c.rows.values()]

    def only(self, keep: Callable[[Run], bool]) -> SuiteRuns:
        """The same suite with only the runs `keep` accepts, merged again."""
        runs = [r for r in self.runs if keep(r)]
        return self if len(runs) == len(self.runs) else SuiteRuns(self.name, runs)


@dataclass
class Results:
    """Everything load_runs found: runs in the order found, and suites by name."""

    runs: list[Run]
    suites: dict[str, SuiteRuns]


def load_run(run: RunDir, lean: bool = False, slim: bool = False) -> Run:
    """One run directory: manifest validated, rows read (a torn last line skipped, a bad line an exit-2 error);
    `slim`: rows as SampleFields (bench.results.columns)."""
    doc = run.manifest()
    manifest = validate_manifest(doc, str(run.manifest_path))
    if slim:
        from bench.results.columns import read_fields

        return Run(dir=run, manifest=manifest, rows=read_fields(run.samples_path))  # type: ignore[arg-type]
    return Run(dir=run, manifest=manifest, rows=read_samples(run.samples_path, lean=lean))


def load_runs(paths: list[str | Path], *, lean: bool = False, need_suite_name: bool = True,
              slim: bool = False) -> Results:
    """Every run at or below `paths` (run dirs, suite dirs or results/), grouped by suite name and merged by the
    module's rule. `lean` skips the per-token timings and log-probabilities (readers that do not need them);
    `slim` keeps only the fields thresholds and compare read, as SampleFields structs (bench.results.columns);
    without `need_suite_name` a manifest that names no suite files the run under its parent folder's name."""
    runs = [load_run(r, lean, slim) for r in find_runs(list(paths))]
    groups: dict[str, list[Run]] = {}
    for run in runs:
        name = run.suite_name
        if not name:
            if need_suite_name:
                raise UserInputError("the manifest names no suite", file=str(run.dir.manifest_path),
                                     field="suite.name")
            name = run.path.parent.name
        groups.setdefault(name, []).append(run)
    suites = {name: SuiteRuns(name, sorted(rs, key=Run.order)) for name, rs in sorted(groups.items())}
    return Results(runs=runs, suites=suites)
