"""The sandbox a child enters before it touches an upload: what it may still do, and what the
kernel now refuses it. Runs a real confined child (forked), on this machine's kernel."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

from app.core.sandbox import Confinement, confine


def _probe(confinement: Confinement, paths: dict[str, Path]) -> dict:
    """Fork, confine, try each thing, report what happened; the parent is untouched."""
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        os.close(reader)
        outcome: dict = {}
        try:
            outcome["refused"] = confine(confinement)
            outcome["read_input"] = _tries(lambda: paths["input"].read_text())
            outcome["read_outside"] = _tries(lambda: paths["secret"].read_text())
            outcome["write_scratch"] = _tries(lambda: (paths["scratch"] / "out").write_text("x"))
            outcome["write_outside"] = _tries(lambda: (paths["outside"] / "out").write_text("x"))
            outcome["connect_redis"] = _tries(
                lambda: socket.create_connection(("127.0.0.1", 6379), timeout=2).close()
            )
            outcome["signal_parent"] = _tries(lambda: os.kill(os.getppid(), 0))
            outcome["import_new_module"] = _tries(lambda: __import__("xml.dom.minidom"))
            status = Path("/proc/self/status").read_text()
            outcome["capabilities"] = status.split("CapEff:")[1].split()[0]
            outcome["uid"] = os.geteuid()
        except BaseException as error:  # noqa: BLE001 -- reported to the parent, which fails
            outcome["crashed"] = repr(error)
        os.write(writer, json.dumps(outcome).encode())
        os._exit(0)
    os.close(writer)
    chunks = []
    while chunk := os.read(reader, 65536):
        chunks.append(chunk)
    os.close(reader)
    os.waitpid(pid, 0)
    return json.loads(b"".join(chunks))


def _tries(action) -> str:
    try:
        action()
    except OSError as error:
        return f"denied: {type(error).__name__}"
    return "allowed"


def test_confined_child_reaches_only_its_own_files(tmp_path):
    paths = {
        "input": tmp_path / "input.bin",
        "secret": tmp_path / "other-tenant" / "model.onnx",
        "scratch": tmp_path / "scratch",
        "outside": tmp_path / "elsewhere",
    }
    paths["input"].write_text("mine")
    paths["secret"].parent.mkdir()
    paths["secret"].write_text("theirs")
    paths["scratch"].mkdir()
    paths["outside"].mkdir()
    confinement = Confinement(read=(paths["input"],), write=(paths["scratch"],))

    outcome = _probe(confinement, paths)

    assert "crashed" not in outcome, outcome
    # Every layer applies on the machines this project runs on (Linux with Landlock, root or
    # user namespaces); a refused layer is a finding, not something to pass quietly.
    assert outcome["refused"] == [], outcome
    assert outcome["read_input"] == "allowed"
    assert outcome["write_scratch"] == "allowed"
    assert outcome["import_new_module"] == "allowed"
    assert outcome["read_outside"].startswith("denied")
    assert outcome["write_outside"].startswith("denied")
    assert outcome["connect_redis"].startswith("denied")  # Redis is up: the network is gone
    assert outcome["signal_parent"].startswith("denied")
    assert outcome["uid"] != 0 or int(outcome["capabilities"], 16) == 0


def test_redis_is_reachable_without_the_sandbox():
    """The network denial above means something: the same connection works unconfined."""
    socket.create_connection(("127.0.0.1", 6379), timeout=2).close()
