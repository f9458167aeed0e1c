"""A drop-in for ``multiprocessing.shared_memory``: change one import.

::

    -from multiprocessing.shared_memory import SharedMemory, ShareableList
    +from ashmem.compat import SharedMemory, ShareableList

``SharedMemory(name=None, create=False, size=0, *, track=True)`` and
``ShareableList(sequence=None, *, name=None)`` behave as CPython documents them: ``buf``,
``name``, ``size``, ``close()``, ``unlink()``; objects pickle by name; the same exceptions
(``FileNotFoundError`` for an absent name, ``FileExistsError`` for a live one on create,
``ValueError`` for a size of 0 or less on create). The memory is an ashmem region: nothing in
``/dev/shm``, no resource tracker, no warning at exit, nothing left behind by a crash.

How a name works
================

A region has no global name, so a compat name is a handle on the creator's descriptor. The
creating process keeps one descriptor of the region open for the name (``held`` below) and
writes an *entry* in this user's private directory (``ashmem._user_dir``: mode 0700, owned
by this user, checked on every use, the rules of the binder service directory)::

    <user directory>/shm/n-<name>     the entry: a symlink whose text (never followed) is
                                      "ashmem-compat 1 PID START FD TAG"
    <user directory>/shm/lock         flock()ed while an entry is replaced or removed

``PID`` is the creator, ``START`` its start time (field 22 of ``/proc/PID/stat``), ``FD`` the
held descriptor and ``TAG`` 16 random hex digits that are also in the region's kernel name,
``<name>@<TAG>``. The ``1`` is the entry format's version. Attaching reads the entry, checks
that ``readlink("/proc/PID/fd/FD")`` is ``/memfd:<name>@<TAG> (deleted)``, opens that path
(``O_RDWR``: the kernel gives a new open file description of the same memfd, with its own
file offset), and checks again on the descriptor it got: the kernel name must still carry the
tag, and the file must be a region (a memfd with its size sealed). A recycled pid, a closed and
reused fd number, or an entry pointing anywhere else therefore never opens another region: it
counts as absent. A region that was write-protected (``F_SEAL_FUTURE_WRITE``) still opens
``O_RDWR``, but only maps read-only; ``buf`` is then a read-only memoryview.

A name is *live* while the creating process holds its descriptor and nobody has unlinked it.
The creator holds it from creation until ``unlink()`` (from any process) or its own exit,
also after ``close()``, as a POSIX name keeps its memory until ``shm_unlink``. An entry whose
creator is gone (exited, killed, a zombie) or whose descriptor no longer carries the tag is
*stale*: it counts as absent, ``create=True`` replaces it, and each process sweeps the stale
entries once, at its first create. A creator that exits normally removes its own entries.

What the kernel does with ``/proc/PID/fd/N`` of a memfd (checked on Linux 6.18, as root and
as an unprivileged user; the cross-user and dumpable cases are in tests/test_compat.py):

* ``open(O_RDWR)`` by another process of the same uid, not related to the creator, works and
  gives a new open file description (own offset, same inode and seals). It needs
  ``PTRACE_MODE_READ`` access to the creator: the same uid and a dumpable creator, or
  CAP_SYS_PTRACE. Yama's ``ptrace_scope`` only gates ``PTRACE_MODE_ATTACH``, so it does not
  matter. Another uid, or a creator that is not dumpable, gets ``EACCES``; so does a process
  that changed its uid without ``exec`` (that makes it undumpable, ``fs.suid_dumpable``).
* A write-sealed memfd (``F_SEAL_WRITE`` or ``F_SEAL_FUTURE_WRITE``) still opens ``O_RDWR``;
  a ``PROT_WRITE`` shared mapping of it fails with ``EPERM``, a read-only one works.
* A creator that has exited and was reaped: ``ENOENT``. One that has exited but not been
  reaped (a zombie): its descriptors are closed already, and ``/proc`` answers ``EACCES`` to
  an unprivileged caller, ``ENOENT`` to root; the state in ``/proc/PID/stat`` tells.

Races, and why they are harmless
--------------------------------

* Two processes create the same name at once: an entry is made with ``symlink()``, which is
  atomic and fails if the name exists, so exactly one wins and the other gets
  ``FileExistsError``; a free name takes no lock. Every *removal* of an entry (replacing a
  stale one, ``unlink()``, the sweep, the exit cleanup) holds the directory lock (``flock``:
  across threads too, released by the kernel if the holder dies) from reading the entry to
  removing it; since nobody else removes entries meanwhile, and a creator only adds one where
  none is, what they read is what they remove. ``unlink()`` removes the entry only if it
  still carries the object's tag, so it never removes a name someone created again since.
* Attaching takes no lock: an entry appears complete (``symlink``) or not at all. If the creator
  exits or the name is unlinked while a process is attaching, the attach either fails with
  ``FileNotFoundError`` or succeeds with a descriptor of the region, which then stays valid
  for as long as that process holds it; the memory goes when the last holder closes.
* Between the ``readlink`` check and the ``open``, the creator could close the held
  descriptor and open another file under the same number; the tag check on the opened
  descriptor refuses it. The ``open`` uses ``O_NONBLOCK | O_NOCTTY`` so that even such a
  file (a FIFO, a terminal) cannot block the open or become a controlling terminal.
* A name unlinked by a process other than the creator: the creator's held descriptor is
  released when the creating object is closed (or collected), or at exit.
* ``unlink()`` while other processes are attached: the name is gone at once (new attaches get
  ``FileNotFoundError``), the memory stays for those that hold it, as with POSIX shm.

Differences from CPython's
==========================

* Who can attach: processes of the same user that may read the creator's ``/proc/PID/fd``
  (``PTRACE_MODE_READ`` access: the same uid and a dumpable creator; Yama's
  ``ptrace_scope`` does not restrict it, it only gates attaching a debugger; root can attach
  to anyone's). CPython's names are files in ``/dev/shm`` that anyone the mode allows can open.
  A creator that is not dumpable (``prctl(PR_SET_DUMPABLE, 0)``, a setuid program, a
  process that dropped privileges without ``exec``) gives ``PermissionError`` on attach.
  Other users cannot attach at all: use ``ashmem.fdpass`` or ``ashmem.binder`` to share
  with them.
* The name dies with its creator: once the creating process has exited, its names are
  absent (``FileNotFoundError``) even if other processes still hold the memory, and the memory
  is freed when the last holder closes. CPython's outlive every process until unlinked (and
  leak in ``/dev/shm`` when nobody does).
* ``close()`` never raises ``BufferError``: while memoryviews or arrays made from ``buf`` are
  alive, the pages stay mapped and are unmapped when the last of them goes (CPython raises,
  and a numpy view can outlive the mapping: CPython gh-115635, numpy #18294).
* ``track=`` is accepted (Python 3.13's signature) and ignored: there is no resource tracker
  to register with, and nothing to clean up at exit.
* Names: a leading ``/`` is ignored, as glibc's ``shm_open`` does; a name containing another
  ``/`` or a NUL, or longer than 200 UTF-8 bytes, raises ``ValueError`` (CPython: ``OSError``).
* The memory is allocated at creation (``reserve``): a full memory cgroup fails there, not
  with SIGBUS on a later write.
* ``ShareableList`` sizes a ``str`` by its UTF-8 length (CPython counts characters, so
  non-ASCII text could be cut), accepts subclasses of the supported types (``numpy.float64``,
  ``IntEnum``), and raises ``TypeError`` for an unsupported type, an exception that is also a
  ``KeyError`` like CPython's.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import fcntl
import functools
import os
import secrets
import struct
import threading
from collections.abc import Iterable, Iterator
from typing import Any, Generic, NamedTuple, TypeVar, cast

from . import _shared_memory, _user_dir, region
from ._errors import BusyError, ProtectionError

__all__ = ["ShareableList", "SharedMemory"]

_FORMAT_VERSION = 1
_MAGIC = "ashmem-compat"
_ENTRY_PREFIX = "n-"
_NAME_MAX = 200  # UTF-8 bytes; the kernel keeps 249 for "<name>@<16-digit tag>"
_ENTRY_MAX = 200  # characters; a longer entry is not one of ours
_RANDOM_PREFIX = "psm_"  # as CPython's random names
_OPEN_FLAGS = os.O_RDWR | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK


# -- the directory of names ----------------------------------------------------------------


class _Entry(NamedTuple):
    pid: int
    start: int
    fd: int
    tag: str


class _Held(NamedTuple):
    fd: int
    tag: str


_lock = threading.Lock()  # guards _held and _swept within this process
_held: dict[str, _Held] = {}  # names this process created and still holds
_held_pid = os.getpid()
_swept = False
_atexit_registered = False


def _directory() -> str:
    return _user_dir.user_directory("shm")


def _key(name: object) -> str:
    """The name as kept in the directory: CPython's, without its leading slashes."""
    if not isinstance(name, str):
        raise TypeError(f"shared memory name must be a str, not {type(name).__name__}")
    key = name.lstrip("/")
    if not key or "/" in key or "\0" in key:
        raise ValueError(
            f"invalid shared memory name {name!r}: use a non-empty name without '/' (a "
            "leading '/' is ignored) or NUL"
        )
    if len(key.encode("utf-8", "surrogateescape")) > _NAME_MAX:
        raise ValueError(
            f"shared memory name {name!r} is longer than {_NAME_MAX} UTF-8 bytes; use a "
            "shorter name"
        )
    return key


