"""Continuous batching for the llama.cpp backend: a scheduler decoding up to N requests at once, and its engine.

`BatchScheduler` is pure Python: it drives any `SeqEngine` (one context holding `n_seq` sequences), so a fake
engine can test it. `LlamaSeqEngine` is the adapter to llama-cpp-python's low-level batch API.

How a pass runs:
- Each of the N slots is one llama.cpp sequence id. A request is admitted to a free slot as soon as one is free
  (continuous batching): the batch stays full while requests are waiting.
- Admission prefills the request's prompt in its own `llama_decode` call(s) (chunks of `n_batch` tokens, one
  sequence), not mixed into a decode step: CPU prefill gains nothing from batching, and the prefill time stays the
  request's own. The other sequences wait meanwhile, which their token times show (they are measured under load).
- Every decode step is one `llama_batch` holding the next token of each active sequence, at that sequence's own
  position; each sequence's logits are read by its index in the batch.
- Every decode step lists its sequences in slot order. llama.cpp (per-sequence KV streams) puts only consecutive
  sequence ids in one micro-batch: a step in admission order splits into several micro-batches, each reading all
  the weights again, and batching then gains nothing.
- A slot keeps its last request's cells until the next request is admitted to it; then the cells past the prompt
  prefix the two share are removed (`llama_memory_seq_rm`), as the one-at-a-time path reuses its previous
  prompt. Where another slot holds a longer shared prefix (e.g. the suite's system prompt, when a slot is used
  for the first time), that slot's stream is copied in first (`llama_memory_seq_cp`: with one KV stream per
  sequence llama.cpp copies whole streams, a memory copy far cheaper than prefilling the prefix again).
- Stops, log-probabilities, finish reason, token times and the harness's own time are kept per sequence. Token times
  are taken when `llama_decode` returns, before log-softmax, sampling and detokenizing.
- An answer's text grows by each token's piece (bytes appended, then decoded): equal to detokenizing the whole
  answer, which would cost a Python call per token already generated at every step.
- One scheduler serves a backend for its whole life, N = 1 included: the cells a pass leaves behind are the next
  pass's cached prefix (a router sending one request at a time reuses the system prompt).
"""

from __future__ import annotations

import ctypes
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from bench.backends.base import Generation, OnResult, Request

Item = tuple[int, int, int, bool]  # (sequence id, token, position, whether its logits are wanted)
MIN_SHARE = 16  # copy another slot's stream in only for at least this many more prompt tokens
STEP_LOG = 100_000  # decode steps whose size and engine time are kept (a serving backend runs for days)
CANCELLED = "cancelled: the caller stopped waiting"  # the error of a call given up (Calls.cancel)
Prepare = Callable[[Request], tuple[list[int], list[str]]]  # a request's prompt tokens and its template's stops


def common_prefix(a: np.ndarray, b: list[int]) -> int:
    """How many leading tokens two token lists share."""
    n = min(len(a), len(b))
    if n == 0:
        return 0
    diff = np.nonzero(np.asarray(a[:n]) != np.asarray(b[:n], dtype=a.dtype))[0]
    return int(diff[0]) if diff.size else n


def sample_token(logits: np.ndarray, temperature: float, rng: Any) -> tuple[int, float]:
    """The next token (greedy at temperature 0) and its log-probability under the model.

    Greedy: the arg-max, and log p = -log(sum(exp(logits - max))), the exponentials in float32 (the logits' own
    precision) summed in float64; a float64 copy of the whole vocabulary cost 5-7x more per token (1-3.5 ms at
    49k-152k tokens) and showed in a batched step's wall time."""
    if temperature <= 0:
        tok = int(np.argmax(logits))
        z = logits - logits[tok]
        return tok, float(-np.log(np.exp(z, out=z).sum(dtype=np.float64)))
    z = logits.astype(np.float64)
    z -= z.max()
    logp = z - np.log(np.exp(z).sum())
    p = np.exp(logp / temperature)
    tok = int(rng.choice(len(logits), p=p / p.sum()))
    return tok, float(logp[tok])


