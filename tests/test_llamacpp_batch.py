"""Batched decoding (--parallel): the scheduler against a fake engine, the settings, the summary's load block, and
the real default model's answers one at a time vs four at once."""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from pathlib import Path

import numpy as np
import pytest

from bench.backends.base import Generation, Request
from bench.backends.llamacpp_batch import CANCELLED, BatchScheduler, Calls, Item
from bench.cli import main
from bench.config import load_suite
from bench.errors import UserInputError
from bench.results.summary import summarize_cell
from bench.runner import run_suite
from bench.worker import _set_parallel
from tests.conftest import FAKE_SUITE, REPO, write_suite

V = 40  # the toy model's vocabulary; token 0 is end-of-generation


def next_token(history: Sequence[int]) -> int:
    """The toy model: the next token is a function of the whole sequence so far, so a scheduler that mixes up
    sequences, positions or stale cells gets different answers."""
    h = 0
    for t in history:
        h = (h * 31 + t + 1) % 1_000_003
    return h % V


def toy_logits(history: Sequence[int]) -> np.ndarray:
    z = np.zeros(V, dtype=np.float32)
    z[next_token(history)] = 5.0
    z[(next_token(history) + 1) % V] = 1.0
    return z


class FakeEngine:
    """A context with n_seq sequences; it checks that positions follow on and keeps what each sequence holds."""

    def __init__(self, n_seq: int, fail_at_step: int | None = None):
        self.n_seq = n_seq
        self.cells: list[list[int]] = [[] for _ in range(n_seq)]
        self.last: list[np.ndarray] = []
        self.prepared = 0  # prompts the scheduler has asked for so far
        self.calls = 0
        self.fail_at_step = fail_at_step
        self.copied: list[tuple[int, int]] = []
        self.step_order: list[list[int]] = []  # the sequence ids of each multi-sequence step, in batch order

    def clear(self, seq: int, keep: int) -> bool:
        del self.cells[seq][keep:]
        return True

    def copy(self, src: int, dst: int) -> bool:
        self.cells[dst] = list(self.cells[src])
        self.copied.append((src, dst))
        return True

    def decode(self, items: Sequence[Item]) -> None:
        if len(items) > 1 and len({seq for seq, *_ in items}) == len(items):
            self.step_order.append([seq for seq, *_ in items])
        if self.fail_at_step is not None and len({seq for seq, *_ in items}) > 1:
            self.calls += 1  # multi-sequence decode steps, counted for the fault
            if self.calls == self.fail_at_step:
                raise RuntimeError("engine fault")
        self.last = []
        for seq, tok, pos, want in items:
            assert pos == len(self.cells[seq]), f"sequence {seq}: token at {pos}, cells hold {len(self.cells[seq])}"
            self.cells[seq].append(tok)
            self.last.append(toy_logits(self.cells[seq]) if want else np.full(V, np.nan, dtype=np.float32))

    def logits(self, index: int) -> np.ndarray:
        return self.last[index]

    def is_eog(self, token: int) -> bool:
        return token == 0

    bos = -1

    def piece(self, token: int) -> bytes:
        return bytes([ord("a") + token % 26])


def tokens_of(req: Request) -> list[int]:
    return [1 + ord(c) % (V - 1) for c in req.prompt]


def reference(req: Request) -> tuple[str, int, str]:
    """What one request gives decoded alone, by a plain loop over the toy model (no scheduler)."""
    hist, out = tokens_of(req), []
    text, finish = "", "length"
    while True:
        t = next_token(hist)
        if t == 0:
            finish = "stop"
            break
        out.append(t)
        text = "".join(chr(ord("a") + x % 26) for x in out)
        hit = min((i for i in (text.find(s) for s in req.stop) if i >= 0), default=-1)
        if hit >= 0:
            text, finish = text[:hit], "stop"
            break
        if len(out) >= req.max_tokens:
            break
        hist = hist + [t]
    return text, len(out), finish


def requests(n: int = 11) -> list[Request]:
    shared = "You extract fields. "  # a shared prefix: a slot's next prompt reuses its cells
    return [Request(id=f"r{i}", messages=[], prompt=shared + f"sample {i} " + "x" * (i * 3), max_tokens=3 + 5 * i % 17,
                    stop=["q"] if i % 4 == 0 else []) for i in range(n)]


