"""Field names and versions of the files a run writes; migrations of older files live here too."""

from __future__ import annotations

from typing import Any

from bench import SCHEMA_VERSION
from bench.errors import UserInputError
from bench.fmt import real

# One line of samples.jsonl. Raw timing fields are kept; the derived ones are recomputable from them.
SAMPLE_FIELDS = (
    "schema_version",
    "cell",              # {"model", "quantization", "backend", "hardware", "gen"}
    "cell_id",           # stable string key of `cell`
    "sample_id",
    "split",             # "calibration" | "holdout"
    "output",            # raw text the model produced
    "parsed",            # the task's parsed answer (label, object, text) or null
    "score",             # the suite metric's per-sample value; null when unscorable
    "scores",            # every per-sample measure the task computes, e.g. {"accuracy": 1, "length_ok": 1}
    "verified",          # the task's structural check passed
    "confidence",        # mean log-probability of the answer's tokens, or null
    "prompt_tokens", "cached_tokens", "completion_tokens",
    "ttft_s", "prefill_s", "decode_s", "latency_s",
    "cost_usd",
    "error",             # null when none
    "timings",           # raw: {"t_start", "t_prefill_end", "t_first_token", "token_times", "t_end"}
    "load_s", "rss_peak_mb", "rss_model_mb", "gpu_peak_mb", "energy_j",
    "locality",          # "local" | "on-prem" | "cloud"
    "metric", "retries", "finish_reason", "concurrency",
)


def cell_id(cell: dict[str, Any]) -> str:
    """A readable, stable key for a cell: model@quant/backend/hardware#gen."""
    return f"{cell['model']}@{cell.get('quantization') or '-'}/{cell['backend']}/{cell.get('hardware') or '-'}#{cell.get('gen', '')}"


def row_concurrency(value: Any) -> int:
    """A row's `concurrency` (requests in flight when it was answered) as a whole number; a row without one, or
    with anything but a finite number >= 1 there, was answered one at a time as far as analysis is concerned."""
    n = real(value)
    return int(n) if n is not None and n >= 1 else 1


def cell_label(cell: dict[str, Any]) -> str:
    """A short label for tables and charts."""
    q = cell.get("quantization")
    return f"{cell['model']}{' ' + q if q else ''} ({cell['backend']}, {cell.get('hardware') or '?'})"


def check_version(doc: dict[str, Any], where: str) -> dict[str, Any]:
    """Refuse files from a newer bench; migrate older ones step by step."""
    version = doc.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise UserInputError("no schema_version: not a bench results file", file=where)
    if version < 1:
        raise UserInputError(f"schema_version {version}: expected a whole number from 1 to {SCHEMA_VERSION}",
                             file=where)
    if version > SCHEMA_VERSION:
        raise UserInputError(
            f"schema_version {version} is newer than this bench understands ({SCHEMA_VERSION})",
            file=where, hint="upgrade bench",
        )
    for step in range(version, SCHEMA_VERSION):
        doc = MIGRATIONS[step](doc)
    return doc


# MIGRATIONS[n] turns a version-n document into version n+1.
MIGRATIONS: dict[int, Any] = {}