def batch_invariant(engine: SeqEngine, tokens: list[int]) -> bool:
    """Whether the engine's next-token logits for a sequence are the same bit for bit decoded alone and inside a
    batch of all its sequences. llama.cpp's CPU kernels for some weight types (the K quants, on the machines
    measured) round differently when a product has several tokens' columns, and greedy answers then part at
    near-ties. Sequence 0 holds `tokens` but the last and decodes that token alone, then again beside the first
    token of every other sequence (their own streams stay empty until then: a column each is all the test needs).
    Every sequence is cleared before and after."""
    n, last = engine.n_seq, len(tokens) - 1
    if n < 2 or last < 1:
        return True
    for seq in range(n):
        engine.clear(seq, 0)
    try:
        engine.decode([(0, t, p, False) for p, t in enumerate(tokens[:last])])
        engine.decode([(0, tokens[last], last, True)])
        alone = np.array(engine.logits(0))
        engine.clear(0, last)
        engine.decode([(0, tokens[last], last, True)] + [(seq, tokens[0], 0, False) for seq in range(1, n)])
        return bool(np.array_equal(alone, engine.logits(0)))
    finally:
        for seq in range(n):
            engine.clear(seq, 0)


def request_rng(req: Request) -> np.random.Generator:
    """The request's own random stream: the same draws whichever slot or batch it runs in."""
    return np.random.default_rng([req.seed, zlib.crc32(req.id.encode())])


class Waiting(Protocol):
    """Requests a pass takes as slots come free: true while one is waiting (a deque, or `Calls`' queue)."""

    def __bool__(self) -> bool: ...

    def popleft(self) -> Request: ...


class SeqEngine(Protocol):
    """One model context holding `n_seq` independent sequences."""

    n_seq: int

    def clear(self, seq: int, keep: int) -> bool:
        """Remove the sequence's cells at positions >= keep; False where the engine cannot cut a sequence there."""
        ...

    def copy(self, src: int, dst: int) -> bool:
        """Make `dst` hold what `src` holds (its whole stream); False where the engine cannot."""
        ...

    def decode(self, items: Sequence[Item]) -> None:
        """Evaluate one batch; raises on failure."""
        ...

    def logits(self, index: int) -> np.ndarray:
        """Logits of the batch's `index`-th item in the last decode (valid until the next decode)."""
        ...

    def is_eog(self, token: int) -> bool: ...

    bos: int  # the beginning-of-sequence token (-1: none); an answer starting with it loses one leading space

    def piece(self, token: int) -> bytes:
        """The token's text (special tokens render as nothing)."""
        ...


@dataclass
class _Seq:
    """One request in flight in one slot."""

    slot: int
    req: Request
    gen: Generation
    stops: list[str]
    t0: float
    rng: Any
    pos: int
    out: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    text: str = ""
    raw: bytearray = field(default_factory=bytearray)  # the answer's bytes so far
    finish: str = "length"
    harness: float = 0.0
    pending: int = -1  # the sampled token to feed in the next step
    prefill_index: int = -1  # the prompt's last token's index in the last prefill batch