def scheduler(engine: FakeEngine, n_batch: int = 8, n_ctx: int = 200) -> BatchScheduler:
    def prepare(req: Request) -> tuple[list[int], list[str]]:
        engine.prepared += 1
        if req.prompt == "boom":
            raise ValueError("template failed")
        return tokens_of(req), []

    return BatchScheduler(engine, prepare, n_ctx=n_ctx, n_batch=n_batch)


def run(engine: FakeEngine, reqs: list[Request]) -> tuple[BatchScheduler, list[Generation]]:
    sched = scheduler(engine)
    return sched, sched.run(reqs)


@pytest.mark.parametrize("n_seq", [1, 3, 4])
def test_batched_answers_equal_one_at_a_time(n_seq: int) -> None:
    reqs = requests()
    engine = FakeEngine(n_seq)
    sched, gens = run(engine, reqs)
    by_id = {g.request_id: g for g in gens}
    assert sorted(by_id) == sorted(r.id for r in reqs)
    assert {r.finish_reason for r in gens} == {"stop", "length"}  # the toy data exercises both endings
    for req in reqs:
        g = by_id[req.id]
        assert g.error is None
        assert (g.text, g.completion_tokens, g.finish_reason) == reference(req), req.id
        assert g.concurrency == n_seq and g.prompt_tokens == len(tokens_of(req))
        assert len(g.token_logprobs or []) == g.completion_tokens == len(g.token_times)
        assert all(lp <= 0 and math.isfinite(lp) for lp in g.token_logprobs or [])
        assert g.token_times == sorted(g.token_times)
        assert g.t_prefill_end is not None and g.t_first_token is not None
        assert 0 <= g.t_prefill_end <= g.t_first_token <= g.t_end
        assert g.extra["harness_s"] >= 0
    # each slot keeps what the scheduler believes it holds: the next pass's cached prefix
    assert [list(c) for c in engine.cells] == sched.cached
    # later prompts in a slot reuse the shared prefix of the slot's previous prompt
    assert any((g.cached_tokens or 0) > len("You extract") for g in gens)


@pytest.mark.parametrize("n_seq", [1, 3])
def test_a_second_pass_reuses_what_the_first_left(n_seq: int) -> None:
    # a router sends one request per call: its system prompt stays cached from the call before
    engine = FakeEngine(n_seq)
    sched = scheduler(engine)
    first = sched.run(requests(4))
    again = sched.run([Request(id="late", messages=[], prompt="You extract fields. sample 9 xyz", max_tokens=6)])
    assert all(g.error is None for g in first + again)
    assert (again[0].cached_tokens or 0) >= len("You extract fields. sample ")
    assert (again[0].text, again[0].completion_tokens, again[0].finish_reason) == reference(
        Request(id="late", messages=[], prompt="You extract fields. sample 9 xyz", max_tokens=6))


def test_an_interrupted_pass_leaves_no_cells_to_trust() -> None:
    engine = FakeEngine(2)
    sched = scheduler(engine)

    def stop(gen: Generation) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        sched.run(requests(5), stop)
    assert engine.cells == [[], []] and sched.cached == [[], []]


class BytesEngine(FakeEngine):
    """Token pieces as raw bytes: one character split over two tokens, and a BOS token that renders as nothing."""

    bos = 7

    def piece(self, token: int) -> bytes:
        return {7: b"", 8: b" lead", 9: b"\xc3", 10: b"\xa9"}.get(token, b"z")


def test_text_grows_by_pieces_as_whole_answer_detokenizing_would() -> None:
    # llama.cpp's detokenize drops one leading space after BOS and decodes the joined bytes, so a character split
    # over two tokens appears whole once both are in
    engine = BytesEngine(1)
    script = iter([7, 8, 9, 10, 0])

    def logits(index: int) -> np.ndarray:
        z = np.zeros(V, dtype=np.float32)
        z[next(script)] = 5.0
        return z

    engine.logits = logits  # type: ignore[method-assign]
    texts: list[str] = []
    sched = scheduler(engine)
    advance = sched._advance

    def watched(s, lg, now):  # type: ignore[no-untyped-def]
        finished = advance(s, lg, now)
        texts.append(s.text)
        return finished

    sched._advance = watched  # type: ignore[method-assign]
    [g] = sched.run([Request(id="b", messages=[], prompt="abc", max_tokens=9)])
    assert (g.text, g.completion_tokens, g.finish_reason) == ("lead\u00e9", 4, "stop")
    assert texts[:4] == ["", "lead", "lead", "lead\u00e9"]


