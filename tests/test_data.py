"""Suite data through `datasets`: JSONL, CSV and Parquet keep values exactly; splits are seeded and stable."""

from __future__ import annotations

import json

import pytest

from bench.config import load_suite
from bench.data import load_samples
from tests.conftest import FAKE_SUITE, write_suite

NORMALIZE = """
name: norm
task: {kind: normalize, pattern: "^.*$"}
dataset: {path: DATA, input_fields: [input], reference_field: reference}
prompt: {template: "Normalize: {input}"}
target: 0.5
"""
ROWS = [{"id": "n1", "input": "(415) 555-0123", "reference": "+14155550123"},
        {"id": "n2", "input": "3rd of Feb 2025", "reference": "2025-02-03"},
        {"id": "n3", "input": "5 lb", "reference": "2.268 kg"}]


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_formats_keep_values_as_written(tmp_path, fmt) -> None:
    data = tmp_path / f"data.{fmt}"
    if fmt == "jsonl":
        data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    elif fmt == "csv":
        import csv

        with data.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["id", "input", "reference"])
            w.writeheader()
            w.writerows(ROWS)
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(ROWS), data)
    path = tmp_path / "suite.yaml"
    path.write_text(NORMALIZE.replace("DATA", data.name))
    samples = load_samples(load_suite(path))
    assert [s.reference for s in samples] == [r["reference"] for r in ROWS]
    assert all(isinstance(s.reference, str) for s in samples)


def test_split_is_seeded_and_stable_when_rows_are_added(tmp_path) -> None:
    rows = [{"id": f"r{i}", "text": "x", "label": "billing"} for i in range(60)]
    path = write_suite(tmp_path, FAKE_SUITE, rows=rows)
    first = {s.id: s.split for s in load_samples(load_suite(path))}
    assert set(first.values()) == {"calibration", "holdout"}
    path = write_suite(tmp_path, FAKE_SUITE, rows=rows + [{"id": "new", "text": "y", "label": "billing"}])
    second = {s.id: s.split for s in load_samples(load_suite(path))}
    assert all(second[k] == v for k, v in first.items())
    other_seed = write_suite(tmp_path / "b", FAKE_SUITE + "split: {seed: 99}\n", rows=rows)
    assert {s.id: s.split for s in load_samples(load_suite(other_seed))} != first


def test_limit_takes_both_splits(tmp_path) -> None:
    rows = [{"id": f"r{i}", "text": "x", "label": "billing"} for i in range(40)]
    path = write_suite(tmp_path, FAKE_SUITE, rows=rows)
    samples = load_samples(load_suite(path), limit=6)
    assert len(samples) == 6 and {s.split for s in samples} == {"calibration", "holdout"}
