"""The untrusted part of a job — import, calibration, pipeline steps and export — in a child
process with the limits upload checks use (``app.core.limits``): an address-space cap and a
wall-clock deadline. A model that exhausts either costs one child, never the worker; the job
then fails as ``resource_limit`` and names the limit.

Children are forked from a forkserver that has imported the engine once, so a job starts in
milliseconds, from a process that never ran a torch thread pool (forking one that has can
deadlock). The child reports progress over a pipe; the parent (the Celery pool process) keeps
the row, the lease and the cancel check, and kills the child when the job stops being its own.
"""

from __future__ import annotations

import gc
import logging
import os
import pickle
import resource
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from billiard.connection import Connection

from app.core.errors import InsufficientStorage, is_storage_full
from app.core.limits import (
    is_out_of_memory,
    limit_process,
    memory_limit_detail,
    time_limit_detail,
)
from app.core.sandbox import Confinement, confine
from app.core.storage import LocalStorage
from qaas_engine.errors import QaasInputError

log = logging.getLogger("qaas.worker")
POLL_S = 0.25
WHAT = "the quantization process"
# Imported once by the forkserver, not by every job (``qaas_engine`` itself loads lazily); a
# name that no longer exists is skipped by the forkserver, and then imported by the child.
PRELOAD = [
    "qaas_engine.importer",
    "qaas_engine.data",
    "qaas_engine.spec",
    "qaas_engine.job",
    "qaas_engine.steps.float_steps",
    "qaas_engine.steps.bias_correction",
    "qaas_engine.steps.adaround",
    "qaas_engine.steps.training",
    "qaas_engine.graph.executor",  # the torch executor learning steps build
    # torch.optim's first optimizer imports torch._dynamo (1.6 s of CPU): once, not per QAT job
    "torch._dynamo",
    "numpy.ma",  # imported on first use by numpy's quantile (the fidelity bootstrap)
    "qaas_engine.auto",
    "qaas_engine.artifacts.html",
    "qaas_engine.reporting.latency",
    "onnxruntime",
    "worker.limited",
    "app.core.sandbox",
]


@dataclass(frozen=True)
class Limits:
    memory_bytes: int
    time_s: float | None


@dataclass(frozen=True)
class ChildJob:
    """Everything the child needs; plain data, sent to it pickled."""

    model_path: Path
    data_paths: dict[str, Path | None]
    spec: dict[str, Any]
    energy_profile: dict[str, Any] | None
    staged: Path
    storage_root: Path
    storage_min_free_bytes: int
    sandbox: bool = True
    keep_out: tuple[Path, ...] = ()  # the data folders: never readable as part of the runtime
    max_dataset_expanded_bytes: int | None = None
    max_accuracy_drop: float | None = None  # the job's target, a fraction of top-1
    threads: int | None = None  # intra-op threads (ORT and torch); None: QAAS_THREADS or all

    def confinement(self) -> Confinement:
        """The model's folder (its external data sits beside it) and the data files to read;
        the staging folder for the artifacts to write."""
        data = tuple(path for path in self.data_paths.values() if path is not None)
        return Confinement(
            read=(self.model_path.parent, *data), write=(self.staged,), keep_out=self.keep_out
        )


class JobFailed(Exception):
    """The job's own fault or limit: ``kind`` becomes the row's ``error_kind``."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail


def run_limited(
    job: ChildJob,
    limits: Limits,
    progress: Callable[[str, float], None],
    check: Callable[[], None],
) -> dict[str, Any]:
    """Quantize in a limited child; return what it saved (``report``, ``written`` names and
    timings). Raises ``JobFailed``, or whatever ``progress`` or ``check`` (called while the
    child is quiet) raise, the child then killed."""
    context = _context()
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(
        target=_child_main, args=(sender, job, limits.memory_bytes), name="qaas-job"
    )
    child.start()
    sender.close()  # the child holds the only writer: its exit is our EOF
    deadline = None if limits.time_s is None else time.monotonic() + limits.time_s
    try:
        while True:
            wait = POLL_S if deadline is None else min(POLL_S, deadline - time.monotonic())
            if wait <= 0:
                raise JobFailed("resource_limit", time_limit_detail(WHAT, limits.time_s or 0))
            if not receiver.poll(wait):
                check()
                continue
            try:
                message = receiver.recv()
            except EOFError:
                child.join(5)
                raise _died(child.exitcode, limits) from None
            if message[0] == "progress":
                progress(message[1], message[2])
            elif message[0] == "done":
                return message[1]
            else:  # ("failed", kind, detail)
                raise JobFailed(message[1], message[2])
    finally:
        receiver.close()
        if child.is_alive():
            os.kill(child.pid, signal.SIGKILL)  # billiard's Process has no kill()
        child.join(10)


def _died(exitcode: int | None, limits: Limits) -> JobFailed:
    """The child ended without a word. The forkserver hides how (a signal or ``os._exit``
    reads as status 255), but a crash that leaves no report is, far more often than not, the
    kernel's OOM kill or an allocation that failed even for the report."""
    return JobFailed(
        "resource_limit",
        f"{WHAT} ended without reporting (exit status {exitcode}), most likely past the "
        f"memory limit of {limits.memory_bytes} bytes ({limits.memory_bytes >> 20} MiB)",
    )


