"""Run a suite: run each cell of the matrix (bench.matrix) in its own process, score and store every sample."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import platform
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import __version__
from bench.backends.base import Request
from bench.config.suite import MAX_PARALLEL, Suite, suite_line
from bench.cost import CostModel
from bench.data import Sample, load_samples
from bench.errors import BenchError, UserInputError, did_you_mean
from bench.matrix import CellPlan, plan_cells
from bench.prompts import chat_messages, completion_prompt
from bench.records import make_row
from bench.registry import backend_traits
from bench.results.derive import write_summary
from bench.results.load import latest_rows
from bench.results.store import (
    RunDir,
    SampleWriter,
    SuiteLock,
    open_run,
    utcnow,
)
from bench.tasks import get_task
from bench.worker import run_cell


@dataclass
class RunOutcome:
    run: RunDir
    resumed: bool
    summary: dict[str, Any]
    errored_cells: list[str] = field(default_factory=list)
    skipped_cells: list[str] = field(default_factory=list)


def identity(suite: Suite) -> str:
    """What makes two runs comparable sample for sample: task, data, split and prompt (not the models)."""
    data_hash = ""
    path = suite.data_path()
    if path and path.is_file():
        data_hash = hashlib.sha256(path.read_bytes()).hexdigest()
    doc = {"task": suite.task.model_dump(), "dataset": suite.dataset.model_dump(), "data": data_hash,
           "split": suite.split.model_dump(), "prompt": suite.prompt.model_dump(), "metric": suite.metric}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:16]


def build_requests(suite: Suite, samples: list[Sample], chat: bool) -> list[Request]:
    g = suite.generation
    stop = list(g.stop) + ([] if chat else ["\nInput:"])
    return [Request(id=s.id, messages=chat_messages(suite.prompt, s.fields),
                    prompt=completion_prompt(suite.prompt, s.fields), max_tokens=g.max_tokens,
                    temperature=g.temperature, seed=g.seed, stop=stop, reference=s.reference) for s in samples]


def environment() -> dict[str, Any]:
    from importlib import metadata

    versions: dict[str, str | None] = {}
    for pkg in ("llama-cpp-python", "datasets", "evaluate", "numpy", "pydantic", "httpx", "vllm", "plotly"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return {"python": sys.version.split()[0], "platform": platform.platform(), "packages": versions}


def spawn_cell(plan: CellPlan, requests: list[Request], on_event: Any, isolation: str, parallel: int = 1) -> None:
    """Run one cell, in a child process (default) or inline; events stream back as they happen.

    The child is a fresh interpreter (`python -m bench.worker`): its peak memory is its own, and a crash,
    a segfault or the OOM killer ends only that cell."""
    args = (plan.backend.model_dump(), plan.model, requests, parallel)
    if isolation == "inline":
        run_cell(on_event, *args)
        return
    from multiprocessing.connection import Connection

    r, w = os.pipe()
    proc = subprocess.Popen([sys.executable, "-m", "bench.worker", str(w)], stdin=subprocess.PIPE, pass_fds=(w,))
    os.close(w)
    conn = Connection(r, writable=False)
    finished = False
    try:
        assert proc.stdin is not None
        try:
            proc.stdin.write(pickle.dumps(args))
            proc.stdin.close()
        except BrokenPipeError:
            pass
        while True:
            try:
                if not conn.poll(0.2):
                    if proc.poll() is not None and not conn.poll(0):
                        break
                    continue
                event = conn.recv()
            except (EOFError, OSError):
                break
            on_event(event)
            if event[0] in ("done", "fatal"):
                finished = True
                break
    finally:
        conn.close()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if not finished:
        code = proc.returncode
        why = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        if code == -9:
            why += " (out of memory?)"
        on_event(("fatal", f"cell process died: {why}"))


def _hardware(hardware: str | None) -> tuple[dict[str, Any], Any, str, dict[str, Any]]:
    from bench.hardware import current, fingerprint, load_profiles

    info, profile, note = current(hardware)
    return info | {"fingerprint": fingerprint(info)}, profile, note, load_profiles()


def _bandwidth(info: dict[str, Any], profile: Any) -> tuple[float, str] | None:
    """Decode's ceiling uses this machine's probed bandwidth when there is one, else the profile's figure."""
    from bench.hardware.probe import load_probe

    probed = load_probe(info["fingerprint"])
    if probed:  # decode streams weights: the read-only rate is the fair ceiling, copy the next best
        best = probed.get("read_gbs") or probed.get("copy_gbs")
        if best:
            return float(best), "probe"
    figure = getattr(profile, "memory_bandwidth_gbs", None) if profile is not None else None
    return (float(figure), "profile") if figure else None


