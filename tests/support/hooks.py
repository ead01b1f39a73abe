"""Fault-injection hooks of the test suite, applied from outside the shipped code: a job whose
every progress report is slow, so a test can act while it runs, and poison jobs that SIGKILL
the worker process running them.

Both are patches made in the process that runs jobs, before it forks its pool processes (a
hooked worker, ``tests.support.hooked_worker``) or within a test (``monkeypatch``).
"""

from __future__ import annotations

import functools
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from worker import limited

# The limited child's real entry, captured before any patch (the child imports this module
# afresh when it unpickles its target, and must find the original here too).
_child_main = limited._child_main


class _SlowSender:
    """The limited child's end of its pipe: sleeps before passing on each progress report."""

    def __init__(self, sender: Any, delay_s: float) -> None:
        self._sender = sender
        self._delay_s = delay_s

    def send(self, message: Any) -> None:
        if isinstance(message, tuple) and message and message[0] == "progress":
            time.sleep(self._delay_s)
        self._sender.send(message)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sender, name)


def _slow_child_main(sender: Any, job: Any, memory_bytes: int, *, delay_s: float) -> None:
    _child_main(_SlowSender(sender, delay_s), job, memory_bytes)


def slow_child_main(delay_s: float) -> Callable[..., None]:
    """A replacement for ``worker.limited._child_main`` whose progress reports each take
    ``delay_s`` longer, inside the child, as a slow model would. Picklable: the forkserver's
    child imports this module to run it."""
    return functools.partial(_slow_child_main, delay_s=delay_s)


class _FreezeRecorder:
    """The limited child's end of its pipe: writes, at the first message, how many objects the
    child's garbage collector has frozen by then (``gc.get_freeze_count``) to ``out``, a file
    opened before the job's sandbox closes the file system."""

    def __init__(self, sender: Any, out: Any) -> None:
        self._sender = sender
        self._out = out

    def send(self, message: Any) -> None:
        import gc

        if not self._out.closed:
            self._out.write(str(gc.get_freeze_count()))
            self._out.close()
        self._sender.send(message)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sender, name)


def _freeze_recording_child_main(sender: Any, job: Any, memory_bytes: int, *, out: Path) -> None:
    with out.open("w") as opened:
        _child_main(_FreezeRecorder(sender, opened), job, memory_bytes)


def freeze_recording_child_main(out: Path) -> Callable[..., None]:
    """A replacement for ``worker.limited._child_main`` that writes to ``out`` the objects its
    garbage collector leaves alone by the job's first report. Picklable, as above."""
    return functools.partial(_freeze_recording_child_main, out=out)


def slow_progress(delay_s: float) -> None:
    """Every limited child started from this process (or its forks) reports slowly."""
    limited._child_main = slow_child_main(delay_s)


def kill_poisoned_jobs(kill_file: Path) -> None:
    """An attempt at a job listed in ``kill_file`` (ids, whitespace-separated, read at every
    progress report) SIGKILLs its own process: a poison job takes down each worker that runs
    it. A cancelled or taken-over attempt stops as usual instead."""
    # Here, not at the top: the limited child imports this module for its slow entry, and
    # needs none of the worker's database side.
    from worker.runner import Attempt

    progress = Attempt.progress

    def poisoned_progress(self: Attempt, phase: str, fraction: float) -> None:
        if not self.aborted.is_set() and kill_file.is_file():
            if self.inputs.job_id in kill_file.read_text().split():
                os.kill(os.getpid(), signal.SIGKILL)
        progress(self, phase, fraction)

    Attempt.progress = poisoned_progress  # type: ignore[method-assign]
