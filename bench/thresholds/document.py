"""routing.json: assemble each task's tiers, policy, holdout check and baselines; round, validate and write it."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from bench import __version__
from bench.errors import UserInputError
from bench.fmt import write_text_atomic
from bench.redact import redact
from bench.results.store import utcnow
from bench.thresholds import ROUTING_SCHEMA_VERSION, validate_routing
from bench.thresholds.calibrate import ON_PREMISES, Calibrated, calibrate
from bench.thresholds.contest import contest, describe_policy
from bench.thresholds.gather import TaskData
from bench.thresholds.measures import baselines, routellm
from bench.thresholds.policy import VERIFIED_ONLY, Choice, search, summarize
from bench.thresholds.prerouting import PreRouters, artifact, describe, fit_prerouters

ARTIFACT_DOC = "_artifact"  # in memory only: `write` saves it beside routing.json and keeps its reference

RULES = {
    "tier_order": "Tiers are the cells that ran the task, cheapest first by mean cost per request on calibration "
                  "samples; where any eligible tier has no cost, by mean latency instead (cost_basis says which).",
    "intervals": "Quality intervals are 95%: exact Clopper-Pearson for 0/1 scores; for continuous scores the wider "
                 "of the BCa bootstrap (seed 0) and the Student-t interval on each side; where every score is the "
                 "same, the Clopper-Pearson interval of their sum (never a zero-width interval).",
    "meets_target": "A tier meets the target alone when it has at least min_samples scored calibration samples and "
                    "the lower bound of its calibration interval reaches the target. samples_needed estimates how "
                    "many samples would decide it where it does not, if the observed mean and spread held.",
    "acceptance": "accept_if.signal 'confidence': accept when the task's structural check passed (verified) and "
                  "the mean token log-probability >= threshold; 'verified': accept whenever verified; 'always': "
                  "the last tier of the chain answers everything; 'never': the tier is not in the chain.",
    "null_confidence": "A missing confidence never passes a numeric threshold, so such an answer escalates; a "
                       "tier with no confidence at all can sit before the last tier only with the 'verified' rule.",
    "cascade": "Policies are replayed exactly on the calibration samples every tier ran: a sample's quality is "
               "that of the answer finally accepted, its cost the sum over every tier it passed through, its "
               "latency that sum too. A request that errored counts as wrong; a missing cost is its tier's mean.",
    "search": "Learn-then-Test, over chains and pre-routers (see prerouter). Chains are ordered subsets of eligible tiers (cheapest first, at most 4 tiers) "
              "ending in the tier that always answers. Along each chain one threshold, shared by its non-final "
              "tiers, steps through a grid fixed in advance from strictest to loosest; at each step the null "
              "'this policy's quality is below the target' is tested (exact binomial for 0/1 scores, one-sided "
              "Student-t for continuous ones) at level delta / number of sequences (chains and pre-router "
              "sequences), stopping at the first step not "
              "rejected (fixed-sequence testing). Every rejected policy within the latency budget is admissible; "
              "the one with the lowest mean cost wins, ties to better quality, then fewer tiers, then stricter "
              "thresholds.",
    "prerouter": "Pre-routers predict from the request alone (its input fields) the probability that a cheaper "
                 "tier's answer is good enough (the task's success level: a correct answer for 0/1 metrics, a "
                 "score at or above the target otherwise). Families: rules (length, the suite's hard_patterns), "
                 "tfidf (TF-IDF + logistic regression), embedding (logistic regression on llama.cpp embeddings). "
                 "Each is cross-fitted on the calibration split (5 folds), its scores made probabilities by "
                 "isotonic regression on the out-of-fold scores, and refitted on all calibration samples for "
                 "routing. Along a fixed grid of probability thresholds (strictest first), pre-routed policies "
                 "(cheap tier alone, or the cascade cheap -> strong) join the Learn-then-Test search as further "
                 "sequences; the out-of-fold probabilities stand in for the refitted router's.",
    "guarantee": "With probability at least 1 - delta, every admissible policy, and so the chosen one, has a true "
                 "quality at or above the target on traffic exchangeable with the calibration samples (drawn from "
                 "the same distribution). It does not hold under drift, nor for prompts other than the suite's; for "
                 "continuous scores it rests on the t-test's normal approximation (checked by simulation in the "
                 "test suite, not exact).",
    "insufficient_data": "With fewer calibration samples than min_samples (the suite's, default 30), no policy "
                         "is admitted: status insufficient_data, and every request goes to the strongest eligible "
                         "tier.",
    "fallback": "When no policy is admissible, every request goes to the strongest eligible tier and the status "
                "says unreachable.",
    "holdout": "expected replays the chosen policy on holdout samples, never used to choose it. Where the whole "
               "holdout interval lies below the target, the status is failed_holdout, 'bench thresholds' exits 1, "
               "and bench.router sends the task to the strongest eligible tier unless told to trust the policy.",
    "eligibility": "A sensitive suite admits only local and on-prem tiers; a latency budget (the suite's "
                   "max_p95_latency_s, or --max-p95-latency which overrides it) admits tiers whose calibration "
                   "p95 latency is within it, at the concurrency each is priced at (`concurrency`; a tier whose "
                   "main pass's loaded latencies miss it is priced at a timed concurrency that meets it, where one "
                   "does: `cost_basis`).",
    "savings": "Saving against always-largest (the strongest eligible tier) counts at equal quality when the "
               "paired holdout difference (policy - largest) is >= -tolerance, the suite's regression tolerance.",
}


def _round(x: Any) -> Any:
    """Floats to 6 significant digits (NaN and infinities to null), recursively; everything else as is."""
    if isinstance(x, bool) or x is None:
        return x
    if isinstance(x, float):
        if not math.isfinite(x):
            return None
        return 0.0 if abs(x) < 1e-12 else float(f"{x:.6g}")  # 1e-17 from an interval's rounding is 0
    if isinstance(x, int):
        return x
    if isinstance(x, dict):
        return {str(k): _round(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_round(v) for v in x]
    if hasattr(x, "item"):  # numpy scalars
        return _round(x.item())
    return x


def _q(d: dict[str, Any]) -> dict[str, Any]:
    return {k: d.get(k) for k in ("mean", "ci_low", "ci_high", "n", "method")}


def _accept_if(cal: Calibrated, choice: Choice, i: int) -> dict[str, Any]:
    p = choice.policy
    if p is None or i not in p.chain:
        return {"signal": "never", "threshold": None}
    pos = p.chain.index(i)
    if pos == len(p.chain) - 1 or (p.pre is not None and not p.pre.cascade):
        return {"signal": "always", "threshold": None}
    t = p.thresholds[pos]
    return {"signal": "verified", "threshold": None} if t == VERIFIED_ONLY else {"signal": "confidence",
                                                                                  "threshold": t}


def _tiers(cal: Calibrated, choice: Choice) -> list[dict[str, Any]]:
    out = []
    for i, s in enumerate(cal.tiers):
        t = s.tier
        out.append({
            "cell": t.cell_id, "cell_detail": {k: t.cell.get(k) for k in ("model", "quantization", "backend",
                                                                           "hardware")},
            "quality": _q(s.quality), "quality_holdout": _q(s.quality_holdout),
            "cost_per_1k_usd": s.cost_per_1k_usd, "latency_p95_s": s.latency_p95_s,
            "latency_mean_s": s.latency_mean_s, "meets_target": s.meets_target,
            "samples_needed": s.samples_needed, "contended": s.contended,
            "accept_if": _accept_if(cal, choice, i), "locality": t.locality, "eligible": s.eligible,
            "excluded_because": s.excluded_because or None, "confidence_available": s.confidence_available,
            "errors": s.errors, "cost_basis": t.cost_basis, "concurrency": t.concurrency,
            "main_concurrency": t.main_concurrency,
            "runtime": {"backend": t.backend, "model": t.cell.get("model"), "quantization": t.cell.get("quantization"),
                        "chat": t.chat, "model_ref": t.model_ref, "usd_per_hour": t.usd_per_hour},
        })
    return out


def _expected(cal: Calibrated, choice: Choice) -> dict[str, Any]:
    target = cal.task.target
    if choice.policy is None:
        return {"quality": {"mean": None, "ci_low": None, "ci_high": None, "n": 0, "method": None},
                "cost_per_1k_usd": None, "escalation_rate": None, "n": 0, "meets_target_on_holdout": False,
                "message": "no eligible tier: nothing to route to"}
    e = summarize(cal, cal.hold, choice.policy)
    q = e["quality"]
    e["quality"] = _q(q)
    if not e["n"] or q["mean"] is None:
        e |= {"meets_target_on_holdout": None, "message": "no scored holdout samples: the policy is unchecked"}
    elif q["ci_high"] is not None and q["ci_high"] < target:
        e |= {"meets_target_on_holdout": False,
              "message": f"holdout quality {q['mean']:.3f} [{q['ci_low']:.3f}, {q['ci_high']:.3f}]: the whole "
                         f"interval is below the target {target:g}, so the policy failed on holdout"}
    elif q["mean"] >= target:
        e |= {"meets_target_on_holdout": True,
              "message": f"holdout quality {q['mean']:.3f} [{q['ci_low']:.3f}, {q['ci_high']:.3f}] meets the "
                         f"target {target:g}"}
    else:
        how = "the interval still reaches it, so more holdout samples would tell"
        e |= {"meets_target_on_holdout": False,
              "message": f"holdout quality {q['mean']:.3f} [{q['ci_low']:.3f}, {q['ci_high']:.3f}] falls short of "
                         f"the target {target:g} ({how})"}
    return e


def _constraints(cal: Calibrated) -> dict[str, Any]:
    task = cal.task
    shaped = []
    if task.sensitive and any(s.tier.locality not in ON_PREMISES for s in cal.tiers):
        shaped.append("sensitive")
    if task.latency_budget_s is not None and any(s.latency_p95_s is None or s.latency_p95_s > task.latency_budget_s
                                                 for s in cal.tiers):
        shaped.append("max_p95_latency_s")
    return {"sensitive": task.sensitive, "allowed_localities": list(ON_PREMISES) if task.sensitive else None,
            "max_p95_latency_s": task.latency_budget_s, "latency_source": task.latency_source,
            "cascade_latency_checked": task.latency_budget_s is not None,
            "excluded": [{"cell": s.tier.cell_id, "because": s.excluded_because} for s in cal.tiers
                         if not s.eligible],
            "shaped_by": shaped}


def _needed(cal: Calibrated) -> str:
    """What more samples would do: the tier closest to deciding, or that none would at the observed means."""
    est = [(s.samples_needed, s.tier.cell_id) for s in cal.tiers if s.eligible and s.samples_needed is not None]
    if not est:
        return "no tier's observed mean exceeds the target, so more samples alone would not decide it"
    n, cell = min(est)
    return f"about {n} calibration samples would decide {cell} alone, if its observed mean and spread held"


def _prerouter(cal: Calibrated, pre: PreRouters, choice: Choice) -> dict[str, Any] | None:
    """The chosen policy's pre-router: how bench.router applies it, and its artefact (saved by `write`)."""
    p = choice.policy
    if p is None or p.pre is None or choice.status != "meets_target":
        return None
    key = (p.pre.family, p.chain[0])
    return {"family": p.pre.family, "cheap": cal.tiers[p.chain[0]].tier.cell_id,
            "strong": cal.tiers[p.chain[-1]].tier.cell_id, "threshold": p.pre.threshold,
            "then": "cascade" if p.pre.cascade else "answer",
            "rule": "a request whose probability of a good answer from `cheap` reaches `threshold` goes to `cheap` "
                    "(then: answer) or into the cascade cheap -> strong (then: cascade); any other goes to `strong`",
            "ece_calibration": pre.fits[key].ece_calibration, "ece_holdout": pre.ece_holdout.get(key),
            "embedding": artifact(cal, pre, *key)["embedding"], ARTIFACT_DOC: artifact(cal, pre, *key)}


