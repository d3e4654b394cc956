"""In-process llama.cpp backend (llama-cpp-python): a timed token loop with prefill and decode kept apart."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any

from bench.backends.base import Generation, LoadInfo, OnResult, Request, engine_first

engine_first()  # a `bench run` cell process: this module is the first to import numpy

import numpy as np  # noqa: E402

from bench.backends.llamacpp_batch import BatchScheduler, Calls, LlamaSeqEngine, batch_invariant  # noqa: E402
from bench.config.suite import MAX_PARALLEL  # noqa: E402
from bench.errors import ModelError  # noqa: E402


def physical_cores() -> int:
    import psutil

    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


def cpu_advertises_amx() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            return " amx_tile" in f.read()
    except OSError:
        return False


@contextlib.contextmanager
def _model_params(use_extra_bufts: bool) -> Iterator[None]:
    """llama-cpp-python's Llama() offers no switch for extra buffer types; set it on the default params."""
    import llama_cpp.llama_cpp as lib

    original = lib.llama_model_default_params

    def patched() -> Any:
        params = original()
        params.use_extra_bufts = use_extra_bufts
        return params

    lib.llama_model_default_params = patched
    try:
        yield
    finally:
        lib.llama_model_default_params = original


@contextlib.contextmanager
def _context_params(n_seq: int) -> Iterator[None]:
    """Llama() offers no n_seq_max: set it on the default context params. Each sequence gets its own KV stream of
    n_ctx / n_seq cells (kv_unified off), so one sequence's attention never reads the others' cells."""
    import llama_cpp.llama_cpp as lib

    original = lib.llama_context_default_params
    if n_seq <= 1:
        yield
        return

    def patched() -> Any:
        params = original()
        params.n_seq_max = n_seq
        params.kv_unified = False
        return params

    lib.llama_context_default_params = patched
    try:
        yield
    finally:
        lib.llama_context_default_params = original


