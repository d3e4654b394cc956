"""`bench fidelity`: bench's llama.cpp decode speed beside llama.cpp's own llama-bench and llama-batched-bench.

Per round, each measurement runs llama.cpp's tool and bench back to back on the same model file and threads, the
order alternating from round to round (llama.cpp first in odd rounds, bench first in even ones):

- decode at concurrency 1 (`--parallel` holds 1): `llama-bench -p 0 -n TOKENS -d DEPTH -fa 0 -r 1 -o json`, its
  `avg_ts`, against bench's llamacpp backend (the worker's registry construction and its scheduler, one
  sequence) decoding one request of DEPTH prompt tokens for exactly TOKENS tokens (EOS ignored), its decode
  rate computed by `bench.measure.timing.derive` as `bench run`'s summary does;
- batched decode at each N > 1 of `--parallel`: `llama-batched-bench -npp DEPTH -ntg TOKENS -npl N -fa 0`, its
  S_TG, against bench's `BatchScheduler` decoding N such requests at once (definition in DEFINITIONS).

The prompt's tokens are fixed token ids (a text repeated and cut to DEPTH), given to the backend in place of its
chat template, so both sides evaluate exactly DEPTH prompt tokens; everything after the prompt's tokenization is
the code `bench run` uses. Nothing else may run on the machine meanwhile.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from bench.errors import BenchError, UserInputError

SCHEMA_VERSION = 1  # bump on a breaking change to the report's fields
LOAD_WARN = 0.5  # 1-minute load average above which the machine is not quiet
TOOL_TIMEOUT_S = 1800.0

DEFINITIONS = {
    "llama_bench": "llama-bench -p 0 -n TOKENS -d DEPTH -fa 0 -r 1 --repack R -o json: avg_ts of its tgTOKENS test, i.e. "
                   "TOKENS / the time of TOKENS one-token decode calls after a DEPTH-token context",
    "bench_decode": "bench's llamacpp backend, one request of DEPTH prompt tokens decoding exactly TOKENS tokens "
                    "(EOS ignored): (TOKENS - 1) / (last token time - first token time), bench.measure.timing.derive "
                    "as the summary's decode_tps; sampling between steps is included",
    "llama_batched_bench": "llama-batched-bench -npp DEPTH -ntg TOKENS -npl N -fa 0 -c N*(DEPTH+TOKENS) "
                           "--[no-]repack: S_TG "
                           "(speed_tg) = N x TOKENS / the time of TOKENS decode steps of N sequences",
    "bench_batched": "bench's BatchScheduler (llamacpp backend, parallel N), N requests of DEPTH prompt tokens "
                     "decoding exactly TOKENS tokens each: N x (TOKENS - 1) / (time from the end of the last "
                     "prompt's prefill to the return of the last decode step), i.e. over the decode steps in which "
                     "all N sequences decode; sampling between steps is included",
    "bench_engine": "the same decode steps as bench_decode / bench_batched, counting only the time inside "
                    "llama_decode (BatchScheduler.step_engine_s): sequences x steps / that time. What bench's "
                    "figure loses against it is the harness's own per-step work (sampling, log-probabilities, "
                    "detokenizing, bookkeeping), which the engine waits out",
    "repack": "R, llama.cpp's weight repacking (extra buffer types), is set on the tools as bench's backend sets "
              "it: off where the CPU advertises AMX, on elsewhere (extra_buffers)",
    "ratio": "median over rounds of bench's figure / llama.cpp's figure in the same round (the two ran back to "
             "back, so a machine whose speed drifts between rounds moves both); round_ratios lists them",
}

_TEXT = ("The quick brown fox jumps over the lazy dog while the committee reviews the quarterly figures, "
         "and a light rain falls on the harbour where seven boats wait for the morning tide. ")


class ToolFailed(BenchError):
    """llama-bench or llama-batched-bench ran and failed, or printed nothing usable (exit 1)."""

    exit_code = 1


class Measurement(BaseModel):
    """One compared figure: llama.cpp's tool and bench, per round, their medians and the ratio."""

    model_config = ConfigDict(extra="forbid")

    name: str  # "decode" (concurrency 1) or "batched N=<n>"
    parallel: int
    tool: str
    llama_cpp_tps: list[float] = []
    bench_tps: list[float] = []
    bench_engine_tps: list[float] = []  # the same steps, time inside llama_decode only (bench_engine)
    llama_cpp_median: float | None = None
    bench_median: float | None = None
    round_ratios: list[float] = []
    ratio: float | None = None
    engine_round_ratios: list[float] = []
    engine_ratio: float | None = None

    def settle(self) -> None:
        self.llama_cpp_median = statistics.median(self.llama_cpp_tps) if self.llama_cpp_tps else None
        self.bench_median = statistics.median(self.bench_tps) if self.bench_tps else None
        self.round_ratios = [b / c for c, b in zip(self.llama_cpp_tps, self.bench_tps) if c > 0]
        self.ratio = statistics.median(self.round_ratios) if self.round_ratios else None
        self.engine_round_ratios = [b / c for c, b in zip(self.llama_cpp_tps, self.bench_engine_tps) if c > 0]
        self.engine_ratio = statistics.median(self.engine_round_ratios) if self.engine_round_ratios else None