def task_entry(task: TaskData) -> dict[str, Any]:
    """One task's block of routing.json."""
    cal = calibrate(task)
    pre = fit_prerouters(cal)
    cal.notes.extend(pre.notes)
    choice = search(cal, pre.families)
    p = choice.policy
    on_cal = summarize(cal, cal.cal, p) if p else None
    if on_cal:
        on_cal["quality"] = _q(on_cal["quality"])
    chain = [cal.tiers[i].tier.cell_id for i in p.chain] if p else []
    expected = _expected(cal, choice)
    status = choice.status
    if status == "meets_target" and expected.get("meets_target_on_holdout") is False \
            and (expected["quality"].get("ci_high") is not None and expected["quality"]["ci_high"] < task.target):
        status = "failed_holdout"
    if status == "meets_target":
        status_msg = (f"the cheapest policy admitted by Learn-then-Test at delta {task.delta:g} "
                      f"(p = {choice.p_value:.3g} <= {choice.alpha:.3g})")
    elif status == "failed_holdout":
        status_msg = ("admitted on calibration, but its whole holdout interval lies below the target: "
                      "bench.router sends this task to the strongest eligible tier instead")
    elif status == "insufficient_data":
        status_msg = (f"{choice.reason}: nothing is decided, and every request goes to the strongest eligible "
                      f"tier; {_needed(cal)}")
    elif cal.tiers and choice.policy is not None:
        status_msg = (f"no tier or cascade passes Learn-then-Test for the target {task.target:g} at delta "
                      f"{task.delta:g}: every request goes to the strongest eligible tier; {_needed(cal)}")
    elif not cal.tiers:
        status_msg = "no tiers: the runs hold no samples of this task"
    else:
        status_msg = "no eligible tier: " + "; ".join(f"{s.tier.cell_id}: {', '.join(s.excluded_because)}"
                                                      for s in cal.tiers)
    strongest = cal.strongest(on_holdout=status == "failed_holdout")
    entry = {
        "kind": task.kind, "target": task.target, "target_source": task.target_source, "metric": task.metric,
        "tolerance": task.tolerance, "cost_basis": cal.basis, "n_calibration": cal.cal.n, "n_holdout": cal.hold.n,
        "tiers": _tiers(cal, choice), "default": chain[0] if chain else None,
        "status": status, "min_samples": task.min_samples,
        "fallback": cal.tiers[strongest].tier.cell_id if strongest is not None else None,
        "guarantee": {"method": "learn-then-test (fixed sequence per chain or pre-router, Bonferroni over them)",
                      "delta": task.delta, "alpha_per_chain": choice.alpha, "p_value": choice.p_value,
                      "holds": status == "meets_target",
                      "assumption": "calibration samples exchangeable with traffic; the suite's prompt"},
        "policy": {"chain": chain, "status": status, "message": status_msg,
                   "kind": p.kind if p else None, "text": describe_policy(cal, p)["text"] if p else None,
                   "calibration": on_cal,
                   "search": {"chains": choice.chains_searched, "evaluations": choice.evaluations,
                              "methods": choice.methods}},
        "expected": expected,
        "baselines": baselines(cal, p, expected) if p else None,
        "routellm": routellm(cal, p) if p else None,
        "constraints": _constraints(cal),
        "runtime": task.runtime, "sources": task.run_ids, "notes": cal.notes,
        "prerouter": _prerouter(cal, pre, choice) if status == "meets_target" else None,
        "prerouting": describe(cal, pre),
        "families": contest(cal, choice),
    }
    return entry


