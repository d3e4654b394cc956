"""The report page: sections, tables and figure slots, with plotly.js embedded once and all run text escaped."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

import plotly.graph_objects as go

from bench import __version__
from bench.fmt import escape_html, html_num
from bench.report import figures as F
from bench.report.data import INPUT_CHARS, OUTPUT_CHARS, ReportData, quant_deltas
from bench.report.routing import render_routing, routing_for_task

CONFIG = {"displaylogo": False, "responsive": True}


e = escape_html  # anything as HTML text or a quoted attribute


def script_json(text: str) -> str:
    """JSON made safe inside <script>: no `</script>`, `<!--` or line separator can end or bend the block."""
    return (text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


class Page:
    """Collects the figures in the order they appear, each with a slot id."""

    def __init__(self) -> None:
        self.figures: list[tuple[str, str, go.Figure]] = []

    def slot(self, fig: go.Figure | None, name: str, missing: str) -> str:
        if fig is None:
            return f'<p class="note">{e(missing)}</p>'
        fid = f"fig-{len(self.figures) + 1}"
        self.figures.append((fid, name, fig))
        return f'<div class="figure" id="{fid}"></div>'


def build_page(data: ReportData) -> tuple[str, list[tuple[str, str, go.Figure]]]:
    """The HTML text and the figures in it as (slot id, file-friendly name, figure)."""
    import plotly.io as pio
    from plotly.offline import get_plotlyjs

    page = Page()
    tasks_html = "".join(_task_section(data, t, i, page) for i, t in enumerate(data.tasks, 1))
    routing_html = render_routing(data.routing, data.routing_path) if data.routing is not None else ""
    body = "\n".join([_header(data), _overview(data), tasks_html, routing_html, _examples(data)])
    payload = "[" + ",".join(json.dumps({"id": fid})[:-1] + ',"figure":' + pio.to_json(fig, validate=False) + "}"
                             for fid, _, fig in page.figures) + "]"
    html = TEMPLATE.format(title=e(f"bench report: {', '.join(t['key'] for t in data.tasks)}"), css=CSS,
                           body=body, n_figures=len(page.figures), plotly=get_plotlyjs(),
                           payload=script_json(payload), driver=DRIVER)
    return html, page.figures


def render_report(data: ReportData) -> str:
    return build_page(data)[0]


# ---------------------------------------------------------------- sections

def _header(data: ReportData) -> str:
    machines = sorted({c["hardware"] for c in data.cells})
    runs = "".join(f"<tr><td>{e(r['run_id'])}</td><td>{e(r['task'])}</td><td>{e(r['hardware'])}</td>"
                   f"<td>{e(r['started_at'])}</td><td>{e(r['finished_at'] or 'unfinished')}</td>"
                   f"<td>{r['n_samples']}</td><td class=\"path\">{e(r['path'])}</td></tr>" for r in data.runs)
    toc = "".join(f'<li><a href="#task-{i}">{e(t["key"])}</a></li>' for i, t in enumerate(data.tasks, 1))
    if data.routing is not None:
        toc += '<li><a href="#routing">routing policy</a></li>'
    now = datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
    return (f"<header><h1>bench report</h1><p class=\"meta\">{len(data.cells)} cells · {len(data.tasks)} task(s) · "
            f"{len(data.runs)} run(s) · machines: {e(', '.join(machines))} · generated {e(now)} by bench "
            f"{e(__version__)}</p><nav><ul><li><a href=\"#overview\">overview</a></li>{toc}"
            f"<li><a href=\"#examples\">example answers</a></li></ul></nav>"
            f"<details><summary>runs</summary><div class=\"scroll\"><table><thead><tr><th>run</th><th>suite</th>"
            f"<th>hardware</th><th>started</th><th>finished</th><th>samples</th><th>path</th></tr></thead>"
            f"<tbody>{runs}</tbody></table></div></details></header>")


OVERVIEW_COLS = ("task", "model", "quant", "backend", "hardware", "run", "n", "errors", "quality [95% CI]",
                 "TTFT p50 / p95 (s)", "latency p50 / p95 (s)", "prefill tok/s", "decode tok/s (ceiling)",
                 "peak RAM (MB)", "$ / 1k req", "bandwidth util.")


def _overview(data: ReportData) -> str:
    rows = []
    for c in data.cells:
        quality = "—" if c["quality"] is None else (
            f"{c['quality']:.3f}" + ("" if c["ci_low"] is None else f" [{c['ci_low']:.3f}, {c['ci_high']:.3f}]"))
        errors = (f'<td class="num bad" title="{e("; ".join(c["error_examples"]))}">{c["errors"]}</td>'
                  if c["errors"] else '<td class="num">0</td>')
        decode = html_num(c["decode_tps"], ".1f") + ("" if c["decode_ceiling_tps"] is None
                                               else f" ({c['decode_ceiling_tps']:.0f})")
        cells = [e(c["task"]), e(c["model"]), e(c["quantization"] or "—"), e(c["backend"]), e(c["hardware"]),
                 f"<small>{e(c['run_id'])}</small>"]
        rows.append("<tr>" + "".join(f"<td>{v}</td>" for v in cells) + f'<td class="num">{c["n"]}</td>' + errors
                    + "".join(f'<td class="num">{v}</td>' for v in (
                        e(quality),
                        f"{html_num(c['ttft_p50'])} / {html_num(c['ttft_p95'])}",
                        f"{html_num(c['latency_p50'])} / {html_num(c['latency_p95'])}",
                        html_num(c["prefill_tps"], ".1f"), decode, html_num(c["peak_rss_mb"], ".0f"),
                        html_num(c["cost_per_1k_usd"], ".4g"), html_num(c["bandwidth_utilization"], ".0%")))
                    + "</tr>")
    head = "".join(f"<th>{e(h)}</th>" for h in OVERVIEW_COLS)
    return (f'<section id="overview"><h2>Overview</h2><p class="note">One row per cell (model × quantization × '
            f"backend × machine) of every run. Quality is the suite's metric over every scored sample with its 95% "
            f"interval; tokens/s are token-weighted; the decode ceiling is the roofline limit from the machine's "
            f'memory bandwidth.</p><div class="scroll"><table class="overview"><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table></div>{_load_table(data)}</section>")


LOAD_COLS = ("task", "model", "quant", "backend", "run", "latency measured", "loaded p95 latency (s)",
             "req/s @ concurrency", "cost basis", "changed answers")


def _load_table(data: ReportData) -> str:
    """Cells run several requests at once (--parallel) or at several concurrency levels (--concurrency): where
    their per-request latency comes from, their throughput, and the answers that changed with the batch size."""
    cells = [c for c in data.cells if c.get("throughput") is not None or c.get("changed_answers") is not None]
    if not cells:
        return ""
    rows = "".join(
        "<tr>" + "".join(f"<td>{v}</td>" for v in (e(c["task"]), e(c["model"]), e(c["quantization"] or "—"),
                                                     e(c["backend"]), f"<small>{e(c['run_id'])}</small>",
                                                     e(c.get("latency_basis") or "—")))
        + f'<td class="num">{html_num(c.get("loaded_latency_p95"))}'
        + (f" @ {e(c['loaded_concurrency'])}" if c.get("loaded_concurrency") else "") + "</td>"
        + f'<td class="num">{e(c.get("throughput") or "—")}</td><td>{e(c.get("cost_basis") or "—")}</td>'
        + f'<td class="num">{e(c.get("changed_answers") or "—")}</td></tr>' for c in cells)
    head = "".join(f"<th>{e(h)}</th>" for h in LOAD_COLS)
    return ("<h3>Batched passes and concurrency levels</h3><p class=\"note\">With several requests in flight "
            "(--parallel N), per-request latency, TTFT and token rates are taken from a timing pass at concurrency 1 "
            "over the first samples (the overview shows those); the main pass's loaded latency stays beside them. "
            "Changed answers: the share of samples whose greedy answer differs between two concurrencies (batch size "
            f'can flip a near-tie).</p><div class="scroll"><table class="overview"><thead><tr>{head}</tr></thead>'
            f"<tbody>{rows}</tbody></table></div>")


def _task_section(data: ReportData, task: dict[str, Any], i: int, page: Page) -> str:
    cells = data.task_cells(task["key"])
    name = task["key"]
    policy = routing_for_task(data.routing, task)
    deltas = quant_deltas(cells, data.scores, task.get("higher_is_better", True))
    head = (f'<section id="task-{i}"><h2>Task: {e(name)}</h2><p class="meta">kind {e(task.get("kind") or "?")} · '
            f"metric {e(task.get('metric') or '?')} · target {html_num(task.get('target'))} · {len(cells)} cell(s)</p>"
            + (f"<p>{e(task['description'])}</p>" if task.get("description") else ""))
    parts = [
        "<h3>Quality against cost</h3>",
        page.slot(F.quality_cost(cells, task, (policy or {}).get("expected_point")), f"{name}-quality-cost",
                  "no cell of this task has a quality score"),
        *(["<h3>Routing: every policy family, cost against quality</h3>",
            page.slot(F.families(policy["entry"], f"{e(name)}: admitted policies per family on holdout "
                                 "(ringed: each family's cheapest; star: the chosen one)"), f"{name}-families",
                      "no policy family was admitted for this task")]
          if policy and isinstance(policy["entry"].get("families"), dict) else []),
        "<h3>The quality each quantization costs</h3>",
        page.slot(F.quant_cost(deltas, task), f"{name}-quantization",
                  "each model ran at one quantization only on each machine: nothing to compare"),
        _delta_table(deltas),
        "<h3>Speed</h3>",
        page.slot(F.speed(cells, f"{e(name)}: prefill and decode tokens/s by model, quantization and machine"),
                  f"{name}-speed", "no timing was recorded"),
        "<h3>Memory</h3>",
        page.slot(F.memory(cells, f"{e(name)}: peak memory by model and quantization"), f"{name}-memory",
                  "no memory was recorded"),
        "<h3>Latency distributions</h3>",
        page.slot(F.latency(cells, data.dists, f"{e(name)}: TTFT and end-to-end latency per sample"),
                  f"{name}-latency", "no per-sample latency was recorded"),
    ]
    return head + "".join(parts) + "</section>"


def _delta_table(deltas: list[dict[str, Any]]) -> str:
    if not deltas:
        return ""
    rows = "".join(
        f"<tr><td>{e(d['model'])}</td><td>{e(d['backend'])}</td><td>{e(d['hardware'])}</td>"
        f"<td>{e(d['quantization'] or '—')}</td><td class=\"num\">{html_num(d['quality'], '.3f')}</td>"
        f"<td class=\"num\">{'best' if d['is_best'] else html_num(d['delta'], '+.3f')}</td>"
        f"<td class=\"num\">{_ci(d)}"
        f"</td><td class=\"num\">{'' if d['is_best'] else (d['n'] or 'unpaired')}</td></tr>" for d in deltas)
    return ("<div class=\"scroll\"><table><thead><tr><th>model</th><th>backend</th><th>hardware</th><th>quant</th>"
            "<th>quality</th><th>vs best</th><th>95% CI</th><th>paired n</th></tr></thead>"
            f"<tbody>{rows}</tbody></table></div>")


def _ci(d: dict[str, Any]) -> str:
    if d["is_best"] or d["ci_low"] is None:
        return ""
    return f"[{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]"


def _examples(data: ReportData) -> str:
    blocks = []
    for task in data.tasks:
        for ex in data.examples.get(task["key"], []):
            answers = "".join(
                f"<tr><td>{e(a['label'])}</td><td><pre>{_cut(a['output'], OUTPUT_CHARS)}</pre></td>"
                f"<td class=\"num\">{html_num(a['score'], '.3f')}</td><td>{e('yes' if a['verified'] else 'no')}</td>"
                f"<td class=\"bad\">{e(a['error'] or '')}</td></tr>" for a in ex["answers"])
            src = ""
            if ex["input"] is not None:
                src += f"<div><b>input</b><pre>{_cut(ex['input'], INPUT_CHARS)}</pre></div>"
            if ex["reference"] is not None:
                src += f"<div><b>reference</b><pre>{_cut(ex['reference'], INPUT_CHARS)}</pre></div>"
            blocks.append(f"<div class=\"example\"><h4>{e(task['key'])} · sample {e(ex['sample_id'])} "
                          f"<small>({e(ex['split'] or '?')})</small></h4><div class=\"source\">{src}</div>"
                          "<div class=\"scroll\"><table class=\"answers\"><thead><tr><th>cell</th><th>answer</th>"
                          "<th>score</th><th>verified</th><th>error</th></tr></thead>"
                          f"<tbody>{answers}</tbody></table></div></div>")
    return ('<section id="examples"><h2>Example answers</h2><p class="note">Per task, the samples on which the '
            "cells disagree most (and one that failed, where any did), with every cell's answer as it came back."
            f"</p>{''.join(blocks) or '<p class=note>no samples</p>'}</section>")


def _cut(text: str | None, limit: int) -> str:
    if text is None:
        return '<span class="note">(none)</span>'
    return e(text[:limit]) + (' <span class="note">[cut]</span>' if len(text) > limit else "")


CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1500px;
padding:0 24px 60px;color:#222}
h1{margin:18px 0 4px}h2{border-bottom:2px solid #4C78A8;padding-bottom:4px;margin-top:38px}h3{margin:26px 0 6px}
.meta,.note{color:#666}.note{font-size:13px}.bad{color:#b3261e}
nav ul{display:flex;flex-wrap:wrap;gap:6px 16px;list-style:none;padding:0}nav a{color:#4C78A8}
table{border-collapse:collapse;font-size:12.5px;margin:6px 0}th,td{border:1px solid #ddd;padding:3px 7px;
vertical-align:top;text-align:left}th{background:#f3f5f8;position:sticky;top:0}td.num{text-align:right;
white-space:nowrap}td.path{font-family:monospace;font-size:11px}.scroll{overflow-x:auto;max-width:100%}
tbody tr:nth-child(even){background:#fafbfc}table.overview td{white-space:nowrap}
pre{white-space:pre-wrap;word-break:break-word;margin:0;max-height:14em;overflow:auto;font-size:12px}
.figure{width:100%;min-height:300px;margin:4px 0 10px}.example{margin:14px 0 22px}.source{display:flex;gap:18px}
.source>div{flex:1;background:#f7f7f7;padding:6px}.answers td:nth-child(2){min-width:420px}
table.kv td:first-child{color:#555;white-space:nowrap}
"""

