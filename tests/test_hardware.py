"""Hardware: detection, the shipped profiles, profile errors, matching, the bandwidth probe and the CLI."""

from __future__ import annotations

import argparse
import json
import textwrap
from pathlib import Path

import pytest

from bench.errors import UserInputError
from bench.hardware import (
    current,
    detect,
    fingerprint,
    get_profile,
    load_profiles,
    match_profile,
)
from bench.hardware.probe import load_probe, probe, save_probe
from bench.hardware.profiles import HOURS_PER_YEAR, default_dir, load_profile_file

SHIPPED = ["cloud-vm-2c", "ryzen-ai-max-395-128gb", "mac-studio-m4max-128gb", "rtx4090-desktop",
           "h100-sxm-cloud", "h200-cloud"]

# What detect() reports on the 2-vCPU Xeon VM this project is developed on.
SMALL_VM = {"cpu_model": "Intel(R) Xeon(R) Processor", "arch": "x86_64", "physical_cores": 2, "logical_cores": 2,
            "ram_gb": 23.6, "isa": ["avx2"], "gpus": [], "os": "Linux", "python": "3.11.7"}


def machine(**over):
    return {**SMALL_VM, **over}


GOOD = """\
id: {id}
name: Test box
locality: local
match:
  cpu_model: "Test CPU"
cost_basis:
  method: amortized
  purchase_usd: 2628
  years: 3
  utilization: 0.5
  power_w: 100
  electricity_usd_per_kwh: 0.2
cost_per_hour_usd: {cost}
memory_bandwidth_gbs: 100
sources:
  - what: everything
    url: https://example.com/spec
    as_of: 2025-01-01
"""


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


# ---------------------------------------------------------------- detect

def test_detect_describes_this_machine():
    info = detect()
    for key in ("cpu_model", "arch", "physical_cores", "logical_cores", "ram_gb", "isa", "gpus", "os", "python"):
        assert key in info
    assert info["logical_cores"] >= info["physical_cores"] >= 1
    assert info["ram_gb"] > 0
    assert isinstance(info["isa"], list) and isinstance(info["gpus"], list)
    for gpu in info["gpus"]:
        assert set(gpu) == {"name", "memory_mb", "driver"}
    json.dumps(info)  # JSON-ready


def test_gpus_come_from_nvml(monkeypatch):
    import sys
    import types

    from bench.hardware.detect import detect_gpus

    fake = types.ModuleType("pynvml")
    fake.nvmlInit = lambda: None
    fake.nvmlShutdown = lambda: None
    fake.nvmlSystemGetDriverVersion = lambda: b"570.86.15"
    fake.nvmlDeviceGetCount = lambda: 2
    fake.nvmlDeviceGetHandleByIndex = lambda i: i
    fake.nvmlDeviceGetName = lambda h: ["NVIDIA H100 80GB HBM3", b"NVIDIA H200"][h]
    fake.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(total=(81559, 143771)[h] * 1024 * 1024)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    assert detect_gpus() == [{"name": "NVIDIA H100 80GB HBM3", "memory_mb": 81559, "driver": "570.86.15"},
                             {"name": "NVIDIA H200", "memory_mb": 143771, "driver": "570.86.15"}]

    def no_driver():
        raise RuntimeError("NVML Shared Library Not Found")

    fake.nvmlInit = no_driver
    assert detect_gpus() == []


def test_fingerprint_is_stable_and_ignores_volatile_parts():
    fp = fingerprint(SMALL_VM)
    assert fp == fingerprint(dict(SMALL_VM)) and len(fp) == 12
    assert fingerprint(machine(ram_gb=23.7, os="other", python="3.12")) == fp
    assert fingerprint(machine(gpus=[{"name": "NVIDIA H100 80GB HBM3", "memory_mb": 81559, "driver": "550"}])) != fp
    assert fingerprint(machine(logical_cores=4)) != fp


# ---------------------------------------------------------------- shipped profiles