def _roofline_figures(info: dict[str, Any], profile: Any) -> dict[str, Any]:
    bw = _bandwidth(info, profile)
    return {"bandwidth_gbs": bw[0] if bw else None, "bandwidth_source": bw[1] if bw else None,
            "peak_tflops_fp16": getattr(profile, "peak_tflops_fp16", None) if profile is not None else None,
            "profile": getattr(profile, "id", None)}


def _first_probe(info: dict[str, Any], quiet: bool) -> None:
    """A first run on a machine without a stored bandwidth probe measures it once (seconds) and says so."""
    from bench.display import console
    from bench.hardware.probe import load_probe, probe, save_probe

    if load_probe(info["fingerprint"]):
        return
    if not quiet:
        console.print("no memory-bandwidth probe stored for this machine: measuring it once (a few seconds; "
                      "`--no-probe` skips it)", soft_wrap=True)
    try:
        result = probe()
    except (MemoryError, RuntimeError, OSError) as exc:
        if not quiet:
            console.print(f"[yellow]bandwidth probe failed ({exc}); the roofline uses the profile's figure[/]")
        return
    path = save_probe(info["fingerprint"], result)
    if not quiet:
        console.print(f"read {result['read_gbs']} GB/s, copy {result['copy_gbs']} GB/s in {result['elapsed_s']} s; "
                      f"stored in {_shown_path(path)}", soft_wrap=True)


def _shown_path(path: Path | None) -> str:
    """The suite's path relative to the working directory when it is below it, so committed results name no
    folder of the machine that made them."""
    if path is None:
        return ""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def run_suite(suite: Suite, *, models: list[str] | None = None, quantizations: list[str] | None = None,
              limit: int | None = None,
              hardware: str | None = None, results_dir: Path = Path("results"), fresh: bool = False,
              isolation: str = "process", quiet: bool = False, ray: str | None = None,
              require_quiet: bool = False, probe: bool = False, parallel: int | None = None) -> RunOutcome:
    """Run every cell of the suite's matrix on every sample not already stored; write the summary.

    `parallel` (--parallel) overrides the suite's generation.parallel: requests decoded at once."""
    from bench.models.resolve import resolve_model

    if parallel is not None:
        if not 1 <= parallel <= MAX_PARALLEL:
            raise UserInputError(f"--parallel {parallel}: expected a whole number from 1 to {MAX_PARALLEL}",
                                 field="--parallel")
        suite.generation = suite.generation.model_copy(update={"parallel": parallel})

    samples = load_samples(suite, limit)  # bad data fails here, before any model loads
    info, profile, note, profiles = _hardware(hardware)
    hardware_id = profile.id if profile is not None else f"unprofiled-{info['fingerprint']}"
    if quantizations:
        from bench.models.quantize import normalize_qtype

        quantizations = [normalize_qtype(q) for q in quantizations]
    cluster = None
    if ray is not None or suite.executor.kind == "ray":
        from bench.executors.ray_cluster import connect

        cluster = connect(ray if ray not in (None, "auto") else suite.executor.address)
    elif suite.matrix.hardware and suite.matrix.hardware != [hardware_id]:
        raise UserInputError(f"matrix.hardware lists {', '.join(suite.matrix.hardware)}, but without a cluster "
                             f"every cell runs here ({hardware_id})", file=str(suite.path),
                             line=suite_line(suite, "matrix", "hardware"), field="matrix.hardware",
                             hint="run with --ray ADDRESS (or executor: {kind: ray}) to place cells on nodes")
    unknown = [h for h in suite.matrix.hardware if h not in profiles]
    if unknown:
        raise UserInputError(f"unknown hardware profile {unknown[0]!r}; known: {', '.join(sorted(profiles))}",
                             file=str(suite.path), line=suite_line(suite, "matrix", "hardware"),
                             field="matrix.hardware", hint=did_you_mean(unknown[0], profiles))
    hardware_ids = suite.matrix.hardware or None
    plans = plan_cells(suite, models, hardware_id, "local", quantizations, hardware_ids)
    if not plans:
        raise UserInputError("the matrix has no cells (no models, or --models matched none)", file=str(suite.path),
                             line=suite_line(suite, "matrix"), field="matrix")
    if probe and cluster is None and any(backend_traits(p.backend.kind).timed_here for p in plans):
        _first_probe(info, quiet)
    manifest = {
        "suite": {"name": suite.name, "path": _shown_path(suite.path), "sha256": suite.sha256,
                  "identity": identity(suite),
                  "task": suite.kind, "metric": suite.metric or get_task(suite.kind).metric, "target": suite.target,
                  "tolerance": suite.tolerance, "sensitive": suite.sensitive,
                  "max_p95_latency_s": suite.max_p95_latency_s, "n_samples": len(samples),
                  "min_samples": suite.min_samples, "delta": suite.delta,
                  "config": suite.model_dump(mode="json")},
        # the figures the summary's roofline uses, so any command derives the same summary.json again
        "roofline": _roofline_figures(info, profile),
        "bench_version": __version__,
        "environment": environment(),
        "hardware": {"detected": info, "fingerprint": info["fingerprint"], "profile": hardware_id if profile else None,
                     "note": note, "cost_per_hour_usd": getattr(profile, "cost_per_hour_usd", None)},
    }
    with SuiteLock(Path(results_dir), suite.name):
        return _run_locked(suite, samples, plans, manifest, info, profile, note, profiles, results_dir, fresh,
                           isolation, quiet, resolve_model, cluster, require_quiet)


