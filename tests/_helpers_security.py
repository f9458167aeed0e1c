"""Helpers for the multi-process suites (read-only, lifetime, visibility, leaks).

Three kinds of helpers live here:

* raw libc calls (ctypes) that let a test attack a region from outside ashmem: ``mmap`` and
  ``mprotect`` on addresses, ``fallocate`` with any mode, file handles;
* the *receiver* half of the read-only protocol, shared by multiprocessing children and by an
  unrelated ``python`` process that runs this file as a script
  (``python _helpers_security.py SOCKET_PATH``): so this module imports nothing from the test
  package, only the standard library and ``ashmem``;
* probes that tell whether a region's memory is still alive *without keeping it alive*.

Everything here cleans up what it opens, also when an assertion fails half-way.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import mmap
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from ashmem import PROT_READ, PROT_WRITE, ProtectionError, SharedMemory, fdpass, region

PAGE = mmap.ALLOCATIONGRANULARITY
#: How long any side of a multi-process test waits for its peer before failing.
PEER_TIMEOUT = 30.0

# fcntl(2) sealing (include/uapi/linux/fcntl.h).
F_ADD_SEALS = 1033
F_GET_SEALS = 1034
F_SEAL_SEAL = 0x0001
F_SEAL_SHRINK = 0x0002
F_SEAL_GROW = 0x0004
F_SEAL_WRITE = 0x0008
F_SEAL_FUTURE_WRITE = 0x0010
F_SEAL_EXEC = 0x0020

# fallocate(2) modes (include/uapi/linux/falloc.h).
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10

AT_EMPTY_PATH = 0x1000

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_long,
]
_libc.mprotect.restype = ctypes.c_int
_libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_libc.munmap.restype = ctypes.c_int
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.fallocate.restype = ctypes.c_int
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
_MAP_FAILED = ctypes.c_void_p(-1).value


def _check(result: int) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def libc_mmap(fd: int, length: int, prot: int, flags: int, offset: int = 0) -> int:
    """mmap(2) straight from libc: the address. The caller must ``libc_munmap`` it."""
    addr = _libc.mmap(None, length, prot, flags, fd, offset)
    if addr is None or addr == _MAP_FAILED:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(addr)


def libc_munmap(addr: int, length: int) -> None:
    _check(_libc.munmap(addr, length))


def libc_mprotect(addr: int, length: int, prot: int) -> None:
    _check(_libc.mprotect(addr, length, prot))


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    """fallocate(2) with any mode; borrows ``fd``."""
    _check(_libc.fallocate(fd, mode, offset, length))


@contextlib.contextmanager
def raw_mapping(fd: int, length: int, prot: int, flags: int = mmap.MAP_SHARED) -> Iterator[int]:
    """A libc mapping of ``fd`` (no hidden dup, unlike ``mmap.mmap`` before 3.13)."""
    addr = libc_mmap(fd, length, prot, flags)
    try:
        yield addr
    finally:
        libc_munmap(addr, length)


def pattern(tag: bytes, size: int) -> bytes:
    """``size`` bytes that differ per page and per tag, so a misplaced page shows up."""
    out = bytearray()
    page = 0
    while len(out) < size:
        head = tag + b":%d:" % page
        out += (head * (PAGE // len(head) + 1))[:PAGE]
        page += 1
    return bytes(out[:size])


def outcome(attempt: Callable[[], object]) -> str:
    """Run ``attempt``: "ok", "returned X", or ``describe_error`` of what it raised."""
    try:
        result = attempt()
    except Exception as exc:
        return describe_error(exc)
    return "ok" if result is None else f"returned {result!r}"


def describe_error(exc: Exception) -> str:
    """ "ProtectionError(EPERM)", an errno name such as "EPERM", or "TypeName: message"."""
    if isinstance(exc, ProtectionError):
        return f"ProtectionError({errno.errorcode.get(exc.errno or 0, exc.errno)})"
    if isinstance(exc, OSError):
        return errno.errorcode.get(exc.errno or 0, f"OSError({exc.errno})")
    return f"{type(exc).__name__}: {exc}"


# -- read-only: what a receiving process tries, and what must happen ------------------------

_E = errno.errorcode

#: Every way a process holding the fd of a write-protected region could try to get write
#: access back, and the kernel's (or ashmem's) answer, verified on Linux 6.18. Order matters
#: only for the seal attempts at the end (F_SEAL_SEAL last: after it nothing can be added).
EXPECTED_ATTACKS: dict[str, str] = {
    # mmap PROT_WRITE|MAP_SHARED: memfd_check_seals_mmap() refuses with EPERM.
    "mmap.mmap(MAP_SHARED, PROT_READ|PROT_WRITE)": _E[errno.EPERM],
    "mmap.mmap(MAP_SHARED, PROT_WRITE)": _E[errno.EPERM],
    "mmap.mmap(access=ACCESS_WRITE)": _E[errno.EPERM],
    "libc mmap(MAP_SHARED, PROT_READ|PROT_WRITE)": _E[errno.EPERM],
    "libc mmap(MAP_SHARED, PROT_READ|PROT_WRITE) at offset PAGE": _E[errno.EPERM],
    "SharedMemory.map_read_write()": "ProtectionError(EPERM)",
    "SharedMemory.map(PROT_READ|PROT_WRITE, offset=PAGE)": "ProtectionError(EPERM)",
    "SharedMemory.from_fd(dup).map_read_write()": "ProtectionError(EPERM)",
    # A read-only shared mapping of a FUTURE_WRITE-sealed memfd loses VM_MAYWRITE.
    "mprotect(read-only MAP_SHARED mapping, PROT_READ|PROT_WRITE)": _E[errno.EACCES],
    "mprotect(read-only MAP_SHARED mapping, PROT_WRITE)": _E[errno.EACCES],
    # MADV_REMOVE frees pages (a hole punch through memory); needs a writable shared vma.
    "madvise(read-only mapping, MADV_REMOVE)": _E[errno.EACCES],
    "madvise(MAP_PRIVATE writable mapping, MADV_REMOVE)": _E[errno.EACCES],
    # Reopening gives a new open file on the same inode: the open works, writing does not.
    "open(/proc/self/fd/N, O_RDWR)": "ok",
    "open(/proc/self/fd/N, O_RDWR) + mmap(MAP_SHARED, PROT_READ|PROT_WRITE)": _E[errno.EPERM],
    "open(/proc/self/fd/N, O_RDWR) + mprotect(PROT_READ|PROT_WRITE)": _E[errno.EACCES],
    "open(/proc/self/fd/N, O_RDWR) + write": _E[errno.EPERM],
    "open(/proc/self/fd/N, O_RDWR) + pwrite": _E[errno.EPERM],
    "open(/proc/self/fd/N, O_WRONLY|O_TRUNC)": _E[errno.EPERM],
    # map_files needs CAP_SYS_ADMIN/CAP_CHECKPOINT_RESTORE to open (EPERM without); with it
    # the open works and the writable mmap fails with EPERM: EPERM either way.
    "open(/proc/self/map_files/A-B, O_RDWR) + mmap(MAP_SHARED, PROT_READ|PROT_WRITE)": _E[
        errno.EPERM
    ],
    "write(fd)": _E[errno.EPERM],
    "pwrite(fd, offset 0)": _E[errno.EPERM],
    "pwrite(fd, last byte)": _E[errno.EPERM],
    "writev(fd)": _E[errno.EPERM],
    "copy_file_range(other memfd -> fd)": _E[errno.EPERM],
    "sendfile(other memfd -> fd)": _E[errno.EPERM],
    "splice(pipe -> fd)": _E[errno.EPERM],
    # Size changes: F_SEAL_GROW / F_SEAL_SHRINK, added at creation.
    "ftruncate(size + PAGE)": _E[errno.EPERM],
    "ftruncate(size - PAGE)": _E[errno.EPERM],
    "ftruncate(0)": _E[errno.EPERM],
    "truncate(/proc/self/fd/N, PAGE)": _E[errno.EPERM],
    # shmem_fallocate: punching is a write (EPERM under FUTURE_WRITE); growing is GROW.
    "fallocate(PUNCH_HOLE|KEEP_SIZE, first page)": _E[errno.EPERM],
    "fallocate(PUNCH_HOLE|KEEP_SIZE, whole region)": _E[errno.EPERM],
    "fallocate(0, beyond the size)": _E[errno.EPERM],
    "fallocate(KEEP_SIZE, beyond the size)": _E[errno.EPERM],
    "fallocate(ZERO_RANGE)": _E[errno.EOPNOTSUPP],  # tmpfs has no ZERO_RANGE at all
    # ashmem's own API.
    "SharedMemory.set_protect(PROT_READ|PROT_WRITE)": "returned False",
    "region.set_prot_region(fd, PROT_READ|PROT_WRITE)": "ProtectionError(EPERM)",
    # Seals can only be added; there is no F_DEL_SEALS. Adding can never clear FUTURE_WRITE.
    "F_ADD_SEALS(0)": "ok",
    "F_ADD_SEALS(GROW|SHRINK)": "ok",
    "F_ADD_SEALS(FUTURE_WRITE)": "ok",
    "F_ADD_SEALS(WRITE) while the owner has a writable mapping": _E[errno.EBUSY],
    "F_ADD_SEALS(every bit except FUTURE_WRITE)": _E[errno.EINVAL],
    "F_ADD_SEALS(SEAL)": "ok",
    "F_ADD_SEALS(GROW) after F_SEAL_SEAL": _E[errno.EPERM],
    # After all the seal games, still no writable mapping.
    "mmap.mmap(MAP_SHARED, PROT_READ|PROT_WRITE) after the seal attempts": _E[errno.EPERM],
    # MAP_PRIVATE is copy-on-write: the kernel allows it (the checks in attack_region prove
    # the writes stay private). Kernels from before the 2022 fix "mm, memfd: fix COW issue on
    # MAP_PRIVATE and F_SEAL_FUTURE_WRITE mappings" refused the private mprotect (EACCES).
    "mmap.mmap(MAP_PRIVATE, PROT_READ|PROT_WRITE)": "ok",
    "mprotect(read-only MAP_PRIVATE mapping, PROT_READ|PROT_WRITE)": "ok",
}


def _mmap_module(fd: int, size: int, **kwargs: Any) -> None:
    mmap.mmap(fd, size, **kwargs).close()


def _libc_map_and_unmap(fd: int, length: int, prot: int, offset: int = 0) -> None:
    addr = libc_mmap(fd, length, prot, mmap.MAP_SHARED, offset)
    libc_munmap(addr, length)


def _mprotect_read_only_mapping(fd: int, size: int, prot: int) -> None:
    with raw_mapping(fd, size, PROT_READ) as addr:
        libc_mprotect(addr, size, prot)


def _madvise_remove(fd: int, size: int, **kwargs: Any) -> None:
    with mmap.mmap(fd, size, **kwargs) as view:
        view.madvise(mmap.MADV_REMOVE, 0, PAGE)


@contextlib.contextmanager
def _reopened(fd: int, flags: int = os.O_RDWR) -> Iterator[int]:
    new = os.open(f"/proc/self/fd/{fd}", flags | os.O_CLOEXEC)
    try:
        yield new
    finally:
        os.close(new)


def _reopen(fd: int, flags: int, then: Callable[[int], object] | None = None) -> None:
    with _reopened(fd, flags) as new:
        if then is not None:
            then(new)


def _map_files_then_map_writable(fd: int, size: int) -> None:
    with raw_mapping(fd, size, PROT_READ) as addr:
        path = f"/proc/self/map_files/{addr:x}-{addr + size:x}"
        new = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        try:
            mmap.mmap(new, size).close()
        finally:
            os.close(new)


def _copy_from_scratch(fd: int, how: str) -> None:
    scratch = os.memfd_create("scratch", os.MFD_CLOEXEC)
    try:
        os.write(scratch, b"overwrite")
        if how == "copy_file_range":
            os.copy_file_range(scratch, fd, 9, 0, 0)
        else:
            os.sendfile(fd, scratch, 0, 9)
    finally:
        os.close(scratch)


def _splice_from_pipe(fd: int) -> None:
    r, w = os.pipe()
    try:
        os.write(w, b"overwrite")
        os.splice(r, fd, 9, offset_dst=0)
    finally:
        os.close(r)
        os.close(w)


def _from_dup_map_read_write(fd: int) -> None:
    with SharedMemory.from_fd(os.dup(fd)) as other:
        other.map_read_write().close()


def _add_seals(fd: int, seals: int) -> None:
    fcntl.fcntl(fd, F_ADD_SEALS, seals)


def attack_region(shm: SharedMemory) -> tuple[dict[str, str], list[int], dict[str, bool]]:
    """Try every way to write to a region that was made read-only before this process got
    it. Returns ``(outcomes, seals, checks)``: the outcome of each attempt (keys of
    ``EXPECTED_ATTACKS``), the region's seals after each seal attempt, and boolean checks
    that MAP_PRIVATE writes stayed private. Cleans up everything it maps or opens."""
    fd = shm.fileno()
    size = shm.size
    rw = PROT_READ | PROT_WRITE
    before = os.pread(fd, size, 0)
    results: dict[str, str] = {}

    def attempt(name: str, fn: Callable[[], object]) -> None:
        assert name in EXPECTED_ATTACKS, name
        results[name] = outcome(fn)

    shared = mmap.MAP_SHARED
    attempt(
        "mmap.mmap(MAP_SHARED, PROT_READ|PROT_WRITE)",
        lambda: _mmap_module(fd, size, flags=shared, prot=rw),
    )
    attempt(
        "mmap.mmap(MAP_SHARED, PROT_WRITE)",
        lambda: _mmap_module(fd, size, flags=shared, prot=PROT_WRITE),
    )
    attempt(
        "mmap.mmap(access=ACCESS_WRITE)",
        lambda: _mmap_module(fd, size, access=mmap.ACCESS_WRITE),
    )
    attempt(
        "libc mmap(MAP_SHARED, PROT_READ|PROT_WRITE)",
        lambda: _libc_map_and_unmap(fd, size, rw),
    )
    attempt(
        "libc mmap(MAP_SHARED, PROT_READ|PROT_WRITE) at offset PAGE",
        lambda: _libc_map_and_unmap(fd, PAGE, rw, PAGE),
    )
    attempt("SharedMemory.map_read_write()", lambda: shm.map_read_write().close())
    attempt(
        "SharedMemory.map(PROT_READ|PROT_WRITE, offset=PAGE)",
        lambda: shm.map(rw, offset=PAGE, length=PAGE).close(),
    )
    attempt("SharedMemory.from_fd(dup).map_read_write()", lambda: _from_dup_map_read_write(fd))
    attempt(
        "mprotect(read-only MAP_SHARED mapping, PROT_READ|PROT_WRITE)",
        lambda: _mprotect_read_only_mapping(fd, size, rw),
    )
    attempt(
        "mprotect(read-only MAP_SHARED mapping, PROT_WRITE)",
        lambda: _mprotect_read_only_mapping(fd, size, PROT_WRITE),
    )
    attempt(
        "madvise(read-only mapping, MADV_REMOVE)",
        lambda: _madvise_remove(fd, size, prot=PROT_READ),
    )
    attempt(
        "madvise(MAP_PRIVATE writable mapping, MADV_REMOVE)",
        lambda: _madvise_remove(fd, size, flags=mmap.MAP_PRIVATE, prot=rw),
    )
    attempt("open(/proc/self/fd/N, O_RDWR)", lambda: _reopen(fd, os.O_RDWR))
    attempt(
        "open(/proc/self/fd/N, O_RDWR) + mmap(MAP_SHARED, PROT_READ|PROT_WRITE)",
        lambda: _reopen(fd, os.O_RDWR, lambda new: _mmap_module(new, size)),
    )
    attempt(
        "open(/proc/self/fd/N, O_RDWR) + mprotect(PROT_READ|PROT_WRITE)",
        lambda: _reopen(fd, os.O_RDWR, lambda new: _mprotect_read_only_mapping(new, size, rw)),
    )
    attempt(
        "open(/proc/self/fd/N, O_RDWR) + write",
        lambda: _reopen(fd, os.O_RDWR, lambda new: os.write(new, b"overwrite") and None),
    )
    attempt(
        "open(/proc/self/fd/N, O_RDWR) + pwrite",
        lambda: _reopen(fd, os.O_RDWR, lambda new: os.pwrite(new, b"overwrite", PAGE) and None),
    )
    attempt(
        "open(/proc/self/fd/N, O_WRONLY|O_TRUNC)",
        lambda: _reopen(fd, os.O_WRONLY | os.O_TRUNC),
    )
    attempt(
        "open(/proc/self/map_files/A-B, O_RDWR) + mmap(MAP_SHARED, PROT_READ|PROT_WRITE)",
        lambda: _map_files_then_map_writable(fd, size),
    )
    attempt("write(fd)", lambda: os.write(fd, b"overwrite") and None)
    attempt("pwrite(fd, offset 0)", lambda: os.pwrite(fd, b"overwrite", 0) and None)
    attempt("pwrite(fd, last byte)", lambda: os.pwrite(fd, b"!", size - 1) and None)
    attempt("writev(fd)", lambda: os.writev(fd, [b"over", b"write"]) and None)
    attempt(
        "copy_file_range(other memfd -> fd)",
        lambda: _copy_from_scratch(fd, "copy_file_range"),
    )
    attempt("sendfile(other memfd -> fd)", lambda: _copy_from_scratch(fd, "sendfile"))
    attempt("splice(pipe -> fd)", lambda: _splice_from_pipe(fd))
    attempt("ftruncate(size + PAGE)", lambda: os.ftruncate(fd, size + PAGE))
    attempt("ftruncate(size - PAGE)", lambda: os.ftruncate(fd, size - PAGE))
    attempt("ftruncate(0)", lambda: os.ftruncate(fd, 0))
    attempt("truncate(/proc/self/fd/N, PAGE)", lambda: os.truncate(f"/proc/self/fd/{fd}", PAGE))
    punch = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
    attempt("fallocate(PUNCH_HOLE|KEEP_SIZE, first page)", lambda: fallocate(fd, punch, 0, PAGE))
    attempt(
        "fallocate(PUNCH_HOLE|KEEP_SIZE, whole region)",
        lambda: fallocate(fd, punch, 0, size),
    )
    attempt("fallocate(0, beyond the size)", lambda: fallocate(fd, 0, size, PAGE))
    attempt(
        "fallocate(KEEP_SIZE, beyond the size)",
        lambda: fallocate(fd, FALLOC_FL_KEEP_SIZE, size, PAGE),
    )
    attempt("fallocate(ZERO_RANGE)", lambda: fallocate(fd, FALLOC_FL_ZERO_RANGE, 0, PAGE))
    attempt("SharedMemory.set_protect(PROT_READ|PROT_WRITE)", lambda: shm.set_protect(rw))
    attempt(
        "region.set_prot_region(fd, PROT_READ|PROT_WRITE)",
        lambda: region.set_prot_region(fd, rw),
    )

    seals: list[int] = []
    for name, value in [
        ("F_ADD_SEALS(0)", 0),
        ("F_ADD_SEALS(GROW|SHRINK)", F_SEAL_GROW | F_SEAL_SHRINK),
        ("F_ADD_SEALS(FUTURE_WRITE)", F_SEAL_FUTURE_WRITE),
        ("F_ADD_SEALS(WRITE) while the owner has a writable mapping", F_SEAL_WRITE),
        ("F_ADD_SEALS(every bit except FUTURE_WRITE)", 0xFFFFFFFF & ~F_SEAL_FUTURE_WRITE),
        ("F_ADD_SEALS(SEAL)", F_SEAL_SEAL),
        ("F_ADD_SEALS(GROW) after F_SEAL_SEAL", F_SEAL_GROW),
    ]:
        attempt(name, lambda value=value: _add_seals(fd, value))
        seals.append(fcntl.fcntl(fd, F_GET_SEALS))
    attempt(
        "mmap.mmap(MAP_SHARED, PROT_READ|PROT_WRITE) after the seal attempts",
        lambda: _mmap_module(fd, size, flags=shared, prot=rw),
    )

    # MAP_PRIVATE: allowed, copy-on-write; the writes must stay in this process.
    checks: dict[str, bool] = {}
    scribble = b"PRIVATE SCRIBBLE"
    try:
        private = mmap.mmap(fd, size, flags=mmap.MAP_PRIVATE, prot=rw)
    except OSError as exc:
        results["mmap.mmap(MAP_PRIVATE, PROT_READ|PROT_WRITE)"] = describe_error(exc)
    else:
        results["mmap.mmap(MAP_PRIVATE, PROT_READ|PROT_WRITE)"] = "ok"
        with private:
            private[0 : len(scribble)] = scribble
            private[size - len(scribble) : size] = scribble
            checks["MAP_PRIVATE write is visible in the private mapping"] = (
                private[0 : len(scribble)] == scribble
            )
    try:
        with raw_mapping(fd, size, PROT_READ, mmap.MAP_PRIVATE) as addr:
            libc_mprotect(addr, size, rw)
            ctypes.memmove(addr + PAGE, scribble, len(scribble))
            checks["mprotect'ed MAP_PRIVATE write is visible in the private mapping"] = (
                ctypes.string_at(addr + PAGE, len(scribble)) == scribble
            )
    except OSError as exc:
        results["mprotect(read-only MAP_PRIVATE mapping, PROT_READ|PROT_WRITE)"] = describe_error(
            exc
        )
    else:
        results["mprotect(read-only MAP_PRIVATE mapping, PROT_READ|PROT_WRITE)"] = "ok"
    checks["no attempt changed the shared contents (pread)"] = os.pread(fd, size, 0) == before
    with shm.map_read_only() as view:
        checks["no attempt changed the shared contents (new read-only mapping)"] = view[:] == before
    checks["SharedMemory.get_protect() has no PROT_WRITE"] = not shm.get_protect() & PROT_WRITE
    checks["region.get_prot_region() has no PROT_WRITE"] = not (
        region.get_prot_region(fd) & PROT_WRITE
    )
    return results, seals, checks


# -- the read-only protocol between an owner and a receiver ---------------------------------


class Channel(Protocol):
    """Small JSON messages between the owner and the receiver, with a timeout."""

    def send(self, message: dict[str, Any]) -> None: ...

    def recv(self) -> dict[str, Any]: ...


class SocketChannel:
    """JSON messages as ``fdpass`` frames without descriptors, on an AF_UNIX socket."""

    def __init__(self, sock: socket.socket) -> None:
        sock.settimeout(PEER_TIMEOUT)
        self.sock = sock

    def send(self, message: dict[str, Any]) -> None:
        fdpass.send(self.sock, [], json.dumps(message).encode())

    def recv(self) -> dict[str, Any]:
        data, _ = fdpass.recv(self.sock, maxfds=0)
        result: dict[str, Any] = json.loads(data)
        return result


class ConnectionChannel:
    """JSON messages on a ``multiprocessing`` Connection."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def send(self, message: dict[str, Any]) -> None:
        self.conn.send_bytes(json.dumps(message).encode())

    def recv(self) -> dict[str, Any]:
        if not self.conn.poll(PEER_TIMEOUT):
            raise TimeoutError(f"peer sent nothing for {PEER_TIMEOUT}s")
        result: dict[str, Any] = json.loads(self.conn.recv_bytes())
        return result


