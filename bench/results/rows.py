"""Typed results: a sample row, a cell's summary and a run's manifest as pydantic models, versioned by schema_version.

The files on disk stay plain JSON and JSONL (pandas and duckdb read them as they are); these models say what a
field holds. Every model allows extra keys, so a row written with a field this bench does not know still loads and
keeps it. Loading (bench.results.load) keeps rows as dicts on its hot path and validates them into SampleRow only
when asked (`CellRows.typed()`, `validate_row`): a million rows would otherwise cost a million objects.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bench import SCHEMA_VERSION
from bench.errors import UserInputError


class _Record(BaseModel):
    """Extra keys kept (newer writers, Ray node details); sample ids written as numbers read as strings."""

    model_config = ConfigDict(extra="allow", coerce_numbers_to_str=True)


class Versioned(_Record):
    schema_version: int = SCHEMA_VERSION


# ---------------------------------------------------------------- samples.jsonl

class CellKey(_Record):
    """One point of the matrix; `gen` is the key of the generation settings."""

    model: str
    quantization: str | None = None
    backend: str
    hardware: str | None = None
    gen: str | None = None


class Timings(_Record):
    """Raw clock readings of one request (seconds); derived numbers are computed from them."""

    t_start: float | None = None
    t_prefill_end: float | None = None
    t_first_token: float | None = None
    token_times: list[float] = Field(default_factory=list)
    t_end: float | None = None


class SampleRow(Versioned):
    """One line of samples.jsonl (bench.results.schema.SAMPLE_FIELDS): one sample answered by one cell."""

    cell: CellKey
    cell_id: str
    sample_id: str
    split: str | None = None
    output: str | None = None
    parsed: Any = None
    score: float | bool | None = None      # a bool here is not a score: quality() reads it as None
    scores: dict[str, Any] = Field(default_factory=dict)
    verified: bool | None = None
    confidence: float | None = None
    prompt_tokens: int | None = None
    cached_tokens: int | None = None
    completion_tokens: int | None = None
    ttft_s: float | None = None
    prefill_s: float | None = None
    decode_s: float | None = None
    latency_s: float | None = None
    cost_usd: float | None = None
    error: str | None = None
    timings: Timings | None = None
    load_s: float | None = None
    rss_peak_mb: float | None = None
    rss_model_mb: float | None = None
    gpu_peak_mb: float | None = None
    energy_j: float | None = None
    locality: str | None = None
    metric: str | None = None
    retries: int | None = None
    finish_reason: str | None = None
    concurrency: int | None = None
    token_logprobs: list[float] | None = None
    harness_s: float | None = None
    contention: dict[str, Any] | None = None
    model_bytes: int | None = None
    params_m: float | None = None
    requantized: bool | None = None
    batch_invariant: bool | None = None  # probed at a batched llama.cpp load: logits equal alone and in a batch
    node: dict[str, Any] | None = None

    def quality(self, key: str | None = None) -> float | None:
        """The row's quality (bench.results.summary.quality_value): an error is 0, an unscorable sample None."""
        if self.error:
            return 0.0
        if key is None:
            return None if isinstance(self.score, bool) else self.score
        v = self.scores.get(key)
        return float(v) if isinstance(v, (int, float)) else None


def validate_row(row: dict[str, Any], where: str = "samples.jsonl") -> SampleRow:
    """A row dict as a SampleRow, or an exit-2 error naming where it came from and the field."""
    try:
        return SampleRow.model_validate(row)
    except ValidationError as exc:
        raise _user_error(exc, where, "a sample row") from None


# ---------------------------------------------------------------- summary.json

class Quality(_Record):
    """A quality number with its 95% interval; null where nothing could be scored."""

    metric: str | None = None
    mean: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    n: int | None = None
    method: str | None = None
    error_rate: float | None = None


class Percentiles(_Record):
    p50: float | None = None
    p95: float | None = None


class CellSummary(_Record):
    """One entry of summary.json's `cells` (CONTRACT.md), derived from the cell's latest row per sample."""

    cell: CellKey
    cell_id: str
    locality: str | None = None
    n: int
    errors: int
    error_rate: float | None = None
    quality: Quality
    ttft_s: Percentiles = Field(default_factory=Percentiles)
    latency_s: Percentiles = Field(default_factory=Percentiles)
    prefill_tps: float | None = None
    decode_tps: float | None = None
    peak_rss_mb: float | None = None
    peak_gpu_mb: float | None = None
    cost_per_1k_usd: float | None = None
    bandwidth_utilization: float | None = None
    energy_j: float | None = None


class RunSummary(Versioned):
    """summary.json: the run's cells."""

    run_id: str | None = None
    suite: str | None = None
    task: str | None = None
    target: float | None = None
    hardware: dict[str, Any] | None = None
    cells: list[CellSummary] = Field(default_factory=list)


# ---------------------------------------------------------------- manifest.json

class SuiteInfo(_Record):
    """What the manifest records about the suite that ran; `identity` covers data, split and prompt."""

    name: str | None = None
    path: str | None = None
    sha256: str | None = None
    identity: str | None = None
    task: str | None = None
    metric: str | None = None
    target: Any = None           # a number; checked where it is used, where --target may stand in for it
    tolerance: float | None = None
    sensitive: bool | None = None
    max_p95_latency_s: float | None = None
    n_samples: int | None = None
    min_samples: int | None = None
    delta: float | None = None
    config: dict[str, Any] | None = None


class HardwareInfo(_Record):
    fingerprint: str | None = None
    profile: str | None = None
    note: str | None = None
    cost_per_hour_usd: float | None = None
    detected: dict[str, Any] | None = None


class RunManifest(Versioned):
    """manifest.json: written first; `finished_at` null while the run goes on, `resumed_at` one entry per resume."""

    run_id: str | None = None
    suite: SuiteInfo = Field(default_factory=SuiteInfo)
    bench_version: str | None = None
    environment: dict[str, Any] | None = None
    hardware: HardwareInfo = Field(default_factory=HardwareInfo)
    started_at: str | None = None
    finished_at: str | None = None
    resumed_at: list[str] = Field(default_factory=list)
    cells: list[dict[str, Any]] = Field(default_factory=list)
    cell_backends: dict[str, dict[str, Any]] = Field(default_factory=dict)
    roofline: dict[str, Any] | None = None


def validate_manifest(doc: dict[str, Any], where: str) -> RunManifest:
    """A manifest document (already version-checked) as a RunManifest, or an exit-2 error naming file and field."""
    try:
        return RunManifest.model_validate(doc)
    except ValidationError as exc:
        raise _user_error(exc, where, "a run manifest") from None


def _user_error(exc: ValidationError, where: str, what: str) -> UserInputError:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    return UserInputError(f"not {what}: {err['msg']} (got {err.get('input')!r:.80})", file=where, field=loc or None)
