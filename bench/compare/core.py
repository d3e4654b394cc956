"""Compare a candidate run against a baseline: load both sides, pair cells, judge quality, errors and routing."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench import SCHEMA_VERSION
from bench.compare.speed import DEFAULT_FACTOR, compare_speed
from bench.errors import UserInputError
from bench.fmt import finite, num
from bench.results.columns import column
from bench.results.load import load_runs
from bench.results.schema import cell_label
from bench.routing_file import RoutingDoc
from bench.stats import Z95, diff_interval, is_binary, mcnemar_exact, mean_ci

DEFAULT_TOLERANCE = 0.02  # the suite's own default, for manifests that carry none
SAME_CELL = "same cell"
OK, REGRESSION, WORSE_SPEED, INCONCLUSIVE = "ok", "regression", "worse speed", "inconclusive"
ALPHA = 0.05  # two-sided: each bound of the paired interval is wrong at most 2.5% of the time


@dataclass
class CellData:
    """One cell of one side: its key and its latest row per sample."""

    cell: dict[str, Any]
    cell_id: str
    run_id: str
    rows: dict[str, Any] = field(default_factory=dict)  # sample_id -> row (a dict, or SampleFields when loaded)

    @property
    def short(self) -> str:
        q = self.cell.get("quantization")
        return f"{self.cell.get('model')}@{q}" if q else str(self.cell.get("model"))


@dataclass
class TaskData:
    """One suite on one side, its runs merged by bench.results.load's rule: the latest row per cell and sample."""

    name: str
    suite: dict[str, Any]
    runs: list[str]
    cells: list[CellData]
    identities: set[str]


# ---------------------------------------------------------------- loading

def load_side(path: str | Path) -> dict[str, TaskData]:
    """Every suite found at or below path, by suite name."""
    tasks: dict[str, TaskData] = {}
    for name, found in load_runs([path], slim=True).suites.items():  # only the fields the comparison reads
        cells = [CellData(cell=c.cell, cell_id=cid, run_id=c.run_id, rows=c.rows) for cid, c in found.cells.items()]
        tasks[name] = TaskData(name=name, suite=found.latest.manifest.suite.model_dump(),
                               runs=[r.run_id for r in found.runs], cells=cells,
                               identities={r.manifest.suite.identity for r in found.runs if r.manifest.suite.identity})
    return tasks


def load_routing(path: str | Path) -> RoutingDoc:
    """A routing.json through the one routing loader (bench.routing_file): validated, a schema 2 file migrated."""
    from bench.routing_file import load_routing as load

    return load(path, flag="--routing")


# ---------------------------------------------------------------- pairing

def _loose_key(cell: dict[str, Any]) -> tuple:
    return (cell.get("model"), cell.get("quantization"), cell.get("backend"), cell.get("gen"))


def pair_cells(base: list[CellData], cand: list[CellData]) -> tuple[list[tuple[CellData, CellData, str]],
                                                                     list[CellData], list[CellData]]:
    """Pair by identical cell key; then the same model on other hardware; then what is left, a swap:
    the only remaining cell of each side, or the remaining cells of each side in order."""
    left_b, left_c = list(base), list(cand)
    pairs: list[tuple[CellData, CellData, str]] = []

    def take(match: Any, how: Any) -> None:
        for b in list(left_b):
            c = next((c for c in left_c if match(b, c)), None)
            if c is not None:
                pairs.append((b, c, how(b, c)))
                left_b.remove(b)
                left_c.remove(c)

    take(lambda b, c: b.cell_id == c.cell_id, lambda b, c: SAME_CELL)
    take(lambda b, c: _loose_key(b.cell) == _loose_key(c.cell),
         lambda b, c: f"same model on other hardware ({b.cell.get('hardware')} vs {c.cell.get('hardware')})")
    if len(left_b) == 1 and len(left_c) == 1:
        pairs.append((left_b[0], left_c[0], "swap: the only unmatched cell on each side"))
        left_b, left_c = [], []
    elif left_b and left_c:
        n = min(len(left_b), len(left_c))
        for i in range(n):
            pairs.append((left_b[i], left_c[i], f"swap by position: unmatched cell {i + 1} of each side"))
        left_b, left_c = left_b[n:], left_c[n:]
    order = {id(c): i for i, c in enumerate(base)}
    pairs.sort(key=lambda p: order[id(p[0])])
    return pairs, left_b, left_c


