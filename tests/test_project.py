"""`bench project`: roofline projections onto other hardware, flagged `projected`, beside measured cells."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from bench.cli import main
from bench.project import project_cell
from tests.conftest import REPO

TARGET = SimpleNamespace(id="gpu-x", memory_bandwidth_gbs=1000.0, peak_tflops_fp16=100.0, cost_per_hour_usd=3.6)


def _cell(**over):
    c = {"cell_id": "m@Q4/llamacpp/here#g", "cell": {"model": "m", "quantization": "Q4", "backend": "llamacpp",
                                                     "hardware": "here"},
         "model_bytes": 1e8, "params_m": 100.0, "bandwidth_utilization": 0.5, "prefill_utilization": 0.2,
         "prompt_tokens_mean": 200.0, "completion_tokens_mean": 50.0, "cached_prompt_share": 0.5}
    return c | over


def test_projection_is_the_roofline_times_the_measured_efficiency() -> None:
    p = project_cell(_cell(), TARGET)
    assert p["projected"] is True and p["hardware"] == "gpu-x" and p["reason"] is None
    assert p["decode_tps"] == pytest.approx(0.5 * 1000e9 / 1e8)                 # 5000 tok/s
    assert p["prefill_tps"] == pytest.approx(0.2 * 100e12 / (2 * 100e6))        # 100000 tok/s
    latency = 50 / 5000 + 100 / 100000                                           # half the prompt was cached
    assert p["latency_s"] == pytest.approx(latency) and p["decode_only"] is False
    assert p["cost_per_1k_usd"] == pytest.approx(3.6 * latency / 3600 * 1000)
    assert p["assumptions"]["bandwidth_utilization_source"] == "measured on here"


def test_stated_efficiency_replaces_the_measured_one_and_missing_prefill_is_said() -> None:
    p = project_cell(_cell(prefill_utilization=None), TARGET, efficiency=0.8)
    assert p["decode_tps"] == pytest.approx(0.8 * 1000e9 / 1e8)
    assert p["prefill_tps"] is None and p["decode_only"] is True
    assert p["latency_s"] == pytest.approx(50 / 8000)
    assert p["assumptions"]["bandwidth_utilization_source"] == "--efficiency"


def test_cells_that_cannot_be_projected_say_why() -> None:
    http = project_cell(_cell(cell={"model": "gpt", "backend": "openai", "hardware": "remote"}), TARGET)
    assert http["decode_tps"] is None and "HTTP" in http["reason"]
    unmeasured = project_cell(_cell(bandwidth_utilization=None), TARGET)
    assert unmeasured["decode_tps"] is None and "--efficiency" in unmeasured["reason"]


def test_bad_options_exit_2(fake_suite, tmp_path, capsys) -> None:
    res = tmp_path / "res"
    assert main(["run", str(fake_suite), "--results", str(res), "--no-probe"]) == 0
    capsys.readouterr()
    assert main(["project", str(res), "--hardware", "h100-sxm"]) == 2
    assert "h100-sxm-cloud" in capsys.readouterr().err
    assert main(["project", str(res), "--hardware", "h100-sxm-cloud", "--efficiency", "1.5"]) == 2
    assert "--efficiency" in capsys.readouterr().err


@pytest.mark.integration
def test_a_real_run_projected_and_then_measured_there(tmp_path, capsys) -> None:
    """The default model on llama.cpp: projected onto a GPU profile; a run labelled with that profile then
    stands beside the projection as the measured figure (the pairing, not the GPU, is under test here)."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    res = tmp_path / "res"
    suite = str(REPO / "suites" / "normalize.yaml")
    assert main(["run", suite, "--limit", "2", "--results", str(res)]) == 0
    capsys.readouterr()
    assert main(["project", str(res), "--hardware", "h100-sxm-cloud", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["kind"] == "projection" and doc["hardware"] == "h100-sxm-cloud"
    (p,) = doc["suites"][0]["cells"]
    a = p["assumptions"]
    assert p["projected"] is True and p["measured_on_target"] is None
    assert p["decode_tps"] == pytest.approx(a["bandwidth_utilization"] * 3350e9 / a["model_bytes"])
    assert p["cost_per_1k_usd"] > 0 and p["quality"]["n"] == 2

    assert main(["run", suite, "--limit", "2", "--results", str(res), "--hardware", "h100-sxm-cloud"]) == 0
    capsys.readouterr()
    out = tmp_path / "projection.json"
    assert main(["project", str(res), "--hardware", "h100-sxm-cloud", "-o", str(out)]) == 0
    assert "projected onto h100-sxm-cloud" in capsys.readouterr().out
    (p,) = json.loads(out.read_text())["suites"][0]["cells"]
    there = p["measured_on_target"]
    assert there is not None and "/llamacpp/h100-sxm-cloud#" in there["cell_id"]
    assert there["decode_tps"] > 0
