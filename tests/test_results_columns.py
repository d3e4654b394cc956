"""The slim reader (bench.results.columns) keeps what the dict reader keeps and refuses what it refuses, with the
same messages; thresholds and compare decide the same on both."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pytest

from bench.compare import core
from bench.errors import UserInputError
from bench.results import columns, load
from bench.results.columns import FIELDS, read_fields
from bench.results.store import read_samples
from bench.thresholds import gather as gather_mod
from bench.thresholds.document import build
from tests.benchmarks.bigruns import add_retries_and_rerun, write_big_run


def _row(sid: Any, cell_id: str = "c", **kw: Any) -> dict[str, Any]:
    return {"schema_version": 1, "cell": {"model": "m", "backend": "fake"}, "cell_id": cell_id, "sample_id": sid,
            "split": "calibration", "score": 1.0, "error": None, "latency_s": 0.5, "output": "x",
            "timings": {"t_start": 1.0, "token_times": [1.0, 2.0]}, "token_logprobs": [-0.1],
            "contention": {"others_cores": 0.1, "contended": False}, **kw}


def _line(row: Any) -> str:
    return json.dumps(row) + "\n"


def _plain(rows: list[Any]) -> list[dict[str, Any]]:
    """Each row's analysis fields as a dict; a contention object reduced to its `contended` value."""
    out = []
    for r in rows:
        d = {k: r.get(k) for k in FIELDS}
        w = d["contention"]
        d["contention"] = ("window", w.get("contended")) if isinstance(w, (dict, columns.Window)) else w
        d["sample_id"] = str(d["sample_id"])
        out.append(d)
    return out


def _both(path: Path) -> tuple[Any, Any]:
    """(slim result, dict result): rows, or the error message."""
    got = []
    for read in (read_fields, lambda p: read_samples(p, lean=True)):
        try:
            got.append(_plain(read(path)))
        except UserInputError as exc:
            got.append(("error", str(exc)))
    return got[0], got[1]


GOOD = {
    "plain": "".join(_line(_row(f"s{i}", "c" if i < 5 else "d")) for i in range(10)),
    "retries and a torn last line": "".join(_line(_row(f"s{i}", error="boom" if i % 3 else None)) for i in range(6))
    + _line(_row("s1", score=0.0)) + '{"schema_version": 1, "cell": {"model": "m"}, "cell_id": "c", "sampl',
    "a whole last line without its newline": _line(_row("s1")) + _line(_row("s2")).rstrip("\n"),
    "blank and indented lines": _line(_row("s1")) + "\n   \n" + "  " + _line(_row("s2")) + "\t" + _line(_row("s3")),
    "numbers as sample ids": _line(_row(1)) + _line(_row(2)) + _line(_row("3")),
    "odd field values": _line(_row("a", score=True, contention=5, verified="yes", error="")) + _line(
        _row("b", score="0.5", contention=[1], confidence=2 ** 70, latency_s=None)) + _line(
        _row("c", contention={}, cell={"model": "other", "extra": [1, {"x": None}]})),
    "a cell changing within a stretch": _line(_row("s1")) + _line(_row("s2", cell={"model": "n"})),
    "CRLF line ends": _line(_row("s1")).replace("\n", "\r\n") + _line(_row("s2")).replace("\n", "\r\n"),
}

BAD = {
    "a bad line in the middle": _line(_row("s1")) + "{not json\n" + _line(_row("s2")),
    "a torn line in the middle": _line(_row("s1")) + '{"schema_version": 1, "cell": {"m\n' + _line(_row("s2")),
    "not an object": _line(_row("s1")) + "[1, 2]\n",
    "no cell_id": _line(_row("s1")) + _line({k: v for k, v in _row("s2").items() if k != "cell_id"}),
    "a newer schema": _line(_row("s1")) + _line(_row("s2", schema_version=99)),
    "no schema_version": _line({k: v for k, v in _row("s2").items() if k != "schema_version"}),
    "a cell that is not an object": _line(_row("s1")) + _line(_row("s2", cell="m")),
    "a bool as sample id": _line(_row(True)),
    "two rows on one line": _line(_row("s1")).rstrip("\n") + " " + _line(_row("s2")),
    "two rows on one line and a blank line": _line(_row("s1")).rstrip("\n") + _line(_row("s2")) + "\n",
    "a row over two lines": json.dumps(_row("s1")).replace('"cell_id"', '\n"cell_id"') + "\n" + _line(_row("s2")),
    "a row over two lines after a brace": json.dumps(_row("s1")).replace(', "cell_id"', '\n, "cell_id"') + "\n",
}


