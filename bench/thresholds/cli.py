"""`bench thresholds RESULTS... -o routing.json`: calibrate, write the file(s), and summarise on the terminal."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from bench.fmt import num, write_text_atomic
from bench.thresholds.document import build, write
from bench.thresholds.gather import gather, parse_targets


def _cost(v: Any) -> str:
    return "-" if v is None else f"${v:.4g}/1k"


def _accept(a: dict[str, Any]) -> str:
    if a["signal"] == "confidence":
        return f"conf >= {a['threshold']:g}"
    return {"verified": "if verified", "always": "always", "never": "-"}[a["signal"]]


def _load(tier: dict[str, Any]) -> str:
    """' at concurrency N' where the tier ran or is priced with several requests in flight (else nothing)."""
    at, main = tier.get("concurrency"), tier.get("main_concurrency")
    if not isinstance(at, int) or (at == 1 and main in (None, 1)):
        return ""
    return f" at concurrency {at}" + (f" (main pass {main})" if isinstance(main, int) and main != at else "")


def summary_lines(doc: dict[str, Any]) -> list[tuple[str, str | None]]:
    """(line, style) pairs for the terminal; a holdout shortfall is styled as a warning."""
    lines: list[tuple[str, str | None]] = []
    for name, t in doc["tasks"].items():
        head = (f"{name} ({t['kind']}): target {t['metric']} >= {t['target']:g} (from {t['target_source']}), "
                f"{t['n_calibration']} calibration / {t['n_holdout']} holdout samples")
        lines.append((head, "bold"))
        for tier in t["tiers"]:
            q = tier["quality"]
            lines.append((f"  {tier['cell']}: {num(q['mean'])} [{num(q['ci_low'])}, {num(q['ci_high'])}] "
                          f"{_cost(tier['cost_per_1k_usd'])} p95 {num(tier['latency_p95_s'], '.3g')} s"
                          f"{_load(tier)}  "
                          f"{'meets target' if tier['meets_target'] else 'below target'}; "
                          + (f"accept {_accept(tier['accept_if'])}" if tier["eligible"]
                             else "excluded: " + "; ".join(tier["excluded_because"] or [])), None))
        policy = t["policy"]
        lines.append((f"  policy [{t['status']}]: {policy.get('text') or ' -> '.join(policy['chain']) or 'none'} "
                      f"({policy['message']})",
                      "red" if t["status"] != "meets_target" else None))
        fams = t.get("families") or {}
        for kind in ("single", "cascade", "prerouter", "prerouter+cascade"):
            f = fams.get(kind) or {}
            best = (f.get("best") or {}).get("holdout")
            if best:
                q = best["quality"]
                lines.append((f"  {kind}: {f['policy']['text']}: holdout {num(q['mean'])} [{num(q['ci_low'])}, "
                              f"{num(q['ci_high'])}], {_cost(best['cost_per_1k_usd'])}"
                              + (" (chosen)" if fams.get("winner") == kind else ""), None))
            elif kind in fams:
                lines.append((f"  {kind}: no admitted policy", None))
        if (fams.get("prerouter_vs_cascade") or {}).get("saving") is not None:
            lines.append((f"  pre-router vs cascade: {fams['prerouter_vs_cascade']['message']}", None))
        g = t["guarantee"]
        lines.append((f"  guarantee: {'holds' if g['holds'] else 'none'} ({g['method']}, delta {g['delta']:g})",
                      None))
        e = t["expected"]
        q = e["quality"]
        if e.get("n"):
            held = (f"  holdout: quality {num(q['mean'])} [{num(q['ci_low'])}, {num(q['ci_high'])}], "
                    f"{_cost(e['cost_per_1k_usd'])}, escalation {num(e['escalation_rate'], '.0%')}, n={e['n']}")
            lines.append((held, None))
        lines.append((f"  {'OK' if e['meets_target_on_holdout'] else 'WARNING'}: {e['message']}",
                      None if e["meets_target_on_holdout"] else "red"))
        b = t.get("baselines")
        if b:
            lines.append((f"  vs always-largest: {b['savings_vs_always_largest']['message']}", None))
        r = t.get("routellm")
        if r and r.get("apgr") is not None:
            route = (f"  RouteLLM: APGR {r['apgr']:.3f} (random 0.5), CPT(50%) {num(r['cpt_50'], '.0%')}, "
                     f"CPT(80%) {num(r['cpt_80'], '.0%')}")
            lines.append((route, None))
        if t["constraints"]["shaped_by"]:
            lines.append((f"  constraints that shaped it: {', '.join(t['constraints']['shaped_by'])}", None))
        tel = t.get("telemetry")
        if tel:
            lines.append((f"  telemetry ({tel['requests']} requests): {tel['verdict']}: {tel['message']}",
                          "red" if tel["verdict"] == "drift" else None))
        for note in t["notes"]:
            lines.append((f"  note: {note}", None))
    return lines


def run(args: argparse.Namespace) -> int:
    from bench.display import console

    targets = parse_targets(getattr(args, "target", None))
    telemetry = getattr(args, "telemetry", None)
    log = None
    if telemetry:
        from bench.thresholds.telemetry import read_log

        log = read_log(telemetry)  # a bad log fails before any calibration work
    tasks = gather(list(args.results), targets, getattr(args, "max_p95_latency", None))
    doc = build(tasks)
    if log is not None:
        from bench.thresholds.telemetry import drift

        for name, verdict in drift(doc, log).items():
            doc["tasks"][name]["telemetry"] = verdict | {"log": Path(str(telemetry)).name}
    path = write(doc, args.output)
    written = [str(path)]
    if getattr(args, "format", "bench") == "litellm":
        from bench.thresholds.litellm import litellm_config, litellm_path, litellm_serve_config

        lpath = litellm_path(path)
        serve_url = getattr(args, "serve_url", None)
        write_text_atomic(lpath, litellm_serve_config(doc, serve_url, source=Path(path).name) if serve_url
                          else litellm_config(doc, source=Path(path).name))
        written.append(str(lpath))
    for line, style in summary_lines(doc):
        console.print(line, style=style, markup=False, highlight=False, soft_wrap=True)
    console.print("wrote " + ", ".join(written), markup=False, highlight=False, soft_wrap=True)
    failed = sorted(name for name, t in doc["tasks"].items() if t["status"] == "failed_holdout")
    if failed:
        console.print(f"failed on holdout: {', '.join(failed)} (bench.router sends these to their fallback tier)",
                      style="red", markup=False, highlight=False, soft_wrap=True)
        return 1
    return 0
