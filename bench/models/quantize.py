"""Derive other quantizations of a catalog model with llama.cpp's quantizer, and record their provenance."""

from __future__ import annotations

import ctypes
import datetime as dt
import json
import sys
import time
from pathlib import Path
from typing import Any

from bench.errors import ModelError, UserInputError, did_you_mean
from bench.fmt import write_text_atomic
from bench.models.cache import derived_path, provenance_path, verify
from bench.models.catalog import CatalogEntry, get_entry
from bench.models.fetch import pull
from bench.models.gguf_header import read_gguf_header

# Target types llama_model_quantize can make without an importance matrix, and their llama_ftype values
# (the LLAMA_FTYPE_MOSTLY_<QTYPE> constants; the GGUF header stores the same number in general.file_type).
SUPPORTED: dict[str, int] = {
    "Q8_0": 7, "Q6_K": 18, "Q5_K_M": 17, "Q5_K_S": 16, "Q5_1": 9, "Q5_0": 8,
    "Q4_K_M": 15, "Q4_K_S": 14, "Q4_1": 3, "Q4_0": 2, "Q3_K_L": 13, "Q3_K_M": 12, "Q3_K_S": 11, "Q2_K": 10,
}
UNQUANTIZED = {"F32": 0, "F16": 1, "BF16": 32}
REQUANTIZE_NOTE = ("the source was itself quantized: requantizing loses more quality than quantizing "
                   "the same target from F16/BF16 weights")
PROVENANCE_VERSION = 1


def normalize_qtype(qtype: str) -> str:
    """Upper-case a quantization name and check it is one we can make; unknown names list the supported."""
    q = qtype.strip().upper()
    if q not in SUPPORTED:
        raise UserInputError(f"cannot quantize to {qtype!r}; supported: {', '.join(SUPPORTED)}",
                             field="quantization", hint=did_you_mean(q, SUPPORTED))
    return q


# ---------------------------------------------------------------- source

def _header_or_none(path: Path) -> dict[str, Any] | None:
    try:
        return read_gguf_header(path)
    except (OSError, ValueError):
        return None


def _quantization_of(header: dict[str, Any] | None, fallback: str) -> str:
    if header is None:
        return fallback
    names = {v: k for k, v in {**UNQUANTIZED, **SUPPORTED}.items()}
    return names.get(header["metadata"].get("general.file_type"), fallback)


def source_quantization(path: Path, fallback: str) -> str:
    """The quantization named by a GGUF's general.file_type, else `fallback` (the catalog's word)."""
    return _quantization_of(_header_or_none(path), fallback)


# ---------------------------------------------------------------- quantize

def _say(message: str, quiet: bool) -> None:
    if quiet:
        return
    try:
        from bench.display import console

        console.print(message)
    except ImportError:
        print(message, file=sys.stderr, flush=True)


def _existing(entry: CatalogEntry, dest: Path) -> dict[str, Any] | None:
    """The provenance of an already derived file, when the file is still the one it describes."""
    prov_file = provenance_path(dest)
    if not (dest.exists() and prov_file.exists()):
        return None
    try:
        prov = json.loads(prov_file.read_text())
        if prov.get("sha256") and verify(dest, prov["sha256"], entry.id) == prov["sha256"]:
            return prov
    except (ValueError, ModelError):
        pass
    return None


def _quantize(src: Path, dest: Path, qtype: str, allow_requantize: bool) -> int:
    """Run llama.cpp's quantizer; returns the llama_ftype it was asked for."""
    try:
        import llama_cpp
    except ImportError:
        raise ModelError("deriving quantizations needs llama-cpp-python: pip install llama-cpp-python") from None
    ftype = int(getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{qtype}", SUPPORTED[qtype]))
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.allow_requantize = allow_requantize
    params.nthread = 0  # llama.cpp picks the hardware's thread count
    logger = None
    try:  # llama.cpp logs a line per tensor (and per fallback); silence it, a failure shows in rc
        from llama_cpp import _logger

        logger = _logger.logger
        level = logger.level
        logger.setLevel(50)
    except (ImportError, AttributeError):
        pass
    try:
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dest).encode(), ctypes.byref(params))
    finally:
        if logger is not None:
            logger.setLevel(level)
    if rc != 0:
        raise ModelError(f"llama_model_quantize failed (code {rc}) making {dest.name} from {src.name}")
    return ftype


