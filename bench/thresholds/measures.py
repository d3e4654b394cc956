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


def _sweep(split: Any, weak: int, strong: int) -> list[tuple[float, float]]:
    """(strong share, quality) of the weak-then-strong cascade at every distinct weak confidence, plus the
    verified-only rule; computed from sorted prefix sums, the same numbers as replaying each threshold."""
    n = split.n
    out = []
    r = replay(split, Policy((weak, strong), (VERIFIED_ONLY,)))
    out.append((float((r.stop > 0).mean()), _mean(r.value) or 0.0))
    conf, verified = split.conf[weak], split.verified[weak]
    idx = np.flatnonzero(verified & np.isfinite(conf))
    if not idx.size:
        return out
    idx = idx[np.argsort(-conf[idx], kind="stable")]
    vw, vs = split.value[weak], split.value[strong]
    ok_w, ok_s = ~np.isnan(vw), ~np.isnan(vs)
    sum_s, cnt_s = float(np.nansum(vs)), int(ok_s.sum())
    # accepting the top k by confidence swaps those samples' strong answers for weak ones
    cs_w = np.cumsum(np.where(ok_w[idx], vw[idx], 0.0))
    cc_w = np.cumsum(ok_w[idx])
    cs_s = np.cumsum(np.where(ok_s[idx], vs[idx], 0.0))
    cc_s = np.cumsum(ok_s[idx])
    c = conf[idx]
    ends = np.flatnonzero(np.append(c[1:] != c[:-1], True))  # last position of each distinct confidence
    total = sum_s - cs_s[ends] + cs_w[ends]
    count = cnt_s - cc_s[ends] + cc_w[ends]
    quality = np.divide(total, count, out=np.zeros_like(total), where=count > 0)
    share = 1.0 - (ends + 1) / n
    out.extend(zip(share.tolist(), quality.tolist()))
    return out


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
    best: dict[float, float] = {0.0: 0.0, 1.0: 1.0}
    for x, quality in _sweep(hold, weak, strong):
        best[x] = max(best.get(x, -math.inf), (quality - q_w) / gap)
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
