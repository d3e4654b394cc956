"""vLLM backend: without a GPU or vLLM the cell errors saying which and how to install; the GPU test skips here."""

from __future__ import annotations

import pytest

from bench.backends.vllm_backend import VLLMBackend, _gpu_present, _timing
from bench.config import load_suite
from bench.config.suite import VLLMBackendConfig
from bench.errors import ModelError
from bench.runner import run_suite
from tests.conftest import FAKE_SUITE, write_suite


def test_missing_gpu_or_vllm_is_a_clear_cell_error(tmp_path) -> None:
    if _gpu_present() is None:
        pytest.skip("a GPU is present: the error path is not reachable here")
    with pytest.raises(ModelError) as exc:
        VLLMBackend(VLLMBackendConfig(kind="vllm", hf_model="org/model"), None).load()
    assert "vLLM needs an NVIDIA GPU" in str(exc.value) and "pip install" in str(exc.value)
    body = FAKE_SUITE.replace("""    - kind: fake
      accuracy_by_model: {smollm2-135m-instruct: 0.5, qwen2.5-coder-0.5b-instruct: 1.0}""",
                              "    - {kind: vllm, hf_model: org/model}")
    suite = load_suite(write_suite(tmp_path, body))
    outcome = run_suite(suite, models=["smollm2-135m-instruct"], results_dir=tmp_path / "r", quiet=True, limit=2)
    assert outcome.errored_cells
    assert all("vLLM needs an NVIDIA GPU" in r["error"] for r in outcome.run.samples())


class V1Stats:
    """vLLM V1's per-request stats as they really come: arrival on the wall clock, the rest on the engine's
    monotonic clock (seconds since boot), first_token_latency on the wall clock."""

    def __init__(self, arrival=1_763_800_000.5, queued=5000.10, scheduled=5000.15, first=5000.40, last=5001.20,
                 ttft=0.31):
        self.arrival_time, self.queued_ts, self.scheduled_ts = arrival, queued, scheduled
        self.first_token_ts, self.last_token_ts, self.first_token_latency = first, last, ttft


def test_request_stats_become_offsets_on_one_clock_each() -> None:
    t = _timing(V1Stats(), wall_s=2.0)
    assert t["t_first_token"] == pytest.approx(0.31) and t["t_end"] == pytest.approx(0.31 + 0.80)
    assert t["queued_s"] == pytest.approx(0.05) and t["arrival_time"] == pytest.approx(1_763_800_000.5)
    # without vLLM's own first_token_latency, TTFT is measured from queueing on the monotonic clock
    no_ttft = _timing(V1Stats(ttft=None), wall_s=2.0)
    assert no_ttft["t_first_token"] == pytest.approx(0.30) and "monotonic" in no_ttft["source"]
    assert _timing(None, 1.0) is None


@pytest.mark.parametrize("stats", [V1Stats(first=5000.4, last=4999.0), V1Stats(ttft=5.0),
                                   V1Stats(queued=5000.5, scheduled=5000.2), V1Stats(ttft=None, queued=9000.0)])
def test_no_derived_time_is_negative_or_longer_than_the_cell(stats) -> None:
    """Mixing the wall clock (~1.7e9) with the monotonic one (~5000) gave TTFTs of -1.7e9 s; any such time, or one
    longer than the batch took, is refused and the batch wall time used instead."""
    assert _timing(stats, wall_s=2.0) is None


class _FakeTokenizer:
    def apply_chat_template(self, messages, add_generation_prompt=True, tokenize=True):
        return list(range(sum(len(m["content"].split()) for m in messages) + 5))

    def encode(self, text):
        return list(range(len(text.split())))


class _FakeLLM:
    calls: list = []

    def __init__(self, **kw):
        _FakeLLM.kwargs = kw

    def get_tokenizer(self):
        return _FakeTokenizer()

    def chat(self, messages, params, use_tqdm=False):
        import time
        from types import SimpleNamespace as NS

        _FakeLLM.calls.append(len(messages))
        time.sleep(0.05)  # the batch takes longer than any request's own times below
        outs = []
        for i, m in enumerate(messages):
            comp = NS(text=f"answer {i}", token_ids=[1, 2], logprobs=[{1: NS(logprob=-0.1)}, {2: NS(logprob=-0.3)}],
                      finish_reason="stop")
            outs.append(NS(outputs=[comp], prompt_token_ids=[0] * 7, num_cached_tokens=0,
                           metrics=V1Stats(queued=5000.39, scheduled=5000.395, first=5000.40 + i * 0.001,
                                           last=5000.41 + i * 0.002, ttft=0.01 + i * 0.001)))
        return outs


@pytest.fixture
def fake_vllm(monkeypatch):
    import sys
    import types

    mod = types.ModuleType("vllm")
    mod.LLM = _FakeLLM
    mod.SamplingParams = lambda **kw: kw
    monkeypatch.setitem(sys.modules, "vllm", mod)
    monkeypatch.setattr("bench.backends.vllm_backend._gpu_present", lambda: None)

    class Gpu:
        used = iter([1000.0, 7000.0])

        def used_mb(self):
            return next(self.used)

        def total_mb(self):
            return 80_000.0

        def close(self):
            pass

    monkeypatch.setattr("bench.measure.memory.GpuReader", Gpu)
    _FakeLLM.calls = []
    return mod


