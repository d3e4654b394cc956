"""Nothing lost, nothing run twice, no secret written, no input that takes bench down.

Table-driven cases from the issue, hypothesis fuzzing of suites, data files and results lines (exit 0 or 2, never
a traceback), two real `bench run` processes on one directory, runs SIGKILLed at random points and resumed, a soak
of the HTTP backend against the fault server, and a planted credential that must reach no file or log."""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.cli import main
from tests.conftest import FAKE_SUITE, REPO, write_suite

try:
    from tests.servers.fault_server import FaultServer
except ImportError:  # tests/ itself on sys.path
    from servers.fault_server import FaultServer

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))


def _exit(argv: list[str]) -> int:
    """The CLI's exit code; any exception escaping main() is a traceback a user would see, so it fails the test."""
    return main(argv)


# ---------------------------------------------------------------- results files that are not what they should be

def _one_run(root: Path) -> Path:
    """A real run of the fake suite; returns the results directory."""
    suite = write_suite(root / "suite", FAKE_SUITE)
    assert _exit(["run", str(suite), "--results", str(root / "r"), "--isolation", "inline"]) == 0
    return root / "r"


@pytest.fixture
def results(tmp_path: Path) -> Path:
    return _one_run(tmp_path)


BAD_LINES = ["42", "[1,2]", '{"schema_version":1}', '{"schema_version": 0, "cell": {}, "cell_id": "c", '
             '"sample_id": "s"}', '"text"', "null", '{"schema_version": true}']


@pytest.mark.parametrize("line", BAD_LINES)
@pytest.mark.parametrize("command", ["thresholds", "compare", "report", "run"])
def test_bad_results_lines_exit_2_naming_file_and_line(results: Path, tmp_path: Path, line: str, command: str,
                                                       capsys: pytest.CaptureFixture) -> None:
    samples = next(results.rglob("samples.jsonl"))
    manifest = samples.with_name("manifest.json")
    before = manifest.read_text()
    lines = samples.read_text().splitlines()
    lines.insert(3, line)
    samples.write_text("\n".join(lines) + "\n")
    argv = {"thresholds": ["thresholds", str(results), "-o", str(tmp_path / "routing.json")],
            "compare": ["compare", str(results), str(results)],
            "report": ["report", str(results), "-o", str(tmp_path / "r.html")],
            "run": ["run", str(tmp_path / "suite" / "suite.yaml"), "--results", str(results), "--isolation",
                    "inline"]}[command]
    assert _exit(argv) == 2
    err = capsys.readouterr().err
    assert "samples.jsonl" in err and ("line 4" in err or ":4" in err), err
    if command == "run":  # a resume refused on a bad file leaves the manifest as it was
        assert manifest.read_text() == before


def test_routing_file_that_is_a_list_exits_2(results: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "routing.json"
    bad.write_text("[1, 2]")
    for argv in (["compare", str(results), str(results), "--routing", str(bad)],
                 ["report", str(results), "-o", str(tmp_path / "x.html"), "--routing", str(bad)]):
        assert _exit(argv) == 2
        assert "expected a JSON object" in capsys.readouterr().err


def test_thresholds_into_a_directory_exits_2_and_leaves_no_tmp(results: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "outdir"
    out.mkdir()
    assert _exit(["thresholds", str(results), "-o", str(out)]) == 2
    assert "directory" in capsys.readouterr().err
    assert not [p for p in tmp_path.rglob("*.tmp")]


@FUZZ
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
                    max_leaves=12))
def test_fuzzed_results_line_never_tracebacks(tmp_path_factory: pytest.TempPathFactory, value: object) -> None:
    root = tmp_path_factory.mktemp("fuzz")
    results = _fuzz_results(root)
    samples = next(results.rglob("samples.jsonl"))
    with samples.open("a") as f:
        f.write(json.dumps(value) + "\n")
    assert _exit(["thresholds", str(results), "-o", str(root / "routing.json")]) in (0, 2)
    assert _exit(["compare", str(results), str(results)]) in (0, 1, 2)


_CACHED: dict[str, Path] = {}


def _fuzz_results(root: Path) -> Path:
    """A copy of one real run (made once), so each fuzzed example starts from valid files."""
    import shutil

    if "run" not in _CACHED:
        base = root.parent / "fuzz-base"
        _CACHED["run"] = _one_run(base)
    dst = root / "r"
    shutil.copytree(_CACHED["run"], dst)
    return dst


