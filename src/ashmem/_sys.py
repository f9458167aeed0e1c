"""The only module that talks to libc directly, and the only one that turns OSError into
ashmem errors.

Everything the standard library wraps (``os.memfd_create``, ``fcntl``, ``mmap``,
``os.posix_fallocate``) is used as is; ctypes fills the gap: ``pidfd_getfd`` and
``fallocate(FALLOC_FL_PUNCH_HOLE)``. Open-file-description (OFD) byte-range locks, which the
purgeable-memory layer uses as pins, are packed here too (``struct flock`` by hand).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import struct
import sys

from ._errors import ProtectionError, UnsupportedPlatformError

if not sys.platform.startswith("linux") or not hasattr(os, "memfd_create"):
    raise UnsupportedPlatformError(
        errno.ENOSYS,
        "ashmem needs Linux >= 5.1 (memfd_create, file seals, F_SEAL_FUTURE_WRITE); "
        f"this is {sys.platform!r}",
    )

# memfd_create(2) flags. MFD_NOEXEC_SEAL and MFD_EXEC exist since Linux 6.3.
MFD_CLOEXEC = 0x0001
MFD_ALLOW_SEALING = 0x0002
MFD_NOEXEC_SEAL = 0x0008

# fcntl(2) sealing commands and seals (include/uapi/linux/fcntl.h).
F_ADD_SEALS = 1033
F_GET_SEALS = 1034
F_SEAL_SEAL = 0x0001
F_SEAL_SHRINK = 0x0002
F_SEAL_GROW = 0x0004
F_SEAL_WRITE = 0x0008
F_SEAL_FUTURE_WRITE = 0x0010  # Linux 5.1

# How the kernel names a memfd in /proc/PID/fd links and /proc/PID/maps:
# "/memfd:NAME (deleted)" (memfd_create(2); the file has no directory entry).
MEMFD_LINK_PREFIX = "/memfd:"
_DELETED_SUFFIX = " (deleted)"


def memfd_name(link: str) -> str | None:
    """``NAME`` from a ``/proc`` link or maps path ``/memfd:NAME (deleted)``; None for
    anything that is not a memfd. The one parser of that form (``region``, ``ashmem ls``).

    >>> memfd_name("/memfd:frames (deleted)"), memfd_name("/dev/shm/x")
    ('frames', None)
    """
    if not link.startswith(MEMFD_LINK_PREFIX):
        return None
    return link[len(MEMFD_LINK_PREFIX) :].removesuffix(_DELETED_SUFFIX)


# madvise(2) advice not all Python versions name.
MADV_POPULATE_READ = 22  # Linux 5.14
MADV_POPULATE_WRITE = 23  # Linux 5.14

# syscall numbers with no libc wrapper in older glibc.
# pidfd_getfd is 438 on every architecture that uses the unified syscall table (x86_64,
# arm64, riscv, ...); alpha and ia64 number differently and are not supported.
_PIDFD_GETFD = 438

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def pidfd_getfd(pidfd: int, targetfd: int) -> int:
    """pidfd_getfd(2): a new CLOEXEC fd in this process for ``targetfd`` of the process
    behind ``pidfd``. Borrows ``pidfd``; the caller owns the returned fd."""
    fd = int(
        _libc.syscall(
            ctypes.c_long(_PIDFD_GETFD),
            ctypes.c_int(pidfd),
            ctypes.c_int(targetfd),
            ctypes.c_uint(0),
        )
    )
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return fd


# -- purgeable memory: OFD locks and hole punching ---------------------------------------------

# fcntl(2) open-file-description locks (Linux 3.15): owned by the open file description, not
# by the process, so two descriptions of one file opened by the same process conflict.
F_OFD_GETLK = 36
F_OFD_SETLK = 37
F_OFD_SETLKW = 38
F_RDLCK = fcntl.F_RDLCK
F_WRLCK = fcntl.F_WRLCK
F_UNLCK = fcntl.F_UNLCK
# struct flock { short l_type, l_whence; off_t l_start, l_len; pid_t l_pid; } with native
# alignment: 32 bytes on every 64-bit Linux ABI. l_pid must be 0 for the OFD commands.
# FLOCK also serves region's creator pin, packed inline on every create.
_FLOCK = FLOCK = struct.Struct("hhqqi4x")

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02

_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
_libc.fallocate.restype = ctypes.c_int


def ofd_lock(fd: int, lock_type: int, start: int, length: int, *, wait: bool) -> bool:
    """Set (``F_RDLCK``/``F_WRLCK``) or clear (``F_UNLCK``) an OFD lock on bytes
    ``[start, start + length)`` of the description behind ``fd`` (``length`` 0: to the end of
    all offsets). With ``wait`` it blocks until granted (``F_OFD_SETLKW``; signals are retried
    by Python); without, returns False when another description holds a conflicting lock.
    Borrows ``fd``. Raises the raw ``OSError`` for anything else (the caller translates)."""
    packed = _FLOCK.pack(lock_type, os.SEEK_SET, start, length, 0)
    try:
        fcntl.fcntl(fd, F_OFD_SETLKW if wait else F_OFD_SETLK, packed)
    except OSError as exc:
        if not wait and exc.errno in (errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


def ofd_conflict(fd: int, start: int, length: int) -> tuple[int, int] | None:
    """The ``(start, end)`` of one lock, held by *another* description, that overlaps
    ``[start, start + length)``, or None if there is none (``F_OFD_GETLK`` asking for a write
    lock, which every other lock conflicts with; ``end`` is -1 for "to the end of all
    offsets"). Works on a read-only description. Borrows ``fd``."""
    packed = _FLOCK.pack(F_WRLCK, os.SEEK_SET, start, length, 0)
    lock_type, _, got_start, got_length, _ = _FLOCK.unpack(fcntl.fcntl(fd, F_OFD_GETLK, packed))
    if lock_type == F_UNLCK:
        return None
    return got_start, (-1 if got_length == 0 else got_start + got_length)


def punch_hole(fd: int, offset: int, length: int) -> None:
    """``fallocate(PUNCH_HOLE | KEEP_SIZE)``: free the pages of ``[offset, offset + length)``
    (they read back as zeros; every mapping of them is zapped). Needs a description opened
    for writing; ``EPERM`` on a write-sealed region. Borrows ``fd``."""
    while True:
        result = _libc.fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length)
        if result == 0:
            return
        err = ctypes.get_errno()
        if err != errno.EINTR:
            raise OSError(err, os.strerror(err))


