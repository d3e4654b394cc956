"""`bench compare BASELINE CANDIDATE`: print or write the comparison; exit 1 on a regression, 2 on bad input."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from bench.errors import UserInputError
from bench.fmt import num


def write_markdown(path: str, text: str) -> None:
    """Write the markdown; GitHub's job summary file ($GITHUB_STEP_SUMMARY) is appended to, as GitHub expects."""
    p = Path(path)
    append = bool(os.environ.get("GITHUB_STEP_SUMMARY")) and os.path.abspath(path) == os.path.abspath(
        os.environ["GITHUB_STEP_SUMMARY"])
    try:
        with p.open("a" if append else "w", encoding="utf-8") as f:
            f.write(text)
    except OSError as exc:
        raise UserInputError(f"cannot write the markdown: {exc.strerror}", file=str(p), field="--markdown") from None


def _two(m: dict[str, Any] | None, digits: int) -> str:
    if not m or (m["baseline"] is None and m["candidate"] is None):
        return "-"
    extra = "" if m["ratio"] is None else f"\nx{m['ratio']:.2f}" + ("" if m["verdict"] == "same" else
                                                                     f" {m['verdict']}")
    return f"{num(m['baseline'], f'.{digits}f')} -> {num(m['candidate'], f'.{digits}f')}{extra}"


def print_terminal(result: dict[str, Any]) -> None:
    """Two tables (quality, then speed and memory), the pairs compared, notes and the verdict."""
    from rich.table import Table

    from bench.compare.markdown import headline, pair_lines, verdict_text
    from bench.display import out

    s = result["settings"]
    q = Table(title=f"bench compare: {result['baseline']['path']} -> {result['candidate']['path']}",
              title_justify="left")
    for col in ("task", "baseline", "candidate", "delta [95% CI]", "verdict"):
        q.add_column(col, overflow="fold")
    sp = Table(title=f"speed and memory: worse when past x{s['speed_factor']:.2f} and significant "
               f"({'gated' if s['gate_speed'] else 'not gated'})", title_justify="left")
    for col in ("task", "baseline -> candidate", "p95 latency s", "decode tok/s", "peak RSS MB", "speed"):
        sp.add_column(col, overflow="fold")
    for t in result["tasks"]:
        for p in t["pairs"]:
            qq = p["quality"]

            def side(name: str) -> str:
                v = qq[name]
                text = "-" if v["mean"] is None else f"{v['mean']:.3f} [{v['ci_low']:.3f}, {v['ci_high']:.3f}]"
                errors = p["errors"][name]
                return f"{p[name]['short']}\n{qq['metric']} {text}" + (f"\n{errors} errored" if errors else "")

            delta = "-" if qq["delta"] is None else (f"{qq['delta']:+.3f}\n[{qq['ci_low']:+.3f}, "
                                                     f"{qq['ci_high']:+.3f}] n={qq['n']}")
            q.add_row(t["task"], side("baseline"), side("candidate"), delta, verdict_text(p))
            m = p["speed"]
            sp.add_row(t["task"], f"{p['baseline']['short']}\n-> {p['candidate']['short']}",
                       _two(m["latency_p95_s"], 3), _two(m["decode_tps"], 1), _two(m["peak_rss_mb"], 0),
                       ("❌ worse" if p["failed"] and not p["regression"] else "⚠ worse") if m["worse"] else "ok")
    out.print(q)
    out.print(sp)
    out.print("pairs compared:")
    for line in pair_lines(result):
        out.print(f"  {line}", markup=False, highlight=False)
    notes = sorted({p["speed"]["note"] for t in result["tasks"] for p in t["pairs"] if p["speed"]["note"]})
    for note in notes + result["notes"]:
        out.print(f"note: {note}", markup=False, highlight=False)
    out.print(headline(result), markup=False)


def run(args: argparse.Namespace) -> int:
    from bench.compare.core import compare, load_routing
    from bench.compare.markdown import render

    routing = load_routing(args.routing) if args.routing else None
    max_err = getattr(args, "max_error_rate", None)
    if max_err is not None and not (0 <= max_err <= 1):
        raise UserInputError(f"expected a share between 0 and 1, got {max_err}", field="--max-error-rate")
    hw = getattr(args, "hardware", None)
    if hw is not None and len(hw) != 2:
        raise UserInputError(f"expected two profiles, BASELINE_HW,CANDIDATE_HW, got {','.join(hw)}",
                             field="--hardware")
    result = compare(args.baseline, args.candidate, routing=routing, routing_path=args.routing,
                     hardware=tuple(hw) if hw else None,
                     gate_speed=bool(args.gate_speed), strict=bool(getattr(args, "strict", False)),
                     max_error_rate=max_err)
    if args.markdown:
        write_markdown(args.markdown, render(result))
    if args.json:
        sys.stdout.write(json.dumps(result, indent=2, ensure_ascii=False, allow_nan=False, default=str) + "\n")
    else:
        print_terminal(result)
    lines = result["regressions"] + (result["speed_worse"] if result["settings"]["gate_speed"] else [])
    for line in lines:
        print(f"regression: {line}", file=sys.stderr)
    for line in result["inconclusive"]:
        print(f"{'failed (--strict)' if result['settings']['strict'] else 'warning'}: {line}", file=sys.stderr)
    if not result["settings"]["gate_speed"]:
        for line in result["speed_worse"]:
            print(f"warning (not gated): {line}", file=sys.stderr)
    return int(result["exit_code"])