# ---------------------------------------------------------------- suites and data that must not take bench down

BAD_SUITES = {
    "alias bomb": "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefghi", "bcdefghij")),
    "deep list": "name: " + "[" * 3000 + "]" * 3000 + "\n",
    "non-scalar key": "? [a, b]\n: 1\n",
    "mapping key": "? {a: 1}\n: 2\n",
    "not a mapping": "- a\n- b\n",
    "tab indentation": "name: x\n\ttask: y\n",
    "binary": "\x00\x01\x02",
}


@pytest.mark.parametrize("case", sorted(BAD_SUITES))
def test_hostile_suites_exit_2_quickly(tmp_path: Path, case: str, capsys: pytest.CaptureFixture) -> None:
    p = tmp_path / "suite.yaml"
    p.write_text(BAD_SUITES[case])
    t0 = time.perf_counter()
    assert _exit(["validate", str(p)]) == 2
    assert time.perf_counter() - t0 < 10  # a bound on the guard, not a speed measurement
    assert str(p) in capsys.readouterr().err


SUITE_EDITS = {
    "misspelt metric": ("target: 0.6", "target: 0.6\nmetric: exact_mtch"),
    "wrong-kind metric": ("target: 0.6", "target: 0.6\nmetric: rougeL"),
    "duplicate labels": ("labels: [billing, technical]", "labels: [billing, technical, Billing]"),
    "empty label": ("labels: [billing, technical]", "labels: [billing, technical, ' ']"),
    "nan target": ("target: 0.6", "target: .nan"),
    "infinite tolerance": ("target: 0.6", "target: 0.6\ntolerance: .inf"),
    "target above 1": ("target: 0.6", "target: 1.2"),
    "negative max_tokens": ("max_tokens: 8", "max_tokens: -8"),
    "dangling ref": ("  kind: classify\n  labels: [billing, technical]",
                     "  kind: extract\n  json_schema: {type: object, properties: {a: {$ref: '#/$defs/nope'}}}"),
    "remote ref": ("  kind: classify\n  labels: [billing, technical]",
                   "  kind: extract\n  json_schema: {$ref: 'https://example.invalid/schema.json'}"),
}


@pytest.mark.parametrize("case", sorted(SUITE_EDITS))
def test_silently_wrong_suites_are_refused_at_load(tmp_path: Path, case: str, capsys: pytest.CaptureFixture) -> None:
    old, new = SUITE_EDITS[case]
    assert old in FAKE_SUITE
    p = write_suite(tmp_path, FAKE_SUITE.replace(old, new))
    assert _exit(["validate", str(p)]) == 2
    err = capsys.readouterr().err
    assert str(p) in err and "Traceback" not in err


@FUZZ
@given(st.sampled_from(["name", "task", "dataset", "prompt", "target", "generation", "matrix", "split", "metric"]),
       st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
                    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=6), kids, max_size=3),
                    max_leaves=8))
def test_fuzzed_suite_values_exit_0_or_2(tmp_path_factory: pytest.TempPathFactory, key: str, value: object) -> None:
    import yaml

    folder = tmp_path_factory.mktemp("suite")
    doc = yaml.safe_load(FAKE_SUITE)
    doc[key] = value
    p = write_suite(folder, yaml.safe_dump(doc))
    assert _exit(["validate", str(p)]) in (0, 2)


@FUZZ
@given(st.binary(min_size=1, max_size=200), st.sampled_from(["jsonl", "csv"]))
def test_fuzzed_data_bytes_exit_0_or_2(tmp_path_factory: pytest.TempPathFactory, data: bytes, ext: str) -> None:
    folder = tmp_path_factory.mktemp("data")
    p = write_suite(folder, FAKE_SUITE.replace("data.jsonl", f"raw.{ext}"))
    (folder / f"raw.{ext}").write_bytes(data)
    assert _exit(["validate", str(p)]) in (0, 2)


