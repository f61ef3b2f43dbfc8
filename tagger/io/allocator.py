"""Tell glibc's allocator to keep the memory that decoding photos frees, for the next photo.

Decoding a photo allocates a few buffers of megabytes (the file's bytes, the decoded pixels,
their copy as an array, the resized copy) and frees them a few milliseconds later. glibc
serves each buffer over its mmap threshold with a fresh mmap and hands freed memory at the
top of a heap back to the kernel once it passes the trim threshold, so the next photo's
buffers fault in their pages again, zeroed by the kernel. On this project's 2-core machine
that was 3.3 of 10 CPU seconds of a nightly run over 600 photos of 1500 px, in the kernel
(benchmarks/README.md, "New products each night").

`keep_freed_memory()` raises both thresholds once per process, so such buffers come from
and go back to the heap. The cost is memory kept for reuse rather than returned: up to the
trim threshold per allocator arena (one per thread that allocates, up to 8 per core).

It does nothing where it cannot or should not: another C library than glibc (musl, macOS),
or a process whose user tuned malloc through the environment (any `MALLOC_*_` variable of
mallopt(3) or `GLIBC_TUNABLES`: also the way to keep glibc's own behaviour).
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import platform

log = logging.getLogger(__name__)

# mallopt(3) parameters (malloc.h)
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
MIB = 1 << 20
# A 1500 px photo decoded at half scale is 2.25 MB of pixels (Pillow keeps 4 bytes each).
SETTINGS = {M_MMAP_THRESHOLD: 8 * MIB, M_TRIM_THRESHOLD: 32 * MIB, M_TOP_PAD: 8 * MIB}
USER_TUNING = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_THRESHOLD_",
               "MALLOC_MMAP_MAX_", "MALLOC_ARENA_MAX", "MALLOC_ARENA_TEST", "GLIBC_TUNABLES")


@functools.cache
def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process (once); whether it did."""
    if any(name in os.environ for name in USER_TUNING):
        log.debug("malloc is tuned through the environment; leaving it as it is")
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success and 0 on a value it refuses
    return all(mallopt(param, value) == 1 for param, value in SETTINGS.items())
