"""bench report in a real headless Chromium, offline: it loads without errors, draws every figure, runs no payload."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest_report import REPO, make_results, routing_doc

from bench.cli import main

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium); "
                                                         ".ci/run installs it")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=127.0.0.1:9",
         "--hide-scrollbars", "--virtual-time-budget=10000"]
CONSOLE = re.compile(r":CONSOLE[:(]\d*\)?\] (.*)")


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A multi-model, multi-quantization, two-machine report with a routing policy and HTML payloads in it."""
    root = tmp_path_factory.mktemp("browser")
    results = make_results(root, evil=True)
    routing = root / "routing.json"
    routing.write_text(json.dumps(routing_doc(results)))
    out = root / "report.html"
    assert main(["report", str(results), "-o", str(out), "--routing", str(routing)]) == 0
    return out


def chromium(page: Path, profile: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *extra, page.resolve().as_uri()],
                          capture_output=True, text=True, timeout=180, check=False)


def test_page_loads_without_errors_and_draws_every_figure(report: Path, tmp_path: Path) -> None:
    done = chromium(report, tmp_path / "profile", "--enable-logging=stderr", "--v=0", "--dump-dom")
    dom = done.stdout
    assert done.returncode == 0 and "</html>" in dom, done.stderr[-2000:]
    expected = int(re.search(r'data-figures-expected="(\d+)"', dom).group(1))
    assert expected == 5  # quality-cost, quantization, speed, memory, latency
    drawn = re.search(r'data-figures-drawn="(\d+)"', dom)
    assert drawn, "the figures never finished drawing: " + (re.findall(r'data-figures-failed="[^"]*"', dom) or [""])[0]
    assert int(drawn.group(1)) == expected
    assert dom.count('class="plot-container plotly"') == expected
    assert dom.count('class="main-svg"') >= expected
    assert "data-js-errors" not in dom and "data-console-errors" not in dom
    messages = CONSOLE.findall(done.stderr)
    assert not messages, f"console output: {messages[:5]}"
    assert "Uncaught" not in done.stderr
    # the payloads in answers, errors and inputs are text in the DOM, never elements
    assert '<img src="x"' not in dom and "<img src=x" not in dom
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in dom
    assert "&lt;img src=x onerror=alert(3)&gt;" in dom


def test_screenshot_is_kept_as_an_artifact(report: Path, tmp_path: Path) -> None:
    artifacts = REPO / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    shot = artifacts / "report.png"
    shot.unlink(missing_ok=True)
    done = chromium(report, tmp_path / "profile", "--window-size=1400,3000", f"--screenshot={shot}")
    assert done.returncode == 0, done.stderr[-2000:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 50_000  # a drawn page, not a blank one
    shutil.copy(report, artifacts / "report.html")
