"""Per-tier numbers on shared samples, the cost order of tiers, and which tiers a policy may use (and why not)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bench.stats import mean_ci, percentile, samples_to_decide
from bench.thresholds.gather import TaskData, Tier

ON_PREMISES = ("local", "on-prem")


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


def _value(row: dict[str, Any]) -> float:
    if row.get("error"):
        return 0.0  # a router must answer every request: a failed one counts as wrong
    s = row.get("score")
    return float(s) if isinstance(s, (int, float)) and math.isfinite(s) else math.nan


def _num(v: Any) -> float:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else math.nan


def _tier_mean(rows: list[dict[str, Any]], key: str) -> float:
    vals = [_num(r.get(key)) for r in rows if not r.get("error")]
    vals = [v for v in vals if not math.isnan(v)]
    return sum(vals) / len(vals) if vals else math.nan


def _split(tiers: list[Tier], ids: list[str], basis: str) -> Split:
    k, n = len(tiers), len(ids)
    value = np.full((k, n), np.nan)
    verified = np.zeros((k, n), dtype=bool)
    conf = np.full((k, n), np.nan)
    cost_usd = np.full((k, n), np.nan)
    latency = np.zeros((k, n))
    cost_fill = np.zeros((k, n))
    for i, t in enumerate(tiers):
        all_rows = list(t.rows.values())
        mean_cost, mean_lat = _tier_mean(all_rows, "cost_usd"), _tier_mean(all_rows, "latency_s")
        for j, sid in enumerate(ids):
            r = t.rows[sid]
            value[i, j] = _value(r)
            verified[i, j] = bool(r.get("verified")) and not r.get("error")
            conf[i, j] = _num(r.get("confidence"))
            cost_usd[i, j] = _num(r.get("cost_usd"))
            lat = _num(r.get("latency_s"))
            latency[i, j] = lat if not math.isnan(lat) else (mean_lat if not math.isnan(mean_lat) else 0.0)
            c = cost_usd[i, j]
            cost_fill[i, j] = c if not math.isnan(c) else (mean_cost if not math.isnan(mean_cost) else 0.0)
    cost = cost_fill if basis == "usd" else latency
    return Split(ids=ids, value=value, verified=verified, conf=conf, cost=cost, cost_usd=cost_usd, latency=latency)


def _stats(task: TaskData, t: Tier, cal_ids: list[str], hold_ids: list[str]) -> TierStats:
    cal_rows = [t.rows[s] for s in cal_ids]
    ok = [r for r in cal_rows if not r.get("error")]
    quality = mean_ci([_value(r) for r in cal_rows])
    costs = [_num(r.get("cost_usd")) for r in ok]
    costs = [c for c in costs if not math.isnan(c)]
    lats = [_num(r.get("latency_s")) for r in ok]
    lats = [v for v in lats if not math.isnan(v)]
    lo = quality["ci_low"]
    enough = quality["n"] >= task.min_samples
    decided = enough and lo is not None and lo >= task.target
    needed = None if decided else samples_to_decide([_value(r) for r in cal_rows], task.target)
    if needed is not None:
        needed = max(needed, task.min_samples)
    return TierStats(
        tier=t, quality=quality, quality_holdout=mean_ci([_value(t.rows[s]) for s in hold_ids]),
        cost_per_1k_usd=sum(costs) / len(costs) * 1000 if costs else None,
        latency_mean_s=sum(lats) / len(lats) if lats else None, latency_p95_s=percentile(lats, 95),
        meets_target=decided, samples_needed=needed,
        contended=_contended(ok),
        confidence_available=any(r.get("confidence") is not None for r in ok),
        errors=sum(1 for r in cal_rows if r.get("error")))


def _contended(rows: list[dict[str, Any]]) -> bool | None:
    windows = [r["contention"] for r in rows if isinstance(r.get("contention"), dict)]
    return sum(bool(w.get("contended")) for w in windows) / len(windows) > 0.1 if windows else None


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
                       f"(from {task.latency_source})")
    if s.quality["n"] == 0:
        why.append("no scored calibration samples")
    return why


def calibrate(task: TaskData) -> Calibrated:
    """Tier statistics on the samples every tier ran, ordered cheapest first, with eligibility decided."""
    notes = list(task.notes)
    ids = sorted(set.intersection(*(set(t.rows) for t in task.tiers))) if task.tiers else []
    union = set().union(*(set(t.rows) for t in task.tiers)) if task.tiers else set()
    if len(ids) < len(union):
        notes.append(f"{len(union) - len(ids)} sample(s) did not run on every tier and were left out")
    split_of = {sid: task.tiers[0].rows[sid].get("split") for sid in ids}
    cal_ids = [s for s in ids if split_of[s] == "calibration"]
    hold_ids = [s for s in ids if split_of[s] == "holdout"]
    stats = [_stats(task, t, cal_ids, hold_ids) for t in task.tiers]
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
    return Calibrated(task=task, tiers=stats, basis=basis, cal=_split(ordered, cal_ids, basis),
                      hold=_split(ordered, hold_ids, basis), notes=notes)
