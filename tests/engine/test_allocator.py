"""``keep_freed_memory``: a freed large block's pages are reused, not faulted in again.

Each case runs in a fresh interpreter, so the switch never leaks into the test process (the
service's worker must keep glibc's defaults).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")

# allocate, touch and free a 64 MiB block 8 times; print the minor page faults it cost
PROBE = """
import resource, sys
import numpy as np
from qaas_engine.allocator import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "keep" else None
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(8):
    block = np.ones(64 * 2**20, dtype=np.uint8)
    del block
print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
ROOT = Path(__file__).resolve().parents[2]


def _faults(mode: str) -> tuple[str, int]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True
    ).stdout.split()
    return out[0], int(out[1])


def test_a_freed_block_is_faulted_in_once_when_kept() -> None:
    kept, kept_faults = _faults("keep")
    default, default_faults = _faults("default")
    assert (kept, default) == ("True", "None")
    # glibc's default maps and unmaps each of the 8 blocks, so each faults its pages in again
    # (4 KiB pages, or 2 MiB ones where numpy asks for transparent huge pages); kept, only the
    # first block does
    assert default_faults > 4 * kept_faults, (default_faults, kept_faults)


def test_only_the_cli_keeps_freed_memory() -> None:
    """The worker's process outlives its jobs: it must not hold one job's heap for the next."""
    callers = sorted(
        str(path.relative_to(ROOT))
        for folder in ("app", "worker", "qaas_engine")
        for path in (ROOT / folder).rglob("*.py")
        if "keep_freed_memory()" in path.read_text() and path.name != "allocator.py"
    )
    assert callers == ["app/cli.py"]
