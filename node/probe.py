"""Capability probe: what this machine can do right now (CPU, memory, disk, load, GPUs, ONNX
execution providers). Reported by ``outpost status`` and, later, in the node's capability advert.

GPUs are counted through NVML when the NVIDIA driver's library is present (``pynvml``, optional);
the onnxruntime provider list alone proves nothing (onnxruntime-gpu lists CUDA on machines with
no GPU), so it is reported separately as ``providers_installed``.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import psutil


def probe_gpus() -> list[dict[str, Any]]:
    try:
        import pynvml
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except Exception:  # no driver: NVMLError_LibraryNotFound and friends
        return []
    try:
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
            util = pynvml.nvmlDeviceGetUtilizationRates(handle)
            name = pynvml.nvmlDeviceGetName(handle)
            gpus.append({
                "index": i,
                "name": name.decode() if isinstance(name, bytes) else str(name),
                "memory_total": int(mem.total),
                "memory_used": int(mem.used),
                "utilization": int(util.gpu),
            })
        return gpus
    finally:
        pynvml.nvmlShutdown()


def probe(data_dir: Path) -> dict[str, Any]:
    import onnxruntime

    vm = psutil.virtual_memory()
    disk = psutil.disk_usage(str(data_dir))
    load1, load5, load15 = os.getloadavg()
    return {
        "cpu": {
            "logical": psutil.cpu_count(logical=True) or 0,
            "physical": psutil.cpu_count(logical=False) or 0,
            "percent": psutil.cpu_percent(interval=None),
            "load": [round(load1, 2), round(load5, 2), round(load15, 2)],
        },
        "memory": {"total": vm.total, "available": vm.available, "percent": vm.percent},
        "disk": {"path": str(data_dir), "total": disk.total, "free": disk.free},
        "gpus": probe_gpus(),
        "providers_installed": list(onnxruntime.get_available_providers()),
        "onnxruntime": onnxruntime.__version__,
        "onnxruntime_package": _ort_package(),
        "machine": f"{platform.system()} {platform.machine()}",
    }


def _ort_package() -> str:
    """Which onnxruntime build is installed: the CUDA one (``onnxruntime-gpu``, Linux x86_64)
    or the CPU one (``onnxruntime``, aarch64 and elsewhere); pyproject picks by platform."""
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("onnxruntime-gpu", "onnxruntime"):
        try:
            return f"{dist} {version(dist)}"
        except PackageNotFoundError:
            continue
    return "unknown"


def server_version() -> str:
    """This Outpost's package version (``0+unknown`` when run from a tree not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("outpost")
    except PackageNotFoundError:
        return "0+unknown"
