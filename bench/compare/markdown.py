"""The comparison as text: table rows shared by the terminal and markdown (a CI job summary), and the markdown."""

from __future__ import annotations

from collections.abc import Set as AbstractSet
from typing import Any

from bench.compare.core import INCONCLUSIVE, REGRESSION, WORSE_SPEED
from bench.fmt import escape_md_cell, num

QUALITY_HEADER = ("task", "baseline", "candidate", "delta [95% CI]", "verdict")
SPEED_HEADER = ("task", "baseline -> candidate", "p95 latency s", "decode tok/s", "peak RSS MB", "peak GPU MB",
                "verdict")


def verdict_text(pair: dict[str, Any]) -> str:
    v = pair["verdict"]
    if v == REGRESSION:
        return "❌ regression"
    if v == INCONCLUSIVE:
        return "❌ inconclusive" if pair["failed"] else "⚠ inconclusive"
    if v == WORSE_SPEED:
        return "❌ worse speed" if pair["failed"] else "⚠ worse speed"
    return "✅ ok"


def headline(result: dict[str, Any]) -> str:
    tasks = result["tasks"]
    bad = [t["task"] for t in tasks if t["verdict"] == REGRESSION]
    slow = [t["task"] for t in tasks if t["verdict"] == WORSE_SPEED]
    unsure = [t["task"] for t in tasks if t["verdict"] == INCONCLUSIVE]
    if bad:
        return f"❌ regression in {', '.join(bad)}"
    if unsure:
        mark = "❌" if result["failed"] else "⚠"
        return f"{mark} inconclusive in {', '.join(unsure)}" + ("" if result["failed"] else " (not gated: --strict)")
    if slow and result["failed"]:
        return f"❌ worse speed in {', '.join(slow)}"
    if slow:
        return f"⚠ worse speed in {', '.join(slow)} (not gated); no quality regression"
    return f"✅ no regression ({len(tasks)} task{'s' if len(tasks) != 1 else ''} compared)"


def _quality(side: dict[str, Any], q: dict[str, Any], metric: str, errors: int) -> str:
    text = f"{side['short']}: {metric} {num(q['mean'])} [{num(q['ci_low'])}, {num(q['ci_high'])}]"
    return text + (f", {errors} errored" if errors else "")


def quality_rows(result: dict[str, Any]) -> list[tuple[str, ...]]:
    """One row per compared pair (one per task unless a task paired several cells)."""
    rows: list[tuple[str, ...]] = []
    for t in result["tasks"]:
        for p in t["pairs"]:
            q = p["quality"]
            if q["delta"] is None:
                delta = "- (no sample answered by both)"
            else:
                delta = (f"{q['delta']:+.3f} [{q['ci_low']:+.3f}, {q['ci_high']:+.3f}] "
                         f"(n={q['n']}, tolerance {q['tolerance']:g})")
                if q.get("samples_to_decide"):
                    delta += f"; ~{q['samples_to_decide']} samples would decide"
            rows.append((t["task"], _quality(p["baseline"], q["baseline"], q["metric"], p["errors"]["baseline"]),
                         _quality(p["candidate"], q["candidate"], q["metric"], p["errors"]["candidate"]),
                         delta, verdict_text(p)))
    return rows


def _speed_cell(m: dict[str, Any] | None, digits: int) -> str:
    if not m or (m["baseline"] is None and m["candidate"] is None):
        return "-"
    text = f"{num(m['baseline'], f'.{digits}f')} -> {num(m['candidate'], f'.{digits}f')}"
    if m["ratio"] is not None:
        text += f" (x{m['ratio']:.2f}"
        text += "" if m["verdict"] == "same" else ", not judged" if m["verdict"] == "n/a" else f", {m['verdict']}"
        text += ")"
    return text


def speed_rows(result: dict[str, Any]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for t in result["tasks"]:
        for p in t["pairs"]:
            s = p["speed"]
            verdict = ("❌ worse" if p["failed"] and not p["regression"] else "⚠ worse") if s["worse"] else "✅ ok"
            rows.append((t["task"], f"{p['baseline']['short']} -> {p['candidate']['short']}",
                         _speed_cell(s["latency_p95_s"], 3), _speed_cell(s["decode_tps"], 1),
                         _speed_cell(s["peak_rss_mb"], 0), _speed_cell(s["peak_gpu_mb"], 0), verdict))
    return rows


def pair_lines(result: dict[str, Any]) -> list[str]:
    return [f"{t['task']}: {p['baseline']['label']} vs {p['candidate']['label']} ({p['paired_by']}; "
            f"{p['samples']['compared']} of {p['samples']['shared']} shared samples compared)"
            for t in result["tasks"] for p in t["pairs"]]


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]], drop: AbstractSet[int] = frozenset()) -> list[str]:
    keep = [i for i in range(len(header)) if i not in drop]
    lines = ["| " + " | ".join(header[i] for i in keep) + " |", "|" + "---|" * len(keep)]
    lines += ["| " + " | ".join(escape_md_cell(r[i]) for i in keep) + " |" for r in rows]
    return lines


def speed_columns_to_drop(result: dict[str, Any]) -> set[int]:
    """The GPU column only where some pair measured GPU memory."""
    has_gpu = any(p["speed"]["peak_gpu_mb"]["baseline"] is not None or p["speed"]["peak_gpu_mb"]["candidate"]
                  is not None for t in result["tasks"] for p in t["pairs"])
    return set() if has_gpu else {SPEED_HEADER.index("peak GPU MB")}


def render(result: dict[str, Any]) -> str:
    """The markdown document: verdict, one line per task, reasons, speed and memory, pairs and notes."""
    settings = result["settings"]
    out = [f"## bench compare: {headline(result)}", "",
           f"Baseline `{result['baseline']['path']}`, candidate `{result['candidate']['path']}`. "
           "Quality on the samples both sides ran, an errored request counting as a failed one; delta = candidate "
           "- baseline with a paired 95% interval (the wider of BCa and t). A regression is a change whose whole "
           "interval lies beyond -tolerance (for 0/1 scores also an exact McNemar p < 0.05); non-inferior (ok) when "
           "the whole interval lies above it; inconclusive in between (failing only with --strict)"
           + (f", or a target of `{settings['routing']}` no longer met" if settings.get("routing") else "") + ".",
           ""]
    out += _table(QUALITY_HEADER, quality_rows(result))
    if result["regressions"]:
        out += ["", "### Regressions", ""] + [f"- {escape_md_cell(r)}" for r in result["regressions"]]
    gate = "gated (`--gate-speed`)" if settings["gate_speed"] else "reported, not gated"
    out += ["", "### Speed and memory", "",
            f"Worse only when the ratio passes x{settings['speed_factor']:.2f} and a paired bootstrap 95% interval "
            f"of the difference excludes zero; {gate}.", ""]
    out += _table(SPEED_HEADER, speed_rows(result), speed_columns_to_drop(result))
    speed_notes = sorted({p["speed"]["note"] for t in result["tasks"] for p in t["pairs"] if p["speed"]["note"]})
    out += ["", "### Pairs compared", ""] + [f"- {escape_md_cell(line)}" for line in pair_lines(result)]
    notes = speed_notes + result["notes"]
    if notes:
        out += ["", "### Notes", ""] + [f"- {escape_md_cell(n)}" for n in notes]
    return "\n".join(out) + "\n"