# ---------------------------------------------------------------- quality

def _score(row: dict[str, Any]) -> float | None:
    """The sample's quality; an errored request is a failed one (0), as everywhere in bench."""
    if row.get("error"):
        return 0.0
    s = row.get("score")
    if s is None or isinstance(s, bool):
        return None
    try:
        return finite(s)
    except (TypeError, ValueError):
        return None


def _errored(rows: list[Any]) -> np.ndarray:
    return np.array(list(map(bool, column(rows, "error"))), dtype=bool)


def _scores(rows: list[dict[str, Any]], failed: np.ndarray) -> np.ndarray:
    """`_score` of each row as one array, NaN where it is None. Plain numbers and None, the usual scores,
    convert in one numpy call; anything else goes through _score row by row."""
    raw = column(rows, "score")
    if set(map(type, raw)) <= {float, int, type(None)}:
        try:
            out = np.array(raw, dtype=float)
        except OverflowError:
            out = None
        if out is not None:
            out[~np.isfinite(out)] = np.nan
            out[failed] = 0.0
            return out
    return np.array([math.nan if (v := _score(r)) is None else v for r in rows], dtype=float)


def _higher_is_better(kind: str | None) -> bool:
    from bench.tasks import get_task

    try:
        return bool(get_task(kind).higher_is_better) if kind else True
    except UserInputError:
        return True


def quality_gate(xs: list[float], ys: list[float], tolerance: float, hib: bool = True) -> dict[str, Any]:
    """The paired quality verdict of candidate (ys) against baseline (xs) on the same samples.

    regression: the whole 95% interval of the change lies beyond -tolerance (worse by more than the tolerance);
    ok (non-inferior): the whole interval lies above -tolerance; inconclusive: in between, with about how many
    shared samples would decide it. For 0/1 scores a regression also needs the exact McNemar test on the
    discordant pairs (p < 0.05, more pairs worse than better), which decides at small n."""
    x, y = np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)
    n = int(x.size)
    if n == 0:
        return {"verdict": INCONCLUSIVE, "delta": None, "ci_low": None, "ci_high": None, "n": 0,
                "exact_p": None, "exact_note": "", "samples_to_decide": None,
                "message": "no sample answered by both: nothing to compare"}
    d = y - x
    lo_a, hi_a, _ = diff_interval(d[None, :], alpha=ALPHA)
    lo, hi, m = float(lo_a[0]), float(hi_a[0]), float(d.mean())
    worst, best = (hi, lo) if hib else (-lo, -hi)   # the change's bounds, oriented so that negative is worse
    exact_p, exact_ok, note = None, True, ""
    if is_binary(x) and is_binary(y):
        worse, better = int(((x == 1) & (y == 0)).sum()), int(((x == 0) & (y == 1)).sum())
        if not hib:
            worse, better = better, worse
        exact_p = mcnemar_exact(worse, better)
        exact_ok = exact_p < ALPHA and worse > better
        note = f", exact McNemar p={exact_p:.3g} on {worse} worse / {better} better"
    if worst < -tolerance and exact_ok:
        verdict = REGRESSION
    elif best > -tolerance:
        verdict = OK
    else:
        verdict = INCONCLUSIVE
    needed = None
    if verdict == INCONCLUSIVE:
        sd = max(float(d.std(ddof=1)) if n > 1 else 0.0, 1.0 / max(n, 1))
        gap = abs((m if hib else -m) + tolerance)
        needed = int(math.ceil((Z95 * sd / gap) ** 2)) if gap > 1e-9 else None
    return {"verdict": verdict, "delta": m, "ci_low": lo, "ci_high": hi, "n": n, "exact_p": exact_p,
            "exact_note": note, "samples_to_decide": needed,
            "message": {REGRESSION: "worse by more than the tolerance",
                        OK: "non-inferior: not worse by more than the tolerance",
                        INCONCLUSIVE: "inconclusive: the interval straddles the tolerance"
                        + (f"; about {needed} shared samples would decide it" if needed else "")}[verdict]}


