"""How many threads a job may use: this machine's cores shared among the job slots on it.

A job's ONNX Runtime and torch passes default to every core. One job at a time on a machine,
that is the fastest; two workers on two cores, each job with two threads, oversubscribe the
cores (ORT's pool threads spin while they wait, so the second worker's threads steal time from
the first's) and two workers run no faster than one. So each job gets ``cores // slots``
threads, ``slots`` being the job slots of the live workers on this host (their ``workers``
rows with this hostname, times this worker's concurrency): one worker alone keeps every core,
and adding workers divides them. ``QAAS_THREADS``, when the operator sets it, wins.
"""

from __future__ import annotations

import os
import socket
from datetime import timedelta
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.core.db import utcnow
from app.jobs.tables import Worker

# qaas_engine.sessions.THREADS_ENV, named here so the pool process need not import the engine's
# ONNX Runtime side (the job's child does).
THREADS_ENV = "QAAS_THREADS"

CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
# A row older than this many heartbeats belongs to a worker that died without removing it.
FRESH_HEARTBEATS = 3


def machine_cores(cpu_max: Path = CGROUP_CPU_MAX) -> int:
    """The cores this process may run on: its CPU affinity, capped by a cgroup v2 CPU quota
    (a container limited to ``--cpus 2`` on a 64-core host has 2)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = cores or 1
    try:
        quota, period = cpu_max.read_text().split()[:2]
    except (OSError, ValueError):
        return cores
    if quota == "max":
        return cores
    try:
        return max(1, min(cores, int(quota) // int(period)))
    except (ValueError, ZeroDivisionError):
        return cores


def share(cores: int, slots: int) -> int:
    """Threads per job when ``slots`` jobs may run at once on ``cores`` cores: never fewer than
    one, and never more than the cores."""
    return max(1, min(cores, cores // max(1, slots)))


def slots_on_host(session: Session, heartbeat_s: float, concurrency: int) -> int:
    """The job slots of the live workers on this host, this one included."""
    since = utcnow() - timedelta(seconds=FRESH_HEARTBEATS * heartbeat_s)
    query = select(func.count()).where(
        Worker.hostname == socket.gethostname(), Worker.last_seen_at >= since
    )
    nodes = int(session.scalar(query) or 0)
    return max(1, nodes) * max(1, concurrency)


def job_threads(session: Session, heartbeat_s: float, concurrency: int) -> int | None:
    """The threads for the job about to start; None when ``QAAS_THREADS`` decides."""
    if os.environ.get(THREADS_ENV, "").strip():
        return None
    return share(machine_cores(), slots_on_host(session, heartbeat_s, concurrency))
