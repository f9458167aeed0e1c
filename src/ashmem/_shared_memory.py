"""The android.os.SharedMemory layer: a region object and its mappings.

A ``SharedMemory`` owns one region fd; ``Mapping`` objects made from it are independent
``mmap`` windows that stay valid after the ``SharedMemory`` is closed, as on Android. The
region's memory is freed by the kernel when the last fd *and* the last mapping of it are gone,
in every process.

Exported buffers: ``Mapping`` is an ``mmap.mmap``, so every ``memoryview``, numpy array or
ctypes object made from it holds a buffer export. ``Mapping.close()`` refuses to unmap while
any export is alive and raises ``BusyError`` saying so; the pages can therefore never vanish
under a live view, and no access can segfault. Release the views, then close.
"""

from __future__ import annotations

import contextlib
import errno
import io
import mmap
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

from . import _pins, _sys, region
from ._closing import Closing
from ._errors import BusyError, ClosedError, ProtectionError
from .region import PROT_READ, PROT_WRITE

__all__ = ["Mapping", "SharedMemory"]

PAGE_SIZE = mmap.ALLOCATIONGRANULARITY
_MAP_SHARED = mmap.MAP_SHARED
#: With ``create(populate=None)`` (the default), read-write mappings at least this large are
#: prefaulted.
POPULATE_AUTO_MIN = 1 << 20
# Python 3.13+: no hidden dup of the region fd per mapping (older mmap always keeps one).
_MMAP_EXTRA: dict[str, Any] = {"trackfd": False} if sys.version_info >= (3, 13) else {}
_mmap_new = mmap.mmap.__new__
_mmap_close = mmap.mmap.close
_new_object = object.__new__
_release_pins = _pins.release  # what region.release_pins does, without its extra frame
_PROT_RW = PROT_READ | PROT_WRITE


