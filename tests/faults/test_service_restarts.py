"""Redis and Postgres restarted under running jobs. Redis here keeps nothing across a restart,
so queued messages vanish with it: the job rows bring them back. Workers must keep consuming
after both restarts, with no job stuck, lost or done twice, and the API answering throughout."""

from __future__ import annotations

from tests.faults.conftest import (
    Cluster,
    Prober,
    assert_end_state,
    postgres_down,
    redis_down,
    submit,
    wait_running,
    wait_terminal,
)


def test_redis_restart_mid_run(cluster: Cluster, http, tenant, job_body):
    before = [submit(http, tenant, job_body) for _ in range(3)]
    wait_running(cluster, before)
    with Prober(cluster.url, tenant, before[0]):
        with redis_down(seconds=2):
            # Accepted while the broker is away: the row is committed, the reaper sends it.
            during = submit(http, tenant, job_body)
        after = [submit(http, tenant, job_body) for _ in range(2)]
        jobs = wait_terminal(http, tenant, [*before, during, *after])
    assert all(job["status"] == "succeeded" for job in jobs.values()), jobs
    assert_end_state(cluster, http, tenant, jobs)
    assert cluster.workers_alive()


def test_postgres_restart_mid_run(cluster: Cluster, http, tenant, job_body):
    before = [submit(http, tenant, job_body) for _ in range(3)]
    wait_running(cluster, before)
    with Prober(cluster.url, tenant, before[0]) as prober:
        with postgres_down(seconds=4):
            down = http.get(f"/v1/jobs/{before[0]}", headers=tenant)
            assert down.status_code == 503, down.text
            assert down.json()["error"] == "unavailable" and down.headers["Retry-After"]
        after = [submit(http, tenant, job_body) for _ in range(2)]
        jobs = wait_terminal(http, tenant, [*before, *after])
    assert any(code == 503 for _, code, _ in prober.answers), "the outage was not seen"
    assert all(job["status"] == "succeeded" for job in jobs.values()), jobs
    assert_end_state(cluster, http, tenant, jobs)
    assert cluster.workers_alive()
