"""The analysis's fast paths (one numpy call per column, JSONL parsed in blocks) give what the row-by-row rules
they replace give, on the odd values a hand-edited or old results file can hold."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench.compare import core, speed
from bench.errors import UserInputError
from bench.results import store
from bench.thresholds import calibrate

ODD = [1.0, 0, 1, None, True, False, "0.5", "x", math.nan, math.inf, -math.inf, 2 ** 80, 0.25, {"a": 1}, [1]]


def _same(a: np.ndarray, b: list[float]) -> bool:
    return len(a) == len(b) and all((math.isnan(x) and math.isnan(y)) or x == y for x, y in zip(a.tolist(), b))


@pytest.mark.parametrize("vals", [[1.0, 0.5, None, 3], ODD, [], [None, None], [True, 1.5]])
def test_floats_match_num(vals: list[Any]) -> None:
    assert _same(calibrate._floats(vals), [calibrate._num(v) for v in vals])
    with_bool = [float(v) if isinstance(v, (int, float)) and math.isfinite(v) else math.nan for v in vals]
    assert _same(calibrate._floats(vals, allow_bool=True), with_bool)


def _row(score: Any, error: Any = None, **kw: Any) -> dict[str, Any]:
    return {"score": score, "error": error, **kw}


def test_compare_scores_match_score() -> None:
    rows = [_row(v) for v in ODD] + [_row(v, "boom") for v in ODD] + [_row(1.0, "")]
    failed = core._errored(rows)
    assert failed.tolist() == [bool(r.get("error")) for r in rows]
    want = [math.nan if (s := core._score(r)) is None else s for r in rows]
    assert _same(core._scores(rows, failed), want)
    plain = [_row(v) for v in (1.0, 0, None, 0.5, math.nan)] + [_row(None, "x")]
    assert _same(core._scores(plain, core._errored(plain)), [1.0, 0.0, math.nan, 0.5, math.nan, 0.0])


def _old_pairs(b_rows: list[dict[str, Any]], c_rows: list[dict[str, Any]], key: str) -> tuple[list, list]:
    keep = [(float(b[key]), float(c[key])) for b, c in zip(b_rows, c_rows)
            if isinstance(b.get(key), (int, float)) and isinstance(c.get(key), (int, float))]
    return [k[0] for k in keep], [k[1] for k in keep]


def _old_decode(b_rows: list[dict[str, Any]], c_rows: list[dict[str, Any]]) -> list[list[float]]:
    out = []
    for b, c in zip(b_rows, c_rows):
        parts: list[float] = []
        for r in (b, c):
            tok, sec = (r.get("completion_tokens") or 0) - 1, r.get("decode_s")
            parts += [tok, sec] if tok > 0 and isinstance(sec, (int, float)) and sec > 0 else [math.nan, math.nan]
        if not any(math.isnan(p) for p in parts):
            out.append([float(p) for p in parts])
    return out


def test_speed_columns_match_rows() -> None:
    odd = [v for v in ODD if v != 2 ** 80]
    b = [{"latency_s": v, "completion_tokens": t, "decode_s": v} for v, t in zip(odd, [3, 0, None, 5, 2, 7, 1, 4,
                                                                                     9, 2, 3, 6, 8, 5])]
    c = list(reversed(b)) + [{"latency_s": 1.0}]
    x, y = speed._pairs(b, c, "latency_s")
    ox, oy = _old_pairs(b, c, "latency_s")
    assert _same(x, ox) and _same(y, oy)
    assert speed._decode_parts(b, c).tolist() == _old_decode(b, c)
    plain = [{"completion_tokens": t, "decode_s": s} for t, s in [(5, 0.1), (1, 0.2), (None, 0.3), (4, None), (3, 0.0)]]
    assert speed._decode_parts(plain, plain).tolist() == _old_decode(plain, plain)
    floats = [{"completion_tokens": 4.0, "decode_s": 0.5}, {"completion_tokens": True, "decode_s": 1}]
    assert speed._decode_parts(floats, floats).tolist() == _old_decode(floats, floats)


ROW = ('{"schema_version": 1, "cell": {"m": 1}, "cell_id": "c", "sample_id": %s, "timings": {"a": [1, 2]}, '
       '"token_logprobs": [0.5], "x": 1}')
FILES = {
    "plain": "\n".join(ROW % f'"s{i}"' for i in range(30)) + "\n",
    "torn": "\n".join(ROW % f'"s{i}"' for i in range(30)) + '\n{"schema_version": 1, "cel',
    "whole_tail": "\n".join(ROW % f'"s{i}"' for i in range(30)) + "\n" + ROW % '"z"',
    "blank": "\n".join(ROW % f'"s{i}"' if i % 7 else "" for i in range(30)) + "\n\n  \n",
    "bad_middle": "\n".join(ROW % f'"s{i}"' if i != 17 else '{"broken' for i in range(30)) + "\n",
    "not_object": "\n".join(ROW % f'"s{i}"' if i != 9 else "[1, 2]" for i in range(30)) + "\n",
    "int_ids": "\n".join(ROW % (i if i % 2 else f'"s{i}"') for i in range(30)) + "\n",
    "bool_id": "\n".join(ROW % ("true" if i == 20 else f'"s{i}"') for i in range(30)) + "\n",
    "newer": "\n".join((ROW % f'"s{i}"').replace('"schema_version": 1', '"schema_version": 9' if i == 12
                                                  else '"schema_version": 1') for i in range(30)) + "\n",
    "two_values": "\n".join(ROW % f'"s{i}"' for i in range(30)) + "\n1, 2\n",
    "crlf": "\r\n".join(ROW % f'"s{i}"' for i in range(30)) + "\r\n",
    "null_timings": "\n".join((ROW % f'"s{i}"').replace('{"a": [1, 2]}', "null") for i in range(30)) + "\n",
    "empty": "",
    "no_cell_then_garbage": '{"schema_version": 1}\n' + "garbage\n" + "{}\n",
    "garbage_then_no_cell": "\n".join(ROW % f'"s{i}"' for i in range(20)) + "\ngarbage\n" + '{"schema_version": 1}\n',
}


def _read(path: Path, lean: bool, samples: bool) -> Any:
    try:
        return "ok", list((store.iter_samples if samples else store.iter_jsonl)(path, lean=lean))
    except UserInputError as exc:
        return "error", str(exc)


@pytest.mark.parametrize("name", sorted(FILES))
def test_block_reading_matches_line_by_line(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks of a few lines (so a file has several, and a bad line falls back) against one line per block, which
    is the line-by-line reader; errors name the same line."""
    path = tmp_path / "samples.jsonl"
    path.write_text(FILES[name])
    for lean in (False, True):
        for samples in (False, True):
            monkeypatch.setattr(store, "_CHUNK", 300)
            blocks = _read(path, lean, samples)
            monkeypatch.setattr(store, "_CHUNK", 1)
            lines = _read(path, lean, samples)
            assert blocks == lines
            if lean and blocks[0] == "ok":
                assert all("timings" not in r or r["timings"] is None for r in blocks[1])