def _label(key: str, tag: str) -> str:
    """The region's kernel name: the compat name and the entry's tag."""
    return f"{key}@{tag}"


def _entry_path(directory: str, key: str) -> str:
    return os.path.join(directory, _ENTRY_PREFIX + key)


def _process_start(pid: int) -> tuple[str, int] | None:
    """(state, start time) of process ``pid`` from ``/proc/PID/stat``; None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            stat = file.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = stat[stat.rfind(b")") + 2 :].split()
    try:
        return fields[0].decode("ascii", "replace"), int(fields[19])
    except (IndexError, ValueError):
        return None


_own_start: tuple[int, int] | None = None  # (pid, start time) of this process


def _my_start() -> int:
    global _own_start
    pid = os.getpid()
    if _own_start is None or _own_start[0] != pid:  # computed again in a forked child
        found = _process_start(pid)
        _own_start = (pid, found[1] if found else 0)
    return _own_start[1]


def _read_entry(path: str) -> _Entry | None:
    """The entry at ``path``; None if there is none or it is not a well-formed entry."""
    try:
        raw = os.readlink(path)  # an entry is a symlink that is never followed
    except OSError:  # ENOENT, or EINVAL: not a symlink, so not an entry
        return None
    parts = raw.split()
    if len(raw) > _ENTRY_MAX or len(parts) != 6 or parts[0] != _MAGIC:
        return None
    try:
        version, pid, start, fd = (int(part) for part in parts[1:5])
    except ValueError:
        return None
    tag = parts[5]
    if version != _FORMAT_VERSION or pid <= 0 or fd < 0 or len(tag) != 16:
        return None
    return _Entry(pid, start, fd, tag)


def _format_entry(entry: _Entry) -> str:
    pid, start, fd, tag = entry
    return f"{_MAGIC} {_FORMAT_VERSION} {pid} {start} {fd} {tag}"


@contextlib.contextmanager
def _locked(directory: str) -> Iterator[None]:
    """Hold the directory's lock: creating, replacing and removing entries take it."""
    fd = os.open(
        os.path.join(directory, "lock"),
        os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW,
        0o600,
    )
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