def _run_locked(suite: Suite, samples: list[Sample], plans: list[CellPlan], manifest: dict[str, Any], info: Any,
                profile: Any, note: str, profiles: Any, results_dir: Path, fresh: bool, isolation: str, quiet: bool,
                resolve_model: Any, cluster: Any = None, require_quiet: bool = False) -> RunOutcome:
    """The run itself, holding the suite's lock: open or resume, run what is missing, write the summary."""
    from bench.display import cell_progress, console

    run, resumed = open_run(Path(results_dir), suite.name, manifest["suite"]["identity"], manifest, fresh)
    if not quiet:
        console.print(f"[bold]{suite.name}[/]: {len(samples)} samples x {len(plans)} cells -> {run.path}"
                      + (" (resuming)" if resumed else ""), soft_wrap=True)
        console.print(f"hardware: {note}")
    # resume by the one merge rule (bench/results/load.py): a sample is done when its latest row has no error
    done = {(r["cell_id"], r["sample_id"]) for r in latest_rows(run.samples()) if not r.get("error")}
    outcome = RunOutcome(run=run, resumed=resumed, summary={})
    current = run.manifest()
    cells = current.get("cells", [])
    cells += [p.cell for p in plans if p.cell not in cells]
    backends = current.get("cell_backends", {})
    backends.update({p.cell_id: p.backend.model_dump(mode="json") for p in plans})
    run.update_manifest(cells=cells, cell_backends=backends)
    _write_inputs(run, suite, samples)
    writer = SampleWriter(run.samples_path)
    try:
        with cell_progress(quiet) as progress:
            work = []
            for plan in plans:
                todo = [s for s in samples if (plan.cell_id, s.id) not in done]
                if not todo:
                    outcome.skipped_cells.append(plan.cell_id)
                else:
                    work.append((plan, todo))

            def one(item: tuple[CellPlan, list[Sample]]) -> bool:
                if require_quiet and cluster is None and not _quiet_enough(item[0], quiet):
                    return _refuse_noisy(suite, item[0], item[1], writer, profile, profiles)
                return _run_one_cell(suite, item[0], item[1], samples, writer, progress, profile, profiles,
                                     isolation, quiet, resolve_model, cluster)

            if cluster is None:  # this machine: one cell at a time, so no cell's timing disturbs another's
                errored = [one(item) for item in work]
            else:  # a cluster: every cell at once; each node takes one cell at a time (its hardware resource)
                from concurrent.futures import ThreadPoolExecutor

                with ThreadPoolExecutor(max_workers=max(len(work), 1)) as pool:
                    errored = list(pool.map(one, work))
            outcome.errored_cells += [plan.cell_id for (plan, _), bad in zip(work, errored) if bad]
        # a batched main pass (--parallel) measured per-request latency under load: time it at concurrency 1 too
        # (in-process engines only: an HTTP backend's own `concurrency` is how it is served, and its calls may cost)
        from bench.sweep import loaded_cells, run_levels

        idle = loaded_cells(latest_rows(run.samples())) & {
            p.cell_id for p in plans if backend_traits(p.backend.kind).in_process}
        if (suite.load.concurrency or idle) and cluster is None:  # operating points: timing passes at each level

            def prepare(plan: CellPlan) -> bool:
                try:
                    prepare_model(plan, resolve_model, quiet)
                    return True
                except BenchError:
                    return False

            run_levels(suite, plans, samples, run, isolation, profile, profiles, quiet, prepare, idle)
        elif (suite.load.concurrency or idle) and not quiet:
            console.print("--concurrency, and the concurrency-1 pass of --parallel: timing passes run on this "
                          "machine only; skipped on a cluster")
    finally:
        writer.close()
    outcome.summary = write_summary(run, profile, _bandwidth(info, profile))
    run.update_manifest(finished_at=utcnow())
    return outcome


