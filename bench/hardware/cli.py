"""`bench hardware [--probe] [--json]`: show the detected machine, its profile and its measured bandwidth."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from bench.hardware.detect import fingerprint
from bench.hardware.probe import load_probe, probe, save_probe
from bench.hardware.profiles import Profile, current


def _console(stderr: bool = False) -> Any:
    """The shared consoles (results on stdout, progress on stderr), or plain rich ones without them."""
    try:
        from bench import display

        return display.console if stderr else display.out
    except (ImportError, AttributeError):
        from rich.console import Console

        return Console(stderr=stderr)


def report(profile_id: str | None, do_probe: bool, quiet: bool = False) -> dict[str, Any]:
    """Everything `bench hardware` shows, as one JSON-ready document."""
    from bench import SCHEMA_VERSION

    info, profile, note = current(profile_id)
    fp = fingerprint(info)
    if do_probe:
        if not quiet:
            _console(stderr=True).print("measuring memory bandwidth (a few seconds)...")
        result = probe()
        save_probe(fp, result)
        measured: dict[str, Any] | None = result
    else:
        measured = load_probe(fp)
    return {
        "schema_version": SCHEMA_VERSION,
        "fingerprint": fp,
        "detected": info,
        "profile": profile.model_dump(mode="json") if profile else None,
        "note": note,
        "probe": measured,
    }


def _money(v: float | None) -> str:
    return "unknown" if v is None else f"${v:,.4f}/h"


def _print(doc: dict[str, Any]) -> None:
    from rich.table import Table

    con = _console()
    info = doc["detected"]
    t = Table(title=f"This machine (fingerprint {doc['fingerprint']})", show_header=False, title_justify="left")
    t.add_column("what", style="bold")
    t.add_column("value")
    t.add_row("CPU", f"{info['cpu_model']} ({info['arch']})")
    t.add_row("cores", f"{info['physical_cores']} physical, {info['logical_cores']} logical")
    t.add_row("RAM", f"{info['ram_gb']} GiB")
    t.add_row("ISA", ", ".join(info["isa"]) or "-")
    gpus = [f"{g['name']} ({g['memory_mb']} MiB, driver {g['driver']})" for g in info["gpus"]]
    t.add_row("GPUs", "\n".join(gpus) or "none found (no NVIDIA driver, or no GPU)")
    t.add_row("OS / Python", f"{info['os']} / {info['python']}")
    con.print(t)

    p = doc["profile"]
    con.print(f"profile: {doc['note']}")
    if p:
        profile = Profile.model_validate(p)
        pt = Table(title=f"Profile {profile.id}: {profile.name}", show_header=False, title_justify="left")
        pt.add_column("what", style="bold")
        pt.add_column("value")
        pt.add_row("locality", profile.locality)
        basis = profile.cost_basis
        how = ""
        if basis and basis.method == "amortized":
            how = (f" (${basis.purchase_usd:,.0f} over {basis.years:g} years at {basis.utilization:.0%} use, "
                   f"{basis.power_w:g} W at ${basis.electricity_usd_per_kwh}/kWh)")
        elif basis:
            how = f" (cloud rate{': ' + basis.note if basis.note else ''})"
        pt.add_row("cost", _money(profile.cost_per_hour_usd) + how)
        for label, value, unit in (("memory", profile.memory_gb, "GB"),
                                   ("memory bandwidth", profile.memory_bandwidth_gbs, "GB/s"),
                                   ("peak FP16", profile.peak_tflops_fp16, "TFLOPS"),
                                   ("peak INT8", profile.peak_tflops_int8, "TOPS"),
                                   ("peak FP32", profile.peak_tflops_fp32, "TFLOPS"),
                                   ("power", profile.power_w, "W")):
            if value is not None:
                pt.add_row(label, f"{value:g} {unit}")
        if profile.estimated:
            pt.add_row("estimates", ", ".join(profile.estimated))
        con.print(pt)

    m = doc["probe"]
    if m:
        line = (f"measured bandwidth: copy {m['copy_gbs']} GB/s, triad {m['triad_gbs']} GB/s"
                + (f", read {m['read_gbs']} GB/s" if "read_gbs" in m else "")
                + f" ({m['threads']} threads, {m['measured_at']})")
        con.print(line)
        if p and p.get("memory_bandwidth_gbs") and doc["note"].startswith("matched"):
            share = max(m["copy_gbs"], m["triad_gbs"]) / p["memory_bandwidth_gbs"]
            con.print(f"  {share:.0%} of the profile's {p['memory_bandwidth_gbs']:g} GB/s peak")
    else:
        con.print("measured bandwidth: not yet measured on this machine (run 'bench hardware --probe')")


def run(args: argparse.Namespace) -> int:
    """Entry point for `bench hardware`; --json prints one JSON document on stdout and nothing else there."""
    as_json = bool(getattr(args, "json", False))
    doc = report(getattr(args, "hardware", None), bool(getattr(args, "probe", False)), quiet=False)
    if as_json:
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    else:
        _print(doc)
    return 0
