"""Operating points: each cell timed again at several concurrency levels (`bench run --concurrency 1,4,8`, or the
suite's `load:` block) over a fixed subset of its samples, and priced at the cheapest level whose 95% upper bound on
p95 latency meets the suite's latency budget (levels tested from the lowest upward, stopping at the first not shown).

A level is llama.cpp sequences decoded at once (`--parallel`) for in-process backends, and requests in flight
for HTTP ones (their `concurrency`). The timing passes write `load.jsonl` beside samples.jsonl (rows as samples.jsonl
has them, plus `level`), never samples.jsonl: quality comes from the main pass alone, and a level is resumed
only when it is missing or incomplete. Per level the summary gives throughput (requests/s, output tokens/s over
the pass's busy wall time), p50/p95 latency and cost per 1k requests; `operating_point` names the level the cell
is priced at and why. A cell timed at concurrency 1 only is priced as one request at a time, and says so.

A cell whose main pass ran several requests at once (`--parallel N`) is also timed at level 1, so that its
per-request latency is an idle engine's (`idle_latency`; the loaded figures stay as `loaded_latency`). Where one
sample was answered at two concurrencies, `changed_answers` counts the answers the batch size changed.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from bench.fmt import real
from bench.results.schema import row_concurrency
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


def attach(summary: dict[str, Any], load_rows: list[dict[str, Any]], budget_s: float | None,
           main_rows: list[dict[str, Any]] | None = None, temperature: float | None = None) -> None:
    """Add each cell's levels and operating point to a summary; its cost_per_1k_usd becomes the operating
    point's (the main pass's figure stays as cost_per_1k_usd_sequential). A cell whose main pass ran with several
    requests in flight takes its per-request latency from its concurrency-1 pass (`idle_latency`); `main_rows`
    (the main pass's latest rows) give each level's changed answers (`changed_answers`) at `temperature`."""
    by_cell: dict[str, dict[int, dict[str, dict[str, Any]]]] = defaultdict(lambda: defaultdict(dict))
    for r in load_rows:  # the latest row per (cell, level, sample), as everywhere in bench
        by_cell[str(r.get("cell_id"))][int(r.get("level") or 1)][str(r.get("sample_id"))] = r
    main: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in main_rows or []:
        main[str(r.get("cell_id"))].append(r)
    for cell in summary.get("cells") or []:
        cell["cost_per_1k_usd_sequential"] = cell.get("cost_per_1k_usd")
        cid = str(cell.get("cell_id"))
        levels = by_cell.get(cid)
        cell["changed_answers"] = changed_answers(main.get(cid, []), levels or {}, temperature)
        in_flight = row_concurrency((cell.get("load") or {}).get("concurrency"))
        main_basis = ("one request at a time" if in_flight == 1 else
                      f"the main pass, {in_flight} requests in flight (--parallel; its per-request latencies were "
                      "measured under that load)")
        if levels and 1 in levels:
            idle_latency(cell, list(levels[1].values()))
        if not levels:
            cell["load_levels"], cell["operating_point"] = None, None
            cell["cost_basis"] = f"{main_basis} (no --concurrency sweep)"
            continue
        figures = [level_figures(list(rows.values())) | latency_vs_main(main.get(cid, []), rows)
                   for _, rows in sorted(levels.items())]
        if max(levels) == 1:
            cell["load_levels"], cell["operating_point"] = figures, None
            cell["cost_basis"] = (f"{main_basis} (timed at concurrency 1 only)" if in_flight > 1 else
                                  "one request at a time (measured at concurrency 1 only)")
            continue
        point = operating_point(figures, budget_s)
        cell["load_levels"], cell["operating_point"] = figures, point
        if point.get("cost_per_1k_usd") is not None:
            cell["cost_per_1k_usd"] = point["cost_per_1k_usd"]
            cell["cost_basis"] = f"concurrency {point['level']}: {point['reason']}"
        else:
            cell["cost_basis"] = f"{main_basis}: {point['reason']}"


def latency_vs_main(main: list[dict[str, Any]], level: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A level's per-request latency against the main pass's on the same samples (answered, with a latency, in
    both): the ratio of the two sums (`latency_vs_main`) and how many samples it rests on (`latency_vs_main_n`).
    `bench thresholds` scales a tier's per-request latencies by it where it prices the tier at this level. The
    ratio is None where no sample was timed in both."""
    by_id = {str(r.get("sample_id")): r for r in main if not r.get("error")}
    pairs = [(real(by_id[sid].get("latency_s")), real(r.get("latency_s")))
             for sid, r in level.items() if sid in by_id and not r.get("error")]
    kept = [(a, b) for a, b in pairs if a is not None and b is not None and a >= 0 and b >= 0]
    total = sum(a for a, _ in kept)
    return {"latency_vs_main": sum(b for _, b in kept) / total if kept and total > 0 else None,
            "latency_vs_main_n": len(kept)}


def idle_latency(cell: dict[str, Any], level1: list[dict[str, Any]]) -> None:
    """A cell whose main pass ran with several requests in flight (its `load` block): per-request latency, TTFT and
    token rates come from its concurrency-1 timing pass over the fixed subset instead, and `latency_basis` says so;
    the main pass's figures, measured under load, stay under `loaded_latency`. A cell run one at a time keeps its
    whole run's figures."""
    from bench.results.summary import LATENCY_KEYS, RAW_KEYS, latency_figures

    load = cell.get("load")
    ok = [r for r in level1 if not r.get("error") and r.get("timings")]
    if not load or not ok:
        return
    cell["loaded_latency"] = {"concurrency": load["concurrency"], **{k: cell.get(k) for k in LATENCY_KEYS},
                              "basis": f"main pass under load, {load['concurrency']} requests in flight"}
    figures = latency_figures(ok)
    cell.update({k: figures[k] for k in LATENCY_KEYS + RAW_KEYS})
    cell["latency_basis"] = f"timing pass at concurrency 1 over {len(ok)} samples"


def changed_answers(main: list[dict[str, Any]], levels: dict[int, dict[str, dict[str, Any]]],
                    temperature: float | None) -> list[dict[str, Any]] | None:
    """Per pair of concurrencies (the main pass's, a load.jsonl level's), the answers of the same samples that
    differ in text: batch size can flip a greedy near-tie. Samples that errored on either side, and a level run at
    the main pass's own concurrency, are left out. Sampled decoding (temperature > 0) differs by chance, so there the
    pairs are counted but not compared. None where the cell has no such pair."""
    by_id = {str(r.get("sample_id")): r for r in main if not r.get("error")}
    pairs: dict[tuple[int, int], list[bool]] = defaultdict(list)
    for level, rows in sorted(levels.items()):
        for sid, r in rows.items():
            m = by_id.get(sid)
            if m is None or r.get("error"):
                continue
            a, b = int(m.get("concurrency") or 1), int(r.get("concurrency") or level)
            if a != b:
                pairs[(a, b)].append(m.get("output") != r.get("output"))
    if not pairs:
        return None
    out = []
    for between, diffs in sorted(pairs.items(), key=lambda kv: kv[0][::-1]):
        if temperature:
            out.append({"between": list(between), "compared": len(diffs), "changed": None, "share": None,
                        "comparable": False, "reason": f"temperature {temperature:g} > 0: sampled answers differ "
                                                       "by chance, not only by batch size"})
        else:
            k = sum(diffs)
            out.append({"between": list(between), "compared": len(diffs), "changed": k, "share": k / len(diffs),
                        "comparable": True})
    return out


def loaded_cells(rows: list[dict[str, Any]]) -> set[str]:
    """The cells whose main pass (its latest rows) ran with several requests in flight: their per-request latency
    needs a timing pass at concurrency 1."""
    return {str(r["cell_id"]) for r in rows if not r.get("error") and int(r.get("concurrency") or 1) > 1}


def run_levels(suite: Any, plans: list[Any], samples: list[Any], run: Any, isolation: str, profile: Any,
               profiles: dict[str, Any], quiet: bool, prepare: Any, idle: set[str] | None = None) -> None:
    """The timing passes: for each cell and each level not yet in load.jsonl, the first `timing_samples`
    samples (by id) at that many requests in flight; level 1 too for the cells in `idle` (their main pass ran
    several at once, so their per-request latency needs it). `prepare(plan)` resolves the cell's model (None when
    it cannot be had: the cell's main pass has said why)."""
    import dataclasses

    from bench.cost import CostModel
    from bench.display import console
    from bench.records import make_row
    from bench.results.schema import cell_label
    from bench.results.store import SampleWriter
    from bench.runner import build_requests, spawn_cell

    idle = idle or set()
    if not suite.load.concurrency and not idle:
        return
    subset = sorted(samples, key=lambda s: s.id)[:suite.load.timing_samples]
    by_id = {s.id: s for s in subset}
    path = run.path / LOAD_FILE
    complete = done_levels(path, len(subset))
    writer = SampleWriter(path)
    try:
        for plan in plans:
            levels = sorted(set(suite.load.concurrency) | ({1} if plan.cell_id in idle else set()))
            todo = [lv for lv in levels if lv not in complete[plan.cell_id]]
            if not todo or not prepare(plan):
                continue
            for level in todo:
                backend, parallel = level_settings(plan.backend, level)
                at = dataclasses.replace(plan, backend=backend)
                cost_model = CostModel(at, profile, profiles)
                state: dict[str, Any] = {"load": {}}
                if not quiet:
                    why = (" (per-request latency: the main pass ran several at once)"
                           if level == 1 and plan.cell_id in idle else "")
                    console.print(f"{cell_label(plan.cell)}: timing {len(subset)} samples at concurrency {level}"
                                  + why, markup=False)

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
