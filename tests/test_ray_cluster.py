"""Cells on a real local Ray cluster (head + worker processes on 127.0.0.1) advertising different hardware.

The nodes are Ray's own processes (raylets) started by ray.cluster_utils.Cluster, with Ray told to keep every
address on the loopback interface. Ray is an optional extra: these tests skip with the reason where it is missing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import FAKE_SUITE, REPO, write_suite

pytestmark = pytest.mark.integration
ray = pytest.importorskip("ray", reason="Ray is not installed: pip install -e '.[ray]'")

LOOPBACK = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}  # Ray then binds every node to 127.0.0.1, never eth0
HW_SUITE = FAKE_SUITE.replace("  models: [smollm2-135m-instruct, qwen2.5-coder-0.5b-instruct]",
                              "  models: [smollm2-135m-instruct, qwen2.5-coder-0.5b-instruct]\n"
                              "  hardware: [cloud-vm-2c, h100-sxm-cloud]")
assert "hardware: [cloud-vm-2c" in HW_SUITE


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    old = {k: os.environ.get(k) for k in LOOPBACK}
    os.environ.update(LOOPBACK)
    small = {"num_cpus": 1, "object_store_memory": 80_000_000}
    c = Cluster(initialize_head=True, head_node_args={**small, "include_dashboard": False,
                                                      "resources": {"hardware:cloud-vm-2c": 1}})
    c.add_node(**small, resources={"hardware:h100-sxm-cloud": 1})  # a labelled stand-in: this CPU, not an H100
    try:
        yield c
    finally:
        if ray.is_initialized():
            ray.shutdown()
        c.shutdown()
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(autouse=True)
def _disconnect():
    yield
    if ray.is_initialized():
        ray.shutdown()


def _rows(results: Path) -> list[dict]:
    from bench.results.store import find_runs

    return [r for run in find_runs([results]) for r in run.samples()]


def _count(results: Path) -> int:
    """Rows written so far (0 before the run directory exists)."""
    from bench.errors import UserInputError

    try:
        return len(_rows(results))
    except UserInputError:
        return 0


def _run(argv: list[str]) -> int:
    from bench.cli import main

    return main(argv)


def test_cells_run_on_the_node_advertising_their_hardware_and_match_a_local_run(cluster, tmp_path: Path) -> None:
    suite = write_suite(tmp_path / "s", HW_SUITE)
    assert _run(["run", str(suite), "--results", str(tmp_path / "r"), "--ray", cluster.address]) == 0
    rows = _rows(tmp_path / "r")
    assert len(rows) == 2 * 2 * 8  # models x hardware x samples
    for r in rows:  # each row says where it ran, and the node advertised the cell's hardware
        assert r["node"]["advertised"] == r["cell"]["hardware"] and r["node"]["node_id"]
    summary = json.loads(next((tmp_path / "r").rglob("summary.json")).read_text())
    for cell in summary["cells"]:  # the roofline uses the node's own probe, or its profile's figure, not the driver's
        if cell["cell"]["hardware"] == "h100-sxm-cloud":
            assert cell["bandwidth_source"] in ("node probe", "profile") and cell["bandwidth_gbs"]
    nodes = {r["cell"]["hardware"]: r["node"]["node_id"] for r in rows}
    assert nodes["cloud-vm-2c"] != nodes["h100-sxm-cloud"]
    # the same cells run locally give the same answers and scores
    local_suite = write_suite(tmp_path / "l", FAKE_SUITE)
    assert _run(["run", str(local_suite), "--results", str(tmp_path / "local"), "--isolation", "inline",
                 "--hardware", "cloud-vm-2c"]) == 0
    local = {(r["cell"]["model"], r["sample_id"]): (r["output"], r["score"]) for r in _rows(tmp_path / "local")}
    for hw in ("cloud-vm-2c", "h100-sxm-cloud"):
        remote = {(r["cell"]["model"], r["sample_id"]): (r["output"], r["score"]) for r in rows
                  if r["cell"]["hardware"] == hw}
        assert remote == local
    # summary, thresholds, compare and report read a distributed run like a local one
    assert _run(["thresholds", str(tmp_path / "r"), "-o", str(tmp_path / "routing.json")]) in (0, 1)
    assert _run(["report", str(tmp_path / "r"), "-o", str(tmp_path / "report.html")]) == 0
    assert _run(["compare", str(tmp_path / "local"), str(tmp_path / "r")]) in (0, 1)
    # hardware qualification: one run's two profiles side by side
    from bench.compare.core import compare

    moved = compare(tmp_path / "r", tmp_path / "r", hardware=("cloud-vm-2c", "h100-sxm-cloud"))
    pairs = [p for t in moved["tasks"] for p in t["pairs"]]
    assert len(pairs) == 2 and all(p["paired_by"].startswith("same model on other hardware") for p in pairs)
    assert all(p["quality"]["delta"] == 0 for p in pairs) and moved["exit_code"] == 0


def test_a_cell_no_node_offers_is_unplaceable_not_a_hang(cluster, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    body = HW_SUITE.replace("hardware: [cloud-vm-2c, h100-sxm-cloud]", "hardware: [cloud-vm-2c, rtx4090-desktop]")
    suite = write_suite(tmp_path / "s", body)
    t0 = time.monotonic()
    assert _run(["run", str(suite), "--results", str(tmp_path / "r"), "--ray", cluster.address]) == 1
    assert time.monotonic() - t0 < 120
    rows = _rows(tmp_path / "r")
    bad = [r for r in rows if r["cell"]["hardware"] == "rtx4090-desktop"]
    assert bad and all("unplaceable" in r["error"] and "cloud-vm-2c" in r["error"] for r in bad)
    assert all(not r["error"] for r in rows if r["cell"]["hardware"] == "cloud-vm-2c")


def test_the_real_default_model_runs_on_a_node(cluster, tmp_path: Path) -> None:
    body = FAKE_SUITE.replace("""    - kind: fake
      accuracy_by_model: {smollm2-135m-instruct: 0.5, qwen2.5-coder-0.5b-instruct: 1.0}""",
                              "    - kind: llamacpp").replace(
        "  models: [smollm2-135m-instruct, qwen2.5-coder-0.5b-instruct]",
        "  models: [smollm2-135m-instruct]\n  hardware: [h100-sxm-cloud]")
    suite = write_suite(tmp_path / "s", body)
    assert _run(["run", str(suite), "--results", str(tmp_path / "r"), "--ray", cluster.address, "--limit",
                 "2"]) == 0
    rows = _rows(tmp_path / "r")
    assert len(rows) == 2 and all(r["output"] and not r["error"] for r in rows)
    assert all(r["node"]["advertised"] == "h100-sxm-cloud" and r["completion_tokens"] for r in rows)


SLOW_HW = HW_SUITE.replace("accuracy_by_model:", "delay_s: 0.15\n      accuracy_by_model:").replace(
    "hardware: [cloud-vm-2c, h100-sxm-cloud]", "hardware: [h100-sxm-cloud]").replace(
    "  models: [smollm2-135m-instruct, qwen2.5-coder-0.5b-instruct]", "  models: [smollm2-135m-instruct]")


def _many(n: int) -> list[dict]:
    return [{"id": f"s{i:03d}", "text": f"ticket {i}", "label": "billing" if i % 2 else "technical"}
            for i in range(n)]


def test_a_node_lost_mid_cell_completes_elsewhere_with_no_row_lost_or_doubled(cluster, tmp_path: Path) -> None:
    cluster.add_node(num_cpus=1, object_store_memory=80_000_000, resources={"hardware:h100-sxm-cloud": 1})
    suite = write_suite(tmp_path / "s", SLOW_HW, _many(40))
    results = tmp_path / "r"
    outcome: dict = {}
    runner = threading.Thread(target=lambda: outcome.setdefault(
        "code", _run(["run", str(suite), "--results", str(results), "--ray", cluster.address])))
    runner.start()
    deadline = time.monotonic() + 120
    first_node = None
    while time.monotonic() < deadline and first_node is None:
        time.sleep(0.3)
        done = [r for r in _rows(results) if r.get("node")] if _count(results) else []
        if len(done) >= 5:
            first_node = done[0]["node"]["node_id"]
    assert first_node, "the cell never started"
    victim = next(n for n in cluster.worker_nodes if n.node_id == first_node)
    cluster.remove_node(victim, allow_graceful=False)  # the node's processes die mid-cell
    runner.join(timeout=180)
    assert not runner.is_alive()
    rows = _rows(results)
    keys = Counter(r["sample_id"] for r in rows)
    assert len(keys) == 40 and max(keys.values()) == 1  # none lost, none doubled
    ran_on = {r["node"]["node_id"] for r in rows if not r["error"]}
    assert outcome["code"] == 0 and first_node in ran_on and len(ran_on) == 2  # finished on the other H100 node


def test_a_killed_driver_resumes_where_it_stopped(cluster, tmp_path: Path) -> None:
    suite = write_suite(tmp_path / "s", SLOW_HW, _many(30))
    results = tmp_path / "r"
    env = {**os.environ, **LOOPBACK, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "bench", "run", str(suite), "--results", str(results), "--ray", cluster.address]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if _count(results) >= 5:
            break
        time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    partial = len(_rows(results))
    assert 0 < partial < 30
    again = subprocess.run(cmd, env=env, capture_output=True, timeout=180)
    assert again.returncode == 0, again.stderr.decode()[-2000:]
    keys = Counter(r["sample_id"] for r in _rows(results))
    assert len(keys) == 30 and max(keys.values()) == 1
