"""Cells on a Ray cluster: each cell is a Ray task pinned to a node that advertises its hardware profile.

What runs where:
- the driver (`bench run --ray`) plans the matrix, holds the run's lock and alone writes the run directory, with the
  same fsync-per-row and resume rules as a local run;
- each cell is one streaming Ray task that needs `hardware:<profile-id>: 1` (a node advertises 1, so one cell at
  a time per node and no cell's timing is disturbed by another) and 1 CPU. On its node it resolves the model from
  that node's own cache, checked by sha256 (weights never travel through Ray), runs the cell exactly as a local
  worker does, and yields events (load, one per sample, done) back to the driver as they happen;
- a cell whose node is lost mid-way is resubmitted by the driver with only the samples not yet written, to any
  node offering the profile, up to RETRIES times; then its remaining samples are errored rows. Nothing is written
  twice: the driver keeps what it wrote per (cell, sample).
- a cell for which no node offers the profile is reported as unplaceable, with the profiles present, at once.
"""

from __future__ import annotations

import os
import queue
import socket
import threading
from typing import Any

from bench.errors import UserInputError

RESOURCE_PREFIX = "hardware:"
RETRIES = 2
INSTALL = "pip install -e '.[ray]'"


def require_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UserInputError("--ray needs Ray, which is not installed", hint=INSTALL) from None
    return ray


def connect(address: str | None) -> Any:
    """Join the cluster at `address` ('auto': the one this machine is part of). Exit 2 when there is none."""
    ray = require_ray()
    if ray.is_initialized():
        return ray
    try:
        ray.init(address=address or "auto", log_to_driver=False, logging_level="ERROR",
                 runtime_env={"env_vars": {k: v for k, v in os.environ.items()
                                           if k in ("BENCH_CACHE_DIR", "BENCH_HARDWARE_DIR")}})
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise UserInputError(f"cannot reach a Ray cluster at {address or 'auto'}: {str(exc).splitlines()[0]}",
                             field="--ray", hint="start one with 'bench ray node --head' (see README)") from None
    return ray


def profiles_present(ray: Any) -> list[str]:
    """The hardware profiles the cluster's nodes advertise now."""
    return sorted(k[len(RESOURCE_PREFIX):] for k in ray.cluster_resources() if k.startswith(RESOURCE_PREFIX))


def node_info() -> dict[str, Any]:
    """Where a cell ran: host, Ray node id, the profile the node advertises and the machine it detects."""
    import ray

    from bench.hardware import fingerprint
    from bench.hardware.detect import detect

    ctx = ray.get_runtime_context()
    resources = ray.nodes()
    advertised = None
    for n in resources:
        if n.get("NodeID") == ctx.get_node_id():
            advertised = next((k[len(RESOURCE_PREFIX):] for k in n.get("Resources", {})
                               if k.startswith(RESOURCE_PREFIX)), None)
    from bench.hardware.probe import load_probe

    info = detect()
    fp = fingerprint(info)
    probe = load_probe(fp) or {}
    return {"host": socket.gethostname(), "node_id": ctx.get_node_id(), "advertised": advertised,
            "fingerprint": fp, "cpu": info.get("cpu_model"),
            # the node's own stored bandwidth probe (bench ray node measures one), for the cell's roofline
            "bandwidth_gbs": probe.get("read_gbs") or probe.get("copy_gbs")}


def _cell_events(backend_cfg: dict[str, Any], model_spec: dict[str, Any] | None, requests: list[Any],
                 parallel: int = 1) -> Any:
    """On the node: resolve the model from this node's cache, run the cell as a local worker does, yield events."""
    from bench.worker import run_cell

    yield ("node", node_info())
    try:
        model = resolve_on_node(backend_cfg, model_spec)
    except Exception as exc:  # a node without the model file, or a damaged one: this cell errors
        yield ("fatal", f"model unavailable on node {socket.gethostname()}: {exc}")
        return
    events: queue.Queue = queue.Queue()

    def work() -> None:
        run_cell(events.put, backend_cfg, model, requests, parallel)
        events.put(("_end", None))

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    while True:
        event = events.get()
        if event[0] == "_end":
            break
        yield event
    worker.join()


