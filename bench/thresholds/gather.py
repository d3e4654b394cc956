"""Gather runs into tasks: one tier per cell, its latest row per sample (bench.results.load's merge rule), and what
a router needs to run it."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bench.errors import BenchError, UserInputError, did_you_mean
from bench.fmt import real
from bench.registry import BACKENDS, backend_traits
from bench.results.columns import column
from bench.results.load import SuiteRuns, load_runs
from bench.results.schema import row_concurrency


@dataclass
class Tier:
    """One cell that ran the task: its sample rows and how to call it again."""

    cell_id: str
    cell: dict[str, Any]
    rows: dict[str, Any]                     # sample_id -> the latest row (a dict, or SampleFields when slim)
    backend: dict[str, Any] | None           # the backend block the cell ran with (no secrets)
    locality: str
    usd_per_hour: float | None
    chat: bool
    model_ref: dict[str, Any] | None         # the suite's model entry when it has its own source
    run_id: str
    cost_basis: str | None = None            # the operating point each request is priced at, in words
    main_concurrency: int = 1                # requests in flight in the main pass (its rows' latencies)
    point: Point | None = None               # the operating point (None: the main pass as its rows have it)
    points: list[Point] = field(default_factory=list)       # other concurrencies it was timed at (load.jsonl)
    levels: list[dict[str, Any]] = field(default_factory=list)  # the summary's load_levels, for the budget test
    budget_note: str | None = None           # why no other timed concurrency met the latency budget either

    @property
    def priced_at(self) -> Point:
        """The operating point, the main pass's where no other is set."""
        return self.point or Point(level=self.main_concurrency)

    @property
    def concurrency(self) -> int:
        """Requests in flight at the operating point."""
        return self.priced_at.level


@dataclass(frozen=True)
class Point:
    """A concurrency a cell's requests are priced and timed at: its main pass (factors 1), or a bench/sweep.py level
    with its cost and per-request latency as factors on the main pass's, so the main pass's rows can be priced and
    timed at it."""

    level: int
    cost_factor: float = 1.0                 # the level's cost per 1k over the main pass's
    latency_factor: float = 1.0              # the level's latency over the main pass's, on the same samples
    contended: bool = False                  # other processes took CPU during the level's timing pass


@dataclass
class TaskData:
    """Everything calibration needs about one task (one suite name)."""

    name: str
    kind: str
    metric: str
    target: float
    target_source: str                       # "suite" or "--target"
    tolerance: float
    sensitive: bool
    latency_budget_s: float | None
    latency_source: str | None               # "suite", "--max-p95-latency" or None
    runtime: dict[str, Any] | None           # task options, prompt, generation, dataset fields
    tiers: list[Tier]
    run_ids: list[str]
    notes: list[str] = field(default_factory=list)
    min_samples: int = 30                    # fewer calibration samples decide nothing
    delta: float = 0.05                      # the chance the chosen policy misses its target
    inputs: dict[str, dict[str, Any]] = field(default_factory=dict)  # sample_id -> input fields (inputs.jsonl)
    run_paths: list[Path] = field(default_factory=list)               # oldest first
    prerouter: dict[str, Any] = field(default_factory=dict)           # the suite's prerouter block


def parse_targets(items: list[str] | None) -> dict[str, float]:
    """'TASK=QUALITY' strings into a mapping; a malformed one is an exit-2 error naming --target."""
    out: dict[str, float] = {}
    for item in items or []:
        name, sep, value = str(item).partition("=")
        try:
            q = float(value)
        except ValueError:
            q = math.nan
        if not sep or not name.strip() or not math.isfinite(q):
            raise UserInputError(f"expected TASK=QUALITY (e.g. classify=0.8), got {item!r}", field="--target")
        out[name.strip()] = q
    return out


def _scrub(value: Any) -> Any:
    """Drop anything that looks like a credential; strip user:password@ from URLs (bench.redact's rules)."""
    from bench.redact import redact

    return redact(value)


def _profile_hourly(profile_id: str | None) -> float | None:
    """The hourly price of a hardware profile, or None when it is unknown here."""
    if not profile_id:
        return None
    try:
        from bench.hardware.profiles import get_profile

        return get_profile(profile_id).cost_per_hour_usd
    except (BenchError, OSError):  # no profiles folder, an unknown id: the price is simply unknown
        return None


def _model_entry(config: dict[str, Any], model_id: str) -> dict[str, Any] | None:
    for m in (config.get("matrix") or {}).get("models") or []:
        if isinstance(m, dict) and m.get("id") == model_id:
            return m
    return None


