"""Workers lost mid-job: killed again and again (a pool process, or a whole worker like a lost
node), and a poison job that kills every worker that runs it. No job is lost or done twice;
the poison job ends ``failed`` with ``worker_lost`` and its attempt count, after the cap."""

from __future__ import annotations

import os
import signal

from tests.faults.conftest import (
    Cluster,
    Prober,
    assert_end_state,
    submit,
    wait_for,
    wait_running,
    wait_terminal,
)


def test_repeated_sigkill_mid_job(cluster: Cluster, http, tenant, job_body):
    bystanders = [submit(http, tenant, job_body) for _ in range(2)]
    killed: list[str] = []
    with Prober(cluster.url, tenant, bystanders[0]):
        for round_ in range(3):
            # Each round kills a fresh job's first attempt, so none reaches the cap by chance.
            victim = submit(http, tenant, job_body)
            row = wait_running(cluster, [victim])
            pool_pid = int(row.worker.rsplit(":", 1)[1])
            if round_ % 2 == 0:
                os.kill(pool_pid, signal.SIGKILL)  # the pool process; celery's parent lives on
            else:
                slot = cluster.slot_of(pool_pid)
                cluster.kill_worker(slot)  # the whole worker, unacked message and all
                cluster.start_worker(slot)
            killed.append(victim)
        jobs = wait_terminal(http, tenant, [*bystanders, *killed])
    assert all(job["status"] == "succeeded" for job in jobs.values()), jobs
    for job_id in killed:
        assert jobs[job_id]["attempts"] == 2, jobs[job_id]
    assert_end_state(cluster, http, tenant, jobs)
    assert cluster.workers_alive()


def test_poison_job_fails_visibly_after_the_cap(cluster: Cluster, http, tenant, job_body):
    poison = submit(http, tenant, job_body)
    kill_file = cluster.kill_jobs_file
    assert kill_file is not None
    kill_file.write_text(poison)
    try:
        healthy = submit(http, tenant, job_body)
        with Prober(cluster.url, tenant, poison):
            jobs = wait_terminal(http, tenant, [poison, healthy])
    finally:
        kill_file.write_text("")
    cap = cluster.settings.job_max_attempts
    failed = jobs[poison]
    assert failed["status"] == "failed", failed
    assert failed["error"]["kind"] == "worker_lost", failed
    assert failed["attempts"] == cap and f"{cap} times" in failed["error"]["detail"], failed
    assert jobs[healthy]["status"] == "succeeded", jobs[healthy]
    assert_end_state(cluster, http, tenant, jobs)
    # The pool replaced the killed processes: the workers still take work.
    assert cluster.workers_alive()
    after = submit(http, tenant, job_body)
    assert wait_terminal(http, tenant, [after])[after]["status"] == "succeeded"
    wait_for(cluster.workers_alive, 5, "workers alive")
