"""Parcel: the typed container a transaction carries, as ``android.os.Parcel``.

Encoding, version 1 (the message header's version covers it). A Parcel is a sequence of
entries, little-endian, unaligned; every entry starts with a one-byte tag, so a value read
as the wrong type is detected (``BadParcel``) instead of being reinterpreted::

    tag   entry     body
    0x01  INT       i32
    0x02  LONG      i64
    0x03  FLOAT     f32 (IEEE 754 binary32)
    0x04  DOUBLE    f64
    0x05  BOOL      u8, 0 or 1
    0x06  STRING    u32 n, n bytes of UTF-8 (strict: no lone surrogates)
    0x07  NULL      nothing: a None string, bytes, binder or list
    0x08  BYTES     u32 n, n bytes
    0x09  FD        u32 index into the message's descriptors
    0x0A  REGION    u32 index into the message's descriptors; must be an ashmem region
    0x0B  BINDER    a binder reference (see ``ashmem.binder._wire``)
    0x0C  LIST      u8 element tag, u32 count, then the elements without tags: packed
                    fixed-size values for INT/LONG/FLOAT/DOUBLE/BOOL; for STRING each
                    element is u32 n (0xFFFFFFFF for None) and n bytes of UTF-8

Decoding never trusts a length: each one is checked against the bytes that remain before
anything is allocated, so a few bytes cannot ask for gigabytes. Nothing is ever unpickled.

Descriptor ownership: ``write_file_descriptor`` and ``write_shared_memory`` *dup* their
argument (the caller keeps its fd / object); the Parcel owns the dups until ``close()``. A
received Parcel owns the descriptors that came with it; ``read_file_descriptor`` and
``read_shared_memory`` hand out a *new* CLOEXEC dup that the caller owns, so a Parcel can be
read twice and closing it never closes what the caller took.

A Parcel is not thread-safe. Writes always append at the end and leave the position there,
as Android's; call ``set_data_position(0)`` to read back what you wrote.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import struct
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from .. import _sys
from .._closing import Closing
from .._errors import BusyError
from .._memory_file import MemoryFile
from .._shared_memory import Mapping, SharedMemory
from . import _wire
from ._errors import BadParcel

if TYPE_CHECKING:
    from ._binder import Binder
    from ._proxy import Proxy

__all__ = ["Parcel"]

_T_INT = 0x01
_T_LONG = 0x02
_T_FLOAT = 0x03
_T_DOUBLE = 0x04
_T_BOOL = 0x05
_T_STRING = 0x06
_T_NULL = 0x07
_T_BYTES = 0x08
_T_FD = 0x09
_T_REGION = 0x0A
_T_BINDER = 0x0B
_T_LIST = 0x0C

_FOUND = {
    _T_INT: "an int",
    _T_LONG: "a long",
    _T_FLOAT: "a float",
    _T_DOUBLE: "a double",
    _T_BOOL: "a bool",
    _T_STRING: "a string",
    _T_NULL: "a null",
    _T_BYTES: "bytes",
    _T_FD: "a file descriptor",
    _T_REGION: "a shared memory region",
    _T_BINDER: "a binder",
    _T_LIST: "a list",
}

_F_GET_SEALS = _sys.F_GET_SEALS
_F_SPILLED = _wire.F_SPILLED
_I32 = struct.Struct("<Bi")
_I64 = struct.Struct("<Bq")
_F32 = struct.Struct("<Bf")
_F64 = struct.Struct("<Bd")
_TAG_U8 = struct.Struct("<BB")
_TAG_U32 = struct.Struct("<BI")
_U32 = struct.Struct("<I")
_LIST = struct.Struct("<BBI")

_INT_MIN, _INT_MAX = -(1 << 31), (1 << 31) - 1
_LONG_MIN, _LONG_MAX = -(1 << 63), (1 << 63) - 1
_NONE_LENGTH = 0xFFFFFFFF
#: ``bytes`` at least this large are kept by reference, not copied, until sent.
_BY_REFERENCE = 64 * 1024
#: A Parcel may hold this many descriptors; one more is kept for a spilled payload.
MAX_PARCEL_FDS = _wire.MAX_FDS - 1

# element tag -> (struct format letter, size, what)
_LIST_ITEMS = {
    _T_INT: ("i", 4, "int"),
    _T_LONG: ("q", 8, "long"),
    _T_FLOAT: ("f", 4, "float"),
    _T_DOUBLE: ("d", 8, "double"),
    _T_BOOL: ("B", 1, "bool"),
}


def _check_int(value: object, low: int, high: int, method: str, hint: str = "") -> int:
    if not isinstance(value, int):
        raise TypeError(f"{method} needs an int, not {type(value).__name__}")
    if not low <= value <= high:
        raise ValueError(f"{method}: {value} is outside [{low}, {high}]{hint}")
    return value


def _byte_view(value: Any, method: str) -> memoryview:
    try:
        view = memoryview(value)
    except TypeError:
        raise TypeError(
            f"{method} needs bytes or a buffer (bytearray, memoryview, mmap, numpy array), "
            f"not {type(value).__name__}"
        ) from None
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    return view


class _OwnFds(list[int]):
    """The descriptors a Parcel dup'd for itself (``write_file_descriptor``,
    ``write_shared_memory``), in message order. Only a Parcel holding descriptors has one,
    so only such a Parcel costs a finalizer: dropping it closes them (``release`` first
    empties it, so they are never closed twice)."""

    __slots__ = ()

    def release(self) -> None:
        held = self[:]  # a plain list: emptied first, so __del__ cannot close them again
        self.clear()
        for fd in held:  # _wire.close_fds, inline
            try:  # noqa: SIM105 - no suppress() object per descriptor on the call path
                os.close(fd)
            except OSError:
                pass

    def __del__(self) -> None:
        if self:
            _wire.close_fds(self)


class _PeerFds(list[int]):
    """The descriptors that came with a received message: the peer's, closed with
    ``_wire.discard_fds`` (never blocking this thread), on ``release`` or when dropped."""

    __slots__ = ()

    def release(self) -> None:
        held = self[:]
        self.clear()
        for fd in held:
            # _wire.discard_fds's common case inline: a descriptor with seals is shmem,
            # whose close never blocks; anything else goes to discard_fds.
            try:
                fcntl.fcntl(fd, _F_GET_SEALS)
            except OSError:
                _wire.discard_fds((fd,))
            else:
                os.close(fd)

    def __del__(self) -> None:
        if self:
            _wire.discard_fds(self)


class Parcel(Closing):
    """A container for a transaction's data: typed values, descriptors, regions and binders.

    >>> from ashmem.binder import Parcel
    >>> p = Parcel()
    >>> p.write_int(42); p.write_string("héllo"); p.write_double_list([0.5, 1.5])
    >>> p.set_data_position(0)
    >>> p.read_int(), p.read_string(), p.read_double_list()
    (42, 'héllo', [0.5, 1.5])
    >>> p.close()

    A Parcel owns the descriptors it holds and closes them in ``close()`` (also a context
    manager; garbage collection closes them too, but do not rely on it).
    """

    # Class-level defaults are the state of an empty Parcel: ``Parcel()`` sets nothing, and
    # ``close()`` returns to it by clearing the instance dict. An empty Parcel is in *read*
    # state over no bytes; the first write switches it to the *write* state.
    #
    # Read state (``_buf is None``): ``_data[_start:_end]`` are the bytes, ``_pos`` is an
    # absolute index into ``_data`` (bytes, or a read-only Mapping of a spilled payload).
    # Write state: finished chunks (large ``bytes`` kept by reference, and the buffers before
    # them; a list once there are any) then the tail ``_buf``; ``_size`` counts all of it;
    # ``_data`` is a flattened copy made on the first read after a write (None when writes
    # made it stale).
    _data: Any = b""
    _start = 0
    _end = 0
    _pos = 0
    _buf: bytearray | None = None
    _chunks: list[Any] | None = None
    _size = 0
    # The descriptors this Parcel owns, in message order, once it has any: an ``_OwnFds``
    # (dups we made, closed directly) or a ``_PeerFds`` (a peer's, closed with
    # ``_wire.discard_fds``, never blocking this thread). They, not the Parcel, close them
    # when dropped, so a Parcel without descriptors has no finalizer to run.
    _fds: _OwnFds | _PeerFds | tuple[()] = ()
    # Local binders written here: a callback lives at least as long as the Parcel that
    # carries it (Android's transaction holds a strong reference too).
    _binders: list[Binder] | None = None

    # -- the boundary with the transport ---------------------------------------------------
    #
    # The transport builds a received Parcel only with ``_from_wire``, takes what to send only
    # from ``_outgoing``, hands a reply over with ``_adopt`` and asks for received descriptors
    # with ``_wire_fds``; nothing outside this module touches the fields above.

    @classmethod
    def _from_wire(cls, data: Any, start: int, fds: list[int], flags: int = 0) -> Parcel:
        """The Parcel a received message carries: ``data[start:]`` (bytes), or, with
        ``F_SPILLED`` in ``flags``, the sealed region ``fds[0]`` (mapped read-only, its
        descriptor closed). Takes ownership of ``fds``: they belong to the Parcel, or are
        closed if it cannot be made (``BadParcel``, ``OSError``)."""
        if flags & _F_SPILLED:
            try:
                mapping = _wire.open_spilled(fds[0])
            except BaseException:
                _wire.discard_fds(fds)
                raise
            os.close(fds[0])
            data, start, fds = mapping, 0, fds[1:]
        # ``Parcel()`` (no __init__) is the cheaper call; a subclass may have an __init__.
        self = Parcel() if cls is Parcel else cls.__new__(cls)
        self._data = data
        self._start = self._pos = start
        self._end = len(data)
        if fds:
            self._fds = _PeerFds(fds)
        return self

    def _wire_empty(self) -> bool:
        """No bytes and no descriptors: the reply is the bare header. (A Parcel in read
        state holds bytes too: a reply filled by passing it to another call.)"""
        return self._buf is None and self._start == self._end and not self._fds

    def _wire_fds(self) -> Sequence[int]:
        """The descriptors this Parcel owns, in message order (borrowed: do not close)."""
        return self._fds

    def _adopt(self, other: Parcel) -> None:
        """Become ``other`` (a received Parcel), closing what this one held."""
        self._release()
        self.__dict__.clear()
        self.__dict__.update(other.__dict__)
        other.__dict__.clear()

    def _adopt_bytes(self, data: bytes, start: int) -> None:
        """Become a received Parcel over ``data[start:]`` with no descriptors, closing what
        this one held: ``_adopt(_from_wire(data, start, []))`` in one call (a plain reply)."""
        if self._fds or self._data.__class__ is not bytes:  # else nothing to release
            self._release()
        self.__dict__.clear()
        self._data = data
        self._start = self._pos = start
        self._end = len(data)

    def _wire_plain(self) -> tuple[list[Any], Sequence[int]] | None:
        """``(buffers, descriptors)`` to send a Parcel that travels as it is in one message:
        no binders, at most ``MAX_INLINE`` bytes; the descriptors are borrowed. None for
        any other Parcel: use ``_outgoing``."""
        if self._binders:
            return None
        buf = self._buf
        if buf is None:
            data, start, end = self._data, self._start, self._end
            if start == end:
                return [], self._fds
            if end - start > _wire.MAX_INLINE:
                return None
            if start == 0 and end == len(data):
                return [data], self._fds
            return [memoryview(data)[start:end]], self._fds
        if self._size > _wire.MAX_INLINE:
            return None
        if self._chunks:
            return [*self._chunks, buf], self._fds
        return ([buf] if self._size else []), self._fds

    # -- sizes and position ---------------------------------------------------------------

    def data_size(self) -> int:
        """Bytes of data (descriptors not counted).

        >>> p = Parcel(); p.write_int(1); p.data_size()
        5
        """
        if self._buf is None:
            return self._end - self._start
        return self._size

    def data_position(self) -> int:
        """Where the next read starts, from 0.

        >>> p = Parcel(); p.write_long(1); p.data_position()
        9
        """
        if self._buf is None:
            return self._pos - self._start
        return self._pos

    def set_data_position(self, position: int) -> None:
        """Move the read position; ``ValueError`` outside ``[0, data_size()]``.

        >>> p = Parcel(); p.write_bool(True); p.set_data_position(0); p.read_bool()
        True
        """
        size = self.data_size()
        if not isinstance(position, int) or not 0 <= position <= size:
            raise ValueError(f"position {position!r} is outside [0, {size}]")
        self._pos = position + (self._start if self._buf is None else 0)

    def data_avail(self) -> int:
        """Bytes left to read.

        >>> p = Parcel(); p.write_int(1); p.set_data_position(0); p.data_avail()
        5
        """
        return self.data_size() - self.data_position()

    def has_file_descriptors(self) -> bool:
        """True if the Parcel holds descriptors (fds or regions).

        >>> Parcel().has_file_descriptors()
        False
        """
        return bool(self._fds)

    # -- writing --------------------------------------------------------------------------

    def _writer(self) -> bytearray:
        buf = self._buf
        if buf is None:
            # Read state (a received Parcel, or an empty one): copy its bytes into a
            # writable buffer.
            data, start, end = self._data, self._start, self._end
            buf = bytearray() if start == end or data is None else bytearray(data[start:end])
            if data.__class__ is not bytes:
                self._release_mapping()
            self._buf, self._size = buf, end - start
            if start:
                self._pos -= start
                self._start = 0
        self._data = None
        return buf

    def _put(self, encoded: bytes) -> None:
        self._writer().extend(encoded)
        self._size += len(encoded)
        self._pos = self._size

    def write_int(self, value: int) -> None:
        """Append a 32-bit signed int.

        >>> p = Parcel(); p.write_int(-1); p.set_data_position(0); p.read_int()
        -1
        """
        _check_int(value, _INT_MIN, _INT_MAX, "write_int", "; use write_long")
        self._put(_I32.pack(_T_INT, value))

    def write_long(self, value: int) -> None:
        """Append a 64-bit signed int.

        >>> p = Parcel(); p.write_long(1 << 40); p.set_data_position(0); p.read_long()
        1099511627776
        """
        _check_int(value, _LONG_MIN, _LONG_MAX, "write_long")
        self._put(_I64.pack(_T_LONG, value))

    def write_float(self, value: float) -> None:
        """Append a 32-bit float (rounded to binary32; ``OverflowError`` if too large).

        >>> p = Parcel(); p.write_float(0.5); p.set_data_position(0); p.read_float()
        0.5
        """
        self._put(_F32.pack(_T_FLOAT, value))

    def write_double(self, value: float) -> None:
        """Append a 64-bit float.

        >>> p = Parcel(); p.write_double(0.1); p.set_data_position(0); p.read_double()
        0.1
        """
        self._put(_F64.pack(_T_DOUBLE, value))

    def write_bool(self, value: bool) -> None:
        """Append a bool (any truthy value is True).

        >>> p = Parcel(); p.write_bool(False); p.set_data_position(0); p.read_bool()
        False
        """
        self._put(_TAG_U8.pack(_T_BOOL, 1 if value else 0))

    def write_string(self, value: str | None) -> None:
        """Append a UTF-8 string, or None.

        >>> p = Parcel(); p.write_string(None); p.write_string("ok"); p.set_data_position(0)
        >>> p.read_string(), p.read_string()
        (None, 'ok')
        """
        if value is None:
            self._put(b"\x07")
            return
        if not isinstance(value, str):
            raise TypeError(f"write_string needs a str or None, not {type(value).__name__}")
        raw = value.encode("utf-8")
        self._put(_TAG_U32.pack(_T_STRING, len(raw)) + raw)

    def write_bytes(self, value: Any) -> None:
        """Append bytes (any contiguous buffer), or None. The data is copied now, except a
        large ``bytes`` object, which is immutable and kept by reference until sent.

        >>> p = Parcel(); p.write_bytes(b"\\x00\\x01"); p.set_data_position(0); p.read_bytes()
        b'\\x00\\x01'
        """
        if value is None:
            self._put(b"\x07")
            return
        if type(value) is bytes and len(value) >= _BY_REFERENCE:
            buf = self._writer()
            buf += _TAG_U32.pack(_T_BYTES, len(value))
            chunks = self._chunks
            if chunks is None:
                chunks = self._chunks = []
            chunks.append(buf)
            chunks.append(value)
            self._buf = bytearray()
            self._size += 5 + len(value)
            self._pos = self._size
            return
        with _byte_view(value, "write_bytes") as view:
            if len(view) > _NONE_LENGTH - 1:
                raise ValueError(f"write_bytes: {len(view)} bytes is more than a Parcel holds")
            buf = self._writer()
            buf += _TAG_U32.pack(_T_BYTES, len(view))
            buf += view
            self._size += 5 + len(view)
        self._pos = self._size

    def _put_fd(self, tag: int, fd: int, method: str) -> None:
        if len(self._fds) >= MAX_PARCEL_FDS:
            raise ValueError(
                f"{method}: a Parcel holds at most {MAX_PARCEL_FDS} descriptors (one message "
                "carries at most 64, one of them kept for a spilled payload); send the rest in "
                "another transaction"
            )
        try:
            dup = os.dup(fd)  # non-inheritable, i.e. CLOEXEC
        except OSError as exc:
            raise _sys.translate(exc, f"{method}: duplicate fd {fd}") from exc
        fds = self._fds
        if not fds:
            fds = self._fds = _OwnFds()
        fds.append(dup)
        entry = _TAG_U32.pack(tag, len(fds) - 1)
        buf = self._buf  # _put, inline
        if buf is None:
            if self._start == self._end:
                # An empty Parcel (a new one, say): the entry is its first bytes.
                self._buf = bytearray(entry)
                self._data = None
                self._start = 0
                self._size = self._pos = 5
                return
            buf = self._writer()
        else:
            self._data = None
        buf += entry
        self._size += 5
        self._pos = self._size

    def write_file_descriptor(self, fd: int) -> None:
        """Append a descriptor. Dups ``fd``: the caller keeps ``fd`` open and owns it; the
        Parcel owns its dup until closed.

        >>> import os
        >>> r, w = os.pipe()
        >>> p = Parcel(); p.write_file_descriptor(r); os.close(r); os.close(w)
        >>> p.has_file_descriptors()
        True
        >>> p.close()
        """
        _check_int(fd, 0, _INT_MAX, "write_file_descriptor")
        self._put_fd(_T_FD, fd, "write_file_descriptor")

    def write_shared_memory(self, shm: SharedMemory | MemoryFile) -> None:
        """Append a region (``SharedMemory`` or ``MemoryFile``). Dups its fd: the caller's
        object stays open and owned by the caller. The receiver gets the same region, with
        the same protection (a write-protected region stays write-protected).

        >>> import ashmem
        >>> with ashmem.SharedMemory.create("frames", 4096) as shm, Parcel() as p:
        ...     p.write_shared_memory(shm)
        ...     p.set_data_position(0)
        ...     with p.read_shared_memory() as got:
        ...         got.name, got.size
        ('frames', 4096)
        """
        if not isinstance(shm, (SharedMemory, MemoryFile)):
            raise TypeError(
                f"write_shared_memory needs a SharedMemory or MemoryFile, not "
                f"{type(shm).__name__}; use write_file_descriptor for other fds"
            )
        self._put_fd(_T_REGION, shm.fileno(), "write_shared_memory")

    def write_binder(self, binder: Binder | Proxy | None) -> None:
        """Append a binder so the receiver can call it: a local ``Binder`` (this process then
        serves it from its thread pool, started on demand) or a ``Proxy`` (the receiver then
        talks to its process directly), or None.

        A local Binder stays reachable while this Parcel is open (it holds a reference, so
        the transaction that carries it can reach it), while this process holds a
        reference to it, and while a peer is connected to it (the receiver's Proxy
        connects on its first call); keep a reference for as long as callbacks should work.

        >>> from ashmem.binder import Binder, Parcel
        >>> p = Parcel(); p.write_binder(None); p.set_data_position(0); p.read_binder()
        """
        if binder is None:
            self._put(b"\x07")
            return
        from ._binder import Binder
        from ._proxy import Proxy

        if isinstance(binder, Binder):
            from ._pool import publish

            address, token = publish(binder)
            if self._binders is None:
                self._binders = []
            self._binders.append(binder)
        elif isinstance(binder, Proxy):
            address, token = binder._reference()
        else:
            raise TypeError(f"write_binder needs a Binder or Proxy, not {type(binder).__name__}")
        self._put(bytes((_T_BINDER,)) + _wire.encode_reference(address, token))

    def _put_list(self, item_tag: int, values: Iterable[Any] | None, method: str) -> None:
        if values is None:
            self._put(b"\x07")
            return
        items = list(values)
        letter, _, what = _LIST_ITEMS[item_tag]
        if item_tag == _T_BOOL:
            items = [1 if v else 0 for v in items]
        elif item_tag in (_T_INT, _T_LONG):
            for v in items:
                if not isinstance(v, int):
                    raise TypeError(f"{method} needs ints, not {type(v).__name__}")
        try:
            body = struct.pack(f"<{len(items)}{letter}", *items)
        except struct.error as exc:
            raise ValueError(f"{method}: a value does not fit a {what}: {exc}") from None
        self._put(_LIST.pack(_T_LIST, item_tag, len(items)) + body)

    def write_int_list(self, values: Iterable[int] | None) -> None:
        """Append a list of 32-bit ints, or None.

        >>> p = Parcel(); p.write_int_list(range(3)); p.set_data_position(0)
        >>> p.read_int_list()
        [0, 1, 2]
        """
        self._put_list(_T_INT, values, "write_int_list")

    def write_long_list(self, values: Iterable[int] | None) -> None:
        """Append a list of 64-bit ints, or None.

        >>> p = Parcel(); p.write_long_list([1 << 40]); p.set_data_position(0)
        >>> p.read_long_list()
        [1099511627776]
        """
        self._put_list(_T_LONG, values, "write_long_list")

    def write_float_list(self, values: Iterable[float] | None) -> None:
        """Append a list of 32-bit floats, or None.

        >>> p = Parcel(); p.write_float_list([0.25]); p.set_data_position(0)
        >>> p.read_float_list()
        [0.25]
        """
        self._put_list(_T_FLOAT, values, "write_float_list")

    def write_double_list(self, values: Iterable[float] | None) -> None:
        """Append a list of 64-bit floats, or None.

        >>> p = Parcel(); p.write_double_list([0.1]); p.set_data_position(0)
        >>> p.read_double_list()
        [0.1]
        """
        self._put_list(_T_DOUBLE, values, "write_double_list")

    def write_bool_list(self, values: Iterable[bool] | None) -> None:
        """Append a list of bools, or None.

        >>> p = Parcel(); p.write_bool_list([True, False]); p.set_data_position(0)
        >>> p.read_bool_list()
        [True, False]
        """
        self._put_list(_T_BOOL, values, "write_bool_list")

    def write_string_list(self, values: Iterable[str | None] | None) -> None:
        """Append a list of strings (elements may be None), or None.

        >>> p = Parcel(); p.write_string_list(["a", None]); p.set_data_position(0)
        >>> p.read_string_list()
        ['a', None]
        """
        if values is None:
            self._put(b"\x07")
            return
        parts = [b""]
        count = 0
        for value in values:
            count += 1
            if value is None:
                parts.append(_U32.pack(_NONE_LENGTH))
                continue
            if not isinstance(value, str):
                raise TypeError(f"write_string_list needs str or None, not {type(value).__name__}")
            raw = value.encode("utf-8")
            parts.append(_U32.pack(len(raw)))
            parts.append(raw)
        parts[0] = _LIST.pack(_T_LIST, _T_STRING, count)
        self._put(b"".join(parts))

    # -- reading --------------------------------------------------------------------------

    def _readable(self) -> Any:
        """The bytes to read from, rebuilding them after writes."""
        data = self._data
        if data is None:
            buf = self._buf
            assert buf is not None  # only writes make _data stale
            chunks = self._chunks
            data = b"".join([*chunks, buf]) if chunks else bytes(buf)
            self._data, self._start, self._end = data, 0, len(data)
        return data

    def _bad(self, method: str, expected: str, pos: int, need: int) -> BadParcel:
        data, end = self._data, self._end
        offset = pos - self._start
        if pos >= end:
            return BadParcel(
                f"{method} at offset {offset}: past the end of the Parcel "
                f"({end - self._start} bytes)"
            )
        found = _FOUND.get(data[pos])
        if found is None:
            return BadParcel(f"{method} at offset {offset}: unknown entry tag {data[pos]:#04x}")
        if found != expected:
            return BadParcel(f"{method} at offset {offset}: found {found}, not {expected}")
        return BadParcel(
            f"{method} at offset {offset}: {expected} needs {need} bytes, "
            f"{end - pos} left (truncated Parcel)"
        )

    def _fixed(self, tag: int, codec: struct.Struct, method: str, expected: str) -> Any:
        data = self._data
        if data is None:
            data = self._readable()
        pos = self._pos
        stop = pos + codec.size
        if stop > self._end or data[pos] != tag:
            raise self._bad(method, expected, pos, codec.size)
        self._pos = stop
        return codec.unpack_from(data, pos)[1]

    def read_int(self) -> int:
        """Read a 32-bit int; ``BadParcel`` if the next entry is not one.

        >>> p = Parcel(); p.write_int(5); p.set_data_position(0); p.read_int()
        5
        """
        value: int = self._fixed(_T_INT, _I32, "read_int", "an int")
        return value

    def read_long(self) -> int:
        """Read a 64-bit int.

        >>> p = Parcel(); p.write_long(-5); p.set_data_position(0); p.read_long()
        -5
        """
        value: int = self._fixed(_T_LONG, _I64, "read_long", "a long")
        return value

    def read_float(self) -> float:
        """Read a 32-bit float.

        >>> p = Parcel(); p.write_float(2.0); p.set_data_position(0); p.read_float()
        2.0
        """
        value: float = self._fixed(_T_FLOAT, _F32, "read_float", "a float")
        return value

    def read_double(self) -> float:
        """Read a 64-bit float.

        >>> p = Parcel(); p.write_double(2.5); p.set_data_position(0); p.read_double()
        2.5
        """
        value: float = self._fixed(_T_DOUBLE, _F64, "read_double", "a double")
        return value

    def read_bool(self) -> bool:
        """Read a bool; ``BadParcel`` for a byte other than 0 or 1.

        >>> p = Parcel(); p.write_bool(True); p.set_data_position(0); p.read_bool()
        True
        """
        value: int = self._fixed(_T_BOOL, _TAG_U8, "read_bool", "a bool")
        if value > 1:
            raise BadParcel(f"read_bool at offset {self.data_position() - 2}: byte {value}")
        return value == 1

    def _null(self) -> bool:
        """Consume a NULL entry if one is next."""
        data = self._data
        if data is None:
            data = self._readable()
        pos = self._pos
        if pos < self._end and data[pos] == _T_NULL:
            self._pos = pos + 1
            return True
        return False

    def _span(self, tag: int, method: str, expected: str) -> tuple[int, int]:
        """Locate a length-prefixed body: ``(start, stop)`` in ``_data``; consumes it."""
        data = self._data
        pos = self._pos
        if pos + 5 > self._end or data[pos] != tag:
            raise self._bad(method, expected, pos, 5)
        start = pos + 5
        stop = start + _U32.unpack_from(data, pos + 1)[0]
        if stop > self._end:
            raise BadParcel(
                f"{method} at offset {pos - self._start}: {stop - start} bytes declared, "
                f"{self._end - start} left (truncated Parcel)"
            )
        self._pos = stop
        return start, stop

    def read_string(self) -> str | None:
        """Read a string or None; ``BadParcel`` for invalid UTF-8.

        >>> p = Parcel(); p.write_string("ünï"); p.set_data_position(0); p.read_string()
        'ünï'
        """
        if self._null():
            return None
        start, stop = self._span(_T_STRING, "read_string", "a string")
        try:
            return str(self._data[start:stop], "utf-8")
        except UnicodeDecodeError as exc:
            raise BadParcel(f"read_string at offset {start - 5 - self._start}: {exc}") from None

    def read_bytes(self) -> bytes | None:
        """Read bytes (a copy) or None. ``read_buffer`` avoids the copy.

        >>> p = Parcel(); p.write_bytes(b"ab"); p.set_data_position(0); p.read_bytes()
        b'ab'
        """
        if self._null():
            return None
        start, stop = self._span(_T_BYTES, "read_bytes", "bytes")
        return bytes(self._data[start:stop])

    def read_buffer(self) -> memoryview | None:
        """Read bytes without copying: a read-only memoryview into the Parcel, or None.

        For a spilled payload this points straight into the sealed region the sender made
        (zero-copy). The view keeps that memory mapped until released, even after
        ``close()``.

        >>> p = Parcel(); p.write_bytes(b"abc"); p.set_data_position(0)
        >>> view = p.read_buffer(); bytes(view[1:]), view.readonly
        (b'bc', True)
        """
        if self._null():
            return None
        start, stop = self._span(_T_BYTES, "read_buffer", "bytes")
        return memoryview(self._data)[start:stop].toreadonly()

    def _fd_entry(self, tags: tuple[int, ...], method: str, expected: str) -> int:
        data = self._data
        if data is None:
            data = self._readable()
        pos = self._pos
        if pos + 5 > self._end or data[pos] not in tags:
            raise self._bad(method, expected, pos, 5)
        index: int = _U32.unpack_from(data, pos + 1)[0]
        if index >= len(self._fds):
            raise BadParcel(
                f"{method} at offset {pos - self._start}: descriptor #{index} does not exist "
                f"(the message carried {len(self._fds)})"
            )
        self._pos = pos + 5
        return self._fds[index]

    def read_file_descriptor(self) -> int:
        """Read a descriptor (an FD or REGION entry). Returns a *new* CLOEXEC fd that the
        caller owns and must close; the Parcel keeps its own.

        >>> import os
        >>> r, w = os.pipe()
        >>> p = Parcel(); p.write_file_descriptor(w); p.set_data_position(0)
        >>> fd = p.read_file_descriptor(); os.write(fd, b"x"), os.read(r, 1)
        (1, b'x')
        >>> for f in (fd, r, w): os.close(f)
        >>> p.close()
        """
        fd = self._fd_entry((_T_FD, _T_REGION), "read_file_descriptor", "a file descriptor")
        try:
            return os.dup(fd)
        except OSError as exc:
            raise _sys.translate(exc, "read_file_descriptor: duplicate a received fd") from exc

    def read_shared_memory(self) -> SharedMemory:
        """Read a region. Returns a new ``SharedMemory`` (owning a dup) that the caller must
        close; ``BadParcel`` if the peer sent something that is not an ashmem region.

        >>> import ashmem
        >>> with ashmem.MemoryFile("note", 4096) as f, Parcel() as p:
        ...     p.write_shared_memory(f); p.set_data_position(0)
        ...     with p.read_shared_memory() as shm:
        ...         shm.size
        4096
        """
        fd = self._fd_entry((_T_REGION,), "read_shared_memory", "a shared memory region")
        try:
            dup = os.dup(fd)
        except OSError as exc:
            raise _sys.translate(exc, "read_shared_memory: duplicate a received fd") from exc
        try:
            return SharedMemory.from_fd(dup)
        except ValueError:
            os.close(dup)
            raise BadParcel(
                "read_shared_memory: the peer sent a descriptor that is not an ashmem region"
            ) from None

    def read_binder(self) -> Proxy | None:
        """Read a binder: a ``Proxy`` to call it (connected on first use), or None.

        >>> p = Parcel(); p.write_binder(None); p.set_data_position(0); print(p.read_binder())
        None
        """
        if self._null():
            return None
        data = self._data
        pos = self._pos
        if pos + 2 > self._end or data[pos] != _T_BINDER:
            raise self._bad("read_binder", "a binder", pos, 2)
        address, token, stop = _wire.decode_reference(data, pos + 1, self._end)
        self._pos = stop
        from ._proxy import Proxy

        return Proxy._from_reference(address, token)

    def _get_list(self, item_tag: int, method: str) -> list[Any] | None:
        if self._null():
            return None
        data = self._data
        pos = self._pos
        if pos + 6 > self._end or data[pos] != _T_LIST:
            raise self._bad(method, "a list", pos, 6)
        _, tag, count = _LIST.unpack_from(data, pos)
        if tag != item_tag:
            found = _FOUND.get(tag, f"tag {tag:#04x}")
            raise BadParcel(f"{method} at offset {pos - self._start}: a list of {found}")
        start = pos + 6
        if item_tag == _T_STRING:
            return self._get_string_items(method, pos, start, count)
        letter, size, _ = _LIST_ITEMS[item_tag]
        stop = start + count * size
        if stop > self._end:
            raise BadParcel(
                f"{method} at offset {pos - self._start}: {count} items declared, "
                f"{(self._end - start) // size} fit (truncated Parcel)"
            )
        items = list(struct.unpack_from(f"<{count}{letter}", data, start))
        if item_tag == _T_BOOL:
            if any(v > 1 for v in items):
                raise BadParcel(f"{method} at offset {pos - self._start}: a bool is not 0 or 1")
            items = [v == 1 for v in items]
        self._pos = stop
        return items

    def _get_string_items(self, method: str, pos: int, at: int, count: int) -> list[Any]:
        data, end = self._data, self._end
        if count > (end - at) // 4:
            raise BadParcel(f"{method} at offset {pos - self._start}: {count} strings cannot fit")
        items: list[str | None] = []
        for _ in range(count):
            if at + 4 > end:
                raise BadParcel(f"{method} at offset {pos - self._start}: truncated Parcel")
            n = _U32.unpack_from(data, at)[0]
            at += 4
            if n == _NONE_LENGTH:
                items.append(None)
                continue
            if at + n > end:
                raise BadParcel(f"{method} at offset {pos - self._start}: truncated Parcel")
            try:
                items.append(str(data[at : at + n], "utf-8"))
            except UnicodeDecodeError as exc:
                raise BadParcel(f"{method} at offset {pos - self._start}: {exc}") from None
            at += n
        self._pos = at
        return items

    def read_int_list(self) -> list[int] | None:
        """Read a list of 32-bit ints, or None.

        >>> p = Parcel(); p.write_int_list([7]); p.set_data_position(0); p.read_int_list()
        [7]
        """
        return self._get_list(_T_INT, "read_int_list")

    def read_long_list(self) -> list[int] | None:
        """Read a list of 64-bit ints, or None.

        >>> p = Parcel(); p.write_long_list(None); p.set_data_position(0)
        >>> print(p.read_long_list())
        None
        """
        return self._get_list(_T_LONG, "read_long_list")

    def read_float_list(self) -> list[float] | None:
        """Read a list of 32-bit floats, or None.

        >>> p = Parcel(); p.write_float_list([]); p.set_data_position(0); p.read_float_list()
        []
        """
        return self._get_list(_T_FLOAT, "read_float_list")

    def read_double_list(self) -> list[float] | None:
        """Read a list of 64-bit floats, or None.

        >>> p = Parcel(); p.write_double_list([1.0]); p.set_data_position(0)
        >>> p.read_double_list()
        [1.0]
        """
        return self._get_list(_T_DOUBLE, "read_double_list")

    def read_bool_list(self) -> list[bool] | None:
        """Read a list of bools, or None.

        >>> p = Parcel(); p.write_bool_list([False]); p.set_data_position(0)
        >>> p.read_bool_list()
        [False]
        """
        return self._get_list(_T_BOOL, "read_bool_list")

    def read_string_list(self) -> list[str | None] | None:
        """Read a list of strings (elements may be None), or None.

        >>> p = Parcel(); p.write_string_list(["x"]); p.set_data_position(0)
        >>> p.read_string_list()
        ['x']
        """
        return self._get_list(_T_STRING, "read_string_list")

    # -- whole-Parcel operations ----------------------------------------------------------

    def marshall(self) -> bytes:
        """The Parcel's bytes, to store or to rebuild with ``unmarshall``. ``ValueError`` if it
        holds descriptors: they are not bytes. Binder references are kept verbatim and stay
        usable only while the process that serves them lives.

        >>> p = Parcel(); p.write_int(1); Parcel.unmarshall(p.marshall()).read_int()
        1
        """
        if self._fds:
            raise ValueError(
                f"cannot marshall a Parcel holding {len(self._fds)} descriptors: descriptors "
                "are not bytes; send the Parcel in a transaction instead"
            )
        data = self._readable()
        return bytes(data[self._start : self._end])

    @classmethod
    def unmarshall(cls, data: Any) -> Parcel:
        """A Parcel over a copy of ``data`` (untrusted bytes are fine: bad entries raise
        ``BadParcel`` when read), positioned at 0.

        >>> Parcel.unmarshall(b"\\x05\\x01").read_bool()
        True
        """
        with _byte_view(data, "unmarshall") as view:
            raw = bytes(view)
        return cls._from_wire(raw, 0, [])

    def _wire_parts(self) -> tuple[list[Any], int]:
        """``(buffers, total)`` to send: the Parcel's bytes, possibly in several pieces."""
        buf = self._buf
        if buf is None:
            data, start, end = self._data, self._start, self._end
            if start == end:
                return [], 0
            if start == 0 and end == len(data):
                return [data], end
            return [memoryview(data)[start:end]], end - start
        if self._chunks:
            return [*self._chunks, buf], self._size
        return ([buf] if self._size else []), self._size

    def _outgoing(self) -> _wire.Outgoing:
        """How to send this Parcel. A Parcel larger than ``MAX_INLINE`` is copied into a
        sealed region first, which the result owns (close it once sent); the Parcel's own
        descriptors are borrowed. Raises the (translated) OSError of spilling: ENOSPC,
        ENOMEM, EMFILE."""
        parts, size = self._wire_parts()
        binders = bool(self._binders)
        if size <= _wire.MAX_INLINE:
            return _wire.Outgoing(0, parts, self._fds, -1, binders, size)
        spilled = _wire.spill(parts, size)
        return _wire.Outgoing(_wire.F_SPILLED, [], [spilled, *self._fds], spilled, binders)

    def _release_mapping(self) -> None:
        data = self._data
        if type(data) is not bytes and isinstance(data, Mapping):
            # Views handed out by read_buffer keep it mapped; the kernel unmaps it when the
            # last of them is released.
            with contextlib.suppress(BusyError):
                data.close()

    def _release(self) -> None:
        """Close the descriptors and the mapping; the Parcel must be reset or dropped next."""
        fds = self._fds
        if fds:
            self._fds = ()
            fds.release()
        data = self._data
        if data is not None and data.__class__ is not bytes:  # else no mapping to release
            self._release_mapping()

    def close(self) -> None:
        """Close every descriptor the Parcel owns and empty it (Android's ``recycle``).
        Idempotent; the Parcel can be written again afterwards.

        >>> p = Parcel(); p.write_int(1); p.close(); p.data_size()
        0
        """
        self._release()
        self.__dict__.clear()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __reduce__(self) -> Any:
        raise TypeError("a Parcel cannot be pickled; send it with Proxy.transact")

    def __repr__(self) -> str:
        return (
            f"<ashmem.binder.Parcel size={self.data_size()} position={self.data_position()} "
            f"fds={len(self._fds)}>"
        )