def resolve_on_node(backend_cfg: dict[str, Any], spec: dict[str, Any] | None) -> Any:
    """The cell's model as a ResolvedModel on this node (the fake backend needs no file)."""
    from pathlib import Path

    from bench.config.suite import ModelRef
    from bench.models.resolve import ResolvedModel, resolve_model

    if spec is None:
        return None
    from bench.registry import backend_traits

    if not backend_traits(backend_cfg["kind"]).loads_model_file:
        return ResolvedModel(id=spec["id"], quantization=spec["quantization"], path=Path(), sha256="",
                             size_bytes=0, chat=spec["chat"])
    ref = ModelRef.model_validate(spec["ref"])
    return resolve_model(ref, spec["quantization"], quiet=True)


def run_cell_on_cluster(ray: Any, hardware: str, backend_cfg: dict[str, Any], model_spec: dict[str, Any] | None,
                        requests: list[Any], on_event: Any, written: set[str], parallel: int = 1) -> None:
    """Run one cell on a node offering `hardware`, streaming its events to on_event; retry what is left when a
    node is lost. `written` is the driver's set of sample ids already stored for this cell; `parallel` the
    requests decoded at once where the backend can batch."""
    if hardware not in profiles_present(ray):
        present = ", ".join(profiles_present(ray)) or "none"
        on_event(("fatal", f"unplaceable: no node of the Ray cluster offers hardware {hardware!r} "
                           f"(profiles present: {present}); start one with 'bench ray node --hardware {hardware}'"))
        return
    from bench.registry import backend_traits

    gpus = 1 if backend_traits(backend_cfg["kind"]).needs_gpu(backend_cfg) else 0
    remote = ray.remote(_cell_events).options(num_returns="streaming", num_cpus=1, num_gpus=gpus, max_retries=0,
                                             resources={RESOURCE_PREFIX + hardware: 1})
    last_error = ""
    for attempt in range(RETRIES + 1):
        todo = [r for r in requests if r.id not in written]
        if not todo:
            return
        if attempt:
            on_event(("retry", f"attempt {attempt + 1}: {len(todo)} samples left after {last_error}"))
        try:
            for ref in remote.remote(backend_cfg, model_spec, todo, parallel):
                event = ray.get(ref)
                on_event(event)
                if event[0] in ("done", "fatal"):
                    return
            return
        except Exception as exc:  # the node died, the task was lost: resubmit what is left
            last_error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    on_event(("fatal", f"the cell's node was lost {RETRIES + 1} times ({last_error})"))


def node_command(args: Any) -> int:
    """`bench ray node`: detect this machine, match its profile, probe its bandwidth once, and start a Ray node
    (head or worker) that advertises `hardware:<profile-id>: 1`. With --dry-run, print the `ray start` command."""
    import json
    import shlex
    import shutil
    import subprocess

    from bench.display import console
    from bench.hardware import current, fingerprint
    from bench.hardware.probe import load_probe, probe, save_probe

    info, profile, note = current(args.hardware)
    if profile is None:
        raise UserInputError(f"this machine matches no hardware profile ({note})", field="--hardware",
                             hint="name one with --hardware PROFILE, or add a profile under hardware/")
    fp = fingerprint(info)
    stored = load_probe(fp)
    if stored is None and not args.no_probe:
        console.print("no stored bandwidth probe for this machine: measuring it (a few seconds)")
        stored = probe()
        save_probe(fp, stored)
    cmd = [shutil.which("ray") or "ray", "start", "--disable-usage-stats",
           "--resources", json.dumps({RESOURCE_PREFIX + profile.id: 1})]
    if args.head:
        cmd += ["--head", "--port", str(args.port), "--node-ip-address", args.node_ip,
                "--include-dashboard=false"]
    else:
        if not args.address:
            raise UserInputError("a worker node needs the head's address", field="--address",
                                 hint="e.g. --address 10.0.0.5:6379, or --head to start a head node")
        cmd += ["--address", args.address, "--node-ip-address", args.node_ip]
    if args.num_cpus is not None:
        cmd += ["--num-cpus", str(args.num_cpus)]
    console.print(f"hardware: {profile.id} ({note}); bandwidth probe: "
                  + (f"{stored.get('read_gbs')} GB/s read" if stored else "none"), markup=False)
    console.print("$ " + shlex.join(cmd), markup=False, highlight=False, soft_wrap=True)
    if args.dry_run:
        return 0
    return subprocess.call(cmd)


def run(args: Any) -> int:
    """`bench ray SUBCOMMAND`."""
    return node_command(args)
