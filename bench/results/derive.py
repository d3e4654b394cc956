"""summary.json for a run: the per-cell summary plus what needs the hardware (roofline) or several cells."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from bench.registry import BACKENDS, backend_traits
from bench.results.store import RunDir, write_json_atomic
from bench.results.summary import build_summary, latest_per_sample


def write_summary(run: RunDir, profile: Any = None, bandwidth: tuple[float, str] | None = None) -> dict[str, Any]:
    """Derive summary.json (derive_summary) and write it atomically."""
    summary = derive_summary(run, profile, bandwidth)
    write_json_atomic(run.summary_path, summary)
    return summary


def derive_summary(run: RunDir, profile: Any = None, bandwidth: tuple[float, str] | None = None,
                   rows: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """summary.json from samples.jsonl, plus the roofline from the bandwidth and FLOP/s the run recorded in its
    manifest (`roofline`), so every command derives the same document; runs made before the manifest kept them
    use `profile` and `bandwidth` ((GB/s, "probe" or "profile")) as given."""
    from bench.roofline import (
        bandwidth_utilization,
        decode_ceiling_tps,
        prefill_utilization,
    )

    manifest = run.manifest()
    rows = latest_per_sample(run.samples() if rows is None else rows)  # every figure below from the same rows
    summary = build_summary(rows, manifest)
    _operating_points(summary, manifest, run, rows)  # first: the roofline below uses the idle decode rate
    first: dict[str, dict[str, Any]] = {}
    for r in rows:
        first.setdefault(r["cell_id"], r)
    recorded = manifest.get("roofline") if isinstance(manifest.get("roofline"), dict) else None
    if recorded is not None:
        bandwidth = ((float(recorded["bandwidth_gbs"]), str(recorded.get("bandwidth_source")))
                     if recorded.get("bandwidth_gbs") else None)
        peak_tflops, run_profile = recorded.get("peak_tflops_fp16"), recorded.get("profile")
    else:
        peak_tflops = getattr(profile, "peak_tflops_fp16", None) if profile is not None else None
        run_profile = getattr(profile, "id", None)
    for cell in summary["cells"]:
        row = first[cell["cell_id"]]
        mb, params_m = row.get("model_bytes"), row.get("params_m")
        kind = cell["cell"].get("backend")
        in_process = cell.get("locality") == "local" and kind in BACKENDS and backend_traits(kind).in_process
        cell["model_bytes"] = mb
        cell["bandwidth_gbs"], cell["bandwidth_source"] = bandwidth if (bandwidth and in_process) else (None, None)
        placed = cell["cell"].get("hardware")
        node = row.get("node") if isinstance(row.get("node"), dict) else None
        if in_process and node and node.get("bandwidth_gbs"):  # ran on a Ray node that probed its memory
            cell["bandwidth_gbs"], cell["bandwidth_source"] = float(node["bandwidth_gbs"]), "node probe"
        elif in_process and node and placed != run_profile:  # a Ray node of other hardware, without a probe
            figure = getattr(_profile(placed), "memory_bandwidth_gbs", None)
            cell["bandwidth_gbs"], cell["bandwidth_source"] = (float(figure), "profile") if figure else (None, None)
        if mb and cell["bandwidth_gbs"]:
            cell["decode_ceiling_tps"] = decode_ceiling_tps(cell["bandwidth_gbs"], mb)
            if cell.get("decode_tps"):
                cell["bandwidth_utilization"] = bandwidth_utilization(cell["decode_tps"], mb, cell["bandwidth_gbs"])
        cell["prefill_utilization"] = (prefill_utilization(cell["prefill_tps"], params_m * 1e6, peak_tflops)
                                       if in_process and params_m and peak_tflops and cell.get("prefill_tps")
                                       else None)
    _quantization_costs(summary, rows)
    _macro_f1(summary, rows, manifest, run)
    return summary


def _operating_points(summary: dict[str, Any], manifest: dict[str, Any], run: RunDir,
                      main_rows: list[dict[str, Any]]) -> None:
    """Each cell's concurrency levels (load.jsonl), the one its cost is taken at, its per-request latency at
    concurrency 1 and its changed answers between levels (bench/sweep.py)."""
    from bench.results.store import iter_jsonl
    from bench.sweep import LOAD_FILE, attach

    path = run.path / LOAD_FILE
    rows = list(iter_jsonl(path)) if path.exists() else []
    suite = manifest.get("suite") or {}
    temperature = ((suite.get("config") or {}).get("generation") or {}).get("temperature")
    attach(summary, rows, suite.get("max_p95_latency_s"), main_rows, temperature)


def _macro_f1(summary: dict[str, Any], rows: list[dict[str, Any]], manifest: dict[str, Any], run: RunDir) -> None:
    """Classify cells: macro-F1 over the suite's labels beside accuracy (errors and unparsed answers are wrong),
    from the references inputs.jsonl keeps; absent for runs made before it kept them."""
    from bench.metrics import macro_f1  # the evaluate module's compute
    from bench.tasks.base import norm_text

    suite = manifest.get("suite") or {}
    labels = (((suite.get("config") or {}).get("task")) or {}).get("labels")
    if suite.get("task") != "classify" or not labels:
        return
    refs = run.references()
    if not refs:
        return
    canon = {norm_text(label): label for label in labels}
    latest = {(r["cell_id"], str(r["sample_id"])): r for r in rows}  # rows are already the latest per sample
    for cell in summary["cells"]:
        pairs = [(None if r.get("error") or r.get("parsed") is None else canon.get(norm_text(str(r["parsed"]))),
                  canon.get(norm_text(str(refs[sid]))))
                 for (cid, sid), r in latest.items() if cid == cell["cell_id"] and sid in refs]
        known = [(p, ref) for p, ref in pairs if ref is not None]
        cell["macro_f1"] = macro_f1([p for p, _ in known], [ref for _, ref in known], labels) if known else None
        cell["macro_f1_n"] = len(known)


def _profile(profile_id: str | None) -> Any:
    from bench.errors import UserInputError
    from bench.hardware import get_profile

    try:
        return get_profile(profile_id) if profile_id else None
    except (UserInputError, OSError):
        return None


def _quantization_costs(summary: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """Per cell, the quality lost against the best quantization of the same model (paired on shared samples)."""
    from bench.stats import paired_bootstrap_diff

    scores: dict[str, dict[str, float]] = defaultdict(dict)
    for r in rows:
        if not r.get("error") and r.get("score") is not None:
            scores[r["cell_id"]][r["sample_id"]] = float(r["score"])
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for cell in summary["cells"]:
        c = cell["cell"]
        groups[(c["model"], c["backend"], c.get("hardware"), c.get("gen"))].append(cell)
        cell["requantized"] = any(r.get("requantized") for r in rows if r["cell_id"] == cell["cell_id"])
    for cells in groups.values():
        scored = [c for c in cells if c["quality"].get("mean") is not None]
        if len(scored) < 2:
            continue
        best = max(scored, key=lambda c: c["quality"]["mean"])
        for cell in scored:
            shared = sorted(set(scores[best["cell_id"]]) & set(scores[cell["cell_id"]]))
            diff = paired_bootstrap_diff([scores[best["cell_id"]][k] for k in shared],
                                         [scores[cell["cell_id"]][k] for k in shared])
            cell["quality_vs_best_quant"] = {"best_quantization": best["cell"]["quantization"],
                                             "delta": diff["delta"], "ci_low": diff["ci_low"],
                                             "ci_high": diff["ci_high"], "n": diff["n"]}


def suite_summary(suite: Any) -> dict[str, dict[str, Any]]:
    """cell_id -> summary cell derived from the merged rows of every run of a suite (`load_runs`' SuiteRuns),
    read again in full (lean rows lack the timings); the roofline figures come from the latest run's manifest."""
    from bench.results.load import latest_rows, load_run

    runs = [load_run(r.dir) for r in suite.runs]
    rows = latest_rows(r for run in runs for r in run.rows)
    summary = derive_summary(suite.latest.dir, rows=rows)
    return {str(c.get("cell_id")): c for c in summary.get("cells") or [] if isinstance(c, dict)}
