"""Dataset bombs and fair inspection: a small .npz that expands to gigabytes is refused from its
headers, fast and in little memory, while another tenant's small upload goes straight through."""

from __future__ import annotations

import asyncio
import io
import struct
import subprocess
import sys
import time
import zipfile
import zlib
from pathlib import Path

import httpx
import numpy as np
import pytest

from app.core.inspector import FairGate
from tests.service.conftest import REPO, upload

BOMB_BYTES = 6 * 2**30


def write_bomb(path: Path, expanded: int = BOMB_BYTES) -> None:
    """An .npz whose one zero array expands to ``expanded`` bytes, in a few MB. The deflate
    stream repeats one fully flushed block of zeros (each compresses alike), so writing it
    costs a CRC pass, not gigabytes of compression; the zip is written by hand (zip64 sizes)."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": (expanded // 4,)}
    )
    chunk = bytes(16 * 2**20)
    assert expanded % len(chunk) == 0
    head = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = head.compress(header.getvalue()) + head.flush(zlib.Z_FULL_FLUSH)
    zeros = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = zeros.compress(chunk) + zeros.flush(zlib.Z_FULL_FLUSH)
    last = zlib.compressobj(9, zlib.DEFLATED, -15).flush()
    count = expanded // len(chunk)
    crc = zlib.crc32(header.getvalue())
    for _ in range(count):
        crc = zlib.crc32(chunk, crc)
    size = len(header.getvalue()) + expanded
    packed = len(first) + len(block) * count + len(last)
    name = b"input.npy"
    zip64 = struct.pack("<HHQQ", 1, 16, size, packed)
    local = struct.pack(
        "<IHHHHHIIIHH", 0x04034B50, 45, 0, 8, 0, 0, crc, 0xFFFFFFFF, 0xFFFFFFFF, len(name), 20
    )
    central = struct.pack(
        "<IHHHHHHIIIHHHHHII", 0x02014B50, 45, 45, 0, 8, 0, 0, crc, 0xFFFFFFFF, 0xFFFFFFFF,
        len(name), 20, 0, 0, 0, 0, 0,
    )  # fmt: skip
    with path.open("wb") as out:
        out.write(local + name + zip64 + first)
        for _ in range(count):
            out.write(block)
        out.write(last)
        directory_at = out.tell()
        out.write(central + name + zip64)
        directory_size = out.tell() - directory_at
        out.write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 1, 1, directory_size, directory_at, 0))


@pytest.fixture(scope="module")
def bomb(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bomb") / "bomb.npz"
    write_bomb(path)
    assert path.stat().st_size < 16 * 2**20
    return path


def test_bomb_is_refused_from_headers_in_little_memory(bomb, tmp_path):
    """The check itself, in a process of its own. Peak RSS is read as VmHWM, which belongs to
    this process's memory: ``ru_maxrss`` survives ``exec`` and would report pytest's own peak."""
    script = (
        "import time\n"
        "from app.core.inspection import inspect_dataset\n"
        "started = time.monotonic()\n"
        f"facts = inspect_dataset({str(bomb)!r}, 4 * 2**30)\n"
        "print(time.monotonic() - started)\n"
        "print(open('/proc/self/status').read().split('VmHWM:')[1].split()[0])\n"
        "print(facts['error'])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    seconds, peak_kib, error = done.stdout.strip().splitlines()
    assert float(seconds) < 5
    assert int(peak_kib) < 512 * 1024
    assert "expands to more than" in error


def test_forged_member_size_is_refused(tmp_path):
    """A member whose header claims less data than the zip directory says it expands to."""
    from app.core.inspection import inspect_dataset

    path = tmp_path / "forged.npz"
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": (2, 3)}
    )
    with zipfile.ZipFile(path, "w") as npz:
        npz.writestr("input.npy", header.getvalue() + bytes(4 * 3 * 4))
    facts = inspect_dataset(str(path), 2**30)
    assert "declares" in facts["error"] and "forged" in facts["error"]


def test_quota_counts_expanded_bytes(api, make_tenant, tmp_path):
    small = tmp_path / "zeros.npz"
    np.savez_compressed(small, input=np.zeros((256, 1, 64, 64), np.float32))
    headers = make_tenant()
    answer = upload(api, "/v1/datasets", small, headers)
    assert answer.status_code == 201, answer.text
    body = answer.json()
    assert body["expanded_bytes"] > 4 * 2**20 > body["size_bytes"] * 10


def test_a_tenants_bombs_do_not_hold_up_another_tenant(bomb, settings, make_tenant, tmp_path):
    """Four bombs from A in flight and B's 5 KB upload beside them, on a real server with the
    default inspection settings: B's is accepted, every bomb refused. Which finishes first is
    not asserted: a bomb is refused from its headers as fast as B's upload is checked, so the
    order says nothing about fairness; the gate's order is tested below with checks that hold
    their slot until B's is done."""
    from tests.service.conftest import free_port, service_env, stop_process, wait_for

    small = tmp_path / "small.npz"
    np.savez(small, input=np.random.default_rng(0).standard_normal((40, 4, 8)).astype(np.float32))
    assert small.stat().st_size < 8_000
    port = free_port()
    env = service_env(settings.model_copy(update={"max_dataset_bytes": 64 * 2**20}))
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--factory", "app.main:create_app", "--port", str(port)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _ready(url), 60, "the API server")
        tenant_a, tenant_b = make_tenant(), make_tenant()
        answers = asyncio.run(_race(url, bomb, small, tenant_a, tenant_b))
    finally:
        stop_process(server)
    small_status, _ = answers["small"]
    assert small_status == 201, answers
    for status, _ in answers["bombs"]:
        assert status == 422, answers


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