def test_shipped_profiles_load():
    profiles = load_profiles()
    assert set(SHIPPED) <= set(profiles)
    for p in profiles.values():
        assert p.cost_per_hour_usd and p.cost_per_hour_usd > 0
        assert p.sources and all(s.url.startswith("https://") for s in p.sources)


@pytest.mark.parametrize("profile_id", SHIPPED)
def test_shipped_costs_follow_their_basis(profile_id):
    p = get_profile(profile_id)
    b = p.cost_basis
    assert b is not None
    if b.method == "amortized":
        assert b.years == 3
        capital = b.purchase_usd / (b.years * HOURS_PER_YEAR * b.utilization)
        expected = capital + b.power_w / 1000 * b.electricity_usd_per_kwh
    else:
        expected = b.hourly_usd
    assert p.cost_per_hour_usd == pytest.approx(expected, rel=0.05)


def test_small_vm_profile_matches_this_kind_of_machine():
    assert match_profile(SMALL_VM).id == "cloud-vm-2c"
    assert match_profile(machine(logical_cores=8, physical_cores=8)) is None
    assert match_profile(machine(gpus=[{"name": "NVIDIA H100 80GB HBM3", "memory_mb": 81559, "driver": "550"}])).id \
        == "h100-sxm-cloud"


def test_detected_machine_matches_small_vm_profile_here():
    info = detect()
    if info["logical_cores"] != 2 or info["gpus"] or info["arch"] not in ("x86_64", "AMD64"):
        pytest.skip("not a 2-vCPU x86 machine without a GPU")
    assert match_profile(info).id == "cloud-vm-2c"
    _, profile, note = current()
    assert profile is not None and profile.id == "cloud-vm-2c" and note == "matched cloud-vm-2c"


@pytest.mark.parametrize("info, expected", [
    (machine(gpus=[{"name": "NVIDIA H200", "memory_mb": 143771, "driver": "570"}]), "h200-cloud"),
    (machine(gpus=[{"name": "NVIDIA GeForce RTX 4090", "memory_mb": 24564, "driver": "570"}], logical_cores=16,
             physical_cores=8, ram_gb=62.5), "rtx4090-desktop"),
    (machine(cpu_model="Apple M4 Max", arch="arm64", logical_cores=16, physical_cores=16, ram_gb=128.0),
     "mac-studio-m4max-128gb"),
    (machine(cpu_model="AMD RYZEN AI MAX+ 395 w/ Radeon 8060S", logical_cores=32, physical_cores=16, ram_gb=30.9),
     "ryzen-ai-max-395-128gb"),
])
def test_profiles_match_their_machines(info, expected):
    assert match_profile(info).id == expected


# ---------------------------------------------------------------- errors

def test_unknown_profile_lists_known_and_suggests():
    with pytest.raises(UserInputError) as exc:
        get_profile("h100-sxm")
    assert "cloud-vm-2c" in exc.value.message and "h100-sxm-cloud" in (exc.value.hint or "")


def test_bad_profile_names_file_line_and_field(tmp_path):
    path = write(tmp_path, "box.yaml", GOOD.format(id="box", cost=0.2).replace("  years: 3", "  yeers: 3"))
    with pytest.raises(UserInputError) as exc:
        load_profile_file(path)
    err = exc.value
    assert err.file == str(path) and err.line == 9 and err.field == "cost_basis.yeers"
    assert "unknown key" in err.message and "years" in (err.hint or "")
    assert f"{path}:9" in str(err)


def test_amortization_mismatch_points_at_the_cost(tmp_path):
    # 2628 / (3 * 8760 * 0.5) + 0.1 * 0.2 = 0.22
    write(tmp_path, "box.yaml", GOOD.format(id="box", cost=0.22))
    assert load_profiles(tmp_path)["box"].cost_per_hour_usd == 0.22
    path = write(tmp_path, "box.yaml", GOOD.format(id="box", cost=0.30))
    with pytest.raises(UserInputError) as exc:
        load_profiles(tmp_path)
    assert exc.value.file == str(path) and exc.value.line == 13 and exc.value.field == "cost_per_hour_usd"
    assert "0.2200" in exc.value.message


