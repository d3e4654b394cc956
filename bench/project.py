"""`bench project RESULTS --hardware PROFILE`: measured cells projected onto hardware they did not run on.

A projection is the roofline, scaled by how well the engine did where it was measured:

    decode_tps    = bandwidth_utilization x target_bandwidth x 1e9 / model_bytes
    prefill_tps   = prefill_utilization x target_peak_tflops x 1e12 / (2 x params)
    latency_s     = uncached prompt tokens / prefill_tps + completion tokens / decode_tps
    cost_per_1k   = target_hourly_usd x latency_s / 3600 x 1000                (one request at a time)

`bandwidth_utilization` and `prefill_utilization` are the cell's own measured shares of its machine's ceilings
(bench/roofline.py), i.e. the same engine on the same model; `--efficiency` and `--prefill-efficiency` replace
them with a stated figure (an engine on a GPU rarely reaches the share it reached on a CPU). A cell whose
machine has no FLOP/s figure has no prefill share: its prefill is then not projected, its latency and cost count
decode alone and say so (`decode_only`, a lower bound). Every figure is flagged `projected` with its assumptions
and is never written into a run's summary; where the results also hold a cell measured on the target hardware
(same model, quantization and backend), its measured figures stand beside the projection.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.errors import UserInputError
from bench.registry import BACKENDS, backend_traits

SCHEMA_VERSION = 1


def _share(value: Any, flag: str) -> float | None:
    if value is None:
        return None
    v = float(value)
    if not 0 < v <= 1:
        raise UserInputError(f"{v:g}: expected a share of the ceiling in (0, 1]", field=flag)
    return v


def _key(cell: dict[str, Any]) -> tuple[str, str, str]:
    return str(cell.get("model")), str(cell.get("quantization")), str(cell.get("backend"))


def project_cell(c: dict[str, Any], target: Any, efficiency: float | None = None,
                 prefill_efficiency: float | None = None) -> dict[str, Any]:
    """One summary cell projected onto the `target` profile; `reason` says why a figure could not be."""
    mb, params = c.get("model_bytes"), c.get("params_m")
    bw_share = efficiency if efficiency is not None else c.get("bandwidth_utilization")
    pf_share = prefill_efficiency if prefill_efficiency is not None else c.get("prefill_utilization")
    out: dict[str, Any] = {"projected": True, "cell_id": c.get("cell_id"), "cell": c.get("cell"),
                           "hardware": target.id, "decode_tps": None, "prefill_tps": None, "latency_s": None,
                           "cost_per_1k_usd": None, "decode_only": False, "reason": None}
    out["assumptions"] = {
        "bandwidth_utilization": bw_share,
        "bandwidth_utilization_source": "--efficiency" if efficiency is not None else "measured on "
        + str((c.get("cell") or {}).get("hardware")),
        "prefill_utilization": pf_share,
        "prefill_utilization_source": ("--prefill-efficiency" if prefill_efficiency is not None else
                                       "measured" if pf_share is not None else None),
        "model_bytes": mb, "params": params * 1e6 if params else None,
        "target_bandwidth_gbs": target.memory_bandwidth_gbs, "target_peak_tflops_fp16": target.peak_tflops_fp16,
        "target_cost_per_hour_usd": target.cost_per_hour_usd, "concurrency": 1,
        "prompt_tokens_mean": c.get("prompt_tokens_mean"), "completion_tokens_mean": c.get("completion_tokens_mean"),
        "cached_prompt_share": c.get("cached_prompt_share")}
    kind = str((c.get("cell") or {}).get("backend"))
    if kind not in BACKENDS or not backend_traits(kind).loads_model_file:
        out["reason"] = "not a cell that runs a model file here (an HTTP tier or the fake backend)"
        return out
    if not mb or not target.memory_bandwidth_gbs:
        out["reason"] = "no model size" if not mb else f"profile {target.id} has no memory bandwidth"
        return out
    if not bw_share:
        out["reason"] = ("no measured bandwidth utilization (its run had no bandwidth figure: "
                         "`bench hardware --probe`), and no --efficiency")
        return out
    out["decode_tps"] = bw_share * target.memory_bandwidth_gbs * 1e9 / mb
    if pf_share and params and target.peak_tflops_fp16:
        out["prefill_tps"] = pf_share * target.peak_tflops_fp16 * 1e12 / (2 * params * 1e6)
    completion, prompt = c.get("completion_tokens_mean"), c.get("prompt_tokens_mean")
    if completion is None or prompt is None:
        out["reason"] = "no token counts in the measured cell"
        return out
    uncached = prompt * (1 - float(c.get("cached_prompt_share") or 0))
    latency = completion / out["decode_tps"]
    if out["prefill_tps"]:
        latency += uncached / out["prefill_tps"]
    else:
        out["decode_only"] = True  # prefill not projected: latency and cost are lower bounds
    out["latency_s"] = latency
    if target.cost_per_hour_usd is not None:
        out["cost_per_1k_usd"] = target.cost_per_hour_usd * latency / 3600 * 1000
    return out


def project(paths: list[str | Path], profile_id: str, efficiency: float | None = None,
            prefill_efficiency: float | None = None) -> dict[str, Any]:
    """Every measured cell at or below `paths` projected onto `profile_id`, beside a measured one where found."""
    from bench.hardware import get_profile
    from bench.results.derive import suite_summary
    from bench.results.load import load_runs

    efficiency = _share(efficiency, "--efficiency")
    prefill_efficiency = _share(prefill_efficiency, "--prefill-efficiency")
    target = get_profile(profile_id)
    results = load_runs(paths)
    suites = []
    for name, suite in results.suites.items():
        cells = list(suite_summary(suite).values())
        measured = {_key(c["cell"]): c for c in cells if (c.get("cell") or {}).get("hardware") == target.id}
        rows = []
        for c in cells:
            if (c.get("cell") or {}).get("hardware") == target.id:
                continue  # measured there already
            p = project_cell(c, target, efficiency, prefill_efficiency)
            m = measured.get(_key(c["cell"]))
            p["measured_on_target"] = None if m is None else {
                k: m.get(k) for k in ("cell_id", "decode_tps", "prefill_tps", "cost_per_1k_usd", "latency_s")}
            p["measured_here"] = {k: c.get(k) for k in ("decode_tps", "prefill_tps", "cost_per_1k_usd",
                                                         "bandwidth_utilization", "prefill_utilization")}
            p["quality"] = c.get("quality")  # quality does not change with the machine; speed and cost do
            rows.append(p)
        suites.append({"suite": name, "cells": rows})
    return {"schema_version": SCHEMA_VERSION, "kind": "projection", "hardware": target.id,
            "note": "projected from the roofline and the engine's measured efficiency; not measured",
            "suites": suites}


def run(args: Any) -> int:
    """The `bench project` command: a table (or --json) of projected cells; -o also writes the JSON."""
    import json

    from bench.fmt import num, write_text_atomic

    doc = project(args.results, args.hardware, args.efficiency, args.prefill_efficiency)
    text = json.dumps(doc, indent=2, default=str)
    if args.output:
        write_text_atomic(Path(args.output), text + "\n")
    if args.json:
        print(text)
        return 0
    from rich.table import Table

    from bench.display import out
    from bench.results.schema import cell_label

    t = Table(title=f"projected onto {doc['hardware']} (roofline x measured efficiency; not measured)")
    for col in ("suite", "cell", "decode tok/s here", "decode tok/s projected", "prefill tok/s projected",
                "$/1k here", "$/1k projected", "measured there", "note"):
        t.add_column(col)
    for s in doc["suites"]:
        for p in s["cells"]:
            here, there = p["measured_here"], p["measured_on_target"]
            note = p["reason"] or ("decode only: prefill not projected, cost a lower bound" if p["decode_only"]
                                   else "")
            t.add_row(s["suite"], cell_label(p["cell"]), num(here.get("decode_tps"), ".1f"),
                      num(p["decode_tps"], ".1f"), num(p["prefill_tps"], ".0f"),
                      num(here.get("cost_per_1k_usd"), ".4f"), num(p["cost_per_1k_usd"], ".4f"),
                      "-" if there is None else f"{num(there.get('decode_tps'), '.1f')} tok/s, "
                      f"${num(there.get('cost_per_1k_usd'), '.4f')}/1k", note)
    out.print(t)
    return 0
