"""What the policy is worth: always-largest, always-smallest, a random mix at equal cost, and RouteLLM's APGR/CPT."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from bench.stats import paired_bootstrap_diff
from bench.thresholds.calibrate import Calibrated
from bench.thresholds.policy import VERIFIED_ONLY, Policy, replay, summarize

APGR_DEFINITION = (
    "Measured on holdout between the cheapest eligible tier (weak) and the strongest (strong), after RouteLLM "
    "(Ong et al., 2024). Each threshold t on the weak tier's confidence (every distinct holdout value, plus "
    "'verified only') gives a 2-tier cascade: weak answers when verified and confidence >= t, else strong. "
    "For each, x = share of requests that reach strong and PGR = (quality - weak) / (strong - weak). "
    "APGR is the area under PGR(x) from x=0 (always weak) to x=1 (always strong), joining the points with "
    "straight lines and keeping the best PGR at equal x; a random router scores 0.5. CPT(p) is the smallest x "
    "among those points with PGR >= p.")
RANDOM_MIX_DEFINITION = (
    "Send a share m of requests, at random, to the strongest eligible tier and the rest to the cheapest, with m "
    "chosen so the mix costs what the policy costs (holdout); its quality is the mix of their holdout means.")


def _mean(v: np.ndarray) -> float | None:
    v = v[~np.isnan(v)]
    return float(v.mean()) if v.size else None


def baselines(cal: Calibrated, policy: Policy, expected: dict[str, Any]) -> dict[str, Any] | None:
    """Holdout quality and cost of the simple alternatives, and the policy's saving against always-largest."""
    large, small = cal.strongest(), cal.cheapest()
    if large is None or small is None or not cal.hold.n:
        return None
    hold = cal.hold
    rp, rl, rs = (replay(hold, p) for p in (policy, Policy((large,), ()), Policy((small,), ())))
    cost_p, cost_l, cost_s = (float(r.cost.mean()) for r in (rp, rl, rs))
    largest = summarize(cal, hold, Policy((large,), ())) | {"cell": cal.tiers[large].tier.cell_id}
    smallest = summarize(cal, hold, Policy((small,), ())) | {"cell": cal.tiers[small].tier.cell_id}
    for b in (largest, smallest):
        b.pop("answered_by", None)
        b.pop("escalation_rate", None)
    q_l, q_s = _mean(rl.value), _mean(rs.value)
    if cost_l != cost_s and q_l is not None and q_s is not None:
        m = min(max((cost_p - cost_s) / (cost_l - cost_s), 0.0), 1.0)
        mix: dict[str, Any] = {"share_to_largest": m, "quality_mean": (1 - m) * q_s + m * q_l}
    else:
        mix = {"share_to_largest": None, "quality_mean": None,
               "note": "the cheapest and the strongest tier cost the same: no mix to compare"}
    mix["definition"] = RANDOM_MIX_DEFINITION
    diff = paired_bootstrap_diff(list(rl.value), list(rp.value))
    tol = cal.task.tolerance
    equal = bool(diff["n"]) and diff["delta"] >= -tol
    unit = "cost_per_1k_usd" if cal.basis == "usd" else "latency_mean_s"
    fraction = 1 - cost_p / cost_l if cost_l > 0 else None
    if equal and fraction is not None and fraction > 0:
        how = ("no worse" if diff["delta"] >= 0 else f"within the tolerance {tol:g}")
        message = (f"{fraction:.0%} cheaper ({unit}) than always {largest['cell']} at equal quality "
                   f"(holdout difference {diff['delta']:+.3f}, {how})")
    elif not equal:
        message = (f"no saving at equal quality: the policy's holdout quality is {diff['delta']:+.3f} against "
                   f"always {largest['cell']}, beyond the tolerance {tol:g}")
    else:
        message = f"no saving: always {largest['cell']} costs no more than the policy"
    savings = {"vs": largest["cell"], "basis": cal.basis, "fraction": fraction,
               "cost_per_1k_usd": (largest["cost_per_1k_usd"] - expected["cost_per_1k_usd"]
                                   if largest["cost_per_1k_usd"] is not None
                                   and expected.get("cost_per_1k_usd") is not None else None),
               "quality_delta": {"mean": diff["delta"], "ci_low": diff["ci_low"], "ci_high": diff["ci_high"]},
               "tolerance": tol, "at_equal_quality": equal, "message": message}
    return {"always_largest": largest, "always_smallest": smallest, "random_mix_same_cost": mix,
            "savings_vs_always_largest": savings}


def routellm(cal: Calibrated, policy: Policy) -> dict[str, Any]:
    """APGR and CPT(50%), CPT(80%) of the weak/strong cascade on holdout; null with a reason when undefined."""
    weak, strong = cal.cheapest(), cal.strongest()
    base: dict[str, Any] = {"definition": APGR_DEFINITION, "apgr": None, "apgr_random": 0.5,
                            "cpt_50": None, "cpt_80": None, "weak": None, "strong": None,
                            "policy_strong_share": None, "policy_pgr": None, "reason": None}
    hold = cal.hold
    if weak is None or strong is None or weak == strong:
        return base | {"reason": "needs two eligible tiers, a cheaper one and a stronger one"}
    base |= {"weak": cal.tiers[weak].tier.cell_id, "strong": cal.tiers[strong].tier.cell_id}
    if not hold.n:
        return base | {"reason": "no holdout samples"}
    q_w, q_s = _mean(hold.value[weak]), _mean(hold.value[strong])
    if q_w is None or q_s is None or q_s - q_w <= 0:
        return base | {"reason": "the cheapest tier is at least as good as the strongest on holdout: no gap"}
    gap = q_s - q_w
    conf = hold.conf[weak]
    thresholds = [VERIFIED_ONLY] + sorted({float(c) for c in conf[np.isfinite(conf)]})
    best: dict[float, float] = {0.0: 0.0, 1.0: 1.0}
    for t in thresholds:
        r = replay(hold, Policy((weak, strong), (t,)))
        x = float((r.stop > 0).mean())
        pgr = ((_mean(r.value) or 0.0) - q_w) / gap
        best[x] = max(best.get(x, -math.inf), pgr)
    xs = sorted(best)
    ys = [best[x] for x in xs]
    apgr = float(sum((xs[i + 1] - xs[i]) * (ys[i] + ys[i + 1]) / 2 for i in range(len(xs) - 1)))

    def cpt(p: float) -> float | None:
        return next((x for x in xs if best[x] >= p), None)

    rp = replay(hold, policy)
    chain = list(policy.chain)
    share = float((np.asarray(chain)[rp.stop] == strong).mean()) if strong in chain else 0.0
    return base | {"apgr": apgr, "cpt_50": cpt(0.5), "cpt_80": cpt(0.8), "policy_strong_share": share,
                   "policy_pgr": ((_mean(rp.value) or 0.0) - q_w) / gap, "points": len(xs)}
