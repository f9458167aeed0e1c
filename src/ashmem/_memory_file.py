"""The android.os.MemoryFile layer: a region mapped read-write at construction, with
offset-checked byte copies and standard binary streams over it."""

from __future__ import annotations

import contextlib
import errno
import io
from collections.abc import Iterator
from typing import Any

from . import _sys
from ._closing import Closing
from ._errors import ClosedError, ProtectionError, PurgedError
from ._shared_memory import Mapping, SharedMemory, plain_pickle_error
from .region import PROT_WRITE

__all__ = ["MemoryFile"]


def _check_index(value: object, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{what} must be an int, not {type(value).__name__}")
    return value


def _check_copy(src_offset: object, dest_offset: object, count: object) -> tuple[int, int, int]:
    return (
        _check_index(src_offset, "src_offset"),
        _check_index(dest_offset, "dest_offset"),
        _check_index(count, "count"),
    )


def _byte_view(buffer: Any, writable: bool) -> memoryview:
    view = memoryview(buffer)
    if writable and view.readonly:
        view.release()
        raise TypeError("read_bytes needs a writable buffer (bytearray, memoryview, array)")
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    return view


def _read_only_error(name: str | None) -> ProtectionError:
    return ProtectionError(
        f"MemoryFile {name!r} is read-only: its region was write-protected (set_protect "
        "removed PROT_WRITE) before this process wrapped it; only read from it",
        name,
    )


class MemoryFile(Closing):
    """A fixed-size shared memory file, as ``android.os.MemoryFile``.

    >>> import ashmem
    >>> with ashmem.MemoryFile("greeting", 4096) as f:
    ...     f.write_bytes(b"hello", 0, 0, 5)
    ...     out = bytearray(5)
    ...     f.read_bytes(out, 0, 0, 5)
    ...     bytes(out)
    5
    b'hello'

    Send ``f.shared_memory`` (or ``f.fileno()``) to another process to share it, or the
    ``MemoryFile`` itself through ``multiprocessing`` (Process arguments, queues, pools,
    ``concurrent.futures``) or ``ashmem.Queue``/``Pool``: it arrives as a ``MemoryFile`` over
    the same region. Plain ``pickle.dumps`` raises ``TypeError``. A received
    ``SharedMemory`` becomes a ``MemoryFile`` with ``MemoryFile.from_shared_memory``.
    """

    _shm: SharedMemory | None = None
    _mapping: Mapping | None = None
    _name: str | None = None
    _purging: bool = False

    def __init__(self, name: str | None, length: int) -> None:
        shm = SharedMemory.create(name, length)
        try:
            self._mapping = shm.map_read_write()
        except BaseException:
            shm.close()
            raise
        self._shm = shm
        self._name = shm.name

    @classmethod
    def from_shared_memory(cls, shm: SharedMemory) -> MemoryFile:
        """Wrap a region (for example one received from another process) as a
        ``MemoryFile``, taking ownership of ``shm``: closing the file closes it.

        The region is mapped read-write, or read-only if it is write-protected; writes to a
        read-only ``MemoryFile`` raise ``ProtectionError``.

        >>> import ashmem
        >>> shm = ashmem.SharedMemory.create("notes", 4096)
        >>> with ashmem.MemoryFile.from_shared_memory(shm) as f:
        ...     f.write_bytes(b"hi", 0, 0, 2)
        ...     f.length, f.name
        (4096, 'notes')
        """
        if not isinstance(shm, SharedMemory):
            raise TypeError(
                f"MemoryFile.from_shared_memory expects an ashmem.SharedMemory, not "
                f"{type(shm).__name__}"
            )
        writable = bool(shm.get_protect() & PROT_WRITE)
        mapping = shm.map_read_write() if writable else shm.map_read_only()
        self = cls.__new__(cls)
        self._shm, self._mapping, self._name = shm, mapping, shm.name
        return self

    def __reduce__(self) -> Any:
        # The picklers that can carry a descriptor have a reducer in ashmem._reduction.
        raise plain_pickle_error(self)

    def _live(self) -> Mapping:
        mapping = self._mapping
        if mapping is None:
            raise ClosedError(f"MemoryFile {self._name!r} is closed", self._name)
        return mapping

    @property
    def length(self) -> int:
        """Size in bytes."""
        return len(self._live())

    def __len__(self) -> int:
        return self.length

    @property
    def name(self) -> str | None:
        return self._name

    @property
    def shared_memory(self) -> SharedMemory:
        """The underlying region, to send to another process or restrict with
        ``set_protect``."""
        self._live()
        assert self._shm is not None
        return self._shm

    def fileno(self) -> int:
        """The region fd, borrowed: still owned by this object."""
        return self.shared_memory.fileno()

    @property
    def closed(self) -> bool:
        return self._mapping is None

    def _check_range(self, offset: int, count: int, size: int, what: str) -> None:
        if offset < 0 or count < 0 or offset + count > size:
            raise IndexError(
                f"{what} range [{offset}, {offset + count}) is outside [0, {size}) "
                f"(MemoryFile {self._name!r})"
            )

    def read_bytes(self, buffer: Any, src_offset: int, dest_offset: int, count: int) -> int:
        """Copy ``count`` bytes from the file at ``src_offset`` into ``buffer`` at
        ``dest_offset``. Returns ``count``. ``IndexError`` if either range is out of bounds
        (nothing copied)."""
        mapping = self._live()
        src_offset, dest_offset, count = _check_copy(src_offset, dest_offset, count)
        with self._access(), _byte_view(buffer, writable=True) as dest:
            self._check_range(src_offset, count, len(mapping), "file")
            self._check_range(dest_offset, count, len(dest), "buffer")
            with memoryview(mapping) as whole:
                dest[dest_offset : dest_offset + count] = whole[src_offset : src_offset + count]
        return count

    def write_bytes(self, buffer: Any, src_offset: int, dest_offset: int, count: int) -> None:
        """Copy ``count`` bytes from ``buffer`` at ``src_offset`` into the file at
        ``dest_offset``. ``IndexError`` if either range is out of bounds (nothing written)."""
        mapping = self._live()
        src_offset, dest_offset, count = _check_copy(src_offset, dest_offset, count)
        if mapping.readonly:
            raise _read_only_error(self._name)
        with self._access(), _byte_view(buffer, writable=False) as src:
            self._check_range(src_offset, count, len(src), "buffer")
            self._check_range(dest_offset, count, len(mapping), "file")
            mapping[dest_offset : dest_offset + count] = src[src_offset : src_offset + count]

    # -- purgeable memory -----------------------------------------------------------------

    def allow_purging(self, allow: bool) -> bool:
        """Let the system purge the whole file under memory pressure while nobody accesses it
        (``True``: unpin it), or not (``False``: pin it). Returns the previous setting.

        While purging is allowed, ``read_bytes``, ``write_bytes`` and stream reads and writes
        pin the file first and unpin it after; if it was purged in between they raise
        ``ashmem.PurgedError`` and leave it pinned (write the data anew, then call
        ``allow_purging(True)`` again), as Android's ``MemoryFile`` does since O.

        >>> import ashmem
        >>> with ashmem.MemoryFile("thumbs", 4096) as f:
        ...     f.allow_purging(True), f.is_purging_allowed()
        (False, True)
        """
        if not isinstance(allow, bool):
            raise TypeError(f"allow must be a bool, not {type(allow).__name__}")
        shm = self.shared_memory
        previous = self._purging
        if allow and not previous:
            shm.unpin()
        elif previous and not allow:
            shm.pin()
        self._purging = allow
        return previous

    def is_purging_allowed(self) -> bool:
        """True while ``allow_purging(True)`` is in effect."""
        return self._purging

    @contextlib.contextmanager
    def _access(self) -> Iterator[None]:
        if not self._purging:
            yield
            return
        shm = self.shared_memory
        if shm.pin():  # it stays pinned; the next access unpins it again after
            raise PurgedError(
                f"MemoryFile {self._name!r} was purged under memory pressure while purging "
                "was allowed; its bytes are now zeros. Write them anew, then allow purging "
                "again",
                self._name,
            )
        try:
            yield
        finally:
            shm.unpin()

    def open(self, mode: str = "rb") -> _RegionStream:
        """A binary stream over the file: ``'rb'``, ``'wb'`` (does not truncate: the size is
        fixed) or ``'r+b'``. Writes advance the position and never grow the file; a write
        that does not fit raises ``OSError(EFBIG)`` and writes nothing. Closing the stream
        does not close the file."""
        modes = {"rb": (True, False), "wb": (False, True), "r+b": (True, True), "rb+": (True, True)}
        if mode not in modes:
            raise ValueError(f"mode must be 'rb', 'wb' or 'r+b', not {mode!r}")
        self._live()
        readable, writable = modes[mode]
        return _RegionStream(self, readable, writable)

    def close(self) -> None:
        """Unmap and close the region fd. Idempotent. Streams over it become closed."""
        mapping, shm = self._mapping, self._shm
        if mapping is not None:
            mapping.close()
        self._mapping = None
        if shm is not None:
            shm.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    def __repr__(self) -> str:
        if self._mapping is None:
            return f"<ashmem.MemoryFile {self._name!r} closed>"
        return f"<ashmem.MemoryFile {self._name!r} length={len(self._mapping)}>"


class _RegionStream(io.RawIOBase):
    """Raw binary stream over a MemoryFile; returned by ``MemoryFile.open``."""

    def __init__(self, file: MemoryFile, readable: bool, writable: bool) -> None:
        super().__init__()
        self._file = file
        self._readable = readable
        self._writable = writable
        self._pos = 0

    def _mapping(self) -> Mapping:
        if self.closed:
            raise ValueError("I/O operation on closed stream")
        return self._file._live()

    def readable(self) -> bool:
        self._mapping()
        return self._readable

    def writable(self) -> bool:
        self._mapping()
        return self._writable

    def seekable(self) -> bool:
        self._mapping()
        return True

    def tell(self) -> int:
        self._mapping()
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        mapping = self._mapping()
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = len(mapping) + offset
        else:
            raise ValueError(f"invalid whence {whence}")
        if pos < 0:
            raise ValueError(f"negative seek position {pos}")
        self._pos = pos
        return pos

    def readinto(self, buffer: Any) -> int:
        mapping = self._mapping()
        if not self._readable:
            raise io.UnsupportedOperation("stream was not opened for reading")
        with self._file._access(), _byte_view(buffer, writable=True) as dest:
            start = min(self._pos, len(mapping))
            count = min(len(dest), len(mapping) - start)
            with memoryview(mapping) as whole:
                dest[:count] = whole[start : start + count]
        self._pos = start + count
        return count

    def write(self, data: Any) -> int:
        mapping = self._mapping()
        if not self._writable:
            raise io.UnsupportedOperation("stream was not opened for writing")
        if mapping.readonly:
            raise _read_only_error(self._file.name)
        with self._file._access(), _byte_view(data, writable=False) as src:
            end = self._pos + len(src)
            if end > len(mapping):
                raise OSError(
                    errno.EFBIG,
                    f"cannot write {len(src)} bytes at position {self._pos} of "
                    f"{_sys.describe(self._file.name)} ({len(mapping)} bytes): a MemoryFile "
                    "never grows",
                )
            mapping[self._pos : end] = src
        count = end - self._pos
        self._pos = end
        return count