def _chat(backend: dict[str, Any] | None, entry: dict[str, Any] | None, model_id: str) -> bool:
    """Whether the tier is prompted with chat messages: the same rule the runner's planner uses."""
    if backend and backend.get("kind") == "openai":
        return bool(backend.get("chat", True))
    if entry and entry.get("chat") is not None:
        return bool(entry["chat"])
    if entry and entry.get("source"):
        return True
    from bench.models.catalog import CATALOG

    return CATALOG[model_id].chat if model_id in CATALOG else True


def _runtime(suite: dict[str, Any]) -> dict[str, Any] | None:
    config = suite.get("config")
    if not isinstance(config, dict):
        return None
    ds = config.get("dataset") or {}
    return {"task": config.get("task"), "prompt": config.get("prompt"), "generation": config.get("generation"),
            "dataset": {"id_field": ds.get("id_field", "id"), "input_fields": ds.get("input_fields", []),
                        "reference_field": ds.get("reference_field")},
            "personal_data": list(config.get("personal_data") or [])}


def _prerouter(config: dict[str, Any]) -> dict[str, Any]:
    """The suite's prerouter block with its defaults (runs made before it existed get the defaults)."""
    from bench.config.suite import PreRouterConfig

    block = config.get("prerouter")
    try:
        return PreRouterConfig.model_validate(block or {}).model_dump()
    except ValueError:
        return PreRouterConfig().model_dump()


def _build_task(name: str, found: SuiteRuns, targets: dict[str, float], max_p95: float | None) -> TaskData:
    latest = found.latest.manifest
    suite = latest.suite.model_dump()
    notes: list[str] = []
    identity = latest.suite.identity
    kept = found.only(lambda r: r.manifest.suite.identity == identity)
    if len(kept.runs) < len(found.runs):
        skipped = sorted(r.run_id for r in found.runs if r not in kept.runs)
        notes.append(f"runs {', '.join(skipped)} used other data, split or prompt than the latest run and "
                     "were left out: their samples are not comparable")
    inputs: dict[str, dict[str, Any]] = {}
    for run in kept.runs:
        inputs.update(run.dir.inputs())
    config = suite.get("config") or {}
    summaries: dict[int, Any] = {}  # id(run) -> its summary's cells, read once however many of them are tiers
    tiers = []
    for cid, merged in sorted(kept.cells.items()):
        assert merged.run is not None  # a merged cell has at least one row, so a run
        manifest = merged.run.manifest  # the latest run that wrote rows of this cell
        rows = merged.rows
        backend = manifest.cell_backends.get(cid)
        backend = _scrub(backend) if isinstance(backend, dict) else None
        cell = merged.cell
        kind = str((backend or {}).get("kind") or cell.get("backend") or "")
        localities = _localities(column(list(rows.values()), "locality"))
        locality = localities[0] if len(localities) == 1 else (
            "cloud" if "cloud" in localities else str((backend or {}).get("locality", "local")))
        in_process = kind in BACKENDS and backend_traits(kind).priced_by == "hour"
        hourly: float | None
        if in_process and cell.get("hardware") not in (None, manifest.hardware.profile):
            hourly = _profile_hourly(cell.get("hardware"))  # a cell placed on other hardware (a Ray node)
        elif in_process:
            hourly = manifest.hardware.cost_per_hour_usd
        else:
            hourly = _profile_hourly((backend or {}).get("hardware"))
        entry = _model_entry(config, cell.get("model", ""))
        tiers.append(Tier(cell_id=cid, cell=cell, rows=rows, backend=backend, locality=locality,
                          usd_per_hour=hourly, chat=_chat(backend, entry, cell.get("model", "")),
                          model_ref=_scrub(entry) if entry and entry.get("source") else None,
                          run_id=merged.run_id, **_operating_point(merged.run, cid, summaries)))
    target: Any = targets.get(name, suite.get("target"))
    target_source = "--target" if name in targets else "suite"
    if not isinstance(target, (int, float)):
        raise UserInputError(f"task {name!r} has no target in its manifest", field="--target",
                             hint=f"give one with --target {name}=QUALITY")
    budget, budget_source = suite.get("max_p95_latency_s"), "suite"
    if max_p95 is not None:
        budget, budget_source = max_p95, "--max-p95-latency"
    return TaskData(name=name, kind=str(suite.get("task")), metric=str(suite.get("metric")), target=float(target),
                    target_source=target_source, tolerance=float(suite.get("tolerance") or 0.0),
                    sensitive=bool(suite.get("sensitive")), latency_budget_s=budget,
                    latency_source=budget_source if budget is not None else None, runtime=_runtime(suite),
                    tiers=tiers, run_ids=sorted(r.run_id for r in kept.runs), notes=notes,
                    min_samples=int(suite.get("min_samples") or 30), delta=float(suite.get("delta") or 0.05),
                    inputs=inputs, run_paths=[r.path for r in kept.runs], prerouter=_prerouter(config))


