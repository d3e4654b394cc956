"""The policy families side by side: single tier, cascade, pre-router, pre-router then cascade.

For each family, the cheapest policy Learn-then-Test admitted (its calibration and holdout figures, model mix and
escalation share) and the holdout cost/quality of its admitted policies (for the report's plot); then which
family won and why, and what the pre-router saves over the cascade where both qualify.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bench.thresholds.calibrate import Calibrated
from bench.thresholds.policy import VERIFIED_ONLY, Choice, Policy, replay, summarize

KINDS = ("single", "cascade", "prerouter", "prerouter+cascade")
MAX_POINTS = 30


def describe_policy(cal: Calibrated, p: Policy) -> dict[str, Any]:
    """A policy in words and cells: its family, chain, cascade thresholds and pre-router."""
    cells = [cal.tiers[i].tier.cell_id for i in p.chain]
    out: dict[str, Any] = {"kind": p.kind, "chain": cells,
                           "thresholds": ["verified" if t == VERIFIED_ONLY else t for t in p.thresholds]}
    if p.pre is not None:
        path = " -> ".join(cells) if p.pre.cascade else cells[0]
        out["prerouter"] = {"family": p.pre.family, "threshold": p.pre.threshold, "then": "cascade" if
                            p.pre.cascade else "answer"}
        out["text"] = (f"{p.pre.family} pre-router: P(good on {cells[0]}) >= {p.pre.threshold:g} -> {path}, "
                       f"else {cells[-1]}")
    elif len(cells) == 1:
        out["text"] = f"always {cells[0]}"
    else:
        out["text"] = "cascade " + " -> ".join(cells)
    return out


def _brief(s: dict[str, Any]) -> dict[str, Any]:
    q = s.get("quality") or {}
    return {"n": s.get("n"), "quality": {k: q.get(k) for k in ("mean", "ci_low", "ci_high", "n", "method")},
            "cost_per_1k_usd": s.get("cost_per_1k_usd"), "cost_per_1k_usd_ci": s.get("cost_per_1k_usd_ci"),
            "latency_mean_s": s.get("latency_mean_s"), "latency_p95_s": s.get("latency_p95_s"),
            "escalation_rate": s.get("escalation_rate"), "answered_by": s.get("answered_by")}


def _cost(s: dict[str, Any], basis: str) -> float | None:
    return s.get("cost_per_1k_usd") if basis == "usd" else s.get("latency_mean_s")


def _sort_cost(s: dict[str, Any], basis: str) -> float:
    """A policy's cost for ordering: unknown costs last."""
    c = _cost(s, basis)
    return float("inf") if c is None else float(c)


def contest(cal: Calibrated, choice: Choice) -> dict[str, Any]:
    """routing.json's `families` block for one task."""
    by_kind: dict[str, list] = {k: [] for k in KINDS}
    for key, policy, pv in choice.admissible:
        by_kind[policy.kind].append((key, policy, pv))
    out: dict[str, Any] = {"cost_basis": cal.basis}
    best_hold: dict[str, dict[str, Any]] = {}
    for kind in KINDS:
        items = sorted(by_kind[kind], key=lambda x: x[0])
        if not items:
            out[kind] = {"admissible": 0, "best": None, "points": []}
            continue
        _, policy, pv = items[0]
        hold = _brief(summarize(cal, cal.hold, policy))
        best_hold[kind] = hold
        step = max(1, len(items) // MAX_POINTS)
        points = []
        for _, p, _ in items[::step][:MAX_POINTS]:
            r = replay(cal.hold, p)
            usd = r.cost if cal.basis == "usd" else r.usd
            points.append({"text": describe_policy(cal, p)["text"], "quality": r.mean if r.value.size else None,
                           "cost_per_1k_usd": float(usd.mean() * 1000) if usd.size and not np.isnan(usd).any()
                           else None, "latency_mean_s": float(r.latency.mean()) if r.latency.size else None})
        out[kind] = {"admissible": len(items), "p_value": pv, "policy": describe_policy(cal, policy),
                     "best": {"calibration": _brief(summarize(cal, cal.cal, policy)), "holdout": hold},
                     "points": points}
    chosen = choice.policy
    out["winner"] = chosen.kind if choice.status == "meets_target" and chosen is not None else None
    out["why"] = _why(out, choice)
    out["prerouter_vs_cascade"] = _saving(best_hold, cal.basis)
    return out


def _why(out: dict[str, Any], choice: Choice) -> str:
    if out["winner"] is None:
        return ("no family has an admissible policy: " + (choice.reason or "none passed the test")
                + "; every request goes to the strongest eligible tier")
    unit = "$/1k requests" if out["cost_basis"] == "usd" else "mean seconds per request"
    costs = []
    for kind in KINDS:
        b = out[kind].get("best")
        if b:
            c = _cost(b["calibration"], out["cost_basis"])
            costs.append(f"{kind} {c:.4g}" if c is not None else f"{kind} unpriced")
    others = [k for k in KINDS if k != out["winner"] and not out[k].get("best")]
    tail = f"; no admissible policy in: {', '.join(others)}" if others else ""
    return (f"{out['winner']} is the cheapest admissible policy on calibration ({unit}: {', '.join(costs)})"
            f"{tail}")


def _saving(best_hold: dict[str, dict[str, Any]], basis: str) -> dict[str, Any]:
    """Holdout cost of the best pre-routed policy against the best cascade, where both qualified."""
    pre = [best_hold[k] for k in ("prerouter", "prerouter+cascade") if k in best_hold]
    casc = best_hold.get("cascade") or best_hold.get("single")
    if not pre or casc is None:
        return {"saving": None, "message": "not both qualified: no comparison"}
    p = min(pre, key=lambda h: _sort_cost(h, basis))
    cp, cc = _cost(p, basis), _cost(casc, basis)
    if cp is None or cc is None or cc <= 0:
        return {"saving": None, "message": "unpriced: no comparison"}
    saving = 1 - cp / cc
    what = "cascade" if best_hold.get("cascade") else "single tier"
    return {"saving": saving, "against": what,
            "message": f"on holdout the best pre-routed policy costs {cp:.4g} against {cc:.4g} for the best {what} "
                       f"({saving:+.0%} {'saved' if saving >= 0 else 'more'})"}
