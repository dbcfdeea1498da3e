"""What the benchmark ran on: CPU model, cores, memory, torch build, GPU and driver."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo; the platform's word elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# the instruction-set flags that decide how fast matrix work runs (bf16 / int8 / AMX paths)
MATH_FLAG_PREFIXES = ("avx", "amx", "fma", "f16c", "sse4", "vnni")


def _cpu_flags() -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("flags", "features")):
                flags = line.split(":", 1)[1].split()
                return sorted({f for f in flags if f.startswith(MATH_FLAG_PREFIXES)})
    except OSError:
        pass
    return []


def _mem_total_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return None


def _nvidia_driver() -> str | None:
    exe = shutil.which("nvidia-smi")
    if not exe:
        return None
    try:
        out = subprocess.run([exe, "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout else None


def hardware_info() -> dict[str, Any]:
    """A JSON-able description of this machine and software stack."""
    import torch

    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count()
    info: dict[str, Any] = {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "cpu_flags": _cpu_flags(),
        "cpu_count": os.cpu_count(),
        "cpu_available": affinity,
        "torch_threads": torch.get_num_threads(),
        "memory_gb": _mem_total_gb(),
        "torch": str(torch.__version__),
        "cuda": None,
        "gpus": [],
    }
    if torch.cuda.is_available():
        info["cuda"] = torch.version.cuda
        info["cudnn"] = torch.backends.cudnn.version()
        info["driver"] = _nvidia_driver()
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            info["gpus"].append({"name": p.name, "memory_gb": round(p.total_memory / 1024**3, 1),
                                 "capability": f"{p.major}.{p.minor}",
                                 "bf16": bool(torch.cuda.is_bf16_supported())})
    return info


def hardware_id(info: dict[str, Any]) -> str:
    """A short stable id of the hardware (CPU, cores, GPUs, torch): keys CSV rows."""
    key = {k: info.get(k) for k in ("cpu", "cpu_available", "torch", "gpus")}
    return hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]


def write_hardware_json(csv_path: str | os.PathLike[str], info: dict[str, Any]) -> Path:
    """``<csv stem>.hardware.json`` beside the CSV: {hardware_id: info} (merged, not replaced)."""
    from terrastill.atomic import write_text_atomic

    p = Path(csv_path)
    path = p.with_name(p.stem + ".hardware.json")
    data: dict[str, Any] = {}
    if path.is_file():
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            data = {}
    data[hardware_id(info)] = info
    write_text_atomic(path, json.dumps(data, indent=2))
    return path