class LlamaCppBackend:
    """Runs a GGUF model in this process. Chat models go through their own chat template; base models
    get plain completion. Prompt tokens shared with the previous request are served from the KV cache
    and reported as `cached_tokens`. Sampling is done here from the logits, so every token's time and
    log-probability is ours to record.

    With `parallel` N > 1 the context holds N sequences of n_ctx each and up to N requests decode at once
    (bench.backends.llamacpp_batch); N = 1 runs the same scheduler with one sequence."""

    kind = "llamacpp"
    locality = "local"
    concurrency = 1

    def __init__(self, config: Any, model: Any):
        if model is None:
            raise ModelError("the llamacpp backend needs a model file")
        self.config = config
        self.model = model
        self.llm: Any = None
        self.formatter: Any = None
        self.n_threads = config.n_threads or physical_cores()
        self.parallel = 1  # requests decoded at once; set before load (bench.worker)
        self._engine: LlamaSeqEngine | None = None
        self._scheduler: BatchScheduler | None = None
        self._calls: Calls | None = None  # calls from several threads (submit), created on the first
        self._calls_lock = threading.Lock()

    # ------------------------------------------------------------------ load
    def load(self) -> LoadInfo:
        try:
            import llama_cpp
        except ImportError:
            raise ModelError("llama-cpp-python is not installed: pip install llama-cpp-python") from None
        self._lc = llama_cpp
        extra = self.config.extra_buffers
        if extra is None:
            extra = not cpu_advertises_amx()
        n_seq = max(1, min(int(self.parallel), MAX_PARALLEL))
        self.parallel = n_seq
        t0 = time.perf_counter()
        try:
            with _model_params(extra), _context_params(n_seq):
                self.llm = llama_cpp.Llama(
                    model_path=str(self.model.path), n_ctx=self.config.n_ctx * n_seq,
                    n_batch=max(self.config.n_batch, n_seq),
                    n_threads=self.n_threads, n_threads_batch=self.n_threads,
                    n_gpu_layers=self.config.n_gpu_layers, logits_all=False, verbose=False)
        except Exception as exc:  # llama.cpp reports a bad file or too little memory as a ValueError
            raise ModelError(f"llama.cpp could not load {self.model.path.name}: {exc}") from None
        load_s = time.perf_counter() - t0
        self._n_vocab = self.llm.n_vocab()
        self._vocab = self.llm._model.vocab
        template = self.llm.metadata.get("tokenizer.chat_template")
        chat = bool(self.model.chat) and bool(template)
        if chat:
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter

            eos, bos = self.llm.token_eos(), self.llm.token_bos()
            self.formatter = Jinja2ChatFormatter(
                template=template,
                eos_token=self.llm._model.token_get_text(eos) if eos != -1 else "",
                bos_token=self.llm._model.token_get_text(bos) if bos != -1 else "",
                stop_token_ids=[eos])
        if self.config.warmup:
            self._warmup()
        ctx = self.llm._ctx.ctx
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
        self._engine = LlamaSeqEngine(llama_cpp, ctx, self._vocab, self._n_vocab, n_seq,
                                      max(self.config.n_batch, n_seq))
        # the prompt is prepared through the attribute, read per request (bench fidelity replaces it)
        self._scheduler = BatchScheduler(self._engine, lambda req: self._prompt_tokens(req), self.config.n_ctx,
                                         self.config.n_batch)
        # whether answers can depend on the batch's width (llamacpp_batch.batch_invariant; 0.07-0.23 s)
        invariant = batch_invariant(self._engine, self.llm.tokenize(
            b"Probe: the quick brown fox jumps over the lazy dog.", add_bos=True)) if n_seq > 1 else None
        details = {"n_ctx": self.config.n_ctx, "n_batch": self.config.n_batch, "extra_buffers": extra,
                   "chat_template": chat, "n_vocab": self._n_vocab, "parallel": n_seq}
        if n_seq > 1:
            details["batching"] = {"n_seq_max": llama_cpp.llama_n_seq_max(ctx),
                                   "n_ctx_per_seq": llama_cpp.llama_n_ctx_seq(ctx),
                                   "mode": "continuous; a prompt prefills in its own decode call (its shared prefix "
                                           "copied from another slot where one holds it), then one token per "
                                           "active sequence per step, in slot order",
                                   "batch_invariant": invariant}
        return LoadInfo(load_s=load_s, model_bytes=self.model.size_bytes, n_threads=self.n_threads, chat=chat,
                        details=details)

    def _warmup(self) -> None:
        """One short prefill and a few decode steps, outside the numbers, then a clean cache."""
        tokens = self.llm.tokenize(b"Warm-up: the quick brown fox jumps over the lazy dog.", add_bos=True)
        self.llm.reset()
        self.llm.eval(tokens)
        for _ in range(4):
            self.llm.eval([int(np.argmax(self._logits()))])
        self.llm.reset()

    # ------------------------------------------------------------------ generate
    def _logits(self) -> np.ndarray:
        ptr = self._lc.llama_get_logits_ith(self.llm._ctx.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(self._n_vocab,))

    def _prompt_tokens(self, req: Request) -> tuple[list[int], list[str]]:
        if self.formatter is not None:
            res = self.formatter(messages=req.messages)
            stops = [res.stop] if isinstance(res.stop, str) else list(res.stop or [])
            tokens = self.llm.tokenize(res.prompt.encode("utf-8"), add_bos=not res.added_special, special=True)
            return tokens, stops
        return self.llm.tokenize(req.prompt.encode("utf-8"), add_bos=True, special=False), []

    def generate(self, requests: list[Request], on_result: OnResult | None = None) -> list[Generation]:
        """Up to `parallel` requests at once in this context's sequences, one at a time where it is 1
        (bench.backends.llamacpp_batch: the same loop either way)."""
        if self._scheduler is None:
            raise ModelError("the llamacpp backend generates only after load()")
        return self._scheduler.run(requests, on_result)

    def submit(self, request: Request) -> Future[Generation]:
        """One request from any thread, decoded beside the others in flight in this context's `parallel`
        sequences (`bench serve`: bench.backends.llamacpp_batch.Calls). Not to be mixed with a `generate` pass."""
        if self._scheduler is None:
            raise ModelError("the llamacpp backend generates only after load()")
        with self._calls_lock:
            if self._calls is None:
                self._calls = Calls(self._scheduler, name=f"bench-batch-{self.model.id}")
        return self._calls.submit(request)

    def cancel(self, fut: Future[Generation]) -> None:
        """The caller of `submit` stopped waiting: the request leaves the queue, or ends before the next step."""
        if self._calls is not None:
            self._calls.cancel(fut)

    def close(self) -> None:
        with self._calls_lock:
            calls, self._calls = self._calls, None
        if calls is not None:  # its thread lets go of the engine before the engine is freed
            calls.close()
        if self._engine is not None:
            self._engine.close()
            self._engine = None
        if self.llm is not None:
            self.llm.close() if hasattr(self.llm, "close") else None
            self.llm = None