_LIVE, _STALE, _DENIED = "live", "stale", "denied"


def _probe(entry: _Entry, key: str) -> str:
    """Is ``entry`` a live name? ``_DENIED``: its creator runs but refuses us its /proc."""
    link = f"/proc/{entry.pid}/fd/{entry.fd}"
    try:
        target = os.readlink(link)
    except PermissionError:
        # Another user's process now has this pid, the creator became undumpable, or it is
        # a zombie (its descriptors are already closed, but /proc refuses rather than says).
        found = _process_start(entry.pid)
        if found is None or found[1] != entry.start or found[0] in ("Z", "X", "x"):
            return _STALE
        return _DENIED
    except OSError:  # ENOENT: the process or that descriptor is gone
        return _STALE
    if target != f"/memfd:{_label(key, entry.tag)} (deleted)":
        return _STALE
    return _LIVE


def _denied(name: str, entry: _Entry) -> PermissionError:
    return PermissionError(
        errno.EACCES,
        f"shared memory held by process {entry.pid}, which refuses access to its "
        "descriptors (/proc/PID/fd needs the same uid and a dumpable process); share an "
        "ashmem.SharedMemory (which travels as a descriptor) through multiprocessing or "
        "ashmem.fdpass instead",
        name,
    )


def _not_found(name: str) -> FileNotFoundError:
    return FileNotFoundError(
        errno.ENOENT,
        "no such shared memory (never created, unlinked, or its creating process has "
        "exited: a name lives only as long as its creator)",
        name,
    )


