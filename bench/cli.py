"""The `bench` command line: parses flags, calls one function per command, maps errors to exit codes."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from bench import __version__
from bench.errors import BenchError, UserInputError


def _csv(value: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list")
    return items


def _positive(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}") from None
    if n <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return n


def _parallel(value: str) -> int:
    from bench.config.suite import MAX_PARALLEL

    n = _positive(value)
    if n > MAX_PARALLEL:
        raise argparse.ArgumentTypeError(f"expected a whole number from 1 to {MAX_PARALLEL}, got {value!r}")
    return n


def _emit_json(doc: Any) -> None:
    sys.stdout.write(json.dumps(doc, indent=2, default=str) + "\n")


# ---------------------------------------------------------------- commands

def cmd_run(args: argparse.Namespace) -> int:
    from bench.config import load_suite
    from bench.display import console, out, results_table
    from bench.runner import run_suite

    suite = load_suite(args.suite)
    if args.concurrency is not None:
        from bench.sweep import parse_levels

        suite.load = suite.load.model_copy(update={"concurrency": parse_levels(args.concurrency)})
    outcome = run_suite(suite, models=args.models, quantizations=args.quantizations, limit=args.limit,
                        hardware=args.hardware,
                        results_dir=Path(args.results), fresh=args.fresh, isolation=args.isolation,
                        quiet=args.json, ray=args.ray, require_quiet=args.require_quiet,
                        probe=not args.no_probe, parallel=args.parallel)
    summary = outcome.summary
    if args.json:
        _emit_json({"run_dir": str(outcome.run.path), "resumed": outcome.resumed,
                    "errored_cells": outcome.errored_cells, "summary": summary})
    else:
        if outcome.skipped_cells and not any(c for c in outcome.errored_cells):
            console.print(f"{len(outcome.skipped_cells)} cell(s) already complete: nothing to run for them")
        out.print(results_table(summary))
        out.print(f"results: {outcome.run.path}")
    if outcome.errored_cells:
        console.print(f"[red]{len(outcome.errored_cells)} cell(s) had errors[/]: " + ", ".join(outcome.errored_cells))
        return 1
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from bench.config import load_suite
    from bench.data import load_samples
    from bench.matrix import plan_cells

    bad = 0
    for path in args.suites:
        try:
            suite = load_suite(path)
            samples = load_samples(suite)
            cells = plan_cells(suite, None, "-", "local")
        except BenchError as exc:
            print(f"error: {exc}", file=sys.stderr)
            bad += 1
            continue
        n_hold = sum(1 for s in samples if s.split == "holdout")
        print(f"ok: {path}: {suite.kind}, {len(samples)} samples ({len(samples) - n_hold} calibration, "
              f"{n_hold} holdout), {len(cells)} cell(s)")
    return 2 if bad else 0


def cmd_models(args: argparse.Namespace) -> int:
    from bench.display import out
    from bench.models.cache import cache_dir, catalog_rows
    from bench.models.catalog import get_entry
    from bench.models.fetch import pull

    if args.models_cmd == "list":
        rows = catalog_rows()
        if args.json:
            _emit_json({"cache_dir": str(cache_dir()), "models": rows})
            return 0
        from rich.table import Table

        t = Table(title=f"models (cache: {cache_dir()})")
        for col in ("id", "family", "params", "quant", "size", "ctx", "chat", "source", "cached", "note"):
            t.add_column(col)
        for r in rows:
            size = f"{r['size_bytes'] / 2**20:.0f} MiB" if r.get("size_bytes") else "-"
            t.add_row(("  " if r["derived"] else "") + r["id"], r["family"], f"{r['params_m']:.0f}M",
                      r["quantization"], size, str(r["context_length"]), "yes" if r["chat"] else "no (base)",
                      r["source"], "yes" if r["cached"] else "no", r["note"])
        out.print(t)
        return 0
    if args.models_cmd == "pull":
        entry = get_entry(args.id)
        path = pull(entry, force=args.force, mend=True)
        out.print(f"{entry.id}: {path} (sha256 verified)")
        return 0
    if args.models_cmd == "quantize":
        from bench.models.quantize import run_quantize

        return run_quantize(args.id, args.to)
    raise UserInputError("expected one of: list, pull, quantize", field="models")


def _delegate(module: str) -> Any:
    def call(args: argparse.Namespace) -> int:
        import importlib

        return importlib.import_module(module).run(args)

    return call


# ---------------------------------------------------------------- parser

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench", description="Measure language-model tiers per task and emit "
                                "calibrated routing thresholds.")
    p.add_argument("--version", action="version", version=f"bench {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    r = sub.add_parser("run", help="run a suite over its model x quantization x hardware matrix")
    r.add_argument("suite")
    r.add_argument("--models", type=_csv, help="comma-separated model ids (catalog ids or the suite's endpoints)")
    r.add_argument("--quantizations", type=_csv, metavar="Q[,Q...]",
                   help="run catalog models at these quantizations (derived when missing), e.g. Q8_0,Q4_K_M,Q2_K")
    r.add_argument("--limit", type=_positive, help="use at most N samples")
    r.add_argument("--parallel", type=_parallel, metavar="N",
                   help="decode up to N requests at once (llama.cpp: N sequences in one context, continuous batching; "
                        "default: the suite's generation.parallel, 1). Per-request latency is then measured under load")
    r.add_argument("--concurrency", metavar="L1,L2,...",
                   help="also time each cell at these concurrency levels (llama.cpp sequences, or HTTP requests in "
                        "flight) over the suite's load.timing_samples; cost is taken at the cheapest level shown (95%% "
                        "upper bound on its p95) to meet max_p95_latency_s (default: the suite's load.concurrency)")
    r.add_argument("--hardware", help="hardware profile id (default: the profile matching this machine)")
    r.add_argument("--results", default="results", help="results directory (default: results)")
    r.add_argument("--fresh", action="store_true", help="start a new run instead of resuming")
    r.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    r.add_argument("--isolation", choices=("process", "inline"), default="process",
                   help="run each cell in its own process (default) or in this one")
    r.add_argument("--require-quiet", action="store_true",
                   help="wait (60 s at most) for other processes to leave the CPU before timing each local cell; "
                        "a cell that never gets a quiet machine is not run (its samples error, a rerun retries)")
    r.add_argument("--no-probe", action="store_true",
                   help="do not measure this machine's memory bandwidth on a first run (the roofline then uses the "
                        "hardware profile's figure, or none)")
    r.add_argument("--ray", nargs="?", const="auto", default=None, metavar="ADDRESS",
                   help="run each cell as a task on a Ray cluster (default address: auto)")
    r.set_defaults(func=cmd_run)

    v = sub.add_parser("validate", help="check suites and their data without running a model")
    v.add_argument("suites", nargs="+")
    v.set_defaults(func=cmd_validate)

    m = sub.add_parser("models", help="the model catalog and cache")
    msub = m.add_subparsers(dest="models_cmd", required=True, metavar="SUBCOMMAND")
    ml = msub.add_parser("list", help="list catalog models and whether they are cached")
    ml.add_argument("--json", action="store_true")
    mp = msub.add_parser("pull", help="fetch a model into the cache and verify its sha256")
    mp.add_argument("id")
    mp.add_argument("--force", action="store_true", help="fetch again even if cached")
    mq = msub.add_parser("quantize", help="derive quantized variants of a model")
    mq.add_argument("id")
    mq.add_argument("--to", type=_csv, required=True, help="e.g. Q8_0,Q4_K_M,Q2_K")
    mq.set_defaults(engine_here=True)  # quantizes through llama.cpp in this process
    m.set_defaults(func=cmd_models)

    h = sub.add_parser("hardware", help="detect this machine and match a hardware profile")
    h.add_argument("--probe", action="store_true", help="measure memory bandwidth and store it")
    h.add_argument("--json", action="store_true")
    h.add_argument("--hardware", help="show this profile instead of the matched one")
    h.set_defaults(func=_delegate("bench.hardware.cli"))

    ray = sub.add_parser("ray", help="Ray cluster helpers: start a node that advertises this machine's profile")
    raysub = ray.add_subparsers(dest="ray_cmd", required=True, metavar="SUBCOMMAND")
    rn = raysub.add_parser("node", help="start a Ray node advertising hardware:<profile-id> (head or worker)")
    rn.add_argument("--head", action="store_true", help="start the head node")
    rn.add_argument("--address", help="the head's address (HOST:PORT), for a worker node")
    rn.add_argument("--port", type=int, default=6379, help="the head's port")
    rn.add_argument("--node-ip", default="127.0.0.1", help="this node's address as the cluster sees it")
    rn.add_argument("--hardware", help="the profile to advertise (default: the one matching this machine)")
    rn.add_argument("--num-cpus", type=int, default=None)
    rn.add_argument("--no-probe", action="store_true", help="do not measure bandwidth when none is stored")
    rn.add_argument("--dry-run", action="store_true", help="print the ray start command instead of running it")
    ray.set_defaults(func=_delegate("bench.executors.ray_cluster"))

    rep = sub.add_parser("report", help="build one self-contained HTML report from runs")
    rep.add_argument("results", nargs="+")
    rep.add_argument("-o", "--output", required=True)
    rep.add_argument("--routing", help="a routing.json to show beside the runs")
    rep.add_argument("--png", help="also export each figure as PNG into this folder (needs kaleido)")
    rep.set_defaults(func=_delegate("bench.report.cli"))

    t = sub.add_parser("thresholds", help="calibrate routing thresholds from runs; write routing.json")
    t.add_argument("results", nargs="+")
    t.add_argument("--target", action="append", default=[], metavar="TASK=QUALITY")
    t.add_argument("--max-p95-latency", type=float, help="seconds; tiers slower at p95 are not eligible")
    t.add_argument("--format", choices=("bench", "litellm"), default="bench")
    t.add_argument("--serve-url", metavar="URL", help="with --format litellm: point each task's model group at "
                   "`bench serve` at this URL (e.g. http://127.0.0.1:8000/v1), which runs the real policy")
    t.add_argument("--telemetry", metavar="LOG", help="a `bench serve --log` file: compare production's model mix "
                   "with holdout's, per task, and report drift")
    t.add_argument("-o", "--output", required=True)
    t.set_defaults(func=_delegate("bench.thresholds.cli"), engine_here=True)  # the embedding pre-router

    sv = sub.add_parser("serve", help="serve a routing.json as an OpenAI-compatible API (model = task name)")
    sv.add_argument("routing")
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--log", help="append one JSON line per request to this file (production telemetry)")
    sv.add_argument("--timeout", type=float, default=120.0, help="seconds a request may wait for its answer")
    sv.add_argument("--tier-timeout", type=float, help="seconds one tier call may take before the request escalates")
    sv.add_argument("--concurrency", type=int, help="calls at once to each tier (default: the concurrency "
                    "routing.json priced the tier at, else an HTTP backend's own `concurrency`); an in-process "
                    "llama.cpp tier decodes that many calls in one batch, other in-process engines one at a time")
    sv.add_argument("--trust-failed-holdout", action="store_true",
                    help="follow a policy even where its holdout contradicted it (default: its fallback tier)")
    sv.set_defaults(func=_delegate("bench.serve.app"), engine_here=True)  # in-process tiers

    pj = sub.add_parser("project", help="project measured cells onto another hardware profile (roofline x the "
                        "engine's measured efficiency); every figure flagged `projected`")
    pj.add_argument("results", nargs="+")
    pj.add_argument("--hardware", required=True, metavar="PROFILE", help="the profile to project onto")
    pj.add_argument("--efficiency", type=float, metavar="SHARE",
                    help="decode's share of the bandwidth ceiling there (default: the share each cell reached here)")
    pj.add_argument("--prefill-efficiency", type=float, metavar="SHARE",
                    help="prefill's share of peak FP16 FLOP/s there (default: the share measured, where known)")
    pj.add_argument("--json", action="store_true")
    pj.add_argument("-o", "--output", help="also write the projection as JSON here")
    pj.set_defaults(func=_delegate("bench.project"))

    fd = sub.add_parser("fidelity", help="bench's llama.cpp decode tokens/s beside llama.cpp's own llama-bench and "
                        "llama-batched-bench, back to back (run on a quiet machine)",
                        description="Measures bench's in-process llama.cpp decode rate against llama.cpp's own tools "
                        "built by scripts/build-llama-tools.sh, interleaved over rounds. It must run on a quiet "
                        "machine: nothing else may run while it measures (it warns when the load average is above "
                        "0.5).")
    fd.add_argument("--model", default=None, help="catalog model id (default: the embedded default)")
    fd.add_argument("--threads", type=int, default=2, help="threads for both sides (default 2)")
    fd.add_argument("--depth", type=int, default=512, help="prompt tokens before decoding (default 512)")
    fd.add_argument("--tokens", type=int, default=128, help="tokens decoded (default 128, llama-bench's tg128)")
    fd.add_argument("--parallel", default="1,4,8", metavar="N1,N2,...",
                    help="1: decode at concurrency 1 vs llama-bench; N > 1: batched decode of N sequences vs "
                         "llama-batched-bench (default 1,4,8)")
    fd.add_argument("--rounds", type=int, default=2, help="interleaved rounds, order alternating (default 2)")
    fd.add_argument("--n-ctx", type=int, default=None, metavar="TOKENS",
                    help="bench's context per sequence (default: the llamacpp backend's n_ctx, 4096, as `bench run` "
                         "uses it; DEPTH + TOKENS gives the tools' own context size)")
    fd.add_argument("--llama-bench", metavar="PATH", help="llama-bench binary (default: the one "
                    "scripts/build-llama-tools.sh built for the installed llama-cpp-python)")
    fd.add_argument("--batched-bench", metavar="PATH", help="llama-batched-bench binary (default: as --llama-bench)")
    fd.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    fd.add_argument("-o", "--output", help="also write the JSON here (rewritten after each run)")
    fd.set_defaults(func=_delegate("bench.fidelity"), engine_here=True)

    c = sub.add_parser("compare", help="compare a candidate run against a baseline; exit 1 on a regression")
    c.add_argument("baseline")
    c.add_argument("candidate")
    c.add_argument("--markdown", help="write a markdown table here (e.g. for a CI job summary)")
    c.add_argument("--json", action="store_true")
    c.add_argument("--routing", help="a routing.json whose targets must still be met")
    c.add_argument("--gate-speed", action="store_true", help="also fail on a significant speed or memory regression")
    c.add_argument("--strict", action="store_true", help="also fail (exit 1) when a quality verdict is inconclusive")
    c.add_argument("--hardware", type=_csv, metavar="HW_A,HW_B",
                   help="compare the baseline's cells on profile HW_A with the candidate's on HW_B (one run twice: "
                        "hardware qualification)")
    c.add_argument("--max-error-rate", type=float, default=None, metavar="SHARE",
                   help="fail when the candidate errors on more than this share of samples (0..1)")
    c.set_defaults(func=_delegate("bench.compare.cli"))
    return p


def _engine_first(args: argparse.Namespace) -> None:
    """Load llama.cpp's libraries before anything imports numpy where the command may load a llama.cpp model in this
    process (its parser sets `engine_here`; `bench run` only with --isolation inline): see backends.base.engine_first.
    Other commands do not pay for the import (about 0.1 s)."""
    if getattr(args, "engine_here", False) or getattr(args, "isolation", None) == "inline":
        from bench.backends.base import engine_first

        engine_first()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _engine_first(args)
    try:
        return int(args.func(args) or 0)
    except BenchError as exc:
        from bench.redact import redact_text

        print(f"error: {redact_text(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted: every finished sample is saved; run the same command again to resume",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