def compare_pair(task: TaskData, b: CellData, c: CellData, how: str, tolerance: float, hib: bool,
                 routing_target: float | None, gate_speed: bool, factor: float,
                 max_error_rate: float | None = None, strict: bool = False) -> dict[str, Any]:
    """Everything about one baseline cell against one candidate cell, with its verdict and reasons."""
    shared = sorted(set(b.rows) & set(c.rows))
    if not shared:
        raise UserInputError(f"task {task.name!r}: baseline cell {b.cell_id} and candidate cell {c.cell_id} "
                             "share no sample ids; were they run on the same data?", field="sample_id")
    b_rows, c_rows = [b.rows[s] for s in shared], [c.rows[s] for s in shared]
    b_failed, c_failed = _errored(b_rows), _errored(c_rows)
    b_err = {s for s, e in zip(shared, b_failed) if e}
    c_err = {s for s, e in zip(shared, c_failed) if e}
    new_err = sorted(c_err - b_err)
    b_score, c_score = _scores(b_rows, b_failed), _scores(c_rows, c_failed)
    both = ~np.isnan(b_score) & ~np.isnan(c_score)
    compared = [s for s, k in zip(shared, both.tolist()) if k]
    xs, ys = b_score[both].tolist(), c_score[both].tolist()
    gate = quality_gate(xs, ys, tolerance, hib)
    delta, lo, hi = gate["delta"], gate["ci_low"], gate["ci_high"]
    q_b, q_c = mean_ci(xs), mean_ci(ys)
    metric = task.suite.get("metric")
    reasons: list[str] = []
    if gate["verdict"] == REGRESSION:
        reasons.append(f"{metric} dropped by {-delta if hib else delta:.3f} (delta {delta:+.3f}, 95% CI "
                       f"[{lo:+.3f}, {hi:+.3f}], n={gate['n']}{gate['exact_note']}): the whole interval is beyond "
                       f"the tolerance {tolerance:g}")
    if new_err:
        example = c.rows[new_err[0]].get("error")
        gate["new_errors_note"] = (f"{len(new_err)} sample(s) errored in the candidate that the baseline answered "
                                   f"(e.g. {new_err[0]}: {str(example)[:120]}); counted as failures above")
    err_rate = len(c_err) / len(shared)
    if max_error_rate is not None and err_rate > max_error_rate:
        reasons.append(f"candidate error rate {err_rate:.1%} exceeds --max-error-rate {max_error_rate:.1%}")
    routing = None
    if routing_target is not None:
        meets = (lambda q: q["ci_low"] is not None and q["ci_low"] >= routing_target) if hib else \
            (lambda q: q["ci_high"] is not None and q["ci_high"] <= routing_target)
        routing = {"target": routing_target, "baseline_meets": meets(q_b), "candidate_meets": meets(q_c)}
        routing["regression"] = routing["baseline_meets"] and not routing["candidate_meets"]
        if routing["regression"]:
            bound = q_c["ci_low"] if hib else q_c["ci_high"]
            reasons.append(f"no longer meets the routing target {routing_target:g}: {metric} "
                           f"{'lower' if hib else 'upper'} bound {num(bound)} (the baseline met it)")
    answered = np.flatnonzero(~(b_failed | c_failed)).tolist()
    speed = compare_speed(b.cell, c.cell, [b_rows[i] for i in answered], [c_rows[i] for i in answered],
                          list(b.rows.values()), list(c.rows.values()), factor=factor)
    regression = bool(reasons)
    inconclusive = not regression and gate["verdict"] == INCONCLUSIVE
    verdict = REGRESSION if regression else INCONCLUSIVE if inconclusive else (WORSE_SPEED if speed["worse"] else OK)
    return {
        "baseline": _side(b), "candidate": _side(c), "paired_by": how,
        "samples": {"baseline": len(b.rows), "candidate": len(c.rows), "shared": len(shared),
                    "compared": len(compared)},
        "errors": {"baseline": len(b_err), "candidate": len(c_err), "new": len(new_err),
                   "new_sample_ids": new_err[:20]},
        "error_rate": {"baseline": len(b_err) / len(shared), "candidate": err_rate},
        "quality": {"metric": metric, "higher_is_better": hib, "tolerance": tolerance,
                    "baseline": _q(q_b), "candidate": _q(q_c),
                    "delta": delta, "ci_low": lo, "ci_high": hi, "n": gate["n"], "gate": gate["verdict"],
                    "exact_p": gate["exact_p"], "samples_to_decide": gate["samples_to_decide"],
                    "message": gate["message"], "new_errors": gate.get("new_errors_note")},
        "routing": routing, "speed": speed,
        "regression": regression, "speed_worse": bool(speed["worse"]), "verdict": verdict, "reasons": reasons,
        "failed": regression or (strict and inconclusive) or (gate_speed and bool(speed["worse"])),
    }


