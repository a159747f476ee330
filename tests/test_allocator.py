"""Memory settings for large reads (prefwatch.ingest.allocator): freed memory stays in the process for the next
block instead of going back to the kernel and faulting in again. Each case runs in a fresh interpreter:
malloc's settings are per process."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = """
import sys
import numpy as np
from prefwatch.ingest import allocator

def resident_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20

if sys.argv[1] == "keep":
    assert allocator.keep_freed_memory() and allocator.keep_freed_memory()  # once, then a no-op
block = np.ones(4 << 20)  # 32 MB, filled: resident
before = resident_mb()
del block
print(before - resident_mb())
"""


def freed_mb(mode: str) -> float:
    done = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    return float(done.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc and /proc")
def test_freed_blocks_stay_in_the_process_once_kept() -> None:
    assert freed_mb("default") > 28  # glibc hands a 32 MB block back to the kernel at once...
    assert freed_mb("keep") < 4  # ...and keeps it, for the next block, once told to