class FidelityReport(BaseModel):
    """What `bench fidelity` measured (written with --json and -o)."""

    model_config = ConfigDict(extra="forbid")

    schema_version: int = SCHEMA_VERSION
    created_at: str
    complete: bool = False  # false until every round has run (-o is rewritten after each run)
    bench_version: str
    llama_cpp_python_version: str
    model: dict[str, Any]
    threads: int
    depth: int
    tokens: int
    rounds: int
    parallel: list[int]
    tools: dict[str, str | None]
    bench_n_ctx: int | None = None  # bench's context per sequence (None: the backend's default)
    extra_buffers: bool  # llama.cpp's weight repacking, on both sides (bench's backend default for this CPU)
    load_avg_1m: float | None
    quiet_machine: bool | None
    order: list[list[str]] = []  # per round, the runs in the order they ran
    measurements: list[Measurement] = []
    definitions: dict[str, str] = DEFINITIONS


# ---------------------------------------------------------------- llama.cpp's tools

def tools_dir(version: str) -> Path:
    """Where scripts/build-llama-tools.sh builds the tools for llama-cpp-python `version`."""
    base = os.environ.get("BENCH_TOOLS_DIR") or str(Path(os.environ.get("XDG_CACHE_HOME") or
                                                         Path.home() / ".cache") / "bench" / "tools")
    return Path(base).expanduser() / f"llama.cpp-{version}" / "build" / "bin"


def llama_cpp_python_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("llama_cpp_python")
    except PackageNotFoundError:
        raise UserInputError("llama-cpp-python is not installed: pip install llama-cpp-python",
                             field="fidelity") from None


def find_tool(name: str, given: str | None, version: str, flag: str) -> Path:
    """The tool at `given`, else the one scripts/build-llama-tools.sh built; a clear error when neither exists."""
    if given:
        path = Path(given).expanduser()
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise UserInputError(f"{path}: not an executable file", field=flag)
        return path
    path = tools_dir(version) / name
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise UserInputError(f"{name} is not built at {path}", field=flag,
                             hint="run scripts/build-llama-tools.sh, or pass the binary's path")
    return path


def _tail(text: str, n: int = 5) -> str:
    lines = [x for x in text.strip().splitlines() if x.strip()]
    return " | ".join(lines[-n:]) or "(no output)"


def _run_tool(cmd: list[str]) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TOOL_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise ToolFailed(f"{Path(cmd[0]).name} ran past {TOOL_TIMEOUT_S:.0f} s") from None
    except OSError as exc:
        raise ToolFailed(f"{cmd[0]} could not start: {exc}") from None
    if proc.returncode != 0:
        raise ToolFailed(f"{Path(cmd[0]).name} exited {proc.returncode}: {_tail(proc.stderr or proc.stdout)}")
    return proc.stdout


def llama_bench_cmd(exe: Path, model: Path, threads: int, depth: int, tokens: int, repack: bool) -> list[str]:
    """`repack`: llama.cpp's extra buffer types, set as bench's backend sets them (off where the CPU advertises AMX)."""
    return [str(exe), "-m", str(model), "-t", str(threads), "-p", "0", "-n", str(tokens), "-d", str(depth),
            "-fa", "0", "-r", "1", "--repack", "1" if repack else "0", "-o", "json"]


