"""Operating points: each cell timed again at several concurrency levels (`bench run --concurrency 1,4,8`, or the
suite's `load:` block) over a fixed subset of its samples, and priced at the cheapest level whose 95% upper bound on
p95 latency meets the suite's latency budget (levels tested from the lowest upward, stopping at the first not shown).

A level is llama.cpp sequences decoded at once (`--parallel`) for in-process backends, and requests in flight
for HTTP ones (their `concurrency`). The timing passes write `load.jsonl` beside samples.jsonl (rows as samples.jsonl
has them, plus `level`), never samples.jsonl: quality comes from the main pass alone, and a level is resumed
only when it is missing or incomplete. Per level the summary gives throughput (requests/s, output tokens/s over
the pass's busy wall time), p50/p95 latency and cost per 1k requests; `operating_point` names the level the cell
is priced at and why. A cell timed at concurrency 1 only is priced as one request at a time, and says so.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from bench.results.summary import contention, throughput
from bench.stats import percentile, quantile_bound_min_n, quantile_upper_bound

LOAD_FILE = "load.jsonl"


def parse_levels(text: str) -> list[int]:
    """'1,4,8' -> [1, 4, 8]; a bad list is an exit-2 error naming --concurrency."""
    from bench.config.suite import MAX_PARALLEL
    from bench.errors import UserInputError

    try:
        levels = sorted({int(x) for x in str(text).split(",") if x.strip()})
    except ValueError:
        levels = []
    if not levels or levels[0] < 1 or levels[-1] > MAX_PARALLEL:
        raise UserInputError(f"{text!r}: expected whole numbers from 1 to {MAX_PARALLEL}, comma "
                             "separated (e.g. 1,4,8)", field="--concurrency")
    return levels


def level_settings(backend: Any, level: int) -> tuple[Any, int]:
    """The backend config and the parallel setting that put `level` requests in flight for this backend."""
    from bench.registry import backend_traits

    if not backend_traits(backend.kind).in_process and hasattr(backend, "concurrency"):
        return backend.model_copy(update={"concurrency": level}), 1
    return backend, level


def done_levels(path: Path, n: int) -> dict[str, set[int]]:
    """cell_id -> the levels load.jsonl already holds a whole, error-free pass of (`n` samples) for."""
    from bench.results.store import iter_jsonl

    ok: dict[tuple[str, int], set[str]] = defaultdict(set)
    for r in iter_jsonl(path):
        if not r.get("error"):
            ok[(str(r.get("cell_id")), int(r.get("level") or 1))].add(str(r.get("sample_id")))
    done: dict[str, set[int]] = defaultdict(set)
    for (cell_id, level), ids in ok.items():
        if len(ids) >= n:
            done[cell_id].add(level)
    return done


def level_figures(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One level's pass: throughput over its busy wall time, latency percentiles, cost per 1k requests."""
    ok = [r for r in rows if not r.get("error")]
    speed = throughput(ok)
    costs = [r["cost_usd"] for r in ok if isinstance(r.get("cost_usd"), (int, float))]
    lat = [r.get("latency_s") for r in ok]
    return {"level": int(rows[0].get("level") or 1), "n": len(rows), "errors": len(rows) - len(ok),
            "wall_s": speed["wall_s"] or None, "requests_per_s": speed["requests_per_s"],
            "output_tps": speed["output_tps"],
            "latency_p50_s": percentile(lat, 50), "latency_p95_s": percentile(lat, 95),
            "latency_p95_upper_s": latency_p95_upper(lat, len(rows) - len(ok)),
            "cost_per_1k_usd": sum(costs) / len(costs) * 1000 if costs else None,
            "contended": contention(ok)["contended"]}


LATENCY_CONFIDENCE = 0.95  # every "within the latency budget" claim holds at this confidence


def latency_p95_upper(latencies: list[float | None], errors: int = 0) -> float | None:
    """A level's one-sided 95% upper confidence bound on its p95 request latency (bench.stats.quantile_upper_bound,
    distribution-free). A request that errored counts as one that never finished. None when the level has too few
    requests for any bound (bound_min_n), or when the bound falls on an errored request."""
    bound = quantile_upper_bound(list(latencies) + [math.inf] * errors, 0.95, 1 - LATENCY_CONFIDENCE)
    return bound if bound is not None and math.isfinite(bound) else None


