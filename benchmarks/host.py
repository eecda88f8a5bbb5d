"""Which machine a latency figure came from: every result file carries it, since times only compare within one machine."""

from __future__ import annotations

import os
import platform
from pathlib import Path

# CPU features that change which kernels the runtimes pick (and so their latency).
_NOTABLE_CPU_FLAGS = ("avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "f16c", "asimdhp", "asimddp", "sve")


def usable_cpu_count() -> int:
    """Cores this process may run on (the affinity mask, which containers narrow), not the host's total."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _cpuinfo() -> dict[str, str]:
    """First value of each field in /proc/cpuinfo (one CPU's description; empty off Linux)."""
    fields: dict[str, str] = {}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return fields
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() not in fields:
            fields[key.strip()] = value.strip()
    return fields


def describe_host() -> dict:
    """CPU model, usable cores, notable instruction-set extensions, OS and architecture of this machine."""
    info = _cpuinfo()
    flags = set((info.get("flags") or info.get("Features") or "").split())
    return {
        "kind": "host",
        "cpu": info.get("model name") or info.get("Hardware") or platform.processor() or "unknown",
        "cpu_count": usable_cpu_count(),
        "cpu_features": [flag for flag in _NOTABLE_CPU_FLAGS if flag in flags],
        "abi": platform.machine(),
        "os": platform.platform(),
    }


# The runtimes whose versions change the times (not the training stack: the device images have none of it).
_RUNTIME_PACKAGES = ("numpy", "torch", "onnxruntime", "onnxruntime-gpu", "ncnn", "tensorrt", "coremltools")


def runtime_versions() -> dict[str, str]:
    """Python's version and each installed runtime's, as pip sees them."""
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for package in _RUNTIME_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return versions
