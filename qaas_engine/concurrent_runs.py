"""Independent runs of one ONNX Runtime session, two at a time where the job has two threads.

The rules measure a graph on each of their samples, and price noise with a run per activation:
runs of one session on feeds that do not depend on each other. One at a time, a run of a
detector at batch 1 keeps a second core mostly idle (its many small ops split poorly across two
threads: YOLOX's deployed graph used about 1 CPU-second per wall second on two cores); two
runs in flight use both (8 runs of YOLOX's graph: 0.46-0.73 s against 0.81-1.05 s one at a time,
measured at load 6 on the 2-core dev box).

The numbers do not change: each run computes what it computes alone. ONNX Runtime splits an
op's work by the session's thread count, never by how busy its pool is, so a run's arithmetic
is the same with another in flight; the results come back in the order of the feeds and the
callers sum them in that order. ``QAAS_THREADS=1`` keeps one run at a time, as it keeps one
thread.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from qaas_engine.sessions import thread_count

T = TypeVar("T")
R = TypeVar("R")

# runs in flight at once, at most, and never more than the job's threads
MAX_CONCURRENT_RUNS = 2


def concurrency() -> int:
    """Runs in flight at once: ``MAX_CONCURRENT_RUNS``, within the job's thread count."""
    return max(1, min(MAX_CONCURRENT_RUNS, thread_count()))


def run_each(run: Callable[[T], R], items: Sequence[T]) -> list[R]:
    """``run`` on each of ``items`` (independent runs, which release the GIL while ONNX Runtime
    computes), two at a time where ``concurrency`` allows; the results in the items' order."""
    workers = min(concurrency(), len(items))
    if workers <= 1:
        return [run(item) for item in items]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="qaas-run") as pool:
        return list(pool.map(run, items))
