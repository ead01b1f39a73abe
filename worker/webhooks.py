"""The webhook dispatcher: a thread in every worker's main process (beside the reaper, outside
the pool that runs jobs, so a slow receiver never delays a job and a long job never delays a
webhook). It polls the database for due deliveries; the rows hold all state, so a restarted
worker, or any other worker, carries on where one stopped."""

from __future__ import annotations

import logging
import threading

from app.webhooks.delivery import deliver_due
from worker.runtime import Runtime

log = logging.getLogger("qaas.webhooks")


class Dispatcher(threading.Thread):
    def __init__(self, runtime: Runtime) -> None:
        super().__init__(name="qaas-webhooks", daemon=True)
        self.runtime = runtime
        self.stopped = threading.Event()

    def run(self) -> None:
        interval = self.runtime.settings.webhook_poll_interval_s
        while not self.stopped.wait(interval):
            try:
                deliver_due(self.runtime.sessions, self.runtime.settings)
            except Exception:
                log.exception("webhook pass failed; trying again next interval")
