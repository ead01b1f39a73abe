"""What ``Job.wait(progress=True)`` prints to stderr with no dependency beyond the standard
library: one self-overwriting line on a terminal, a line per change of phase or quarter
otherwise (logs, CI). The CLI passes its own (rich) bar instead."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from qaas.types import JobInfo


def describe(job: JobInfo) -> str:
    """``queued (position 2)``, ``running: calibration``..."""
    if job.status == "queued":
        where = f" (position {job.queue_position})" if job.queue_position else ""
        return f"queued{where}"
    if job.status == "running":
        return f"running: {job.phase}" if job.phase else "running"
    return job.status


class TextProgress:
    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.last: tuple[str, int] | None = None

    def __call__(self, job: JobInfo) -> None:
        percent = int(100 * job.overall_progress)
        state = describe(job)
        shown = (state, percent if self.tty else percent // 25 * 25)
        if shown == self.last:
            return
        self.last = shown
        if self.tty:
            self.stream.write(f"\r{job.id}  {percent:3d}%  {state:<40.40}")
            if job.status in ("succeeded", "failed", "cancelled"):
                self.stream.write("\n")
        else:
            self.stream.write(f"{job.id} {shown[1]}% {state}\n")
        self.stream.flush()
