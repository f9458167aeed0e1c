"""The only module that talks to libc directly, and the only one that turns OSError into
ashmem errors.

Everything the standard library wraps (``os.memfd_create``, ``fcntl``, ``mmap``,
``os.posix_fallocate``) is used as is; ctypes fills the gap: ``pidfd_getfd``.
"""

from __future__ import annotations

import ctypes
import errno
import os
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

# madvise(2) advice not all Python versions name.
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