_forkserver: Any = None
_forkserver_lock = threading.Lock()


def _context() -> Any:
    global _forkserver
    with _forkserver_lock:
        if _forkserver is None:
            # billiard's (Celery's fork of multiprocessing): the standard library refuses
            # children to Celery's daemonic pool processes, and chokes on billiard's process
            # objects.
            import billiard

            _forkserver = billiard.get_context("forkserver")
            _forkserver.set_forkserver_preload(PRELOAD)
    return _forkserver


def warm_up() -> None:
    """Start the forkserver and let it import the engine now (2-3 s of CPU), when the worker
    starts, rather than in its first job: one trivial child is run to the end. A job that
    comes meanwhile waits on the same start (billiard locks it), so this may run in a thread."""
    child = _context().Process(target=_nothing, name="qaas-warm-up")
    child.start()
    child.join()
    if child.exitcode != 0:
        log.warning("job forkserver warm-up: the child ended with status %s", child.exitcode)


def _nothing() -> None:
    return None


# the child
def _child_main(sender: Connection, job: ChildJob, memory_bytes: int) -> None:
    # What the forkserver imported is never garbage: without this the child's first full
    # collection walks all of it (torch and the engine, millions of objects), 0.3 s of CPU
    # per job, and touches every page it walks, copying them.
    gc.freeze()
    # Made before the cap: once memory is gone, even this report could not be built.
    out_of_memory = pickle.dumps(
        ("failed", "resource_limit", memory_limit_detail(WHAT, memory_bytes))
    )
    limit_process(memory_bytes)
    if job.threads is not None:
        use_threads(job.threads)
    try:
        if job.sandbox:
            refused = confine(job.confinement())
            if refused:
                log.warning("job sandbox: the kernel refused %s", ", ".join(refused))
        sender.send(("done", _quantize_and_save(job, sender)))
    except BaseException as error:  # noqa: BLE001 -- everything is reported, nothing raised
        _report_failure(sender, error, out_of_memory)
    finally:
        sender.close()


def use_threads(threads: int) -> None:
    """This process's ORT sessions and torch run ``threads`` intra-op threads: torch's pool
    if the forkserver already loaded it, else the variables torch and OpenMP read at import."""
    from qaas_engine.sessions import set_thread_count

    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[variable] = str(threads)
    set_thread_count(threads)


def _report_failure(sender: Connection, error: BaseException, out_of_memory: bytes) -> None:
    try:
        if is_out_of_memory(error) or not _can_allocate():
            sender.send_bytes(out_of_memory)
            return
        if isinstance(error, QaasInputError):
            message = ("failed", "invalid_input", str(error))
        elif isinstance(error, InsufficientStorage):
            message = ("failed", "storage_full", error.detail)
        elif is_storage_full(error):
            message = ("failed", "storage_full", STORAGE_FILLED_UP)
        else:
            traceback.print_exception(error, file=sys.stderr)
            message = ("failed", "internal", f"internal error ({type(error).__name__})")
        sender.send(message)
    except BaseException:  # noqa: BLE001
        # Building and sending a few short strings fails only for want of memory (or because
        # the parent is gone, and then nobody reads it).
        try:
            sender.send_bytes(out_of_memory)
        except BaseException:  # noqa: BLE001
            os._exit(1)


def _can_allocate(probe_bytes: int = 4 * 1024 * 1024) -> bool:
    """Out of memory, an import can fail as a bogus SyntaxError or ImportError: if a few MiB
    cannot be had even now that the failed work is unwound, the limit is what stopped it."""
    try:
        bytearray(probe_bytes)
    except MemoryError:
        return False
    return True


STORAGE_FILLED_UP = (
    "the server's storage filled up while the job's artifacts were written; nothing was kept. "
    "Submit the job again later; if it persists, the operator must free space in the storage "
    "folder (QAAS_STORAGE_DIR)"
)


def _quantize_and_save(job: ChildJob, sender: Connection) -> dict[str, Any]:
    from qaas_engine import QuantSpec
    from qaas_engine import job as engine_job

    def progress(phase: str, fraction: float) -> None:
        sender.send(("progress", phase, fraction))

    storage = LocalStorage(job.storage_root, min_free_bytes=job.storage_min_free_bytes)
    saved = engine_job.run(
        job.model_path,
        job.data_paths,
        QuantSpec.model_validate(job.spec),
        job.staged,
        progress=progress,
        energy_profile=job.energy_profile,
        max_accuracy_drop=job.max_accuracy_drop,
        max_dataset_expanded_bytes=job.max_dataset_expanded_bytes,
        before_save=lambda: storage.ensure_space(0, "the job's artifacts"),
    )
    return {"report": saved.report, "written": sorted(saved.written), "cpu_s": _own_cpu_s()}


def _own_cpu_s() -> float:
    """This process's CPU time since the fork, with any children it waited for. The worker
    cannot measure it: the forkserver ignores SIGCHLD, so the kernel discards the usage of the
    children it forks instead of adding it to anyone's."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    waited = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + waited.ru_utime + waited.ru_stime
