"""Pins, unpins and purges: Ashmem's purgeable memory rebuilt on memfd, across processes.

Android's ashmem driver kept pin state inside the kernel (``ASHMEM_PIN``, ``ASHMEM_UNPIN``,
``ASHMEM_GET_PIN_STATUS``, ``ASHMEM_PURGE_ALL_CACHES``) and its shrinker discarded unpinned
pages under memory pressure. A memfd has none of that; this module builds the same contract
from pieces the kernel does have. What follows was checked by experiment on Linux 6.18
(tests/test_purge.py keeps checking each fact it relies on).

Pieces and the facts behind them
--------------------------------
*A pin is an OFD read lock.* Each process that uses the pin API on a region opens its own
open file description of it (``open("/proc/self/fd/N")``, the *pin description*) and holds a
``F_OFD_SETLK`` read lock on every byte range it pins. OFD locks belong to the description,
not to a file descriptor or a thread: the kernel merges and splits them, so pins within one
process are not counted (one unpin undoes any number of pins, as in ashmem); they go away
when the description's last fd is closed, which the kernel does when the process exits or is
SIGKILLed. The pin description is never sent anywhere, so a pin never outlives its process.
Read locks of different descriptions coexist: processes pin the same range at once.

*A purge is a non-blocking OFD write lock, then a hole punch.* The purger opens yet another
description (``O_RDWR``; a write lock needs one opened for writing) and takes
``F_OFD_SETLK`` (never ``SETLKW``) write locks. A write lock is refused while any other
description holds a read lock on any byte of the range, including this process's own pin
description: that is why the purger must not use the pinner's description, which would just
upgrade its own read lock. Where part of a range is pinned, ``F_OFD_GETLK`` finds the
conflicting locks and only the gaps between them are purged. Under the write lock the purger
runs ``fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE)``: the pages are freed (the
inode's ``st_blocks`` drops, and so does ``RssShmem`` of every process that mapped them,
since the punch zaps their page-table entries), the size stays, the range reads as zeros,
and a later fault through a mapping allocates a fresh zero page.

*The purge mark is an extended attribute, not a hole.* ``SEEK_HOLE``/``SEEK_DATA`` cannot
tell a purged page from a page nobody wrote: pages that ``fallocate`` reserved (what
``SharedMemory.create`` does by default) read as holes until written or populated with
``MADV_POPULATE_WRITE``/``READ``, exactly like punched pages. A hole-based detector would
have to populate every unpinned page at unpin time (allocating memory for pages nobody
wrote) and would still report a fresh reserved region as purged. So the purger writes the
purged pages into the region's ``user.ashmem.purged`` xattr (format: ``ashmem._purged``)
*before* punching, and a pin reads it. Marking first means a purger killed between the two
steps leaves a mark on pages that were not punched: the pin then reports a purge that did not
happen, the safe direction. If the punch fails, the mark is taken back.

*The marks are updated under a meta lock*: an OFD write lock on one byte far beyond any
region's end (``META_OFFSET``), taken by whoever rewrites the attribute, so two purgers (or
a purger and a pinner clearing marks) cannot lose each other's update. Pins and purges never
lock that byte otherwise, and nobody waits for a pin or purge lock while holding it, so it
cannot deadlock.

*Waiting is bounded.* Any holder of a region can take OFD locks on it, so a hostile or stuck
process could hold a write lock for ever. A pin therefore does not block in ``SETLKW``: it
retries ``SETLK`` with a growing pause (100 µs to 10 ms) for at most ``LOCK_TIMEOUT``
(10 s; a purge holds its lock for one hole punch) and then raises ``TimeoutError``. The
same holds for the meta lock.

*A new region is pinned by its creator.* ``region.create_region`` takes a read lock over the
whole region on the description ``memfd_create`` returned. That description travels with
the fd (``dup``, ``fork``, ``SCM_RIGHTS`` all share it), so it protects the region until the
first process that uses the pin API through it takes the lock over: that process reads its
fd's locks from ``/proc/self/fdinfo/N``, takes the same read locks on its pin description,
then drops them from the shared one. A process that never uses the pin API holds no pin.

The race analysis
-----------------
The one race that matters is pin against purge, in any two processes (or threads):

1. The pinner's read lock and the purger's write lock on overlapping bytes are serialised
   by the kernel's lock list (one spinlock per inode); neither can hold both.
2. If the pin is granted first, the write lock is refused (``EAGAIN``): the purger skips
   that range; nothing was marked or punched. The pin found no new mark, correctly.
3. If the write lock is granted first, the pinner waits (retrying its read lock) until the
   purger has marked, punched and unlocked. Marking and punching are system calls that
   complete before the unlock, so once the read lock is granted the mark is visible to
   ``getxattr``: the pin returns ``WAS_PURGED``. A purger that dies holding the lock
   releases it (its description closes); whatever it marked is reported.
4. A pin only reads the marks without the meta lock: no mark can be added to its range while
   it holds the read lock (adding one needs the write lock on that range), and
   ``getxattr``/``setxattr`` are atomic with respect to each other. Only when it finds a mark
   does it take the meta lock, re-read, remove its range's marks and write back.
5. Unpin drops the read lock first and records the range for the purger afterwards; a purge
   in between does not know the range yet and simply skips it. This process's bookkeeping
   (which ranges it unpinned, in LRU order) is only a list of candidates: the locks, not the
   list, decide what may be punched.

So a pin either completes before a purge and protects its range, or completes after it and
returns ``WAS_PURGED``; tests/test_purge_processes.py runs 1,000 rounds of this race
between two processes.

Semantics that follow
---------------------
* ``pin`` returns ``WAS_PURGED`` if any page of the range was purged since it was last
  pinned by anyone, and clears that. As in ashmem, a second process that pins afterwards is
  told ``NOT_PURGED`` (the first one was told, and regenerates).
* Only ranges this process unpinned are purged by it (a process can only punch regions it
  holds); under system-wide pressure every process's manager purges its own.
* A write-protected region cannot be punched (``F_SEAL_WRITE`` and ``F_SEAL_FUTURE_WRITE``
  both refuse ``PUNCH_HOLE`` with ``EPERM``). ``unpin`` on it raises ``ProtectionError``
  and the range stays pinned: unpinning would promise memory that can never be given back.
  A range unpinned before the region was protected is dropped from the purge candidates at
  the first purge that meets ``EPERM``, and stays unpinned.
* Purging needs user xattrs on tmpfs (Linux 6.6). Where ``setxattr`` is refused, pin and
  unpin still work but nothing is ever purged; the ``ashmem.purge`` logger says so once.
* Closing a region (the last ``SharedMemory`` of it, or :func:`release` for raw fds) closes
  the pin description, releasing this process's pins, so pins never keep a closed region's
  memory alive. Raw fds closed with ``os.close`` are noticed at the next purge pass.
* After ``fork`` the child shares the parent's pin descriptions; it closes its copies without
  unlocking (unlocking would drop the parent's pins) and starts with no pins of its own.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import itertools
import logging
import mmap
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from . import _purged, _sys
from ._errors import ProtectionError

__all__ = [
    "IS_PINNED",
    "IS_UNPINNED",
    "NOT_PURGED",
    "WAS_PURGED",
    "get_pin_status",
    "pin",
    "purge",
    "release",
    "unpin",
]

PAGE = mmap.PAGESIZE
NOT_PURGED = 0
WAS_PURGED = 1
IS_UNPINNED = 0
IS_PINNED = 1

#: The byte whose write lock serialises updates of the purge marks: far past any region's
#: end (sizes are sealed), inside off_t.
META_OFFSET = 1 << 62

_log = logging.getLogger("ashmem.purge")
_OPEN_RW = os.O_RDWR | os.O_CLOEXEC
_OPEN_RO = os.O_RDONLY | os.O_CLOEXEC
_WRITE_SEALS = _sys.F_SEAL_WRITE | _sys.F_SEAL_FUTURE_WRITE
_Key = tuple[int, int]


@dataclass
class _Unpinned:
    start: int
    end: int
    seq: int


@dataclass
class _Entry:
    """This process's pin state for one region (inode)."""

    key: _Key
    pin_fd: int
    writable: bool
    size: int  # page-rounded
    name: str | None
    anchors: set[int] = field(default_factory=set)
    unpinned: list[_Unpinned] = field(default_factory=list)
    purgeable: bool = True