def test_fields_and_peak_match_rows() -> None:
    rows = [{"a": 1, "b": None}, {"a": 2}, {"b": 3.5}]
    assert calibrate._fields(rows, ("a", "b")) == [[1, 2, None], [None, None, 3.5]]
    assert calibrate._fields([{"a": 1, "b": 2}], ("a", "b")) == [[1], [2]] and calibrate._fields([], ("a", "b")) == [[], []]
    for vals in ([1.0, None, 3, 2.5], [None], [], [True, 0.5], ["9", 2.0, None, {"x": 1}]):
        rows = [{"rss": v} for v in vals] + [{}]
        old = [r["rss"] for r in rows if isinstance(r.get("rss"), (int, float))]
        assert speed._peak(rows, "rss") == (max(old) if old else None)


def test_merge_keeps_the_latest_row_per_cell_and_sample(tmp_path: Path) -> None:
    """Stretches of one cell, a cell coming back, int sample ids and a rerun, as the row-by-row rule keeps them."""
    from bench.results.load import merge

    class FakeRun:
        def __init__(self, rows: list[dict[str, Any]], started: str):
            self.rows, self.started = rows, started

        def order(self) -> tuple[str, str, str]:
            return self.started, "", ""

    def row(cid: str, sid: Any, v: int) -> dict[str, Any]:
        return {"cell_id": cid, "cell": {"m": cid}, "sample_id": sid, "v": v}

    old = FakeRun([row("a", "1", 0), row("a", 2, 1), row("b", "1", 2), row("a", "1", 3), row("b", 2, 4)], "1")
    new = FakeRun([row("b", "2", 5), row("b", "3", 6)], "2")
    from bench.results import load

    orig = load.Run.order
    load.Run.order = FakeRun.order  # type: ignore[method-assign]
    try:
        cells = merge([new, old])  # type: ignore[list-item]
    finally:
        load.Run.order = orig  # type: ignore[method-assign]
    assert list(cells) == ["a", "b"]
    assert {s: r["v"] for s, r in cells["a"].rows.items()} == {"1": 3, "2": 1}
    assert list(cells["b"].rows) == ["1", "2", "3"]
    assert {s: r["v"] for s, r in cells["b"].rows.items()} == {"1": 2, "2": 5, "3": 6}
    assert cells["b"].run is new and cells["a"].run is old and cells["b"].wrote == [old, new]


