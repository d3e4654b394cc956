"""In-process vLLM backend for GPUs: one batched generate per cell, logprobs and per-request timing."""

from __future__ import annotations

import time
from typing import Any

from bench.backends.base import Generation, LoadInfo, OnResult, Request
from bench.errors import ModelError

INSTALL = "pip install 'bench[vllm]' (vLLM needs Linux and an NVIDIA GPU with a matching CUDA driver)"


def _gpu_present() -> str | None:
    """None when NVML sees a GPU, else the reason it does not."""
    try:
        import pynvml

        pynvml.nvmlInit()
        n = pynvml.nvmlDeviceGetCount()
        pynvml.nvmlShutdown()
        return None if n > 0 else "NVML found no GPU"
    except Exception as exc:
        return f"no NVIDIA driver or GPU ({type(exc).__name__}: {exc})"


def _timing(metrics: Any) -> dict[str, float] | None:
    """Per-request times from vLLM's request metrics, across the V0 and V1 names, as seconds after arrival."""
    if metrics is None:
        return None
    arrival = getattr(metrics, "arrival_time", None)
    first = getattr(metrics, "first_token_time", None) or getattr(metrics, "first_token_ts", None)
    last = (getattr(metrics, "last_token_time", None) or getattr(metrics, "last_token_ts", None)
            or getattr(metrics, "finished_time", None))
    scheduled = getattr(metrics, "first_scheduled_time", None) or getattr(metrics, "scheduled_ts", None)
    if not (arrival and first and last):
        return None
    return {"t_first_token": first - arrival, "t_end": last - arrival,
            "t_prefill_end": (first - arrival), "queued_s": (scheduled - arrival) if scheduled else None}


class VLLMBackend:
    """vLLM's offline engine. All of a cell's requests go in one `generate` call, as a server would batch them;
    per-request times come from vLLM's request metrics where the installed version reports them, otherwise
    every request carries the batch's wall time and no TTFT (said in `extra.timing_source`)."""

    kind = "vllm"
    locality = "local"
    concurrency = 1

    def __init__(self, config: Any, model: Any):
        self.config = config
        self.model = model
        self.llm: Any = None

    def load(self) -> LoadInfo:
        why = _gpu_present()
        if why:
            raise ModelError(f"vLLM needs an NVIDIA GPU: {why}", hint=INSTALL)
        try:
            from vllm import LLM
        except ImportError:
            raise ModelError("vLLM is not installed", hint=INSTALL) from None
        source = self.config.hf_model or (str(self.model.path) if self.model is not None else None)
        if not source:
            raise ModelError("the vllm backend needs a model: a catalog model or `hf_model`")
        t0 = time.perf_counter()
        try:
            self.llm = LLM(model=source, gpu_memory_utilization=self.config.gpu_memory_utilization,
                           max_model_len=self.config.max_model_len,
                           tensor_parallel_size=self.config.tensor_parallel_size, seed=0)
        except Exception as exc:
            raise ModelError(f"vLLM could not load {source}: {exc}") from None
        self.concurrency = 256  # a cell's requests run as one batch; cost per request shares the machine
        return LoadInfo(load_s=time.perf_counter() - t0, model_bytes=getattr(self.model, "size_bytes", None),
                        chat=bool(getattr(self.model, "chat", True)), details={"source": source})

    def generate(self, requests: list[Request], on_result: OnResult | None = None) -> list[Generation]:
        from vllm import SamplingParams

        if not requests:
            return []
        params = [SamplingParams(max_tokens=r.max_tokens, temperature=r.temperature, seed=r.seed,
                                 stop=r.stop or None, logprobs=1) for r in requests]
        chat = bool(getattr(self.model, "chat", True))
        t_start = time.time()
        t0 = time.perf_counter()
        if chat:
            outputs = self.llm.chat([r.messages for r in requests], params, use_tqdm=False)
        else:
            outputs = self.llm.generate([r.prompt for r in requests], params, use_tqdm=False)
        wall = time.perf_counter() - t0
        results = []
        for req, out in zip(requests, outputs):
            results.append(self._generation(req, out, t_start, wall, len(requests)))
            if on_result:
                on_result(results[-1])
        return results

    def _generation(self, req: Request, out: Any, t_start: float, wall: float, batch: int) -> Generation:
        comp = out.outputs[0]
        logprobs = None
        if comp.logprobs:
            logprobs = [float(step[tok].logprob) for tok, step in zip(comp.token_ids, comp.logprobs)
                        if step and tok in step]
        gen = Generation(request_id=req.id, text=comp.text, prompt_tokens=len(out.prompt_token_ids or []),
                         completion_tokens=len(comp.token_ids), cached_tokens=getattr(out, "num_cached_tokens", None),
                         token_logprobs=logprobs, t_start=t_start, finish_reason=comp.finish_reason)
        times = _timing(getattr(out, "metrics", None))
        if times:
            gen.t_first_token, gen.t_end, gen.t_prefill_end = times["t_first_token"], times["t_end"], \
                times["t_prefill_end"]
            gen.extra["timing_source"] = "vllm request metrics"
            gen.extra["queued_s"] = times["queued_s"]
        else:
            gen.t_end = wall
            gen.extra["timing_source"] = f"batch wall time ({batch} requests together); no per-request TTFT"
        gen.extra["wall_s"] = wall / batch
        return gen

    def close(self) -> None:
        self.llm = None
