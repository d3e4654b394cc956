"""Per-tier numbers on shared samples, the cost order of tiers, and which tiers a policy may use (and why not)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from itertools import compress, repeat
from operator import eq, is_not
from typing import Any

import numpy as np

from bench.fmt import real
from bench.results.columns import Window, column
from bench.stats import mean_ci, percentile, samples_to_decide
from bench.thresholds.gather import Point, TaskData, Tier

ON_PREMISES = ("local", "on-prem")
CONTENDED_SHARE = 0.1  # past this share of contended measurements, the seconds they give are suspect


@dataclass
class Split:
    """One split's shared samples as tier x sample arrays, tiers in cost order."""

    ids: list[str]
    value: np.ndarray      # the metric; 0 where the request errored, NaN where it could not be scored
    verified: np.ndarray   # bool
    conf: np.ndarray       # NaN where the tier gave no confidence
    cost: np.ndarray       # the objective's unit per request (USD or seconds), a missing one is the tier's mean
    cost_usd: np.ndarray   # USD per request, NaN where unknown
    latency: np.ndarray    # seconds per request, a missing one is the tier's mean
    _cumulative: dict = field(default_factory=dict, repr=False, compare=False)
    prob: dict = field(default_factory=dict)      # (family, tier) -> pre-router probability per sample
    overhead: dict = field(default_factory=dict)  # family -> the pre-router's own seconds per sample
    overhead_usd: dict = field(default_factory=dict)  # family -> those seconds priced, USD per sample

    @property
    def n(self) -> int:
        return len(self.ids)

    def cumulative(self, chain: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        """Cost and latency summed along a chain (row i: every tier up to position i), computed once per chain."""
        if chain not in self._cumulative:
            idx = list(chain)
            self._cumulative[chain] = (np.cumsum(self.cost[idx], axis=0), np.cumsum(self.latency[idx], axis=0))
        return self._cumulative[chain]

    def cumulative_usd(self, chain: tuple[int, ...]) -> np.ndarray:
        """Dollars summed along a chain, as `cumulative`: computed once per chain."""
        key = ("usd", *chain)
        if key not in self._cumulative:
            self._cumulative[key] = np.cumsum(self.cost_usd[list(chain)], axis=0)
        return self._cumulative[key]


@dataclass
class TierStats:
    tier: Tier
    quality: dict[str, Any]
    quality_holdout: dict[str, Any]
    cost_per_1k_usd: float | None
    latency_mean_s: float | None
    latency_p95_s: float | None
    meets_target: bool
    samples_needed: int | None      # about how many calibration samples would decide meets_target
    confidence_available: bool
    errors: int
    excluded_because: list[str] = field(default_factory=list)
    contended: bool | None = None   # other processes took CPU while it ran: its latency and cost are suspect

    @property
    def eligible(self) -> bool:
        return not self.excluded_because


@dataclass
class Calibrated:
    """A task ready for the policy search: ordered tiers, eligibility, and both splits."""

    task: TaskData
    tiers: list[TierStats]          # cheapest first
    basis: str                      # "usd" or "latency_s": what "cost" means in the search
    cal: Split
    hold: Split
    notes: list[str]

    def eligible_indices(self) -> list[int]:
        return [i for i, t in enumerate(self.tiers) if t.eligible]

    def strongest(self, on_holdout: bool = False) -> int | None:
        """The eligible tier with the best calibration quality (the cheaper one on a tie); on_holdout: the best
        holdout quality, for a policy whose calibration figures its holdout contradicted."""
        idx = self.eligible_indices()
        if not idx:
            return None
        if on_holdout and all(self.tiers[i].quality_holdout["mean"] is not None for i in idx):
            return max(idx, key=lambda i: (self.tiers[i].quality_holdout["mean"], -i))
        return max(idx, key=lambda i: (self.tiers[i].quality["mean"], -i))

    def cheapest(self) -> int | None:
        idx = self.eligible_indices()
        return idx[0] if idx else None


def _num(v: Any) -> float:
    n = real(v)
    return math.nan if n is None else n


_NUMERIC = {float, int, type(None)}  # what np.array(..., dtype=float) converts as float() does (None: NaN)


def _floats(vals: list[Any], allow_bool: bool = False) -> np.ndarray:
    """`_num` of every value as one array: numbers as floats, anything else (bool unless allowed, strings, NaN,
    infinities) NaN. Plain numbers and None, the usual case, convert in one numpy call."""
    types = set(map(type, vals))
    if types <= (_NUMERIC | {bool} if allow_bool else _NUMERIC):
        try:
            a = np.array(vals, dtype=float)
        except OverflowError:  # an integer too large for a float: the slow path says NaN for it
            pass
        else:
            a[~np.isfinite(a)] = np.nan
            return a
    if allow_bool:
        return np.array([float(v) if isinstance(v, (int, float)) and math.isfinite(v) else math.nan
                         for v in vals], dtype=float)
    return np.array([_num(v) for v in vals], dtype=float)


@dataclass
class _Columns:
    """One tier's rows on a list of sample ids, as arrays (built once per tier; the splits index them)."""

    value: np.ndarray       # _value of each row
    error: np.ndarray       # bool
    verified: np.ndarray    # bool: verified and no error
    conf: np.ndarray        # _num(confidence)
    has_conf: np.ndarray    # bool: a confidence was given at all (not None)
    cost_usd: np.ndarray    # _num(cost_usd)
    latency: np.ndarray     # _num(latency_s)
    contended: np.ndarray   # per row: 1 where its contention window says contended, 0 where not, NaN: no window
    mean_cost: float        # the tier's mean over all its answered rows (shared or not), NaN when none
    mean_latency: float


def _fields(rows: Iterable[Any], keys: tuple[str, ...]) -> list[list[Any]]:
    """Each key's value in every row (None where a row lacks it), one list per key (bench.results.columns.column:
    dict rows and SampleFields alike, read by C-level passes that make no tuples)."""
    rows = list(rows)
    return [column(rows, k) for k in keys]


_KEYS = ("error", "score", "verified", "confidence", "cost_usd", "latency_s", "contention")


def _columns(t: Tier, ids: list[str]) -> _Columns:
    error_, score, verified, raw_conf, cost, latency, contention = _fields(map(t.rows.__getitem__, ids), _KEYS)
    error = np.array(list(map(bool, error_)), dtype=bool)
    value = _floats(score, allow_bool=True)
    value[error] = 0.0  # a router must answer every request: a failed one counts as wrong
    cost_f, latency_f = _floats(cost), _floats(latency)
    # the tier's rows are the shared samples in the same order (the usual case): its means read the same columns
    mine = (error, cost_f, latency_f) if len(t.rows) == len(ids) and list(t.rows) == ids else None
    return _Columns(value=value, error=error, verified=np.array(list(map(bool, verified)), dtype=bool) & ~error,
                    conf=_floats(raw_conf), has_conf=np.array(list(map(is_not, raw_conf, repeat(None))), dtype=bool),
                    cost_usd=cost_f, latency=latency_f, contended=_windows(contention), **_tier_means(t, mine))


def _tier_means(t: Tier, columns: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> dict[str, float]:
    """Mean cost and latency over every answered row of the tier (shared or not), each summed in row order as a
    Python sum; NaN where there is none. `columns`: the rows' error flags, _floats of cost_usd and of latency_s,
    in row order, where the caller has them already."""
    if columns is None:
        error, cost, latency = _fields(t.rows.values(), ("error", "cost_usd", "latency_s"))
        columns = (np.array(list(map(bool, error)), dtype=bool), _floats(cost), _floats(latency))
    answered = ~columns[0]
    out = {}
    for name, col in (("mean_cost", columns[1]), ("mean_latency", columns[2])):
        vals = col[answered]
        kept = vals[~np.isnan(vals)].tolist()
        out[name] = sum(kept) / len(kept) if kept else math.nan
    return out


def _at_point(c: _Columns, t: Tier) -> _Columns:
    """A tier's main-pass columns priced and timed at its operating point (Tier.priced_at)."""
    cost, latency = t.priced_at.cost_factor, t.priced_at.latency_factor
    if cost == 1.0 and latency == 1.0:
        return c
    return replace(c, cost_usd=c.cost_usd * cost, latency=c.latency * latency, mean_cost=c.mean_cost * cost,
                   mean_latency=c.mean_latency * latency)


def _within_budget(task: TaskData, t: Tier, c: _Columns, cal: np.ndarray) -> Tier:
    """The tier at an operating point whose per-request latency meets the task's p95 budget, where its default one
    (its summary's operating point, else its main pass) does not: with `bench run --parallel 8` the main pass's
    latencies are 8-way loaded ones, and an idle engine may meet a budget they miss. The budget is checked as for
    any tier, on the calibration p95 at that point (the main pass's latencies scaled by the level's
    `latency_vs_main`); a level (bench/sweep.py) must also be shown within it by the sweep's own test, a 95% upper
    bound on its measured p95 in fixed sequence from the lowest level. Of the points that pass, the cheapest (the
    higher concurrency on a tie). Where none does, the default stays and the exclusion says why. A budget given by
    --max-p95-latency was not the one the summary chose its operating point under: then every point is weighed, the
    default among them where it meets the budget, so a looser budget can move a tier to a cheaper, busier level."""
    from bench.sweep import LATENCY_CONFIDENCE, within_budget

    budget = task.latency_budget_s
    if budget is None or not t.points:
        return t
    answered = c.latency[cal][~c.error[cal]]
    p95 = percentile(answered[~np.isnan(answered)], 95)
    if p95 is None:
        return t
    # the summary chose its operating point under the suite's budget: kept where it meets that budget, so thresholds
    # agrees with it; a budget given on the command line is one it was not chosen under, so every point is weighed
    default_ok = p95 * t.priced_at.latency_factor <= budget
    if default_ok and task.latency_source != "--max-p95-latency":
        return t
    passed, stop = within_budget(t.levels, budget)
    shown = {lv.get("level") for lv in passed}
    main = Point(level=t.main_concurrency)
    fits = [pt for pt in [main, *t.points] if p95 * pt.latency_factor <= budget
            and (pt is main or pt.level in shown)]
    if default_ok:
        fits.append(t.priced_at)
    if not fits:
        others = ", ".join(f"{pt.level} in flight, calibration p95 {p95 * pt.latency_factor:.3g} s"
                           for pt in t.points)
        return replace(t, budget_note=f"nor at the other concurrencies timed ({others}"
                                      f"{f'; the sweep stopped at {stop}' if stop else ''})")
    best = min(fits, key=lambda pt: (pt.cost_factor, -pt.level))
    if best.level == t.priced_at.level:
        return t
    if default_ok:
        why = (f"concurrency {best.level}: the cheapest concurrency timed whose per-request latency meets the "
               f"{budget:g} s budget given by --max-p95-latency (calibration p95 {p95 * best.latency_factor:.3g} s"
               + (f", and the sweep's {LATENCY_CONFIDENCE:.0%} test passes there" if best is not main else "")
               + f"; latencies x{best.latency_factor:.3g} and cost x{best.cost_factor:.3g} of the main pass's); the "
               f"summary's operating point, {t.priced_at.level} in flight, was chosen without this budget"
               + ("; that timing pass ran while other processes took CPU (contended): its figures are suspect"
                  if best.contended else ""))
    elif best is main:
        why = (f"the main pass, {best.level} request(s) in flight: its calibration p95 latency {p95:.3g} s is within "
               f"the {budget:g} s budget (from {task.latency_source}), where the summary's operating point's is not")
    else:
        why = (f"concurrency {best.level}: the main pass's per-request latencies "
               f"({t.main_concurrency} in flight) give a calibration p95 of {p95 * t.priced_at.latency_factor:.3g} s, over the "
               f"{budget:g} s budget (from {task.latency_source}); at {best.level} in flight the level's p95 is within "
               f"it at {LATENCY_CONFIDENCE:.0%} confidence and the calibration p95 is {p95 * best.latency_factor:.3g} s "
               f"(latencies x{best.latency_factor:.3g}, the level's over the main pass's on the same samples; cost "
               f"x{best.cost_factor:.3g}, its cost per 1k over the main pass's)"
               + ("; that timing pass ran while other processes took CPU (contended): its figures are suspect"
                  if best.contended else ""))
    return replace(t, point=best, cost_basis=why)


def _split(cols: list[_Columns], idx: np.ndarray, ids: list[str], basis: str) -> Split:
    k, n = len(cols), len(ids)

    def stack(name: str, dtype: Any = float) -> np.ndarray:
        return np.stack([getattr(c, name)[idx] for c in cols]) if k else np.zeros((0, n), dtype=dtype)

    value, verified, conf, cost_usd = stack("value"), stack("verified", bool), stack("conf"), stack("cost_usd")
    latency, cost_fill = stack("latency"), cost_usd.copy()
    for i, c in enumerate(cols):
        latency[i][np.isnan(latency[i])] = c.mean_latency if not math.isnan(c.mean_latency) else 0.0
        cost_fill[i][np.isnan(cost_fill[i])] = c.mean_cost if not math.isnan(c.mean_cost) else 0.0
    cost = cost_fill if basis == "usd" else latency
    return Split(ids=ids, value=value, verified=verified, conf=conf, cost=cost, cost_usd=cost_usd, latency=latency)


def _stats(task: TaskData, t: Tier, c: _Columns, cal: np.ndarray, hold: np.ndarray) -> TierStats:
    values = c.value[cal]
    ok = cal[~c.error[cal]]
    quality = mean_ci(values)
    costs = c.cost_usd[ok]
    costs_l = costs[~np.isnan(costs)].tolist()
    lats = c.latency[ok]
    lats = lats[~np.isnan(lats)]
    lats_l = lats.tolist()
    lo = quality["ci_low"]
    enough = quality["n"] >= task.min_samples
    decided = enough and lo is not None and lo >= task.target
    needed = None if decided else samples_to_decide(values, task.target)
    if needed is not None:
        needed = max(needed, task.min_samples)
    return TierStats(
        tier=t, quality=quality, quality_holdout=mean_ci(c.value[hold]),
        cost_per_1k_usd=sum(costs_l) / len(costs_l) * 1000 if costs_l else None,
        latency_mean_s=sum(lats_l) / len(lats_l) if lats_l else None, latency_p95_s=percentile(lats, 95),
        meets_target=decided, samples_needed=needed,
        contended=True if t.priced_at.contended else _contended(c.contended[ok]),
        confidence_available=bool(c.has_conf[ok].any()),
        errors=int(c.error[cal].sum()))


def _windows(contention: list[Any]) -> np.ndarray:
    """Each row's contention window as 1 (contended), 0 (measured, not contended) or NaN (no window)."""
    types = set(map(type, contention))
    if types <= {Window, type(None)}:  # the slim reader's rows: one attribute read per window
        return np.array([math.nan if w is None else float(bool(w.contended)) for w in contention], dtype=float)
    return np.array([float(bool(w.get("contended"))) if isinstance(w, (dict, Window)) else math.nan
                     for w in contention], dtype=float)


def _contended(flags: np.ndarray) -> bool | None:
    """Whether other processes took CPU in more than a tenth of the answered samples' windows (None: unmeasured)."""
    measured = flags[~np.isnan(flags)]
    return bool(measured.sum() / measured.size > CONTENDED_SHARE) if measured.size else None


def _exclusions(task: TaskData, s: TierStats) -> list[str]:
    why = []
    if task.sensitive and s.tier.locality not in ON_PREMISES:
        why.append(f"the suite is sensitive: its data may only go to local or on-prem tiers, and this tier "
                   f"is {s.tier.locality}")
    if task.latency_budget_s is not None:
        if s.latency_p95_s is None:
            why.append(f"no latency measured, so the {task.latency_budget_s:g} s p95 budget "
                       f"(from {task.latency_source}) cannot be checked")
        elif s.latency_p95_s > task.latency_budget_s:
            why.append(f"p95 latency {s.latency_p95_s:.4g} s exceeds the {task.latency_budget_s:g} s budget "
                       f"(from {task.latency_source})" + (f", {s.tier.budget_note}" if s.tier.budget_note else ""))
    if s.quality["n"] == 0:
        why.append("no scored calibration samples")
    return why


def calibrate(task: TaskData) -> Calibrated:
    """Tier statistics on the samples every tier ran, ordered cheapest first, with eligibility decided."""
    notes = list(task.notes)
    first = task.tiers[0].rows if task.tiers else {}
    if all(t.rows.keys() == first.keys() for t in task.tiers[1:]):  # every tier ran the same samples (the usual)
        common: Any = first.keys()
    else:
        common = set(first).intersection(*(t.rows for t in task.tiers[1:]))
    ids = sorted(common)
    if any(len(t.rows) > len(common) for t in task.tiers):
        union = set().union(*(t.rows for t in task.tiers))
        notes.append(f"{len(union) - len(ids)} sample(s) did not run on every tier and were left out")
    splits = column([first[sid] for sid in ids], "split")
    is_cal = np.fromiter(map(eq, splits, repeat("calibration")), dtype=bool, count=len(ids))
    is_hold = np.fromiter(map(eq, splits, repeat("holdout")), dtype=bool, count=len(ids))
    cal_ids, hold_ids = list(compress(ids, is_cal.tolist())), list(compress(ids, is_hold.tolist()))
    cal_idx, hold_idx = np.flatnonzero(is_cal).astype(np.intp), np.flatnonzero(is_hold).astype(np.intp)
    raw = [(t, _columns(t, ids)) for t in task.tiers]
    tiers = [_within_budget(task, t, c, cal_idx) for t, c in raw]
    columns = {id(t): _at_point(c, t) for t, (_, c) in zip(tiers, raw)}
    stats = [_stats(task, t, columns[id(t)], cal_idx, hold_idx) for t in tiers]
    for s in stats:
        s.excluded_because = _exclusions(task, s)
    pool = [s for s in stats if s.eligible] or stats
    basis = "usd" if pool and all(s.cost_per_1k_usd is not None for s in pool) else "latency_s"
    if not stats:
        notes.append("the runs hold no samples: nothing to calibrate")
    elif basis == "latency_s":
        unpriced = sorted(s.tier.cell_id for s in pool if s.cost_per_1k_usd is None)
        notes.append("cost per request is unknown for " + (", ".join(unpriced) if len(unpriced) < len(pool)
                     else "every tier") + ": tiers are ordered, and the policy chosen, by mean latency instead "
                     "(give the hardware a profile with cost_per_hour_usd, or the endpoint a price)")

    def key(s: TierStats) -> tuple:
        lat = s.latency_mean_s if s.latency_mean_s is not None else math.inf
        if basis == "usd":
            c = s.cost_per_1k_usd
            return (c is None, c if c is not None else 0.0, lat, s.tier.cell_id)
        return (lat, s.tier.cell_id)

    stats.sort(key=key)
    ordered = [s.tier for s in stats]
    cols = [columns[id(t)] for t in ordered]
    return Calibrated(task=task, tiers=stats, basis=basis, cal=_split(cols, cal_idx, cal_ids, basis),
                      hold=_split(cols, hold_idx, hold_ids, basis), notes=notes)