def build(tasks: list[TaskData]) -> dict[str, Any]:
    """The whole routing.json document, rounded; only created_at depends on when it was made."""
    doc: dict[str, Any] = {"schema_version": ROUTING_SCHEMA_VERSION, "created_at": utcnow(), "bench_version": __version__,
           "sources": sorted({r for t in tasks for r in t.run_ids}),
           "tasks": {t.name: task_entry(t) for t in tasks}, "rules": RULES}
    kept = {name: t["prerouter"].pop(ARTIFACT_DOC) for name, t in doc["tasks"].items()
            if t.get("prerouter") and ARTIFACT_DOC in t["prerouter"]}
    doc = _round(doc)
    for name, art in kept.items():  # a fitted router's numbers are kept exact: rounding would change decisions
        doc["tasks"][name]["prerouter"][ARTIFACT_DOC] = art
    return doc


def dumps(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n"


def write(doc: dict[str, Any], path: str | Path) -> Path:
    """Validate against the shipped schema, then write atomically (a reader never sees half a file)."""
    path = Path(path)
    if path.is_dir():
        raise UserInputError("expected a file to write routing.json to, got a directory", file=str(path),
                             field="-o")
    from bench.routers import artifacts

    path.parent.mkdir(parents=True, exist_ok=True)
    for name, task in doc["tasks"].items():
        pre = task.get("prerouter")
        if pre and ARTIFACT_DOC in pre:
            pre["artifact"] = artifacts.save(path, name, pre.pop(ARTIFACT_DOC))
    validate_routing(doc, str(path))
    write_text_atomic(path, dumps(redact(doc)))
    return path