def batched_bench_cmd(exe: Path, model: Path, threads: int, depth: int, tokens: int, n: int,
                      repack: bool) -> list[str]:
    return [str(exe), "-m", str(model), "-t", str(threads), "-npp", str(depth), "-ntg", str(tokens),
            "-npl", str(n), "-fa", "0", "-c", str(n * (depth + tokens)), "--repack" if repack else "--no-repack",
            "--output-format", "jsonl"]


def parse_llama_bench(text: str, tokens: int, depth: int) -> float:
    """llama-bench's `-o json` output: avg_ts of the test with n_prompt 0, n_gen `tokens` at depth `depth`."""
    start, end = text.find("["), text.rfind("]")
    try:
        rows = json.loads(text[start:end + 1]) if start >= 0 < end else None
    except ValueError:
        rows = None
    if not isinstance(rows, list):
        raise ToolFailed(f"llama-bench printed no JSON array: {_tail(text)}")
    for row in rows:
        if (isinstance(row, dict) and row.get("n_prompt") == 0 and row.get("n_gen") == tokens
                and row.get("n_depth", 0) == depth and isinstance(row.get("avg_ts"), (int, float))):
            return float(row["avg_ts"])
    raise ToolFailed(f"llama-bench's JSON has no tg{tokens} test at depth {depth}")


def parse_batched_bench(text: str, depth: int, tokens: int, n: int) -> float:
    """llama-batched-bench's `--output-format jsonl` output: speed_tg (S_TG) of the row pp=depth, tg=tokens, pl=n."""
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if (isinstance(row, dict) and (row.get("pp"), row.get("tg"), row.get("pl")) == (depth, tokens, n)
                and isinstance(row.get("speed_tg"), (int, float))):
            return float(row["speed_tg"])
    raise ToolFailed(f"llama-batched-bench printed no row for pp={depth} tg={tokens} pl={n} "
                     "(a context too small for it is skipped silently)")


# ---------------------------------------------------------------- bench's side

def batched_decode_tps(gens: list[Any]) -> float:
    """N sequences admitted together and finishing in the same step: N x (tokens - 1) / the decode span, the span
    running from the last-admitted sequence's first token (the end of the last prefill) to its last token."""
    counts = {len(g.token_times) for g in gens}
    if len(counts) != 1 or min(counts) < 2:
        raise ToolFailed(f"bench's sequences decoded unequal or too few tokens: {sorted(len(g.token_times) for g in gens)}")
    last = max(gens, key=lambda g: g.t_start)
    span = last.token_times[-1] - last.token_times[0]
    steps = len(last.token_times) - 1
    if span <= 0:
        raise ToolFailed("bench's decode span is not positive")
    return len(gens) * steps / span


def engine_tps(sizes: list[int], seconds: list[float], n: int) -> float:
    """Sequences x steps / time inside llama_decode, over the decode steps that carried all `n` sequences."""
    steps = [(k, t) for k, t in zip(sizes, seconds) if k == n]
    inside = sum(t for _, t in steps)
    if not steps or inside <= 0:
        raise ToolFailed("bench's scheduler logged no decode step of all its sequences")
    return sum(k for k, _ in steps) / inside