def _write_inputs(run: Any, suite: Suite, samples: list[Sample]) -> None:
    """Append each sample's input fields to inputs.jsonl once (pre-routers are fitted on the request alone)."""
    have = set(run.inputs())
    new = [s for s in samples if s.id not in have]
    if not new:
        return
    writer = SampleWriter(run.inputs_path)
    try:
        for s in new:
            writer.write({"sample_id": s.id, "split": s.split, "reference": s.reference,
                          "fields": {f: s.fields.get(f) for f in suite.dataset.input_fields}})
    finally:
        writer.close()


QUIET_WAIT_S = 60.0


def _quiet_enough(plan: CellPlan, quiet: bool) -> bool:
    """--require-quiet: wait up to QUIET_WAIT_S for other processes to leave the CPU alone."""
    from bench.display import console
    from bench.measure.contention import wait_for_quiet

    if not backend_traits(plan.backend.kind).timed_here:
        return True
    w = wait_for_quiet(QUIET_WAIT_S)
    if w["contended"] and not quiet:
        console.print(f"machine not quiet: other processes used {w['others_cores']:.2f} cores", markup=False)
    return not w["contended"]


def _refuse_noisy(suite: Suite, plan: CellPlan, todo: list[Sample], writer: SampleWriter, profile: Any,
                  profiles: dict[str, Any]) -> bool:
    """The cell is not timed on a busy machine: its samples become error rows, and a rerun tries again."""
    cost_model = CostModel(plan, profile, profiles)
    for s in todo:
        gen = {"request_id": s.id, "error": f"--require-quiet: other processes kept the CPU busy for "
                                            f"{QUIET_WAIT_S:g} s; not timed"}
        writer.write(make_row(suite, plan, s, gen, {}, cost_model))
    return True


def prepare_model(plan: CellPlan, resolve_model: Any, quiet: bool) -> None:
    """Set the cell's model: resolved (and verified) from the cache for backends that load a model file, a
    stand-in for in-process ones that do not; a BenchError when it cannot be had."""
    traits = backend_traits(plan.backend.kind)
    if plan.model is not None or not traits.in_process or plan.model_ref is None:
        return
    if not traits.loads_model_file:
        from bench.models.resolve import ResolvedModel

        plan.model = ResolvedModel(id=plan.cell["model"], quantization=plan.cell["quantization"], path=Path(),
                                   sha256="", size_bytes=0, chat=plan.chat)
        return
    plan.model = resolve_model(plan.model_ref, plan.cell["quantization"], quiet=quiet)


