"""The report's figures: pure functions from the data layer's flat rows to plotly figures (None: nothing to draw)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from bench.fmt import escape_html, html_num
from bench.report.data import frontier

PALETTE = ("#4C78A8", "#F58518", "#54A24B", "#E45756", "#72B7B2", "#B279A2", "#FF9DA6", "#9D755D", "#BAB0AC",
           "#EECA3B")
SYMBOLS = ("circle", "square", "diamond", "triangle-up", "cross", "x", "pentagon", "star-triangle-up")
ROW_PX = 26


def esc(text: Any) -> str:
    """Plotly renders a subset of HTML in every label, so text from runs is escaped before it gets there."""
    return escape_html(str(text), quote=False)


def _colors(values: list[str]) -> dict[str, str]:
    return {v: PALETTE[i % len(PALETTE)] for i, v in enumerate(dict.fromkeys(values))}


def _layout(fig: go.Figure, title: str, n_rows: int | None = None, height: int | None = None, **kw: Any) -> go.Figure:
    if height is None:
        height = max(320, 150 + ROW_PX * (n_rows or 8))
    fig.update_layout(template="plotly_white", title={"text": title, "x": 0.01, "xanchor": "left"}, height=height,
                      margin={"l": 10, "r": 20, "t": 70, "b": 50}, font={"size": 12}, **kw)
    fig.update_yaxes(automargin=True)
    return fig


def _hover(c: dict[str, Any]) -> str:
    ci = "" if c["ci_low"] is None else f" [{html_num(c['ci_low'])}, {html_num(c['ci_high'])}]"
    return (f"<b>{esc(c['label'])}</b><br>quality {html_num(c['quality'])}{ci}<br>"
            f"$/1k {html_num(c['cost_per_1k_usd'])}<br>p95 latency {html_num(c['latency_p95'])} s<br>"
            f"run {esc(c['run_id'])}")


# ---------------------------------------------------------------- quality against cost

def quality_cost(cells: list[dict[str, Any]], task: dict[str, Any], policy: dict[str, Any] | None = None,
                 ) -> go.Figure | None:
    """Quality (95% interval bars) against $ per 1k requests, the Pareto frontier marked, the target as a line."""
    scored = [c for c in cells if c["quality"] is not None]
    if not scored:
        return None
    metric = esc(task.get("metric") or scored[0]["metric"] or "quality")
    priced = [c for c in scored if c["cost_per_1k_usd"] is not None]
    colors = _colors([c["model"] for c in scored])
    symbols = {h: SYMBOLS[i % len(SYMBOLS)] for i, h in enumerate(dict.fromkeys(c["hardware"] for c in scored))}
    fig = go.Figure()
    if not priced:  # no cell has a price: quality alone, one row per cell
        for c in scored:
            fig.add_trace(_point(c, esc(c["label"]), colors, symbols, horizontal=True))
        title = (f"{esc(task['key'])}: {metric} per cell — no cell has a cost per 1k "
                 "(no hardware profile with $/hour, no price table entry)")
        fig.update_xaxes(title_text=metric)
        fig.update_yaxes(autorange="reversed")
        if task.get("target") is not None:
            fig.add_vline(x=task["target"], line={"dash": "dash", "color": "#999"},
                          annotation_text=f"target {html_num(task['target'])}", annotation_position="top")
        return _layout(fig, title, n_rows=len(scored), showlegend=False)
    else:
        for c in priced:
            fig.add_trace(_point(c, c["cost_per_1k_usd"], colors, symbols))
        keys = frontier([(c["cost_per_1k_usd"], c["quality"], c["key"]) for c in priced],
                        task.get("higher_is_better", True))
        front = [next(c for c in priced if c["key"] == k) for k in keys]
        fig.add_trace(go.Scatter(x=[c["cost_per_1k_usd"] for c in front], y=[c["quality"] for c in front],
                                 mode="lines+markers", line={"shape": "hv", "dash": "dot", "color": "#333"},
                                 marker={"size": 16, "symbol": "circle-open", "color": "#333", "line": {"width": 2}},
                                 name="cost-quality frontier", hoverinfo="skip"))
        costs = [c["cost_per_1k_usd"] for c in priced]
        if min(costs) > 0 and max(costs) / min(costs) > 30:
            fig.update_xaxes(type="log")
        missing = len(scored) - len(priced)
        title = f"{esc(task['key'])}: {metric} against cost per 1k requests"
        if missing:
            title += f" ({missing} cell(s) without a cost not shown)"
        fig.update_xaxes(title_text="$ per 1k requests")
        point = num_pair(policy) if policy else None
        if point:
            q, cost = point
            fig.add_trace(go.Scatter(x=[cost], y=[q], mode="markers", name="routing policy (expected, holdout)",
                                     marker={"symbol": "star", "size": 18, "color": "#E45756",
                                             "line": {"width": 1, "color": "#000"}},
                                     hovertext=[f"routing policy<br>quality {html_num(q)}<br>$/1k {html_num(cost)}"],
                                     hoverinfo="text"))
    if task.get("target") is not None:
        fig.add_hline(y=task["target"], line={"dash": "dash", "color": "#999"},
                      annotation_text=f"target {html_num(task['target'])}", annotation_position="top left")
    fig.update_yaxes(title_text=metric)
    return _layout(fig, title, height=460)


def num_pair(policy: dict[str, Any]) -> tuple[float, float] | None:
    q, cost = policy.get("quality"), policy.get("cost_per_1k_usd")
    if isinstance(q, (int, float)) and isinstance(cost, (int, float)):
        return float(q), float(cost)
    return None


def _point(c: dict[str, Any], at: Any, colors: dict[str, str], symbols: dict[str, str],
           horizontal: bool = False) -> go.Scatter:
    err = None
    if c["ci_low"] is not None and c["ci_high"] is not None:
        err = {"type": "data", "symmetric": False, "array": [max(c["ci_high"] - c["quality"], 0.0)],
               "arrayminus": [max(c["quality"] - c["ci_low"], 0.0)], "thickness": 1.5, "width": 4}
    xy = {"x": [c["quality"]], "y": [at], "error_x": err} if horizontal else {"x": [at], "y": [c["quality"]],
                                                                                "error_y": err}
    return go.Scatter(**xy, mode="markers", name=esc(c["label"]),
                      legendgroup=esc(c["model"]),
                      marker={"size": 11, "color": colors[c["model"]], "symbol": symbols[c["hardware"]]},
                      hovertext=[_hover(c)], hoverinfo="text")


# ---------------------------------------------------------------- speed, memory, latency

def speed(cells: list[dict[str, Any]], title: str) -> go.Figure | None:
    """Prefill and decode tokens/s per cell, coloured by machine, with the roofline decode ceiling where known."""
    rows = [c for c in cells if c["prefill_tps"] is not None or c["decode_tps"] is not None]
    if not rows:
        return None
    fig = make_subplots(rows=1, cols=2, shared_yaxes=True, horizontal_spacing=0.04,
                        subplot_titles=("prefill tokens/s", "decode tokens/s"))
    colors = _colors([c["hardware"] for c in rows])
    for hw, color in colors.items():
        mine = [c for c in rows if c["hardware"] == hw]
        labels = [esc(c["label"]) for c in mine]
        for col, field in ((1, "prefill_tps"), (2, "decode_tps")):
            fig.add_trace(go.Bar(x=[c[field] for c in mine], y=labels, orientation="h", name=esc(hw),
                                 legendgroup=esc(hw), showlegend=col == 1, marker_color=color,
                                 hovertext=[f"{lab}<br>{html_num(c[field], '.4g')} tok/s"
                                            + (f"<br>bandwidth utilization {c['bandwidth_utilization']:.0%}"
                                               if col == 2 and c["bandwidth_utilization"] is not None else "")
                                            for lab, c in zip(labels, mine)], hoverinfo="text"),
                          row=1, col=col)
    ceil = [c for c in rows if c["decode_ceiling_tps"] is not None]
    if ceil:
        fig.add_trace(go.Scatter(x=[c["decode_ceiling_tps"] for c in ceil], y=[esc(c["label"]) for c in ceil],
                                 mode="markers", name="roofline decode ceiling",
                                 marker={"symbol": "line-ns-open", "size": 20, "line": {"width": 3, "color": "#000"},
                                         "color": "#000"},
                                 hovertext=[f"{esc(c['label'])}<br>ceiling "
                                            f"{html_num(c['decode_ceiling_tps'], '.4g')} tok/s" for c in ceil],
                                 hoverinfo="text"), row=1, col=2)
    else:
        title += " (decode ceiling unknown: no memory bandwidth for these machines)"
    fig.update_layout(barmode="overlay")
    fig.update_yaxes(autorange="reversed", categoryorder="array", categoryarray=[esc(c["label"]) for c in rows])
    return _layout(fig, title, n_rows=len(rows))


def memory(cells: list[dict[str, Any]], title: str) -> go.Figure | None:
    """Peak resident memory (and the model's own share, and GPU memory where measured) per cell."""
    rows = [c for c in cells if c["peak_rss_mb"] is not None or c["peak_gpu_mb"] is not None]
    if not rows:
        return None
    fig = go.Figure()
    labels = [esc(c["label"]) for c in rows]
    for field, name, color in (("peak_rss_mb", "peak RAM (RSS)", PALETTE[0]),
                               ("model_rss_mb", "RAM the model added", PALETTE[2]),
                               ("peak_gpu_mb", "peak GPU memory", PALETTE[1])):
        if any(c[field] is not None for c in rows):
            fig.add_trace(go.Bar(x=[c[field] for c in rows], y=labels, orientation="h", name=name,
                                 marker_color=color, hovertext=[f"{lab}<br>{name}: {html_num(c[field], '.4g')} MB"
                                                                for lab, c in zip(labels, rows)], hoverinfo="text"))
    fig.update_layout(barmode="group")
    fig.update_xaxes(title_text="MB")
    fig.update_yaxes(autorange="reversed")
    return _layout(fig, title, n_rows=len(rows) * 2)


def latency(cells: list[dict[str, Any]], dists: dict[str, dict[str, list[float]]], title: str) -> go.Figure | None:
    """TTFT and end-to-end latency per cell as box plots of the per-sample values."""
    rows = [c for c in cells if dists.get(c["key"], {}).get("ttft") or dists.get(c["key"], {}).get("latency")]
    if not rows:
        return None
    fig = make_subplots(rows=1, cols=2, shared_yaxes=True, horizontal_spacing=0.04,
                        subplot_titles=("time to first token (s)", "end-to-end latency (s)"))
    colors = _colors([c["model"] for c in rows])
    for c in rows:
        for col, field in ((1, "ttft"), (2, "latency")):
            values = np.asarray(dists[c["key"]].get(field) or [], dtype=float)  # arrays skip plotly's slow checks
            fig.add_trace(go.Box(x=values, name=esc(c["label"]), orientation="h", boxpoints="outliers",
                                 marker={"color": colors[c["model"]], "size": 3}, line={"width": 1},
                                 showlegend=False), row=1, col=col)
    fig.update_yaxes(autorange="reversed")
    spread = [v for c in rows for f in ("ttft", "latency") for v in dists[c["key"]].get(f) or [] if v > 0]
    if spread and max(spread) / min(spread) > 100:
        fig.update_xaxes(type="log")
    return _layout(fig, title, n_rows=len(rows))


def quant_cost(deltas: list[dict[str, Any]], task: dict[str, Any]) -> go.Figure | None:
    """What each quantization costs in quality: its paired difference from the best quantization of the model."""
    if not deltas:
        return None
    fig = go.Figure()
    colors = _colors([d["model"] for d in deltas])
    for model, color in colors.items():
        mine = [d for d in deltas if d["model"] == model]
        err_hi = [None if d["ci_high"] is None else max(d["ci_high"] - d["delta"], 0.0) for d in mine]
        err_lo = [None if d["ci_low"] is None else max(d["delta"] - d["ci_low"], 0.0) for d in mine]
        fig.add_trace(go.Bar(
            x=[d["delta"] for d in mine], y=[esc(d["label"]) for d in mine], orientation="h", name=esc(model),
            marker_color=color, text=["best" if d["is_best"] else "" for d in mine], textposition="outside",
            error_x={"type": "data", "symmetric": False, "array": [v or 0.0 for v in err_hi],
                     "arrayminus": [v or 0.0 for v in err_lo], "thickness": 1.2},
            hovertext=[f"{esc(d['label'])}<br>vs {esc(d['best_quantization'])}: {d['delta']:+.4f}"
                       + ("" if d["ci_low"] is None else f" [{d['ci_low']:+.4f}, {d['ci_high']:+.4f}]")
                       + (f"<br>paired on {d['n']} samples" if d["n"] else "") for d in mine],
            hoverinfo="text"))
    lo = min([d["ci_low"] if d["ci_low"] is not None else d["delta"] for d in deltas] + [0.0])
    fig.update_xaxes(title_text=f"{esc(task.get('metric') or 'quality')} minus the best quantization's",
                     zeroline=True, zerolinewidth=2, range=[lo * 1.25 - 0.02, max(0.05, -lo * 0.25)]
                     if task.get("higher_is_better", True) and math.isfinite(lo) else None)
    fig.update_yaxes(autorange="reversed")
    return _layout(fig, f"{esc(task['key'])}: the quality each quantization costs (paired, 95% interval)",
                   n_rows=len(deltas))


FAMILY_KINDS = ("single", "cascade", "prerouter", "prerouter+cascade")


def families(entry: dict[str, Any] | None, title: str) -> go.Figure | None:
    """Holdout cost against quality of every admitted policy, one trace per policy family; each family's best
    ringed and the chosen policy starred. None where the routing entry compares no families."""
    fams = (entry or {}).get("families")
    if not isinstance(fams, dict):
        return None
    basis = "usd" if fams.get("cost_basis") == "usd" else "latency"
    key = "cost_per_1k_usd" if basis == "usd" else "latency_mean_s"
    fig = go.Figure()
    drawn = False
    for i, kind in enumerate(FAMILY_KINDS):
        block: dict[str, Any] = fams[kind] if isinstance(fams.get(kind), dict) else {}
        pts = [p for p in block.get("points") or [] if isinstance(p, dict) and p.get(key) is not None
               and p.get("quality") is not None]
        if not pts:
            continue
        drawn = True
        color = PALETTE[i % len(PALETTE)]
        fig.add_trace(go.Scatter(x=[p[key] for p in pts], y=[p["quality"] for p in pts], mode="markers",
                                 name=f"{kind} ({block.get('admissible', len(pts))} admitted)",
                                 marker={"color": color, "size": 7, "opacity": 0.6},
                                 hovertext=[esc(p.get("text", "")) for p in pts], hoverinfo="text+x+y"))
        best: dict[str, Any] = ((block.get("best") or {}).get("holdout") or {})
        bq, bc = (best.get("quality") or {}).get("mean"), best.get(key)
        if bq is not None and bc is not None:
            chosen = fams.get("winner") == kind
            fig.add_trace(go.Scatter(
                x=[bc], y=[bq], mode="markers", showlegend=chosen, name="chosen policy" if chosen else kind,
                marker={"color": color, "size": 18 if chosen else 13, "symbol": "star" if chosen else "circle-open",
                        "line": {"width": 2, "color": "#222" if chosen else color}},
                hovertext=[esc(((block.get("policy") or {}).get("text") or kind) + (" (chosen)" if chosen else ""))],
                hoverinfo="text+x+y"))
    if not drawn:
        return None
    target = entry.get("target") if isinstance(entry, dict) else None
    if isinstance(target, (int, float)):
        fig.add_hline(y=target, line_dash="dot", line_color="#888", annotation_text=f"target {target:g}")
    xlabel = "$ per 1k requests (holdout)" if basis == "usd" else "mean seconds per request (holdout)"
    return _layout(fig, title, height=420, xaxis_title=xlabel, yaxis_title="quality (holdout)")
