"""Pre-router artefacts: a fitted router as versioned JSON beside routing.json, referenced by its sha256.

No pickle: parameters are lists and numbers. bench.router refuses an artefact that is missing, altered (sha256),
of another format version, or fitted on another embedding model than the one it would load.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from bench.errors import UserInputError

ARTIFACT_FORMAT = "bench-prerouter"
ARTIFACT_VERSION = 1


def dumps(doc: dict[str, Any]) -> bytes:
    return (json.dumps(doc, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")


def artifact_dir(routing_path: Path) -> Path:
    return routing_path.with_name(routing_path.stem + ".routers")


def save(routing_path: Path, task: str, doc: dict[str, Any]) -> dict[str, Any]:
    """Write one task's pre-router next to routing.json; returns its reference {path, sha256} (path relative)."""
    from bench.fmt import write_text_atomic

    doc = {"format": ARTIFACT_FORMAT, "version": ARTIFACT_VERSION, **doc}
    data = dumps(doc)
    sha = hashlib.sha256(data).hexdigest()
    folder = artifact_dir(routing_path)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{task}-{doc['family']}-{sha[:12]}.json"
    write_text_atomic(path, data.decode("utf-8"))
    return {"path": str(path.relative_to(routing_path.parent)), "sha256": sha}


def load(routing_path: str | Path | None, ref: dict[str, Any], field: str) -> dict[str, Any]:
    """Read an artefact a routing file references and check its sha256, format and version."""
    base = Path(routing_path).parent if routing_path else Path.cwd()
    path = base / str(ref.get("path") or "")
    where = str(routing_path) if routing_path else None
    try:
        data = path.read_bytes()
    except OSError:
        raise UserInputError(f"the pre-router artefact {ref.get('path')!r} is missing (looked in {base})",
                             file=where, field=field,
                             hint="keep the .routers folder beside routing.json, or regenerate both") from None
    sha = hashlib.sha256(data).hexdigest()
    if sha != ref.get("sha256"):
        raise UserInputError(f"the pre-router artefact {ref.get('path')!r} has sha256 {sha[:12]}..., not the "
                             f"{str(ref.get('sha256'))[:12]}... routing.json names: it was changed or replaced",
                             file=where, field=field)
    doc = json.loads(data)
    if doc.get("format") != ARTIFACT_FORMAT or doc.get("version") != ARTIFACT_VERSION:
        raise UserInputError(f"{ref.get('path')!r} is not a version {ARTIFACT_VERSION} {ARTIFACT_FORMAT} artefact",
                             file=where, field=field)
    return doc
