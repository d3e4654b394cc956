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


def test_request_metrics_become_offsets() -> None:
    class V1:
        arrival_time = 100.0
        first_token_ts = 100.25
        last_token_ts = 101.0
        scheduled_ts = 100.05

    t = _timing(V1())
    assert t == {"t_first_token": 0.25, "t_end": 1.0, "t_prefill_end": 0.25, "queued_s": pytest.approx(0.05)}
    assert _timing(None) is None


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