def test_continuous_batching_keeps_the_batch_full() -> None:
    reqs = requests(12)
    engine = FakeEngine(3)
    sched = scheduler(engine)
    steps: list[tuple[int, int]] = []  # (sequences in the step, prompts admitted before it)
    step = sched._step
    sched._step = lambda active, done: (steps.append((len(active), engine.prepared)), step(active, done))[1]
    gens = sched.run(reqs)
    assert len(gens) == 12
    assert max(sched.step_sizes) == 3 and [n for n, _ in steps] == list(sched.step_sizes)
    # while requests are still waiting, every decode step carries all three sequences
    waiting = [size for size, prepared in steps if prepared < len(reqs)]
    assert waiting and all(size == 3 for size in waiting)
    # results arrive in finishing order, not in request order, once they run side by side
    assert [g.request_id for g in gens] != [r.id for r in reqs]


def test_each_step_logs_its_time_inside_the_engine_and_the_log_is_bounded(monkeypatch) -> None:
    import bench.backends.llamacpp_batch as batch

    engine = FakeEngine(3)
    slow = engine.decode

    def paced(items: Sequence[Item]) -> None:  # a decode step that takes at least 2 ms inside the engine
        if len(items) <= 3 and all(pos >= 0 for _, _, pos, _ in items) and items[0][3]:
            time.sleep(0.002)
        slow(items)

    engine.decode = paced  # type: ignore[method-assign]
    sched, gens = run(engine, requests(6))
    assert len(sched.step_engine_s) == len(sched.step_sizes) > 0
    assert min(sched.step_engine_s) >= 0.002  # the engine's own time, measured around the call
    monkeypatch.setattr(batch, "STEP_LOG", 5)  # a serving backend decodes for days: the log keeps the latest
    sched, _ = run(FakeEngine(3), requests(6))
    assert len(sched.step_sizes) == len(sched.step_engine_s) == 5


class WidthRounding(FakeEngine):
    """An engine whose logits move by a rounding step when a decode call carries several tokens."""

    def decode(self, items: Sequence[Item]) -> None:
        super().decode(items)
        if len(items) > 1:
            self.last = [z + np.float32(1e-6) for z in self.last]


@pytest.mark.parametrize(("engine", "expected"), [(FakeEngine(4), True), (WidthRounding(4), False),
                                                  (WidthRounding(1), True)], ids=["exact", "rounding", "one-seq"])
def test_the_batch_invariance_probe_tells_an_engine_that_rounds_by_batch_width(engine: FakeEngine,
                                                                              expected: bool) -> None:
    from bench.backends.llamacpp_batch import batch_invariant

    engine.cells[-1] = [7, 7]  # a slot left holding something
    assert batch_invariant(engine, [1, 5, 9, 3]) is expected
    if engine.n_seq > 1:
        assert all(cells == [] for cells in engine.cells)  # every sequence cleared after the probe
    else:
        assert engine.cells == [[7, 7]]  # one sequence: nothing to compare, the context untouched
        engine.cells = [[]]
    _, gens = run(engine, requests(5))  # the scheduler then runs on it as on a fresh context
    assert sorted(g.text for g in gens) == sorted(reference(r)[0] for r in requests(5))


def test_steps_list_sequences_in_slot_order() -> None:
    # llama.cpp's per-sequence KV streams put only consecutive sequence ids in one micro-batch
    engine = FakeEngine(4)
    _, gens = run(engine, requests(14))
    assert len(gens) == 14 and engine.step_order
    assert all(order == sorted(order) for order in engine.step_order)
    assert any(order == [0, 1, 2, 3] for order in engine.step_order)


def test_a_fresh_slot_copies_the_shared_prefix_from_another() -> None:
    reqs = requests(8)
    engine = FakeEngine(4)
    sched, gens = run(engine, reqs)
    shared = len("You extract fields. sample ")
    # the first request admitted went into an empty context; every slot after it starts from a copied prefix
    assert sched.copies >= 3 and {dst for _, dst in engine.copied} >= {1, 2, 3}
    assert sum((g.cached_tokens or 0) >= shared for g in gens) >= len(gens) - 1
    for req in reqs:  # answers unchanged: the copy brought the right cells at the right positions
        g = next(x for x in gens if x.request_id == req.id)
        assert (g.text, g.completion_tokens, g.finish_reason) == reference(req)