def bench_decode(model: Any, threads: int, depth: int, tokens: int, n: int,
                 n_ctx: int | None = None) -> tuple[float, float]:
    """Bench's own decode rate, and its engine-only rate (bench_engine): the llamacpp backend built as the worker
    builds it, N requests of exactly `depth` prompt tokens decoding exactly `tokens` tokens each (BatchScheduler
    with N sequences; N = 1: one at a time), each sequence's context `n_ctx` tokens (default: the backend's)."""
    from pydantic import TypeAdapter

    from bench.backends.base import Request, create_backend
    from bench.backends.llamacpp import LlamaCppBackend
    from bench.config.suite import BackendConfig
    from bench.measure.timing import derive

    cfg: Any = TypeAdapter(BackendConfig).validate_python({"kind": "llamacpp", "n_threads": threads})
    cfg.n_ctx = n_ctx or max(cfg.n_ctx, depth + tokens)
    backend = create_backend(cfg, model)
    if not isinstance(backend, LlamaCppBackend):
        raise ToolFailed(f"the llamacpp backend is {type(backend).__name__}, not LlamaCppBackend")
    backend.parallel = n  # as bench.worker does for --parallel N
    backend.load()
    try:
        long = backend.llm.tokenize((_TEXT * (2 + (depth + n) // 20)).encode(), add_bos=True, special=False)
        while len(long) < depth + n:
            long = long + long[1:]
        prompts = {f"fidelity-{i}": long[:1] + long[1 + i:depth + i] for i in range(n)}
        backend._prompt_tokens = lambda req: (prompts[req.id], [])  # type: ignore[method-assign]
        requests = [Request(id=rid, messages=[], prompt="", max_tokens=tokens, ignore_eos=True) for rid in prompts]
        gens = backend.generate(requests)
        sched = backend._scheduler
        assert sched is not None
        sizes, seconds = list(sched.step_sizes), list(sched.step_engine_s)
    finally:
        backend.close()
    for g in gens:
        if g.error:
            raise ToolFailed(f"bench's decode failed: {g.error}")
        if g.completion_tokens != tokens or g.prompt_tokens != depth:
            raise ToolFailed(f"bench decoded {g.completion_tokens} tokens after {g.prompt_tokens} prompt tokens; "
                             f"expected {tokens} after {depth}")
    if n == 1:
        g = gens[0]
        rate = derive(g.to_dict(), g.prompt_tokens, g.completion_tokens, g.cached_tokens)["decode_tps"]
        if not rate:
            raise ToolFailed("bench's decode rate could not be derived")
        return float(rate), engine_tps(sizes, seconds, 1)
    return batched_decode_tps(gens), engine_tps(sizes, seconds, n)


# ---------------------------------------------------------------- the command

def _levels(value: str) -> list[int]:
    from bench.config.suite import MAX_PARALLEL

    out: list[int] = []
    for part in value.split(","):
        part = part.strip()
        if not part.isdigit() or not 1 <= int(part) <= MAX_PARALLEL:
            raise UserInputError(f"{value!r}: expected comma-separated whole numbers from 1 to {MAX_PARALLEL}",
                                 field="--parallel")
        if int(part) not in out:
            out.append(int(part))
    return sorted(out)


def _check(args: Any) -> list[int]:
    for flag, value, low in (("--threads", args.threads, 1), ("--depth", args.depth, 1), ("--tokens", args.tokens, 2),
                             ("--rounds", args.rounds, 1)):
        if value < low:
            raise UserInputError(f"{value}: expected a whole number of at least {low}", field=flag)
    if args.n_ctx is not None and args.n_ctx < args.depth + args.tokens:
        raise UserInputError(f"{args.n_ctx}: expected at least DEPTH + TOKENS = {args.depth + args.tokens}, the "
                             "tokens one sequence holds", field="--n-ctx")
    return _levels(args.parallel)


def measure(args: Any, log: Callable[[str], None], on_progress: Callable[[FidelityReport], None]) -> FidelityReport:
    """Check the flags and tools, resolve the model, run the interleaved rounds; `on_progress` gets the report so
    far after each run of a tool or of bench, so a failure later loses nothing measured."""
    import psutil

    from bench import __version__
    from bench.backends.llamacpp import cpu_advertises_amx
    from bench.models.catalog import DEFAULT_MODEL, get_entry
    from bench.models.resolve import resolve_model

    levels = _check(args)
    get_entry(args.model or DEFAULT_MODEL)  # an unknown id fails here, before the tools are looked for
    version = llama_cpp_python_version()
    llama_bench = find_tool("llama-bench", args.llama_bench, version, "--llama-bench") if 1 in levels else None
    batched = (find_tool("llama-batched-bench", args.batched_bench, version, "--batched-bench")
               if any(n > 1 for n in levels) else None)
    model = resolve_model(args.model or DEFAULT_MODEL)
    repack = not cpu_advertises_amx()  # what LlamaCppBackend.load picks with extra_buffers unset
    load = psutil.getloadavg()[0] if hasattr(psutil, "getloadavg") else None
    if load is not None and load > LOAD_WARN:
        log(f"warning: the 1-minute load average is {load:.2f} (> {LOAD_WARN}): something else is running; "
            "these figures are only worth keeping from a quiet machine")
    report = FidelityReport(
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"), bench_version=__version__,
        llama_cpp_python_version=version,
        model={"id": model.id, "quantization": model.quantization, "path": str(model.path), "sha256": model.sha256,
               "size_bytes": model.size_bytes},
        threads=args.threads, depth=args.depth, tokens=args.tokens, rounds=args.rounds, parallel=levels,
        bench_n_ctx=args.n_ctx,
        tools={"llama-bench": str(llama_bench) if llama_bench else None,
               "llama-batched-bench": str(batched) if batched else None}, extra_buffers=repack,
        load_avg_1m=load, quiet_machine=None if load is None else load <= LOAD_WARN,
        measurements=[Measurement(name="decode" if n == 1 else f"batched N={n}", parallel=n,
                                  tool="llama-bench" if n == 1 else "llama-batched-bench") for n in levels])
    t, d, k = args.threads, args.depth, args.tokens
    for r in range(args.rounds):
        order: list[str] = []
        report.order.append(order)
        for m in report.measurements:
            def tool(m: Measurement = m) -> None:
                if m.parallel == 1:
                    assert llama_bench is not None
                    out = _run_tool(llama_bench_cmd(llama_bench, model.path, t, d, k, repack))
                    m.llama_cpp_tps.append(parse_llama_bench(out, k, d))
                else:
                    assert batched is not None
                    out = _run_tool(batched_bench_cmd(batched, model.path, t, d, k, m.parallel, repack))
                    m.llama_cpp_tps.append(parse_batched_bench(out, d, k, m.parallel))

            def ours(m: Measurement = m) -> None:
                whole, engine = bench_decode(model, t, d, k, m.parallel, args.n_ctx)
                m.bench_tps.append(whole)
                m.bench_engine_tps.append(engine)

            pair = [(m.tool, tool), ("bench", ours)]
            for label, run in pair if r % 2 == 0 else pair[::-1]:
                log(f"round {r + 1}/{args.rounds}: {m.name}: {label}")
                run()
                order.append(f"{m.name}: {label}")
                m.settle()
                on_progress(report)
        report.complete = r == args.rounds - 1
        on_progress(report)
    return report


def table(report: FidelityReport) -> Any:
    from rich.table import Table

    from bench.fmt import num

    m = report.model
    t = Table(title=f"decode fidelity, {report.created_at}: {m['id']} {m['quantization']} "
                    f"(sha256 {m['sha256'][:12]}), {report.threads} threads, depth {report.depth}, "
                    f"{report.tokens} tokens, {report.rounds} round(s)")
    for col in ("measurement", "llama.cpp tool", "llama.cpp tok/s per round", "bench tok/s per round",
                "llama.cpp median", "bench median", "bench / llama.cpp per round", "median ratio",
                "engine only: median ratio"):
        t.add_column(col)
    for x in report.measurements:
        t.add_row(x.name, x.tool, ", ".join(num(v, ".2f") for v in x.llama_cpp_tps),
                  ", ".join(num(v, ".2f") for v in x.bench_tps), num(x.llama_cpp_median, ".2f"),
                  num(x.bench_median, ".2f"), ", ".join(num(v, ".3f") for v in x.round_ratios),
                  num(x.ratio, ".3f"), num(x.engine_ratio, ".3f"))
    return t


def run(args: Any) -> int:
    """The `bench fidelity` command: the table (or --json); -o writes the JSON, rewritten after each run."""
    from bench.display import console, out
    from bench.fmt import write_text_atomic

    def save(report: FidelityReport) -> None:
        if args.output:
            write_text_atomic(Path(args.output), report.model_dump_json(indent=2) + "\n")

    report = measure(args, lambda line: console.print(line, markup=False, highlight=False), save)
    if args.json:
        sys.stdout.write(report.model_dump_json(indent=2) + "\n")
        return 0
    out.print(table(report))
    out.print(f"model sha256 {report.model['sha256']}; load average at start "
              f"{'-' if report.load_avg_1m is None else f'{report.load_avg_1m:.2f}'}; "
              "definitions: bench fidelity --json | .definitions")
    return 0