class BatchScheduler:
    """Decodes a list of requests with up to `engine.n_seq` of them in flight, refilling a slot as soon as its
    request finishes. `n_ctx` bounds each sequence (prompt + max_tokens); `n_batch` bounds a prefill chunk."""

    def __init__(self, engine: SeqEngine, prepare: Prepare, n_ctx: int, n_batch: int):
        self.engine = engine
        self.prepare = prepare
        self.n_ctx = n_ctx
        self.n_batch = max(1, n_batch)
        self.cached: list[list[int]] = [[] for _ in range(engine.n_seq)]  # tokens in each slot's cells
        # the latest STEP_LOG decode steps: sequences in each, and its time inside the engine (the rest of a step is
        # the harness's own: bookkeeping, sampling, detokenizing). Tests and `bench fidelity` read them.
        self.step_sizes: deque[int] = deque(maxlen=STEP_LOG)
        self.step_engine_s: deque[float] = deque(maxlen=STEP_LOG)
        self.copies = 0  # prefixes copied in from another slot

    # ------------------------------------------------------------------ the pass
    def run(self, requests: list[Request] | Waiting, on_result: OnResult | None = None,
            finished: Callable[[Request, Generation], None] | None = None,
            dropped: Callable[[Request], bool] | None = None) -> list[Generation]:
        """Decode `requests` (a list, or a `Waiting` queue other threads add to) until none is left or active;
        `finished(request, generation)` is called as each ends, after `on_result`. A request `dropped` says its
        caller stopped waiting for ends before the next step, with what it has and an error saying so."""
        queue: Any = deque(requests) if isinstance(requests, list) else requests
        free = deque(range(self.engine.n_seq))
        active: dict[int, _Seq] = {}
        results: list[Generation] = []

        def done(s: _Seq | Generation, slot: int, req: Request) -> None:
            gen = self._finish(s) if isinstance(s, _Seq) else s
            active.pop(slot, None)
            free.append(slot)
            if on_result:
                on_result(gen)
            if finished:
                finished(req, gen)
            results.append(gen)

        try:
            while queue or active:
                while queue and free:
                    slot, req = free.popleft(), queue.popleft()
                    admitted = self._admit(slot, req)
                    if isinstance(admitted, Generation) or self._advance(
                            admitted, self.engine.logits(admitted.prefill_index), admitted.gen.t_prefill_end or 0.0):
                        done(admitted, slot, req)
                    else:
                        active[slot] = admitted
                if dropped is not None:
                    for slot, s in [(k, v) for k, v in active.items() if dropped(v.req)]:
                        gen = self._finish(s)  # its cells stay: prompt and tokens so far, a prefix to reuse
                        gen.error = CANCELLED
                        done(gen, slot, s.req)
                if active:
                    self._step(active, done)
        except BaseException:  # interrupted mid-pass: no slot's cells can be trusted as a cached prefix
            for slot in range(self.engine.n_seq):
                self._drop(slot)
            raise
        return results

    def _step(self, active: dict[int, _Seq], done: Callable[[_Seq | Generation, int, Request], None]) -> None:
        """One decode step: each active sequence's next token in one batch."""
        seqs = sorted(active.values(), key=lambda s: s.slot)  # consecutive sequence ids: one micro-batch
        items = [(s.slot, s.pending, s.pos, True) for s in seqs]
        self.step_sizes.append(len(items))
        start = time.perf_counter()
        try:
            self.engine.decode(items)
        except Exception as exc:  # the step failed for all of them: each is recorded as failed, the pass goes on
            self.step_engine_s.append(time.perf_counter() - start)
            for s in seqs:
                s.gen.error = f"{type(exc).__name__}: {exc}"
                self._drop(s.slot)
                done(s.gen, s.slot, s.req)
            return
        now = time.perf_counter()  # the engine has returned: what follows is the harness's time
        self.step_engine_s.append(now - start)
        for i, s in enumerate(seqs):
            self.cached[s.slot].append(s.pending)
            s.pos += 1
            if self._advance(s, self.engine.logits(i), now - s.t0):
                done(s, s.slot, s.req)

    # ------------------------------------------------------------------ one sequence
    def _admit(self, slot: int, req: Request) -> _Seq | Generation:
        """Prefill a request's prompt into `slot`: a running sequence, or a finished (failed) generation."""
        gen = Generation(request_id=req.id, t_start=time.time(), concurrency=self.engine.n_seq)
        try:
            tokens, template_stops = self.prepare(req)
        except Exception as exc:  # a prompt the template or tokenizer rejects fails this request only
            gen.error = f"{type(exc).__name__}: {exc}"
            return gen
        gen.prompt_tokens = len(tokens)
        if not tokens:
            gen.error = "the prompt has no tokens"
            return gen
        if len(tokens) + req.max_tokens > self.n_ctx:
            gen.error = f"prompt of {len(tokens)} tokens + max_tokens {req.max_tokens} exceeds n_ctx {self.n_ctx}"
            return gen
        prefix = self._reuse(slot, tokens)
        self.cached[slot] = list(tokens[:prefix])
        gen.cached_tokens = prefix
        s = _Seq(slot=slot, req=req, gen=gen, stops=[x for x in list(req.stop) + template_stops if x],
                 t0=time.perf_counter(), rng=request_rng(req), pos=len(tokens))
        try:
            for start in range(prefix, len(tokens), self.n_batch):
                end = min(start + self.n_batch, len(tokens))
                self.engine.decode([(slot, tokens[p], p, p == len(tokens) - 1) for p in range(start, end)])
                s.prefill_index = end - start - 1
        except Exception as exc:
            self._drop(slot)
            gen.error = f"{type(exc).__name__}: {exc}"
            return gen
        gen.t_prefill_end = time.perf_counter() - s.t0
        self.cached[slot] = list(tokens)
        return s

    def _reuse(self, slot: int, tokens: list[int]) -> int:
        """Keep in `slot` the longest prompt prefix any slot holds (copying that slot's stream in when it is
        another's and longer by at least MIN_SHARE tokens); returns how many prompt tokens need no prefill."""
        limit = len(tokens) - 1  # the last prompt token is always evaluated: its logits give the first token
        shared = [min(common_prefix(np.asarray(c, dtype=np.int64), tokens), limit) for c in self.cached]
        prefix, src = shared[slot], max(range(len(shared)), key=lambda i: (shared[i], i == slot))
        if src != slot and shared[src] - prefix >= MIN_SHARE and self.engine.copy(src, slot):
            self.cached[slot] = list(self.cached[src])
            prefix = shared[src]
            self.copies += 1
        if not self.engine.clear(slot, prefix):
            self.engine.clear(slot, 0)
            prefix = 0
        return prefix

    def _advance(self, s: _Seq, logits: np.ndarray, now: float) -> bool:
        """Sample the sequence's next token from its logits; True when the sequence has finished."""
        h0 = time.perf_counter()
        try:
            tok, logp = sample_token(logits, s.req.temperature, s.rng)
            if s.gen.t_first_token is None:
                s.gen.t_first_token = now
            if self.engine.is_eog(tok) and not s.req.ignore_eos:
                s.finish = "stop"
                return True
            s.out.append(tok)
            s.logprobs.append(logp)
            s.gen.token_times.append(now)
            s.raw += self.engine.piece(tok)
            # as llama.cpp's detokenize: an answer starting with BOS drops one leading space
            lead = s.out[0] == self.engine.bos and s.raw[:1] == b" "
            s.text = (s.raw[1:] if lead else s.raw).decode("utf-8", errors="ignore")
            hit = min((i for i in (s.text.find(x) for x in s.stops) if i >= 0), default=-1)
            if hit >= 0:
                s.text = s.text[:hit]
                s.finish = "stop"
                return True
            if len(s.out) >= s.req.max_tokens:
                return True
            s.pending = tok
            return False
        finally:
            s.harness += time.perf_counter() - h0

    def _finish(self, s: _Seq) -> Generation:
        gen = s.gen
        gen.t_end = time.perf_counter() - s.t0
        gen.extra["harness_s"] = s.harness
        gen.extra["slot"] = s.slot
        gen.text = s.text
        gen.completion_tokens = len(s.out)
        gen.token_logprobs = s.logprobs
        gen.finish_reason = s.finish
        return gen

    def _drop(self, slot: int) -> None:
        """Clear a slot's cells (after a failure, or a pass interrupted)."""
        self.cached[slot] = []
        try:
            self.engine.clear(slot, 0)
        except Exception:  # a context already broken: nothing left to clear
            pass