async def _race(url, bomb: Path, small: Path, tenant_a, tenant_b) -> dict:
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:

        async def send(path: Path, headers) -> tuple[int, float]:
            started = time.monotonic()
            response = await client.post(
                "/v1/datasets",
                params={"filename": path.name},
                content=path.read_bytes(),
                headers={**headers, "Content-Type": "application/octet-stream"},
            )
            return response.status_code, time.monotonic() - started

        bombs = [asyncio.create_task(send(bomb, tenant_a)) for _ in range(4)]
        await asyncio.sleep(0.3)  # A's uploads are in flight first
        small_answer = await send(small, tenant_b)
        return {"small": small_answer, "bombs": await asyncio.gather(*bombs)}


def _hold_until(flag: str, limit_s: float) -> dict:
    """A check that keeps its slot until ``flag`` exists: a slow upload of tenant A's."""
    deadline = time.monotonic() + limit_s
    while not Path(flag).exists():
        if time.monotonic() > deadline:
            return {"released": False}
        time.sleep(0.02)
    return {"released": True}


def _quick() -> dict:
    return {"checked": True}


def test_inspector_checks_another_tenant_while_one_holds_its_slots(tmp_path):
    """A's three checks cannot finish until B's has: with two processes and one per tenant, B's
    runs beside A's first. A gate that queued B behind A's would leave B waiting on checks that
    wait on B, until B's own time-out here fails the test. An order, not a time."""
    from app.core.inspector import Inspector

    flag = tmp_path / "b-done"
    inspector = Inspector(
        processes=2, per_tenant=1, memory_bytes=4 * 2**30, timeout_s=60, sandbox=False
    )

    async def scenario() -> tuple[dict, list[dict]]:
        held = [
            asyncio.create_task(inspector.run("a", _hold_until, str(flag), 45, tenant_id="a"))
            for _ in range(3)
        ]
        await asyncio.sleep(0.2)  # A's checks are waiting or running first
        try:
            b = await asyncio.wait_for(inspector.run("b", _quick, tenant_id="b"), 30)
        finally:
            flag.touch()  # even when B timed out, so that A's checks end now
        return b, await asyncio.gather(*held)

    try:
        b, held = asyncio.run(scenario())
    finally:
        inspector.close()
    assert b == {"checked": True}
    assert held == [{"released": True}] * 3


def test_a_child_gone_before_the_kill_still_returns_its_answer(monkeypatch):
    """The child sent its answer and exited between ``is_alive()`` and the kill (CI saw it: a
    dataset upload answered 500 with ProcessLookupError): the answer stands."""
    from app.core import inspector as module

    def already_gone(pid: int, sig: int) -> None:
        raise ProcessLookupError(3, "No such process")

    monkeypatch.setattr(module.os, "kill", already_gone)
    monkeypatch.setattr(module.multiprocessing.Process, "is_alive", lambda self: True)
    checker = module.Inspector(processes=1, memory_bytes=4 * 2**30, timeout_s=60, sandbox=False)
    try:
        assert asyncio.run(checker.run("a", _quick, tenant_id="a")) == {"checked": True}
    finally:
        checker.close()


def test_fair_gate_serves_waiting_tenants_in_turn():
    """A holds its one slot and queues more; B, arriving later, is served before A's next."""

    async def scenario() -> list[str]:
        gate, order = FairGate(slots=2, per_owner=1), []

        async def use(owner: str, hold: float) -> None:
            await gate.acquire(owner)
            order.append(owner)
            await asyncio.sleep(hold)
            gate.release(owner)

        tasks = [asyncio.create_task(use("a", 0.05)) for _ in range(3)]
        await asyncio.sleep(0.01)
        tasks.append(asyncio.create_task(use("b", 0.01)))
        await asyncio.gather(*tasks)
        return order

    order = asyncio.run(scenario())
    assert order[:2] == ["a", "b"], order
    assert sorted(order) == ["a", "a", "a", "b"]


def test_cancelled_wait_leaves_no_slot_taken():
    async def scenario() -> int:
        gate = FairGate(slots=1, per_owner=1)
        await gate.acquire("a")
        waiter = asyncio.create_task(gate.acquire("b"))
        await asyncio.sleep(0.01)
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
        gate.release("a")
        await asyncio.wait_for(gate.acquire("c"), 1)
        return gate.free

    assert asyncio.run(scenario()) == 0
