"""keep_freed_memory: after it, a training-like pattern of large allocations stops page-faulting its memory in again."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PATTERN = """
import resource, sys
import numpy as np
sys.path.insert(0, {root!r})
from pipeline.distill.host_memory import keep_freed_memory
applied = keep_freed_memory() if {keep} else None
def cycle():  # activation maps of a step: several sizes alive at once, then freed
    blocks = [np.ones(mb << 18, dtype=np.float32) for mb in (24, 1, 8, 16, 2, 4, 24, 12)]
    del blocks
cycle()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    cycle()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="keep_freed_memory sets glibc's malloc thresholds; this is not a glibc Linux")


def _faults(keep: bool) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", PATTERN.format(root=str(ROOT), keep=keep)], capture_output=True, text=True, check=True)
    applied, faults = out.stdout.split()
    return applied, int(faults)


def test_freed_blocks_are_reused_without_page_faults():
    applied, kept = _faults(True)
    _, default = _faults(False)
    assert applied == "True"
    assert default > 5000, f"glibc's default allocation faulted only {default} pages in: the pattern no longer shows the cost"
    assert kept < default / 10, f"{kept} page faults with freed memory kept, {default} without"