def test_failures_stay_with_their_request() -> None:
    reqs = requests(6)
    reqs[1].prompt = "boom"
    reqs[2].max_tokens = 500  # prompt + max_tokens beyond the sequence's n_ctx
    _, gens = run(FakeEngine(2), reqs)
    by_id = {g.request_id: g for g in gens}
    assert "template failed" in (by_id["r1"].error or "")
    assert "exceeds n_ctx 200" in (by_id["r2"].error or "")
    for req in reqs[3:]:
        assert by_id[req.id].error is None and (by_id[req.id].text, by_id[req.id].completion_tokens,
                                                by_id[req.id].finish_reason) == reference(req)


def test_a_failed_step_errors_its_sequences_and_the_pass_goes_on() -> None:
    reqs = requests(8)
    engine = FakeEngine(3, fail_at_step=2)
    sched, gens = run(engine, reqs)
    failed = [g for g in gens if g.error]
    assert len(gens) == 8 and 1 <= len(failed) <= 3 and all("engine fault" in (g.error or "") for g in failed)
    by_id = {g.request_id: g for g in gens}
    for req in reqs:
        if not by_id[req.id].error:
            assert (by_id[req.id].text, by_id[req.id].completion_tokens) == reference(req)[:2]
    assert [list(c) for c in engine.cells] == sched.cached  # the failed sequences' cells were dropped


# ---------------------------------------------------------------- calls from several threads (bench serve)


class GatedEngine(FakeEngine):
    """A FakeEngine whose decode calls wait for `go` (so calls pile up while a pass is under way), and that can
    raise a BaseException once (a pass that fails as a whole)."""

    def __init__(self, n_seq: int, abort_once: bool = False):
        super().__init__(n_seq)
        self.go = threading.Event()
        self.abort_once = abort_once

    def decode(self, items: Sequence[Item]) -> None:
        assert self.go.wait(10), "the test never let the engine go"
        if self.abort_once:
            self.abort_once = False
            raise Abort
        super().decode(items)


class Abort(BaseException):
    pass


def _submit_all(calls: Calls, reqs: list[Request]) -> list[Future]:
    """Each request submitted from a thread of its own; the futures, in request order."""
    futures: list[Future | None] = [None] * len(reqs)

    def one(i: int) -> None:
        futures[i] = calls.submit(reqs[i])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(reqs))]
    for th in threads:
        th.start()
    for th in threads:
        th.join(10)
    assert all(f is not None for f in futures)
    return futures  # type: ignore[return-value]


def test_calls_from_many_threads_share_one_batch_and_get_their_own_answers() -> None:
    reqs = requests(10)
    engine = GatedEngine(3)
    sched = scheduler(engine)
    calls = Calls(sched)
    futures = _submit_all(calls, reqs)  # the first pass is held at its first decode until all are queued
    engine.go.set()
    gens = [f.result(10) for f in futures]
    for req, g in zip(reqs, gens):
        assert g.request_id == req.id and g.error is None
        assert (g.text, g.completion_tokens, g.finish_reason) == reference(req)
    assert max(sched.step_sizes) == 3  # the calls decoded side by side, not one after another
    calls.close()
    assert not calls._thread.is_alive()
    with pytest.raises(RuntimeError, match="closed"):
        calls.submit(reqs[0])


def _long_request() -> Request:
    """A request whose toy answer runs 12 tokens or more."""
    return next(r for r in (Request(id="long", messages=[], prompt=f"You extract fields. long {k}", max_tokens=40)
                            for k in range(500)) if reference(r)[1] >= 12)


def _long_call_held(n_seq: int) -> tuple[Request, BatchScheduler, Calls, Future, threading.Event]:
    """Calls over n_seq slots with a long call submitted and its engine waiting at the call's fourth token (decoded
    alone): the call's request, the scheduler, the calls, its future, and the event that lets the engine go on."""
    long = _long_request()
    engine = GatedEngine(n_seq)
    engine.go.set()
    held, release = threading.Event(), threading.Event()
    decode = engine.decode

    def hold(items: Sequence[Item]) -> None:
        if len(items) == 1 and items[0][2] == len(tokens_of(long)) + 3 and not release.is_set():
            held.set()
            assert release.wait(10)
        decode(items)

    engine.decode = hold  # type: ignore[method-assign]
    sched = scheduler(engine)
    calls = Calls(sched)
    first = calls.submit(long)
    assert held.wait(10)
    return long, sched, calls, first, release