def _localities(values: list[Any]) -> list[str]:
    """The distinct localities the rows name, sorted (strings, as the runner writes them, converted once each)."""
    try:
        distinct: Any = set(values)
    except TypeError:  # an unhashable value (a hand-edited row)
        distinct = values
    if not all(v is None or type(v) is str for v in distinct):  # 1 and True are one set member, two names
        distinct = values
    return sorted({str(v) for v in distinct if v})


def gather(paths: list[str | Path], targets: dict[str, float] | None = None,
           max_p95: float | None = None) -> list[TaskData]:
    """Every task found at or below `paths`, sorted by name; --target names must match a task."""
    targets = targets or {}
    if max_p95 is not None and not (math.isfinite(max_p95) and max_p95 > 0):
        raise UserInputError(f"expected a positive number of seconds, got {max_p95}", field="--max-p95-latency")
    by_name = load_runs(list(paths), slim=True).suites  # only the fields calibration reads
    for name in targets:
        if name not in by_name:
            raise UserInputError(f"no runs of task {name!r}; tasks found: {', '.join(sorted(by_name))}",
                                 field="--target", hint=did_you_mean(name, by_name))
    return [_build_task(name, by_name[name], targets, max_p95) for name in sorted(by_name)]


def _summary_cells(run: Any) -> list[Any]:
    """A run's summary.json cells, read slim where it can be (bench.results.columns.summary_points)."""
    from bench.results.columns import summary_points

    path = run.dir.summary_path
    if not path.exists():
        return []
    cells = summary_points(path)
    if cells is None:
        cells = (run.summary() or {}).get("cells") or []
    return cells


def _operating_point(run: Any, cell_id: str, summaries: dict[int, Any] | None = None) -> dict[str, Any]:
    """A cell's operating point and the other concurrencies it was timed at, as Tier fields. A cell timed at
    several levels (`bench run --concurrency`) is priced at its summary's operating point: each request's main-pass
    cost scaled by the point's cost over the main pass's, its latency by the level's over the main pass's on the
    same samples (`latency_vs_main`). The levels stay as `points`, for a latency budget the main pass or that point
    fails (bench.thresholds.calibrate). `summaries` caches each run's summary cells by id(run)."""
    if run is None:
        cells: list[Any] = []
    elif summaries is None:
        cells = _summary_cells(run)
    else:
        if id(run) not in summaries:
            summaries[id(run)] = _summary_cells(run)
        cells = summaries[id(run)]
    cell = next((c for c in cells if isinstance(c, dict) and c.get("cell_id") == cell_id), None)
    if cell is None:
        return {}
    load = cell.get("load")
    main = row_concurrency(load.get("concurrency") if isinstance(load, dict) else None)
    seq = _positive(cell.get("cost_per_1k_usd_sequential"))
    raw = cell.get("load_levels")
    levels: list[dict[str, Any]] = []  # as the budget test reads them, each value checked
    points: list[Point] = []
    for lv in raw if isinstance(raw, list) else []:
        level = _positive(lv.get("level")) if isinstance(lv, dict) else None
        if level is None:
            continue
        n = lv.get("n")
        levels.append({"level": int(level), "n": n if type(n) is int else 0,
                       "latency_p95_upper_s": _positive(lv.get("latency_p95_upper_s"))})
        cost, ratio = _positive(lv.get("cost_per_1k_usd")), _positive(lv.get("latency_vs_main"))
        if int(level) != main and seq is not None and cost is not None and ratio is not None:
            points.append(Point(level=int(level), cost_factor=cost / seq, latency_factor=ratio,
                                contended=lv.get("contended") is True))
    out: dict[str, Any] = {"cost_basis": cell.get("cost_basis"), "points": points, "levels": levels,
                           "main_concurrency": main}
    point = cell.get("operating_point")
    if not isinstance(point, dict):
        return out
    cost = _positive(point.get("cost_per_1k_usd"))
    if cost is None or seq is None:
        return out
    at = next((p for p in points if p.level == point.get("level")), Point(level=main))
    return out | {"point": replace(at, cost_factor=cost / seq)}


def _positive(v: Any) -> float | None:
    """v as a float where it is a finite number above 0 (not a bool), else None."""
    n = real(v)
    return n if n is not None and n > 0 else None