_lock = threading.Lock()
_entries: dict[_Key, _Entry] = {}
_anchors: dict[int, _Key] = {}  # user fd -> region it named when it last used the pin API
_seq = itertools.count()
_purged_total = 0
_total = 0  # bytes in every entry's unpinned list
_returned_total = 0
_purges: dict[str, int] = {}
_warned_xattr = False
#: Called (outside any lock) after every unpin with this process's unpinned byte total; the
#: purge manager hooks in here.
unpin_listeners: list[Callable[[int], None]] = []


# -- arguments ---------------------------------------------------------------------------------


def _name(fd: int) -> str | None:
    try:
        link = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None
    return _sys.memfd_name(link)


def _range(fd: int, size: int, offset: int, length: int) -> tuple[int, int]:
    """``(start, end)`` of a page-aligned range inside the page-rounded ``size``."""
    if type(offset) is not int or type(length) is not int:
        for value, what in ((offset, "offset"), (length, "length")):
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{what} must be an int, not {type(value).__name__}")
    if offset < 0 or length < 0 or offset % PAGE or length % PAGE:
        raise ValueError(
            f"offset {offset} and length {length} must be non-negative multiples of the page "
            f"size ({PAGE}); round the range out to whole pages"
        )
    end = size if length == 0 else offset + length
    if offset >= size or end > size:
        raise ValueError(
            f"range [{offset}, {end}) is outside {_sys.describe(_name(fd))} "
            f"({size} bytes, page-rounded); length 0 means to the end"
        )
    return offset, end


