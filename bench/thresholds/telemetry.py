"""Production telemetry fed back to `bench thresholds --telemetry requests.jsonl`: has traffic drifted?

`bench serve --log` writes one line per routed request (bench/serve/log.py). Requests carry no labels, so quality
cannot be re-measured from them; what can be checked is whether traffic still looks like the holdout samples the
policy was replayed on. Per task, the share of requests the policy's first tier answered (the model mix: it moves
when the confidences the accept rule sees move, or when a pre-router sends more or fewer requests down the cheap
path) is compared with its holdout share by Fisher's exact test (both are counts from finite samples). A p-value
below ALPHA is reported as drift: the calibration no longer describes the traffic, and the suite should be rerun
on fresh samples. Requests answered by a fallback, or that failed, are left out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.errors import UserInputError

ALPHA = 0.01       # the chance of calling drift where there is none, per task
MIN_REQUESTS = 20  # fewer logged requests of a task: not judged


def read_log(path: str | Path) -> list[dict[str, Any]]:
    """The request log's lines (a torn last line skipped); anything else is an exit-2 error naming the line."""
    from bench.results.store import iter_jsonl

    p = Path(path)
    if not p.is_file():
        raise UserInputError("request log not found (expected the file `bench serve --log` wrote)", file=str(p),
                             field="--telemetry")
    rows = list(iter_jsonl(p))
    for i, row in enumerate(rows, 1):
        if not isinstance(row.get("task"), str) or not isinstance(row.get("tiers_tried"), list):
            raise UserInputError(f"entry {i} is not a `bench serve` request-log line (expected `task` and "
                                 "`tiers_tried`)", file=str(p), field="--telemetry")
    return rows


def _fisher(a: int, n_a: int, b: int, n_b: int) -> float:
    from scipy.stats import fisher_exact

    return float(fisher_exact([[a, n_a - a], [b, n_b - b]])[1])


def drift(doc: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per task of the routing document: the production shares against the holdout ones, and the verdict."""
    out: dict[str, dict[str, Any]] = {}
    for name, task in doc["tasks"].items():
        mine = [r for r in rows if r["task"] == name and r.get("status") == 200 and not r.get("fallback")]
        expected = task.get("expected") or {}
        n_hold = int(expected.get("n") or 0)
        chain = (task.get("policy") or {}).get("chain") or []
        entry: dict[str, Any] = {"requests": len(mine), "alpha": ALPHA, "checks": []}
        if len(mine) < MIN_REQUESTS or not n_hold or not chain:
            entry["verdict"] = "not judged"
            entry["message"] = (f"{len(mine)} answered request(s) logged (at least {MIN_REQUESTS} are needed) "
                                if len(mine) < MIN_REQUESTS else "no holdout replay or chain to compare with")
            out[name] = entry
            continue
        first = chain[0]
        share = {a["cell"]: a["share"] for a in expected.get("answered_by") or []}.get(first)
        if share is not None:
            entry["checks"].append(_check(f"answered by {first}", round(share * n_hold), n_hold,
                                          sum(r.get("tier") == first for r in mine), len(mine)))
        drifted = [c for c in entry["checks"] if c["drift"]]
        entry["verdict"] = "drift" if drifted else "consistent"
        entry["message"] = ("; ".join(c["message"] for c in drifted) + ": the traffic no longer looks like the "
                            "calibration samples; rerun the suite on fresh samples and recalibrate"
                            if drifted else "production shares are consistent with holdout")
        out[name] = entry
    return out


def _check(what: str, k_hold: int, n_hold: int, k_prod: int, n_prod: int) -> dict[str, Any]:
    p = _fisher(k_hold, n_hold, k_prod, n_prod)
    hold, prod = k_hold / n_hold, k_prod / n_prod
    return {"what": what, "holdout": hold, "n_holdout": n_hold, "production": prod, "n_production": n_prod,
            "p_value": p, "drift": p < ALPHA,
            "message": f"{what}: {hold:.0%} of {n_hold} holdout samples, {prod:.0%} of {n_prod} requests "
                       f"(Fisher p = {p:.2g})"}
