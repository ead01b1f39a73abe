"""A local S3-compatible server for the tests: moto's server (``python -m moto.server``) in a
process of its own, so the API, the workers and the test process all reach it over HTTP as they
would MinIO or S3. ``use_s3_if_asked`` puts the suite in S3 mode when ``QAAS_STORAGE_URL`` is an
``s3://`` URL and no endpoint is set: it starts the server, points the AWS variables at it and
makes the bucket."""

from __future__ import annotations

import atexit
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import boto3
import httpx

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def s3_server() -> Iterator[str]:
    """A fresh moto server; yields its endpoint URL."""
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{endpoint}/moto-api/", timeout=1)
                break
            except httpx.TransportError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the moto S3 server did not start") from None
                time.sleep(0.1)
        yield endpoint
    finally:
        process.terminate()
        process.wait(timeout=10)


def make_bucket(endpoint: str, bucket: str) -> None:
    client = boto3.client("s3", endpoint_url=endpoint, **_lowercase(CREDENTIALS))
    client.create_bucket(Bucket=bucket)


def _lowercase(variables: dict[str, str]) -> dict[str, str]:
    return {
        "aws_access_key_id": variables["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": variables["AWS_SECRET_ACCESS_KEY"],
        "region_name": variables["AWS_DEFAULT_REGION"],
    }


def use_s3_if_asked() -> None:
    """Called from the service and fault suites' ``pytest_configure``: once per process."""
    url = os.environ.get("QAAS_STORAGE_URL", "")
    if not url.startswith("s3://") or os.environ.get("QAAS_TEST_S3_STARTED"):
        return
    if os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3"):
        return  # a store of the caller's own (MinIO, say): its bucket must exist
    server = s3_server()
    endpoint = server.__enter__()
    atexit.register(server.__exit__, None, None, None)
    os.environ.update(CREDENTIALS, AWS_ENDPOINT_URL=endpoint, QAAS_TEST_S3_STARTED="1")
    make_bucket(endpoint, url.removeprefix("s3://").partition("/")[0])
