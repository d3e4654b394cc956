"""Cascade policies: replay a chain of tiers on stored samples, and search chains and thresholds for the cheapest."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bench.stats import bootstrap_mean, mean_ci, percentile
from bench.thresholds.calibrate import Calibrated, Split
from bench.thresholds.guarantee import fixed_sequence, p_value_mean_below

MAX_CHAIN = 4          # tiers in one chain
MAX_CHAINS = 256       # chains searched per task
VERIFIED_ONLY = -math.inf  # the "threshold" that accepts every verified answer, with or without a confidence


@dataclass(frozen=True)
class PreRoute:
    """A pre-router in front of a chain (i, j): a request whose probability that tier i's answer is good enough
    (family `family`, fitted for tier i) reaches `threshold` takes the cheap path, any other goes straight to j.
    The cheap path is tier i alone, or the cascade i -> j when `cascade` is set."""

    family: str
    threshold: float
    cascade: bool


@dataclass(frozen=True)
class Policy:
    """Tiers to try in order (indices into Calibrated.tiers) and the threshold of each but the last; with `pre`,
    a pre-router picks the path first (see PreRoute)."""

    chain: tuple[int, ...]
    thresholds: tuple[float, ...]
    pre: PreRoute | None = None

    @property
    def kind(self) -> str:
        """The policy family it belongs to: single, cascade, prerouter or prerouter+cascade."""
        if self.pre is not None:
            return "prerouter+cascade" if self.pre.cascade else "prerouter"
        return "single" if len(self.chain) == 1 else "cascade"


@dataclass
class Replay:
    stop: np.ndarray       # position in the chain of the tier whose answer each sample kept
    value: np.ndarray
    cost: np.ndarray       # objective units, every tier passed through (and the pre-router's own time, if any)
    latency: np.ndarray    # seconds, every tier passed through, one after another
    usd: np.ndarray        # USD, every tier passed through; NaN where a tier's price is unknown
    escalated: np.ndarray  # bool: an answer was refused and a later tier asked

    @property
    def mean(self) -> float:
        v = self.value[~np.isnan(self.value)]
        return float(v.mean()) if v.size else math.nan


@dataclass
class Choice:
    policy: Policy | None
    status: str            # "meets_target", "insufficient_data" or "unreachable" (failed_holdout comes later)
    chains_searched: int
    evaluations: int
    methods: list[str]
    p_value: float | None = None   # of the chosen policy's null "quality < target"
    alpha: float | None = None     # the level each sequence was tested at (delta / sequences)
    reason: str = ""
    admissible: list = field(default_factory=list)  # (key, policy, p-value) of every admitted policy


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
    if policy.pre is not None:
        return _replay_pre(split, policy)
    chain = list(policy.chain)
    k, n = len(chain), split.n
    stop = np.full(n, k - 1)
    for pos in range(k - 2, -1, -1):
        stop = np.where(accept_mask(split, chain[pos], policy.thresholds[pos]), pos, stop)
    if not n:
        z = np.zeros(0)
        return Replay(stop=stop, value=z, cost=z, latency=z, usd=z, escalated=np.zeros(0, dtype=bool))
    cols = np.arange(n)
    rows = np.asarray(chain)[stop]
    cum_cost, cum_latency = split.cumulative(tuple(chain))
    at, at_row = stop * n + cols, rows * n + cols  # [stop, cols] and [rows, cols], as flat positions (one gather)
    return Replay(stop=stop, value=np.take(split.value, at_row), cost=np.take(cum_cost, at),
                  latency=np.take(cum_latency, at), usd=np.take(split.cumulative_usd(tuple(chain)), at),
                  escalated=stop > 0)


def _replay_pre(split: Split, policy: Policy) -> Replay:
    """A pre-routed policy: the cheap path where the probability reaches the threshold, else the last tier."""
    pre = policy.pre
    assert pre is not None, "a pre-routed policy has its pre-router"
    cheap, strong = policy.chain[0], policy.chain[-1]
    go = split.prob[(pre.family, cheap)] >= pre.threshold
    path = replay(split, Policy(policy.chain, policy.thresholds) if pre.cascade else Policy((cheap,), ()))
    direct = replay(split, Policy((strong,), ()))
    seconds = split.overhead.get(pre.family, np.zeros(split.n))
    usd = split.overhead_usd.get(pre.family, np.zeros(split.n))
    return Replay(stop=np.where(go, path.stop, len(policy.chain) - 1), value=np.where(go, path.value, direct.value),
                  cost=np.where(go, path.cost, direct.cost) + (seconds if split.cost is split.latency else usd),
                  latency=np.where(go, path.latency, direct.latency) + seconds,
                  usd=np.where(go, path.usd, direct.usd) + usd, escalated=go & path.escalated)


def chains(cal: Calibrated) -> list[tuple[int, ...]]:
    """Ordered subsets of eligible tiers, cheapest first, each ending in the tier that always answers."""
    elig = cal.eligible_indices()
    out: list[tuple[int, ...]] = []
    for last in elig:
        cheaper = [i for i in elig if i < last]
        for r in range(min(len(cheaper), MAX_CHAIN - 1) + 1):
            out.extend(c + (last,) for c in itertools.combinations(cheaper, r))
    out.sort(key=lambda c: (len(c), c))
    return out[:MAX_CHAINS]


# Thresholds tried at every non-final tier of a chain, strictest first: fixed in advance (they never look at the
# calibration data), so testing them in this order keeps fixed-sequence testing valid. Mean token log-probability
# is <= 0; 0 accepts only answers the model was certain of, VERIFIED_ONLY accepts every verified answer.
GRID = (0.0, -0.001, -0.0025, -0.005, -0.01, -0.02, -0.035, -0.05, -0.075, -0.1, -0.15, -0.2, -0.3, -0.4, -0.5,
        -0.75, -1.0, -1.5, -2.0, -3.0, -5.0, VERIFIED_ONLY)


def chain_steps(chain: tuple[int, ...]) -> list[Policy]:
    """The policies of one chain, strictest first: one shared threshold per grid step at every non-final tier."""
    if len(chain) == 1:
        return [Policy(chain, ())]
    return [Policy(chain, (t,) * (len(chain) - 1)) for t in GRID]


# Pre-router probability thresholds, strictest first (fewest requests on the cheap path), fixed in advance.
PRE_GRID = (0.99, 0.975, 0.95, 0.925, 0.9, 0.875, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0)
# Confidence thresholds of the cascade behind a pre-router (one fixed sequence each).
PRE_CASCADE = (-0.05, -0.3, VERIFIED_ONLY)


def pre_sequences(cal: Calibrated, families: list[str]) -> list[list[Policy]]:
    """Every pre-router sequence to test: per family, cheaper tier i (one fitted for it) and later tier j, the
    pre-router alone and, where tier i gives a confidence, followed by the cascade i -> j at each PRE_CASCADE."""
    elig = cal.eligible_indices()
    out = []
    for fam in families:
        for i in elig:
            if (fam, i) not in cal.cal.prob:
                continue
            for j in (j for j in elig if j > i):
                out.append([Policy((i, j), (), PreRoute(fam, t, False)) for t in PRE_GRID])
                if cal.tiers[i].confidence_available:
                    for c in PRE_CASCADE:
                        out.append([Policy((i, j), (c,), PreRoute(fam, t, True)) for t in PRE_GRID])
    return out


class Search:
    """Learn-then-Test: per chain, test "quality < target" along its steps (fixed sequence) at delta / chains."""

    def __init__(self, cal: Calibrated):
        self.cal = cal
        self.split = cal.cal
        self.target = cal.task.target
        self.budget = cal.task.latency_budget_s
        self.evaluations = 0
        finite = self.split.value[~np.isnan(self.split.value)]
        self.binary = bool(finite.size) and bool(np.all((finite == 0) | (finite == 1)))

    def key(self, p: Policy, r: Replay) -> tuple:
        """Cheapest, then best quality, then fewer tiers, no pre-router, stricter thresholds: a total order."""
        pre = (0, "", 0.0, 0) if p.pre is None else (1, p.pre.family, -p.pre.threshold, int(p.pre.cascade))
        return (float(f"{float(r.cost.mean()):.9g}"), -round(r.mean, 9), len(p.chain), pre, p.chain,
                tuple(-t for t in p.thresholds))

    def p_value(self, r: Replay) -> float:
        return p_value_mean_below(r.value, self.target, binary=self.binary)

    def chain(self, chain: tuple[int, ...], alpha: float) -> list[tuple[tuple, Policy, float]]:
        """The admissible policies of one chain: the leading steps whose null is rejected, within the budget."""
        return self.sequence(chain_steps(chain), alpha)

    def sequence(self, steps: list[Policy], alpha: float) -> list[tuple[tuple, Policy, float]]:
        """Fixed-sequence testing along `steps` (strictest first) at alpha: the admissible ones, within budget."""
        replays = []
        pvals = []
        for p in steps:
            r = replay(self.split, p)
            self.evaluations += 1
            replays.append(r)
            pvals.append(self.p_value(r))
            if pvals[-1] > alpha:
                break
        k = fixed_sequence(pvals, alpha)
        out = []
        for p, r, pv in zip(steps[:k], replays[:k], pvals[:k]):
            if self.budget is not None and r.latency.size and float(np.percentile(r.latency, 95)) > self.budget:
                continue
            out.append((self.key(p, r), p, pv))
        return out


def search(cal: Calibrated, families: list[str] | None = None) -> Choice:
    """The cheapest policy admitted by Learn-then-Test at the task's delta; else the strongest tier alone.

    Candidates: every chain (single tiers and cascades) and, for each fitted pre-router family, the pre-router
    alone and followed by a cascade; delta is split evenly (Bonferroni) over all their sequences. With fewer
    calibration samples than the task's min_samples nothing is admitted: insufficient_data."""
    task = cal.task
    sequences = [chain_steps(c) for c in chains(cal)] + pre_sequences(cal, families or [])
    strongest = cal.strongest()
    if strongest is None:
        return Choice(None, "unreachable", 0, 0, [], reason="no eligible tier")
    if cal.cal.n < task.min_samples:
        return Choice(Policy((strongest,), ()), "insufficient_data", len(sequences), 0, ["learn-then-test"],
                      reason=f"{cal.cal.n} calibration samples, fewer than min_samples {task.min_samples}")
    s = Search(cal)
    alpha = task.delta / max(len(sequences), 1)
    found: list[tuple[tuple, Policy, float]] = []
    for steps in sequences:
        found.extend(s.sequence(steps, alpha))
    if found:
        _, policy, pv = min(found, key=lambda x: x[0])
        return Choice(policy, "meets_target", len(sequences), s.evaluations, ["learn-then-test"], p_value=pv,
                      alpha=alpha, admissible=found)
    return Choice(Policy((strongest,), ()), "unreachable", len(sequences), s.evaluations, ["learn-then-test"],
                  alpha=alpha, reason="no tier, cascade or pre-router passed the test at this delta")


