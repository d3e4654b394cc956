"""pytest plugin: `pytest --bench-suite SUITE.yaml` makes each cell a test that fails when it misses the target.

Each suite runs once per session (resumable, like `bench run`); its cells are tests named
`<suite>::<model>@<quantization>`. A cell fails when it errored on any sample or when its quality misses
the suite's target: by default the mean (the number `bench run` prints), with `--bench-criterion ci_low`
the lower bound of its 95% interval (what routing.json calls meeting the target).

With pytest-benchmark installed, each cell also requests its `benchmark` fixture and stores the cell's
measured per-sample latencies (seconds, one round per sample) as that benchmark's rounds, so
`--benchmark-autosave`, `--benchmark-compare` and `--benchmark-compare-fail` treat them like any benchmark.
pytest-benchmark's skip options apply too: `--benchmark-skip` skips these tests, `--benchmark-only` keeps them.

Without `--bench-suite` the plugin only adds its options. Heavy imports wait until a suite is given.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from bench.fmt import num

BENCHMARK_MODE = "bench: measured per-sample latencies"


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("bench", "bench: model suites as tests")
    g.addoption("--bench-suite", action="append", default=[], metavar="SUITE.yaml",
                help="run this suite and make each of its cells a test (repeatable)")
    g.addoption("--bench-models", default=None, metavar="ID[,ID...]",
                help="only these models (catalog ids or the suite's endpoints)")
    g.addoption("--bench-limit", type=int, default=None, metavar="N", help="use at most N samples per suite")
    g.addoption("--bench-results", default="results", metavar="DIR", help="results directory (default: results)")
    g.addoption("--bench-hardware", default=None, metavar="PROFILE", help="hardware profile id")
    g.addoption("--bench-isolation", choices=("process", "inline"), default="process",
                help="run each cell in its own process (default) or in the pytest process")
    g.addoption("--bench-criterion", choices=("mean", "ci_low"), default="mean",
                help="what must reach the target: the mean (default) or the lower bound of its 95%% interval")


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("bench_suite"):
        config.pluginmanager.register(BenchSuites(config), "bench-suites")


def cell_name(cell: dict[str, Any]) -> str:
    q = cell.get("quantization")
    return f"{cell['model']}@{q}" if q else str(cell["model"])


class SuiteNode(pytest.Collector):
    """One suite: node id `<suite name>`, one item per cell."""

    plugin: BenchSuites

    def collect(self) -> list[pytest.Item]:
        return self.plugin.items_for(self)


class CellItem(pytest.Function):
    """One cell of one suite, as a test."""

    def reportinfo(self) -> tuple[Any, int | None, str]:
        # not a suffix of the node id: pytest would turn the dots of "qwen2.5" into "::" in its location line
        return self.path, None, f"{self.nodeid} ({self.path.name})"


class BenchSuites:
    """Loads the suites at configure time; runs each once, on first use, and judges its cells."""

    def __init__(self, config: pytest.Config):
        from bench.config import load_suite
        from bench.errors import BenchError
        from bench.matrix import plan_cells

        self.config = config
        base = Path(config.invocation_params.dir)
        models = config.getoption("bench_models")
        self.models = [m.strip() for m in models.split(",") if m.strip()] if models else None
        self.limit = config.getoption("bench_limit")
        if self.limit is not None and self.limit <= 0:
            raise pytest.UsageError(f"--bench-limit: expected a positive integer, got {self.limit}")
        self.results = base / config.getoption("bench_results")
        self.hardware = config.getoption("bench_hardware")
        self.isolation = config.getoption("bench_isolation")
        self.criterion = config.getoption("bench_criterion")
        self.suites: dict[str, Any] = {}
        self.cells: dict[str, list[dict[str, Any]]] = {}
        self.outcomes: dict[str, Any] = {}
        for raw in config.getoption("bench_suite"):
            try:
                suite = load_suite(base / raw)
                plans = plan_cells(suite, self.models, "-", "local")
            except BenchError as exc:
                raise pytest.UsageError(f"--bench-suite {raw}: {exc}") from None
            if suite.name in self.suites:
                if self.suites[suite.name].path != suite.path:
                    raise pytest.UsageError(f"--bench-suite {raw}: another suite file is also named "
                                            f"{suite.name!r} ({self.suites[suite.name].path})")
                continue
            self.suites[suite.name] = suite
            self.cells[suite.name] = [p.cell for p in plans]

    # ------------------------------------------------------------ collection

    @pytest.hookimpl(tryfirst=True)  # before -k and -m deselect, so they apply to cells too
    def pytest_collection_modifyitems(self, session: pytest.Session, config: pytest.Config,
                                      items: list[pytest.Item]) -> None:
        for name, suite in self.suites.items():
            node = SuiteNode.from_parent(session, name=name, nodeid=name, path=suite.path)
            node.plugin = self
            items.extend(session.genitems(node))  # reported like collected items (counts, --collect-only)

    def items_for(self, node: SuiteNode) -> list[pytest.Item]:
        with_benchmark = self.config.pluginmanager.hasplugin("benchmark")
        names = [cell_name(c) for c in self.cells[node.name]]
        items: list[pytest.Item] = []
        for cell, short in zip(self.cells[node.name], names):
            if names.count(short) > 1:
                short = f"{short}/{cell['backend']}"
            fn = self._test_function(node.name, cell, with_benchmark)
            items.append(CellItem.from_parent(node, name=short, callobj=fn))
        return items

    def _test_function(self, suite_name: str, cell: dict[str, Any], with_benchmark: bool) -> Any:
        def test_cell_timed(benchmark: Any) -> None:
            self.check_cell(suite_name, cell, benchmark)

        def test_cell() -> None:
            self.check_cell(suite_name, cell, None)

        return test_cell_timed if with_benchmark else test_cell

    # ------------------------------------------------------------ running and judging

    def outcome(self, suite_name: str) -> Any:
        """Run the suite the first time one of its cells is tested; later cells reuse the run."""
        if suite_name not in self.outcomes:
            from bench.errors import BenchError
            from bench.runner import run_suite

            try:
                self.outcomes[suite_name] = run_suite(
                    self.suites[suite_name], models=self.models, limit=self.limit, hardware=self.hardware,
                    results_dir=self.results, isolation=self.isolation, quiet=True)
            except BenchError as exc:
                self.outcomes[suite_name] = exc
        return self.outcomes[suite_name]

    def check_cell(self, suite_name: str, cell: dict[str, Any], benchmark: Any) -> None:
        from bench.errors import BenchError
        from bench.results.schema import row_concurrency
        from bench.tasks import get_task

        outcome = self.outcome(suite_name)
        if isinstance(outcome, BenchError):
            pytest.fail(f"suite {suite_name} could not run: {outcome}", pytrace=False)
        suite = self.suites[suite_name]
        rows = self.cell_rows(outcome, suite, cell)
        if not rows:
            pytest.fail(f"{cell_name(cell)}: no samples were stored for this cell in {outcome.run.path}",
                        pytrace=False)
        ok = [r for r in rows if not r.get("error")]
        quality = cell_quality(rows)  # an errored request counts as a failed one
        latencies = [r["latency_s"] for r in ok if isinstance(r.get("latency_s"), (int, float))
                     and math.isfinite(r["latency_s"])]
        metric = next((r.get("metric") for r in rows if r.get("metric")), "quality")
        if benchmark is not None:
            benchmark.extra_info.update({
                "suite": suite_name, "cell_id": rows[0]["cell_id"], "run_dir": str(outcome.run.path),
                "metric": metric, "quality_mean": quality["mean"], "quality_ci_low": quality["ci_low"],
                "quality_ci_high": quality["ci_high"], "target": suite.target, "n": len(rows),
                "errors": len(rows) - len(ok), "error_rate": (len(rows) - len(ok)) / len(rows),
                "concurrency": max((row_concurrency(r.get("concurrency")) for r in rows), default=1),
                "unit": "seconds per request (measured latency_s, with `concurrency` requests in flight)"})
            record_latencies(benchmark, latencies)
        errored = [r for r in rows if r.get("error")]
        if errored:
            examples = "; ".join(sorted({str(r["error"])[:160] for r in errored})[:3])
            pytest.fail(f"{len(errored)} of {len(rows)} samples errored: {examples}", pytrace=False)
        value = quality["mean"] if self.criterion == "mean" else quality["ci_low"]
        text = (f"{metric} {num(quality['mean'])} [95% CI {num(quality['ci_low'])}, {num(quality['ci_high'])}] "
                f"on {quality['n']} samples, error rate {(len(rows) - len(ok)) / len(rows):.1%}")
        if get_task(suite.kind).higher_is_better is False:
            value = quality["mean"] if self.criterion == "mean" else quality["ci_high"]
            missed = value is None or value > suite.target
        else:
            missed = value is None or value < suite.target
        if missed:
            which = "mean" if self.criterion == "mean" else "interval bound"
            pytest.fail(f"{text}: the {which} misses the target {suite.target:g}", pytrace=False)

    def cell_rows(self, outcome: Any, suite: Any, cell: dict[str, Any]) -> list[dict[str, Any]]:
        """The latest row per sample of this cell in this session's run, over this session's samples
        (--bench-limit applies)."""
        from bench.data import load_samples

        return cell_rows([outcome.run.path], cell, {s.id for s in load_samples(suite, self.limit)})


def cell_rows(paths: list[Any], cell: dict[str, Any], ids: set[str] | None = None) -> list[dict[str, Any]]:
    """The cell's latest row per sample (bench.results.load's merge rule) in the runs at or below `paths`, only
    the samples in `ids` when given.

    The runs may hold the cell on other hardware too (a results folder moved between machines); the one written
    most recently is this machine's."""
    from bench.results.load import load_runs

    key = (cell["model"], cell.get("quantization"), cell["backend"], cell.get("gen"))
    wanted = None if ids is None else {str(i) for i in ids}
    by_cell: list[list[dict[str, Any]]] = []
    for suite in load_runs(list(paths)).suites.values():
        for merged in suite.cells.values():
            c = merged.cell
            if (c.get("model"), c.get("quantization"), c.get("backend"), c.get("gen")) != key:
                continue
            rows = [r for sid, r in merged.rows.items() if wanted is None or sid in wanted]
            if rows:
                by_cell.append(rows)
    if not by_cell:
        return []

    def newest(rows: list[dict[str, Any]]) -> float:
        return max(((r.get("timings") or {}).get("t_start") or 0.0) for r in rows)

    return max(by_cell, key=newest)


def cell_quality(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The cell's quality with its 95% interval, as the summary counts it: an errored request is a failed one."""
    from bench.results.summary import quality_value
    from bench.stats import mean_ci

    return mean_ci([quality_value(r) for r in rows])


def record_latencies(benchmark: Any, latencies: list[float]) -> None:
    """Store measured latencies as the benchmark's rounds (pytest-benchmark has no public API for values
    measured elsewhere; this is the pattern its issue #52 describes: `_make_stats(1)` then `update` per value)."""
    benchmark._mode = BENCHMARK_MODE  # the fixture counts as used (no "not used at all" warning)
    if benchmark.disabled or not latencies:
        return
    make_stats = getattr(benchmark, "_make_stats", None)
    if make_stats is None:
        import warnings

        warnings.warn("this pytest-benchmark has no _make_stats: latencies not recorded", stacklevel=2)
        return
    stats = make_stats(1)  # one iteration per round: each round is one request
    for seconds in latencies:
        stats.update(float(seconds))
