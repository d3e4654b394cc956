"""The cascade as `bench serve` runs it: bench.router's plan, steps and accept rule, under per-tier limits.

Each tier call goes through a gate: at most `limit` calls at once per tier (`tier_limit`: the concurrency the routing
file priced the tier at, or the service's `--concurrency`; an in-process llama.cpp tier then decodes that many calls
in one batch, an engine that cannot batch takes one at a time). A call waits for
its gate and runs within what is left of the request's deadline, and of `tier_timeout_s` where one is set. A tier
that fails (an upstream error, a timeout, no free slot in time, an exception) is recorded as a failed step and the
request escalates to the next tier of its plan; the last step decides the answer. A timed-out call keeps its slot
until its thread returns, so a stuck tier cannot take more threads than its limit: the service never hangs on it.
A batching tier is told when its call is given up (`bench.router.Cancel`), and the call leaves its batch before the next
decode step, so abandoned requests do not keep decoding in slots that waiting ones need.
"""

from __future__ import annotations

import asyncio
import functools
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bench.registry import backend_traits
from bench.router import Cancel


def plan(router: Any, task: str, fields: dict[str, Any] | None, text: str) -> list[str]:
    """The cells to try in order: `Router.plan` (pre-router and sensitivity applied) where the router has one,
    else the calibrated cascade's chain."""
    fn = getattr(router, "plan", None)
    if callable(fn):
        return list(fn(task, fields, text))
    return router.chain(task) or [router.first(task)]


def preroute(router: Any, task: str, fields: dict[str, Any] | None, text: str) -> dict[str, Any] | None:
    """The pre-router's decision (`Router.preroute`, remembered from `plan`), or None where there is none."""
    fn = getattr(router, "preroute", None)
    return fn(task, fields, text) if fn is not None else None


def sensitive(router: Any, task: str, text: str) -> bool | None:
    """Whether the request holds personal data, by `Router.sensitive`; None where the router cannot tell."""
    fn = getattr(router, "sensitive", None)
    return bool(fn(task, text)) if callable(fn) else None


def tier_limit(tier: Any, concurrency: int | None = None) -> int:
    """Calls at once to a tier: `--concurrency` where given, else the concurrency the routing file priced and timed
    it at (`bench thresholds`: a latency budget may have set 1 where its run decoded 8 at once), else its HTTP
    backend's `concurrency` (4 by default). An in-process engine that cannot batch takes one call at a time."""
    backend = (tier.runtime or {}).get("backend") or {}
    traits = backend_traits(backend["kind"]) if backend else None
    if traits is None or (traits.in_process and not traits.batches):
        return 1
    if traits.in_process:
        from bench.config.suite import MAX_PARALLEL

        return min(int(concurrency or tier.concurrency or 1), MAX_PARALLEL)
    return int(concurrency or tier.concurrency or backend.get("concurrency") or 4)


class Gates:
    """Bounded concurrency per tier (`tier_limit`), and the threads tier calls run on. A batching in-process tier
    is loaded to decode that many calls at once (`Router.parallel`)."""

    def __init__(self, router: Any, concurrency: int | None = None):
        self.limits: dict[str, int] = {}
        batching: set[str] = set()
        for task in router.tasks():
            for tier in router.doc.task(task).tiers:
                limit = tier_limit(tier, concurrency)
                self.limits[tier.cell] = min(self.limits.get(tier.cell, limit), limit)
                backend = (tier.runtime or {}).get("backend") or {}
                if backend and backend_traits(backend["kind"]).batches:
                    batching.add(tier.cell)
        for cell in batching:
            router.parallel[cell] = self.limits[cell]
        self._sems: dict[str, asyncio.Semaphore] = {}
        self.pool = ThreadPoolExecutor(max_workers=max(1, sum(self.limits.values())),
                                       thread_name_prefix="bench-tier")

    def gate(self, cell: str) -> asyncio.Semaphore:
        if cell not in self._sems:  # created inside the running loop
            self._sems[cell] = asyncio.Semaphore(self.limits.get(cell, 1))
        return self._sems[cell]

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


def _failed(cell: str, kind: str, message: str, wall_s: float | None) -> dict[str, Any]:
    return {"cell": cell, "output": None, "parsed": None, "verified": False, "confidence": None, "score": None,
            "cost_usd": None, "latency_s": None, "error": message, "error_kind": kind, "prompt_tokens": None,
            "completion_tokens": None, "accepted": False, "wall_s": wall_s}


async def _acquire(sem: asyncio.Semaphore, timeout: float) -> bool:
    """Take a slot within `timeout` seconds; False (and no slot held) when none came free."""
    task = asyncio.ensure_future(sem.acquire())
    await asyncio.wait({task}, timeout=timeout)
    if task.done():
        return not task.cancelled() and task.exception() is None
    task.cancel()  # Semaphore.acquire hands a slot it was just given on to the next waiter when cancelled
    try:
        await task
    except asyncio.CancelledError:
        return False
    return True


async def cascade(router: Any, gates: Gates, job: Any, cells: list[str], deadline: float,
                  tier_timeout_s: float | None = None, metrics: Any = None) -> list[dict[str, Any]]:
    """Run a prepared request through `cells` until a tier's answer is accepted; returns every step tried.

    `deadline` is a time.monotonic() value; no step outlives it."""
    loop = asyncio.get_running_loop()
    steps: list[dict[str, Any]] = []
    for cell in cells:
        remaining = deadline - time.monotonic()
        budget = min(remaining, tier_timeout_s) if tier_timeout_s else remaining
        if budget <= 0:
            steps.append(_failed(cell, "timeout", f"no time left for tier {cell}", None))
            break
        t0 = time.monotonic()
        sem = gates.gate(cell)
        if not await _acquire(sem, budget):
            steps.append(_failed(cell, "busy", f"tier {cell} had no free slot within {budget:.3g} s", None))
            continue
        if metrics is not None:
            metrics.in_flight.labels(cell).inc()

        def done(fut: asyncio.Future, sem: asyncio.Semaphore = sem, cell: str = cell) -> None:
            sem.release()
            if metrics is not None:
                metrics.in_flight.labels(cell).dec()
            if not fut.cancelled():
                fut.exception()  # retrieved: a late failure after a timeout is not an unhandled error

        cancel = Cancel()  # told when this call is given up: a batching tier frees its slot then
        fut = loop.run_in_executor(gates.pool, functools.partial(router.step, job, cell, cancel=cancel))
        fut.add_done_callback(done)
        try:
            step = dict(await asyncio.wait_for(asyncio.shield(fut), max(0.0, budget - (time.monotonic() - t0))))
            step["wall_s"] = time.monotonic() - t0
            if step.get("error"):  # a failed call is never accepted, whatever the tier's rule: escalate
                step["error_kind"], step["accepted"] = "upstream_error", False
        except asyncio.TimeoutError:
            cancel.set()
            step = _failed(cell, "timeout", f"tier {cell} gave no answer within {budget:.3g} s",
                           time.monotonic() - t0)
        except Exception as exc:  # a tier that cannot start (missing model, bad config) or a backend bug
            step = _failed(cell, "exception", f"tier {cell}: {type(exc).__name__}: {exc}", time.monotonic() - t0)
        steps.append(step)
        if step["accepted"]:
            break
    return steps
