"""Test servers as subprocesses on 127.0.0.1: a free port, start and wait until ready, stop (bounded waits)."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import REPO


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(url: str, proc: subprocess.Popen, log: Path, within_s: float = 90) -> None:
    import httpx

    deadline = time.monotonic() + within_s
    while True:
        if proc.poll() is not None:
            pytest.fail(f"{' '.join(map(str, proc.args[:4]))} exited with {proc.returncode}:\n"
                        f"{log.read_text(errors='replace')[-3000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"{url} did not answer within {within_s:g} s:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.25)


@contextmanager
def running_process(cmd: list[str], ready_url: str, log: Path):
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONPATH": str(REPO)})
        try:
            wait_until(ready_url, proc, log)
            yield proc
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=15)
