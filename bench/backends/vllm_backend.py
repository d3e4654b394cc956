"""In-process vLLM backend for GPUs (V1 engine): one batched generate per cell, logprobs and per-request timing.

Timing: vLLM V1 reports per request `arrival_time` (wall clock) and `queued_ts`, `scheduled_ts`, `first_token_ts`,
`last_token_ts` (the engine's monotonic clock), plus its own `first_token_latency` (wall clock, from arrival). Each
derived time comes from differences on one clock only; the request's own start (its arrival) is its `t_start`.
"""

from __future__ import annotations

import time
from typing import Any

from bench.backends.base import Generation, LoadInfo, OnResult, Request
from bench.errors import ModelError

INSTALL = "pip install 'bench[vllm]' (vLLM needs Linux and an NVIDIA GPU with a matching CUDA driver)"
GGUF_HINT = ("vLLM reads GGUF files only with its GGUF support installed and a `tokenizer:` naming the original "
             "model's tokenizer (the catalog's hf_tokenizer, or set it on the backend); or give `hf_model`")


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


def _num(metrics: Any, name: str) -> float | None:
    v = getattr(metrics, name, None)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 else None


def _timing(metrics: Any, wall_s: float) -> dict[str, Any] | None:
    """Per-request offsets (seconds after the request's arrival) from vLLM V1's request stats, one clock at a time.

    None when the stats are missing or give a time that cannot be (negative, or longer than the batch's wall
    time `wall_s`): the caller then falls back to the batch's wall time and says so."""
    if metrics is None:
        return None
    first_ts, last_ts = _num(metrics, "first_token_ts"), _num(metrics, "last_token_ts")
    queued_ts, scheduled_ts = _num(metrics, "queued_ts"), _num(metrics, "scheduled_ts")
    ttft = _num(metrics, "first_token_latency")  # vLLM's own, wall clock, from arrival
    if first_ts is None or last_ts is None:
        return None
    source = "vllm first_token_latency + monotonic token times"
    if ttft is None:
        if queued_ts is None:
            return None
        ttft = first_ts - queued_ts  # monotonic; the arrival-to-queue gap (input processing) is not in it
        source = "vllm monotonic times from queueing"
    decode = last_ts - first_ts
    out: dict[str, Any] = {"t_first_token": ttft, "t_prefill_end": ttft, "t_end": ttft + decode,
           "queued_s": (scheduled_ts - queued_ts) if scheduled_ts is not None and queued_ts is not None else None,
           "arrival_time": _num(metrics, "arrival_time"), "source": source}
    times = [float(out[k]) for k in ("t_first_token", "t_end", "queued_s") if out[k] is not None]
    if any(v < 0 or v > wall_s + 1e-3 for v in times):
        return None
    return out


