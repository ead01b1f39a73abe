"""Limits for a process that parses or computes an untrusted upload: an address-space cap, and
death with its parent, so a killed worker or API never leaves an orphan computing. Shared by
upload checks (``app.core.inspection``) and job runs (``worker.limited``)."""

from __future__ import annotations

import ctypes
import os
import resource
import signal

PR_SET_PDEATHSIG = 1
# How C++ libraries (torch, onnx, onnxruntime) word a failed allocation when it is not turned
# into Python's MemoryError.
OUT_OF_MEMORY_WORDS = (
    "can't allocate memory",
    "cannot allocate memory",
    "failed to allocate memory",
    "bad_alloc",
    "out of memory",
    # oneDNN (torch's CPU convolutions) reports a scratchpad it could not allocate this way;
    # seen under the job memory cap when the allocation fails inside a convolution.
    "could not create a primitive",
)


def limit_process(memory_bytes: int) -> None:
    """Cap this process's address space (RLIMIT_AS) and have it killed when its parent dies."""
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    die_with_parent()


def die_with_parent() -> None:
    """SIGKILL this process when its parent ends (Linux; elsewhere a no-op)."""
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)


def is_out_of_memory(error: BaseException) -> bool:
    if isinstance(error, MemoryError):
        return True
    text = str(error).lower()
    return any(words in text for words in OUT_OF_MEMORY_WORDS)


def memory_limit_detail(what: str, memory_bytes: int) -> str:
    return f"{what} exhausted the memory limit of {memory_bytes} bytes ({memory_bytes >> 20} MiB)"


def time_limit_detail(what: str, seconds: float) -> str:
    return f"{what} ran past the time limit of {seconds:g} s"