class _Queue:
    """`Calls`' waiting requests as a pass sees them (`Waiting`): each one taken is remembered with its future."""

    def __init__(self, calls: Calls):
        self.calls = calls

    def __bool__(self) -> bool:
        return bool(self.calls._waiting) and not self.calls._closed

    def popleft(self) -> Request:
        with self.calls._cv:
            req, fut = self.calls._waiting.popleft()
        self.calls._running.setdefault(id(req), deque()).append(fut)
        return req


class Calls:
    """One scheduler taking calls from many threads (`bench serve`): `submit` queues a request and returns its
    future; a thread of the scheduler's own runs passes while requests wait, so a request that arrives while others
    decode takes the next free slot and decodes beside them (continuous batching across callers). A backend serves
    either a run (`BatchScheduler.run` in the caller's thread) or calls, not both at once. `close` lets the requests
    in flight finish, fails the ones still waiting, and returns once the thread is done with the engine."""

    def __init__(self, scheduler: BatchScheduler, name: str = "bench-batch"):
        self.scheduler = scheduler
        self.name = name
        self._cv = threading.Condition()
        self._waiting: deque[tuple[Request, Future[Generation]]] = deque()
        self._running: dict[int, deque[Future[Generation]]] = {}  # id(request) -> its futures, while in a pass
        self._thread: threading.Thread | None = None
        self._closed = False
        self._cancelled: set[Future[Generation]] = set()  # the calls whose callers stopped waiting

    def submit(self, req: Request) -> Future[Generation]:
        fut: Future[Generation] = Future()
        with self._cv:
            if self._closed:
                raise RuntimeError("the backend is closed")
            self._waiting.append((req, fut))
            if self._thread is None:
                self._thread = threading.Thread(target=self._drive, name=self.name, daemon=True)
                self._thread.start()
            self._cv.notify()
        return fut

    def cancel(self, fut: Future[Generation]) -> None:
        """The caller stopped waiting for `fut`: a request still queued is taken out, one decoding ends before the
        next step (its slot goes to the next request); either way its generation carries the error CANCELLED."""
        with self._cv:
            if fut.done():
                return
            for item in self._waiting:
                if item[1] is fut:
                    self._waiting.remove(item)
                    _settle(fut, Generation(request_id=item[0].id, error=CANCELLED))
                    return
            self._cancelled.add(fut)

    def _dropped(self, req: Request) -> bool:
        futures = self._running.get(id(req))
        return futures is not None and bool(futures) and futures[0] in self._cancelled

    def _finished(self, req: Request, gen: Generation) -> None:
        futures = self._running[id(req)]
        fut = futures.popleft()
        if not futures:
            del self._running[id(req)]
        with self._cv:  # settled under the lock: a cancel that comes after sees it done
            self._cancelled.discard(fut)
            _settle(fut, gen)

    def _drive(self) -> None:
        queue = _Queue(self)
        while True:
            with self._cv:
                while not self._waiting and not self._closed:
                    self._cv.wait()
                if self._closed:
                    break
            try:
                self.scheduler.run(queue, finished=self._finished, dropped=self._dropped)
            except BaseException as exc:  # the pass failed as a whole (the scheduler dropped its slots): its
                for futures in self._running.values():  # requests fail, and the next pass starts clean
                    for fut in futures:
                        _settle(fut, exc)
                self._running.clear()
                with self._cv:
                    self._cancelled.clear()
        with self._cv:
            left, self._waiting = list(self._waiting), deque()
        for _, fut in left:
            _settle(fut, RuntimeError("the backend closed before this request ran"))

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()


