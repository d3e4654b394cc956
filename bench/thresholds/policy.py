"""Cascade policies: replay a chain of tiers on stored samples, and search chains and thresholds for the cheapest."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from bench.stats import bootstrap_mean, mean_ci, percentile
from bench.thresholds.calibrate import Calibrated, Split

MAX_CHAIN = 4          # tiers in one chain
MAX_CHAINS = 256       # chains searched per task
MAX_CANDIDATES = 32    # thresholds tried per tier (evenly spaced quantiles of its confidences beyond that)
GRID_CAP = 20_000      # threshold combinations tried exhaustively per chain; coordinate descent beyond it
VERIFIED_ONLY = -math.inf  # the "threshold" that accepts every verified answer, with or without a confidence


@dataclass(frozen=True)
class Policy:
    """Tiers to try in order (indices into Calibrated.tiers) and the threshold of each but the last."""

    chain: tuple[int, ...]
    thresholds: tuple[float, ...]


@dataclass
class Replay:
    stop: np.ndarray       # position in the chain where each sample was accepted
    value: np.ndarray
    cost: np.ndarray       # objective units, every tier passed through
    latency: np.ndarray    # seconds, every tier passed through, one after another

    @property
    def mean(self) -> float:
        v = self.value[~np.isnan(self.value)]
        return float(v.mean()) if v.size else math.nan


@dataclass
class Choice:
    policy: Policy | None
    status: str            # "meets_target", "target_unreachable" or "no_eligible_tier"
    chains_searched: int
    evaluations: int
    methods: list[str]


def floor_sig(x: float, digits: int = 6) -> float:
    """x rounded down to `digits` significant digits, so a stored threshold still accepts the value it came from."""
    if x == 0 or not math.isfinite(x):
        return x
    s = float(f"{x:.{digits}g}")
    if s > x:
        unit = 10.0 ** (math.floor(math.log10(abs(x))) - digits + 1)
        s = float(f"{s - unit:.{digits}g}")
    return s


def accept_mask(split: Split, tier: int, threshold: float) -> np.ndarray:
    """Verified and confident enough; a missing confidence passes only the verified-only rule."""
    if threshold == VERIFIED_ONLY:
        return split.verified[tier]
    with np.errstate(invalid="ignore"):
        return split.verified[tier] & (split.conf[tier] >= threshold)


def replay(split: Split, policy: Policy) -> Replay:
    """Follow the policy on every sample: each tier accepts or escalates; the last tier always answers."""
    chain = list(policy.chain)
    k, n = len(chain), split.n
    stop = np.full(n, k - 1)
    for pos in range(k - 2, -1, -1):
        stop = np.where(accept_mask(split, chain[pos], policy.thresholds[pos]), pos, stop)
    if not n:
        return Replay(stop=stop, value=np.zeros(0), cost=np.zeros(0), latency=np.zeros(0))
    cols = np.arange(n)
    rows = np.asarray(chain)[stop]
    cum_cost, cum_latency = split.cumulative(tuple(chain))
    return Replay(stop=stop, value=split.value[rows, cols], cost=cum_cost[stop, cols],
                  latency=cum_latency[stop, cols])


def candidates(split: Split, tier: int) -> list[float]:
    """Thresholds worth trying at a tier: its distinct confidences on verified samples, plus verified-only."""
    conf = split.conf[tier][split.verified[tier]]
    vals = sorted({floor_sig(float(c)) for c in conf if math.isfinite(c)})
    if len(vals) > MAX_CANDIDATES:
        picks = np.unique(np.round(np.linspace(0, len(vals) - 1, MAX_CANDIDATES)).astype(int))
        vals = [vals[i] for i in picks]
    if not split.verified[tier].any():
        return []
    if not vals or not np.array_equal(accept_mask(split, tier, VERIFIED_ONLY), accept_mask(split, tier, vals[0])):
        vals = [VERIFIED_ONLY] + vals
    return vals


def chains(cal: Calibrated) -> list[tuple[int, ...]]:
    """Ordered subsets of eligible tiers, cheapest first, each ending in the tier that always answers."""
    elig = cal.eligible_indices()
    out = []
    for last in elig:
        cheaper = [i for i in elig if i < last]
        for r in range(min(len(cheaper), MAX_CHAIN - 1) + 1):
            out.extend(c + (last,) for c in itertools.combinations(cheaper, r))
    out.sort(key=lambda c: (len(c), c))
    return out[:MAX_CHAINS]


class Search:
    """The constraint (lower 95% bound >= target, cascade p95 latency within budget) and the objective."""

    def __init__(self, cal: Calibrated):
        self.cal = cal
        self.split = cal.cal
        self.target = cal.task.target
        self.budget = cal.task.latency_budget_s
        self.evaluations = 0
        self._feasible: dict[Policy, bool] = {}

    def feasible(self, p: Policy, r: Replay | None = None) -> bool:
        if p not in self._feasible:
            r = r or replay(self.split, p)
            lo = mean_ci(list(r.value))["ci_low"]
            ok = lo is not None and lo >= self.target
            if ok and self.budget is not None and r.latency.size:
                ok = float(np.percentile(r.latency, 95)) <= self.budget
            self._feasible[p] = ok
        return self._feasible[p]

    def key(self, p: Policy, r: Replay) -> tuple:
        """Cheapest, then best quality, then fewer tiers, then stricter thresholds: a total, stable order."""
        return (float(f"{float(r.cost.mean()):.9g}"), -round(r.mean, 9), len(p.chain), p.chain,
                tuple(-t for t in p.thresholds))

    def best(self, policies: list[Policy]) -> tuple[tuple, Policy] | None:
        """The first feasible policy in objective order; the interval is only computed for those that could pass."""
        scored = []
        for p in policies:
            r = replay(self.split, p)
            self.evaluations += 1
            if r.mean >= self.target:  # the lower bound never exceeds the mean
                scored.append((self.key(p, r), p, r))
        scored.sort(key=lambda x: x[0])
        for key, p, r in scored:
            if self.feasible(p, r):
                return key, p
        return None

    def chain(self, chain: tuple[int, ...]) -> tuple[tuple, Policy, str] | None:
        options = [candidates(self.split, t) for t in chain[:-1]]
        if any(not o for o in options):
            return None
        size = math.prod(len(o) for o in options)
        if size <= GRID_CAP:
            found = self.best([Policy(chain, th) for th in itertools.product(*options)])
            return (found[0], found[1], "grid") if found else None
        current = Policy(chain, tuple(o[-1] for o in options))  # strictest: escalate almost everything
        if not self.feasible(current):
            return None
        for _ in range(10):
            before = current
            for pos, opts in enumerate(options):
                trial = [Policy(chain, current.thresholds[:pos] + (t,) + current.thresholds[pos + 1:]) for t in opts]
                found = self.best(trial)
                if found:
                    current = found[1]
            if current == before:
                break
        r = replay(self.split, current)
        return self.key(current, r), current, "coordinate-descent"


def search(cal: Calibrated) -> Choice:
    """The cheapest policy whose calibration replay meets the target; else the strongest tier alone."""
    s = Search(cal)
    found: list[tuple[tuple, Policy, str]] = []
    all_chains = chains(cal)
    for c in all_chains:
        got = s.chain(c)
        if got:
            found.append(got)
    methods = sorted({m for _, _, m in found})
    if found:
        _, policy, _ = min(found, key=lambda x: x[0])
        return Choice(policy, "meets_target", len(all_chains), s.evaluations, methods)
    strongest = cal.strongest()
    if strongest is None:
        return Choice(None, "no_eligible_tier", 0, 0, [])
    return Choice(Policy((strongest,), ()), "target_unreachable", len(all_chains), s.evaluations, methods)


def summarize(cal: Calibrated, split: Split, policy: Policy) -> dict[str, Any]:
    """Quality with its interval, cost, latency and escalation of following the policy on one split."""
    r = replay(split, policy)
    chain = list(policy.chain)
    out: dict[str, Any] = {"n": split.n, "quality": mean_ci(list(r.value))}
    if not split.n:
        return out | {"cost_per_1k_usd": None, "cost_per_1k_usd_ci": None, "latency_mean_s": None,
                      "latency_p95_s": None, "escalation_rate": None, "answered_by": []}
    cols = np.arange(split.n)
    usd = np.cumsum(split.cost_usd[chain], axis=0)[r.stop, cols]
    if cal.basis == "usd":
        usd = r.cost  # missing per-sample costs already filled with their tier's mean
    priced = not np.isnan(usd).any()
    ci = bootstrap_mean(list(usd * 1000)) if priced else None
    out.update({
        "cost_per_1k_usd": float(usd.mean() * 1000) if priced else None,
        "cost_per_1k_usd_ci": [ci[0], ci[1]] if ci else None,
        "latency_mean_s": float(r.latency.mean()),
        "latency_p95_s": percentile(list(r.latency), 95),
        "escalation_rate": float((r.stop > 0).mean()),
        "answered_by": [{"cell": cal.tiers[t].tier.cell_id, "share": float((r.stop == pos).mean())}
                        for pos, t in enumerate(chain)],
    })
    return out
