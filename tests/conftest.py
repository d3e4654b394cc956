"""Shared fixtures: small suites on the fake backend, written into a temporary folder."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

TICKETS = [
    ("t1", "I was charged twice this month", "billing"),
    ("t2", "The app crashes when I open settings", "technical"),
    ("t3", "Please refund my last order", "billing"),
    ("t4", "Error 500 when uploading a file", "technical"),
    ("t5", "Why is my invoice higher than usual?", "billing"),
    ("t6", "The page will not load on Firefox", "technical"),
    ("t7", "My card was declined but I was still billed", "billing"),
    ("t8", "Sync stopped working after the update", "technical"),
]


def write_suite(folder: Path, body: str, rows: list[dict] | None = None, name: str = "suite.yaml") -> Path:
    """Write a suite file (and its data.jsonl) into folder; returns the suite path."""
    folder.mkdir(parents=True, exist_ok=True)
    if rows is None:
        rows = [{"id": i, "text": t, "label": lab} for i, t, lab in TICKETS]
    (folder / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = folder / name
    path.write_text(textwrap.dedent(body).lstrip())
    return path


FAKE_SUITE = """
name: tickets
task:
  kind: classify
  labels: [billing, technical]
dataset:
  path: data.jsonl
  input_fields: [text]
  reference_field: label
prompt:
  system: Classify the ticket as billing or technical. Answer with the label only.
  template: "Ticket: {text}"
target: 0.6
generation:
  max_tokens: 8
matrix:
  models: [smollm2-135m-instruct, qwen2.5-coder-0.5b-instruct]
  backends:
    - kind: fake
      accuracy_by_model: {smollm2-135m-instruct: 0.5, qwen2.5-coder-0.5b-instruct: 1.0}
"""


@pytest.fixture
def fake_suite(tmp_path: Path) -> Path:
    return write_suite(tmp_path / "suite", FAKE_SUITE)


FLIPPED = {"t1", "t5"}  # the batching fake answers these differently when it decodes several at once


@pytest.fixture
def batching_fake(monkeypatch):
    """The fake backend made to batch: rows record the parallel setting, a request decoded beside others takes
    that many times as long, and the FLIPPED samples answer differently then (a near-tie flipped by batch size)."""
    from bench.backends.fake import FakeBackend

    one = FakeBackend._one
    monkeypatch.setattr(FakeBackend, "parallel", 1, raising=False)

    def batched(self, req):
        gen = one(self, req)
        n = self.parallel
        gen.concurrency = n
        gen.t_prefill_end *= n
        gen.t_first_token *= n
        gen.token_times = [t * n for t in gen.token_times]
        gen.t_end *= n
        if n > 1 and req.id in FLIPPED:
            gen.text += " (batched)"
        return gen

    monkeypatch.setattr(FakeBackend, "_one", batched)