def _open_name(name: str, key: str) -> tuple[int, str]:
    """A new fd (owned by the caller) of the region named ``key``, and its tag."""
    entry = _read_entry(_entry_path(_directory(), key))
    if entry is None:
        raise _not_found(name)
    state = _probe(entry, key)
    if state == _DENIED:
        raise _denied(name, entry)
    if state != _LIVE:
        raise _not_found(name)
    try:
        fd = os.open(f"/proc/{entry.pid}/fd/{entry.fd}", _OPEN_FLAGS)
    except PermissionError:
        raise _denied(name, entry) from None
    except OSError:  # the creator exited or closed it just now
        raise _not_found(name) from None
    # Check the descriptor we got, not the path we opened: the fd number may have been
    # reused between the readlink and the open. (The caller checks that it is a region.)
    try:
        label = region.get_name_region(fd)
    except (OSError, ValueError):
        label = None
    if label != _label(key, entry.tag):
        os.close(fd)
        raise _not_found(name)
    return fd, entry.tag


def _sweep(directory: str) -> None:
    """Remove the stale entries (creators that died without cleaning up). Holds the lock."""
    for dirent in os.scandir(directory):
        if not dirent.name.startswith(_ENTRY_PREFIX):
            continue
        key = dirent.name[len(_ENTRY_PREFIX) :]
        entry = _read_entry(dirent.path)
        if entry is None or _probe(entry, key) == _STALE:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(dirent.path)


def _publish(name: str, key: str, region_fd: int, tag: str) -> None:
    """Write the entry for a new region; the name then holds a dup of ``region_fd``
    (borrowed). ``FileExistsError`` if a live process holds ``key``."""
    global _swept, _atexit_registered
    directory = _directory()
    path = _entry_path(directory, key)
    held = os.dup(region_fd)  # CLOEXEC, as every fd Python makes
    try:
        entry = _format_entry(_Entry(os.getpid(), _my_start(), held, tag))
        if not _swept:
            with _locked(directory):
                _sweep(directory)
            _swept = True
        try:
            # symlink() is atomic and exclusive: a free name takes no lock.
            os.symlink(entry, path)
        except FileExistsError:
            with _locked(directory):
                existing = _read_entry(path)
                if existing is not None and _probe(existing, key) != _STALE:
                    raise _exists(name, existing.pid) from None
                # Stale: ours to replace, as we hold the lock. A lock-free creator may
                # still take the name between the unlink and the symlink: then it won.
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                try:
                    os.symlink(entry, path)
                except FileExistsError:
                    raise _exists(name, None) from None
    except BaseException:
        os.close(held)
        raise
    with _lock:
        _check_fork()
        old = _held.pop(key, None)
        _held[key] = _Held(held, tag)
        if not _atexit_registered:
            atexit.register(_forget_names)
            _atexit_registered = True
    if old is not None:  # its entry was replaced, so someone unlinked it elsewhere
        os.close(old.fd)


def _exists(name: str, pid: int | None) -> FileExistsError:
    holder = f"live process {pid}" if pid is not None else "another process, just now"
    return FileExistsError(
        errno.EEXIST,
        f"shared memory already exists (held by {holder}); attach with create=False or "
        "choose another name",
        name,
    )


def _unpublish(name: str, key: str, tag: str) -> None:
    """Remove the entry of ``key`` if it still carries ``tag``; ``FileNotFoundError`` if
    it does not (unlinked already, or the name was created again since)."""
    directory = _directory()
    path = _entry_path(directory, key)
    with _locked(directory):
        entry = _read_entry(path)
        if entry is None or entry.tag != tag:
            _release(key, tag)
            raise _not_found(name)
        os.unlink(path)
        live = _probe(entry, key) != _STALE
    _release(key, tag)
    if not live:  # a stale entry counts as absent, even for the one who can remove it
        raise _not_found(name)


def _release(key: str, tag: str) -> None:
    """Close the descriptor this process holds for ``key``, if it is the one with ``tag``."""
    with _lock:
        _check_fork()
        held = _held.get(key)
        if held is None or held.tag != tag:
            return
        del _held[key]
    os.close(held.fd)