def _model():
    from types import SimpleNamespace as NS

    return NS(id="smollm2-135m-instruct", path="/models/x.gguf", size_bytes=100 * 2**20, chat=True)


def test_stats_on_tokenizer_from_catalog_and_memory_named_apart(fake_vllm) -> None:
    b = VLLMBackend(VLLMBackendConfig(kind="vllm", max_model_len=64, gpu_memory_utilization=0.5), _model())
    info = b.load()
    assert _FakeLLM.kwargs["disable_log_stats"] is False
    assert _FakeLLM.kwargs["tokenizer"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert info.gpu_mb == 6000.0 and info.details["gpu_reservation_mb"] == 40_000.0
    assert info.details["weights_mb"] == 100.0


def test_a_gguf_without_a_tokenizer_is_a_clear_error(fake_vllm) -> None:
    from types import SimpleNamespace as NS

    b = VLLMBackend(VLLMBackendConfig(kind="vllm"), NS(id="not-in-catalog", path="/m/x.gguf", size_bytes=1, chat=True))
    with pytest.raises(ModelError) as exc:
        b.load()
    assert "no tokenizer for the GGUF file" in str(exc.value) and "tokenizer:" in str(exc.value)


def test_over_long_prompts_are_errored_rows_and_the_batch_still_runs(fake_vllm) -> None:
    from bench.backends.base import Request

    b = VLLMBackend(VLLMBackendConfig(kind="vllm", max_model_len=20), _model())
    b.load()
    reqs = [Request(id="short", messages=[{"role": "user", "content": "hi there"}], prompt="hi", max_tokens=4),
            Request(id="long", messages=[{"role": "user", "content": "word " * 40}], prompt="x", max_tokens=4),
            Request(id="short2", messages=[{"role": "user", "content": "hello"}], prompt="hi", max_tokens=4)]
    gens = b.generate(reqs)
    assert [g.request_id for g in gens] == ["short", "long", "short2"]
    assert gens[1].error and "does not fit max_model_len 20" in gens[1].error
    assert _FakeLLM.calls == [2]  # only the prompts that fit were sent
    ok = [g for g in gens if not g.error]
    assert all(g.t_first_token >= 0 and g.t_end >= g.t_first_token for g in ok)
    assert sum(g.extra["batch_share"] for g in ok) == pytest.approx(1.0)
    assert all(g.t_start == pytest.approx(1_763_800_000.5) for g in ok)


def test_batch_energy_is_split_by_share_not_given_to_the_first_sample(monkeypatch) -> None:
    """The worker's energy accounting for engines whose results all arrive when the batch ends."""
    from bench.backends.base import Generation
    from bench.worker import run_cell

    class Sampler:
        gpu = type("G", (), {"readings": iter([0.0, 90_000.0, 90_000.0, 90_000.0]),
                             "energy_mj": lambda self: next(self.readings)})()
        peak_mb = gpu_peak_mb = samples = None
        method = "test stand-in"

        def start(self):
            return self

        def rss_mb(self):
            return 100.0

        def window(self):
            return (100.0, None)

        def stop(self):
            pass

    class Backend:
        def load(self):
            from bench.backends.base import LoadInfo

            return LoadInfo(load_s=0.1)

        def generate(self, requests, on_result):
            for rid, share in (("a", 0.5), ("b", 0.3), ("c", 0.2)):
                g = Generation(request_id=rid)
                g.extra["batch_share"] = share
                on_result(g)

        def close(self):
            pass

    monkeypatch.setattr("bench.measure.memory.MemorySampler", Sampler)
    monkeypatch.setattr("bench.measure.memory.rapl_energy_uj", lambda: None)
    monkeypatch.setattr("bench.worker.create_backend", lambda cfg, model: Backend())
    events = []
    run_cell(events.append, {"kind": "vllm"}, None, [])
    energy = [e[1]["energy_j"] for e in events if e[0] == "sample"]
    assert energy == pytest.approx([45.0, 27.0, 18.0])


@pytest.mark.integration
def test_vllm_on_a_gpu(tmp_path) -> None:
    if _gpu_present() is not None:
        pytest.skip(f"vLLM integration needs an NVIDIA GPU, and this machine has none ({_gpu_present()})")
    pytest.importorskip("vllm", reason="vLLM is not installed: pip install 'bench[vllm]'")
    body = FAKE_SUITE.replace("""    - kind: fake
      accuracy_by_model: {smollm2-135m-instruct: 0.5, qwen2.5-coder-0.5b-instruct: 1.0}""",
                              "    - {kind: vllm, gpu_memory_utilization: 0.5, max_model_len: 2048}")
    suite = load_suite(write_suite(tmp_path, body))
    outcome = run_suite(suite, models=["smollm2-135m-instruct"], results_dir=tmp_path / "r", quiet=True, limit=4)
    rows = outcome.run.samples()
    assert not outcome.errored_cells and all(r["confidence"] is not None for r in rows)
    assert all(r["gpu_peak_mb"] for r in rows)
