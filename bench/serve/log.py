"""`bench serve --log FILE.jsonl`: one JSON line per routed request, appended and fsynced before the answer leaves.

The log is production telemetry for recalibration: the share of traffic on each tier, the confidences the accept
rules saw, and how often a tier failed drift there first. It never holds the request's text or the answer (they
may hold personal data); `id` is the response's id, which the client also has. One line, `schema_version` 1:

    {"schema_version": 1, "id": "chatcmpl-...", "time": 1795000000.123 (unix seconds, when the answer left),
     "task": "classify", "status": 200 (the HTTP status returned), "calibrated": true, "sensitive": false | null,
     "tier": "<cell that answered, or the last tried>", "tiers_tried": ["<cell>", ...],
     "steps": [{"cell": "<cell>", "confidence": -0.12 | null, "verified": true, "accepted": true,
                "prompt_tokens": 41, "completion_tokens": 3, "latency_s": 0.21 (the tier's own, from its
                timestamps), "wall_s": 0.22 (the call as the service waited on it), "cost_usd": 0.00001 | null,
                "error": null | "<redacted reason>", "error_kind": null | "upstream_error" | "timeout" | "busy" |
                "exception"}, ...],
     "escalations": 0, "latency_s": 0.23 (end to end), "cost_usd": 0.00001 | null (null: a tier has no price),
     "fallback": false (the task's policy failed on holdout; its fallback tier answered),
     "prerouter": null | {"family", "probability", "threshold", "path"}, "error": null | "..."}

A line is written for every request that reached the cascade (answered, 502 or 504); requests refused before it
(4xx) are counted in /metrics only. Lines are whole: each is one os.write on an O_APPEND descriptor, then fsync.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

from bench.redact import redact_text

SCHEMA_VERSION = 1
STEP_KEYS = ("cell", "confidence", "verified", "accepted", "prompt_tokens", "completion_tokens", "latency_s",
             "wall_s", "cost_usd", "error", "error_kind")


class RequestLog:
    """Appends one fsynced JSON line per request to a file; a no-op without a path."""

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path else None
        self._lock = threading.Lock()
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def steps(self, steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for step in steps:
            row = {k: step.get(k) for k in STEP_KEYS}
            if row["error"]:
                row["error"] = redact_text(str(row["error"]))
            out.append(row)
        return out

    def write(self, line: dict[str, Any]) -> None:
        if self.path is None:
            return
        data = (json.dumps({"schema_version": SCHEMA_VERSION, **line}, ensure_ascii=False, default=str)
                + "\n").encode("utf-8")
        with self._lock:
            fd = os.open(str(self.path), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