def _settle(fut: Future[Generation], outcome: Generation | BaseException) -> None:
    """A future's result or exception, once (a future already settled is left as it is)."""
    try:
        if isinstance(outcome, BaseException):
            fut.set_exception(outcome)
        else:
            fut.set_result(outcome)
    except InvalidStateError:
        pass


class LlamaSeqEngine:
    """`SeqEngine` over a llama.cpp context created with n_seq_max = n_seq (llama-cpp-python's low-level API)."""

    def __init__(self, lc: Any, ctx: Any, vocab: Any, n_vocab: int, n_seq: int, capacity: int):
        self.lc, self.ctx, self.vocab, self.n_vocab, self.n_seq = lc, ctx, vocab, n_vocab, n_seq
        self.capacity = max(capacity, n_seq)
        self.batch = lc.llama_batch_init(self.capacity, 0, 1)
        self.mem = lc.llama_get_memory(ctx)
        self.bos = int(lc.llama_vocab_bos(vocab))
        self._buf = ctypes.create_string_buffer(64)
        self._row = ctypes.c_float * n_vocab  # a logits row, viewed in place (np.ctypeslib.as_array took 35 us)

    def clear(self, seq: int, keep: int) -> bool:
        return bool(self.lc.llama_memory_seq_rm(self.mem, seq, keep, -1))

    def copy(self, src: int, dst: int) -> bool:
        # per-sequence streams: llama.cpp copies whole streams only (p0 = p1 = -1); the data moves at the next
        # llama_decode, before that call's tokens are placed, and dst's cells are src's from now on
        self.lc.llama_memory_seq_cp(self.mem, src, dst, -1, -1)
        return True

    def decode(self, items: Sequence[Item]) -> None:
        if len(items) > self.capacity:
            raise ValueError(f"a batch of {len(items)} tokens exceeds the batch capacity {self.capacity}")
        b = self.batch
        for i, (seq, tok, pos, want) in enumerate(items):
            b.token[i] = tok
            b.pos[i] = pos
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = seq
            b.logits[i] = want
        b.n_tokens = len(items)
        rc = self.lc.llama_decode(self.ctx, b)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")

    def logits(self, index: int) -> np.ndarray:
        address = ctypes.cast(self.lc.llama_get_logits_ith(self.ctx, index), ctypes.c_void_p).value
        if not address:
            raise RuntimeError(f"llama.cpp has no logits for batch index {index}")
        row: Any = self._row.from_address(address)  # a ctypes array: a buffer numpy views without copying
        return np.frombuffer(row, dtype=np.float32)

    def is_eog(self, token: int) -> bool:
        return bool(self.lc.llama_vocab_is_eog(self.vocab, token))

    def piece(self, token: int) -> bytes:
        n = self.lc.llama_token_to_piece(self.vocab, token, self._buf, len(self._buf), 0, False)
        if n < 0:  # the buffer is too small: llama.cpp says how large it must be
            self._buf = ctypes.create_string_buffer(-n)
            n = self.lc.llama_token_to_piece(self.vocab, token, self._buf, len(self._buf), 0, False)
        return self._buf.raw[:n]

    def close(self) -> None:
        if self.batch is not None:
            self.lc.llama_batch_free(self.batch)
            self.batch = None
        self.lc.llama_memory_clear(self.mem, True)