DRIVER = """
(function () {
  var specs = JSON.parse(document.getElementById('bench-figures').textContent);
  var config = CONFIG_JSON;
  var jobs = specs.map(function (s) {
    return Plotly.newPlot(s.id, s.figure.data, s.figure.layout, config);
  });
  Promise.all(jobs).then(function () {
    document.body.setAttribute('data-figures-drawn', String(jobs.length));
  }, function (err) {
    document.body.setAttribute('data-figures-failed', String(err));
    console.error('bench report: a figure failed to draw: ' + err);
  });
})();
""".replace("CONFIG_JSON", json.dumps(CONFIG))

TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<script>/* page diagnostics: uncaught errors and console.error calls are counted on <html> */
window.benchErrors=[];(function(){{var root=document.documentElement;
function note(kind,msg){{window.benchErrors.push(kind+': '+msg);root.setAttribute('data-'+kind,
String(window.benchErrors.filter(function(m){{return m.indexOf(kind+':')===0;}}).length));}}
window.addEventListener('error',function(ev){{note('js-errors',String(ev.message));}});
window.addEventListener('unhandledrejection',function(ev){{note('js-errors',String(ev.reason));}});
var orig=console.error;console.error=function(){{note('console-errors',Array.prototype.join.call(arguments,' '));
return orig.apply(console,arguments);}};}})();</script>
<style>{css}</style></head>
<body data-figures-expected="{n_figures}">
{body}
<script type="text/javascript">/* plotly.js, embedded so the page works offline */
{plotly}</script>
<script type="application/json" id="bench-figures">{payload}</script>
<script>{driver}</script>
</body></html>
"""