def _run_one_cell(suite: Suite, plan: CellPlan, todo: list[Sample], samples: list[Sample], writer: SampleWriter,
                  progress: Any, profile: Any, profiles: dict[str, Any], isolation: str, quiet: bool,
                  resolve_model: Any, cluster: Any = None) -> bool:
    """Run one cell's remaining samples; returns True when any of them errored."""
    from bench.display import cell_log, console
    from bench.results.schema import cell_label

    label = cell_label(plan.cell)
    task_id = progress.add_task(label, total=len(samples), completed=len(samples) - len(todo), tps="")
    log = cell_log(label, len(samples), len(samples) - len(todo), quiet)  # lines where no live bar shows
    by_id = {s.id: s for s in todo}
    state: dict[str, Any] = {"load": {}, "errored": False, "written": set(), "tokens": 0, "decode_s": 0.0,
                             "node": None}
    traits = backend_traits(plan.backend.kind)
    on_cluster = cluster is not None and traits.in_process
    # a cell placed on other hardware is priced at that hardware's hour
    cost_model = CostModel(plan, profiles.get(str(plan.cell.get("hardware")), profile) if on_cluster else profile,
                           profiles)

    def write_error(message: str) -> None:
        for s in todo:
            if s.id not in state["written"]:
                gen = {"request_id": s.id, "error": message}
                writer.write(make_row(suite, plan, s, gen, state["load"], cost_model))
                state["written"].add(s.id)
                progress.advance(task_id)
        state["errored"] = True

    if not on_cluster:  # on a cluster the node resolves the model from its own cache
        try:
            prepare_model(plan, resolve_model, quiet)
        except BenchError as exc:
            write_error(f"model unavailable: {exc}")
            console.print(f"[red]{label}: {exc}[/]")
            return True

    def on_event(event: tuple) -> None:
        kind, payload = event
        if kind == "load":
            state["load"] = payload
            batching = (payload.get("details") or {}).get("batching") or {}
            if batching.get("batch_invariant") is False and not quiet:
                console.print(f"{label}: this model's logits change with the batch's width on this machine (its "
                              "weight types' kernels round by batch size): answers may differ from one at a time "
                              "(changed_answers)", markup=False, highlight=False)
        elif kind == "node":
            state["node"] = payload
        elif kind == "retry":
            console.print(f"[yellow]{label}: node lost, {payload}[/]")
        elif kind == "sample":
            sample = by_id[payload["request_id"]]
            if sample.id in state["written"]:
                return  # a retried task's repeat: the first answer stands
            row = make_row(suite, plan, sample, payload, state["load"], cost_model)
            if state["node"] is not None:
                row["node"] = state["node"]
            writer.write(row)
            state["written"].add(sample.id)
            state["errored"] |= bool(row["error"])
            if row["decode_s"] and row["completion_tokens"]:
                state["tokens"] += row["completion_tokens"] - 1
                state["decode_s"] += row["decode_s"]
            tps = state["tokens"] / state["decode_s"] if state["decode_s"] else 0.0
            progress.update(task_id, advance=1, tps=f"{tps:.1f} tok/s")
            log.update(len(samples) - len(todo) + len(state["written"]), tps)
        elif kind == "fatal":
            console.print(f"[red]{label}: {payload}[/]")
            write_error(str(payload))

    requests = build_requests(suite, todo, plan.chat)
    with log.heartbeat():
        if on_cluster:
            from bench.executors.ray_cluster import run_cell_on_cluster

            spec = None if plan.model_ref is None else {
                "id": plan.cell["model"], "quantization": plan.cell["quantization"], "chat": plan.chat,
                "ref": plan.model_ref.model_dump(mode="json")}
            run_cell_on_cluster(cluster, plan.cell["hardware"], plan.backend.model_dump(), spec, requests, on_event,
                                state["written"], suite.generation.parallel)
        else:
            spawn_cell(plan, requests, on_event, isolation, suite.generation.parallel)
    if len(state["written"]) < len(todo):
        write_error("cell ended without an answer for this sample")
    log.finish(len(state["written"]), state["tokens"] / state["decode_s"] if state["decode_s"] else None,
               bool(state["errored"]))
    return bool(state["errored"])