#: What the owner writes before protecting, and through its old mapping after the attacks.
BEFORE = b"before"
AFTER = b"after"
REGION_SIZE = 4 * PAGE


def run_read_only_receiver(shm: SharedMemory, chan: Channel) -> None:
    """The receiving side. Takes ownership of ``shm``.

    1. tells the owner it has the region and waits until the owner has write-protected it;
    2. maps it read-only, runs every attack, sends the outcomes;
    3. waits for the owner to write through its old writable mapping, and reports whether
       its read-only views see the new bytes.
    """
    with shm:
        chan.send({"phase": "received", "pid": os.getpid()})
        chan.recv()  # "protected"
        with shm.map_read_only() as view:
            checks = {"read-only view shows the owner's data": view[:] == pattern(BEFORE, shm.size)}
            results, seals, more = attack_region(shm)
            checks.update(more)
            chan.send({"phase": "attacked", "results": results, "seals": seals, "checks": checks})
            chan.recv()  # "rewritten"
            expected = pattern(AFTER, shm.size)
            with shm.map_read_only() as fresh:
                seen = {
                    "old read-only mapping sees the owner's new writes": view[:] == expected,
                    "new read-only mapping sees the owner's new writes": fresh[:] == expected,
                    "pread sees the owner's new writes": (
                        os.pread(shm.fileno(), shm.size, 0) == expected
                    ),
                }
        chan.send({"phase": "done", "checks": seen})