def summarize(cal: Calibrated, split: Split, policy: Policy) -> dict[str, Any]:
    """Quality with its interval, cost, latency and escalation of following the policy on one split."""
    r = replay(split, policy)
    chain = list(policy.chain)
    out: dict[str, Any] = {"n": split.n, "quality": mean_ci(list(r.value))}
    if not split.n:
        return out | {"cost_per_1k_usd": None, "cost_per_1k_usd_ci": None, "latency_mean_s": None,
                      "latency_p95_s": None, "escalation_rate": None, "answered_by": []}
    usd = r.usd
    if cal.basis == "usd":
        usd = r.cost  # missing per-sample costs already filled with their tier's mean
    priced = not np.isnan(usd).any()
    ci = bootstrap_mean(list(usd * 1000)) if priced else None
    out.update({
        "cost_per_1k_usd": float(usd.mean() * 1000) if priced else None,
        "cost_per_1k_usd_ci": [ci[0], ci[1]] if ci else None,
        "latency_mean_s": float(r.latency.mean()),
        "latency_p95_s": percentile(list(r.latency), 95),
        "escalation_rate": float(r.escalated.mean()),
        "answered_by": [{"cell": cal.tiers[t].tier.cell_id, "share": float((r.stop == pos).mean())}
                        for pos, t in enumerate(chain)],
    })
    return out