def _release_if_unlinked(key: str, tag: str) -> None:
    """After a close() in the creator: let go of the name's descriptor if another process
    unlinked the name (or replaced it after we were gone from it)."""
    with _lock:
        _check_fork()
        held = _held.get(key)
    if held is None or held.tag != tag:
        return
    entry = _read_entry(_entry_path(_directory(), key))
    if entry is None or entry.tag != tag or entry.pid != os.getpid():
        _release(key, tag)


def _check_fork() -> None:
    """A forked child holds copies of its parent's name descriptors, but the names point at
    the parent: close the copies. Called with ``_lock`` held (see also ``_after_fork``)."""
    global _held_pid
    pid = os.getpid()
    if pid != _held_pid:
        for held in _held.values():
            with contextlib.suppress(OSError):
                os.close(held.fd)
        _held.clear()
        _held_pid = pid


def _after_fork() -> None:
    global _lock, _swept
    _lock = threading.Lock()  # another thread may have held it at fork time
    _swept = False
    _check_fork()


os.register_at_fork(after_in_child=_after_fork)


def _forget_names() -> None:
    """At exit: remove the entries of the names this process still holds."""
    with _lock:
        _check_fork()
        names = list(_held.items())
    if not names:
        return
    with contextlib.suppress(OSError):
        directory = _directory()
        with _locked(directory):
            for key, held in names:
                path = _entry_path(directory, key)
                entry = _read_entry(path)
                if entry is not None and entry.tag == held.tag and entry.pid == os.getpid():
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)


# -- SharedMemory ----------------------------------------------------------------------------