@pytest.mark.parametrize("n", [2, 3, 20, 21, 97, 1000, 5000])
def test_counted_percentile_matches_numpy(n: int) -> None:
    """compare's p95-latency bootstrap finds each resample's percentile by counting draws; it gives numpy's
    percentile to the bit, ties, repeated values and infinities included."""
    rng = np.random.default_rng(n)
    x = np.round(rng.lognormal(size=n), 2)
    y = np.round(rng.lognormal(size=n), 1)
    if n > 50:
        y[::13] = math.inf
        x[:n // 2] = 1.0
    assert speed._counting_ok()
    diff_of = speed._percentile_diff(x, y, 95)
    for rows in (1, 9, 64):
        i = rng.integers(0, n, size=(rows, n))
        with np.errstate(invalid="ignore"):
            want = np.percentile(y[i], 95, axis=1) - np.percentile(x[i], 95, axis=1)
            got = diff_of(i)
        assert np.array_equal(got, want, equal_nan=True)
    with_nan = x.copy()
    with_nan[0] = math.nan  # NaN: numpy's own percentile, so NaN where numpy gives it
    i = rng.integers(0, n, size=(5, n))
    with np.errstate(invalid="ignore"):
        assert np.array_equal(speed._percentile_diff(with_nan, y, 95)(i),
                              np.percentile(y[i], 95, axis=1) - np.percentile(with_nan[i], 95, axis=1),
                              equal_nan=True)


def test_intervals_from_shared_draws_match_their_own() -> None:
    """compare draws once for the latency and decode intervals when both have the same samples: each interval is
    the one its own draws give."""
    rng = np.random.default_rng(3)
    for n in (2, 50, 3000):
        x, y = rng.lognormal(size=n), rng.lognormal(size=n)
        f = speed._percentile_diff(x, y, 95)

        def g(i: np.ndarray) -> np.ndarray:
            return y[i].mean(axis=1) - x[i].mean(axis=1)

        assert speed.paired_intervals(n, [f, g]) == [speed.paired_interval(n, f), speed.paired_interval(n, g)]
    assert speed.paired_intervals(1, [f, g]) == [None, None]
