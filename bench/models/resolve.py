"""Resolve a model id at a quantization to a verified local GGUF file: fetched into the cache, derived if asked."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.config.suite import ModelRef
from bench.errors import ModelError
from bench.models.cache import verify
from bench.models.catalog import CatalogEntry, get_entry
from bench.models.fetch import pull
from bench.models.quantize import derive


@dataclass
class ResolvedModel:
    """A model file on disk, checked, with what a backend and the results need to know about it."""

    id: str
    quantization: str
    path: Path
    sha256: str
    size_bytes: int
    chat: bool
    family: str = ""
    params_m: float | None = None
    context_length: int | None = None
    provenance: dict[str, Any] = field(default_factory=dict)


def _inline_entry(ref: ModelRef) -> CatalogEntry:
    src = ref.source
    assert src is not None
    return CatalogEntry(id=ref.id, family="custom", params_m=0, quantization=(ref.quantizations or ["unknown"])[0],
                        context_length=4096, chat=True if ref.chat is None else ref.chat, source=src,
                        sha256=src.sha256 or "")


def resolve_model(ref: str | ModelRef, quantization: str | None = None, *, quiet: bool = False) -> ResolvedModel:
    """Find (fetching if needed) and verify the file for a model id at a quantization."""
    if isinstance(ref, str):
        ref = ModelRef(id=ref)
    if ref.source is not None:
        entry = _inline_entry(ref)
        if ref.source.kind == "path":
            path = Path(ref.source.path or "").expanduser()
            if not path.is_file():
                raise ModelError(f"model file not found: {path}", field="source.path")
            sha = verify(path, ref.source.sha256, ref.id) if ref.source.sha256 else ""
            return ResolvedModel(id=ref.id, quantization=entry.quantization, path=path, sha256=sha,
                                 size_bytes=path.stat().st_size, chat=entry.chat, family="custom")
    else:
        entry = get_entry(ref.id)
    base_path = pull(entry, quiet=quiet)
    chat = entry.chat if ref.chat is None else ref.chat
    q = quantization or entry.quantization
    provenance: dict[str, Any] = {"source": entry.source.kind, "sha256": entry.sha256, "derived": False}
    path = base_path
    if q != entry.quantization:
        path, provenance = derive(entry, base_path, q, quiet=quiet)
    sha = entry.sha256 if path == base_path else provenance.get("sha256", "")
    return ResolvedModel(id=entry.id, quantization=q, path=path, sha256=sha, size_bytes=path.stat().st_size,
                         chat=chat, family=entry.family, params_m=entry.params_m,
                         context_length=entry.context_length, provenance=provenance)
