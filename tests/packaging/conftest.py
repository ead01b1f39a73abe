"""A wheel built from this checkout, installed (not editable) in a fresh venv, and its
``qaas serve`` started from an empty folder: fixtures for tests of what a ``pip install`` user
gets. Nothing is downloaded: the wheel is built without build isolation, installed with
``--no-deps``, and the new venv sees this venv's dependencies through a ``.pth`` path line (a
bare directory on ``sys.path``; the editable install's finder is not activated by it)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
import venv
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.service.conftest import free_port

CHECKOUT = Path(__file__).resolve().parents[2]
SOURCES = ("app", "worker", "qaas_engine", "qaas", "pyproject.toml", "README.md")
START_TIMEOUT_S = 90
# The end-to-end test's webhook receiver listens on loopback, and waits for its delivery.
SERVE_ENV = {"QAAS_WEBHOOK_ALLOW_PRIVATE": "1", "QAAS_WEBHOOK_POLL_INTERVAL_S": "0.2"}


def build_wheel(into: Path) -> Path:
    """Built from a copy of the sources, so no build/ or stale files of the checkout leak in."""
    source = into / "source"
    source.mkdir()
    for name in SOURCES:
        origin = CHECKOUT / name
        if origin.is_dir():
            ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
            shutil.copytree(origin, source / name, ignore=ignore)
        else:
            shutil.copy2(origin, source / name)
    wheels = into / "wheels"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(source)],
        check=True,
        capture_output=True,
    )
    (wheel,) = wheels.glob("qaas_service-*.whl")
    return wheel


def fresh_venv(path: Path, wheel: Path) -> Path:
    """A venv holding only the wheel; this venv's site-packages is appended as a path line."""
    venv.create(path, with_pip=False)
    python = path / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", "--python",
         str(python), "install", "--no-deps", "--no-index", str(wheel)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    # Written after the install, so pip never sees the checkout's editable qaas-service.
    (Path(site) / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


def clean_env() -> dict[str, str]:
    drop = ("QAAS_", "PYTHONPATH", "VIRTUAL_ENV")
    return {k: v for k, v in os.environ.items() if not k.startswith(drop)}


@pytest.fixture(scope="session")
def installed(tmp_path_factory) -> Path:
    """The fresh venv's python, the wheel installed in it."""
    root = tmp_path_factory.mktemp("wheel")
    return fresh_venv(root / "venv", build_wheel(root))


@pytest.fixture(scope="session")
def served(installed, tmp_path_factory) -> Iterator[tuple[str, str]]:
    """The installed ``qaas serve`` started in an empty folder: (base URL, API key)."""
    folder = tmp_path_factory.mktemp("empty")
    port = free_port()
    log = folder.parent / "serve.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [str(installed.parent / "qaas"), "serve", "--port", str(port)],
            cwd=folder,
            env={**clean_env(), **SERVE_ENV},
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        key = wait_for_key(log, url, process)
        yield url, key
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    assert (folder / "qaas-data").is_dir(), "the embedded default keeps its data in ./qaas-data"


def wait_for_key(log: Path, url: str, process: subprocess.Popen[bytes]) -> str:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"qaas serve exited with {process.returncode}:\n{log.read_text()}")
        found = re.search(r"export QAAS_API_KEY=(\S+)", log.read_text())
        if found:
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    return found.group(1)
            except httpx.TransportError:
                pass
        time.sleep(0.5)
    pytest.fail(f"qaas serve did not answer within {START_TIMEOUT_S} s:\n{log.read_text()}")
