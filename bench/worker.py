"""One cell's work, run inside its own process: load the backend, generate, report events with memory peaks."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from bench.backends.base import Generation, Request, create_backend

Send = Callable[[tuple], None]


def _set_parallel(backend: Any, parallel: int) -> dict[str, Any] | None:
    """Ask the backend to decode `parallel` requests at once; one that cannot batch runs them one at a time."""
    if parallel <= 1:
        return None
    if hasattr(backend, "parallel"):
        backend.parallel = parallel
        return None
    return {"requested": parallel, "used": 1,
            "note": f"the {backend.kind} backend has no batched decoding (an HTTP backend keeps its own `concurrency`); "
                    "parallel treated as 1"}


def run_cell(send: Send, backend_cfg: dict[str, Any], model: Any, requests: list[Request], parallel: int = 1) -> None:
    """Events: ("load", info), ("sample", generation dict) per request, then ("done", info) or ("fatal", why).

    `parallel`: requests decoded at once where the backend can batch (generation.parallel, --parallel)."""
    from pydantic import TypeAdapter

    from bench.config.suite import BackendConfig
    from bench.measure.memory import MemorySampler

    cfg: BackendConfig = TypeAdapter(BackendConfig).validate_python(backend_cfg)
    sampler = MemorySampler().start()
    rss_before = sampler.rss_mb()
    t0 = time.perf_counter()
    try:
        backend = create_backend(cfg, model)
        unbatched = _set_parallel(backend, parallel)
        info = backend.load()
        if unbatched:
            info.details["parallel"] = unbatched
    except Exception as exc:  # a corrupt file, too little memory, a missing engine: the cell errors
        sampler.stop()
        send(("fatal", f"model failed to load: {exc}"))
        return
    load_s = time.perf_counter() - t0
    rss_after = sampler.rss_mb()
    load = {"load_s": info.load_s if info.load_s else load_s, "rss_before_mb": rss_before,
            "rss_model_mb": max(rss_after - rss_before, 0.0),
            "model_bytes": info.model_bytes or getattr(model, "size_bytes", None),
            "params_m": getattr(model, "params_m", None),
            "gpu_mb": info.gpu_mb, "n_threads": info.n_threads, "details": info.details}
    send(("load", load))
    from bench.measure.contention import ContentionMeter
    from bench.measure.energy import EnergyMeter, reader
    from bench.registry import backend_traits

    meter = ContentionMeter()
    sampler.window()
    energy = EnergyMeter(reader(sampler, backend_traits(cfg.kind), backend_cfg),
                         int(getattr(backend, "parallel", 1) or 1), len(requests))
    energy.start()
    batch_energy: list[float | None] = []  # for engines whose results all arrive when the batch ends

    def on_result(gen: Generation) -> None:
        gen.rss_peak_mb, gen.gpu_peak_mb = sampler.window()
        gen.extra["contention"] = meter.window()
        share = gen.extra.get("batch_share")
        if share is None:
            gen.energy_j = energy.request(gen.t_start, gen.t_start + (gen.t_end or 0.0))
        else:  # the batch's energy, measured once, split by each request's share of the batch's time
            if not batch_energy:
                batch_energy.append(energy.since_last())
            gen.energy_j = None if batch_energy[0] is None else batch_energy[0] * float(share)
            gen.extra["energy_split"] = "the batch's energy by this request's share of the batch time"
        send(("sample", gen.to_dict()))

    try:
        backend.generate(requests, on_result)
    except Exception as exc:  # the engine broke mid-cell: what was sent is kept, the rest errors
        send(("fatal", f"generation failed: {type(exc).__name__}: {exc}"))
        return
    finally:
        try:
            backend.close()
        finally:
            sampler.stop()
    send(("done", {"peak_rss_mb": sampler.peak_mb, "peak_gpu_mb": sampler.gpu_peak_mb,
                   "memory_samples": sampler.samples, "memory_method": sampler.method}))


def _main() -> None:
    """Child entry: the job arrives pickled on stdin; events go back over the pipe whose fd is argv[1]."""
    import pickle
    import sys
    from multiprocessing.connection import Connection

    conn = Connection(int(sys.argv[1]), readable=False)
    try:
        args = pickle.load(sys.stdin.buffer)
        run_cell(conn.send, *args)
    except BrokenPipeError:  # the parent is gone: nothing left to report to
        pass
    finally:
        conn.close()


if __name__ == "__main__":
    _main()