def _q(q: dict[str, Any]) -> dict[str, Any]:
    return {k: (finite(v) if k in ("mean", "ci_low", "ci_high") else v) for k, v in q.items()}


def _side(c: CellData) -> dict[str, Any]:
    return {"cell": c.cell, "cell_id": c.cell_id, "label": cell_label(c.cell), "short": c.short, "run_id": c.run_id}


# ---------------------------------------------------------------- the whole comparison

def compare(baseline: str | Path, candidate: str | Path, *, routing: RoutingDoc | None = None,
            routing_path: str | None = None, gate_speed: bool = False,
            factor: float = DEFAULT_FACTOR, strict: bool = False,
            max_error_rate: float | None = None, hardware: tuple[str, str] | None = None) -> dict[str, Any]:
    """Compare every task both sides ran. Raises UserInputError on bad input; the result's `exit_code` is 0 or 1.

    `hardware` (A, B) keeps the baseline's cells on profile A and the candidate's on profile B: with one run on both
    sides, that sets two hardware profiles of one (distributed) run side by side."""
    base = load_side(baseline)
    cand = load_side(candidate)
    if hardware:
        base = _on_hardware(base, hardware[0], "baseline")
        cand = _on_hardware(cand, hardware[1], "candidate")
    names = sorted(set(base) & set(cand))
    if not names:
        raise UserInputError(f"no task in common: the baseline has {', '.join(sorted(base))}; "
                             f"the candidate has {', '.join(sorted(cand))}", file=str(candidate))
    routing_tasks = routing.tasks if routing is not None else {}
    notes: list[str] = []
    opts = {"strict": strict, "max_error_rate": max_error_rate}
    tasks = [_compare_task(base[n], cand[n], routing_tasks, gate_speed, factor, notes, opts) for n in names]
    for n in sorted(set(base) - set(cand)):
        notes.append(f"{n}: only in the baseline; not compared")
    for n in sorted(set(cand) - set(base)):
        notes.append(f"{n}: only in the candidate; not compared")
    for n in sorted(set(routing_tasks) - set(names)):
        notes.append(f"{n}: in the routing file but not compared")
    regressions = [f"{t['task']}: {p['baseline']['short']} -> {p['candidate']['short']}: {r}"
                   for t in tasks for p in t["pairs"] if p["verdict"] == REGRESSION for r in p["reasons"]]
    slower = [f"{t['task']}: {p['baseline']['short']} -> {p['candidate']['short']}: worse "
              + ", ".join(p["speed"]["worse_details"]) for t in tasks for p in t["pairs"] if p["speed_worse"]]
    failed = any(p["failed"] for t in tasks for p in t["pairs"])
    return {
        "schema_version": SCHEMA_VERSION,
        "baseline": {"path": str(baseline), "runs": {n: base[n].runs for n in sorted(base)}},
        "candidate": {"path": str(candidate), "runs": {n: cand[n].runs for n in sorted(cand)}},
        "settings": {"gate_speed": gate_speed, "speed_factor": factor, "memory_factor": factor,
                     "routing": routing_path, "confidence": 0.95, "strict": strict,
                     "max_error_rate": max_error_rate},
        "tasks": tasks,
        "regression": any(t["verdict"] == REGRESSION for t in tasks),
        "inconclusive": [f"{t['task']}: {p['baseline']['short']} -> {p['candidate']['short']}: "
                         f"{p['quality']['message']}" for t in tasks for p in t["pairs"]
                         if p["verdict"] == INCONCLUSIVE],
        "failed": failed,
        "regressions": regressions,
        "speed_worse": slower,
        "notes": notes,
        "exit_code": 1 if failed else 0,
    }