def derive(entry: CatalogEntry, base_path: Path, qtype: str, quiet: bool = False) -> tuple[Path, dict[str, Any]]:
    """Make (or reuse) `qtype` of a model from its base file; returns the file and its provenance."""
    q = normalize_qtype(qtype)
    dest = derived_path(entry, q)
    prov = _existing(entry, dest)
    if prov is not None:
        return dest, prov
    source_sha = verify(base_path, entry.sha256 or None, entry.id)
    source_header = _header_or_none(base_path)
    source_q = _quantization_of(source_header, entry.quantization)
    requantized = source_q not in UNQUANTIZED
    what = "requantizing" if requantized else "quantizing"
    _say(f"{what} {entry.id}: {source_q} -> {q}", quiet)
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".partial")
    partial.unlink(missing_ok=True)
    started = time.perf_counter()
    try:
        ftype = _quantize(base_path, partial, q, allow_requantize=requantized)
        header = read_gguf_header(partial)
    except (ModelError, OSError, ValueError) as exc:
        partial.unlink(missing_ok=True)
        raise ModelError(f"could not derive {q} of {entry.id}: {exc}") from None
    if header["metadata"].get("general.file_type") != ftype:
        partial.unlink(missing_ok=True)
        raise ModelError(f"the quantizer wrote file type {header['metadata'].get('general.file_type')}, "
                         f"not {q} ({ftype})")
    partial.replace(dest)
    sha = verify(dest, None, entry.id)  # also writes the .verified.json marker that is_cached() looks for
    seconds = time.perf_counter() - started
    notes = [REQUANTIZE_NOTE] if requantized else []
    source_bpw = source_header["bits_per_weight"] if source_header else None
    if source_bpw and header["bits_per_weight"] and header["bits_per_weight"] > source_bpw:
        notes.append(f"the result holds no more information than its {source_q} source: it shows {q}'s speed "
                     f"and memory, not {q}'s quality")
    main_type = next(iter(header["weight_share"]), None)
    if main_type and not main_type.startswith(q.split("_")[0] + "_"):
        notes.append(f"most weights are {main_type}, not {q}: llama.cpp falls back to another type for tensors "
                     f"whose row length does not fit {q}'s block size")
    try:
        import llama_cpp

        engine = getattr(llama_cpp, "__version__", None)
    except ImportError:  # pragma: no cover - _quantize needed it
        engine = None
    prov = {
        "schema_version": PROVENANCE_VERSION,
        "model": entry.id,
        "quantization": q,
        "derived": True,
        "source": entry.source.kind,
        "source_file": base_path.name,
        "source_sha256": source_sha,
        "source_quantization": source_q,
        "method": "llama_model_quantize",
        "llama_cpp_python": engine,
        "requantized": requantized,
        "note": "; ".join(notes),
        "sha256": sha,
        "size_bytes": dest.stat().st_size,
        "bits_per_weight": header["bits_per_weight"],
        "source_bits_per_weight": source_bpw,
        "tensor_types": header["tensor_types"],
        "weight_share": header["weight_share"],
        "seconds": round(seconds, 2),
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    write_text_atomic(provenance_path(dest), json.dumps(prov, indent=2))
    _say(f"  wrote {dest} ({prov['size_bytes'] / 1e6:.1f} MB, {seconds:.1f} s)", quiet)
    return dest, prov


def run_quantize(model_id: str, qtypes: list[str]) -> int:
    """`bench models quantize ID --to Q8_0,Q2_K`: derive each quantization, skipping those already made."""
    entry = get_entry(model_id)
    wanted = [normalize_qtype(q) for item in qtypes for q in item.split(",") if q.strip()]
    if not wanted:
        raise UserInputError("give at least one quantization", field="--to", hint=f"one of {', '.join(SUPPORTED)}")
    base = pull(entry)
    for q in dict.fromkeys(wanted):
        if q == entry.quantization.upper():
            _say(f"{entry.id} {q}: the catalog's own file, nothing to derive ({base})", False)
            continue
        existing = _existing(entry, derived_path(entry, q))
        if existing is not None:
            _say(f"{entry.id} {q}: already derived ({derived_path(entry, q)})", False)
            continue
        derive(entry, base, q)
    return 0