def describe(region: str | None) -> str:
    return "region" if region is None else f"region {region!r}"


def translate(exc: OSError, doing: str, region: str | None = None) -> OSError:
    """Turn an OSError from the kernel into the exception ashmem raises.

    ``doing`` says what was attempted ("map region read-write"). EPERM on a sealed region
    becomes ProtectionError; everything else keeps its errno and OSError subclass, with a
    message naming the region and, where we know one, the fix. Raise the result
    ``from exc``.
    """
    code = exc.errno
    what = f"{describe(region)}: " if region is not None else ""
    if code is None:  # a socket timeout (TimeoutError) and the like: keep the class
        return type(exc)(f"{what}cannot {doing}: {exc}")
    if code == errno.EPERM:
        return ProtectionError(
            f"{what}cannot {doing}: it is write-protected (set_protect removed "
            "PROT_WRITE, sealing it for every descriptor in every process); "
            "use map_read_only()",
            region,
        )
    hint = ""
    if code == errno.ENOSPC:
        hint = " (tmpfs or the memory cgroup is full; free memory or create a smaller region)"
    elif code == errno.ENOMEM:
        hint = " (out of memory or address space)"
    elif code == errno.EMFILE:
        hint = " (open-file limit reached; close descriptors or raise RLIMIT_NOFILE)"
    elif code == errno.EBADF:
        hint = " (the descriptor is not open)"
    message = f"{what}cannot {doing}: {os.strerror(code) if code else exc}{hint}"
    return OSError(code, message)