def test_missing_cost_is_computed_from_the_basis(tmp_path):
    write(tmp_path, "box.yaml", GOOD.format(id="box", cost="null"))
    assert load_profiles(tmp_path)["box"].cost_per_hour_usd == pytest.approx(0.22)


def test_id_must_match_file_name_and_yaml_must_parse(tmp_path):
    write(tmp_path, "box.yaml", GOOD.format(id="other", cost=0.22))
    with pytest.raises(UserInputError, match="differs from the file name"):
        load_profiles(tmp_path)
    (tmp_path / "box.yaml").write_text("id: box\nname: [unclosed\n")
    with pytest.raises(UserInputError) as exc:
        load_profiles(tmp_path)
    assert exc.value.file and exc.value.line


def test_bad_regex_is_an_error(tmp_path):
    path = write(tmp_path, "box.yaml", GOOD.format(id="box", cost=0.22).replace('"Test CPU"', '"Test (CPU"'))
    with pytest.raises(UserInputError) as exc:
        load_profiles(tmp_path)
    assert exc.value.line == 5 and exc.value.field == "match.cpu_model" and "regular expression" in exc.value.message
    assert path.name in str(exc.value)


def test_env_folder_and_current_choices(tmp_path, monkeypatch):
    write(tmp_path, "box.yaml", GOOD.format(id="box", cost=0.22))
    monkeypatch.setenv("BENCH_HARDWARE_DIR", str(tmp_path))
    assert default_dir() == tmp_path and list(load_profiles()) == ["box"]
    info, profile, note = current("box")
    assert profile.id == "box" and "chosen by --hardware" in note
    info, profile, note = current()
    assert profile is None and "no profile matched" in note and "cost is unknown" in note
    monkeypatch.setenv("BENCH_HARDWARE_DIR", str(tmp_path / "missing"))
    with pytest.raises(UserInputError, match="folder not found"):
        load_profiles()


# ---------------------------------------------------------------- probe and CLI

def test_probe_small_arrays_gives_positive_numbers():
    result = probe(threads=2, array_mb=4, repetitions=2)
    assert result["copy_gbs"] > 0 and result["triad_gbs"] > 0 and result["read_gbs"] > 0
    assert result["threads"] == 2 and result["array_mb"] == pytest.approx(4, rel=0.01)


def test_probe_is_stored_per_fingerprint(tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path))
    assert load_probe("abc123") is None
    path = save_probe("abc123", {"schema_version": 1, "copy_gbs": 10.0, "triad_gbs": 8.0})
    assert path == tmp_path / "hardware" / "abc123.json"
    assert load_probe("abc123")["triad_gbs"] == 8.0
    with pytest.raises(ValueError):
        save_probe("../escape", {})


def test_cli_json_is_one_document(tmp_path, monkeypatch, capsys):
    from bench.hardware import cli

    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(cli, "probe", lambda: {"schema_version": 1, "copy_gbs": 12.5, "triad_gbs": 9.0,
                                               "threads": 2, "measured_at": "now"})
    assert cli.run(argparse.Namespace(probe=True, json=True, hardware="h200-cloud")) == 0
    out = capsys.readouterr().out
    doc = json.loads(out)
    assert doc["schema_version"] >= 1 and doc["profile"]["id"] == "h200-cloud"
    assert doc["probe"]["copy_gbs"] == 12.5 and "chosen by --hardware" in doc["note"]
    assert doc["fingerprint"] == fingerprint(doc["detected"])
    # the stored probe comes back without --probe
    assert cli.run(argparse.Namespace(probe=False, json=True, hardware=None)) == 0
    assert json.loads(capsys.readouterr().out)["probe"]["triad_gbs"] == 9.0


def test_cli_text_output(tmp_path, monkeypatch, capsys):
    from bench.hardware import cli

    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path))
    assert cli.run(argparse.Namespace(probe=False, json=False, hardware="rtx4090-desktop")) == 0
    out = capsys.readouterr().out
    assert "rtx4090-desktop" in out and "1008 GB/s" in out and "not yet measured" in out
