"""Peak resident memory of a block of work, native libraries included (Linux).

tracemalloc sees only Python's allocator and would miss onnxruntime's, ncnn's and torch's own buffers, so
this reads the kernel's resident-set high-water mark (VmHWM in /proc/self/status) instead. Before the block
the mark is reset to the current RSS (writing "5" to /proc/self/clear_refs) after returning freed heap to
the OS (malloc_trim), so the figure is: how far resident memory rose above where it stood, while the block
loaded a model and ran it. Memory an earlier block freed but the allocator kept can hide part of the rise;
the figure is a lower bound of what a fresh process would need on top of its interpreter.
"""

from __future__ import annotations

import ctypes
import gc
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


@dataclass
class PeakMemory:
    """Filled in when the block ends; None where the kernel offers no high-water mark to reset."""

    rss_before_mb: float | None = None
    peak_rss_mb: float | None = None

    @property
    def rise_mb(self) -> float | None:
        if self.rss_before_mb is None or self.peak_rss_mb is None:
            return None
        return round(self.peak_rss_mb - self.rss_before_mb, 1)


def _status_kib(field: str) -> int | None:
    try:
        match = re.search(rf"^{field}:\s+(\d+) kB", _STATUS.read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) if match else None


def _release_free_heap() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: freed memory simply stays resident, and the rise reads lower


def _reset_high_water_mark() -> bool:
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


@contextmanager
def peak_memory() -> Iterator[PeakMemory]:
    """Measure the resident-memory rise of the `with` block (see the module docstring for what it counts)."""
    result = PeakMemory()
    _release_free_heap()
    resettable = _reset_high_water_mark()
    before = _status_kib("VmRSS")
    yield result
    peak = _status_kib("VmHWM")
    if resettable and before is not None and peak is not None:
        result.rss_before_mb = round(before / 1024, 1)
        result.peak_rss_mb = round(peak / 1024, 1)
