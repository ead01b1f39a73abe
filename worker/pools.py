"""A worker's place in the pools (``app.jobs.routing``): the device it computes on, found once
at start, and a heartbeat that keeps its ``workers`` row (queues, device, last seen) fresh so
the API routes gpu jobs only while a gpu worker is alive."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

from app.core.config import Settings
from app.core.db import transaction, utcnow
from app.core.queue import pool_of_queue
from app.jobs.tables import Worker
from worker.runtime import Runtime

log = logging.getLogger("qaas.worker")
CPU_DEVICE = "cpu"
DETECT_TIMEOUT_S = 120.0
# Run in a child so this process never initializes CUDA: the pool's children are forked from it.
_PROBE = (
    "import json, torch\n"
    "cuda = torch.cuda.is_available()\n"
    "print(json.dumps(f'cuda:0 ({torch.cuda.get_device_name(0)})' if cuda else 'cpu'))\n"
)


def nvidia_driver_present() -> bool:
    return any(Path("/dev").glob("nvidia[0-9]*")) or shutil.which("nvidia-smi") is not None


def detect_device() -> str:
    """ "cpu", or "cuda:0 (<name>)" when torch sees a CUDA device (as the engine's learning
    steps will). Without an NVIDIA driver on the machine torch is not even asked."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return CPU_DEVICE
    if not nvidia_driver_present():
        return CPU_DEVICE
    try:
        done = subprocess.run(
            [sys.executable, "-c", _PROBE],
            capture_output=True,
            text=True,
            timeout=DETECT_TIMEOUT_S,
            check=True,
        )
        device = json.loads(done.stdout.strip().splitlines()[-1])
    except (subprocess.SubprocessError, OSError, ValueError, IndexError) as error:
        log.warning("could not ask torch for a CUDA device (%s); computing on the cpu", error)
        return CPU_DEVICE
    return str(device)


class WorkerBeat(threading.Thread):
    """Writes this worker's row now and every ``worker_heartbeat_s``; deletes it on stop."""

    def __init__(self, runtime: Runtime, name: str, queues: list[str], device: str) -> None:
        super().__init__(name="qaas-worker-beat", daemon=True)
        self.runtime = runtime
        self.worker = name
        self.queues = sorted(queues)
        self.device = device
        self.stopped = threading.Event()
        self.started_at = utcnow()

    @property
    def consumes_gpu(self) -> bool:
        """Whether this is a gpu worker: it consumes the gpu queue and has a CUDA device (one
        without a device still takes what is in that queue, but routing does not count it)."""
        settings: Settings = self.runtime.settings
        gpu_queue = any(pool_of_queue(settings, queue) == "gpu" for queue in self.queues)
        return gpu_queue and self.device != CPU_DEVICE

    def beat(self) -> None:
        with transaction(self.runtime.sessions) as session:
            session.merge(
                Worker(
                    name=self.worker,
                    hostname=socket.gethostname(),
                    pid=os.getpid(),
                    queues=self.queues,
                    consumes_gpu=self.consumes_gpu,
                    device=self.device,
                    started_at=self.started_at,
                    last_seen_at=utcnow(),
                )
            )

    def forget(self) -> None:
        """This worker stops: routing should not count it for the rest of its freshness."""
        with transaction(self.runtime.sessions) as session:
            row = session.get(Worker, self.worker)
            if row is not None:
                session.delete(row)

    def run(self) -> None:
        if not self.consumes_gpu and any(
            pool_of_queue(self.runtime.settings, queue) == "gpu" for queue in self.queues
        ):
            log.warning(
                "this worker consumes the gpu queue but has no CUDA device: it takes the jobs "
                "already there, and routing sends no new ones for it"
            )
        while True:
            try:
                self.beat()
            except Exception:  # a database blip: the next beat tries again
                log.warning("worker heartbeat failed", exc_info=True)
            if self.stopped.wait(self.runtime.settings.worker_heartbeat_s):
                break
        try:
            self.forget()
        except Exception:
            log.warning("could not remove this worker's row; it ages out", exc_info=True)