def bound_min_n() -> int:
    """The fewest timing samples a level needs before its p95 can be bounded at LATENCY_CONFIDENCE (59)."""
    return quantile_bound_min_n(0.95, 1 - LATENCY_CONFIDENCE)


def within_budget(levels: list[dict[str, Any]], budget_s: float) -> tuple[list[dict[str, Any]], str | None]:
    """The levels shown to meet the budget, by fixed-sequence testing: from the lowest concurrency upward, each
    level is shown when its latency_p95_upper_s is <= the budget, and testing stops at the first that is not
    (so the chance that any shown level's true p95 exceeds the budget stays at most 1 - LATENCY_CONFIDENCE,
    with no split across levels). Also why testing stopped (None when every level was shown)."""
    shown: list[dict[str, Any]] = []
    for lv in sorted(levels, key=lambda lv: lv["level"]):
        upper = lv.get("latency_p95_upper_s")
        if upper is None:
            need, n = bound_min_n(), int(lv.get("n") or 0)
            why = (f"needs >= {need} timing samples for a {LATENCY_CONFIDENCE:.0%} bound on p95, has {n}"
                   if n < need else "its errored requests leave its p95 unbounded")
            return shown, f"concurrency {lv['level']}: {why}"
        if upper > budget_s:
            return shown, (f"concurrency {lv['level']}: p95 latency may reach {upper:.3g} s "
                           f"({LATENCY_CONFIDENCE:.0%} upper bound)")
        shown.append(lv)
    return shown, None


def operating_point(levels: list[dict[str, Any]], budget_s: float | None) -> dict[str, Any]:
    """The level a request is priced at: the cheapest of the levels shown within the p95 latency budget at 95%
    confidence (within_budget), the higher on a tie. Where throughput rises with concurrency, as it should, that is
    the highest level shown. None shown prices at the lowest level, and says why. When the suite sets no budget,
    no latency claim is made: the cheapest level of all."""
    usable = [lv for lv in levels if lv["cost_per_1k_usd"] is not None and lv["latency_p95_s"] is not None]
    if not usable:
        return {"level": None, "reason": "no level finished without errors"}
    if budget_s is None:
        best = min(usable, key=lambda lv: (lv["cost_per_1k_usd"], -lv["level"]))
        return {"level": best["level"], "cost_per_1k_usd": best["cost_per_1k_usd"], "budget_s": None,
                "within_budget": None, "confidence": None, "levels_within_budget": None,
                "latency_p95_upper_s": best.get("latency_p95_upper_s"),
                "reason": "the cheapest level per request; the suite sets no latency budget (max_p95_latency_s), "
                          "so no latency claim is made"}
    shown, stop = within_budget(levels, budget_s)
    priced = [lv for lv in shown if lv["cost_per_1k_usd"] is not None]
    claim = {"budget_s": budget_s, "confidence": LATENCY_CONFIDENCE,
             "levels_within_budget": [lv["level"] for lv in shown]}
    if not priced:
        low = min(usable, key=lambda lv: lv["level"])
        return {"level": low["level"], "cost_per_1k_usd": low["cost_per_1k_usd"], "within_budget": False,
                "latency_p95_upper_s": low.get("latency_p95_upper_s"), **claim,
                "reason": f"no level meets the p95 budget of {budget_s:g} s at {LATENCY_CONFIDENCE:.0%} confidence"
                          f"{f' (stopped at {stop})' if stop else ''}: priced at the lowest level"}
    best = min(priced, key=lambda lv: (lv["cost_per_1k_usd"], -lv["level"]))
    why = (f"p95 latency within the {budget_s:g} s budget at {LATENCY_CONFIDENCE:.0%} confidence (upper bound "
           f"{best['latency_p95_upper_s']:.3g} s){f'; stopped at {stop}' if stop else ''}")
    return {"level": best["level"], "cost_per_1k_usd": best["cost_per_1k_usd"], "within_budget": True,
            "latency_p95_upper_s": best["latency_p95_upper_s"], **claim,
            "reason": f"the cheapest level per request; {why}"}


