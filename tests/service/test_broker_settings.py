"""The Celery settings the at-least-once design depends on, checked against each other: a
visibility timeout under the hard time limit would hand a running job to a second worker."""

from __future__ import annotations

from app.core.config import Settings
from app.core.queue import make_celery


def test_broker_settings_fit_the_longest_job(tmp_path):
    for time_limit in (60, 3600, 6 * 3600):
        settings = Settings(data_dir=tmp_path, job_time_limit_s=time_limit)
        conf = make_celery(settings).conf
        assert conf.task_soft_time_limit == time_limit
        assert conf.task_time_limit > conf.task_soft_time_limit
        assert conf.broker_transport_options["visibility_timeout"] > conf.task_time_limit
        assert conf.worker_prefetch_multiplier == 1
        assert conf.task_acks_late and conf.task_reject_on_worker_lost
        # the lease is what detects a lost worker; it must be far shorter than the hard limit
        assert settings.job_lease_s < conf.task_time_limit
