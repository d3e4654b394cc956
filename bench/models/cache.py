"""The model cache: where catalog and derived files live, their sha256 checks, and what the cache holds."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from bench.errors import ModelError
from bench.fmt import write_text_atomic
from bench.models.catalog import CATALOG, CatalogEntry, get_entry

CACHE_ENV = "BENCH_CACHE_DIR"


def cache_dir() -> Path:
    """The model cache: $BENCH_CACHE_DIR, else the user's cache folder."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("bench"))


def model_path(entry: CatalogEntry) -> Path:
    """Where a catalog model's own file lives: <cache>/models/<id>/<QTYPE>/<id>.<QTYPE>.gguf."""
    return cache_dir() / "models" / entry.id / entry.quantization / f"{entry.id}.{entry.quantization}.gguf"


def derived_path(entry: CatalogEntry, qtype: str) -> Path:
    """Where a derived quantization lives: <cache>/models/<id>/<QTYPE>/<id>.<QTYPE>.gguf."""
    q = qtype.strip().upper()
    return cache_dir() / "models" / entry.id / q / f"{entry.id}.{q}.gguf"


def provenance_path(path: Path) -> Path:
    """The JSON file beside a derived model that says how it was made."""
    return path.with_name(path.name + ".provenance.json")


def verified_marker(path: Path) -> Path:
    """The file beside a model that remembers its sha256 for its size and mtime."""
    return path.with_name(path.name + ".verified.json")


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _stat_key(path: Path) -> dict[str, Any]:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def verify(path: Path, expected: str | None, model_id: str) -> str:
    """Check a file's sha256 (cached by size and mtime); a mismatch is an error that says how to mend it."""
    marker = verified_marker(path)
    if marker.exists():
        try:
            data = json.loads(marker.read_text())
            if data.get("stat") == _stat_key(path) and (expected is None or data.get("sha256") == expected):
                return data["sha256"]
        except (ValueError, KeyError):
            pass
    actual = sha256_file(path)
    if expected and actual != expected:
        raise ModelError(
            f"sha256 mismatch for {path.name}: expected {expected}, got {actual}",
            hint=f"the cached file is damaged; run 'bench models pull {model_id}' to fetch it again",
        )
    write_text_atomic(marker, json.dumps({"sha256": actual, "stat": _stat_key(path)}))
    return actual


def is_cached(model_id: str, quantization: str | None = None) -> bool:
    """Whether a catalog model (at a quantization: its own or a derived one) is in the cache and was verified."""
    entry = get_entry(model_id)
    q = quantization or entry.quantization
    p = model_path(entry) if q == entry.quantization else derived_path(entry, q)
    return p.exists() and verified_marker(p).exists()


def derived_variants(entry: CatalogEntry) -> list[tuple[Path, dict[str, Any]]]:
    """The variants `bench models quantize` derived from a catalog model: each file and its provenance record."""
    found = []
    for prov_file in sorted((cache_dir() / "models" / entry.id).glob("*/*.gguf.provenance.json")):
        path = prov_file.with_name(prov_file.name[: -len(".provenance.json")])
        if not path.is_file() or path.parent.name == entry.quantization:
            continue
        try:
            prov = json.loads(prov_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            prov = {}
        found.append((path, prov if isinstance(prov, dict) else {}))
    return found


def _derived_note(entry: CatalogEntry, prov: dict[str, Any]) -> str:
    """One line of provenance: source model and quantization, the tool that derived it, and when."""
    source_q = prov.get("source_quantization") or entry.quantization
    sha = str(prov.get("source_sha256") or "?")[:12]
    tool = prov.get("method") or "unknown method"
    if prov.get("llama_cpp_python"):
        tool += f", llama-cpp-python {prov['llama_cpp_python']}"
    when = str(prov["created_at"])[:10] if prov.get("created_at") else "date unknown"
    note = f"from {prov.get('model') or entry.id} {source_q} (sha256 {sha}) by {tool}, {when}"
    if prov.get("requantized"):
        note += "; requantized: loses more than quantizing from F16"
    return note


def catalog_rows() -> list[dict[str, Any]]:
    """The catalog as rows for `bench models list`: each model, whether (and how large) it is cached, and after
    it the variants derived from it, with their size and provenance."""
    rows = []
    for e in CATALOG.values():
        own = model_path(e)
        cached = is_cached(e.id)
        rows.append({"id": e.id, "family": e.family, "params_m": e.params_m, "quantization": e.quantization,
                     "context_length": e.context_length, "chat": e.chat, "source": e.source.kind,
                     "cached": cached, "size_bytes": own.stat().st_size if cached else e.size_bytes,
                     "note": e.note, "derived": False})
        for path, prov in derived_variants(e):
            rows.append({"id": e.id, "family": e.family, "params_m": e.params_m, "quantization": path.parent.name,
                         "context_length": e.context_length, "chat": e.chat, "source": "derived",
                         "cached": verified_marker(path).exists(), "size_bytes": path.stat().st_size,
                         "note": _derived_note(e, prov), "derived": True,
                         "derived_from": {"model": prov.get("model") or e.id,
                                          "quantization": prov.get("source_quantization") or e.quantization,
                                          "sha256": prov.get("source_sha256")},
                         "method": prov.get("method"), "tool_version": prov.get("llama_cpp_python"),
                         "created_at": prov.get("created_at"), "provenance": prov})
    return rows