class SharedMemory:
    """A block of shared memory with a name, as ``multiprocessing.shared_memory.SharedMemory``.

    ``SharedMemory(create=True, size=n)`` creates a block with a random name (``psm_...``);
    ``SharedMemory(name, create=True, size=n)`` with that name; ``SharedMemory(name)``
    attaches to an existing one, in this process or another process of the same user, and
    ``size`` is then ignored. ``FileNotFoundError`` if no live block has that name (also once
    its creating process has exited), ``FileExistsError`` on create if one has,
    ``ValueError`` for ``size <= 0`` on create or ``size < 0``. ``track`` is accepted for
    Python 3.13's signature and ignored: nothing needs tracking. Pickles by name.

    >>> from ashmem.compat import SharedMemory
    >>> shm = SharedMemory(create=True, size=16)
    >>> shm.buf[:5] = b"hello"
    >>> other = SharedMemory(shm.name)
    >>> bytes(other.buf[:5]), other.size
    (b'hello', 16)
    >>> other.close(); shm.close(); shm.unlink()
    """

    # Class-level defaults: close(), unlink() and __del__ are safe after a failed __init__.
    _name: str | None = None
    _key: str | None = None
    _tag: str | None = None
    _created: bool = False
    _size: int = 0
    _region: _shared_memory.SharedMemory | None = None
    _mapping: _shared_memory.Mapping | None = None
    _buf: memoryview | None = None

    def __init__(
        self, name: str | None = None, create: bool = False, size: int = 0, *, track: bool = True
    ) -> None:
        if not size >= 0:
            raise ValueError(f"'size' must be a positive integer, got {size}")
        if create and size == 0:
            raise ValueError("'size' must be a positive number different from zero")
        if name is None and not create:
            raise ValueError("'name' can only be None if create=True")
        shm = self._create(name, size) if create else self._attach(name)
        self._region = shm
        self._size = shm.size
        try:
            try:
                self._mapping = shm.map_read_write(populate=False)
            except ProtectionError:  # write-protected by an ashmem.SharedMemory holder
                self._mapping = shm.map_read_only(populate=False)
        except BaseException:
            if create:  # as CPython: a block that could not be mapped loses its name
                with contextlib.suppress(OSError):
                    self.unlink()
            self.close()
            raise
        self._buf = memoryview(self._mapping)

    def _attach(self, name: str | None) -> _shared_memory.SharedMemory:
        assert name is not None
        key = _key(name)
        fd, tag = _open_name(name, key)
        try:
            shm = _shared_memory.SharedMemory.from_fd(fd)
        except ValueError:  # a memfd with our tag whose size is not sealed: not ours
            os.close(fd)
            raise _not_found(name) from None
        except BaseException:
            os.close(fd)
            raise
        self._name, self._key, self._tag = name, key, tag
        return shm

    def _create(self, name: str | None, size: int) -> _shared_memory.SharedMemory:
        while True:
            chosen = name if name is not None else _RANDOM_PREFIX + secrets.token_hex(4)
            key = _key(chosen)
            tag = secrets.token_hex(8)
            shm = _shared_memory.SharedMemory.create(_label(key, tag), size, populate=False)
            try:
                _publish(chosen, key, shm.fileno(), tag)
            except FileExistsError:
                shm.close()
                if name is not None:
                    raise
                continue  # a random name taken: draw another, as CPython does
            except BaseException:
                shm.close()
                raise
            self._name, self._key, self._tag, self._created = chosen, key, tag, True
            return shm

    @property
    def buf(self) -> memoryview | None:
        """A memoryview of the block's contents; None after ``close()``.

        >>> from ashmem.compat import SharedMemory
        >>> shm = SharedMemory(create=True, size=4)
        >>> shm.buf.nbytes, shm.buf.readonly
        (4, False)
        >>> shm.close(); shm.buf is None
        True
        >>> shm.unlink()
        """
        return self._buf

    @property
    def name(self) -> str:
        """The name other processes attach with (as given, or ``psm_`` and random digits).

        >>> from ashmem.compat import SharedMemory
        >>> with_name = SharedMemory("doctest-frames", create=True, size=4096)
        >>> with_name.name
        'doctest-frames'
        >>> with_name.close(); with_name.unlink()
        """
        return self._name or ""

    @property
    def size(self) -> int:
        """Size in bytes: as created (attaching ignores the ``size`` argument).

        >>> from ashmem.compat import SharedMemory
        >>> shm = SharedMemory(create=True, size=10)
        >>> SharedMemory(shm.name, size=999).size
        10
        >>> shm.close(); shm.unlink()
        """
        return self._size

    def close(self) -> None:
        """Release this object's descriptor and mapping; the block and its name stay until
        ``unlink()`` (or the creating process exits). Idempotent. Never raises
        ``BufferError``: while views made from ``buf`` are alive, the pages stay mapped and
        are unmapped when the last view goes.

        >>> from ashmem.compat import SharedMemory
        >>> shm = SharedMemory(create=True, size=8)
        >>> view = shm.buf[0:4]
        >>> shm.close(); shm.close()
        >>> view[0] = 1; view.release()
        >>> shm.unlink()
        """
        buf, self._buf = self._buf, None
        if buf is not None:
            with contextlib.suppress(BufferError):
                buf.release()  # fails while arrays hold it; they keep the mapping alive
        mapping, self._mapping = self._mapping, None
        if mapping is not None:
            with contextlib.suppress(BusyError):
                mapping.close()  # fails while slices of buf are alive; unmapped when they go
        shm, self._region = self._region, None
        if shm is not None:
            shm.close()
            if self._created and self._key is not None and self._tag is not None:
                _release_if_unlinked(self._key, self._tag)

    def unlink(self) -> None:
        """Remove the name: new attaches get ``FileNotFoundError``; the memory is freed when
        the last holder in any process closes. Call it once, from any process, as with
        CPython. ``FileNotFoundError`` if the name is already gone (unlinked, or its creating
        process has exited).

        >>> from ashmem.compat import SharedMemory
        >>> shm = SharedMemory("doctest-unlinked", create=True, size=8)
        >>> shm.unlink()
        >>> SharedMemory("doctest-unlinked")
        Traceback (most recent call last):
        ...
        FileNotFoundError: [Errno 2] no such shared memory (...): 'doctest-unlinked'
        >>> shm.close()
        """
        if self._key is None or self._tag is None:
            return
        _unpublish(self.name, self._key, self._tag)

    def __del__(self) -> None:
        # Plain try: at interpreter exit, contextlib may already be gone.
        try:  # noqa: SIM105
            self.close()
        except Exception:
            pass

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.__class__, (self.name, False, self.size))

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.name!r}, size={self.size})"


# -- ShareableList ---------------------------------------------------------------------------
#
# The block holds, from offset 0 (CPython's layout, every integer native-endian):
#
#   offset              size          what
#   0                   8             N, the number of items (q)
#   8                   8 * (N + 1)   each item's offset in the data area, then its end (q)
#   8 * (N + 2)         D             the data area: each item in 8-byte units
#   8 * (N + 2) + D     8 * N         each item's struct format, NUL-padded (8s)
#   ... + 8 * N         N             each item's kind: 0 number/bool, 1 str, 2 bytes, 3 None (b)
#
# An int takes 8 bytes (q), a float 8 (d), a bool 8 (xxxxxxx?), None 8 (xxxxxx?x); a str (UTF-8)
# or bytes value of n bytes takes 8 * (n // 8 + 1), format "<that>s". A slot keeps its size:
# any value fits in 8 bytes except a longer str or bytes.