def _stat(fd: int) -> os.stat_result:
    try:
        return os.fstat(fd)
    except OSError as exc:
        raise _sys.translate(exc, "pin or unpin") from exc
    except (OverflowError, TypeError):
        raise TypeError(f"fd must be an open file descriptor (int), not {fd!r}") from None


def _seals(fd: int) -> int:
    try:
        return fcntl.fcntl(fd, _sys.F_GET_SEALS)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise _sys.translate(exc, "pin or unpin", _name(fd)) from exc
        return 0


def _check_region(fd: int, st: os.stat_result, seals: int) -> None:
    size_seals = _sys.F_SEAL_GROW | _sys.F_SEAL_SHRINK
    if not stat.S_ISREG(st.st_mode) or seals & size_seals != size_seals:
        raise ValueError(
            f"fd {fd} is not an ashmem region (expected a memfd with F_SEAL_GROW and "
            "F_SEAL_SHRINK, as created by create_region)"
        )


def _check_range(fd: int, offset: int, length: int) -> tuple[os.stat_result, int, int, int]:
    """``(stat, seals, start, end)`` of a page-aligned range inside the page-rounded size of
    the region behind ``fd``."""
    if type(offset) is not int or type(length) is not int:
        _range(fd, 1, offset, length)  # raises TypeError
    st = _stat(fd)
    seals = _seals(fd)
    _check_region(fd, st, seals)
    start, end = _range(fd, -(-st.st_size // PAGE) * PAGE, offset, length)
    return st, seals, start, end


def _known(fd: int) -> tuple[_Entry, os.stat_result] | None:
    """The pin state of ``fd``'s region if ``fd`` used the pin API before and still names
    the same region (one ``fstat``); None otherwise."""
    key = _anchors.get(fd)
    if key is None:
        return None
    st = _stat(fd)
    if (st.st_dev, st.st_ino) != key:
        return None
    entry = _entries.get(key)
    return None if entry is None else (entry, st)


# -- pin descriptions --------------------------------------------------------------------------


def _creator_locks(fd: int) -> list[tuple[int, int]]:
    """The read locks the description behind ``fd`` holds (``/proc/self/fdinfo``)."""
    try:
        with open(f"/proc/self/fdinfo/{fd}", encoding="ascii", errors="replace") as info:
            lines = info.read().splitlines()
    except OSError:
        return []
    locks = []
    for line in lines:
        # "lock:\t1: OFDLCK  ADVISORY  READ -1 00:01:15006 0 4095"
        fields = line.split()
        if len(fields) >= 8 and fields[0] == "lock:" and fields[2] == "OFDLCK":
            if fields[4] != "READ":
                continue
            start = int(fields[-2])
            end = 0 if fields[-1] == "EOF" else int(fields[-1]) + 1
            locks.append((start, end))
    return locks


def _open_pin_description(fd: int) -> tuple[int, bool]:
    try:
        return os.open(f"/proc/self/fd/{fd}", _OPEN_RW), True
    except OSError:
        pass
    try:
        return os.open(f"/proc/self/fd/{fd}", _OPEN_RO), False
    except OSError as exc:
        raise _sys.translate(exc, "open a pin description", _name(fd)) from exc


def _entry(fd: int, st: os.stat_result) -> _Entry:
    """This process's pin state for the region behind ``fd``, made on first use."""
    key = (st.st_dev, st.st_ino)
    with _lock:
        entry = _entries.get(key)
        if entry is None:
            pin_fd, writable = _open_pin_description(fd)
            entry = _Entry(key, pin_fd, writable, -(-st.st_size // PAGE) * PAGE, _name(fd))
            # An empty mark list, unless one is there already (XATTR_CREATE never replaces
            # a purger's marks): reading it then never costs an exception.
            with contextlib.suppress(OSError):
                os.setxattr(pin_fd, _purged.NAME, _EMPTY_MARKS, os.XATTR_CREATE)
            _entries[key] = entry
        if _anchors.get(fd) != key:
            try:
                # Take over the creator's pin if it still sits on this fd's description:
                # the same locks on ours first, then off the shared one. No gap between.
                for start, end in _creator_locks(fd):
                    length = 0 if end == 0 else end - start
                    # Granted unless someone write-locks those bytes, which the creator's
                    # read lock forbids; if it is refused anyway, leave that pin where it is.
                    if _sys.ofd_lock(entry.pin_fd, _sys.F_RDLCK, start, length, wait=False):
                        _sys.ofd_lock(fd, _sys.F_UNLCK, start, length, wait=False)
            except OSError as exc:
                if not entry.anchors:
                    _close_entry(entry)
                raise _sys.translate(exc, "take over the creator's pin", entry.name) from exc
            entry.anchors.add(fd)
            _anchors[fd] = key
        return entry


# -- the API -----------------------------------------------------------------------------------


_EMPTY_MARKS = _purged.encode([])


def _read_marks(fd: int, pages: int) -> list[tuple[int, int]]:
    try:
        value = os.getxattr(fd, _purged.NAME)
        return [] if value == _EMPTY_MARKS else _purged.decode(value, pages)
    except OSError as exc:
        if exc.errno in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP):
            return []
        raise


#: How long a pin (or a mark update) waits for a conflicting write lock. A purger holds one
#: for one hole punch (milliseconds, ~0.2 s for 1 GiB); a process holding one for longer is
#: misbehaving (any holder of the region can take OFD locks on it), and we must not hang.
LOCK_TIMEOUT = 10.0


def _lock_bounded(fd: int, lock_type: int, start: int, length: int, what: str) -> None:
    """Take an OFD lock, waiting at most ``LOCK_TIMEOUT`` for a conflicting one to go."""
    if _sys.ofd_lock(fd, lock_type, start, length, wait=False):
        return
    deadline = time.monotonic() + LOCK_TIMEOUT
    pause = 0.0001
    while not _sys.ofd_lock(fd, lock_type, start, length, wait=False):
        if time.monotonic() > deadline:
            raise TimeoutError(
                errno.ETIMEDOUT,
                f"cannot {what}: another process has held a write lock on it for more than "
                f"{LOCK_TIMEOUT:g} s (a purge holds one for milliseconds); find it with "
                "/proc/locks and stop it",
            )
        time.sleep(pause)
        pause = min(pause * 2, 0.01)


@contextlib.contextmanager
def _meta_locked(fd: int) -> Iterator[None]:
    _lock_bounded(fd, _sys.F_WRLCK, META_OFFSET, 1, "update the purge marks")
    try:
        yield None
    finally:
        _sys.ofd_lock(fd, _sys.F_UNLCK, META_OFFSET, 1, wait=False)


def pin(fd: int, offset: int = 0, length: int = 0) -> int:
    """Pin ``[offset, offset + length)`` for this process; ``WAS_PURGED`` if any page of it
    was purged since anyone last pinned it, else ``NOT_PURGED``. Borrows ``fd``."""
    known = _known(fd)
    if known is not None:  # checked as a region before: sizes and size seals never change
        entry, _ = known
        start, end = _range(fd, entry.size, offset, length)
    else:
        st, _, start, end = _check_range(fd, offset, length)
        entry = _entry(fd, st)
    try:
        # Waits only while a purger holds a write lock on part of the range (one punch).
        _lock_bounded(entry.pin_fd, _sys.F_RDLCK, start, end - start, "pin")
        pages = entry.size // PAGE
        first, stop = start // PAGE, end // PAGE
        result = NOT_PURGED
        if _purged.overlaps(_read_marks(entry.pin_fd, pages), first, stop):
            result = WAS_PURGED
            if entry.writable:
                with _meta_locked(entry.pin_fd):
                    marks = _purged.subtract(_read_marks(entry.pin_fd, pages), first, stop)
                    os.setxattr(entry.pin_fd, _purged.NAME, _purged.encode(marks))
    except TimeoutError:
        raise
    except OSError as exc:
        raise _sys.translate(exc, "pin", entry.name) from exc
    if entry.unpinned:
        with _lock:
            _set_unpinned(entry, _cut(entry.unpinned, start, end))
    return result


def _cut(ranges: list[_Unpinned], start: int, end: int) -> list[_Unpinned]:
    out = []
    for r in ranges:
        if r.end <= start or r.start >= end:
            out.append(r)
            continue
        if r.start < start:
            out.append(_Unpinned(r.start, start, r.seq))
        if r.end > end:
            out.append(_Unpinned(end, r.end, r.seq))
    return out


def unpin(fd: int, offset: int = 0, length: int = 0) -> None:
    """Unpin ``[offset, offset + length)`` for this process: once no process pins it, the
    purger may discard it. ``ProtectionError`` on a write-protected region (its pages can
    never be punched). Borrows ``fd``."""
    known = _known(fd)
    if known is not None:
        entry, st = known
        start, end = _range(fd, entry.size, offset, length)
        seals = _seals(fd)  # write protection can come at any time
    else:
        st, seals, start, end = _check_range(fd, offset, length)
    if seals & _WRITE_SEALS:
        name = _name(fd)
        raise ProtectionError(
            f"cannot unpin {_sys.describe(name)}: it is write-protected, and a write-protected "
            "region can never be purged (punching a hole is a write); the range stays pinned. "
            "Keep purgeable regions writable",
            name,
        )
    if known is None:
        entry = _entry(fd, st)
    try:
        _sys.ofd_lock(entry.pin_fd, _sys.F_UNLCK, start, end - start, wait=False)
    except OSError as exc:
        raise _sys.translate(exc, "unpin", entry.name) from exc
    with _lock:
        ranges = _cut(entry.unpinned, start, end) if entry.unpinned else []
        ranges.append(_Unpinned(start, end, next(_seq)))
        _set_unpinned(entry, ranges)
        total = _total
    for listener in unpin_listeners:
        listener(total)


def _gaps(probe_fd: int, start: int, end: int) -> list[tuple[int, int]]:
    """Sub-ranges of ``[start, end)`` on which no other description holds a lock."""
    out: list[tuple[int, int]] = []
    todo = [(start, end)]
    while todo:
        a, b = todo.pop()
        if a >= b:
            continue
        hit = _sys.ofd_conflict(probe_fd, a, b - a)
        if hit is None:
            out.append((a, b))
            continue
        lock_start, lock_end = hit
        todo.append((a, max(a, lock_start)))
        if lock_end != -1:
            todo.append((min(b, lock_end), b))
    return sorted(out)


def get_pin_status(fd: int, offset: int = 0, length: int = 0) -> int:
    """``IS_UNPINNED`` if any page of the range is pinned by no process, else ``IS_PINNED``.
    Borrows ``fd``."""
    _, _, start, end = _check_range(fd, offset, length)
    try:
        probe = os.open(f"/proc/self/fd/{fd}", _OPEN_RO)
    except OSError as exc:
        raise _sys.translate(exc, "read the pin status", _name(fd)) from exc
    try:
        return IS_UNPINNED if _gaps(probe, start, end) else IS_PINNED
    finally:
        os.close(probe)


def pinned_bytes(probe_fd: int, size: int) -> int:
    """Bytes of ``[0, size)`` (page-rounded) that some description holds a lock on, seen from
    ``probe_fd``, a description that holds none itself. For ``ashmem ls``. Borrows it."""
    size = -(-size // PAGE) * PAGE
    free = sum(b - a for a, b in _gaps(probe_fd, 0, size))
    return size - free


def purged_bytes(fd: int, size: int) -> int:
    """Bytes marked purged and not pinned since (the region's purge marks). Borrows ``fd``."""
    pages = -(-size // PAGE)
    return sum(b - a for a, b in _read_marks(fd, pages)) * PAGE


# -- purging -----------------------------------------------------------------------------------


def _set_unpinned(entry: _Entry, ranges: list[_Unpinned]) -> None:
    """Replace ``entry``'s unpinned ranges, keeping the process total; under ``_lock``."""
    global _total
    _total += sum(r.end - r.start for r in ranges) - sum(r.end - r.start for r in entry.unpinned)
    entry.unpinned = ranges


def unpinned_bytes() -> int:
    """Bytes this process has unpinned and not seen purged or pinned again."""
    return _total


def _purge_range(entry: _Entry, purge_fd: int, start: int, end: int) -> list[tuple[int, int]]:
    """Purge what no one pins in ``[start, end)``; the sub-ranges punched."""
    global _warned_xattr
    pages = entry.size // PAGE
    done: list[tuple[int, int]] = []
    for low, high in _gaps(purge_fd, start, end):
        # Our pins are whole pages, but any holder can lock odd bytes: punch whole pages
        # only, or a partly locked page would lose bytes without a mark.
        a, b = -(-low // PAGE) * PAGE, high // PAGE * PAGE
        if a >= b:
            continue
        if not _sys.ofd_lock(purge_fd, _sys.F_WRLCK, a, b - a, wait=False):
            continue  # pinned since GETLK looked: skip, the pin won
        try:
            try:
                with _meta_locked(purge_fd):
                    marks = _purged.add(_read_marks(purge_fd, pages), a // PAGE, b // PAGE)
                    os.setxattr(purge_fd, _purged.NAME, _purged.encode(marks))
            except OSError as exc:
                if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM, errno.EACCES):
                    entry.purgeable = False
                    if not _warned_xattr:
                        _warned_xattr = True
                        _log.warning(
                            "cannot purge: this kernel refuses user xattrs on memfd (%s); "
                            "ashmem purging needs Linux >= 6.6, pins and unpins still work",
                            os.strerror(exc.errno or 0),
                        )
                    return done
                raise
            try:
                _sys.punch_hole(purge_fd, a, b - a)
            except OSError as exc:
                with _meta_locked(purge_fd):
                    marks = _purged.subtract(_read_marks(purge_fd, pages), a // PAGE, b // PAGE)
                    os.setxattr(purge_fd, _purged.NAME, _purged.encode(marks))
                if exc.errno == errno.EPERM:  # write-protected after the unpin
                    entry.purgeable = False
                    return done
                raise
            done.append((a, b))
        finally:
            _sys.ofd_lock(purge_fd, _sys.F_UNLCK, a, b - a, wait=False)
    return done


def _prune_locked() -> None:
    """Forget regions whose fds this process closed without ``release`` (raw fds)."""
    for key, entry in list(_entries.items()):
        live = {fd for fd in entry.anchors if _fd_key(fd) == key}
        if not live:
            other = _find_fd(key, skip={entry.pin_fd})
            if other is None:
                _close_entry(entry)
                continue
            live = {other}
        for fd in entry.anchors - live:
            if _anchors.get(fd) == key:
                del _anchors[fd]
        entry.anchors = live
        for fd in live:
            _anchors[fd] = key


def _fd_key(fd: int) -> _Key | None:
    try:
        st = os.fstat(fd)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _find_fd(key: _Key, skip: set[int]) -> int | None:
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return None
    for name in names:
        fd = int(name)
        if fd not in skip and _fd_key(fd) == key:
            return fd
    return None


def _close_entry(entry: _Entry) -> None:
    _set_unpinned(entry, [])
    _entries.pop(entry.key, None)
    for fd in entry.anchors:
        if _anchors.get(fd) == entry.key:
            del _anchors[fd]
    with contextlib.suppress(OSError):
        os.close(entry.pin_fd)


def purge(trigger: str, limit: int | None = None) -> tuple[int, int, int]:
    """Purge this process's unpinned ranges, least recently unpinned first, until ``limit``
    bytes are gone (None: all). Returns ``(bytes punched, bytes of memory returned, ranges)``
    and counts it under ``trigger`` in the stats."""
    with _lock:
        _prune_locked()
        work = sorted(
            ((r.seq, r.start, r.end, e) for e in _entries.values() if e.purgeable
             for r in e.unpinned),
            key=lambda item: item[0],
        )  # fmt: skip
    punched = returned = ranges = 0
    by_entry: dict[_Key, int] = {}
    try:
        for seq, start, end, entry in work:
            if limit is not None and punched >= limit:
                break
            purge_fd = by_entry.get(entry.key)
            if purge_fd is None:
                try:
                    purge_fd = os.open(f"/proc/self/fd/{entry.pin_fd}", _OPEN_RW)
                except OSError:
                    continue  # released by another thread meanwhile, or not writable
                if _fd_key(purge_fd) != entry.key:  # its number was reused: not ours
                    os.close(purge_fd)
                    continue
                by_entry[entry.key] = purge_fd
            try:
                blocks = os.fstat(purge_fd).st_blocks
                done = _purge_range(entry, purge_fd, start, end)
                returned += max(0, blocks - os.fstat(purge_fd).st_blocks) * 512
            except OSError as exc:
                raise _sys.translate(exc, "purge", entry.name) from exc
            punched += sum(b - a for a, b in done)
            ranges += len(done)
            with _lock:
                if not entry.purgeable:
                    _set_unpinned(entry, [])
                # Forget what was punched, in the pieces of this candidate only (they share
                # its seq): a range pinned or unpinned anew meanwhile has a new seq. What a
                # pin elsewhere kept stays a candidate for the next pass.
                for a, b in done:
                    keep = [r for r in entry.unpinned if r.seq != seq]
                    mine = [r for r in entry.unpinned if r.seq == seq]
                    _set_unpinned(entry, keep + _cut(mine, a, b))
    finally:
        for purge_fd in by_entry.values():
            os.close(purge_fd)
    global _purged_total, _returned_total
    with _lock:
        _purged_total += punched
        _returned_total += returned
        _purges[trigger] = _purges.get(trigger, 0) + 1
    if punched:
        _log.info(
            "purged %d bytes in %d ranges (trigger: %s); %d bytes of memory returned",
            punched, ranges, trigger, returned,
        )  # fmt: skip
    return punched, returned, ranges


def stats() -> dict[str, object]:
    """A copy of the counters: purged and returned bytes, purges per trigger."""
    with _lock:
        return {
            "unpinned_bytes": _total,
            "purged_bytes": _purged_total,
            "returned_bytes": _returned_total,
            "purges": dict(_purges),
        }


def release(fd: int) -> None:
    """``fd`` is about to be closed: if it is the last fd of its region in this process,
    close the pin description (dropping this process's pins) and forget its unpinned ranges.
    Cheap when ``fd`` never used the pin API. Borrows ``fd`` (does not close it)."""
    if fd not in _anchors:
        return
    with _lock:
        found = _anchors.pop(fd, None)
        entry = _entries.get(found) if found is not None else None
        if entry is None:
            return
        key = entry.key
        entry.anchors.discard(fd)
        live = {a for a in entry.anchors if _fd_key(a) == key}
        if not live:
            other = _find_fd(key, skip={entry.pin_fd, fd})
            if other is not None:
                live = {other}
        if live:
            entry.anchors = live
            for a in live:
                _anchors[a] = key
            return
        _close_entry(entry)


def _after_fork_in_child() -> None:
    global _lock, _total
    _lock = threading.Lock()
    for entry in _entries.values():
        # Close our copy of the parent's description, never unlock: that would unpin it
        # for the parent too.
        with contextlib.suppress(OSError):
            os.close(entry.pin_fd)
    _entries.clear()
    _anchors.clear()
    _total = 0


os.register_at_fork(after_in_child=_after_fork_in_child)
