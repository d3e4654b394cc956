"""Fit each pre-router family for each cheaper tier of a task, cross-fitted on calibration, applied to holdout.

A tier's answer is "good enough" for a request when its score reaches the task's success level: a correct answer
for 0/1 metrics, a score at or above the target for continuous ones. Each family learns, from the request alone,
the probability of that (bench.routers.families). The probabilities go into the splits, where the policy search
(bench/thresholds/policy.py) tests pre-routed policies under the same Learn-then-Test guarantee as cascades.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bench.errors import BenchError
from bench.routers.families import Fit, calibration_error, cross_fit
from bench.routers.features import EMBED_CTX, request_text
from bench.thresholds.calibrate import CONTENDED_SHARE, ON_PREMISES, Calibrated


@dataclass
class PreRouters:
    """What was fitted for one task: fits per (family, tier), the families usable, and notes on what was not."""

    fits: dict[tuple[str, int], Fit] = field(default_factory=dict)
    ece_holdout: dict[tuple[str, int], float | None] = field(default_factory=dict)
    families: list[str] = field(default_factory=list)
    embedding: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    success: str = ""
    level: float = 1.0


def success_level(values: np.ndarray, target: float) -> tuple[float, str]:
    finite = values[~np.isnan(values)]
    if finite.size and np.all((finite == 0) | (finite == 1)):
        return 1.0, "a correct answer (score 1)"
    return target, f"a score of at least the target {target:g}"


def fit_prerouters(cal: Calibrated) -> PreRouters:
    """Fit the suite's families (prerouter.families) and write their probabilities into cal.cal and cal.hold."""
    task = cal.task
    cfg = task.prerouter or {}
    out = PreRouters()
    wanted = list(cfg.get("families") or [])
    elig = cal.eligible_indices()
    if not wanted or len(elig) < 2:
        return out
    ids = cal.cal.ids + cal.hold.ids
    missing = [s for s in ids if s not in task.inputs]
    if missing:
        out.notes.append(f"no pre-router: {len(missing)} sample(s) have no stored inputs (runs made before "
                         "inputs.jsonl); run the suite again: it resumes, adds inputs.jsonl and reruns nothing")
        return out
    fields = list(((task.runtime or {}).get("dataset") or {}).get("input_fields") or [])
    texts = {sid: request_text(task.inputs[sid], fields) for sid in ids}
    vectors: dict[str, np.ndarray] = {}
    families = list(wanted)
    if "embedding" in families:
        from bench.routers.features import embeddings

        model_id = cfg.get("embedding_model") or "smollm2-135m-instruct"
        try:
            vectors, took, info = embeddings(task.run_paths, texts, model_id)
        except (BenchError, OSError, RuntimeError, ValueError) as exc:
            families.remove("embedding")
            out.notes.append(f"embedding family skipped: cannot embed with {model_id}: {exc}")
        else:
            # the embedding runs on this machine: its seconds count in latency, and at the local hourly price
            rate = next((s.tier.usd_per_hour for s in cal.tiers if s.tier.locality in ON_PREMISES
                         and s.tier.usd_per_hour is not None), None)
            out.embedding = info | {"ctx": EMBED_CTX, "pooling": "mean", "normalized": True, "usd_per_hour": rate}
            if rate is None:
                out.notes.append("the embedding pre-router's own time is counted in latency but not priced: no "
                                 "local tier has an hourly price")
            if (info.get("contended_share") or 0.0) > CONTENDED_SHARE:
                out.notes.append(f"the embedding pre-router's seconds are suspect: {info['contended_share']:.0%} of "
                                 "the texts were embedded while other processes took CPU, which slows llama.cpp "
                                 "several-fold here, and those seconds are its latency and cost; delete the run's "
                                 "features/ folder and run bench thresholds again on a quiet machine")
            for split in (cal.cal, cal.hold):
                split.overhead["embedding"] = np.array([took.get(s, 0.0) for s in split.ids])
                split.overhead_usd["embedding"] = split.overhead["embedding"] * ((rate or 0.0) / 3600)
    out.families = families
    level, out.success = success_level(cal.cal.value, task.target)
    out.level = level
    options = {"hard_patterns": list(cfg.get("hard_patterns") or [])}
    cal_texts = [texts[s] for s in cal.cal.ids]
    hold_texts = [texts[s] for s in cal.hold.ids]
    cal_emb = np.array([vectors[s] for s in cal.cal.ids]) if vectors else None
    hold_emb = np.array([vectors[s] for s in cal.hold.ids]) if vectors else None
    from bench.registry import ROUTER_FAMILIES

    for i in elig[:-1]:
        y = _good(cal.cal.value[i], level)
        y_hold = _good(cal.hold.value[i], level)
        for name in families:
            family = ROUTER_FAMILIES.get(name)
            emb = cal_emb if family.needs_embedding else None
            fit = cross_fit(family, cal_texts, emb, y, options)
            out.fits[(name, i)] = fit
            cal.cal.prob[(name, i)] = fit.oof
            hold_p = fit.predict(hold_texts, hold_emb if family.needs_embedding else None)
            cal.hold.prob[(name, i)] = hold_p
            out.ece_holdout[(name, i)] = calibration_error(hold_p, y_hold)
    return out


def _good(values: np.ndarray, level: float) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return (np.nan_to_num(values, nan=0.0) >= level - 1e-12).astype(int)


def artifact(cal: Calibrated, pre: PreRouters, family: str, cheap: int) -> dict[str, Any]:
    """The artefact of one fitted pre-router: everything bench.router needs to score a request the same way."""
    fit = pre.fits[(family, cheap)]
    task = cal.task
    fields = list(((task.runtime or {}).get("dataset") or {}).get("input_fields") or [])
    return {"family": family, "task": task.name, "cheap": cal.tiers[cheap].tier.cell_id,
            "params": fit.params, "calibration": fit.knots,
            "features": {"text": "the input fields, one per line, in this order", "input_fields": fields,
                         "length": "bench word tokens (\\w+ runs and single punctuation marks)"},
            "embedding": ({k: pre.embedding[k] for k in ("model", "sha256", "ctx", "pooling", "normalized")}
                          if family == "embedding" and pre.embedding else None)}


def describe(cal: Calibrated, pre: PreRouters) -> dict[str, Any]:
    """routing.json's account of the fitted families: calibration error per family and cheaper tier."""
    from bench.registry import ROUTER_FAMILIES

    fams = []
    for (name, i), fit in sorted(pre.fits.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        fams.append({"family": name, "description": ROUTER_FAMILIES.get(name).description,
                     "cheap": cal.tiers[i].tier.cell_id, "ece_calibration": fit.ece_calibration,
                     "ece_holdout": pre.ece_holdout.get((name, i)),
                     "good_rate_calibration": float(_good(cal.cal.value[i], pre.level).mean())
                     if cal.cal.n else None})
    return {"success": pre.success, "cross_fitting": "5 folds (stratified where possible), seed 0; probabilities "
            "by isotonic regression on the out-of-fold scores", "fitted": fams, "embedding": pre.embedding}
