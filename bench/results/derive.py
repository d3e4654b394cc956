"""summary.json for a run: the per-cell summary plus what needs the hardware (roofline) or several cells."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from bench.results.store import RunDir, write_json_atomic
from bench.results.summary import build_summary


def write_summary(run: RunDir, profile: Any, bandwidth_gbs: float | None) -> dict[str, Any]:
    """Derive summary.json from samples.jsonl (plus the roofline from the hardware's bandwidth)."""
    from bench.roofline import bandwidth_utilization, decode_ceiling_tps

    rows = run.samples()
    manifest = run.manifest()
    summary = build_summary(rows, manifest)
    for cell in summary["cells"]:
        mb = next((r.get("model_bytes") for r in rows if r["cell_id"] == cell["cell_id"] and r.get("model_bytes")),
                  None)
        bw = bandwidth_gbs if cell.get("locality") == "local" and cell["cell"]["backend"] != "openai" else None
        cell["model_bytes"] = mb
        if mb and bw:
            cell["decode_ceiling_tps"] = decode_ceiling_tps(bw, mb)
            if cell.get("decode_tps"):
                cell["bandwidth_utilization"] = bandwidth_utilization(cell["decode_tps"], mb, bw)
    _quantization_costs(summary, rows)
    write_json_atomic(run.summary_path, summary)
    return summary


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
        cell["requantized"] = next((r.get("requantized") for r in rows if r["cell_id"] == cell["cell_id"]), None)
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
