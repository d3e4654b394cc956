"""Speed and memory of a candidate cell against a baseline: worse only past a factor AND significantly (asv's rule)."""

from __future__ import annotations

import math
from collections.abc import Callable
from itertools import repeat
from operator import is_not
from typing import Any

import numpy as np

from bench.fmt import finite
from bench.results.columns import column
from bench.results.schema import row_concurrency

DEFAULT_FACTOR = 1.10
N_BOOT = 2000
SEED = 0
BLOCK_VALUES = 2_000_000  # resampled values drawn at once
WORK_VALUES, MIN_BOOT = 10_000_000, 400  # past 5,000 samples, fewer resamples: the interval is narrow by then
# p95 latency and decode rate are judged together (either worse is "worse speed"), so each gets half of the 5%
# (Bonferroni): a 97.5% interval, one side of which a truly-as-fast candidate passes at most 1.25% of the time in
# theory. The percentile bootstrap is too narrow at 20-60 requests, and tests/test_compare_speed_sim.py measures
# the rates that result: within 2.5% per metric and 5% for either (with 95% intervals: 4.1% and 7.3%).
SPEED_CONFIDENCE = 1 - 0.05 / 2



def _measures_memory(kind: str | None) -> bool:
    """Whether a cell's process memory is its model's (an HTTP cell measures only its client)."""
    from bench.registry import BACKENDS, backend_traits

    return kind is not None and kind in BACKENDS and backend_traits(kind).measures_memory

def paired_interval(n: int, diff_of: Callable[[np.ndarray], np.ndarray], *, n_boot: int = N_BOOT,
                    seed: int = SEED, confidence: float = 0.95) -> tuple[float, float] | None:
    """Percentile-bootstrap interval (95% unless told) of a (candidate - baseline) statistic.

    The shared samples are resampled together (a paired bootstrap), so each resample compares the two cells on
    the same requests; `diff_of(idx)` gets a (resamples, n) index matrix and returns one difference per row.
    Resamples are drawn in blocks, so memory stays bounded; past WORK_VALUES / n_boot samples there are fewer
    of them (at least MIN_BOOT), so the work stays bounded too."""
    return paired_intervals(n, [diff_of], n_boot=n_boot, seed=seed, confidence=confidence)[0]


