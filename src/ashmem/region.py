"""The libcutils layer: ``ashmem_create_region`` and friends, as functions on raw fds.

A *region* is a memfd created with ``MFD_CLOEXEC | MFD_ALLOW_SEALING`` (and
``MFD_NOEXEC_SEAL`` where the kernel has it) whose size is sealed with
``F_SEAL_GROW | F_SEAL_SHRINK``: it has a name for debugging only, no path anyone can open,
and it is freed when its last descriptor and last mapping are gone.

Protection follows modern Android's memfd backend: removing ``PROT_WRITE`` adds
``F_SEAL_FUTURE_WRITE``. Mappings that are already writable keep working; no new writable
access (``mmap`` with ``PROT_WRITE``, ``mprotect``, ``write``, ``fallocate`` punch-hole,
reopening ``/proc/self/fd/N`` for writing) can ever be created through any descriptor of the
region, in any process. Seals cannot be removed, so this is irreversible. ``PROT_READ``
cannot be revoked on a memfd (the kernel has no seal for it), so ``set_prot_region`` only
ever removes ``PROT_WRITE``; ``PROT_EXEC`` is reported but not enforced, as on Android.

Fd ownership: every function here *borrows* its ``fd`` (never closes it), except
``create_region``, whose caller owns the returned fd.

>>> from ashmem import region
>>> fd = region.create_region("frames", 4096)
>>> region.get_size_region(fd), region.get_name_region(fd)
(4096, 'frames')
>>> region.set_prot_region(fd, region.PROT_READ)
>>> region.get_prot_region(fd) == region.PROT_READ | region.PROT_EXEC
True
>>> import os; os.close(fd)
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import stat
import time

from . import _pins, _sys
from ._errors import ProtectionError

__all__ = [
    "IS_PINNED",
    "IS_UNPINNED",
    "NAME_MAX",
    "NOT_PURGED",
    "PROT_EXEC",
    "PROT_NONE",
    "PROT_READ",
    "PROT_WRITE",
    "WAS_PURGED",
    "check_region",
    "contents_sealed_region",
    "create_region",
    "format_bytes",
    "get_name_region",
    "get_pin_status",
    "get_prot_region",
    "get_size_region",
    "kernel_name",
    "memory_limit",
    "pin_region",
    "populate_region",
    "purge_all_caches",
    "region_size",
    "release_pins",
    "reserve_region",
    "seal_contents_region",
    "set_prot_region",
    "unpin_region",
    "valid",
]

PROT_NONE: int = mmap.PROT_NONE if hasattr(mmap, "PROT_NONE") else 0
PROT_READ: int = mmap.PROT_READ
PROT_WRITE: int = mmap.PROT_WRITE
PROT_EXEC: int = mmap.PROT_EXEC
PROT_MASK = PROT_READ | PROT_WRITE | PROT_EXEC

#: Longest name the kernel keeps: NAME_MAX (255) minus the "memfd:" prefix.
NAME_MAX = 249

_MAX_SIZE = (1 << 63) - 1  # off_t
_SIZE_SEALS = _sys.F_SEAL_GROW | _sys.F_SEAL_SHRINK
_WRITE_SEALS = _sys.F_SEAL_WRITE | _sys.F_SEAL_FUTURE_WRITE

# Flags for memfd_create, narrowed once if the kernel predates MFD_NOEXEC_SEAL (6.3).
_memfd_flags = _sys.MFD_CLOEXEC | _sys.MFD_ALLOW_SEALING | _sys.MFD_NOEXEC_SEAL


def _encode_name(name: str | None) -> bytes:
    if name is None:
        return b"none"
    if not isinstance(name, str):
        raise TypeError(f"region name must be str or None, not {type(name).__name__}")
    if "\0" in name:
        raise ValueError(f"region name {name!r} contains a NUL byte")
    raw = name.encode("utf-8", "surrogateescape")
    if len(raw) <= NAME_MAX:
        return raw
    # Cut at a UTF-8 boundary: never keep half of a multi-byte character.
    cut = NAME_MAX
    while cut > 0 and (raw[cut] & 0xC0) == 0x80:
        cut -= 1
    return raw[:cut]


def kernel_name(name: str | None) -> str:
    """The name the kernel will keep for a region created as ``name``: ``"none"`` for None,
    cut to 249 UTF-8 bytes at a character boundary. ``ValueError`` for a NUL byte."""
    return _encode_name(name).decode("utf-8", "surrogateescape")


def format_bytes(n: int) -> str:
    """``n`` bytes for people: ``512 B``, ``4.0 KiB``, ``1.5 GiB``.

    >>> format_bytes(1536 * 1024)
    '1.5 MiB'
    """
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if value < 1024 or unit == "PiB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


# A cgroup limit this large means "no limit" (cgroup v1 prints PAGE_COUNTER_MAX pages).
_NO_LIMIT = 1 << 62


def _read_limit(path: str) -> int | None:
    try:
        with open(path, "rb") as f:
            text = f.read().strip()
    except OSError:
        return None
    if text == b"max":
        return None
    try:
        value = int(text)
    except ValueError:
        return None
    return value if value < _NO_LIMIT else None


def _smallest_limit(base: str, path: str, name: str) -> int | None:
    """The smallest ``name`` limit from cgroup ``path`` up to the root of ``base``."""
    best: int | None = None
    parts = [p for p in path.split("/") if p]
    for depth in range(len(parts), -1, -1):
        limit = _read_limit(os.path.join(base, *parts[:depth], name))
        if limit is not None and (best is None or limit < best):
            best = limit
    return best


def _meminfo() -> tuple[int, int]:
    """(MemTotal, SwapTotal) in bytes."""
    total = swap = 0
    with open("/proc/meminfo", "rb") as f:
        for line in f:
            key, _, rest = line.partition(b":")
            if key == b"MemTotal":
                total = int(rest.split()[0]) * 1024
            elif key == b"SwapTotal":
                swap = int(rest.split()[0]) * 1024
    return total, swap


def _compute_memory_limit() -> tuple[int, str]:
    total, swap = _meminfo()
    memory: int | None = None
    with_swap: int | None = None
    try:
        with open("/proc/self/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        lines = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "" and os.path.exists("/sys/fs/cgroup/cgroup.controllers"):
            # cgroup v2: memory.max, plus memory.swap.max of swap on top of it
            memory = _smallest_limit("/sys/fs/cgroup", path, "memory.max")
            if memory is not None:
                cg_swap = _smallest_limit("/sys/fs/cgroup", path, "memory.swap.max")
                with_swap = memory + min(swap, swap if cg_swap is None else cg_swap)
        elif "memory" in controllers.split(","):
            # cgroup v1: memory.limit_in_bytes; memory.memsw.limit_in_bytes is memory + swap
            base = "/sys/fs/cgroup/memory"
            memory = _smallest_limit(base, path, "memory.limit_in_bytes")
            if memory is not None:
                memsw = _smallest_limit(base, path, "memory.memsw.limit_in_bytes")
                with_swap = memory + swap if memsw is None else min(memsw, memory + swap)
        if with_swap is not None:
            break
    machine = total + swap
    if with_swap is not None and with_swap < machine:
        return with_swap, "the memory cgroup's limit, swap included"
    return machine, "RAM + swap"


_limit_cache: tuple[float, int, str] = (-1.0, 0, "")
_LIMIT_TTL = 1.0  # seconds: limits change rarely; re-read at most once a second


def _memory_limit() -> tuple[int, str]:
    global _limit_cache
    now = time.monotonic()
    stamp, limit, source = _limit_cache
    if stamp < 0 or now - stamp > _LIMIT_TTL:
        try:
            limit, source = _compute_memory_limit()
        except (OSError, ValueError):
            # /proc unreadable (out of descriptors, no /proc): keep the last answer, or check
            # nothing, and let the kernel's own refusal speak.
            return (limit, source) if stamp >= 0 else (_MAX_SIZE, "no limit known")
        _limit_cache = (now, limit, source)
    return limit, source


def memory_limit() -> int:
    """The most memory, in bytes, that any region created by this process could ever hold:
    the memory cgroup's limit (swap included) where there is one, else the machine's RAM +
    swap. ``create_region`` refuses larger sizes before anything is allocated, so that a typo
    in a size can never bring in the OOM killer. Read from ``/proc`` and ``/sys/fs/cgroup``
    (v1 or v2, the smallest limit on the way up to the root), at most once a second.

    >>> memory_limit() > 0
    True
    """
    return _memory_limit()[0]


def _check_size(size: object, label: str | None = None) -> int:
    if not isinstance(size, int) or isinstance(size, bool):
        raise TypeError(f"region size must be an int (bytes), not {type(size).__name__}")
    if size <= 0:
        raise ValueError(f"region size must be > 0, got {size}")
    if size > _MAX_SIZE:
        raise ValueError(f"region size {size} is too large (at most {_MAX_SIZE} bytes)")
    limit, source = _memory_limit()
    if size > limit:
        raise ValueError(
            f"{_sys.describe(label)}: {format_bytes(size)} ({size} bytes) asked, but this "
            f"process can never have more than {format_bytes(limit)} ({source}); "
            "check the size"
        )
    return size


def create_region(name: str | None, size: int) -> int:
    """Create a region of ``size`` bytes named ``name`` (debug only; ``None`` means "none").

    Returns a new CLOEXEC fd that the caller owns. Names longer than 249 UTF-8 bytes are cut
    at a character boundary. Raises ``ValueError`` for a NUL in the name, a size that is not
    an int, or ``size <= 0``; ``TypeError`` for a name that is not a str; ``OSError`` (errno
    kept) when the kernel refuses. No fd is left open on any failure.

    >>> fd = create_region("log", 1 << 20); get_size_region(fd)
    1048576
    >>> import os; os.close(fd)
    """
    return _create(name, size)[0]


def _label(name: str | None) -> str:
    """``kernel_name(name)``, without encoding a short ASCII name twice."""
    if name is None:
        return "none"
    if type(name) is str and len(name) <= NAME_MAX and name.isascii() and "\0" not in name:
        return name  # one byte per character: nothing to cut
    return _encode_name(name).decode("utf-8", "surrogateescape")


def _create(name: str | None, size: int, reserve: bool = False) -> tuple[int, str]:
    """``create_region``, then ``reserve_region`` if ``reserve``, in one call: ``(fd,
    kernel name)``. The caller owns the fd; no fd is left open on any failure. What
    ``SharedMemory.create`` runs, so its checks are inlined where they cannot fail."""
    global _memfd_flags
    label = _label(name)
    stamp, limit, _ = _limit_cache
    if type(size) is not int or not 0 < size <= limit or time.monotonic() - stamp > _LIMIT_TTL:
        size = _check_size(size, label)  # raises, or refreshes the cached memory limit
    try:
        fd = os.memfd_create(label, _memfd_flags)
    except OSError as exc:
        if exc.errno != errno.EINVAL or not _memfd_flags & _sys.MFD_NOEXEC_SEAL:
            raise _sys.translate(exc, "create", label) from exc
        # Kernel older than 6.3: no MFD_NOEXEC_SEAL. Remember and retry without it.
        _memfd_flags &= ~_sys.MFD_NOEXEC_SEAL
        try:
            fd = os.memfd_create(label, _memfd_flags)
        except OSError as exc2:
            raise _sys.translate(exc2, "create", label) from exc2
    try:
        os.ftruncate(fd, size)
        fcntl.fcntl(fd, _sys.F_ADD_SEALS, _SIZE_SEALS)
        # The creator's pin (see ashmem._pins): a read lock on this new description. Nobody
        # else can hold a lock on an inode that was created a moment ago, so it cannot be
        # refused for a conflict; any error is a real one.
        pin = _sys.FLOCK.pack(_F_RDLCK, os.SEEK_SET, 0, -(-size // _PAGE) * _PAGE, 0)
        fcntl.fcntl(fd, _sys.F_OFD_SETLK, pin)
    except OSError as exc:
        os.close(fd)
        raise _sys.translate(exc, f"size to {size} bytes", label) from exc
    except BaseException:
        os.close(fd)
        raise
    if reserve:
        try:
            if size > RESERVE_CHUNK:
                reserve_region(fd, size)  # in chunks, so that Ctrl-C can stop it
            else:
                try:
                    os.posix_fallocate(fd, 0, size)
                except OSError as exc:
                    raise _sys.translate(exc, f"reserve {size} bytes", label) from exc
        except BaseException:
            os.close(fd)  # frees every page it took
            raise
    return fd, label


_F_RDLCK = _sys.F_RDLCK
_PAGE = _pins.PAGE


#: ``reserve_region`` allocates this much per ``fallocate`` call, so that a signal handler
#: (Ctrl-C) runs between chunks and a huge reservation can be stopped part-way.
RESERVE_CHUNK = 64 << 20


def reserve_region(fd: int, size: int | None = None) -> None:
    """Allocate every page of the region now, so that a memory cgroup (or a size-limited
    tmpfs) that cannot grant them fails here with ``OSError(ENOMEM/ENOSPC)`` instead of a
    later write stalling or dying in a page fault. ``size``: the region's size if the caller
    knows it (saves an ``fstat``). Borrows ``fd``.

    Allocates ``RESERVE_CHUNK`` bytes per call, so ``KeyboardInterrupt`` (or any exception
    from a signal handler) stops it between chunks. Pages already allocated stay allocated
    (the region's contents are never touched); ``SharedMemory.create`` closes the new region
    on any failure, which frees them all."""
    if size is None:
        size = get_size_region(fd)
    offset = 0
    try:
        while offset < size:
            step = min(RESERVE_CHUNK, size - offset)
            # fallocate(2) mode 0 on tmpfs; unlike a bare ctypes call it retries on EINTR
            # after running Python signal handlers.
            os.posix_fallocate(fd, offset, step)
            offset += step
    except OSError as exc:
        raise _sys.translate(exc, f"reserve {size} bytes", _name_or_none(fd)) from exc


def populate_region(
    mapping: mmap.mmap, *, read_only: bool = False, name: str | None = None
) -> bool:
    """Prefault a writable shared mapping of a region (``MADV_POPULATE_WRITE``, Linux 5.14),
    or with ``read_only=True`` a read-only one (``MADV_POPULATE_READ``). ``name``: the
    region's, for the error message.

    Returns False where the kernel lacks the advice (nothing done). Raises ``OSError`` with
    ENOMEM/EFAULT when memory cannot be had, instead of a later SIGBUS."""
    advice = _sys.MADV_POPULATE_READ if read_only else _sys.MADV_POPULATE_WRITE
    try:
        mapping.madvise(advice)
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            return False
        raise _sys.translate(exc, "populate a mapping", name) from exc
    return True


def get_size_region(fd: int) -> int:
    """Size in bytes of the region behind ``fd``. Borrows ``fd``."""
    try:
        return os.fstat(fd).st_size
    except OSError as exc:
        raise _sys.translate(exc, "get the size") from exc


def _link(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            exc = OSError(errno.EBADF, os.strerror(errno.EBADF))
        raise _sys.translate(exc, f"read the name of fd {fd}") from exc


def _name_or_none(fd: int) -> str | None:
    try:
        return _sys.memfd_name(_link(fd))
    except OSError:
        return None


def get_name_region(fd: int) -> str:
    """The debug name of the region behind ``fd``, without the ``memfd:`` prefix.

    Raises ``ValueError`` if ``fd`` is not a memfd. Borrows ``fd``."""
    name = _sys.memfd_name(_link(fd))
    if name is None:
        raise ValueError(f"fd {fd} is not an ashmem region (not a memfd)")
    return name


def _seals(fd: int) -> int:
    try:
        return fcntl.fcntl(fd, _sys.F_GET_SEALS)
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            raise ValueError(f"fd {fd} is not an ashmem region (it has no file seals)") from None
        raise _sys.translate(exc, f"read the seals of fd {fd}") from exc


def get_prot_region(fd: int) -> int:
    """``PROT_READ | PROT_EXEC``, plus ``PROT_WRITE`` unless the region is write-sealed.

    Borrows ``fd``."""
    prot = PROT_READ | PROT_EXEC
    if not _seals(fd) & _WRITE_SEALS:
        prot |= PROT_WRITE
    return prot


def region_size(fd: int) -> int | None:
    """Size of the region behind ``fd``, or None if ``fd`` is not a region. Never raises for
    a bad fd. Borrows ``fd``.

    Two syscalls, no ``/proc`` lookup: only shmem and hugetlbfs files support seals, and every
    such file except a memfd created with ``MFD_ALLOW_SEALING`` starts with ``F_SEAL_SEAL``,
    which forbids adding any other seal. So a regular file whose seals include
    ``F_SEAL_GROW | F_SEAL_SHRINK`` is a sealable memfd with a fixed size: a region.
    """
    if not isinstance(fd, int) or isinstance(fd, bool) or fd < 0:
        return None
    return _region_size(fd)


_S_IFMT = 0o170000  # stat.S_IFMT's mask, as a constant: one call less per received region


def _region_size(fd: int) -> int | None:
    """``region_size`` for an fd number known to be an int >= 0 (one the kernel just gave
    us): the same two syscalls and checks, without the argument checks. Borrows ``fd``."""
    try:
        st = os.fstat(fd)
        seals = fcntl.fcntl(fd, _sys.F_GET_SEALS)
    except (OSError, OverflowError):  # OverflowError: a number no fd can have
        return None
    if st.st_mode & _S_IFMT != stat.S_IFREG or seals & _SIZE_SEALS != _SIZE_SEALS:
        return None
    return st.st_size


def _sealed_region(fd: int) -> bool:
    """Whether ``fd`` (an int >= 0 the kernel just gave us) is a region, in one syscall:
    ``F_GET_SEALS`` fails (``EINVAL``) on anything but shmem and hugetlbfs files, which are
    regular files, and only a memfd made with ``MFD_ALLOW_SEALING`` can carry
    ``F_SEAL_GROW | F_SEAL_SHRINK`` (see ``region_size``). So this is ``_region_size`` without
    its ``fstat``: the size is left to whoever needs it first (``mmap`` reads it anyway to
    map the whole file). Borrows ``fd``."""
    try:
        seals = fcntl.fcntl(fd, _sys.F_GET_SEALS)
    except (OSError, OverflowError):
        return False
    return seals & _SIZE_SEALS == _SIZE_SEALS


def check_region(fd: int) -> int:
    """The size of the region behind ``fd``, or an exception that says what ``fd`` is
    instead: ``TypeError`` if it is not an int, ``OSError(EBADF)`` if it is not an open
    descriptor, ``ValueError`` if it is open but not a region. Borrows ``fd``.

    >>> check_region(-1)
    Traceback (most recent call last):
    ...
    OSError: [Errno 9] fd -1 is not an open file descriptor
    """
    if not isinstance(fd, int) or isinstance(fd, bool):
        raise TypeError(f"a file descriptor must be an int, not {type(fd).__name__}")
    size = region_size(fd)
    if size is not None:
        return size
    try:
        fcntl.fcntl(fd, fcntl.F_GETFD)
    except (OSError, OverflowError, ValueError):  # ValueError: a negative number
        raise OSError(errno.EBADF, f"fd {fd} is not an open file descriptor") from None
    raise ValueError(
        f"fd {fd} is not an ashmem region (expected a memfd with F_SEAL_GROW and "
        "F_SEAL_SHRINK, as created by create_region)"
    )


def valid(fd: int) -> bool:
    """True only if ``fd`` is an open ashmem region: a memfd whose size is sealed.

    Unlike libcutils' ``ashmem_valid`` this is False for any other kind of fd, including a
    memfd made elsewhere whose size is not sealed (shrinking it could SIGBUS a mapping).
    Never raises for a bad fd. Borrows ``fd``."""
    return region_size(fd) is not None


def seal_contents_region(fd: int) -> None:
    """Freeze the region's bytes for good (``F_SEAL_WRITE | F_SEAL_SEAL``): stronger than
    removing ``PROT_WRITE``, it also stops writes through mappings that already exist, so the
    kernel refuses it (``OSError(EBUSY)``) while any writable shared mapping is alive. For
    payloads written with ``pwrite`` and never mapped. Borrows ``fd``."""
    try:
        fcntl.fcntl(fd, _sys.F_ADD_SEALS, _sys.F_SEAL_WRITE | _sys.F_SEAL_SEAL)
    except OSError as exc:
        raise _sys.translate(exc, "seal the contents", _name_or_none(fd)) from exc


def contents_sealed_region(fd: int) -> bool:
    """True if the region's bytes are frozen for good (``F_SEAL_WRITE``): no holder, in any
    process, can change them. Borrows ``fd``."""
    return bool(_seals(fd) & _sys.F_SEAL_WRITE)


def check_prot(prot: object) -> int:
    """Validate protection bits; ``ValueError`` for anything outside READ|WRITE|EXEC."""
    if not isinstance(prot, int) or isinstance(prot, bool):
        raise TypeError(f"prot must be an int of PROT_* bits, not {type(prot).__name__}")
    if prot & ~PROT_MASK or prot < 0:
        raise ValueError(
            f"invalid prot {prot:#x}: only PROT_READ, PROT_WRITE and PROT_EXEC may be combined"
        )
    return prot


def set_prot_region(fd: int, prot: int) -> None:
    """Restrict the region to ``prot``. Removing ``PROT_WRITE`` is irreversible (it adds
    ``F_SEAL_FUTURE_WRITE``); asking for ``PROT_WRITE`` on a write-protected region raises
    ``ProtectionError``. Invalid bits raise ``ValueError``. ``PermissionError`` (not
    ProtectionError) if the region cannot be protected because some holder sealed its seals
    (``F_SEAL_SEAL``). Borrows ``fd``.

    ``PROT_READ`` cannot be revoked on a memfd: leaving it out is accepted and does nothing,
    as on modern Android."""
    check_prot(prot)
    seals = _seals(fd)
    if prot & PROT_WRITE:
        if seals & _WRITE_SEALS:
            name = _name_or_none(fd)
            raise ProtectionError(
                f"cannot add PROT_WRITE back to {_sys.describe(name)}: write protection is "
                "irreversible (F_SEAL_FUTURE_WRITE); create a new region to write again",
                name,
            )
        return
    if seals & _WRITE_SEALS:
        return
    try:
        fcntl.fcntl(fd, _sys.F_ADD_SEALS, _sys.F_SEAL_FUTURE_WRITE)
    except OSError as exc:
        name = _name_or_none(fd)
        if exc.errno == errno.EPERM:
            # Not "already protected": a holder of a writable fd set F_SEAL_SEAL, which
            # forbids every new seal. The region stays writable; say so, loudly.
            raise PermissionError(
                errno.EPERM,
                f"cannot write-protect {_sys.describe(name)}: a holder of its fd set "
                "F_SEAL_SEAL, so no seal can be added and it stays writable; create a new "
                "region and share it only after set_protect",
            ) from exc
        raise _sys.translate(exc, "write-protect", name) from exc


# -- purgeable memory (ASHMEM_PIN, ASHMEM_UNPIN, ASHMEM_GET_PIN_STATUS, PURGE_ALL_CACHES) -----
# How pins, purges and their races work is in ashmem._pins.

#: ``pin_region`` result: no page of the range was purged.
NOT_PURGED: int = _pins.NOT_PURGED
#: ``pin_region`` result: some page was purged while unpinned; the range now reads as zeros.
WAS_PURGED: int = _pins.WAS_PURGED
#: ``get_pin_status`` result: every page of the range is pinned by some process.
IS_PINNED: int = _pins.IS_PINNED
#: ``get_pin_status`` result: some page of the range is pinned by no process.
IS_UNPINNED: int = _pins.IS_UNPINNED


def pin_region(fd: int, offset: int = 0, length: int = 0) -> int:
    """Pin ``[offset, offset + length)`` (``length`` 0: to the end) for this process, so no
    purge can discard it, and say whether it was discarded while unpinned: ``WAS_PURGED``
    (the purged pages read as zeros) or ``NOT_PURGED``.

    Pins belong to this process and are not counted (one ``unpin_region`` undoes any number
    of pins); they end when the process exits or the region is closed. A new region starts
    pinned by its creator. Offsets and lengths must be page-aligned and inside the
    page-rounded size (``ValueError``). Borrows ``fd``.

    >>> fd = create_region("cache", 8192)
    >>> unpin_region(fd, 4096, 4096)
    >>> purge_all_caches()
    4096
    >>> pin_region(fd, 4096) == WAS_PURGED, pin_region(fd, 4096) == WAS_PURGED
    (True, False)
    >>> release_pins(fd); import os; os.close(fd)
    """
    return _pins.pin(fd, offset, length)


def unpin_region(fd: int, offset: int = 0, length: int = 0) -> None:
    """Unpin ``[offset, offset + length)`` for this process: once no process pins it, it may
    be purged (by this process's purger: ``purge_all_caches`` or ``ashmem.purge``).

    Raises ``ProtectionError`` on a write-protected region: its pages can never be punched,
    so it stays pinned. Same range rules as ``pin_region``. Borrows ``fd``."""
    _pins.unpin(fd, offset, length)


def get_pin_status(fd: int, offset: int = 0, length: int = 0) -> int:
    """``IS_UNPINNED`` if any page of the range is pinned by no process (in the whole
    system), else ``IS_PINNED``. Borrows ``fd``.

    >>> fd = create_region("status", 4096)
    >>> get_pin_status(fd) == IS_PINNED
    True
    >>> unpin_region(fd); get_pin_status(fd) == IS_UNPINNED
    True
    >>> release_pins(fd); import os; os.close(fd)
    """
    return _pins.get_pin_status(fd, offset, length)


def purge_all_caches() -> int:
    """Purge every range this process unpinned that no process pins, least recently unpinned
    first; returns the bytes purged. Their memory goes back to the system.

    A process can only punch regions it holds, so this purges this process's unpinned ranges
    only; under system-wide pressure every process's ``ashmem.purge`` manager purges its own.
    """
    return _pins.purge("purge_all_caches")[0]


def release_pins(fd: int) -> None:
    """Say that ``fd`` is about to be closed: if it is this process's last fd of the region,
    drop this process's pins on it and its extra pin descriptor now (``SharedMemory.close``
    does this; raw-fd code calls it before ``os.close``, or the next purge notices). Borrows
    ``fd``; never raises."""
    _pins.release(fd)