# -- probes: is a region's memory still alive? ------------------------------------------------


class _FileHandle(ctypes.Structure):
    _fields_ = [
        ("handle_bytes", ctypes.c_uint),
        ("handle_type", ctypes.c_int),
        ("f_handle", ctypes.c_ubyte * 128),
    ]


def _file_handle(fd: int) -> bytes | None:
    """name_to_handle_at(fd, "", AT_EMPTY_PATH): a handle that names the inode without
    holding a reference to it (tmpfs/memfd support file handles)."""
    handle = _FileHandle()
    handle.handle_bytes = 128
    mount_id = ctypes.c_int()
    if _libc.name_to_handle_at(
        fd, b"", ctypes.byref(handle), ctypes.byref(mount_id), AT_EMPTY_PATH
    ):
        return None
    return bytes(handle)[: 8 + handle.handle_bytes]


def _handle_alive(raw: bytes) -> bool | None:
    """True if the inode behind ``raw`` still exists, False if it is gone (ESTALE), None if
    this process may not open handles (open_by_handle_at needs CAP_DAC_READ_SEARCH)."""
    handle = _FileHandle.from_buffer_copy(raw.ljust(ctypes.sizeof(_FileHandle), b"\0"))
    # Any memfd names the kernel-internal tmpfs mount on which every memfd lives.
    anchor = os.memfd_create("probe-anchor", os.MFD_CLOEXEC)
    try:
        fd = _libc.open_by_handle_at(anchor, ctypes.byref(handle), os.O_RDONLY | os.O_CLOEXEC)
        if fd >= 0:
            os.close(fd)
            return True
        err = ctypes.get_errno()
    finally:
        os.close(anchor)
    if err == errno.ESTALE:
        return False
    if err in (errno.EPERM, errno.EACCES, errno.ENOSYS, errno.EOPNOTSUPP):
        return None
    raise OSError(err, f"open_by_handle_at: {os.strerror(err)}")


