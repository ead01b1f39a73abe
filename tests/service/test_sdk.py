"""The SDK (``import qaas``) and the CLI built on it, against a real API server process and a
real worker (Postgres, Redis): typed objects, waiting with progress and queue position,
download, listing, cancel and delete, the error classes, Retry-After, the configuration file;
``qaas submit --wait`` interrupted by SIGINT leaves its job running for ``qaas wait``."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
import uuid

import pytest

import qaas
from app.cli import main as cli_main
from app.core.db import run_migrations
from tests.service.conftest import (
    REPO,
    scratch_database,
    start_api,
    start_worker,
    stop_process,
    wait_for,
)

ARTIFACTS = {"model.quant.onnx", "encodings.json", "report.json", "report.html"}


@pytest.fixture(scope="module")
def sdk_settings(settings):
    """The session's database, a queue of this module's own (no other module's jobs ahead)."""
    return settings.model_copy(update={"queue": f"{settings.queue}-sdk"})


@pytest.fixture(scope="module")
def server(sdk_settings, tmp_path_factory):
    process, url = start_api(sdk_settings, tmp_path_factory.mktemp("api") / "api.log")
    yield url
    stop_process(process)


@pytest.fixture(scope="module")
def worker(sdk_settings, tmp_path_factory):
    # every progress report sleeps a little, so a test can act while a job runs or waits
    log = tmp_path_factory.mktemp("worker") / "worker.log"
    process = start_worker(sdk_settings, log, phase_delay_s=0.2)
    yield process
    stop_process(process)


@pytest.fixture(scope="module")
def key(sessions):
    from app.auth.service import AuthService
    from app.core.db import transaction

    with transaction(sessions) as session:
        _, api_key = AuthService(session=session).create_key(tenant_name="sdk-user")
    return api_key


@pytest.fixture
def env(server, key, monkeypatch, tmp_path):
    """``QAAS_URL``/``QAAS_API_KEY`` set, and a configuration folder of this test's own."""
    monkeypatch.setenv("QAAS_URL", server)
    monkeypatch.setenv("QAAS_API_KEY", key)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    return {**os.environ, "PYTHONWARNINGS": "ignore"}


@pytest.fixture
def client(env):
    with qaas.Client() as sdk:  # from the environment
        yield sdk


def running(job: qaas.Job) -> qaas.Job:
    return wait_for(lambda: job.refresh().status == "running" and job, 120, f"{job.id} to run")


def test_the_sdk_imports_only_httpx_and_pydantic():
    # qaas's names resolve on first use (a local `qaas quantize` never loads httpx): use one
    code = (
        "import sys, qaas; qaas.Client; "
        "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    loaded = set(subprocess.check_output([sys.executable, "-c", code], text=True).split())
    assert {"qaas", "httpx", "pydantic"} <= loaded
    heavy = {"app", "worker", "qaas_engine", "torch", "numpy", "onnx", "fastapi", "sqlalchemy"}
    assert not loaded & heavy  # (rich may come: httpx imports it when it is installed)


def test_upload_submit_wait_download_list(client, worker, tiny_model, tiny_data, tmp_path):
    calibration, evaluation = tiny_data
    model = client.upload_model(tiny_model)
    assert isinstance(model, qaas.Model) and model.filename == "tiny.onnx"
    assert model.sha256 == hashlib.sha256(tiny_model.read_bytes()).hexdigest()
    assert model.inputs[0].shape == [None, 1, 8, 8]
    evaluation_set = client.upload_dataset(evaluation)
    assert isinstance(evaluation_set, qaas.Dataset) and evaluation_set.arrays["labels"].shape

    # a model object, a path uploaded on the way, a dataset object
    job = client.submit(model, calibration=calibration, evaluation=evaluation_set)
    assert isinstance(job, qaas.Job) and job.status == "queued"
    assert job.quantization["weight_bits"] == 8 and job.quantization["activation_bits"] == 8
    seen: list[tuple[str, float]] = []
    job.wait(timeout=240, progress=lambda j: seen.append((j.status, j.overall_progress)))
    assert job.status == "succeeded" and job.overall_progress == 1.0
    fractions = [fraction for status, fraction in seen if status == "running"]
    assert any(0 < f < 1 for f in fractions), seen
    assert fractions == sorted(fractions), "overall progress went backwards"

    assert job.report["metrics"]["onnxruntime"]["sqnr_db"] > 20
    files = job.download(tmp_path / "out")
    assert set(files) == ARTIFACTS == {a.name for a in job.artifacts}
    for artifact in job.artifacts:
        assert hashlib.sha256(files[artifact.name].read_bytes()).hexdigest() == artifact.sha256

    again = client.get_job(job.id)
    assert again.status == "succeeded" and again.model_id == model.id
    assert [m.id for m in client.models(limit=1)] == [model.id]  # newest first
    assert all(j.status == "succeeded" for j in client.jobs(status="succeeded"))


def test_listing_follows_the_cursor(client, tiny_model):
    """Pages of two, followed through X-Next-Cursor, give what one page gives."""
    model = client.upload_model(tiny_model)
    submitted = [client.submit(model, activations="float") for _ in range(3)]
    for job in submitted:
        job.cancel()
    newest = [job.id for job in reversed(submitted)]
    whole = [job.id for job in client.jobs(limit=5)]
    paged = [job.id for job in client.jobs(limit=5, page_size=2)]
    assert paged == whole and whole[:3] == newest
    every = [job.id for job in client.jobs(page_size=2)]
    assert len(every) == len(set(every)) and every[:3] == newest
    cancelled = list(client.jobs(status=["cancelled", "failed"], page_size=1, limit=3))
    assert [job.id for job in cancelled] == newest


def test_queue_position_cancel_delete(client, worker, tiny_model, tiny_data):
    model = client.upload_model(tiny_model)
    calibration = client.upload_dataset(tiny_data[0])
    first = running(client.submit(model, calibration=calibration))
    assert first.queue_position is None
    second = client.submit(model, calibration=calibration)
    third = client.submit(model.id, calibration=calibration.id)  # ids work as well
    assert second.queue_position is not None and second.queue_position >= 1
    assert third.queue_position == second.queue_position + 1

    third_was = third.queue_position
    assert second.cancel().status == "cancelled" and second.queue_position is None
    assert third.refresh().queue_position == third_was - 1  # one fewer ahead of it
    with pytest.raises(qaas.JobFailed) as failed:
        second.wait(progress=False)
    assert failed.value.job.status == "cancelled" and failed.value.code == "cancelled"

    with pytest.raises(qaas.WaitTimeout):
        third.wait(timeout=0.5, progress=False)
    first.delete()
    with pytest.raises(qaas.NotFound) as missing:
        client.get_job(first.id)
    assert missing.value.status == 404 and missing.value.client_fault
    third.cancel()


def test_error_classes(client, server, tiny_model):
    with qaas.Client(server, "qaas_not-a-key") as stranger, pytest.raises(qaas.AuthError):
        stranger.whoami()
    with pytest.raises(qaas.InvalidRequest) as bad:
        client.submit(tiny_model, activations="float", pipeline="magic")
    assert bad.value.status == 422 and "magic" in bad.value.detail
    model = client.upload_model(tiny_model)
    key = f"sdk-{uuid.uuid4()}"
    job = client.submit(model, activations="float", idempotency_key=key)
    assert client.submit(model, activations="float", idempotency_key=key).id == job.id
    with pytest.raises(qaas.Conflict):
        client.submit(model, activations="float", weights="int4", idempotency_key=key)
    job.cancel()
    # a whole spec as a dict comes before weights/activations, **options after it
    spec = {"weight_bits": 4, "activation_bits": None, "batch_size": 8}
    custom = client.submit(model, quantization=spec, batch_size=16, pipeline="cle")
    assert (
        custom.quantization["weight_bits"] == 4 and custom.quantization["activation_bits"] is None
    )
    assert custom.quantization["batch_size"] == 16 and custom.quantization["pipeline"] == ["cle"]
    custom.cancel()
    with qaas.Client("http://127.0.0.1:9", "k", max_retries=1) as nowhere:
        with pytest.raises(qaas.ConnectionFailed) as unreachable:
            nowhere.whoami()
    assert unreachable.value.status == 0 and isinstance(unreachable.value, qaas.QaasError)


def test_retry_after_is_honoured(settings, key, tmp_path):
    """A real 429 with Retry-After: the API's throttle of wrong keys, at one failure in 2 s,
    on a database of this test's own (the throttle counts per address)."""
    with scratch_database("qaas_sdk_throttle") as url:
        throttled = settings.model_copy(
            update={"database_url": url, "auth_failure_limit": 1, "auth_failure_window_s": 2.0}
        )
        run_migrations(throttled)
        from app.auth.service import AuthService
        from app.core.db import make_engine, make_sessionmaker, transaction

        engine = make_engine(throttled, pooled=False)
        with transaction(make_sessionmaker(engine)) as session:
            _, own_key = AuthService(session=session).create_key(tenant_name="throttled")
        engine.dispose()
        process, server = start_api(throttled, tmp_path / "api.log")
        try:
            with qaas.Client(server, "qaas_wrong") as wrong, pytest.raises(qaas.AuthError):
                wrong.whoami()
            with qaas.Client(server, own_key, max_retries=0) as impatient:
                with pytest.raises(qaas.RateLimited) as limited:
                    impatient.whoami()
            assert 0 < limited.value.retry_after <= 2
            with qaas.Client(server, own_key) as patient:
                start = time.monotonic()
                assert patient.whoami()["name"] == "throttled"  # after waiting it out
                assert time.monotonic() - start >= 0.5
        finally:
            stop_process(process)


def test_configure_writes_a_private_file_the_client_reads(server, key, tmp_path, monkeypatch):
    for name in ("QAAS_URL", "QAAS_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    assert cli_main(["configure", "--url", server, "--api-key", key]) == 0
    path = tmp_path / "config" / "qaas" / "config.toml"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with qaas.Client() as configured:
        assert configured.url == server and configured.whoami()["name"] == "sdk-user"
    # the file's key is never sent to a server named elsewhere
    monkeypatch.setenv("QAAS_URL", "http://127.0.0.1:9")
    with qaas.Client() as elsewhere:
        assert "authorization" not in elsewhere.api.http.headers
    assert cli_main(["configure", "--url", server, "--api-key", "qaas_wrong"]) == 2


def test_cli_reuses_uploads_and_exits_by_job_state(
    env, client, worker, tiny_model, tiny_data, tmp_path, capsys
):
    model = client.upload_model(tiny_model)
    calibration = client.upload_dataset(tiny_data[0])
    argv = ["submit", "--model-id", model.id, "--calibration-id", calibration.id, "--json"]
    key = f"cli-{uuid.uuid4()}"
    assert cli_main([*argv, "--idempotency-key", key, "--wait", "-o", str(tmp_path / "o")]) == 0
    done = json.loads(capsys.readouterr().out)
    assert done["status"] == "succeeded" and done["model_id"] == model.id
    assert set(done["files"]) == ARTIFACTS
    assert cli_main([*argv, "--idempotency-key", key]) == 0  # the same job, not a new one
    assert json.loads(capsys.readouterr().out)["id"] == done["id"]
    assert cli_main(["status", done["id"]]) == 0
    assert capsys.readouterr().out.startswith(f"{done['id']}  succeeded")

    assert cli_main([*argv]) == 0
    queued = json.loads(capsys.readouterr().out)["id"]
    assert cli_main(["cancel", queued]) == 0
    capsys.readouterr()
    assert cli_main(["status", queued, "--json"]) == 4  # cancelled is not success
    assert json.loads(capsys.readouterr().out)["status"] == "cancelled"
    assert cli_main(["jobs", "list", "--status", "cancelled", "--limit", "50", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert queued in [j["id"] for j in listed] and {j["status"] for j in listed} == {"cancelled"}
    assert cli_main(["jobs", "list", "--limit", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("ID") and len(lines) == 3 and lines[1].startswith(queued)
    assert cli_main(["status", "0" * 32]) == 2
    assert cli_main(["submit", str(tiny_model), "--model-id", model.id]) == 2


def test_ctrl_c_leaves_the_job_running(env, client, worker, tiny_model, tiny_data):
    # One worker, one job at a time: slow jobs ahead (calibration in batches of one, each
    # progress report 0.2 s late) keep the CLI's job queued while it is interrupted; three of
    # them, so a slow CLI start or upload (a loaded machine, the object store) cannot outlast
    # them
    blockers = [client.submit(tiny_model, calibration=tiny_data[0], batch_size=1) for _ in "abc"]
    running(blockers[0])
    # As from a terminal: a pass run in the background of a non-interactive shell (scripts/
    # test.sh's S3 pass) inherits SIGINT ignored, and Python then installs no Ctrl-C handler
    process = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "submit", str(tiny_model), "--calibration",
         str(tiny_data[0]), "--evaluation", str(tiny_data[1]), "--wait"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    lines: list[str] = []

    def read() -> None:
        for line in process.stderr:
            lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        printed = wait_for(
            lambda: next((line for line in lines if "qaas wait " in line), None), 120, "job id"
        )
        job = client.get_job(printed.split("qaas wait ")[1].strip())
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 130
    finally:
        if process.poll() is None:
            process.kill()
    reader.join(timeout=10)
    assert f"qaas wait {job.id}" in lines[-1], lines
    assert "Traceback" not in "".join(lines)
    assert job.refresh().status == "queued"  # the Ctrl-C left it alone
    for blocker in blockers:
        with contextlib.suppress(qaas.errors.Conflict):  # one that already finished
            blocker.cancel()
    follow = subprocess.run(
        [sys.executable, "-m", "app.cli", "wait", job.id, "--json", "--timeout", "240"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert follow.returncode == 0, follow.stderr
    assert json.loads(follow.stdout)["status"] == "succeeded"
