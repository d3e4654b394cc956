"""`bench fidelity`: parsing llama.cpp's tools, bench's batched decode rate, flag errors, the interleaved rounds."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from bench import fidelity
from bench.backends.base import Generation, Request
from bench.backends.llamacpp_batch import BatchScheduler
from bench.cli import main
from bench.models.resolve import ResolvedModel

FIXTURES = Path(__file__).parent / "fixtures" / "fidelity"


# ---------------------------------------------------------------- parsing the tools' real output

def test_parse_llama_bench_reads_the_tg_test_of_real_output() -> None:
    text = (FIXTURES / "llama-bench.json").read_text()
    rows = json.loads(text)
    expected = next(r["avg_ts"] for r in rows if r["n_gen"] == 16 and r["n_prompt"] == 0)
    assert fidelity.parse_llama_bench(text, tokens=16, depth=32) == pytest.approx(expected)
    assert expected > 0


def test_parse_llama_bench_refuses_a_missing_test_or_no_json() -> None:
    text = (FIXTURES / "llama-bench.json").read_text()
    with pytest.raises(fidelity.ToolFailed, match="no tg128 test at depth 32"):
        fidelity.parse_llama_bench(text, tokens=128, depth=32)
    with pytest.raises(fidelity.ToolFailed, match="no tg16 test at depth 512"):
        fidelity.parse_llama_bench(text, tokens=16, depth=512)
    with pytest.raises(fidelity.ToolFailed, match="no JSON array"):
        fidelity.parse_llama_bench("main: error: failed to load model\n", tokens=16, depth=32)


def test_parse_batched_bench_reads_s_tg_of_the_matching_row() -> None:
    text = (FIXTURES / "llama-batched-bench.jsonl").read_text()
    rows = [json.loads(x) for x in text.splitlines() if x.startswith("{")]
    row = next(r for r in rows if r["pl"] == 2)
    assert fidelity.parse_batched_bench(text, depth=32, tokens=16, n=2) == pytest.approx(row["speed_tg"])
    assert row["speed_tg"] == pytest.approx(row["pl"] * row["tg"] / row["t_tg"], rel=1e-3)
    with pytest.raises(fidelity.ToolFailed, match="no row for pp=32 tg=16 pl=8"):
        fidelity.parse_batched_bench(text, depth=32, tokens=16, n=8)


def test_tool_commands_use_the_flags_this_llama_cpp_has() -> None:
    lb = fidelity.llama_bench_cmd(Path("/x/llama-bench"), Path("m.gguf"), 2, 512, 128, repack=True)
    assert lb[1:] == ["-m", "m.gguf", "-t", "2", "-p", "0", "-n", "128", "-d", "512", "-fa", "0", "-r", "1",
                      "--repack", "1", "-o", "json"]
    assert "0" == fidelity.llama_bench_cmd(Path("lb"), Path("m"), 2, 1, 2, repack=False)[-3]
    bb = fidelity.batched_bench_cmd(Path("/x/llama-batched-bench"), Path("m.gguf"), 2, 512, 128, 4, repack=False)
    assert bb[bb.index("-npl") + 1] == "4" and bb[bb.index("-c") + 1] == str(4 * (512 + 128))
    assert bb[-3:] == ["--no-repack", "--output-format", "jsonl"]
    assert "--repack" in fidelity.batched_bench_cmd(Path("b"), Path("m"), 2, 1, 2, 2, repack=True)


# ---------------------------------------------------------------- bench's batched rate

def _gen(t_start: float, first: float, step: float, n: int) -> Generation:
    return Generation(request_id=str(t_start), t_start=t_start, token_times=[first + i * step for i in range(n)])


def test_batched_rate_counts_the_steps_after_the_last_prefill() -> None:
    # three sequences admitted one after another; the last one's first token ends the last prefill,
    # then 9 steps of 0.1 s each return one token to every sequence
    gens = [_gen(100.0, 0.5, 0.1, 10), _gen(100.6, 0.4, 0.1, 10), _gen(101.1, 0.3, 0.1, 10)]
    assert fidelity.batched_decode_tps(gens) == pytest.approx(3 * 9 / 0.9)
    with pytest.raises(fidelity.ToolFailed, match="unequal"):
        fidelity.batched_decode_tps([_gen(0, 0.1, 0.1, 10), _gen(1, 0.1, 0.1, 9)])


class _AlwaysEos:
    """A SeqEngine whose every sampled token is end-of-generation."""

    n_seq = 2

    def clear(self, seq: int, keep: int) -> bool:
        return True

    def decode(self, items) -> None:
        pass

    def logits(self, index: int) -> np.ndarray:
        return np.zeros(8, dtype=np.float32)

    def is_eog(self, token: int) -> bool:
        return True

    bos = -1

    def piece(self, token: int) -> bytes:
        return b"x"


@pytest.mark.parametrize("ignore_eos, expected", [(False, 0), (True, 7)])
def test_ignore_eos_decodes_exactly_max_tokens(ignore_eos: bool, expected: int) -> None:
    reqs = [Request(id=f"r{i}", messages=[], prompt="", max_tokens=7, ignore_eos=ignore_eos) for i in range(3)]
    gens = BatchScheduler(_AlwaysEos(), lambda req: ([1, 2, 3], []), n_ctx=64, n_batch=8).run(reqs)
    assert [g.completion_tokens for g in gens] == [expected] * 3
    assert {g.finish_reason for g in gens} == {"length" if ignore_eos else "stop"}


def test_measurement_medians_and_ratio() -> None:
    m = fidelity.Measurement(name="decode", parallel=1, tool="llama-bench", llama_cpp_tps=[100.0, 120.0, 110.0],
                             bench_tps=[99.0, 97.0, 101.0])
    m.settle()
    assert (m.llama_cpp_median, m.bench_median) == (110.0, 99.0)
    # the ratio pairs each round's two figures (taken back to back), then takes the median: 0.99, 0.808, 0.918
    assert m.round_ratios == pytest.approx([0.99, 97.0 / 120.0, 101.0 / 110.0])
    assert m.ratio == pytest.approx(101.0 / 110.0)


# ---------------------------------------------------------------- flags

@pytest.mark.parametrize("argv, flag", [
    (["--threads", "0"], "--threads"), (["--depth", "0"], "--depth"), (["--tokens", "1"], "--tokens"),
    (["--rounds", "0"], "--rounds"), (["--parallel", "0"], "--parallel"), (["--parallel", "1,x"], "--parallel"),
    (["--parallel", "65"], "--parallel"), (["--llama-bench", "/nonexistent/llama-bench"], "--llama-bench"),
    (["--n-ctx", "600"], "--n-ctx"), (["--depth", "64", "--tokens", "16", "--n-ctx", "79"], "--n-ctx"),
])
def test_bad_flags_exit_2_with_one_line_naming_the_flag(argv, flag, capsys) -> None:
    assert main(["fidelity", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {flag}: ")


def test_unknown_model_and_unbuilt_tools_exit_2(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(fidelity, "llama_cpp_python_version", lambda: "9.9.9")
    monkeypatch.setenv("BENCH_TOOLS_DIR", str(tmp_path))
    assert main(["fidelity", "--model", "smollm2-135m-instrukt"]) == 2
    assert "did you mean 'smollm2-135m-instruct'?" in capsys.readouterr().err
    assert main(["fidelity", "--parallel", "1"]) == 2
    err = capsys.readouterr().err
    assert f"llama-bench is not built at {tmp_path}/llama.cpp-9.9.9/build/bin/llama-bench" in err
    assert "scripts/build-llama-tools.sh" in err
    assert main(["fidelity", "--parallel", "4", "--llama-bench", "/nonexistent"]) == 2  # not needed without 1
    assert "--batched-bench: llama-batched-bench is not built" in capsys.readouterr().err


# ---------------------------------------------------------------- the rounds, with the tools' output replayed

def _fake_setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sha: str) -> Path:
    """A stand-in tool executable and model, resolved without a cache; returns the executable."""
    exe = tmp_path / "tool"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    model = ResolvedModel(id="smollm2-135m-instruct", quantization="Q4_1", path=tmp_path / "m.gguf",
                          sha256=sha * 32, size_bytes=1, chat=True)
    monkeypatch.setattr("bench.models.resolve.resolve_model", lambda ref: model)
    monkeypatch.setattr(fidelity, "llama_cpp_python_version", lambda: "9.9.9")
    return exe


def test_rounds_interleave_alternate_and_rewrite_the_output(tmp_path, monkeypatch, capsys) -> None:
    exe = _fake_setup(tmp_path, monkeypatch, "ab")
    lb = (FIXTURES / "llama-bench.json").read_text()
    bb = (FIXTURES / "llama-batched-bench.jsonl").read_text()
    ran: list[str] = []

    cmds: list[list[str]] = []
    monkeypatch.setattr("bench.backends.llamacpp.cpu_advertises_amx", lambda: True)  # bench then does not repack

    def tool(cmd: list[str]) -> str:
        ran.append("tool")
        cmds.append(cmd)
        return lb if "-npl" not in cmd else bb

    figures = iter([50.0, 60.0, 70.0, 80.0])

    def ours(m, threads, depth, tokens, n, n_ctx) -> tuple[float, float]:
        assert (m.sha256, threads, depth, tokens, n_ctx) == ("ab" * 32, 3, 32, 16, 48)
        ran.append(f"bench{n}")
        whole = next(figures)
        return whole, whole + 5.0

    monkeypatch.setattr(fidelity, "_run_tool", tool)
    monkeypatch.setattr(fidelity, "bench_decode", ours)
    out = tmp_path / "fidelity.json"
    rc = main(["fidelity", "--threads", "3", "--depth", "32", "--tokens", "16", "--parallel", "2,1", "--rounds", "2",
               "--n-ctx", "48",
               "--llama-bench", str(exe), "--batched-bench", str(exe), "--json", "-o", str(out)])
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc == json.loads(out.read_text())
    assert doc["schema_version"] == fidelity.SCHEMA_VERSION and doc["complete"] is True
    assert ran == ["tool", "bench1", "tool", "bench2", "bench1", "tool", "bench2", "tool"]
    assert doc["order"][1] == ["decode: bench", "decode: llama-bench", "batched N=2: bench",
                               "batched N=2: llama-batched-bench"]
    dec, bat = doc["measurements"]
    assert dec["bench_tps"] == [50.0, 70.0] and bat["bench_tps"] == [60.0, 80.0]
    assert dec["bench_engine_tps"] == [55.0, 75.0] and bat["bench_engine_tps"] == [65.0, 85.0]
    lb_tps = fidelity.parse_llama_bench(lb, 16, 32)
    assert dec["llama_cpp_tps"] == [lb_tps, lb_tps] and dec["ratio"] == pytest.approx(60.0 / lb_tps)
    assert bat["ratio"] == pytest.approx(70.0 / fidelity.parse_batched_bench(bb, 32, 16, 2))
    assert dec["engine_ratio"] == pytest.approx(65.0 / lb_tps)
    assert doc["model"]["sha256"] == "ab" * 32 and doc["threads"] == 3 and doc["depth"] == 32
    assert doc["extra_buffers"] is False and doc["bench_n_ctx"] == 48
    assert all(("--repack", "0") == tuple(c[c.index("--repack"):][:2]) for c in cmds if "-npl" not in c)
    assert all("--no-repack" in c for c in cmds if "-npl" in c) and len(cmds) == 4


# ---------------------------------------------------------------- the real tools

def _built_tools() -> tuple[Path, Path]:
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    bin_dir = fidelity.tools_dir(fidelity.llama_cpp_python_version())
    tools = bin_dir / "llama-bench", bin_dir / "llama-batched-bench"
    for t in tools:
        if not os.access(t, os.X_OK):
            pytest.skip(f"{t} is not built (scripts/build-llama-tools.sh builds it; CI does not)")
    return tools


@pytest.mark.integration
def test_fidelity_runs_against_the_built_tools(tmp_path, capsys) -> None:
    _built_tools()
    out = tmp_path / "f.json"
    rc = main(["fidelity", "--tokens", "16", "--depth", "32", "--rounds", "1", "--parallel", "1,2", "--threads", "2",
               "--json", "-o", str(out)])
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["complete"] and len(doc["model"]["sha256"]) == 64
    assert [m["parallel"] for m in doc["measurements"]] == [1, 2]
    for m in doc["measurements"]:
        assert len(m["llama_cpp_tps"]) == len(m["bench_tps"]) == 1
        assert m["llama_cpp_tps"][0] > 0 and m["bench_tps"][0] > 0
        assert m["ratio"] == pytest.approx(m["bench_tps"][0] / m["llama_cpp_tps"][0])
    assert doc["tools"]["llama-bench"].endswith("llama-bench")


def test_a_failing_tool_exits_1_and_keeps_what_was_measured(tmp_path, monkeypatch, capsys) -> None:
    exe = _fake_setup(tmp_path, monkeypatch, "cd")
    lb = (FIXTURES / "llama-bench.json").read_text()
    calls = iter([lb, "llama-bench: error: failed to create context\n"])
    monkeypatch.setattr(fidelity, "_run_tool", lambda cmd: next(calls))
    monkeypatch.setattr(fidelity, "bench_decode", lambda *a: (42.0, 44.0))
    out = tmp_path / "f.json"
    rc = main(["fidelity", "--depth", "32", "--tokens", "16", "--parallel", "1", "--rounds", "2",
               "--llama-bench", str(exe), "-o", str(out)])
    assert rc == 1
    assert "llama-bench printed no JSON array" in capsys.readouterr().err
    doc = json.loads(out.read_text())
    assert doc["complete"] is False
    assert doc["measurements"][0]["llama_cpp_tps"] == [fidelity.parse_llama_bench(lb, 16, 32)]
    assert doc["measurements"][0]["bench_tps"] == [42.0, 42.0]  # round 2 ran bench first


@pytest.mark.integration
@pytest.mark.parametrize("n", [1, 2])
def test_bench_decode_on_the_default_model_gives_its_rate_and_the_engine_only_rate(n: int) -> None:
    """Without llama.cpp's tools (CI does not build them): bench's side of `bench fidelity` on the real default
    model. Its whole rate spans the same decode steps as the engine-only one plus the harness's work between
    them, so the engine-only rate is the higher; both are real rates."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    from bench.models.catalog import DEFAULT_MODEL
    from bench.models.resolve import resolve_model

    whole, engine = fidelity.bench_decode(resolve_model(DEFAULT_MODEL), 2, 64, 24, n)
    assert 0 < whole < engine < 1e5