def _on_hardware(side: dict[str, TaskData], hw: str, which: str) -> dict[str, TaskData]:
    """The side's tasks with only the cells that ran on hardware profile `hw`."""
    out = {}
    present = sorted({str(c.cell.get("hardware")) for t in side.values() for c in t.cells})
    for name, t in side.items():
        cells = [c for c in t.cells if c.cell.get("hardware") == hw]
        if cells:
            out[name] = TaskData(name=t.name, suite=t.suite, runs=t.runs, cells=cells, identities=t.identities)
    if not out:
        raise UserInputError(f"the {which} has no cell on hardware {hw!r}; present: {', '.join(present)}",
                             field="--hardware")
    return out


def _compare_task(b: TaskData, c: TaskData, routing_tasks: dict[str, Any], gate_speed: bool, factor: float,
                  notes: list[str], opts: dict[str, Any]) -> dict[str, Any]:
    name = b.name
    m_b, m_c = b.suite.get("metric"), c.suite.get("metric")
    if m_b != m_c:
        raise UserInputError(f"task {name!r}: the baseline scores {m_b}, the candidate {m_c}; "
                             "their quality is not comparable", field="suite.metric")
    if not b.cells or not c.cells:
        side = "baseline" if not b.cells else "candidate"
        raise UserInputError(f"task {name!r}: the {side} has no sample rows", field="samples.jsonl")
    if b.identities and c.identities and b.identities != c.identities:
        notes.append(f"{name}: data, split or prompt differ between the sides (identity "
                     f"{', '.join(sorted(b.identities))} vs {', '.join(sorted(c.identities))}); "
                     "samples are matched by id")
    tol = b.suite.get("tolerance")
    tol = DEFAULT_TOLERANCE if tol is None else float(tol)
    if c.suite.get("tolerance") not in (None, tol):
        notes.append(f"{name}: the candidate's suite sets tolerance {c.suite.get('tolerance')}; "
                     f"the baseline's {tol:g} is used")
    hib = _higher_is_better(b.suite.get("task"))
    policy = routing_tasks.get(name)
    target = policy.target if policy else None
    pairs_, left_b, left_c = pair_cells(b.cells, c.cells)
    pairs = [compare_pair(b, pb, pc, how, tol, hib, target, gate_speed, factor, **opts) for pb, pc, how in pairs_]
    for p in pairs:
        if p["quality"].get("new_errors"):
            notes.append(f"{name}: {p['candidate']['short']}: {p['quality']['new_errors']}")
    for p in pairs:
        n = p["samples"]
        if n["shared"] < n["baseline"]:
            notes.append(f"{name}: {p['candidate']['short']} has {n['shared']} of the baseline's {n['baseline']} "
                         f"samples; compared on those")
    for cell in left_b:
        notes.append(f"{name}: {cell_label(cell.cell)} is only in the baseline; not compared")
    for cell in left_c:
        notes.append(f"{name}: {cell_label(cell.cell)} is only in the candidate; not compared")
    verdicts = {p["verdict"] for p in pairs}
    verdict = (REGRESSION if REGRESSION in verdicts else INCONCLUSIVE if INCONCLUSIVE in verdicts
               else WORSE_SPEED if WORSE_SPEED in verdicts else OK)
    return {"task": name, "kind": b.suite.get("task"), "metric": m_b, "tolerance": tol,
            "target": b.suite.get("target"), "routing_target": target, "failed": any(p["failed"] for p in pairs),
            "identity": sorted(b.identities | c.identities), "pairs": pairs,
            "not_compared": {"baseline": [x.cell_id for x in left_b], "candidate": [x.cell_id for x in left_c]},
            "verdict": verdict}