def test_a_call_arriving_mid_pass_takes_the_next_free_slot() -> None:
    long, sched, calls, first, late_in = _long_call_held(2)
    late_req = next(r for r in (Request(id="late", messages=[], prompt=f"You extract fields. late {k}", max_tokens=5)
                                for k in range(500)) if reference(r)[1] >= 3)
    late = calls.submit(late_req)
    late_in.set()
    assert (first.result(10).text, first.result().completion_tokens) == reference(long)[:2]
    assert (late.result(10).text, late.result().completion_tokens) == reference(late_req)[:2]
    assert 2 in sched.step_sizes  # the late call decoded beside the long one, in the same pass
    calls.close()


def test_a_call_given_up_leaves_its_batch_and_a_queued_one_leaves_the_queue() -> None:
    """bench serve gives up a call at its tier timeout: a call decoding ends before the next step (its slot goes to
    the next request), a queued one never starts, and the calls after them decode as before."""
    long, _, calls, first, release = _long_call_held(1)
    queued = calls.submit(Request(id="queued", messages=[], prompt="You extract fields. queued", max_tokens=5))
    calls.cancel(queued)  # waiting behind the long one in the only slot: taken out
    calls.cancel(first)
    release.set()
    gen = first.result(10)
    assert gen.error == CANCELLED and gen.completion_tokens < reference(long)[1]
    assert queued.result(1).error == CANCELLED and queued.result().completion_tokens == 0  # it never started
    after = Request(id="after", messages=[], prompt="You extract fields. after", max_tokens=6)
    assert (calls.submit(after).result(10).text, ) == (reference(after)[0], )
    calls.cancel(first)  # a call already done: nothing happens
    calls.close()


def test_the_router_tells_a_batching_tier_when_serve_gives_up_a_call() -> None:
    """bench.router's wait on a submitted call (what `bench serve` runs in a tier's thread): once the cascade sets
    the call's cancel event (its tier timeout passed), the backend is told and the wait returns at once, with the
    call's error, while the engine is still held mid-answer."""
    from bench.router import Cancel, _await

    long = _long_request()
    engine = GatedEngine(1)
    engine.go.set()
    sched = scheduler(engine)
    calls = Calls(sched)

    class Tier:  # the two methods bench.router uses on a batching backend
        submit = staticmethod(calls.submit)
        cancel = staticmethod(calls.cancel)

    cancel = Cancel()
    steps = sched.step_sizes
    timer = threading.Timer(0.05, cancel.set)
    slow = engine.decode

    def paced(items: Sequence[Item]) -> None:  # 10 ms a step: the answer would take over 100 ms
        time.sleep(0.01)
        slow(items)

    engine.decode = paced  # type: ignore[method-assign]
    timer.start()
    t0 = time.perf_counter()
    gen = _await(Tier, calls.submit(long), cancel)
    assert gen.error == CANCELLED
    assert len(steps) < reference(long)[1] - 1 and time.perf_counter() - t0 < 5
    queued_cancel = Cancel()
    queued_cancel.set()  # given up before it was taken from the queue: told at once
    engine.go.clear()
    blocker = calls.submit(long)
    gen = _await(Tier, calls.submit(long), queued_cancel)
    assert gen.error == CANCELLED
    engine.go.set()
    blocker.result(10)
    calls.close()


def test_close_lets_the_calls_in_flight_finish_and_fails_the_waiting_ones() -> None:
    reqs = requests(5)
    engine = GatedEngine(1)
    calls = Calls(scheduler(engine))
    futures = _submit_all(calls, reqs)
    closer = threading.Thread(target=calls.close)
    closer.start()
    while not calls._closed:
        time.sleep(0.001)
    engine.go.set()
    closer.join(10)
    assert not closer.is_alive() and not calls._thread.is_alive()  # the engine is free to be released
    done = [f for f in futures if f.exception(10) is None]
    failed = [f for f in futures if f.exception() is not None]
    assert len(done) == 1 and done[0].result().error is None  # the one decoding when close was called
    assert len(failed) == 4 and all("closed before this request ran" in str(f.exception()) for f in failed)


