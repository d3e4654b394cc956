"""A router a service can import: read routing.json, pick the first tier, accept or escalate, run the cascade."""

from __future__ import annotations

import json
import math
import threading
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.errors import UserInputError, did_you_mean

if TYPE_CHECKING:  # bench.routing_file brings pydantic: imported where a file is loaded, so importing stays light
    from typing_extensions import Self

    from bench.routing_file import RoutingDoc, TaskPolicy, Tier

from bench.registry import backend_traits


class Router:
    """Follows the per-task policies of one routing.json. Backends load on first use and are kept per tier.

    `doc` is what bench.routing_file loaded; a plain dict is checked by the same rules (parse_routing) first."""

    def __init__(self, doc: RoutingDoc | dict[str, Any], path: str | None = None, *,
                 trust_failed_holdout: bool = False):
        from bench.routing_file import RoutingDoc, parse_routing

        self.doc: RoutingDoc = doc if isinstance(doc, RoutingDoc) else parse_routing(doc, path)
        self.path = path if path is not None else self.doc.path
        self.trust_failed_holdout = trust_failed_holdout
        self._backends: dict[str, Any] = {}
        self._costs: dict[str, Any] = {}
        self._warned: set[str] = set()
        self._load_lock = threading.Lock()
        self._pre: dict[str, Any] = {}
        # cell -> requests a batching in-process tier decodes at once (bench serve sets it, before the tier loads;
        # calls to such a tier from several threads then go through its `submit` and share its batch)
        self.parallel: dict[str, int] = {}

    # ------------------------------------------------------------------ loading and lookups
    @classmethod
    def load(cls, path: str | Path, *, trust_failed_holdout: bool = False) -> Router:
        """Read and validate a routing.json (bench.routing_file.load_routing: a schema 2 file is migrated, an
        older or a newer one refused).

        A task whose policy failed on holdout is sent to its fallback tier (the strongest eligible one), with a
        warning, unless trust_failed_holdout is set."""
        from bench.routing_file import load_routing

        router = cls(load_routing(path), str(path), trust_failed_holdout=trust_failed_holdout)
        for task in router.tasks():  # a missing or altered pre-router artefact is refused here, not mid-request
            if router._task(task).prerouter:
                router._prerouter(task)
        return router

    def _prerouter(self, task: str) -> Any:
        """The task's loaded pre-router (artefact and sha256 checked), created on first use."""
        with self._load_lock:
            if task not in self._pre:
                from bench.routers.prerouter import LoadedPreRouter

                self._pre[task] = LoadedPreRouter(task, self._task(task).prerouter or {}, self.path,
                                                  self.input_fields(task))
        return self._pre[task]

    def preroute(self, task: str, fields: dict[str, Any] | None, text: str) -> dict[str, Any] | None:
        """The pre-router's decision for a request (None where the task has none, or its fallback overrides it):
        {family, probability, threshold, path: cheap|strong, cells}."""
        if not self._task(task).prerouter or self.overridden(task):
            return None
        return self._prerouter(task).route(fields, text)

    def overridden(self, task: str) -> bool:
        """True where the task's policy failed on holdout and this router sends it to the fallback tier instead."""
        t = self._task(task)
        return t.status == "failed_holdout" and not self.trust_failed_holdout and bool(t.fallback)

    def _fallback(self, task: str) -> str:
        """The fallback tier of an overridden task (`overridden` holds only where it has one)."""
        return self._task(task).fallback or ""

    def _note_override(self, task: str) -> None:
        if task not in self._warned:
            self._warned.add(task)
            warnings.warn(f"routing: task {task!r} failed on holdout; sending it to {self._task(task).fallback} "
                          "(pass trust_failed_holdout=True to follow the calibrated policy)", stacklevel=3)

    def tasks(self) -> list[str]:
        return sorted(self.doc.tasks)

    def _task(self, task: str) -> TaskPolicy:
        return self.doc.task(task)

    def _tier(self, task: str, cell: str) -> Tier:
        found = self._task(task).tier(cell)
        if found is not None:
            return found
        known = [t.cell for t in self._task(task).tiers]
        raise UserInputError(f"task {task!r} has no tier {cell!r}", file=self.path, field=f"tasks.{task}.tiers",
                             hint=did_you_mean(cell, known))

    def chain(self, task: str) -> list[str]:
        """The tiers a request may pass through, in order."""
        if self.overridden(task):
            self._note_override(task)
            return [self._fallback(task)]
        policy = self._task(task).policy
        return list(policy.chain) if policy else []

    def first(self, task: str) -> str:
        """The cell to send a request of this task to first."""
        t = self._task(task)
        if self.overridden(task):
            self._note_override(task)
            return self._fallback(task)
        if not t.default:
            raise UserInputError(f"task {task!r} has no eligible tier: {t.expected.message}",
                                 file=self.path, field=f"tasks.{task}.default")
        return t.default

    def accept(self, task: str, cell: str, confidence: float | None, verified: bool) -> bool:
        """True: keep this tier's answer; False: escalate to the next tier of the chain."""
        if self.overridden(task):
            return True  # the fallback tier answers alone
        rule = self._tier(task, cell).accept_if
        signal = rule.signal
        if signal == "always":
            return True
        if signal == "never":
            return False
        if not verified:
            return False
        if signal == "verified":
            return True
        return (confidence is not None and isinstance(confidence, (int, float)) and math.isfinite(confidence)
                and rule.threshold is not None and confidence >= rule.threshold)

    # ------------------------------------------------------------------ running the cascade
    def _backend(self, tier: Tier) -> tuple[Any, Any]:
        """The loaded backend and cost model of a tier, created on first use."""
        cell = tier.cell
        with self._load_lock:  # a service calls tiers from several threads: each backend loads once
            if cell not in self._backends:
                self._load_backend(tier)
        return self._backends[cell], self._costs[cell]

    def _load_backend(self, tier: Tier) -> None:
        cell = tier.cell
        from types import SimpleNamespace

        from pydantic import TypeAdapter

        from bench.backends import create_backend
        from bench.config.suite import BackendConfig, ModelRef
        from bench.cost import CostModel
        from bench.matrix import CellPlan

        rt = tier.runtime or {}
        if not rt.get("backend"):
            raise UserInputError(f"tier {cell!r} has no backend config in the routing file (its run predates "
                                 "cell_backends in manifests); rerun the suite", file=self.path)
        cfg: BackendConfig = TypeAdapter(BackendConfig).validate_python(rt["backend"])
        model: Any = None
        traits = backend_traits(cfg.kind)
        if traits.in_process and not traits.loads_model_file:
            from bench.models.resolve import ResolvedModel

            model = ResolvedModel(id=rt["model"], quantization=rt.get("quantization") or "", path=Path(),
                                  sha256="", size_bytes=0, chat=rt.get("chat", True))
        elif traits.in_process:
            from bench.models import resolve_model

            ref = ModelRef.model_validate(rt["model_ref"]) if rt.get("model_ref") else ModelRef(id=rt["model"])
            if rt.get("chat") is not None:
                ref = ref.model_copy(update={"chat": rt["chat"]})
            model = resolve_model(ref, rt.get("quantization"), quiet=True)
        backend = create_backend(cfg, model)
        if traits.batches:
            from bench.worker import _set_parallel

            _set_parallel(backend, self.parallel.get(cell, 1))
        backend.load()
        hourly = rt.get("usd_per_hour")
        price = SimpleNamespace(cost_per_hour_usd=hourly)
        local = traits.priced_by == "hour"  # else token prices, or the hourly price of the profile its config names
        plan = CellPlan(cell=dict(tier.cell_detail or {"model": rt["model"], "backend": cfg.kind}),
                        backend=cfg, model_ref=None, locality=tier.locality)
        hw = getattr(cfg, "hardware", None)
        cost = CostModel(plan, price if local and hourly is not None else None,
                         {hw: price} if not local and hw and hourly is not None else {})
        self._backends[cell], self._costs[cell] = backend, cost

    def run(self, task: str, sample: dict[str, Any]) -> dict[str, Any]:
        """Send one sample through the task's cascade; returns the answer, the tiers it took, confidences, cost.

        `sample` holds the suite's input fields; with the reference field too, the result carries its score."""
        job = self.prepare(task, sample)
        text = " ".join(str(v) for v in sample.values() if isinstance(v, (str, int, float)))
        steps: list[dict[str, Any]] = []
        for cell in self.plan(task, sample, text):
            steps.append(self.step(job, cell))
            if steps[-1]["accepted"]:
                break
        return self.result(job, steps) | {"personal_data": self.sensitive(task, text),
                                          "prerouter": self.preroute(task, sample, text)}

    def plan(self, task: str, fields: dict[str, Any] | None, text: str) -> list[str]:
        """The tiers to try for this request, in order: the pre-router's path where the task has one, else the
        task's chain (or its fallback); kept to local and on-prem tiers when the request holds personal data."""
        decision = self.preroute(task, fields, text)
        chain = list(decision["cells"]) if decision else (self.chain(task) or [self.first(task)])
        return self.local_chain(task, chain) if self.sensitive(task, text) else chain

    def prepare(self, task: str, sample: dict[str, Any]) -> Any:
        """One sample made ready for `step`: the suite's prompt, task kind and reference, as in calibration."""
        from types import SimpleNamespace

        from pydantic import TypeAdapter

        from bench.config.suite import GenerationConfig, PromptConfig, TaskConfig
        from bench.data import Sample
        from bench.tasks import get_task

        t = self._task(task)
        rt = t.runtime
        if not rt:
            raise UserInputError(f"task {task!r} has no runtime section (the runs held no suite config)",
                                 file=self.path, field=f"tasks.{task}.runtime")
        ds = rt["dataset"]
        options: TaskConfig = TypeAdapter(TaskConfig).validate_python(rt["task"])
        ref_field = ds.get("reference_field")
        reference = sample.get(ref_field) if ref_field else None
        if isinstance(reference, str) and options.kind == "extract":
            try:
                reference = json.loads(reference)
            except ValueError:
                reference = None
        shaped = _PromptOnly(PromptConfig.model_validate(rt["prompt"]),
                             GenerationConfig.model_validate(rt["generation"]))
        item = Sample(id=str(sample.get(ds.get("id_field") or "id", "request")), fields=dict(sample),
                      reference=reference, split="holdout")
        return SimpleNamespace(task=task, metric=t.metric, options=options, kind=get_task(options.kind),
                               reference=reference, item=item, shaped=shaped,
                               scoring_ref=reference if reference is not None else
                               ({} if options.kind == "extract" else ""))

    def step(self, job: Any, cell: str, cancel: Cancel | None = None) -> dict[str, Any]:
        """One tier's answer to a prepared sample, scored, priced and judged by the tier's accept_if. `cancel`: told
        when the caller gives the call up (a batching tier then frees its slot)."""
        from bench.measure.timing import derive
        from bench.records import confidence_of
        from bench.runner import build_requests

        task = job.task
        tier = self._tier(task, cell)
        backend, cost_model = self._backend(tier)
        request = build_requests(job.shaped, [job.item], bool((tier.runtime or {}).get("chat", True)))[0]
        if self.parallel.get(cell, 1) > 1 and callable(getattr(backend, "submit", None)):
            gen = _await(backend, backend.submit(request), cancel).to_dict()
        else:
            gen = backend.generate([request])[0].to_dict()
        error = gen.get("error")
        scored = None if error else job.kind.score(gen.get("text") or "", job.scoring_ref, job.item.fields,
                                                   job.options)
        timings = {k: gen.get(k) for k in ("t_first_token", "t_prefill_end", "token_times", "t_end")}
        step = {"cell": cell, "output": gen.get("text"), "parsed": scored.parsed if scored else None,
                "verified": bool(scored.verified) if scored else False,
                "confidence": confidence_of(gen.get("token_logprobs")),
                "score": (scored.scores.get(job.metric) if scored else 0.0) if job.reference is not None else None,
                "cost_usd": None if error else cost_model.cost(gen),
                "latency_s": derive(timings, gen.get("prompt_tokens") or 0, gen.get("completion_tokens") or 0)
                ["latency_s"], "error": error,
                "prompt_tokens": gen.get("prompt_tokens"), "completion_tokens": gen.get("completion_tokens")}
        step["accepted"] = self.accept(task, cell, step["confidence"], step["verified"])
        return step

    @staticmethod
    def result(job: Any, steps: list[dict[str, Any]]) -> dict[str, Any]:
        """The answer of a cascade from its steps: the last one answers."""
        final = steps[-1]
        costs = [s["cost_usd"] for s in steps]
        return {"task": job.task, "answer": final["output"], "parsed": final["parsed"], "cell": final["cell"],
                "path": [s["cell"] for s in steps], "confidence": {s["cell"]: s["confidence"] for s in steps},
                "verified": final["verified"], "score": final["score"], "error": final["error"],
                "escalations": len(steps) - 1,
                "cost_usd": None if any(c is None for c in costs) else sum(costs),
                "latency_s": sum(s["latency_s"] or 0.0 for s in steps), "steps": steps}

    def sensitive(self, task: str, text: str) -> list[str]:
        """The kinds of personal data in a request's text (bench.routers.sensitivity, plus the suite's patterns)."""
        from bench.routers.sensitivity import personal_data

        return personal_data(text, (self._task(task).runtime or {}).get("personal_data") or [])

    def local_chain(self, task: str, chain: list[str]) -> list[str]:
        """The tiers of `chain` that may see personal data: local and on-prem ones only."""
        from bench.thresholds.calibrate import ON_PREMISES

        allowed = [c for c in chain if self._tier(task, c).locality in ON_PREMISES]
        if allowed:
            return allowed
        eligible = [t.cell for t in self._task(task).tiers if t.locality in ON_PREMISES and t.eligible]
        if not eligible:
            raise UserInputError(f"the request holds personal data, which may only go to local or on-prem tiers, "
                                 f"and task {task!r} has none", field="tasks." + task)
        return eligible[-1:]  # the strongest local tier (tiers are cheapest first)

    def input_fields(self, task: str) -> list[str]:
        """The suite's input fields for this task: what a calibrated request carries."""
        rt = self._task(task).runtime or {}
        return list((rt.get("dataset") or {}).get("input_fields") or [])

    def close(self) -> None:
        """Close every loaded backend."""
        backends, self._backends, self._costs = self._backends, {}, {}
        for backend in backends.values():
            backend.close()
        pre, self._pre = self._pre, {}
        for p in pre.values():
            p.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Cancel:
    """A call given up, told once by whoever stopped waiting (bench serve's cascade, at its tier timeout): what is
    registered with `then` runs then, or at once where it was given up already."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._given_up = False
        self._then: list[Any] = []

    def set(self) -> None:
        with self._lock:
            if self._given_up:
                return
            self._given_up, then = True, self._then
        for fn in then:
            fn()

    def then(self, fn: Any) -> None:
        with self._lock:
            if not self._given_up:
                self._then.append(fn)
                return
        fn()


def _await(backend: Any, fut: Any, cancel: Cancel | None) -> Any:
    """A submitted call's generation, decoded beside the tier's other calls in flight. Where the call is given up
    (`cancel`: bench serve's tier timeout) the backend is told, so the call stops taking a batch slot; its
    generation then comes back within a step, with the error llamacpp_batch.CANCELLED."""
    if cancel is not None:
        cancel.then(lambda: backend.cancel(fut))
    return fut.result()


class _PromptOnly:
    """What the runner's request builder reads from a suite: its prompt and generation settings."""

    def __init__(self, prompt: Any, generation: Any):
        self.prompt = prompt
        self.generation = generation