class VLLMBackend:
    """vLLM's offline engine. All of a cell's requests go in one `generate` call, as a server would batch them.
    Results arrive only when the batch ends, so each carries `batch_share` (its share of the batch's time) and
    the worker splits the batch's energy by it."""

    kind = "vllm"
    locality = "local"
    concurrency = 1

    def __init__(self, config: Any, model: Any):
        self.config = config
        self.model = model
        self.llm: Any = None
        self.max_model_len: int = int(config.max_model_len)

    def _source(self) -> tuple[str, str | None]:
        source = self.config.hf_model or (str(self.model.path) if self.model is not None else None)
        if not source:
            raise ModelError("the vllm backend needs a model: a catalog model or `hf_model`")
        tokenizer = self.config.tokenizer
        if tokenizer is None and not self.config.hf_model and self.model is not None:
            from bench.models.catalog import CATALOG

            entry = CATALOG.get(getattr(self.model, "id", ""))
            tokenizer = entry.hf_tokenizer if entry else None
        if source.endswith(".gguf") and not tokenizer:
            raise ModelError(f"no tokenizer for the GGUF file {source}", hint=GGUF_HINT)
        return source, tokenizer

    def load(self) -> LoadInfo:
        why = _gpu_present()
        if why:
            raise ModelError(f"vLLM needs an NVIDIA GPU: {why}", hint=INSTALL)
        try:
            from vllm import LLM
        except ImportError:
            raise ModelError("vLLM is not installed", hint=INSTALL) from None
        from bench.measure.memory import GpuReader

        source, tokenizer = self._source()
        gpu = GpuReader()
        before = gpu.used_mb()
        total = gpu.total_mb()
        t0 = time.perf_counter()
        try:
            self.llm = LLM(model=source, tokenizer=tokenizer, gpu_memory_utilization=self.config.gpu_memory_utilization,
                           max_model_len=self.max_model_len, tensor_parallel_size=self.config.tensor_parallel_size,
                           seed=0, disable_log_stats=False)
        except Exception as exc:
            hint = GGUF_HINT if source.endswith(".gguf") else None
            raise ModelError(f"vLLM could not load {source}: {exc}", hint=hint) from None
        after = gpu.used_mb()
        gpu.close()
        self.concurrency = 256  # a cell's requests run as one batch; cost per request shares the machine
        loaded = after - before if after is not None and before is not None else None
        details = {"source": source, "tokenizer": tokenizer,
                   # named apart: what loading took on the card (weights, KV cache, CUDA context), what vLLM may
                   # claim at most, and the weights file
                   "gpu_load_delta_mb": loaded,
                   "gpu_reservation_mb": total * self.config.gpu_memory_utilization if total else None,
                   "weights_mb": (getattr(self.model, "size_bytes", 0) or 0) / 2**20 or None}
        return LoadInfo(load_s=time.perf_counter() - t0, model_bytes=getattr(self.model, "size_bytes", None),
                        gpu_mb=loaded, chat=bool(getattr(self.model, "chat", True)), details=details)

    def _too_long(self, requests: list[Request], chat: bool) -> dict[str, int]:
        """Prompt tokens of each request that would not fit max_model_len: vLLM would abort the whole batch."""
        tok = self.llm.get_tokenizer()
        out = {}
        for r in requests:
            if chat:
                ids = tok.apply_chat_template(r.messages, add_generation_prompt=True, tokenize=True)
            else:
                ids = tok.encode(r.prompt)
            if len(ids) >= self.max_model_len:
                out[r.id] = len(ids)
        return out

    def generate(self, requests: list[Request], on_result: OnResult | None = None) -> list[Generation]:
        from vllm import SamplingParams

        if not requests:
            return []
        chat = bool(getattr(self.model, "chat", True))
        too_long = self._too_long(requests, chat)
        ok = [r for r in requests if r.id not in too_long]
        params = [SamplingParams(max_tokens=r.max_tokens, temperature=r.temperature, seed=r.seed,
                                 stop=r.stop or None, logprobs=1) for r in ok]
        t_start = time.time()
        t0 = time.perf_counter()
        outputs: list[Any] = []
        if ok and chat:
            outputs = self.llm.chat([r.messages for r in ok], params, use_tqdm=False)
        elif ok:
            outputs = self.llm.generate([r.prompt for r in ok], params, use_tqdm=False)
        wall = time.perf_counter() - t0
        by_id = {r.id: self._generation(r, o, t_start, wall, len(ok)) for r, o in zip(ok, outputs)}
        total = sum(g.t_end or 0.0 for g in by_id.values()) or 1.0
        results = []
        for r in requests:
            if r.id in too_long:
                gen = Generation(request_id=r.id, error=f"prompt of {too_long[r.id]} tokens does not fit "
                                 f"max_model_len {self.max_model_len}; the sample was not sent")
            else:
                gen = by_id[r.id]
                gen.extra["batch_share"] = (gen.t_end or 0.0) / total
            results.append(gen)
            if on_result:
                on_result(gen)
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
        times = _timing(getattr(out, "metrics", None), wall)
        if times:
            gen.t_first_token, gen.t_end, gen.t_prefill_end = times["t_first_token"], times["t_end"], \
                times["t_prefill_end"]
            if times["arrival_time"]:
                gen.t_start = times["arrival_time"]  # the request's own start, on the wall clock
            gen.extra["timing_source"] = times["source"]
            gen.extra["queued_s"] = times["queued_s"]
        else:
            gen.t_end = wall
            gen.extra["timing_source"] = f"batch wall time ({batch} requests together); no per-request TTFT"
        gen.extra["wall_s"] = wall / max(batch, 1)
        return gen

    def close(self) -> None:
        self.llm = None