def test_non_utf8_data_names_file_line_and_byte(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    p = write_suite(tmp_path, FAKE_SUITE)
    good = (tmp_path / "data.jsonl").read_bytes().splitlines(keepends=True)
    (tmp_path / "data.jsonl").write_bytes(b"".join(good[:2]) + b'{"id": 9, "text": "caf\xe9", "label": "billing"}\n')
    assert _exit(["validate", str(p)]) == 2
    err = capsys.readouterr().err
    assert "data.jsonl line 3" in err and "not UTF-8" in err and "byte" in err


def test_a_scorer_failure_is_an_error_row_not_a_crashed_cell(tmp_path: Path) -> None:
    from bench.results.store import RunDir
    from bench.tasks import get_task

    task = get_task("classify")
    original = task.score_fn

    def boom(*a, **k):
        raise ValueError("scorer broke")

    object.__setattr__(task, "score_fn", boom)  # a frozen dataclass: patched for this test only
    try:
        p = write_suite(tmp_path, FAKE_SUITE)
        assert _exit(["run", str(p), "--results", str(tmp_path / "r"), "--isolation", "inline"]) == 1
    finally:
        object.__setattr__(task, "score_fn", original)
    run = RunDir(next((tmp_path / "r" / "tickets").iterdir()))
    rows = run.samples()
    assert len(rows) == 16 and all("scoring failed: ValueError: scorer broke" in r["error"] for r in rows)


# ---------------------------------------------------------------- processes: concurrency and kills

SLOW_SUITE = FAKE_SUITE.replace("accuracy_by_model:", "delay_s: 0.02\n      accuracy_by_model:")


def _spawn(suite: Path, results: Path, env_extra: dict[str, str] | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), **(env_extra or {})}
    return subprocess.Popen([sys.executable, "-m", "bench", "run", str(suite), "--results", str(results),
                             "--isolation", "inline"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            cwd=str(suite.parent), start_new_session=True)


def _rows(results: Path) -> list[dict]:
    from bench.results.store import find_runs

    return [r for run in find_runs([results]) for r in run.samples()]


def _keyed(rows: list[dict]) -> dict[tuple[str, str], tuple]:
    return {(r["cell_id"], str(r["sample_id"])): (r["output"], r["score"], r["error"]) for r in rows}


def _many_rows(n: int) -> list[dict]:
    return [{"id": f"s{i:03d}", "text": f"ticket {i} about my bill", "label": "billing" if i % 2 else "technical"}
            for i in range(n)]


@pytest.mark.slow
def test_two_concurrent_runs_never_generate_a_sample_twice(tmp_path: Path) -> None:
    suite = write_suite(tmp_path / "s", SLOW_SUITE, _many_rows(30))
    results = tmp_path / "r"
    procs = [_spawn(suite, results), _spawn(suite, results)]
    outs = [p.communicate(timeout=120) for p in procs]
    codes = sorted(p.returncode for p in procs)
    errs = [e.decode() for _, e in outs]
    assert all("Traceback" not in e for e in errs), errs
    assert codes in ([0, 0], [0, 2]), (codes, errs)
    if codes == [0, 2]:
        assert any("another bench run holds this suite" in e and "pid" in e for e in errs)
    rows = _rows(results)
    keys = Counter((r["cell_id"], str(r["sample_id"])) for r in rows)
    assert len(keys) == 60 and max(keys.values()) == 1  # every sample once, none twice
    assert not list(results.rglob("*.tmp"))
    # with a wait, the second run waits for the first and then finds nothing left to do
    procs = [_spawn(suite, results, {"BENCH_LOCK_WAIT": "60"}) for _ in range(2)]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    assert len(_rows(results)) == 60


@pytest.mark.slow
def test_runs_killed_at_random_points_resume_to_exactly_the_uninterrupted_rows(tmp_path: Path) -> None:
    rows_in = _many_rows(40)
    clean_suite = write_suite(tmp_path / "clean", SLOW_SUITE, rows_in)
    p = _spawn(clean_suite, tmp_path / "clean-r")
    assert p.wait(timeout=120) == 0
    expected = _keyed(_rows(tmp_path / "clean-r"))
    assert len(expected) == 80

    suite = write_suite(tmp_path / "killed", SLOW_SUITE, rows_in)
    results = tmp_path / "killed-r"
    rng = random.Random(20)
    kills = 0
    for _ in range(20):
        proc = _spawn(suite, results)
        time.sleep(rng.uniform(0.3, 2.5))
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait(timeout=60)
    assert kills >= 10  # most of the 20 landed mid-run
    final = _spawn(suite, results)
    _, err = final.communicate(timeout=120)
    assert final.returncode == 0, err.decode()
    rows = _rows(results)
    keys = Counter((r["cell_id"], str(r["sample_id"])) for r in rows)
    assert max(keys.values()) == 1, "a sample was generated twice"
    assert _keyed(rows) == expected


# ---------------------------------------------------------------- the HTTP backend under load

@pytest.mark.slow
def test_soak_http_backend_concurrency_16_records_every_request_once(tmp_path: Path) -> None:
    import psutil

    from bench.backends.openai_http import OpenAIBackend
    from bench.config.suite import OpenAIBackendConfig
    from tests.test_openai_backend import req

    proc = psutil.Process()
    with FaultServer(delay_s=0.002) as srv:
        backend = OpenAIBackend(OpenAIBackendConfig(kind="openai", name="soak", base_url=srv.url, model="m",
                                                    locality="local", timeout_s=2.0, max_retries=3,
                                                    concurrency=16))
        backend._sleep = lambda s: None  # type: ignore[attr-defined]
        backend.load()
        faults = ["429", "500", "disconnect", "malformed", "ok", "ok", "ok", "ok"]
        seen: Counter[str] = Counter()
        rss, fds = [], []
        deadline = time.monotonic() + 20
        batch = 0
        while time.monotonic() < deadline and batch < 60:
            srv.push(*[faults[(batch + i) % len(faults)] for i in range(16)])
            requests = [req(batch * 64 + i) for i in range(64)]
            gens = backend.generate(requests, on_result=lambda g: seen.update([g.request_id]))
            assert [g.request_id for g in gens] == [r.id for r in requests]
            batch += 1
            rss.append(proc.memory_info().rss)
            fds.append(proc.num_fds())
        backend.close()
    assert batch >= 5
    assert set(seen.values()) == {1} and len(seen) == batch * 64  # every request recorded exactly once
    warm = len(rss) // 3
    assert max(rss[warm:]) - rss[warm] < 40 * 2**20, "memory grew under a steady load"
    assert max(fds[warm:]) - fds[warm] <= 8, "file descriptors leaked"


# ---------------------------------------------------------------- secrets

def test_a_planted_credential_reaches_no_file_and_no_log(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with FaultServer("500", "500", "500", "500") as srv:
        host = srv.url.split("://", 1)[1]
        url = f"http://planteduser:PLANTEDPASS@{host}?api_key=PLANTEDKEY&x=1"
        body = FAKE_SUITE.replace("""    - kind: fake
      accuracy_by_model: {smollm2-135m-instruct: 0.5, qwen2.5-coder-0.5b-instruct: 1.0}""", f"""    - kind: openai
      name: planted
      base_url: "{url}"
      model: m
      locality: local
      max_retries: 0
      timeout_s: 2""").replace("models: [smollm2-135m-instruct, qwen2.5-coder-0.5b-instruct]", "models: []")
        p = write_suite(tmp_path / "s", body)
        code = _exit(["run", str(p), "--results", str(tmp_path / "r")])
        assert code in (0, 1)
        assert _exit(["thresholds", str(tmp_path / "r"), "-o", str(tmp_path / "routing.json"), "--format",
                      "litellm"]) in (0, 1)
        assert _exit(["report", str(tmp_path / "r"), "-o", str(tmp_path / "report.html")]) == 0
    captured = capsys.readouterr()
    texts = {"stdout": captured.out, "stderr": captured.err}
    for f in tmp_path.rglob("*"):
        if f.is_file() and f.name not in ("suite.yaml",):
            texts[str(f)] = f.read_text(errors="replace")
    assert any("samples.jsonl" in k for k in texts) and any(k.endswith("report.html") for k in texts)
    for where, text in texts.items():
        for secret in ("PLANTEDPASS", "PLANTEDKEY"):
            assert secret not in text, f"{secret} leaked into {where}"


# ---------------------------------------------------------------- the CLI's own help

def _parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
             ) -> list[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every parser of the CLI, subcommands of subcommands included, with the words that reach it."""
    found = [(path, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += _parsers(sub, (*path, name))
    return found


def test_every_commands_help_renders() -> None:
    """`bench CMD --help` of every command formats (a stray % in a help string made `bench run --help` a
    traceback), and run's help shows that text."""
    from bench.cli import build_parser

    parsers = _parsers(build_parser())
    assert len(parsers) > 10
    for path, parser in parsers:
        assert parser.format_help().startswith("usage: "), path
    run_help = dict(parsers)[("run",)].format_help()
    assert "--concurrency" in run_help and "95% upper bound" in run_help
