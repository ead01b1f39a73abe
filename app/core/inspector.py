"""Untrusted uploads are parsed in confined child processes, never in the API process, and
the capacity to do so is shared fairly between tenants.

Each check runs in a fresh child forked from a forkserver that imported the engine once (so a
child starts in milliseconds), under an address-space cap, inside the sandbox
(``app.core.sandbox``) with only its own files in reach. A child that hangs or dies is killed
alone; no other upload's check is touched. At most ``processes`` checks run at once and at
most ``per_tenant`` of them for one tenant, waiting tenants taking turns, so one tenant's slow
uploads leave room for everyone else's. The time limit counts from the moment a check starts
running, never time spent waiting for a turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import multiprocessing
import os
import signal
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.core.errors import InvalidInput
from app.core.limits import is_out_of_memory, limit_process
from app.core.sandbox import Confinement, confine

log = logging.getLogger("qaas.inspector")
PRELOAD = ["app.core.inspection", "qaas_engine.importer", "qaas_engine.pt2", "qaas_engine.npz"]
PRELOAD_LATE = ["torch", "onnx", "onnxruntime"]


class FairGate:
    """At most ``slots`` holders at once, at most ``per_owner`` per owner; owners waiting for
    a slot are served in turn, one grant each, so none can starve another."""

    def __init__(self, slots: int, per_owner: int) -> None:
        self.free = slots
        self.per_owner = max(1, min(per_owner, slots))
        self.held: Counter[str] = Counter()
        self.waiting: OrderedDict[str, deque[asyncio.Future[None]]] = OrderedDict()

    async def acquire(self, owner: str) -> None:
        if self.free > 0 and self.held[owner] < self.per_owner and owner not in self.waiting:
            self._grant(owner)
            return
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiting.setdefault(owner, deque()).append(turn)
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self.release(owner)  # granted just as the caller gave up
            else:
                self._forget(owner, turn)
            raise

    def release(self, owner: str) -> None:
        self.held[owner] -= 1
        if self.held[owner] <= 0:
            del self.held[owner]
        self.free += 1
        self._dispatch()

    def _grant(self, owner: str) -> None:
        self.free -= 1
        self.held[owner] += 1

    def _forget(self, owner: str, turn: asyncio.Future[None]) -> None:
        queue = self.waiting.get(owner)
        if queue is not None and turn in queue:
            queue.remove(turn)
            if not queue:
                del self.waiting[owner]

    def _dispatch(self) -> None:
        while self.free > 0:
            owner = next((o for o in self.waiting if self.held[o] < self.per_owner), None)
            if owner is None:
                return
            queue = self.waiting[owner]
            turn = queue.popleft()
            if queue:
                self.waiting.move_to_end(owner)  # the next grant goes to someone else
            else:
                del self.waiting[owner]
            self._grant(owner)
            turn.set_result(None)


class Inspector:
    """Runs ``fn(*args)`` in a confined, memory-capped child; see the module docstring."""

    def __init__(
        self,
        *,
        processes: int,
        memory_bytes: int,
        timeout_s: float,
        per_tenant: int = 1,
        keep_out: tuple[Path, ...] = (),
        sandbox: bool = True,
    ) -> None:
        self.memory_bytes = memory_bytes
        self.timeout_s = timeout_s
        self.keep_out = keep_out
        self.sandbox = sandbox
        self.gate = FairGate(processes, per_tenant)
        self._context: Any = None

    def _processes(self) -> Any:
        if self._context is None:
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload([*PRELOAD, *PRELOAD_LATE])
            self._context = context
        return self._context

    def warm_up(self) -> None:
        """Start the forkserver and let it import the engine now, at startup, rather than make
        the first upload wait for it: one trivial child is run to the end."""
        self._call("warm-up", _nothing, (), Confinement(keep_out=self.keep_out))

    async def run(
        self,
        what: str,
        fn: Callable[..., dict[str, Any]],
        *args: Any,
        tenant_id: str | None = None,
        read: tuple[Path, ...] = (),
        write: tuple[Path, ...] = (),
    ) -> dict[str, Any]:
        """``fn``'s answer; a time-out, crash or memory blow-up is the upload's fault (422).
        ``read`` and ``write`` are all the child may open besides the runtime."""
        owner = tenant_id or ""
        confinement = Confinement(read=read, write=write, keep_out=self.keep_out)
        await self.gate.acquire(owner)
        try:
            return await asyncio.to_thread(self._call, what, fn, args, confinement)
        finally:
            self.gate.release(owner)

    def _call(
        self, what: str, fn: Callable[..., Any], args: tuple[Any, ...], confinement: Confinement
    ) -> dict[str, Any]:
        context = self._processes()
        receiver, sender = context.Pipe(duplex=False)
        child = context.Process(
            target=_child_main,
            args=(sender, fn, args, self.memory_bytes, confinement if self.sandbox else None),
            name="qaas-inspect",
            daemon=True,
        )
        child.start()
        sender.close()  # the child holds the only writer: its exit is our EOF
        try:
            if not receiver.poll(self.timeout_s):
                raise InvalidInput(f"{what}: checking it took longer than {self.timeout_s:g} s")
            try:
                status, value = receiver.recv()
            except EOFError:
                status, value = "memory", None
        finally:
            receiver.close()
            if child.is_alive():
                # it may exit (and be reaped by the forkserver) between the check and the kill
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, signal.SIGKILL)
            child.join(10)
        if status == "ok":
            return value
        if status == "memory":
            raise InvalidInput(
                f"{what}: checking it exhausted the memory limit ({self.memory_bytes} bytes) "
                "or crashed the checker"
            )
        raise RuntimeError(f"the upload checker failed: {value}")

    def close(self) -> None:
        """Children die with their forkserver; nothing is pooled here."""


def _nothing() -> dict[str, Any]:
    return {}


def _child_main(
    sender: Any,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    memory_bytes: int,
    confinement: Confinement | None,
) -> None:
    gc.freeze()  # the forkserver's imports are never garbage: no collection walks them
    try:
        limit_process(memory_bytes)
        if confinement is not None:
            refused = confine(confinement)
            if refused:
                log.warning("upload checker sandbox: the kernel refused %s", ", ".join(refused))
        result = ("ok", fn(*args))
    except BaseException as error:  # noqa: BLE001 -- everything is reported, nothing raised
        result = ("memory", None) if is_out_of_memory(error) else ("error", repr(error)[:500])
    try:
        sender.send(result)
    finally:
        sender.close()
