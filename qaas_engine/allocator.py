"""``keep_freed_memory``: a one-job process keeps the heap memory it frees, for its next buffer.

glibc serves a block above its mmap threshold (128 KiB, raised as such blocks are freed, at most
32 MiB) with a fresh mapping and unmaps it on free, and trims the heap's free top above 128 KiB.
A quantization job allocates and frees activation-sized arrays thousands of times (every
calibration batch, every rule's trial run, every tapped tensor), so each new array faults all its
pages in again from the kernel: on the YOLOX captcha detector 1.4 M minor page faults, a fifth of
the job's time. With mappings off and trimming raised, a freed block goes back to the heap and
the next array reuses its pages.

Only for ``qaas quantize``, a process that ends with its job. The service's worker keeps glibc's
defaults: a long-lived process would hold its largest job's heap for every later one.
"""

from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
# keep up to this much freed memory at the heap's top (mallopt takes a C int)
KEPT_TOP_BYTES = 1 << 30


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to keep freed memory in this process; False where it is not glibc
    (macOS, musl: their allocators have no such switch, and nothing changes)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return False
    # glibc only: musl has a mallopt that does nothing
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
        return False
    mallopt = libc.mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, KEPT_TOP_BYTES))