def paired_intervals(n: int, diffs: list[Callable[[np.ndarray], np.ndarray]], *, n_boot: int = N_BOOT,
                     seed: int = SEED, confidence: float = 0.95) -> list[tuple[float, float] | None]:
    """paired_interval of several statistics of the same n samples, from one set of draws: each interval is the
    one paired_interval gives it alone (the draws depend only on n, n_boot and seed), drawn once."""
    if n < 2:
        return [None] * len(diffs)
    n_boot = min(n_boot, max(MIN_BOOT, WORK_VALUES // n))
    rng = np.random.default_rng(seed)
    block = max(1, BLOCK_VALUES // n)
    parts: list[list[np.ndarray]] = [[] for _ in diffs]
    for start in range(0, n_boot, block):
        idx = rng.integers(0, n, size=(min(block, n_boot - start), n))
        for part, diff_of in zip(parts, diffs):
            part.append(np.asarray(diff_of(idx), dtype=float))
    out: list[tuple[float, float] | None] = []
    for part in parts:
        d = np.concatenate(part)
        d = d[np.isfinite(d)]
        tail = (1 - confidence) / 2
        out.append(None if d.size == 0 else (float(np.quantile(d, tail)), float(np.quantile(d, 1 - tail))))
    return out


def _percentile_diff(x: np.ndarray, y: np.ndarray, q: float) -> Callable[[np.ndarray], np.ndarray]:
    """diff_of for paired_interval: np.percentile(y[i], q, axis=1) - np.percentile(x[i], q, axis=1), the same
    numbers found by counting instead of partitioning: a resample's k-th smallest value is the sorted value at the
    rank where its draws, counted per sample and summed in sorted order, pass k; one count serves both sides.
    Where that cannot be exact (NaN values, a numpy whose interpolation differs from the one written here),
    numpy's percentile itself."""
    n = x.size
    if not _counting_ok() or n < 2 or np.isnan(x).any() or np.isnan(y).any():
        return lambda i: (np.percentile(y[i], q, axis=1, overwrite_input=True)
                          - np.percentile(x[i], q, axis=1, overwrite_input=True))
    order_x, order_y = np.argsort(x, kind="stable"), np.argsort(y, kind="stable")
    sorted_x, sorted_y = x[order_x], y[order_y]
    lo, hi, gamma = _order_stats(n, q)

    def diff_of(i: np.ndarray) -> np.ndarray:
        counts = _draw_counts(i)
        return _pick(counts, order_y, sorted_y, lo, hi, gamma) - _pick(counts, order_x, sorted_x, lo, hi, gamma)

    return diff_of


def _order_stats(n: int, q: float) -> tuple[int, int, np.ndarray]:
    """The two order statistics numpy's linear percentile interpolates between, and the weight (its arithmetic)."""
    virtual = (n - 1) * np.true_divide(np.asanyarray(q), 100)
    lo = int(np.floor(virtual))
    hi = min(lo + 1, n - 1)
    return lo, hi, np.asanyarray(virtual - lo, dtype=virtual.dtype)


def _draw_counts(i: np.ndarray) -> np.ndarray:
    """How often each sample was drawn, per resample (row of i)."""
    rows, n = i.shape
    return np.bincount((i + (np.arange(rows, dtype=i.dtype) * n)[:, None]).ravel(),
                       minlength=rows * n).reshape(rows, n)


def _pick(counts: np.ndarray, order: np.ndarray, sorted_v: np.ndarray, lo: int, hi: int,
          gamma: np.ndarray) -> np.ndarray:
    """Per resample, the linear percentile between its lo-th and hi-th smallest values (numpy's _lerp).

    The running count of draws in sorted order is needed only from a little below rank lo: from twice the
    distance to the top, and further down where a row's draws below that already pass lo."""
    rows, n = counts.shape
    begin = max(0, lo - 2 * (n - lo))
    while True:
        window = counts[:, order[begin:]]
        below = n - window.sum(axis=1)
        if begin == 0 or (below <= lo).all():
            break
        begin = max(0, begin - 4 * (n - begin))
    cum = np.cumsum(window, axis=1)
    step = np.arange(rows, dtype=cum.dtype) * (n + 1)  # each row's running count (at most n) raised past the
    cum += (below + step)[:, None]                    # row before's: one increasing sequence over every row
    flat = cum.ravel()
    start = np.arange(rows, dtype=np.intp) * (n - begin) - begin

    def kth(k: int) -> np.ndarray:  # the rank of each row's k-th smallest draw: where its running count passes k
        return np.searchsorted(flat, step + k, side="right") - start

    a, b = sorted_v[kth(lo)], sorted_v[kth(hi)]
    diff = b - a
    out = np.add(a, diff * gamma)
    np.subtract(b, diff * (1 - gamma), out=out, where=gamma >= 0.5, casting="unsafe", dtype=out.dtype)
    return out


_COUNTING_OK: bool | None = None


def _counting_ok() -> bool:
    """Whether counting gives numpy's percentiles to the bit here (checked once, on draws with ties and a spread
    of sizes): the interpolation above is numpy's own, written out, and a numpy could change it."""
    global _COUNTING_OK
    if _COUNTING_OK is None:
        rng = np.random.default_rng(1)
        ok = True
        for n in (2, 3, 20, 21, 57, 400):
            v = np.round(rng.lognormal(size=n), 2)
            i = rng.integers(0, n, size=(7, n))
            order = np.argsort(v, kind="stable")
            got = _pick(_draw_counts(i), order, v[order], *_order_stats(n, 95))
            ok = ok and np.array_equal(got, np.percentile(v[i], 95, axis=1))
        _COUNTING_OK = bool(ok)
    return _COUNTING_OK


def judge(base: float | None, cand: float | None, *, lower_is_better: bool, interval: tuple[float, float] | None,
          factor: float, comparable: bool = True) -> dict[str, Any]:
    """Worse (or better) when the ratio passes the factor and the interval excludes zero on that side.

    Without an interval (one measurement, or under two samples) the ratio decides alone, as asv does."""
    out: dict[str, Any] = {"baseline": finite(base), "candidate": finite(cand), "ratio": None,
                           "ci_diff": list(interval) if interval else None, "significant": None, "verdict": "n/a"}
    if base is None or cand is None or not base > 0 or not cand > 0:
        return out
    ratio = cand / base
    worse_ratio = ratio if lower_is_better else 1.0 / ratio  # above 1: the candidate is worse
    sig_worse = sig_better = None
    if interval is not None:
        lo, hi = interval
        sig_worse = lo > 0 if lower_is_better else hi < 0
        sig_better = hi < 0 if lower_is_better else lo > 0
        out["significant"] = bool(sig_worse or sig_better)
    out["ratio"] = ratio
    if not comparable:
        return out
    if worse_ratio > factor and sig_worse is not False:
        out["verdict"] = "worse"
    elif worse_ratio < 1.0 / factor and sig_better is not False:
        out["verdict"] = "better"
    else:
        out["verdict"] = "same"
    return out


def judge_memory(base_peak: float | None, cand_peak: float | None, wb: np.ndarray, wc: np.ndarray, *,
                 factor: float, comparable: bool) -> dict[str, Any]:
    """Peak memory, shown as each cell's whole peak and judged on its footprint: the mean of the per-sample window
    peaks over the samples both cells answered. Worse when the 95% paired-bootstrap interval of the candidate's
    footprint over the baseline's lies wholly above the factor (better: wholly below 1 / factor), same otherwise.

    A whole peak is the largest window, set by whichever request hit a transient (an allocator spike, a long
    prompt's buffers): judged on the ratio of two such maxima (with an interval of the mean difference above zero),
    29-40% of simulated comparisons whose footprint was truly 5% larger were called worse, and a 1.3x footprint was
    caught less often the more samples there were (the max of more spikes). tests/test_compare_memory_sim.py
    measures both rules. Under two paired windows the ratio of peaks decides alone, as asv does."""
    out = judge(base_peak, cand_peak, lower_is_better=True, interval=None, factor=factor, comparable=comparable)
    keep = np.isfinite(wb) & np.isfinite(wc) & (wb > 0) & (wc > 0)
    wb, wc = wb[keep], wc[keep]
    if wb.size < 2 or out["ratio"] is None:
        return out
    ci = paired_interval(wb.size, lambda i: wc[i].mean(axis=1) / wb[i].mean(axis=1))
    if ci is None:
        return out
    out |= {"footprint_ratio": float(wc.mean() / wb.mean()), "ci_footprint_ratio": list(ci),
            "significant": bool(ci[0] > 1.0 or ci[1] < 1.0)}
    if comparable:
        out["verdict"] = "worse" if ci[0] > factor else "better" if ci[1] < 1.0 / factor else "same"
    return out


_NUMBERS = {float, int, bool}


def _column(rows: list[dict[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """A field of every row as floats, and where it is a number at all (a bool counts, as isinstance says);
    plain numbers and None convert in one numpy call."""
    raw = column(rows, key)
    types = set(map(type, raw))
    if types <= _NUMBERS | {type(None)}:
        try:
            return (np.array(raw, dtype=float),
                    np.ones(len(raw), dtype=bool) if type(None) not in types
                    else np.array(list(map(is_not, raw, repeat(None))), dtype=bool))
        except OverflowError:
            pass
    nums = [float(v) if isinstance(v, (int, float)) else None for v in raw]
    return (np.array([math.nan if v is None else v for v in nums], dtype=float),
            np.array([v is not None for v in nums], dtype=bool))


def _pairs(b_rows: list[dict[str, Any]], c_rows: list[dict[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """The field on both sides of the aligned rows, where both sides have a number."""
    n = min(len(b_rows), len(c_rows))
    (x, xk), (y, yk) = _column(b_rows[:n], key), _column(c_rows[:n], key)
    keep = xk & yk
    return x[keep], y[keep]


def _decode_side(rows: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """Decoded tokens after the first and decode seconds per row, NaN where either is missing or not positive."""
    comp = column(rows, "completion_tokens")
    if set(map(type, comp)) <= {int, type(None)}:
        tok = np.array([c or 0 for c in comp], dtype=float) - 1
    else:
        tok = np.array([(c or 0) - 1 for c in comp], dtype=float)
    sec, has = _column(rows, "decode_s")
    with np.errstate(invalid="ignore"):
        ok = (tok > 0) & has & (sec > 0)
    return np.where(ok, tok, math.nan), np.where(ok, sec, math.nan)


def _decode_parts(b_rows: list[dict[str, Any]], c_rows: list[dict[str, Any]]) -> np.ndarray:
    """Per shared sample: decoded tokens after the first and decode seconds, for each side (n x 4)."""
    n = min(len(b_rows), len(c_rows))
    (bt, bs), (ct, cs) = _decode_side(b_rows[:n]), _decode_side(c_rows[:n])
    d = np.stack([bt, bs, ct, cs], axis=1) if n else np.zeros((0, 4))
    return d[~np.isnan(d).any(axis=1)].reshape(-1, 4)


def _peak(rows: list[Any], key: str) -> float | None:
    raw = column(rows, key)
    if set(map(type, raw)) <= _NUMBERS | {type(None)}:
        vals = [v for v in raw if v is not None]
    else:
        vals = [v for v in raw if isinstance(v, (int, float))]
    return max(vals) if vals else None


def in_flight(rows: list[Any]) -> tuple[int, ...]:
    """The concurrencies the rows were answered at (bench.results.schema.row_concurrency), sorted; each distinct
    value is read once, not each row."""
    raw = column(rows, "concurrency")
    try:
        values: Any = set(raw)
    except TypeError:  # an unhashable value (a malformed row): read them all
        values = raw
    return tuple(sorted(set(map(row_concurrency, values))))


def _load_text(levels: tuple[int, ...]) -> str:
    return "/".join(map(str, levels)) or "1"


def compare_speed(b_cell: dict[str, Any], c_cell: dict[str, Any], b_rows: list[dict[str, Any]],
                  c_rows: list[dict[str, Any]], b_all: list[dict[str, Any]], c_all: list[dict[str, Any]], *,
                  factor: float = DEFAULT_FACTOR) -> dict[str, Any]:
    """p95 latency, decode tokens/s and peak memory. b_rows/c_rows: the samples both cells answered, aligned;
    b_all/c_all: every row of each cell (peak memory is the cell's peak). Judged only on the same hardware and at
    the same load: a side answered with several requests in flight (--parallel N, an HTTP backend's concurrency)
    has per-request figures of a loaded engine and the memory of N sequences, so against one run at another load
    they are shown, not judged."""
    comparable = b_cell.get("hardware") == c_cell.get("hardware")
    note = None if comparable else (f"different hardware ({b_cell.get('hardware')} vs {c_cell.get('hardware')}): "
                                    "speed and memory are shown, not judged")
    b_load, c_load = in_flight(b_rows), in_flight(c_rows)
    if comparable and b_load != c_load:
        comparable = False
        note = (f"different load ({_load_text(b_load)} vs {_load_text(c_load)} requests in flight, e.g. --parallel): "
                "per-request speed and memory are shown, not judged")
    x, y = _pairs(b_rows, c_rows, "latency_s")
    d = _decode_parts(b_rows, c_rows)

    def rate(cols: np.ndarray, i: np.ndarray | None = None) -> Any:
        tok, sec = (cols[:, 0], cols[:, 1]) if i is None else (cols[:, 0][i], cols[:, 1][i])
        return tok.sum(axis=-1) / sec.sum(axis=-1)

    b_tok, b_sec, c_tok, c_sec = (np.ascontiguousarray(d[:, k]) for k in range(4))  # gathered faster, same values
    lat_diff = _percentile_diff(x, y, 95)

    def dec_diff(i: np.ndarray) -> np.ndarray:  # rate(d[:, 2:4], i) - rate(d[:, 0:2], i)
        return c_tok[i].sum(axis=-1) / c_sec[i].sum(axis=-1) - b_tok[i].sum(axis=-1) / b_sec[i].sum(axis=-1)

    if x.size == len(d):  # the usual case (every answered sample timed): one set of draws for both
        lat_ci, dec_ci = paired_intervals(x.size, [lat_diff, dec_diff], confidence=SPEED_CONFIDENCE)
    else:
        lat_ci = paired_interval(x.size, lat_diff, confidence=SPEED_CONFIDENCE)
        dec_ci = paired_interval(len(d), dec_diff, confidence=SPEED_CONFIDENCE)
    lat = judge(np.percentile(x, 95) if x.size else None, np.percentile(y, 95) if y.size else None,
                lower_is_better=True, factor=factor, comparable=comparable, interval=lat_ci)
    lat["n"] = int(x.size)
    dec = judge(rate(d[:, 0:2]) if len(d) else None, rate(d[:, 2:4]) if len(d) else None,
                lower_is_better=False, factor=factor, comparable=comparable, interval=dec_ci)
    dec["n"] = int(len(d))
    memory_ok = comparable and all(_measures_memory(c.get("backend")) for c in (b_cell, c_cell))
    if comparable and not memory_ok:
        note = "a remote backend: memory measured here is the client's, shown, not judged"
    metrics = {"latency_p95_s": lat, "decode_tps": dec}
    for key, col in (("peak_rss_mb", "rss_peak_mb"), ("peak_gpu_mb", "gpu_peak_mb")):
        wb, wc = _pairs(b_rows, c_rows, col)  # per-sample window peaks, on the samples both answered
        metrics[key] = judge_memory(_peak(b_all, col), _peak(c_all, col), wb, wc, factor=factor,
                                    comparable=memory_ok)
    names = {"latency_p95_s": ("p95 latency", "s", 3), "decode_tps": ("decode", "tok/s", 1),
             "peak_rss_mb": ("peak RSS", "MB", 0), "peak_gpu_mb": ("peak GPU memory", "MB", 0)}
    worse = [k for k, m in metrics.items() if m["verdict"] == "worse"]
    details = []
    for k in worse:
        label, unit, digits = names[k]
        m = metrics[k]
        footprint = (f"; footprint x{m['footprint_ratio']:.2f} [{m['ci_footprint_ratio'][0]:.2f}, "
                     f"{m['ci_footprint_ratio'][1]:.2f}]" if m.get("ci_footprint_ratio") else "")
        details.append(f"{label} {m['baseline']:.{digits}f} -> {m['candidate']:.{digits}f} {unit} "
                       f"(x{m['ratio']:.2f}{footprint})")
    return {"comparable": comparable, "note": note, "factor": factor, **metrics, "worse": worse,
            "worse_details": details}