_ALIGN = 8
_NUMBER, _STR, _BYTES, _NONE = 0, 1, 2, 3
_ITEM_FORMATS = {bool: "xxxxxxx?", int: "q", float: "d"}
_NONE_FORMAT = "xxxxxx?x"
#: What a ShareableList holds; ``ShareableList[int]`` in annotations, as typeshed's.
_Item = TypeVar("_Item", int, float, bool, str, bytes, None)


class _UnsupportedTypeError(TypeError, KeyError):
    """A value ShareableList cannot store; a KeyError too, as CPython raises."""

    def __str__(self) -> str:
        return str(self.args[0])


def _encode_item(value: object) -> tuple[str | None, int, object]:
    """(struct format or None for str/bytes, kind, value to pack) of one item."""
    if value is None:
        return _NONE_FORMAT, _NONE, None
    if isinstance(value, str):
        return None, _STR, value.encode("utf-8")
    if isinstance(value, bytes):
        return None, _BYTES, bytes(value)
    for kind, fmt in _ITEM_FORMATS.items():  # bool before int: a bool is an int
        if isinstance(value, kind):
            return fmt, _NUMBER, kind(value)
    raise _UnsupportedTypeError(
        f"ShareableList cannot store a {type(value).__name__}: only int (64-bit), float, "
        "bool, str, bytes and None"
    )


def _decode_item(kind: int, value: Any) -> Any:
    if kind == _STR:
        return value.rstrip(b"\0").decode("utf-8")
    if kind == _BYTES:
        return value.rstrip(b"\0")
    if kind == _NONE:
        return None
    return value


