"""Which machine a latency figure came from: every result file carries it, since times only compare within one machine."""

from __future__ import annotations

import os
import platform

from pipeline.cpu_features import cpu_flags, cpuinfo

# CPU features that change which kernels the runtimes pick (and so their latency).
_NOTABLE_CPU_FLAGS = ("avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "avx_vnni", "f16c", "asimdhp",
                      "asimddp", "bf16", "sve")


def usable_cpu_count() -> int:
    """Cores this process may run on (the affinity mask, which containers narrow), not the host's total."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def describe_host() -> dict:
    """CPU model, usable cores, notable instruction-set extensions, OS and architecture of this machine."""
    info = cpuinfo()
    flags = cpu_flags()
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
