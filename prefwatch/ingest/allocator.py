"""Memory settings for reading a large log: keep what the process freed, and use small pages.

Reading a million-line log decodes it block by block: each block's objects and arrays are made and
freed again. glibc's malloc returns freed memory above a threshold to the kernel (large blocks are
separate mappings, and the top of the heap is trimmed), so every block faults fresh pages in again:
about 370,000 page faults and 1-1.5 s of kernel time for a 330 MB log on a 2-core virtual machine,
where the read itself is 1.4 s. Raising the two thresholds keeps that memory for the next block
(glibc: ``mallopt``); peak memory is unchanged, only its return to the kernel waits. Elsewhere
(macOS, musl) this does nothing.

numpy asks for transparent huge pages for every array of 4 MB or more. Where the kernel compacts
memory to find them on demand (``defrag`` = madvise, the common default), filling a fresh array
can stall: 0.01-0.6 s for the 80 MB of a million-line log's columns on this machine, 0.04 s
steadily with small pages. The arrays are read once or twice in order, where huge pages gain
little, so numpy is told not to ask (unless NUMPY_MADVISE_HUGEPAGE says otherwise).
"""

from __future__ import annotations

import os

_M_TRIM_THRESHOLD = -1  # glibc's malloc.h
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 64 << 20  # blocks up to this size come from the heap, where freed memory is reused
TRIM_THRESHOLD = 256 << 20  # free memory at the heap's top kept before it is returned

_kept = False


def prepare_large_read() -> None:
    """Both settings, once per process, before a large log (or its cache entry) is read."""
    keep_freed_memory()
    small_pages()


def small_pages() -> None:
    """Stop numpy asking for huge pages, unless the user chose with NUMPY_MADVISE_HUGEPAGE."""
    if "NUMPY_MADVISE_HUGEPAGE" in os.environ:
        return
    import numpy as np

    switch = getattr(getattr(np, "_core", None), "multiarray", None)
    if switch is not None and hasattr(switch, "_set_madvise_hugepage"):  # numpy's own switch for this
        switch._set_madvise_hugepage(False)


def keep_freed_memory() -> bool:
    """Set glibc's thresholds once per process; False where there is no glibc malloc to tune."""
    global _kept
    if _kept:
        return True
    try:
        import ctypes

        mallopt = ctypes.CDLL(None).mallopt  # the C library the interpreter runs on
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _kept = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _kept
