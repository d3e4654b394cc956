"""`bench report RESULTS... -o report.html [--routing routing.json] [--png DIR]`."""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path
from typing import Any

from bench.errors import UserInputError
from bench.report.data import load_report_data
from bench.report.html import build_page


def run(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    data = load_report_data(list(args.results), routing=getattr(args, "routing", None))
    html, figures = build_page(data)
    out = Path(args.output)
    if out.is_dir():
        raise UserInputError("is a directory: expected the path of the HTML file to write", file=str(out),
                             field="--output")
    try:
        from bench.fmt import write_text_atomic

        out.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out, html)
    except OSError as exc:
        raise UserInputError(f"cannot write the report: {exc.strerror or exc}", file=str(out),
                             field="--output") from None
    print(f"report: {out} ({len(data.cells)} cells from {len(data.runs)} run(s), {len(figures)} figures, "
          f"{len(html) / 2**20:.1f} MiB, {time.perf_counter() - t0:.1f} s)")
    if getattr(args, "png", None):
        written, note = export_png(figures, Path(args.png))
        if written:
            print(f"png: {len(written)} figure(s) in {args.png}")
        if note:
            print(f"note: {note}", file=sys.stderr)
    return 0


def _file_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "figure"


def export_png(figures: list[tuple[str, str, Any]], folder: Path) -> tuple[list[Path], str | None]:
    """Write each figure as PNG through kaleido. Returns (files written, a note saying why export stopped)."""
    try:
        import kaleido  # noqa: F401  (plotly finds it itself; imported here only to say clearly when it is missing)
    except ImportError:
        return [], "PNG export skipped: kaleido is not installed (pip install kaleido); the HTML report was written"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserInputError(f"cannot create the PNG folder: {exc.strerror or exc}", file=str(folder),
                             field="--png") from None
    paths = [folder / f"{i:02d}-{_file_name(name)}.png" for i, (_, name, _) in enumerate(figures, 1)]
    figs = [fig for _, _, fig in figures]
    try:
        import plotly.io as pio

        if hasattr(pio, "write_images"):  # plotly >= 6.1 with kaleido 1: one browser for every figure
            pio.write_images(figs, paths, width=1200, scale=1)
        else:
            for fig, path in zip(figs, paths):
                fig.write_image(str(path), width=1200, scale=1)
    except Exception as exc:  # noqa: BLE001  (kaleido raises types of its own when it finds no browser)
        done = [p for p in paths if p.exists()]
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return done, (f"PNG export skipped: kaleido could not render ({type(exc).__name__}: {reason}); it needs "
                      "Chrome or Chromium (install chromium, or run `plotly_get_chrome`); the HTML report was written")
    return paths, None