def test_a_pass_that_fails_as_a_whole_fails_its_calls_and_the_next_one_runs() -> None:
    reqs = requests(4)
    engine = GatedEngine(2, abort_once=True)
    sched = scheduler(engine)
    calls = Calls(sched)
    futures = _submit_all(calls, reqs)
    engine.go.set()
    outcomes = [f.exception(10) for f in futures]
    assert any(isinstance(e, Abort) for e in outcomes)  # the pass it broke
    assert sched.cached == [[], []] or all(e is None for e in outcomes[2:])
    again = calls.submit(reqs[0]).result(10)  # the service goes on
    assert again.error is None and (again.text, again.completion_tokens, again.finish_reason) == reference(reqs[0])
    calls.close()


# ---------------------------------------------------------------- settings


@pytest.mark.parametrize("value", [0, 65])
def test_generation_parallel_is_bounded(tmp_path: Path, value: int) -> None:
    body = FAKE_SUITE.replace("  max_tokens: 8\n", f"  max_tokens: 8\n  parallel: {value}\n")
    path = write_suite(tmp_path / "s", body)
    with pytest.raises(UserInputError) as exc:
        load_suite(path)
    assert "parallel" in str(exc.value) and exc.value.line is not None


@pytest.mark.parametrize("value", ["0", "65", "two"])
def test_parallel_flag_out_of_range_exits_2(tmp_path: Path, fake_suite: Path, capsys, value: str) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["run", str(fake_suite), "--parallel", value, "--results", str(tmp_path / "r")])
    assert exc.value.code == 2
    assert "--parallel" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_run_suite_checks_parallel_too(tmp_path: Path, fake_suite: Path) -> None:
    with pytest.raises(UserInputError, match="--parallel 0"):
        run_suite(load_suite(fake_suite), results_dir=tmp_path, isolation="inline", quiet=True, parallel=0)


def test_parallel_leaves_the_cell_key_alone(tmp_path: Path) -> None:
    body = FAKE_SUITE.replace("  max_tokens: 8\n", "  max_tokens: 8\n  parallel: 4\n")
    four = load_suite(write_suite(tmp_path / "a", body))
    one = load_suite(write_suite(tmp_path / "b", FAKE_SUITE))
    assert four.generation.parallel == 4 and one.generation.parallel == 1
    assert four.generation.key() == one.generation.key()


def test_a_backend_that_cannot_batch_runs_one_at_a_time(tmp_path: Path, fake_suite: Path) -> None:
    class Unbatched:
        kind = "fake"

    note = _set_parallel(Unbatched(), 4)
    assert note is not None and note["used"] == 1 and "treated as 1" in note["note"]
    outcome = run_suite(load_suite(fake_suite), results_dir=tmp_path, isolation="inline", quiet=True, parallel=4)
    rows = outcome.run.samples()
    assert rows and all(r["concurrency"] == 1 for r in rows)
    assert all(c.get("load") is None for c in outcome.summary["cells"])


def test_the_run_flag_reaches_the_manifest(tmp_path: Path, fake_suite: Path, capsys) -> None:
    code = main(["run", str(fake_suite), "--parallel", "3", "--isolation", "inline", "--no-probe", "--json",
                 "--results", str(tmp_path)])
    assert code == 0
    manifest = json.loads(next(tmp_path.rglob("manifest.json")).read_text())
    assert manifest["suite"]["config"]["generation"]["parallel"] == 3


# ---------------------------------------------------------------- summary


def _row(i: int, start: float, end: float, concurrency: int, tokens: int = 10) -> dict:
    return {"cell": {"model": "m", "backend": "llamacpp"}, "cell_id": "m", "sample_id": str(i), "split": "holdout",
            "error": None, "score": 1.0, "metric": "accuracy", "prompt_tokens": 50, "completion_tokens": tokens,
            "concurrency": concurrency, "timings": {"t_start": start, "t_prefill_end": 0.1, "t_first_token": 0.1,
                                                    "token_times": [0.1 + 0.05 * k for k in range(tokens)],
                                                    "t_end": end - start}}