class ShareableList(Generic[_Item]):
    """A fixed-length list in shared memory, as ``multiprocessing.shared_memory.ShareableList``.

    Holds ``int`` (64-bit), ``float``, ``bool``, ``str``, ``bytes`` and ``None``; items can be
    replaced (also by another type) but the list cannot grow or shrink, and a ``str`` or
    ``bytes`` item cannot outgrow the space its first value got (8-byte units, with room for
    one NUL). Trailing NUL bytes of ``str`` and ``bytes`` values are lost, as in CPython.
    ``ShareableList(name=...)`` attaches to an existing list; the block is ``.shm`` (a
    ``SharedMemory``). Pickles by name.

    >>> from ashmem.compat import ShareableList
    >>> a = ShareableList(["howdy", b"HoWdY", -273.154, 100, None, True, 42])
    >>> a.format
    '8s8sdqxxxxxx?xxxxxxxx?q'
    >>> b = ShareableList(name=a.shm.name)
    >>> b[2] = "dry ice"
    >>> a[2], a.index(42), a.count(b"HoWdY"), len(a)
    ('dry ice', 6, 1, 7)
    >>> b.shm.close(); a.shm.close(); a.shm.unlink()
    """

    shm: SharedMemory

    def __init__(self, sequence: Iterable[_Item] | None = None, *, name: str | None = None) -> None:
        if name is not None and sequence is None:
            self.shm = SharedMemory(name)
            self._attach()
            return
        items = [_encode_item(value) for value in (() if sequence is None else sequence)]
        formats = []
        for fmt, _kind, value in items:
            if fmt is None:
                assert isinstance(value, bytes)
                fmt = f"{_ALIGN * (len(value) // _ALIGN + 1)}s"
            formats.append(fmt)
        ends = [0]
        for fmt in formats:
            ends.append(ends[-1] + (int(fmt[:-1]) if fmt.endswith("s") else _ALIGN))
        count = len(items)
        size = _ALIGN * (count + 2) + ends[-1] + _ALIGN * count + count
        self.shm = SharedMemory(name, create=True, size=size)
        buf = self._view()
        self._count = count
        self._ends = ends
        struct.pack_into(f"{count + 2}q", buf, 0, count, *ends)
        data = self._data_start()
        for index, (fmt, (_f, kind, value)) in enumerate(zip(formats, items, strict=True)):
            struct.pack_into(fmt, buf, data + ends[index], value)
            self._store_format(index, fmt, kind)

    def _attach(self) -> None:
        buf = self._view()
        size = len(buf)
        (count,) = struct.unpack_from("q", buf, 0)
        if count < 0 or _ALIGN * (2 * count + 2) + count > size:
            raise ValueError(f"shared memory {self.shm.name!r} does not hold a ShareableList")
        self._count = count
        self._ends = list(struct.unpack_from(f"{count + 1}q", buf, _ALIGN))

    def _view(self) -> memoryview:
        buf = self.shm.buf
        if buf is None:
            raise ValueError(f"ShareableList {self.shm.name!r}: its SharedMemory is closed")
        return buf

    def _data_start(self) -> int:
        return _ALIGN * (self._count + 2)

    def _formats_start(self) -> int:
        return self._data_start() + self._ends[-1]

    def _store_format(self, index: int, fmt: str, kind: int) -> None:
        buf = self._view()
        struct.pack_into("8s", buf, self._formats_start() + _ALIGN * index, fmt.encode("ascii"))
        struct.pack_into("b", buf, self._formats_start() + _ALIGN * self._count + index, kind)

    def _format(self, index: int) -> str:
        (raw,) = struct.unpack_from("8s", self._view(), self._formats_start() + _ALIGN * index)
        return str(raw.rstrip(b"\0").decode("ascii"))

    def _kind(self, index: int) -> int:
        start = self._formats_start() + _ALIGN * self._count
        return int(struct.unpack_from("b", self._view(), start + index)[0])

    def _position(self, position: Any, message: str) -> int:
        try:
            index = position.__index__()
        except AttributeError:
            raise TypeError(
                f"ShareableList indices must be integers, not {type(position).__name__}"
            ) from None
        if index < 0:
            index += self._count
        if not 0 <= index < self._count:
            raise IndexError(message)
        return int(index)

    def __getitem__(self, position: int) -> _Item:
        index = self._position(position, "index out of range")
        (value,) = struct.unpack_from(
            self._format(index), self._view(), self._data_start() + self._ends[index]
        )
        return cast(_Item, _decode_item(self._kind(index), value))

    def __setitem__(self, position: int, value: _Item) -> None:
        index = self._position(position, "assignment index out of range")
        fmt, kind, packed = _encode_item(value)
        if fmt is None:
            assert isinstance(packed, bytes)
            room = self._ends[index + 1] - self._ends[index]
            if len(packed) > room:
                what = "str" if kind == _STR else "bytes"
                raise ValueError(
                    f"bytes/str item exceeds available storage for existing {what}: "
                    f"{len(packed)} bytes, index {index} has room for {room}"
                )
            fmt = f"{room}s"
        self._store_format(index, fmt, kind)
        struct.pack_into(fmt, self._view(), self._data_start() + self._ends[index], packed)

    def __len__(self) -> int:
        return int(struct.unpack_from("q", self._view(), 0)[0])

    def __iter__(self) -> Iterator[_Item]:
        for index in range(self._count):
            yield self[index]

    def __reduce__(self) -> tuple[Any, ...]:
        return (functools.partial(self.__class__, name=self.shm.name), ())

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({list(self)}, name={self.shm.name!r})"

    @property
    def format(self) -> str:
        """The struct formats of all items, concatenated (as CPython's).

        >>> from ashmem.compat import ShareableList
        >>> sl = ShareableList([1, 2.0, "three"])
        >>> sl.format
        'qd8s'
        >>> sl.shm.close(); sl.shm.unlink()
        """
        return "".join(self._format(index) for index in range(self._count))

    def count(self, value: _Item) -> int:
        """How many items equal ``value``.

        >>> from ashmem.compat import ShareableList
        >>> sl = ShareableList([1, 1, 2])
        >>> sl.count(1)
        2
        >>> sl.shm.close(); sl.shm.unlink()
        """
        return sum(value == item for item in self)

    def index(self, value: _Item) -> int:
        """Position of the first item equal to ``value``; ``ValueError`` if there is none.

        >>> from ashmem.compat import ShareableList
        >>> sl = ShareableList(["a", "b"])
        >>> sl.index("b")
        1
        >>> sl.shm.close(); sl.shm.unlink()
        """
        for position, item in enumerate(self):
            if value == item:
                return position
        raise ValueError(f"{value!r} not in this container")