@pytest.mark.parametrize("block", [columns._BLOCK, 700, 64])
@pytest.mark.parametrize("case", sorted(GOOD) + sorted(BAD))
def test_slim_reader_keeps_and_refuses_what_the_dict_reader_does(case: str, block: int, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(columns, "_BLOCK", block)
    path = tmp_path / "samples.jsonl"
    path.write_text(GOOD.get(case) or BAD[case])
    slim, full = _both(path)
    assert slim == full
    if case in BAD:
        assert slim[0] == "error" and re.search(r"samples\.jsonl(:\d+:|.*line \d+)", slim[1])
    else:
        assert slim and slim[0] != "error"


@pytest.mark.parametrize("text", ["", "\n", "{", '{"a": 1}\n' + "x" * 200_000, '{"a": 1}\n' * 3 + '{"b"'])
def test_only_whole_lines_are_mapped(text: str, tmp_path: Path) -> None:
    # a writer resuming after a kill cuts a torn last line: the mapping must end before it
    path = tmp_path / "samples.jsonl"
    path.write_text(text)
    with path.open("rb") as f:
        assert columns._whole_lines(f, len(text)) == text.rfind("\n") + 1
    assert _both(path)[0] == _both(path)[1]


def test_missing_samples_file_reads_as_no_rows(tmp_path: Path) -> None:
    assert read_fields(tmp_path / "samples.jsonl") == [] == read_samples(tmp_path / "samples.jsonl")


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, int]:
    """A suite with two runs (the second re-ran a tenth of the samples of one cell), retried errors and a torn
    last line; and a candidate side for compare."""
    root = tmp_path_factory.mktemp("history")
    made = write_big_run(root / "base", 400, 3, seed=0)
    add_retries_and_rerun(made, seed=5)
    cand = write_big_run(root / "cand", 400, 3, seed=2)
    add_retries_and_rerun(cand, seed=9, torn=False)
    return root / "base", root / "cand", sum(made.errors.values())


def _dict_path(module: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    real = load.load_runs
    monkeypatch.setattr(module, "load_runs", lambda paths, **kw: real(paths, lean=True))


def test_thresholds_decide_the_same_on_both_readers(history: tuple[Path, Path, int],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    base, _, errors = history
    assert errors > 0  # retried errors are in the history
    slim_tasks = gather_mod.gather([base])
    slim = build(slim_tasks)
    _dict_path(gather_mod, monkeypatch)
    full_tasks = gather_mod.gather([base])
    full = build(full_tasks)
    (t_slim,), (t_full,) = slim_tasks, full_tasks
    assert len(t_slim.run_ids) == 2 and t_slim.run_ids == t_full.run_ids
    for a, b in zip(t_slim.tiers, t_full.tiers):
        assert a.cell_id == b.cell_id and a.cell == b.cell and a.run_id == b.run_id
        assert list(a.rows) == list(b.rows) and _plain(list(a.rows.values())) == _plain(list(b.rows.values()))
        assert not any(r.get("error") for r in b.rows.values())  # every error was retried, and the retry won
    run_of = {t.cell["model"]: t.run_id for t in t_slim.tiers}
    assert run_of["smollm2-135m-instruct"].endswith("9") and run_of["qwen2.5-coder-1.5b-instruct"].endswith("0")
    rerun = load.load_runs([base]).suites["tickets"].cells  # the rerun's rows won, the others kept theirs
    smollm = next(c for c in rerun.values() if c.cell["model"] == "smollm2-135m-instruct")
    assert len(smollm.runs) == 2 and len(smollm.rows) == 400
    slim.pop("created_at")
    full.pop("created_at")
    assert slim == full
    task = slim["tasks"]["tickets"]
    assert task["n_calibration"] > 100 and all(t["quality"]["n"] == task["n_calibration"] for t in task["tiers"])
    assert all(not math.isnan(t["quality"]["mean"]) and t["quality"]["ci_low"] <= t["quality"]["ci_high"]
               for t in task["tiers"])
    assert task["status"] in {"meets_target", "insufficient_data", "unreachable", "failed_holdout"}


def test_compare_decides_the_same_on_both_readers(history: tuple[Path, Path, int],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    base, cand, _ = history
    slim = core.compare(base, cand)
    _dict_path(core, monkeypatch)
    full = core.compare(base, cand)
    assert slim == full
    pairs = slim["tasks"][0]["pairs"]
    assert len(pairs) == 3 and all(p["samples"]["shared"] == 400 for p in pairs)
    assert all(p["quality"]["n"] > 0 and p["speed"]["latency_p95_s"]["n"] > 0 for p in pairs)