class Mapping(mmap.mmap):
    """A window of a region mapped into this process (``MAP_SHARED``).

    It is a buffer: ``memoryview(m)``, ``numpy.frombuffer(m, ...)``, ``m[a:b]``,
    ``m[a:b] = data``, ``len(m)``. A read-only mapping has ``readonly`` True and any write
    raises ``TypeError``, like every read-only buffer. After ``close()`` every access raises
    ``ValueError``. ``close()`` raises ``BusyError`` while views into it are alive.

    >>> import ashmem
    >>> with ashmem.SharedMemory.create("frames", 4096) as shm, shm.map_read_write() as m:
    ...     m[0:5] = b"hello"
    ...     bytes(m[0:5])
    b'hello'
    """

    # Slots, not a __dict__: a Mapping is made and dropped on every hand-off. __new__ (or
    # SharedMemory._map_whole) sets all four before anyone can see the object (if mmap fails
    # there is no object).
    __slots__ = ("_offset", "_readonly", "_region", "_region_size")
    _region: str | None
    _readonly: bool
    _offset: int
    _region_size: int | None

    def __new__(
        cls,
        fd: int,
        length: int,
        prot: int,
        offset: int = 0,
        name: str | None = None,
        region_size: int | None = None,
    ) -> Mapping:
        """Map ``length`` bytes of the region behind ``fd`` (borrowed: neither kept nor
        closed; on Python < 3.13 mmap keeps a duplicate of its own) at ``offset``.
        ``region_size``, when the caller knows it, is what ``size()`` answers."""
        try:
            # Positional arguments: mmap parses keywords noticeably slower.
            self = super().__new__(cls, fd, length, _MAP_SHARED, prot, 0, offset, **_MMAP_EXTRA)
        except OSError as exc:
            doing = "map read-write" if prot & PROT_WRITE else "map read-only"
            if name is None:  # a received region whose name nobody asked for yet
                with contextlib.suppress(OSError, ValueError):
                    name = region.get_name_region(fd)
            raise _sys.translate(exc, doing, name) from exc
        self._region = name
        self._readonly = not prot & PROT_WRITE
        self._offset = offset
        self._region_size = region_size
        return self

    @property
    def readonly(self) -> bool:
        """True if this mapping was made without ``PROT_WRITE``."""
        return self._readonly

    @property
    def offset(self) -> int:
        """Offset of this window in its region."""
        return self._offset

    @property
    def region_name(self) -> str | None:
        """Debug name of the region this maps. None when it was mapped from a received
        region before anyone asked for its name: reading it costs a ``/proc`` lookup that
        the hand-off path does not pay (``SharedMemory.name`` reads it)."""
        return self._region

    def close(self) -> None:
        """Unmap. Idempotent. Raises ``BusyError`` while exported buffers are alive."""
        try:
            _mmap_close(self)
        except BufferError as exc:
            raise BusyError(
                f"cannot unmap {_sys.describe(self._region)}: memoryviews or arrays made from "
                "this mapping are still alive; release them (del, or memoryview.release()) "
                "and close again",
                self._region,
            ) from exc

    def __enter__(self) -> Mapping:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __reduce__(self) -> Any:
        raise TypeError(
            "a Mapping cannot be pickled; send its SharedMemory and map it on the other side"
        )

    def size(self) -> int:
        """Size in bytes of the region this maps (not of this window: that is ``len()``),
        as ``mmap.size()`` gives a file's. The same on every Python: 3.13+ maps without the
        descriptor ``mmap.size()`` would ``fstat``, so the size comes from the region.
        ``ValueError`` after ``close()``, as for any mmap."""
        if self.closed:
            raise ValueError("mmap closed or invalid")
        if self._region_size is not None:
            return self._region_size
        if _MMAP_EXTRA:  # made with Mapping(...) and no region_size, on 3.13+: no fd to ask
            raise io.UnsupportedOperation(
                "this Mapping was made without its region's size and keeps no descriptor to "
                "ask; use SharedMemory.size"
            )
        return super().size()

    def resize(self, newsize: int) -> None:
        """Refused: region sizes are sealed."""
        raise PermissionError(
            errno.EPERM,
            f"cannot resize a mapping of {_sys.describe(self._region)}: region sizes are sealed "
            "(F_SEAL_GROW | F_SEAL_SHRINK) so that no holder can make a mapping SIGBUS; "
            "create a new region of the size you need and copy into it",
        )

    def __repr__(self) -> str:
        if self.closed:
            return f"<ashmem.Mapping of {_sys.describe(self._region)} closed>"
        mode = "read-only" if self._readonly else "read-write"
        return (
            f"<ashmem.Mapping of {_sys.describe(self._region)} offset={self._offset} "
            f"length={len(self)} {mode}>"
        )


# Python 3.12 (PEP 688) lets a Python class export a buffer, so a window that starts inside a
# page can expose exactly its bytes: the kernel maps whole pages from the page boundary below
# the offset, and __buffer__ hands out the slice that was asked for. The slice holds an export
# of the underlying mmap, so close() still refuses to unmap under a live view. Older Pythons
# have no way to do this without a C extension, and map() refuses unaligned offsets there.
_UNALIGNED_OK = sys.version_info >= (3, 12)

# mmap's file-like methods count positions from the page boundary, not from the window start;
# on a window they would silently read the wrong bytes, so they are refused.
_FILE_METHODS = (
    "find", "move", "read", "read_byte", "readline", "resize", "rfind", "seek", "tell",
    "write", "write_byte",
)  # fmt: skip


class _Window(Mapping):
    """A Mapping whose offset is not page-aligned (Python >= 3.12 only)."""

    __slots__ = ("_length", "_skip")
    _skip: int
    _length: int

    def __buffer__(self, flags: int) -> memoryview:
        whole = mmap.mmap.__buffer__(self, flags)
        return whole[self._skip : self._skip + self._length]

    def __len__(self) -> int:
        with memoryview(self) as view:
            return len(view)

    def __getitem__(self, key: Any) -> Any:
        with memoryview(self) as view:
            item = view[key]
            return item if isinstance(item, int) else item.tobytes()

    def __setitem__(self, key: Any, value: Any) -> None:
        with memoryview(self) as view:
            view[key] = value


