"""Least privilege for a child process that parses or computes an untrusted upload.

The loaders are hardened, but the next bug in torch, onnx or numpy should cost one confined
process, not the service. A child calls :func:`confine` before it touches the upload:

- **No network**: a new, empty network namespace (only a loopback that is down), and, where
  Landlock has network rules (ABI 4+), TCP bind and connect refused as well.
- **Files**: Landlock lets it read the Python runtime, the system libraries and its own inputs,
  and write only in its scratch folders; every other tenant's files, the database file and the
  configuration stay out of reach even for root. Where Landlock scopes exist (ABI 6+), it can
  neither signal processes outside its sandbox nor reach their abstract sockets.
- **No root**: when the service runs as root, the child becomes an unprivileged user
  (``nobody``) after the rules are in place, so it cannot kill or trace the service, change
  ownership or load kernel modules. Its scratch folders are handed to that user first. Where
  that user could not read the interpreter (a Python installed under ``/root``), the child
  stays uid 0 but drops every capability for good instead (securebits locked, bounding set
  emptied): no ``setns`` back to the host network, no ``chown``, no reading past permissions.

What it does not stop: burning CPU until the caller's timeout, memory up to the address-space
cap (``limits.py``), reading the world-readable parts of the system (``/usr``, ``/etc``,
``/proc``), or a kernel exploit. Each layer that the kernel refuses (no Landlock before Linux
5.13, user namespaces disabled) is reported back so the caller can log it; the rest still apply.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
PR_SET_NO_NEW_PRIVS = 38
UNPRIVILEGED_ID = 65534  # nobody / nogroup

_SYS_CREATE_RULESET, _SYS_ADD_RULE, _SYS_RESTRICT_SELF = 444, 445, 446  # same on x86_64/arm64
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1
_EXECUTE, _WRITE_FILE, _READ_FILE, _READ_DIR = 1, 2, 4, 8
_TRUNCATE, _IOCTL_DEV = 1 << 14, 1 << 15
_NET_BIND_TCP, _NET_CONNECT_TCP = 1, 2
_SCOPE_ABSTRACT_UNIX_SOCKET, _SCOPE_SIGNAL = 1, 2

_SYSTEM_READ = ("/usr", "/lib", "/lib64", "/lib32", "/etc", "/proc", "/sys", "/dev", "/opt")
_DEVICES_WRITE = ("/dev/null", "/dev/shm")


@dataclass(frozen=True)
class Confinement:
    """What the child may touch besides the runtime: inputs to read, scratch to write."""

    read: tuple[Path, ...] = ()
    write: tuple[Path, ...] = ()
    # Runtime paths that contain one of these are not granted (a repository checkout that
    # holds the data folder, say): the packages inside them are granted one by one instead.
    keep_out: tuple[Path, ...] = field(default_factory=tuple)


def confine(confinement: Confinement) -> list[str]:
    """Apply every layer the kernel allows; return the names of those it refused."""
    refused = []
    if not _isolate_network():
        refused.append("network namespace")
    as_root = os.geteuid() == 0
    become_nobody = as_root and _runtime_readable_by_others()
    if become_nobody:
        for folder in confinement.write:
            _hand_over(folder)
    scratch = next(iter(confinement.write), None)
    if scratch is not None:  # libraries that write temporary files write them here
        os.environ["TMPDIR"] = str(scratch)
        import tempfile

        tempfile.tempdir = str(scratch)
    abi = _landlock_abi()
    if abi < 1 or not _restrict_files(confinement, abi):
        refused.append("landlock")
    if as_root and not (_drop_root() if become_nobody else _drop_capabilities()):
        refused.append("unprivileged user")
    return refused


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _isolate_network() -> bool:
    libc = _libc()
    flags = CLONE_NEWNET if os.geteuid() == 0 else CLONE_NEWUSER | CLONE_NEWNET
    return libc.unshare(flags) == 0


def _hand_over(folder: Path) -> None:
    for root, dirs, files in os.walk(folder):
        for name in [root, *(os.path.join(root, d) for d in dirs)]:
            os.chown(name, UNPRIVILEGED_ID, UNPRIVILEGED_ID)
        for name in files:
            os.chown(os.path.join(root, name), UNPRIVILEGED_ID, UNPRIVILEGED_ID)


def _drop_root() -> bool:
    try:
        os.setgroups([])
        os.setresgid(UNPRIVILEGED_ID, UNPRIVILEGED_ID, UNPRIVILEGED_ID)
        os.setresuid(UNPRIVILEGED_ID, UNPRIVILEGED_ID, UNPRIVILEGED_ID)
    except OSError:
        return False
    return os.geteuid() == UNPRIVILEGED_ID


def _runtime_readable_by_others() -> bool:
    """Could ``nobody`` import what is not imported yet? Every folder above the interpreter's
    libraries and our packages must be searchable by others."""
    roots = {Path(sys.base_prefix), Path(sys.prefix), Path(__file__).resolve().parents[2]}
    for root in roots:
        for folder in [root.resolve(), *root.resolve().parents]:
            if not os.stat(folder).st_mode & 0o001:
                return False
    return True


_PR_CAPBSET_DROP, _PR_SET_SECUREBITS = 24, 28
_SECURE_ALL_LOCKED = 0x3F  # noroot, no_setuid_fixup, keep_caps: set and locked
_CAPABILITY_VERSION_3 = 0x20080522


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def _drop_capabilities() -> bool:
    """uid 0 with no capabilities, for good: the root of this process is an ordinary user."""
    libc = _libc()
    if libc.prctl(_PR_SET_SECUREBITS, _SECURE_ALL_LOCKED, 0, 0, 0) != 0:
        return False
    cap = 0
    while libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) == 0:
        cap += 1
    header = _CapHeader(_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    return libc.capset(ctypes.byref(header), data) == 0


def _landlock_abi() -> int:
    if not sys.platform.startswith("linux"):
        return 0
    libc = _libc()
    abi = libc.syscall(_SYS_CREATE_RULESET, None, ctypes.c_size_t(0), _CREATE_RULESET_VERSION)
    return max(abi, 0)


class _RulesetAttr(ctypes.Structure):
    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    ]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def _file_rights(abi: int) -> tuple[int, int]:
    """(read, write) rights that may be granted on a file for this ABI."""
    read = _EXECUTE | _READ_FILE
    write = _WRITE_FILE | (_TRUNCATE if abi >= 3 else 0) | (_IOCTL_DEV if abi >= 5 else 0)
    return read, write


def _all_fs_rights(abi: int) -> int:
    rights = (1 << 13) - 1  # ABI 1: execute .. make_sym
    if abi >= 2:
        rights |= 1 << 13  # refer
    if abi >= 3:
        rights |= _TRUNCATE
    if abi >= 5:
        rights |= _IOCTL_DEV
    return rights


def _restrict_files(confinement: Confinement, abi: int) -> bool:
    libc = _libc()
    handled = _all_fs_rights(abi)
    attr = _RulesetAttr(handled, 0, 0)
    size = 8
    if abi >= 4:
        attr.handled_access_net = _NET_BIND_TCP | _NET_CONNECT_TCP
        size = 16
    if abi >= 6:
        attr.scoped = _SCOPE_ABSTRACT_UNIX_SOCKET | _SCOPE_SIGNAL
        size = 24
    ruleset = libc.syscall(_SYS_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), 0)
    if ruleset < 0:
        return False
    try:
        read_file, write_file = _file_rights(abi)
        read_dir = read_file | _READ_DIR
        for path in _runtime_paths(confinement.keep_out):
            _allow(libc, ruleset, path, read_file, read_dir)
        for path in confinement.read:
            _allow(libc, ruleset, path, read_file, read_dir)
        for path in _DEVICES_WRITE:
            _allow(libc, ruleset, Path(path), read_file | write_file, handled)
        for path in confinement.write:
            _allow(libc, ruleset, path, read_file | write_file, handled)
        if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            return False
        return libc.syscall(_SYS_RESTRICT_SELF, ruleset, 0) == 0
    finally:
        os.close(ruleset)


def _allow(libc: ctypes.CDLL, ruleset: int, path: Path, file_rights: int, dir_rights: int) -> None:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return  # a path this system does not have
    try:
        rights = dir_rights if os.path.isdir(path) else file_rights
        rule = _PathBeneathAttr(rights, fd)
        libc.syscall(_SYS_ADD_RULE, ruleset, _RULE_PATH_BENEATH, ctypes.byref(rule), 0)
    finally:
        os.close(fd)


def _runtime_paths(keep_out: Iterable[Path]) -> list[Path]:
    """The interpreter, its libraries and our packages: what imports need to read."""
    outside = [p.resolve() for p in keep_out]
    candidates = [Path(p) for p in _SYSTEM_READ]
    candidates += [Path(p) for p in {sys.prefix, sys.base_prefix, sys.exec_prefix}]
    candidates += [Path(p) for p in sys.path if p]
    for package in ("qaas_engine", "app", "worker"):
        module = sys.modules.get(package)
        if module is not None and module.__file__:
            candidates.append(Path(module.__file__).parent)
    granted = []
    for candidate in candidates:
        resolved = candidate.resolve()
        if any(resolved == o or resolved in o.parents for o in outside):
            continue  # would expose the data folder: granted package by package above
        granted.append(resolved)
    return granted
