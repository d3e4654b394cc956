"""The report's data layer: loads runs once into flat per-cell rows, latency samples and example answers."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.errors import UserInputError
from bench.results.derive import suite_summary
from bench.results.load import SuiteRuns, latest_rows, load_runs
from bench.results.schema import cell_label
from bench.routing_file import RoutingDoc
from bench.stats import paired_bootstrap_diff

MAX_DIST = 2000         # latency values kept per cell for the distribution plots (quantiles of the rest)
EXAMPLE_SAMPLES = 3     # samples per task shown with every cell's answer
OUTPUT_CHARS = 1200     # an answer longer than this is cut in the examples table
INPUT_CHARS = 600       # likewise the dataset text beside it
DATASET_MAX_BYTES = 64 * 2**20


@dataclass
class ReportData:
    """Everything the page shows, already flat: figures and tables are pure functions of it."""

    runs: list[dict[str, Any]] = field(default_factory=list)
    tasks: list[dict[str, Any]] = field(default_factory=list)
    cells: list[dict[str, Any]] = field(default_factory=list)
    dists: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    scores: dict[str, dict[str, float]] = field(default_factory=dict)
    examples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    routing: RoutingDoc | None = None
    routing_path: str | None = None

    def task_cells(self, task: str) -> list[dict[str, Any]]:
        return [c for c in self.cells if c["task"] == task]


def num(value: Any) -> float | None:
    """A finite float, or None for anything else (null, NaN, a string)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    f = float(value)
    return f if math.isfinite(f) else None