def _refuse_file_method(name: str) -> Callable[..., Any]:
    def refused(self: _Window, *args: Any, **kwargs: Any) -> Any:
        raise io.UnsupportedOperation(
            f"Mapping.{name}() is not available on a window at an unaligned offset; "
            "use slicing or memoryview()"
        )

    refused.__name__ = name
    return refused


for _name in _FILE_METHODS:
    setattr(_Window, _name, _refuse_file_method(_name))


_HOW_TO_SEND = (
    "pass it as a multiprocessing Process argument or through a multiprocessing "
    "Queue/Pipe/Pool/Manager, concurrent.futures.ProcessPoolExecutor, ashmem.Queue/Pipe/Pool, "
    "or send it over a Unix socket with ashmem.fdpass.send"
)


def plain_pickle_error(obj: object) -> TypeError:
    """The ``TypeError`` for pickling ``obj`` (a region) where no descriptor can travel. The
    picklers that can carry one have reducers registered in ``ashmem._reduction``."""
    return TypeError(
        f"a {type(obj).__name__} cannot be pickled with plain pickle: it is a file descriptor, "
        f"which only a channel that carries descriptors can move; {_HOW_TO_SEND}"
    )


class SharedMemory(Closing):
    """An anonymous shared memory region: a name for debugging, no global name, shared by
    handing its fd to another process, restrictable to read-only for good, freed when the
    last fd and mapping are gone.

    Owns its fd: ``close()`` closes it (live mappings stay valid). Travels through
    ``multiprocessing`` (Process arguments, queues, pipes, pools, managers) and
    ``concurrent.futures`` under fork, spawn and forkserver, and through ``ashmem.Queue`` /
    ``Pool``: the receiver gets a duplicate fd of the same region, with the same protection.
    Plain ``pickle.dumps`` raises ``TypeError`` (a descriptor cannot live in bytes).

    >>> import ashmem
    >>> shm = ashmem.SharedMemory.create("frames", 1 << 20)
    >>> m = shm.map_read_write(); m[0] = 42
    >>> shm.set_protect(ashmem.PROT_READ)
    True
    >>> shm.map_read_only()[0]
    42
    >>> m.close(); shm.close()
    """

    _fd: int = -1
    _name: str | None = None
    _name_pending: bool = False
    _size: int = 0
    # True for a received region whose size nobody needed yet (``_adopt_sealed``): ``_size``
    # is then not yet read. Every reader of ``_size`` goes through ``_known_size()`` or, for
    # the whole-region maps, lets ``mmap`` read it (it ``fstat``s the fd anyway).
    _size_pending: bool = False
    _populate: bool | None = False

    def __init__(self, *args: object, **kwargs: object) -> None:
        """Not a public constructor: regions are made with ``create``, ``from_fd`` or
        ``from_pid``."""
        raise TypeError(
            "SharedMemory(...) is not how a region is made: use "
            "SharedMemory.create(name, size) for a new one, SharedMemory.from_fd(fd) to wrap a "
            "received descriptor (for multiprocessing.shared_memory's SharedMemory(name=..., "
            "create=..., size=...), use ashmem.compat.SharedMemory)"
        )

    @classmethod
    def _new(
        cls, fd: int, name: str | None, size: int, populate: bool | None = False
    ) -> SharedMemory:
        self = cls.__new__(cls)
        self._fd = fd
        self._name = name
        self._size = size
        self._populate = populate
        return self

    # -- construction -------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        name: str | None = None,
        size: int | None = None,
        *,
        reserve: bool = True,
        populate: bool | None = None,
    ) -> SharedMemory:
        """Create a region of ``size`` bytes; ``name`` is for debugging only (optional:
        ``create(size=4096)``).

        Sizes larger than this process could ever back (``region.memory_limit()``: the memory
        cgroup's limit, else RAM + swap) raise ``ValueError`` before anything is allocated.

        ``reserve`` (default True) allocates the pages now with ``fallocate``, so that a full
        tmpfs or memory cgroup raises ``OSError(ENOSPC/ENOMEM)`` here instead of SIGBUS on
        first touch; Ctrl-C stops it between 64 MiB chunks, and any failure frees what was
        taken. ``populate=True`` prefaults every mapping made from this object
        (``MADV_POPULATE_WRITE``/``READ``), trading map time for fault-free access;
        ``False`` never does; ``None`` (default) prefaults read-write mappings of at least
        ``POPULATE_AUTO_MIN`` (1 MiB) of a reserved region, where one madvise costs less than
        a fault per page while filling them (see benchmarks/bench_fill.py). With
        ``reserve=False`` nothing is allocated or prefaulted unless ``populate=True``: pages
        are taken on first touch.

        >>> import ashmem
        >>> with ashmem.SharedMemory.create(size=4096) as shm:
        ...     shm.name, len(shm)
        ('none', 4096)
        """
        if size is None:
            hint = f" (did you mean create(size={name})?)" if isinstance(name, int) else ""
            raise TypeError(f"SharedMemory.create() needs a size in bytes{hint}")
        if reserve is not True and reserve is not False:
            raise TypeError(f"reserve must be a bool, not {type(reserve).__name__}")
        if populate is not None and populate is not True and populate is not False:
            _check_populate(populate)
        fd, label = region._create(name, size, reserve)
        if populate is None and not reserve:
            populate = False  # lazy end to end: nothing touched until the program touches it
        shm = _new_object(cls)
        shm._fd = fd
        shm._name = label
        shm._size = size
        shm._populate = populate
        return shm

    @classmethod
    def from_fd(cls, fd: int) -> SharedMemory:
        """Wrap an existing region fd, taking ownership of it (``close()`` closes it).

        Raises ``TypeError`` if ``fd`` is not an int, ``OSError(EBADF)`` if it is not an open
        descriptor, ``ValueError`` if it is not a region (a memfd with its size sealed); the
        fd is then left open and still belongs to the caller."""
        if isinstance(fd, SharedMemory):
            raise TypeError(
                "from_fd() takes an int file descriptor, not a SharedMemory; to share a "
                "SharedMemory pass it as is, or call its dup() for a second owner"
            )
        return cls._adopt(fd, region.check_region(fd))

    @classmethod
    def _adopt(cls, fd: int, size: int) -> SharedMemory:
        """Wrap an fd already checked with ``region.region_size``. Never raises, so the caller
        cannot be left unsure who owns ``fd``. The name is read from ``/proc`` only when
        first needed (or at ``close()``), keeping that lookup off the hand-off path."""
        shm = _new_object(cls)
        shm._fd = fd
        shm._size = size
        shm._name_pending = True  # _name stays the class default, None, until then
        return shm

    @classmethod
    def _adopt_sealed(cls, fd: int) -> SharedMemory:
        """Wrap an fd already checked with ``region._sealed_region``, size not yet read: the
        received-region path, where ``map_read_only()`` lets ``mmap``'s own ``fstat`` find the
        size and ``size``/``len()``/``close()`` read it only if nothing mapped the region
        first. The size is sealed, so reading it later gives what reading it now would.
        Never raises, like ``_adopt``."""
        shm = _new_object(cls)
        shm._fd = fd
        shm._size_pending = True
        shm._name_pending = True
        return shm

    def _known_size(self) -> int:
        """``_size``, read from the fd first if it is still pending."""
        if self._size_pending:
            self._size_pending = False
            try:
                self._size = os.fstat(self._fd).st_size
            except OSError as exc:  # our own open fd: only if someone closed it under us
                self._size_pending = True
                raise _sys.translate(exc, "read the size", self.name) from exc
        return self._size

    @classmethod
    def from_pid(cls, pid: int, fd: int) -> SharedMemory:
        """Copy fd number ``fd`` out of process ``pid`` (``pidfd_getfd``, Linux 5.6).

        Needs ptrace access to ``pid`` (same uid and a permissive ``kernel.yama.ptrace_scope``,
        or CAP_SYS_PTRACE); raises ``PermissionError`` saying so otherwise,
        ``ProcessLookupError`` if there is no such process, ``ValueError`` if that fd is not a
        region."""
        try:
            pidfd = os.pidfd_open(pid)
        except OSError as exc:
            raise _sys.translate(exc, f"open process {pid}") from exc
        try:
            newfd = _sys.pidfd_getfd(pidfd, fd)
        except OSError as exc:
            if exc.errno == errno.EPERM:  # ptrace policy
                raise PermissionError(
                    exc.errno,
                    f"cannot take fd {fd} from process {pid}: ptrace access denied (run as the "
                    "same uid with kernel.yama.ptrace_scope <= 1 and the target as a "
                    "descendant, or with CAP_SYS_PTRACE); pass the fd over a socket instead "
                    "(ashmem.fdpass)",
                ) from exc
            raise _sys.translate(exc, f"take fd {fd} from process {pid}") from exc
        finally:
            os.close(pidfd)
        try:
            return cls.from_fd(newfd)
        except BaseException:
            os.close(newfd)
            raise

    # -- state ----------------------------------------------------------------------------

    def _closed_error(self) -> ClosedError:
        return ClosedError(f"{_sys.describe(self.name)} is closed", self.name)

    @property
    def name(self) -> str | None:
        """Debug name (as the kernel keeps it: at most 249 UTF-8 bytes)."""
        if self._name_pending:
            self._name_pending = False
            if self._fd >= 0:
                try:
                    self._name = region.get_name_region(self._fd)
                except (OSError, ValueError):
                    self._name = None
        return self._name

    @property
    def size(self) -> int:
        """Size in bytes; fixed for the region's lifetime."""
        return self._known_size() if self._size_pending else self._size

    def __len__(self) -> int:
        """``len(shm)`` is its size in bytes."""
        return self._known_size() if self._size_pending else self._size

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def fileno(self) -> int:
        """The region fd, borrowed: still owned by this object."""
        if self._fd < 0:
            raise self._closed_error()
        return self._fd

    def get_protect(self) -> int:
        """Current protection: ``PROT_READ | PROT_EXEC``, plus ``PROT_WRITE`` if writable."""
        return region.get_prot_region(self.fileno())

    def set_protect(self, prot: int) -> bool:
        """Restrict the region to ``prot`` for every holder in every process.

        Removing ``PROT_WRITE`` is irreversible; existing writable mappings keep working.
        Returns False (changing nothing) when ``prot`` asks for ``PROT_WRITE`` back. Raises
        ``ValueError`` for invalid bits, ``ClosedError`` when closed, ``PermissionError``
        when a holder has forbidden new seals (``F_SEAL_SEAL``) so it cannot be protected."""
        fd = self.fileno()
        region.check_prot(prot)
        try:
            region.set_prot_region(fd, prot)
        except ProtectionError:
            if prot & PROT_WRITE:
                return False
            raise
        return True

    # -- purgeable memory -----------------------------------------------------------------

    def pin(self, offset: int = 0, length: int = 0) -> bool:
        """Pin ``[offset, offset + length)`` (``length`` 0: to the end) for this process so it
        cannot be purged; True if it *was* purged while unpinned (those pages now read as
        zeros: regenerate them). Page-aligned ranges only (``ValueError``). A new region is
        pinned by its creator; pins are not counted, and end at ``close()`` or process exit.
        See ``ashmem.region.pin_region`` and ``ashmem.purge``.

        >>> import ashmem
        >>> with ashmem.SharedMemory.create("cache", 4096) as shm:
        ...     shm.unpin(); shm.is_pinned()
        ...     shm.pin()
        False
        False
        """
        return region.pin_region(self.fileno(), offset, length) == region.WAS_PURGED

    def unpin(self, offset: int = 0, length: int = 0) -> None:
        """Unpin the range for this process: once no process pins it, it may be purged under
        memory pressure (least recently unpinned first). ``ProtectionError`` on a
        write-protected region, which can never be purged."""
        region.unpin_region(self.fileno(), offset, length)

    def is_pinned(self, offset: int = 0, length: int = 0) -> bool:
        """True if every page of the range is pinned by some process."""
        return region.get_pin_status(self.fileno(), offset, length) == region.IS_PINNED

    @contextlib.contextmanager
    def pinned(self, offset: int = 0, length: int = 0) -> Iterator[bool]:
        """``with shm.pinned(offset, length) as was_purged:`` pins the range for the block
        and unpins it on the way out; ``was_purged`` says whether to regenerate it.

        >>> import ashmem
        >>> with ashmem.SharedMemory.create("cache", 4096) as shm:
        ...     with shm.pinned() as was_purged:
        ...         was_purged
        ...     shm.is_pinned()
        False
        False
        """
        was_purged = self.pin(offset, length)
        try:
            yield was_purged
        finally:
            self.unpin(offset, length)

    # -- mapping --------------------------------------------------------------------------

    def map(
        self,
        prot: int,
        offset: int = 0,
        length: int | None = None,
        *,
        populate: bool | None = None,
    ) -> Mapping:
        """Map ``length`` bytes (default: to the end) starting at ``offset``.

        ``prot`` must include ``PROT_READ``. Raises, in this order: ``ClosedError``;
        ``ValueError`` for invalid prot, negative offset, ``length <= 0`` or a window past
        the end; ``ProtectionError`` for a writable map of a write-protected region.

        An ``offset`` that is not a multiple of the page size works on Python >= 3.12: the
        pages around the window are mapped and exactly ``length`` bytes are exposed (the
        mmap file-position methods such as ``read``/``seek`` are then refused). Python 3.10
        and 3.11 cannot expose such a window and raise ``ValueError`` saying how to slice
        instead."""
        fd = self.fileno()
        region.check_prot(prot)
        _check_int(offset, "offset")
        if length is not None:
            _check_int(length, "length")
        _check_populate(populate)
        if not prot & PROT_READ:
            raise ValueError(
                f"cannot map {_sys.describe(self.name)} without PROT_READ: Python reads "
                "through every buffer it exposes"
            )
        if offset < 0:
            raise ValueError(f"offset must be >= 0, got {offset}")
        self._known_size()
        if length is None:
            length = self._size - offset
            if length <= 0:
                raise ValueError(
                    f"offset {offset} is at or past the end of {_sys.describe(self.name)} "
                    f"({self._size} bytes)"
                )
        elif length <= 0:
            raise ValueError(f"length must be > 0, got {length}")
        if offset + length > self._size:
            raise ValueError(
                f"window [{offset}, {offset + length}) is past the end of "
                f"{_sys.describe(self.name)} ({self._size} bytes)"
            )
        skip = offset % PAGE_SIZE
        if not skip:
            mapping = Mapping(fd, length, prot, offset, self._name, self._size)
        elif _UNALIGNED_OK:
            mapping = _Window(fd, skip + length, prot, offset - skip, self._name, self._size)
            mapping._offset, mapping._skip, mapping._length = offset, skip, length
        else:
            raise ValueError(
                f"offset {offset} is not a multiple of the page size ({PAGE_SIZE}); Python "
                f"< 3.12 cannot expose a window that starts inside a page: map from "
                f"{offset - skip} and slice memoryview(mapping)[{skip}:]"
            )
        want = self._populate if populate is None else populate
        if want is None:  # create()'s default: prefault where faults would cost more
            want = bool(prot & PROT_WRITE) and length >= POPULATE_AUTO_MIN
        if want:
            _populate(mapping)
        return mapping

    def map_read_write(self, *, populate: bool | None = None) -> Mapping:
        """Map the whole region read-write."""
        mapping = self._map_whole(_PROT_RW, populate)
        want = self._populate if populate is None else populate
        if want is None:  # create()'s default: prefault where faults would cost more
            want = self._size >= POPULATE_AUTO_MIN  # known: _map_whole read it if pending
        if want:
            _populate(mapping)
        return mapping

    def map_read_only(self, *, populate: bool | None = None) -> Mapping:
        """Map the whole region read-only."""
        # _map_whole(PROT_READ, populate), inline: this is the consumer's side of every
        # hand-off. Keep the two in step.
        fd = self._fd
        if fd < 0:
            raise self._closed_error()
        if populate is not None and populate is not True and populate is not False:
            _check_populate(populate)
        length = 0 if self._size_pending else self._size
        try:
            if _MMAP_EXTRA:
                mapping = _mmap_new(
                    Mapping, fd, length, _MAP_SHARED, PROT_READ, 0, 0, **_MMAP_EXTRA
                )
            else:  # a call without ** is the faster one
                mapping = _mmap_new(Mapping, fd, length, _MAP_SHARED, PROT_READ, 0, 0)
        except OSError as exc:
            raise _sys.translate(exc, "map read-only", self.name) from exc
        if not length:
            self._size = length = len(mapping)
            self._size_pending = False
        mapping._region = self._name
        mapping._readonly = True
        mapping._offset = 0
        mapping._region_size = length
        if populate or (populate is None and self._populate):
            _populate(mapping)
        return mapping

    def _map_whole(self, prot: int, populate: object) -> Mapping:
        """``map(prot)`` of the whole region, with only the checks that can fail for it:
        the two whole-region maps are on every hand-off and every lifecycle, so they skip
        the window arithmetic and call mmap directly."""
        fd = self._fd
        if fd < 0:
            raise self._closed_error()
        if populate is not None and populate is not True and populate is not False:
            _check_populate(populate)
        # A received region's size is still pending: length 0 maps the whole file, and mmap
        # reads its size with the fstat it makes anyway (one fstat per received region).
        length = 0 if self._size_pending else self._size
        try:
            mapping = _mmap_new(Mapping, fd, length, _MAP_SHARED, prot, 0, 0, **_MMAP_EXTRA)
        except OSError as exc:
            doing = "map read-write" if prot & PROT_WRITE else "map read-only"
            raise _sys.translate(exc, doing, self.name) from exc
        if not length:
            self._size = length = len(mapping)
            self._size_pending = False
        mapping._region = self._name
        mapping._readonly = prot == PROT_READ
        mapping._offset = 0
        mapping._region_size = length
        return mapping

    # -- lifetime -------------------------------------------------------------------------

    def dup(self) -> SharedMemory:
        """A new ``SharedMemory`` owning a duplicate (CLOEXEC) fd of the same region."""
        try:
            fd = os.dup(self.fileno())
        except OSError as exc:
            raise _sys.translate(exc, "duplicate the fd", self.name) from exc
        return SharedMemory._new(fd, self.name, self._known_size(), self._populate)

    def close(self) -> None:
        """Close the fd. Idempotent. Mappings made from this object stay valid."""
        fd = self._fd
        if fd < 0:
            return
        if self._name_pending:
            self.name  # noqa: B018 - resolve the debug name while the fd still exists
        if self._size_pending:  # never mapped: a closed region still tells its size
            with contextlib.suppress(OSError):
                self._known_size()
        self._fd = -1
        _release_pins(fd)  # this process's pins end with its last fd
        os.close(fd)

    def __del__(self) -> None:
        if self._fd >= 0:
            self.close()

    def __reduce__(self) -> Any:
        # Plain pickle has nowhere to put a descriptor (a DupFd parked in multiprocessing's
        # resource sharer leaked when nobody fetched it). The picklers that can carry one get
        # their reducers from ashmem._reduction.
        raise plain_pickle_error(self)

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"fd={self._fd}"
        return f"<ashmem.SharedMemory {self.name!r} size={self.size} {state}>"


def _check_int(value: object, what: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{what} must be an int, not {type(value).__name__}")


def _check_populate(populate: object) -> None:
    if populate is not None and not isinstance(populate, bool):
        raise TypeError(f"populate must be True, False or None, not {type(populate).__name__}")


def _populate(mapping: Mapping) -> None:
    if mapping.readonly:
        region.populate_region(mapping, read_only=True, name=mapping.region_name)
    else:
        region.populate_region(mapping)
