"""The report's routing section: tiers, thresholds, expected quality, cost and escalation, and the savings.

routing.json comes from `bench thresholds` and is read by bench.routing_file (validated, as for the router); the
section shows the document as found: CONTRACT.md lets a writer add keys of any shape, so those are rendered
defensively and a newer writer's additions still appear.
"""

from __future__ import annotations

import json
from typing import Any

from bench.fmt import escape_html, html_num
from bench.results.schema import cell_label
from bench.routing_file import RoutingDoc

KNOWN_TASK_KEYS = ("target", "metric", "tiers", "default", "expected")
KNOWN_TOP_KEYS = ("schema_version", "created_at", "sources", "tasks")


e = escape_html  # every value from routing.json is escaped (None as empty)


def cell_text(cell: Any, detail: Any = None) -> str:
    """A routing.json cell as text: its short label where the tier's `cell_detail` (or a cell object) gives the
    model, else the cell id as it is."""
    if isinstance(detail, dict) and detail.get("model"):
        cell = detail
    if isinstance(cell, dict) and cell.get("model"):
        return cell_label({**cell, "backend": cell.get("backend") or "?"})
    if isinstance(cell, dict):
        return json.dumps(cell, sort_keys=True)
    return "—" if cell is None else str(cell)


def _number(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _quality(q: Any) -> tuple[float | None, float | None, float | None]:
    if isinstance(q, dict):
        return _number(q.get("mean")), _number(q.get("ci_low")), _number(q.get("ci_high"))
    return _number(q), None, None


def _quality_text(q: Any) -> str:
    mean, lo, hi = _quality(q)
    if mean is None:
        return "—"
    return f"{mean:.3f}" + ("" if lo is None or hi is None else f" [{lo:.3f}, {hi:.3f}]")


def _cost(d: dict[str, Any]) -> float | None:
    for k in ("cost_per_1k_usd", "cost_per_1k", "cost_per_1k_requests_usd"):
        if _number(d.get(k)) is not None:
            return _number(d.get(k))
    return None


def _obj(v: Any) -> dict[str, Any]:
    """A JSON object as found, or an empty one for anything else."""
    return v if isinstance(v, dict) else {}


def _seq(v: Any) -> list[Any]:
    """A JSON array as found, or an empty one for anything else."""
    return v if isinstance(v, list) else []


def routing_for_task(routing: RoutingDoc | None, task: dict[str, Any]) -> dict[str, Any] | None:
    """The routing entry for a report task (by suite name, else by task kind), as found, with its expected point."""
    if routing is None:
        return None
    tasks = routing.as_dict()["tasks"]
    entry = tasks.get(task["key"])
    if entry is None and task.get("kind"):
        entry = tasks.get(task["kind"])
    if not isinstance(entry, dict):
        return None
    expected = _obj(entry.get("expected"))
    q, cost = _quality(expected.get("quality"))[0], _cost(expected)
    point = {"quality": q, "cost_per_1k_usd": cost} if q is not None and cost is not None else None
    return {"entry": entry, "expected_point": point}


def render_routing(routing: RoutingDoc | None, path: str | None) -> str:
    """The whole routing section."""
    if routing is None:
        return ""
    doc = routing.as_dict()
    tasks = doc["tasks"]
    migrated = (f" · schema {routing.migrated_from}, read as {routing.schema_version}"
                if routing.migrated_from is not None else "")
    head = (f"<p class=\"meta\">from {e(path)} · created {e(doc.get('created_at') or '?')} · sources: "
            f"{e(', '.join(map(str, doc['sources'])) or '?')}{e(migrated)}</p>")
    extra = {k: v for k, v in doc.items() if k not in KNOWN_TOP_KEYS}
    body = "".join(_task(name, t) for name, t in tasks.items()) or '<p class="note">routing.json has no tasks</p>'
    more = f"<h3>Other fields</h3>{kv(extra)}" if extra else ""
    return (f'<section id="routing"><h2>Routing policy</h2>{head}<p class="note">Tiers are ordered cheapest '
            "first. A router sends each request to the default tier and accepts its answer when the signal reaches "
            "the threshold, else escalates to the next tier. Expected numbers are measured on holdout samples."
            f"</p>{body}{more}</section>")


def _task(name: str, t: Any) -> str:
    if not isinstance(t, dict):
        return f"<h3>{e(name)}</h3>{kv(t)}"
    tiers = _seq(t.get("tiers"))
    rows = []
    for i, tier in enumerate(tiers, 1):
        if not isinstance(tier, dict):
            rows.append(f"<tr><td>{i}</td><td colspan=\"7\">{kv(tier)}</td></tr>")
            continue
        meets = tier.get("meets_target")
        rows.append(
            f"<tr><td>{i}</td><td>{e(cell_text(tier.get('cell'), tier.get('cell_detail')))}</td>"
            f"<td>{e(tier.get('locality') or '—')}</td>"
            f"<td class=\"num\">{e(_quality_text(tier.get('quality')))}</td>"
            f"<td class=\"num\">{e(html_num(_cost(tier), '.4g'))}</td>"
            f"<td class=\"num\">{e(html_num(_number(tier.get('latency_p95_s')), '.3g'))}</td>"
            f"<td>{'—' if meets is None else ('yes' if meets else 'no')}</td>"
            f"<td>{e(_accept(tier.get('accept_if'), i == len(tiers), tier))}</td></tr>")
    table = ("<div class=\"scroll\"><table><thead><tr><th>#</th><th>tier (cell)</th><th>locality</th>"
             "<th>quality [95% CI]</th><th>$ / 1k req</th><th>p95 latency (s)</th><th>meets target alone</th>"
             f"<th>accept if</th></tr></thead><tbody>{''.join(rows)}</tbody></table></div>") if rows else (
        '<p class="note">no tiers</p>')
    expected = t.get("expected")
    exp_html = ""
    if isinstance(expected, dict):
        shown = {"quality": _quality_text(expected.get("quality")),
                 "cost per 1k requests ($)": html_num(_cost(expected), ".4g"),
                 "escalation rate": html_num(_number(expected.get("escalation_rate")), ".1%")}
        rest = {k: v for k, v in expected.items()
                if k not in ("quality", "cost_per_1k_usd", "cost_per_1k", "escalation_rate")}
        exp_html = f"<h4>Expected on holdout</h4>{kv({**shown, **rest})}"
    elif expected is not None:
        exp_html = f"<h4>Expected on holdout</h4>{kv(expected)}"
    extra = {k: v for k, v in t.items() if k not in KNOWN_TASK_KEYS and k != "families"}
    fam_html = _families(t.get("families"))
    saving = _savings_line(t)
    default = next((x.get("cell_detail") for x in tiers if isinstance(x, dict) and x.get("cell") == t.get("default")),
                   None)
    extra_html = (("<h4>Savings, baselines and constraints</h4>" + (f"<p><b>{e(saving)}</b></p>" if saving else "")
                   + kv(extra)) if extra else "")
    return (f"<h3>{e(name)}</h3><p class=\"meta\">metric {e(t.get('metric') or '?')} · target "
            f"{e(html_num(_number(t.get('target')), '.3g'))} · "
            f"default tier: <b>{e(cell_text(t.get('default'), default))}</b></p>"
            f"{table}{exp_html}{fam_html}{extra_html}")


def _families(f: Any) -> str:
    """Each policy family's cheapest admitted policy on holdout, the winner and why (the plot is in the task's
    section)."""
    if not isinstance(f, dict):
        return ""
    rows = []
    for kind in ("single", "cascade", "prerouter", "prerouter+cascade"):
        b = _obj(f.get(kind))
        best = _obj(b.get("best")).get("holdout")
        if not best:
            rows.append(f"<tr><td>{e(kind)}</td><td colspan=\"5\">no admitted policy</td></tr>")
            continue
        mix = ", ".join(f"{cell_text(a.get('cell'))} {a.get('share', 0):.0%}" for a in best.get("answered_by") or []
                        if isinstance(a, dict))
        rows.append(f"<tr><td>{e(kind)}{' (chosen)' if f.get('winner') == kind else ''}</td>"
                    f"<td>{e((b.get('policy') or {}).get('text'))}</td>"
                    f"<td class=\"num\">{e(_quality_text(best.get('quality')))}</td>"
                    f"<td class=\"num\">{e(html_num(_cost(best), '.4g'))}</td>"
                    f"<td class=\"num\">{e(html_num(_number(best.get('escalation_rate')), '.0%'))}</td>"
                    f"<td>{e(mix)}</td></tr>")
    vs = (f.get("prerouter_vs_cascade") or {}).get("message")
    return ("<h4>Policy families (cheapest admitted policy of each, on holdout)</h4><div class=\"scroll\"><table>"
            "<thead><tr><th>family</th><th>policy</th><th>quality [95% CI]</th><th>$ / 1k req</th>"
            f"<th>escalated</th><th>model mix</th></tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
            f"<p>{e(f.get('why'))}</p>" + (f"<p>{e(vs)}</p>" if vs else ""))


def _savings_line(t: dict[str, Any]) -> str | None:
    """The one-line verdict on savings, wherever the writer put it (a `*saving*` object with a `message`)."""
    holders = [t] + [v for v in t.values() if isinstance(v, dict)]
    for holder in holders:
        for k, v in holder.items():
            if "saving" in str(k) and isinstance(v, dict) and isinstance(v.get("message"), str):
                return v["message"]
    return None


def _accept(rule: Any, last: bool, tier: dict[str, Any]) -> str:
    if tier.get("eligible") is False:
        why = tier.get("excluded_because")
        return "not eligible: " + ("; ".join(map(str, why)) if isinstance(why, list) and why else str(why or "excluded"))
    if isinstance(rule, dict):
        signal = str(rule.get("signal") or "confidence")
        thr = _number(rule.get("threshold"))
        if signal in ("never", "always") and thr is None:
            return "never (not in the policy)" if signal == "never" else ("always (final tier)" if last else "always")
        if thr is None:
            return "always (final tier)" if last else f"{signal}: {rule.get('threshold')}"
        return f"{signal} ≥ {thr:.4g}"
    if rule is None:
        return "always (final tier)" if last else "—"
    return str(rule)


def kv(obj: Any, depth: int = 0) -> str:
    """Any JSON value as escaped HTML: objects as key/value tables, lists of objects as tables."""
    if isinstance(obj, dict):
        if not obj:
            return "—"
        if {"mean", "ci_low", "ci_high"} <= set(obj) and _number(obj.get("mean")) is not None:
            return e(_quality_text(obj) + (f" (n={obj['n']})" if isinstance(obj.get("n"), int) else ""))
        if depth > 3:
            return f"<pre>{e(json.dumps(obj, indent=1, default=str))}</pre>"
        rows = "".join(f"<tr><td>{e(k)}</td><td>{kv(v, depth + 1)}</td></tr>" for k, v in obj.items())
        return f'<table class="kv"><tbody>{rows}</tbody></table>'
    if isinstance(obj, list):
        if all(not isinstance(v, (dict, list)) for v in obj):
            return e(", ".join(_scalar(v) for v in obj)) or "—"
        if all(isinstance(v, dict) for v in obj) and depth <= 3:
            keys = list(dict.fromkeys(k for v in obj for k in v))[:12]
            head = "".join(f"<th>{e(k)}</th>" for k in keys)
            body = "".join("<tr>" + "".join(f"<td>{kv(v.get(k), depth + 1)}</td>" for k in keys) + "</tr>"
                           for v in obj)
            return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
        return f"<pre>{e(json.dumps(obj, indent=1, default=str))}</pre>"
    return e(_scalar(obj))


def _scalar(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