def inode_holders(dev: int, ino: int, link_prefix: str) -> set[tuple[int, str]]:
    """``{(pid, "fd N" | "map A-B")}``: every process with an fd (whose /proc link starts
    with ``link_prefix``) or a mapping of inode ``(dev, ino)``. Processes we may not inspect
    are skipped (as a normal user: other users' processes)."""
    found: set[tuple[int, str]] = set()
    maps_dev = f"{os.major(dev):02x}:{os.minor(dev):02x}"
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                path = f"/proc/{pid}/fd/{fd}"
                with contextlib.suppress(OSError):
                    if not os.readlink(path).startswith(link_prefix):
                        continue
                    st = os.stat(path)
                    if (st.st_dev, st.st_ino) == (dev, ino):
                        found.add((pid, f"fd {fd}"))
        with contextlib.suppress(OSError), open(f"/proc/{pid}/maps") as maps:
            for line in maps:
                fields = line.split(maxsplit=5)
                if len(fields) >= 5 and fields[3] == maps_dev and fields[4] == str(ino):
                    found.add((pid, f"map {fields[0]}"))
    return found


def _descends_from_us(pid: int) -> bool:
    """True if ``pid`` is this process or one of its descendants (forkserver children
    included: they descend from the forkserver, which descends from us)."""
    me = os.getpid()
    while pid > 1:
        if pid == me:
            return True
        try:
            with open(f"/proc/{pid}/stat") as stat:
                # "pid (comm) state ppid ...": comm may contain spaces and parentheses.
                pid = int(stat.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return False
    return False


class RegionProbe:
    """Identifies a region (device, inode, name, file handle) so that a test can later ask
    whether anything still holds it and whether its memory still exists, *without* holding
    it itself. Picklable / JSON-able via ``to_json`` so a child can describe its regions.

    How "released" is decided, and why this is robust:

    * ``holders()`` scans ``/proc/*/fd`` and ``/proc/*/maps`` of every process for the
      region's (device, inode): fds and mappings are the only references a process can hold
      that show in /proc. Exact, no noise from other processes, and it names the culprit.
    * ``inode_alive()`` asks the kernel directly: ``open_by_handle_at`` with a file handle
      taken while the region was alive finds the inode only while it exists, and a memfd's
      inode is evicted (and its pages freed, shmem_evict_inode) exactly when the last
      reference goes, including references /proc cannot show (descriptors in flight in a
      socket queue). It needs CAP_DAC_READ_SEARCH; without it the answer is None and the
      tests rely on ``holders()``.
    * We do not use ``/proc/meminfo`` Shmem for pass/fail of a particular region: it is
      system-wide, and other processes on a shared CI machine allocate and free shmem
      concurrently (one test in test_lifetime checks it, with a big region and retries).
    * We cannot use ``fstat().st_blocks`` after the release: any fd kept to call fstat
      would keep the region alive.
    """

    def __init__(self, dev: int, ino: int, name: str, handle: bytes | None) -> None:
        self.dev = dev
        self.ino = ino
        self.name = name
        self.handle = handle

    @classmethod
    def of(cls, fd: int) -> RegionProbe:
        st = os.fstat(fd)
        return cls(st.st_dev, st.st_ino, region.get_name_region(fd), _file_handle(fd))

    def to_json(self) -> dict[str, Any]:
        return {
            "dev": self.dev,
            "ino": self.ino,
            "name": self.name,
            "handle": None if self.handle is None else self.handle.hex(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RegionProbe:
        handle = None if data["handle"] is None else bytes.fromhex(data["handle"])
        return cls(data["dev"], data["ino"], data["name"], handle)

    def __repr__(self) -> str:
        return f"<region {self.name!r} dev={self.dev} ino={self.ino}>"

    def holders(self) -> set[tuple[int, str]]:
        """``{(pid, "fd N" | "map A-B")}`` for every process that references the region."""
        return inode_holders(self.dev, self.ino, "/memfd:")

    def inode_alive(self) -> bool | None:
        return None if self.handle is None else _handle_alive(self.handle)

    def wait_released(self, timeout: float = 10.0) -> None:
        """Fail unless, within ``timeout``, no process holds the region and (where the
        kernel lets us ask) its inode is gone. Polls: after SIGKILL or a socket close, the
        last ``fput`` may run a moment later (task work, delayed fput)."""
        deadline = time.monotonic() + timeout
        while True:
            holders = self.holders()
            alive = self.inode_alive()
            if not holders and alive is not True:
                return
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{self} still alive after {timeout}s: held by {sorted(holders)}, "
                    f"inode alive={alive}"
                )
            time.sleep(0.01)


def can_probe_inodes() -> bool:
    """True if ``RegionProbe.inode_alive`` can answer (CAP_DAC_READ_SEARCH)."""
    fd = os.memfd_create("probe-self-test", os.MFD_CLOEXEC)
    try:
        handle = _file_handle(fd)
        return handle is not None and _handle_alive(handle) is True
    finally:
        os.close(fd)


def shmem_kib() -> int:
    """System-wide Shmem from /proc/meminfo (tmpfs + memfd + SysV shm pages), in KiB."""
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("Shmem:"):
                return int(line.split()[1])
    raise AssertionError("no Shmem line in /proc/meminfo")


def shm_entries() -> set[str]:
    try:
        return set(os.listdir("/dev/shm"))
    except FileNotFoundError:
        return set()


def assert_no_new_shm_entries(before: set[str], settle: float = 0.5) -> None:
    """Fail if /dev/shm gained an entry since ``before`` that this process tree made.

    /dev/shm is shared by the whole machine, and on a shared CI machine other suites create
    entries while our tests run (``multiprocessing.shared_memory`` benchmarks keep ``psm_*``
    files for seconds). So a new entry counts against us unless it is either gone again
    after ``settle`` seconds (someone's transient file) or open or mapped *only* by processes
    outside our process tree (someone else's live file). A leak of ours is caught either
    way: if we still hold it we are a holder; if nobody holds it, it counts.
    """
    new = shm_entries() - before
    if new:
        time.sleep(settle)
        new &= shm_entries()
    ours = {}
    for entry in sorted(new):
        try:
            st = os.stat(os.path.join("/dev/shm", entry))
        except FileNotFoundError:
            continue
        holders = inode_holders(st.st_dev, st.st_ino, "/dev/shm/")
        if holders and not any(_descends_from_us(pid) for pid, _ in holders):
            continue  # another process's live file
        ours[entry] = sorted(holders)
    assert not ours, f"new entries in /dev/shm (with their holders): {ours}"


def memfd_links(pid: int | str = "self") -> list[str]:
    """The memfd fds of a process: ``["fd 5 -> /memfd:x (deleted)", ...]``."""
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
            if link.startswith("/memfd:"):
                out.append(f"fd {fd} -> {link}")
    return sorted(out)


def memfd_mappings(pid: int | str = "self") -> list[str]:
    """The memfd mappings of a process, as lines of /proc/PID/maps."""
    with open(f"/proc/{pid}/maps") as maps:
        return sorted(line.strip() for line in maps if "/memfd:" in line)


# -- an unrelated process: ``python _helpers_security.py SOCKET_PATH`` -----------------------


def _unrelated_receiver(path: str) -> None:
    """Connect to the owner's socket at ``path``, receive the region, run the receiver."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as sock:
        sock.settimeout(PEER_TIMEOUT)
        sock.connect(path)
        chan = SocketChannel(sock)
        _, items = fdpass.recv(sock, maxfds=1)
        (shm,) = items
        assert isinstance(shm, SharedMemory)
        run_read_only_receiver(shm, chan)


if __name__ == "__main__":
    _unrelated_receiver(sys.argv[1])