def attach(summary: dict[str, Any], load_rows: list[dict[str, Any]], budget_s: float | None) -> None:
    """Add each cell's levels and operating point to a summary; its cost_per_1k_usd becomes the operating
    point's (the one-at-a-time figure stays as cost_per_1k_usd_sequential)."""
    by_cell: dict[str, dict[int, dict[str, dict[str, Any]]]] = defaultdict(lambda: defaultdict(dict))
    for r in load_rows:  # the latest row per (cell, level, sample), as everywhere in bench
        by_cell[str(r.get("cell_id"))][int(r.get("level") or 1)][str(r.get("sample_id"))] = r
    for cell in summary.get("cells") or []:
        cell["cost_per_1k_usd_sequential"] = cell.get("cost_per_1k_usd")
        levels = by_cell.get(str(cell.get("cell_id")))
        if not levels:
            cell["load_levels"], cell["operating_point"] = None, None
            cell["cost_basis"] = "one request at a time (no --concurrency sweep)"
            continue
        figures = [level_figures(list(rows.values())) for _, rows in sorted(levels.items())]
        if max(levels) == 1:
            cell["load_levels"], cell["operating_point"] = figures, None
            cell["cost_basis"] = "one request at a time (measured at concurrency 1 only)"
            continue
        point = operating_point(figures, budget_s)
        cell["load_levels"], cell["operating_point"] = figures, point
        if point.get("cost_per_1k_usd") is not None:
            cell["cost_per_1k_usd"] = point["cost_per_1k_usd"]
            cell["cost_basis"] = f"concurrency {point['level']}: {point['reason']}"
        else:
            cell["cost_basis"] = f"one request at a time: {point['reason']}"


def run_levels(suite: Any, plans: list[Any], samples: list[Any], run: Any, isolation: str, profile: Any,
               profiles: dict[str, Any], quiet: bool, prepare: Any) -> None:
    """The timing passes: for each cell and each level not yet in load.jsonl, the first `timing_samples`
    samples (by id) at that many requests in flight. `prepare(plan)` resolves the cell's model (None when it
    cannot be had: the cell's main pass has said why)."""
    import dataclasses

    from bench.cost import CostModel
    from bench.display import console
    from bench.records import make_row
    from bench.results.schema import cell_label
    from bench.results.store import SampleWriter
    from bench.runner import build_requests, spawn_cell

    levels = suite.load.concurrency
    if not levels:
        return
    subset = sorted(samples, key=lambda s: s.id)[:suite.load.timing_samples]
    by_id = {s.id: s for s in subset}
    path = run.path / LOAD_FILE
    complete = done_levels(path, len(subset))
    writer = SampleWriter(path)
    try:
        for plan in plans:
            todo = [lv for lv in levels if lv not in complete[plan.cell_id]]
            if not todo or not prepare(plan):
                continue
            for level in todo:
                backend, parallel = level_settings(plan.backend, level)
                at = dataclasses.replace(plan, backend=backend)
                cost_model = CostModel(at, profile, profiles)
                state: dict[str, Any] = {"load": {}}
                if not quiet:
                    console.print(f"{cell_label(plan.cell)}: timing {len(subset)} samples at concurrency {level}",
                                  markup=False)

                def on_event(event: tuple, level: int = level, at: Any = at, cost_model: Any = cost_model,
                             state: dict[str, Any] = state) -> None:
                    kind, payload = event
                    if kind == "load":
                        state["load"] = payload
                    elif kind == "sample" and payload.get("request_id") in by_id:
                        row = make_row(suite, at, by_id[payload["request_id"]], payload, state["load"], cost_model)
                        writer.write(row | {"level": level})
                    elif kind == "fatal" and not quiet:
                        console.print(f"{cell_label(plan.cell)} at concurrency {level}: {payload}", markup=False)

                spawn_cell(at, build_requests(suite, subset, plan.chat), on_event, isolation, parallel)
    finally:
        writer.close()
