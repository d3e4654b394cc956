"""Describe the machine a run happens on (CPU, memory, ISA flags, GPUs) and fingerprint it."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import subprocess
from pathlib import Path
from typing import Any

# ISA flags worth recording for LLM inference, by the names Linux's /proc/cpuinfo uses.
X86_FLAGS = (
    "sse4_2", "avx", "avx2", "fma", "f16c", "avx_vnni",
    "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "avx512_fp16",
    "amx_tile", "amx_int8", "amx_bf16",
)
# ARM: /proc/cpuinfo "Features" names mapped to the names we report.
ARM_FLAGS = {"asimd": "neon", "fphp": "fp16", "asimdhp": "fp16", "asimddp": "dotprod",
             "i8mm": "i8mm", "bf16": "bf16", "sve": "sve", "sve2": "sve2", "sme": "sme"}
# macOS sysctl hw.optional.* keys for Apple silicon.
MAC_FLAGS = {"hw.optional.neon": "neon", "hw.optional.arm.FEAT_FP16": "fp16",
             "hw.optional.arm.FEAT_DotProd": "dotprod", "hw.optional.arm.FEAT_I8MM": "i8mm",
             "hw.optional.arm.FEAT_BF16": "bf16", "hw.optional.arm.FEAT_SME": "sme"}


def _cpuinfo_fields() -> dict[str, str]:
    """The first value of each key in /proc/cpuinfo (Linux), or {} elsewhere."""
    path = Path("/proc/cpuinfo")
    fields: dict[str, str] = {}
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return fields
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip().lower(), value.strip())
    return fields


def _sysctl(name: str) -> str | None:
    try:
        out = subprocess.run(["sysctl", "-n", name], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else None


def _cpu_model(fields: dict[str, str]) -> str:
    for key in ("model name", "hardware", "cpu model", "processor"):
        value = fields.get(key, "")
        if value and not value.isdigit():
            return re.sub(r"\s+", " ", value)
    if platform.system() == "Darwin":
        brand = _sysctl("machdep.cpu.brand_string")
        if brand:
            return brand
    return platform.processor() or platform.machine() or "unknown"


def _isa(fields: dict[str, str]) -> list[str]:
    if "flags" in fields:
        have = set(fields["flags"].split())
        return [f for f in X86_FLAGS if f in have]
    if "features" in fields:
        have = set(fields["features"].split())
        return sorted({name for flag, name in ARM_FLAGS.items() if flag in have})
    if platform.system() == "Darwin":
        return sorted({name for key, name in MAC_FLAGS.items() if _sysctl(key) == "1"})
    return []


def _cores() -> tuple[int, int]:
    try:
        import psutil

        logical = psutil.cpu_count(logical=True) or os.cpu_count() or 1
        physical = psutil.cpu_count(logical=False) or logical
    except ImportError:
        logical = os.cpu_count() or 1
        physical = logical
    return int(physical), int(logical)


def _ram_gb() -> float:
    try:
        import psutil

        total = psutil.virtual_memory().total
    except ImportError:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return round(total / 1024**3, 1)


def detect_gpus() -> list[dict[str, Any]]:
    """NVIDIA GPUs through NVML: name, total memory in MiB and driver version; [] without a driver."""
    try:
        import pynvml
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except Exception:  # no library, no driver, no device: all mean "no NVIDIA GPU here"
        return []
    gpus: list[dict[str, Any]] = []
    try:
        driver = pynvml.nvmlSystemGetDriverVersion()
        driver = driver.decode() if isinstance(driver, bytes) else str(driver)
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(handle)
            mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
            gpus.append({"name": name.decode() if isinstance(name, bytes) else str(name),
                         "memory_mb": int(mem.total // (1024 * 1024)), "driver": driver})
    except Exception:
        return gpus
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass
    return gpus


def detect() -> dict[str, Any]:
    """The machine as data: CPU model, arch, cores, RAM (GiB), ISA flags, GPUs, OS and Python."""
    fields = _cpuinfo_fields()
    physical, logical = _cores()
    return {
        "cpu_model": _cpu_model(fields),
        "arch": platform.machine(),
        "physical_cores": physical,
        "logical_cores": logical,
        "ram_gb": _ram_gb(),
        "isa": _isa(fields),
        "gpus": detect_gpus(),
        "os": platform.platform(),
        "python": platform.python_version(),
    }


def fingerprint(info: dict[str, Any]) -> str:
    """A short hash of the parts that do not change between runs: CPU, cores, RAM to the GiB, GPU names."""
    stable = {
        "cpu_model": info.get("cpu_model"),
        "arch": info.get("arch"),
        "physical_cores": info.get("physical_cores"),
        "logical_cores": info.get("logical_cores"),
        "ram_gb": round(float(info.get("ram_gb") or 0)),
        "gpus": sorted(g.get("name", "") for g in info.get("gpus") or []),
    }
    blob = json.dumps(stable, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:12]