def test_summary_reports_throughput_of_a_batched_pass() -> None:
    # four requests at once over 0..2 s, then four more over 2..4 s, a pause, and one more over 10..11 s
    rows = [_row(i, 1000.0 + 2 * (i // 4), 1002.0 + 2 * (i // 4), 4) for i in range(8)]
    rows.append(_row(8, 1010.0, 1011.0, 4))
    cell = summarize_cell(rows)
    load = cell["load"]
    assert load["concurrency"] == 4 and load["n"] == 9
    assert load["wall_s"] == pytest.approx(5.0)  # the pause between the passes is not counted
    assert load["requests_per_s"] == pytest.approx(9 / 5.0)
    assert load["output_tps"] == pytest.approx(90 / 5.0)
    assert "under load" in load["per_request"] and load["mixed_concurrency"] is False
    assert cell["latency_s"]["p50"] is not None  # the per-request figures are kept beside it
    assert summarize_cell([_row(0, 0.0, 1.0, 1)])["load"] is None


# ---------------------------------------------------------------- the real default model


@pytest.mark.integration
def test_extract_answers_one_at_a_time_and_four_at_once(tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    suite_path = REPO / "suites" / "extract.yaml"
    one = run_suite(load_suite(suite_path), limit=8, results_dir=tmp_path / "one", quiet=True)
    four = run_suite(load_suite(suite_path), limit=8, results_dir=tmp_path / "four", quiet=True, parallel=4)
    a = {r["sample_id"]: r for r in one.run.samples()}
    b = {r["sample_id"]: r for r in four.run.samples()}
    assert sorted(a) == sorted(b) and len(a) == 8
    assert not one.errored_cells and not four.errored_cells
    changed = [sid for sid in a if a[sid]["output"] != b[sid]["output"]]
    print(f"changed answers at --parallel 4: {len(changed)} of {len(a)} ({len(changed) / len(a):.1%})")
    assert len(changed) <= 1, changed  # near-ties may flip between batch sizes; more than that is a bug
    max_tokens = load_suite(suite_path).generation.max_tokens
    for sid, r in b.items():
        assert r["error"] is None and r["concurrency"] == 4 and a[sid]["concurrency"] == 1
        assert r["finish_reason"] in ("stop", "length")
        assert 1 <= r["completion_tokens"] <= max_tokens
        assert r["prompt_tokens"] == a[sid]["prompt_tokens"]
        assert 0 < r["ttft_s"] <= r["latency_s"] and r["harness_s"] >= 0
        assert r["timings"]["token_times"] == sorted(r["timings"]["token_times"])
        if sid not in changed:
            assert (r["finish_reason"], r["completion_tokens"]) == (a[sid]["finish_reason"],
                                                                    a[sid]["completion_tokens"])
    assert any(r["cached_tokens"] > 0 for r in b.values())  # a slot reuses its previous prompt's prefix
    load = four.summary["cells"][0]["load"]
    assert load["concurrency"] == 4 and load["requests_per_s"] > 0 and load["output_tps"] > 0
    # the load-time probe reaches every row of the batched pass and the cell's summary; a one-at-a-time load has none
    probed = {r["batch_invariant"] for r in b.values()}
    assert len(probed) == 1 and isinstance(next(iter(probed)), bool)
    assert four.summary["cells"][0]["batch_invariant"] is next(iter(probed))
    assert {r["batch_invariant"] for r in a.values()} == {None} and one.summary["cells"][0]["batch_invariant"] is None
    if next(iter(probed)):
        assert not changed  # logits equal alone and in a batch of 4: the greedy answers cannot part
    assert one.summary["cells"][0]["load"] is None


def _next_logits(n_seq: int, width: int, steps: int = 12) -> np.ndarray:
    """Sequence 0's logits over `steps` greedy decode steps of the default model, in a context of `n_seq` streams
    whose sequences 1.. hold other prompts; each step decodes `width` sequences at once (1: sequence 0 alone)."""
    from pydantic import TypeAdapter

    from bench.backends.base import create_backend
    from bench.config.suite import BackendConfig
    from bench.models.catalog import DEFAULT_MODEL
    from bench.models.resolve import resolve_model

    cfg = TypeAdapter(BackendConfig).validate_python({"kind": "llamacpp", "n_threads": 2})
    backend = create_backend(cfg, resolve_model(DEFAULT_MODEL))
    _set_parallel(backend, n_seq)
    backend.load()
    try:
        engine = backend._engine
        words = b"The committee reviews the quarterly figures while a light rain falls on the harbour. " * 3
        tokens = backend.llm.tokenize(words, add_bos=True, special=False)
        prompts = [tokens[:len(tokens) - 5 * k] for k in range(n_seq)]  # different prompts, different lengths
        nxt, pos = [], [len(p) for p in prompts]
        for seq, p in enumerate(prompts):
            engine.decode([(seq, t, i, i == len(p) - 1) for i, t in enumerate(p)])
            nxt.append(int(np.argmax(engine.logits(len(p) - 1))))
        out = []
        for _ in range(steps):
            engine.decode([(seq, nxt[seq], pos[seq], True) for seq in range(width)])
            out.append(np.array(engine.logits(0)))
            for seq in range(width):
                nxt[seq], pos[seq] = int(np.argmax(engine.logits(seq))), pos[seq] + 1
        return np.array(out)
    finally:
        backend.close()


@pytest.mark.integration
def test_a_sequence_beside_other_streams_gets_the_logits_it_gets_alone() -> None:
    """No cross-talk: with one KV stream per sequence, sequence 0 decoded in a 4-stream context whose other
    streams hold other prompts gets bit for bit the logits of a 1-sequence context. (Decoded inside a 4-token
    batch it may not: llama.cpp's CPU matrix kernels for some weight types round by batch width. On the machines
    measured, the default model's Q4_1 and Q8_0 tensors do not, and the answers stay equal; see README.)"""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    alone = _next_logits(1, 1)
    beside = _next_logits(4, 1)
    assert alone.shape == beside.shape == (12, alone.shape[1]) and np.isfinite(alone).all()
    assert np.array_equal(alone, beside)
    batched = _next_logits(4, 4)
    assert (batched.argmax(axis=1) == alone.argmax(axis=1)).mean() >= 0.9  # greedy tokens, near-ties aside
    probed = _probe(4)  # what a 4-sequence load reports, against the direct comparison
    assert isinstance(probed, bool) and probed == bool(np.array_equal(alone, batched))


def _probe(n_seq: int) -> object:
    from pydantic import TypeAdapter

    from bench.backends.base import create_backend
    from bench.config.suite import BackendConfig
    from bench.models.catalog import DEFAULT_MODEL
    from bench.models.resolve import resolve_model

    backend = create_backend(TypeAdapter(BackendConfig).validate_python({"kind": "llamacpp", "n_threads": 2}),
                             resolve_model(DEFAULT_MODEL))
    _set_parallel(backend, n_seq)
    try:
        return backend.load().details["batching"]["batch_invariant"]
    finally:
        backend.close()


@pytest.mark.parametrize("vocab", [40, 49152])
def test_greedy_log_probability_matches_the_float64_softmax(vocab: int) -> None:
    from bench.backends.llamacpp_batch import sample_token

    rng = np.random.default_rng(vocab)
    for scale in (0.1, 5.0, 40.0):
        logits = (rng.standard_normal(vocab) * scale).astype(np.float32)
        z = logits.astype(np.float64)
        logp = z - z.max() - np.log(np.exp(z - z.max()).sum())
        tok, lp = sample_token(logits, 0.0, None)
        assert tok == int(np.argmax(logp))
        assert lp == pytest.approx(float(logp[tok]), rel=1e-6, abs=1e-9)
    tok, lp = sample_token(np.array([0.0, 3.0, 1.0], dtype=np.float32), 1.0, np.random.default_rng(1))
    assert tok in (0, 1, 2) and lp < 0


@pytest.mark.parametrize(("argv", "engine_first"), [
    (["serve", "/nonexistent/routing.json"], True),
    (["run", "/nonexistent/suite.yaml", "--isolation", "inline"], True),
    (["run", "/nonexistent/suite.yaml"], False),        # cells load the engine in their own processes
    (["thresholds", "/nonexistent/results", "-o", "/nonexistent/r.json"], True),  # the embedding pre-router
    (["compare", "/nonexistent/a", "/nonexistent/b"], False),
    (["models", "quantize", "nonexistent-model", "--to", "Q8_0"], True),
])
def test_commands_that_load_an_engine_here_load_llama_cpp_before_numpy(argv: list[str], engine_first: bool) -> None:
    """On a GPU machine, a process that had imported numpy before llama.cpp segfaulted at every model load (see
    bench.backends.llamacpp): the commands that may load a model in their own process load llama.cpp's libraries
    first, the others do not pay for it."""
    import subprocess
    import sys

    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    code = ("import sys\nfrom bench.cli import main\ntry:\n    main(%r)\nexcept SystemExit:\n    pass\n"
            "import numpy\nmods = list(sys.modules)\n"
            "print('llama_cpp.llama_cpp' in mods and mods.index('llama_cpp.llama_cpp') < mods.index('numpy'))" % argv)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.stdout.strip().splitlines()[-1] == str(engine_first), out.stderr[-2000:]