def _get(doc: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(doc, dict):
            return None
        doc = doc.get(k)
    return doc


def thin(values: list[float], limit: int = MAX_DIST) -> list[float]:
    """Keep a distribution's shape with at most `limit` points: evenly spaced quantiles of the sorted values."""
    if len(values) <= limit:
        return values
    arr = np.sort(np.asarray(values, dtype=float))
    return np.quantile(arr, np.linspace(0.0, 1.0, limit)).round(6).tolist()


def load_routing(path: str | Path) -> RoutingDoc:
    """Read a routing.json through the one routing loader (bench.routing_file), validated as every reader does:
    the report shows a policy a router would follow, never a file the router refuses."""
    from bench.routing_file import load_routing as load

    return load(path, flag="--routing")


def load_report_data(results: list[str | Path], routing: str | Path | None = None) -> ReportData:
    """Load every run at or below `results` into flat rows (each run read once), cells merged across the runs of
    a suite by bench.results.load's rule: the latest row per cell and sample."""
    if not results:
        raise UserInputError("no results directories given", field="RESULTS")
    data = ReportData()
    if routing:
        data.routing = load_routing(routing)
        data.routing_path = str(routing)
    found = load_runs(list(results), lean=True, need_suite_name=False)  # summary.json holds the timings' figures
    datasets: dict[str, dict[str, Any]] = {}
    outputs: dict[str, dict[str, tuple]] = {}
    for suite in found.suites.values():
        _load_suite(suite, data, datasets, outputs)
    if not data.cells:
        raise UserInputError("no cells found: the runs have no samples yet",
                             file=", ".join(str(r) for r in results))
    _disambiguate(data.cells)
    data.cells.sort(key=lambda c: (c["task"], c["model"], c["quantization"] or "", c["backend"], c["hardware"],
                                   c["run_id"]))
    for task in data.tasks:
        data.examples[task["key"]] = _examples(data.task_cells(task["key"]), data.scores, outputs,
                                               datasets.get(task["key"]))
    return data


def _summaries(suite: SuiteRuns) -> dict[int, dict[str, Any]]:
    """Each run's summary.json; a run still going (or killed) is summarised from its samples, as `bench run`
    would; a run with neither is left out."""
    from bench.results.derive import derive_summary

    out: dict[int, dict[str, Any]] = {}
    for run in suite.runs:
        summary = run.summary()
        if summary is None and run.rows:
            summary = derive_summary(run.dir)
        if summary is not None:
            out[id(run)] = summary
    return out


def _load_suite(suite: SuiteRuns, data: ReportData, datasets: dict[str, dict[str, Any]],
                outputs: dict[str, dict[str, tuple]]) -> None:
    summaries = _summaries(suite)
    task = suite.name
    for run in suite.runs:
        if id(run) not in summaries:
            continue
        summary = summaries[id(run)]
        info, kind = run.manifest.suite, run.manifest.suite.task or summary.get("task")
        if task not in {t["key"] for t in data.tasks}:
            config = info.config or {}
            data.tasks.append({"key": task, "kind": kind, "metric": info.metric,
                               "target": num(info.target if info.target is not None else summary.get("target")),
                               "higher_is_better": _higher_is_better(kind),
                               "description": config.get("description") or ""})
            datasets[task] = {"config": config.get("dataset") or {}, "suite_path": info.path}
        hw = run.manifest.hardware
        data.runs.append({"run_id": run.run_id, "task": task, "path": str(run.path),
                          "started_at": run.manifest.started_at, "finished_at": run.manifest.finished_at,
                          "hardware": hw.profile or hw.note, "bench_version": run.manifest.bench_version,
                          "n_samples": len(latest_rows(run.rows))})
    suite_doc = suite.latest.manifest.suite.model_dump()
    merged: dict[str, dict[str, Any]] | None = None
    for cid, cell in suite.cells.items():
        runs = cell.runs
        own = summaries.get(id(runs[0])) if len(runs) == 1 else None
        c = next((c for c in (own or {}).get("cells") or [] if isinstance(c, dict) and c.get("cell_id") == cid
                  and c.get("n") == len(cell.rows)), None)
        last = runs[0] if c is not None else cell.run
        if c is None:  # rows of several runs, or a stale summary (a resume killed before it rewrote summary.json)
            merged = suite_summary(suite) if merged is None else merged
            c = merged.get(cid)
        if c is None or last is None or id(last) not in summaries:
            continue
        _add_cell(c, list(cell.rows.values()), task, last.run_id, suite_doc, data, outputs)
    for run in suite.runs:  # cells a summary lists though samples.jsonl no longer holds them: the summary alone
        for c in (summaries.get(id(run)) or {}).get("cells") or []:
            if isinstance(c, dict) and str(c.get("cell_id")) not in suite.cells:
                _add_cell(c, [], task, run.run_id, suite_doc, data, outputs)


def _add_cell(c: dict[str, Any], rows: list[dict[str, Any]], task: str, run_id: str, suite: dict[str, Any],
              data: ReportData, outputs: dict[str, dict[str, tuple]]) -> None:
    """One cell of the page: its summary numbers flat, its latency distributions, scores and answers."""
    if not isinstance(c.get("cell"), dict):
        return
    row = _flat_cell(c, task, run_id, suite)
    data.cells.append(row)
    key = row["key"]
    ttft, lat, scores, outs = [], [], {}, {}
    # a cell run several at once (--parallel) shows its concurrency-1 pass's latencies, as its summary does, not the
    # main pass's rows, which were timed under load
    idle = bool(c.get("loaded_latency"))
    for r in rows:
        sid = str(r.get("sample_id"))
        score = num(r.get("score"))
        if not r.get("error"):
            if not idle and (t := num(r.get("ttft_s"))) is not None:
                ttft.append(t)
            if not idle and (t := num(r.get("latency_s"))) is not None:
                lat.append(t)
            if score is not None:
                scores[sid] = score
        out = r.get("output")
        outs[sid] = (r.get("split"), None if out is None else str(out)[:OUTPUT_CHARS + 1], score,
                     r.get("verified"), r.get("error"))
    if not ttft:
        ttft = [v for v in map(num, c.get("ttft_raw_s") or []) if v is not None]
    if not lat:
        lat = [v for v in map(num, c.get("latency_raw_s") or []) if v is not None]
    data.dists[key] = {"ttft": thin(ttft), "latency": thin(lat)}
    data.scores[key] = scores
    outputs[key] = outs


def _higher_is_better(kind: Any) -> bool:
    try:
        from bench.tasks.base import get_task

        return bool(get_task(str(kind)).higher_is_better)
    except (UserInputError, ImportError, AttributeError):  # an unknown or newer kind: higher is better by convention
        return True


def _flat_cell(c: dict[str, Any], task: str, run_id: str, suite: dict[str, Any]) -> dict[str, Any]:
    cell = c["cell"]
    q: dict[str, Any] = c["quality"] if isinstance(c.get("quality"), dict) else {}
    cell_id = str(c.get("cell_id") or cell)
    return {
        "key": f"{run_id}|{cell_id}", "task": task, "run_id": run_id, "cell_id": cell_id, "cell": cell,
        "model": str(cell.get("model") or "?"), "quantization": cell.get("quantization"),
        "backend": str(cell.get("backend") or "?"), "hardware": str(cell.get("hardware") or "?"),
        "label": cell_label({**cell, "model": cell.get("model") or "?", "backend": cell.get("backend") or "?"}),
        "locality": c.get("locality"), "n": int(num(c.get("n")) or 0), "errors": int(num(c.get("errors")) or 0),
        "error_examples": [str(e) for e in (c.get("error_examples") or [])][:3],
        "metric": q.get("metric") or suite.get("metric"),
        "quality": num(q.get("mean")), "ci_low": num(q.get("ci_low")), "ci_high": num(q.get("ci_high")),
        "ttft_p50": num(_get(c, "ttft_s", "p50")), "ttft_p95": num(_get(c, "ttft_s", "p95")),
        "latency_p50": num(_get(c, "latency_s", "p50")), "latency_p95": num(_get(c, "latency_s", "p95")),
        **{k: num(c.get(k)) for k in ("prefill_tps", "decode_tps", "decode_ceiling_tps", "bandwidth_utilization",
                                      "peak_rss_mb", "model_rss_mb", "peak_gpu_mb", "cost_per_1k_usd", "energy_j")},
        **_load_figures(c),
    }


def _load_figures(c: dict[str, Any]) -> dict[str, Any]:
    """A cell's batched pass and concurrency levels, flat: where its per-request latency comes from, the loaded
    p95 beside it, throughput, cost basis and the answers that changed between concurrencies (bench/sweep.py)."""
    from bench.display import best_throughput, changed_text

    loaded: dict[str, Any] = c["loaded_latency"] if isinstance(c.get("loaded_latency"), dict) else {}
    changed = c.get("changed_answers") if isinstance(c.get("changed_answers"), list) else None
    shown = bool(c.get("load") or c.get("load_levels") or changed)
    return {"latency_basis": str(c.get("latency_basis") or "") or None,
            "loaded_latency_p95": num(_get(loaded, "latency_s", "p95")) if loaded else None,
            "loaded_concurrency": loaded.get("concurrency"),
            "throughput": best_throughput(c) if shown else None,
            "cost_basis": str(c.get("cost_basis") or "") or None,
            "changed_answers": changed_text(changed, c.get("batch_invariant")) if shown else None,
            "changed_share_max": max((num(e.get("share")) or 0.0 for e in changed or []
                                      if isinstance(e, dict) and e.get("comparable")), default=None)}


def _disambiguate(cells: list[dict[str, Any]]) -> None:
    """Two runs of one cell on one task (a rerun, another day) get the run id in their label."""
    seen: dict[tuple[str, str], int] = defaultdict(int)
    for c in cells:
        seen[(c["task"], c["label"])] += 1
    for c in cells:
        if seen[(c["task"], c["label"])] > 1:
            c["label"] = f"{c['label']} [{c['run_id']}]"


# ---------------------------------------------------------------- derived tables

def frontier(points: list[tuple[float, float, str]], higher_is_better: bool = True) -> list[str]:
    """Keys of the cost-quality Pareto frontier: no other point is both cheaper (or equal) and better."""
    sign = 1.0 if higher_is_better else -1.0
    best = -math.inf
    keep = []
    for cost, quality, key in sorted(points, key=lambda p: (p[0], -sign * p[1])):
        if sign * quality > best:
            keep.append(key)
            best = sign * quality
    return keep


def quant_deltas(cells: list[dict[str, Any]], scores: dict[str, dict[str, float]],
                 higher_is_better: bool = True) -> list[dict[str, Any]]:
    """Per model (on one backend and machine) with several quantizations: each one's quality minus the best's,
    paired on the samples both answered, with a 95% interval."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for c in cells:
        if c["quality"] is not None:
            groups[(c["model"], c["backend"], c["hardware"])].append(c)
    out = []
    for (model, backend, hardware), group in sorted(groups.items()):
        if len({c["quantization"] for c in group}) < 2:
            continue
        sign = 1.0 if higher_is_better else -1.0
        best = max(group, key=lambda c: sign * c["quality"])
        for c in sorted(group, key=lambda c: str(c["quantization"])):
            row = {"model": model, "backend": backend, "hardware": hardware, "quantization": c["quantization"],
                   "best_quantization": best["quantization"], "label": c["label"], "quality": c["quality"],
                   "is_best": c is best}
            row.update(_paired(scores.get(best["key"], {}), scores.get(c["key"], {}), best["quality"], c["quality"])
                       if c is not best else {"delta": 0.0, "ci_low": 0.0, "ci_high": 0.0, "n": None})
            out.append(row)
    return out


def _paired(base: dict[str, float], other: dict[str, float], base_mean: float, other_mean: float) -> dict[str, Any]:
    shared = sorted(set(base) & set(other))
    if not shared:  # nothing to pair on: the difference of the means, without an interval
        return {"delta": other_mean - base_mean, "ci_low": None, "ci_high": None, "n": 0}
    a = [base[s] for s in shared]
    b = [other[s] for s in shared]
    d = paired_bootstrap_diff(a, b, n_boot=1000)  # a normal interval above stats.NORMAL_ABOVE pairs
    return {"delta": d["delta"], "ci_low": d["ci_low"], "ci_high": d["ci_high"], "n": d["n"]}


# ---------------------------------------------------------------- example answers

def _examples(cells: list[dict[str, Any]], scores: dict[str, dict[str, float]],
              outputs: dict[str, dict[str, tuple]], dataset: dict[str, Any] | None) -> list[dict[str, Any]]:
    """A few samples where the cells disagree most, each with every cell's answer and the dataset text."""
    per_sample: dict[str, list[float]] = defaultdict(list)
    errored: set[str] = set()
    for c in cells:
        for sid, s in scores.get(c["key"], {}).items():
            per_sample[sid].append(s)
        for sid, done in outputs.get(c["key"], {}).items():
            if done[4]:
                errored.add(sid)
    ids = sorted(set(per_sample) | errored)
    ranked = sorted(ids, key=lambda s: (-(float(np.var(per_sample[s])) if len(per_sample[s]) > 1 else 0.0), s))
    chosen = ranked[:EXAMPLE_SAMPLES]
    if errored and not errored & set(chosen):  # show one failure too, when a cell had any
        chosen = chosen[:EXAMPLE_SAMPLES - 1] + [min(errored)]
    texts = _dataset_text(dataset or {}, set(chosen))
    out = []
    for sid in chosen:
        answers = []
        split = None
        for c in cells:
            rec = outputs.get(c["key"], {}).get(sid)
            if rec is None:
                continue
            split = split or rec[0]
            answers.append({"label": c["label"], "output": rec[1], "score": rec[2], "verified": rec[3],
                            "error": rec[4]})
        inp, ref = texts.get(sid, (None, None))
        out.append({"sample_id": sid, "split": split, "input": inp, "reference": ref, "answers": answers})
    return out


def _dataset_text(dataset: dict[str, Any], ids: set[str]) -> dict[str, tuple[str | None, str | None]]:
    """Input and reference text of a few samples, read from the suite's local JSONL file where it still exists."""
    cfg = dataset.get("config") or {}
    path = cfg.get("path")
    if not ids or not isinstance(path, str) or not path:
        return {}
    candidates = [Path(path)]
    if not Path(path).is_absolute() and isinstance(dataset.get("suite_path"), str):
        candidates.insert(0, Path(dataset["suite_path"]).parent / path)
    found = next((p for p in candidates if p.is_file() and p.suffix == ".jsonl"), None)
    if found is None or found.stat().st_size > DATASET_MAX_BYTES:
        return {}
    id_field = cfg.get("id_field") or "id"
    fields = [f for f in (cfg.get("input_fields") or []) if isinstance(f, str)]
    ref_field = cfg.get("reference_field")
    out: dict[str, tuple[str | None, str | None]] = {}
    try:
        with found.open(encoding="utf-8") as f:
            for line in f:
                if len(out) == len(ids):
                    break
                try:
                    row = json.loads(line)
                except ValueError:
                    continue
                if not isinstance(row, dict) or str(row.get(id_field)) not in ids:
                    continue
                parts = [(k, row.get(k)) for k in fields if row.get(k) is not None]
                inp = "\n".join(f"{k}: {_text(v)}" if len(parts) > 1 else _text(v) for k, v in parts)
                ref = row.get(ref_field) if isinstance(ref_field, str) else None
                out[str(row.get(id_field))] = (inp[:INPUT_CHARS + 1] or None,
                                               None if ref is None else _text(ref)[:INPUT_CHARS + 1])
    except (OSError, UnicodeDecodeError):
        return {}
    return out


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
