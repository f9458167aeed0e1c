"""Zero-copy ``Queue``, ``SimpleQueue`` and ``Pipe``, API-compatible with multiprocessing's.

Objects are pickled with protocol 5. Out-of-band buffers (numpy arrays, ``PickleBuffer``) of
at least ``threshold`` bytes (default ``DEFAULT_THRESHOLD``, 64 KiB) are copied once into a
new region, write-protected, and arrive as read-only views of it; smaller ones go inline.
Region-backed arrays (``ashmem.numpy``), ``SharedMemory`` and ``MemoryFile`` objects go as
their descriptor, without any copy. ``bytes`` and ``bytearray`` are pickled inline (pickle
has no hook for them; wrap one in ``pickle.PickleBuffer`` to send it out of band).

One message is one datagram on an ``AF_UNIX``/``SOCK_SEQPACKET`` socket pair: one
``ashmem.fdpass`` frame, its descriptors attached. The kernel hands a datagram whole to exactly
one reader, so several processes may ``put`` and ``get`` on one queue without a lock, and a
process killed in the middle of ``get`` takes at most the message it already had (its
descriptors close with it). A pickle stream too large for a datagram travels in a region too.

The frame's payload (little-endian)::

    offset  size      field
    0       4         magic b"ASQ1" (the 1 is the format version)
    4       1         kind: 0 a pickle stream, 1 raw bytes (send_bytes)
    5       1         flags: bit 0 BODY_IN_REGION: the body is the first body_len bytes of
                      the region in descriptor slot body_slot, not inline
    6       2         nbuf: out-of-band buffers listed next
    8       2         body_slot (meaningful only with BODY_IN_REGION)
    10      6         reserved, 0
    16      8         body_len
    24      10 * nbuf per buffer: slot (u16), length (u64): the first ``length`` bytes of the
                      region in that descriptor slot, in pickle's buffer order
    ..      body_len  the body, when inline

Descriptor slots are the frame's descriptors in order (at most 253, every one a region).
A slot that is not a buffer or the body is a ``SharedMemory`` the pickle refers to. The
receiver checks every field (slots in range, each used once, lengths within the region)
before it unpickles, closes every descriptor on any error, and unpickles only what came
from its own socket pair, as multiprocessing does with its pipes.
"""

from __future__ import annotations

import collections
import contextlib
import copyreg
import errno
import io
import os
import pickle
import queue
import select
import socket
import struct
import threading
import time
import traceback
import weakref
from collections.abc import Callable
from multiprocessing import context as _mp_context
from multiprocessing import reduction as _mp_reduction
from multiprocessing import util as _mp_util
from typing import Any

from . import _backing, fdpass
from ._errors import MessageError
from ._reduction import QUEUE_REDUCERS, queue_pickling, register
from ._shared_memory import SharedMemory, plain_pickle_error

__all__ = ["DEFAULT_THRESHOLD", "Connection", "Pipe", "Queue", "SimpleQueue"]

#: Out-of-band buffers at least this large travel as regions; smaller ones inline.
DEFAULT_THRESHOLD = 64 * 1024

_HEAD = struct.Struct("<4sBBHH6xQ")
_BUF = struct.Struct("<HQ")
_MAGIC = b"ASQ1"
_KIND_PICKLE = 0
_KIND_BYTES = 1
_BODY_IN_REGION = 0x01
# How the header of an inline pickle without buffers starts: magic, kind 0, flags 0, nbuf 0.
_PLAIN_PICKLE = _MAGIC + bytes([_KIND_PICKLE, 0, 0, 0])
_MAX_SLOTS = fdpass.MAX_FDS_PER_FRAME
# fdpass puts at most 64 KiB of payload in one datagram frame; keep a margin below it.
_FRAME_DATA = 64 * 1024
_INLINE_MAX = _FRAME_DATA - _HEAD.size - _MAX_SLOTS * _BUF.size
_SEND_BUSY = (BlockingIOError, InterruptedError)


def _check_threshold(threshold: object) -> int:
    if not isinstance(threshold, int) or isinstance(threshold, bool):
        raise TypeError(f"threshold must be an int (bytes), not {type(threshold).__name__}")
    if threshold < 1:
        raise ValueError(f"threshold must be >= 1 byte, got {threshold}")
    return threshold


class _Slots:
    """What one message carries besides its pickle: regions and large buffers, as descriptor
    slots. Kept apart from the pickler on purpose: the pickler's dispatch table refers to
    these methods, and were they the pickler's own, pickler and table would form a cycle
    that keeps the pickler's memo (every object of the message) alive until the cyclic
    garbage collector runs."""

    def __init__(self, threshold: int) -> None:
        self.threshold = threshold
        self.regions: list[SharedMemory] = []
        self.made: list[SharedMemory] = []  # regions created here: closed after sending
        self.buffers: list[tuple[int, int]] = []
        self._slots: dict[int, int] = {}

    def slot(self, shm: SharedMemory) -> int:
        slot = self._slots.get(id(shm))
        if slot is None:
            if len(self.regions) >= _MAX_SLOTS:
                raise ValueError(
                    f"a message can carry at most {_MAX_SLOTS} regions (SCM_MAX_FD); send "
                    "them in several messages"
                )
            slot = len(self.regions)
            self.regions.append(shm)
            self._slots[id(shm)] = slot
        return slot

    def reduce_region(self, shm: SharedMemory) -> tuple[Any, ...]:
        shm.fileno()  # ClosedError now, not a bad descriptor later
        return (_queued_region, (self.slot(shm),))

    def out_of_band(self, buffer: pickle.PickleBuffer) -> bool:
        try:
            raw = buffer.raw()
        except BufferError:  # not contiguous: pickle copies it inline
            return True
        with raw:
            nbytes = raw.nbytes
            # Keep a slot free for a pickle stream that turns out too large to be inline.
            if nbytes < self.threshold or len(self.regions) >= _MAX_SLOTS - 1:
                return True
            shm = _backing.sealed_copy(raw, "ashmem.Queue buffer")
        self.made.append(shm)
        self.buffers.append((self.slot(shm), nbytes))
        return False


_base: tuple[tuple[int, int, int], dict[Any, Any]] = ((-1, -1, -1), {})


def _base_table() -> dict[Any, Any]:
    """copyreg's reducers, then multiprocessing's, then ours: rebuilt only when one of the
    registries has grown (modules register at import, e.g. ashmem.numpy or torch)."""
    global _base
    extra: dict[Any, Any] = _mp_reduction.ForkingPickler._extra_reducers  # type: ignore[attr-defined]
    key = (len(copyreg.dispatch_table), len(extra), len(QUEUE_REDUCERS))
    if key != _base[0]:
        table = dict(copyreg.dispatch_table)
        table.update(extra)
        table.update(QUEUE_REDUCERS)
        _base = (key, table)
    return _base[1]


def _dump(obj: Any, slots: _Slots) -> io.BytesIO:
    """Pickle ``obj`` (protocol 5), collecting its regions and large buffers in ``slots``."""
    stream = io.BytesIO()
    pickler = pickle.Pickler(stream, 5, buffer_callback=slots.out_of_band)
    table = dict(_base_table())
    table[SharedMemory] = slots.reduce_region
    pickler.dispatch_table = table
    queue_pickling.threshold = slots.threshold
    try:
        pickler.dump(obj)
    finally:
        queue_pickling.threshold = None
    return stream


def _encode(kind: int, body: memoryview, pickler: _Slots | None) -> tuple[bytes, list[Any]]:
    """Build one message: (payload, regions to attach). Regions the encoding creates are
    added to ``pickler.made`` (or closed here on failure)."""
    regions: list[Any] = pickler.regions if pickler is not None else []
    buffers = pickler.buffers if pickler is not None else []
    flags = body_slot = 0
    table = b"".join(_BUF.pack(slot, length) for slot, length in buffers)
    if len(body) > _INLINE_MAX:
        shm = _backing.sealed_copy(body, "ashmem.Queue message")
        if pickler is not None:
            pickler.made.append(shm)
            body_slot = pickler.slot(shm)
        else:
            regions = [shm]
        flags |= _BODY_IN_REGION
        head = _HEAD.pack(_MAGIC, kind, flags, len(buffers), body_slot, len(body))
        return head + table, regions
    head = _HEAD.pack(_MAGIC, kind, flags, len(buffers), body_slot, len(body))
    return b"".join((head, table, body)), regions


_incoming = threading.local()


def _queued_region(slot: int) -> SharedMemory:
    """Unpickling side of ``_Slots.reduce_region``: the region in ``slot`` of the message
    being received (owned by the caller from here on)."""
    items: list[SharedMemory | None] | None = getattr(_incoming, "items", None)
    if items is None:
        raise pickle.UnpicklingError("an ashmem.Queue region outside an ashmem.Queue message")
    if not isinstance(slot, int) or not 0 <= slot < len(items) or items[slot] is None:
        raise pickle.UnpicklingError(f"message refers to region slot {slot!r} it does not hold")
    shm = items[slot]
    items[slot] = None
    assert shm is not None
    return shm


def _decode(data: bytes, items: list[Any], want_pickle: bool) -> Any:
    """Check a received message and rebuild what it carries. Takes ``items``: on return
    or on any error, every descriptor not handed to the caller is closed."""
    if not items and want_pickle and data[:8] == _PLAIN_PICKLE:
        # The common small message: an inline pickle, no regions, no buffers.
        body_len = _HEAD.unpack_from(data)[5]
        if len(data) == _HEAD.size + body_len:
            with memoryview(data) as whole:
                return pickle.loads(whole[_HEAD.size :])
    mappings: list[Any] = []
    views: list[memoryview] = []
    try:
        if len(data) < _HEAD.size:
            raise MessageError(f"ashmem.Queue message of {len(data)} bytes is too short")
        magic, kind, flags, nbuf, body_slot, body_len = _HEAD.unpack_from(data)
        if magic != _MAGIC:
            raise MessageError(f"not an ashmem.Queue message (magic {magic!r})")
        if kind not in (_KIND_PICKLE, _KIND_BYTES) or flags & ~_BODY_IN_REGION:
            raise MessageError(f"ashmem.Queue message of unknown kind {kind} / flags {flags}")
        for item in items:
            if not isinstance(item, SharedMemory):
                raise MessageError("ashmem.Queue message carried a descriptor that is not a region")
        used: set[int] = set()

        def claim(slot: int, length: int) -> SharedMemory:
            if slot >= len(items) or slot in used:
                raise MessageError(
                    f"ashmem.Queue message uses region slot {slot} twice or "
                    f"has no such slot ({len(items)} regions)"
                )
            shm: SharedMemory = items[slot]
            if length > shm.size:
                raise MessageError(
                    f"ashmem.Queue message says {length} bytes of a region of {shm.size}"
                )
            used.add(slot)
            return shm

        table_end = _HEAD.size + nbuf * _BUF.size
        if len(data) < table_end:
            raise MessageError("ashmem.Queue message is shorter than its buffer table")
        for index in range(nbuf):
            slot, length = _BUF.unpack_from(data, _HEAD.size + index * _BUF.size)
            shm = claim(slot, length)
            mapping = shm.map_read_only()
            mappings.append(mapping)
            views.append(memoryview(mapping)[:length])
        body: Any
        if flags & _BODY_IN_REGION:
            if len(data) != table_end:
                raise MessageError("ashmem.Queue message has both an inline and a region body")
            shm = claim(body_slot, body_len)
            body_map = shm.map_read_only() if body_len else None
            body = memoryview(body_map)[:body_len] if body_map is not None else b""
        else:
            if len(data) != table_end + body_len:
                raise MessageError(
                    f"ashmem.Queue message body is {len(data) - table_end} "
                    f"bytes, header says {body_len}"
                )
            body_map = None
            body = memoryview(data)[table_end:]
        # From here the buffer regions belong to their mappings (closed when the last view
        # of them is gone), and the body's region is done with once read.
        for index, mapping in zip(range(nbuf), mappings, strict=False):
            slot = _BUF.unpack_from(data, _HEAD.size + index * _BUF.size)[0]
            _backing.remember(mapping, items[slot])
            items[slot] = None
        if flags & _BODY_IN_REGION:
            body_shm = items[body_slot]
            items[body_slot] = None
            body_shm.close()
        try:
            if kind == _KIND_BYTES and not want_pickle:
                if nbuf or len(used) != len(items):
                    raise MessageError("ashmem.Queue raw-bytes message carried regions")
                return bytes(body)
            _incoming.items = items
            try:
                return pickle.loads(body, buffers=views)
            finally:
                _incoming.items = None
        finally:
            if isinstance(body, memoryview):
                body.release()
            if body_map is not None:
                body_map.close()
    except BaseException:
        for view in views:
            view.release()
        for mapping in mappings:
            with contextlib.suppress(BufferError):  # an array unpickled before the error
                mapping.close()
        raise
    finally:
        for item in items:
            if item is not None:
                item.close()


def _wait(fd: int, events: int, timeout: float | None) -> bool:
    poller = select.poll()
    poller.register(fd, events)
    return _poll(poller, timeout)


def _poll(poller: Any, timeout: float | None) -> bool:
    ms = None if timeout is None else max(0, int(timeout * 1000 + 0.999))
    return bool(poller.poll(ms))  # PEP 475: retried on EINTR with the time left


class Connection:
    """One end of an ``ashmem.Pipe``: ``send``/``recv`` objects, ``send_bytes``/
    ``recv_bytes`` bytes, ``poll``, ``close``, as ``multiprocessing.connection.Connection``.

    Large out-of-band buffers and regions travel as descriptors (see the module doc). Owns
    its socket. Passes to other processes as a ``Process`` argument or through
    multiprocessing's queues, under every start method.

    >>> import ashmem
    >>> a, b = ashmem.Pipe()
    >>> a.send({"frame": 1}); b.recv()
    {'frame': 1}
    >>> a.close(); b.close()
    """

    _sock: socket.socket | None = None

    def __init__(
        self,
        sock: socket.socket,
        readable: bool = True,
        writable: bool = True,
        *,
        threshold: int = DEFAULT_THRESHOLD,
    ) -> None:
        """Private: use ``ashmem.Pipe``. Takes ``sock``."""
        sock.setblocking(False)
        self._sock = sock
        self._readable_poller = select.poll()  # made once: receiving waits before each take
        self._readable_poller.register(sock.fileno(), select.POLLIN)
        self._readable = readable
        self._writable = writable
        self._threshold = _check_threshold(threshold)

    def _live(self) -> socket.socket:
        sock = self._sock
        if sock is None:
            raise OSError(errno.EBADF, "handle is closed")
        return sock

    @property
    def closed(self) -> bool:
        """True after ``close()``."""
        return self._sock is None

    @property
    def readable(self) -> bool:
        """True if this end can receive."""
        return self._readable

    @property
    def writable(self) -> bool:
        """True if this end can send."""
        return self._writable

    @property
    def threshold(self) -> int:
        """Out-of-band buffers at least this large travel as regions."""
        return self._threshold

    def fileno(self) -> int:
        """The socket's descriptor, borrowed."""
        return self._live().fileno()

    def close(self) -> None:
        """Close this end. Idempotent."""
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- sending --------------------------------------------------------------------------

    def _check_writable(self) -> socket.socket:
        sock = self._live()
        if not self._writable:
            raise OSError("connection is read-only")
        return sock

    def _send(self, sock: socket.socket, data: bytes, regions: list[Any]) -> None:
        fd = sock.fileno()
        while True:
            try:
                fdpass.send(sock, regions, data)
                return
            except _SEND_BUSY:
                _wait(fd, select.POLLOUT, None)

    def send(self, obj: Any) -> None:
        """Send ``obj``: pickled (protocol 5), large buffers and regions as descriptors."""
        sock = self._check_writable()
        pickler = _Slots(self._threshold)
        try:
            stream = _dump(obj, pickler)
            with stream.getbuffer() as body:
                if not pickler.regions and len(body) <= _INLINE_MAX:
                    # The common small message: header and inline pickle, nothing else.
                    data = _HEAD.pack(_MAGIC, _KIND_PICKLE, 0, 0, 0, len(body)) + body
                    regions: list[Any] = []
                else:
                    data, regions = _encode(_KIND_PICKLE, body, pickler)
            self._send(sock, data, regions)
        finally:
            for shm in pickler.made:
                shm.close()

    def send_bytes(self, buf: Any, offset: int = 0, size: int | None = None) -> None:
        """Send the bytes of ``buf[offset:offset + size]`` as one message."""
        sock = self._check_writable()
        with memoryview(buf) as whole, whole.cast("B") as view:
            if offset < 0 or offset > len(view):
                raise ValueError("offset is negative or past the end of the buffer")
            if size is None:
                size = len(view) - offset
            if size < 0 or offset + size > len(view):
                raise ValueError("size is negative or past the end of the buffer")
            data, regions = _encode(_KIND_BYTES, view[offset : offset + size], None)
        try:
            self._send(sock, data, regions)
        finally:
            for shm in regions:
                shm.close()

    # -- receiving ------------------------------------------------------------------------

    def _check_readable(self) -> socket.socket:
        sock = self._live()
        if not self._readable:
            raise OSError("connection is write-only")
        return sock

    def _receive(self, want_pickle: bool, timeout: float | None = None) -> Any:
        """Wait for one message (``queue.Empty`` after ``timeout`` seconds) and decode it."""
        sock = self._check_readable()
        poller = self._readable_poller
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            # Wait first, then take: a failed non-blocking receive costs an exception. Another
            # reader may still take the message between the two; then wait again.
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not _poll(poller, left):
                if deadline is not None:
                    raise queue.Empty
                continue
            try:
                data, items = fdpass.recv(sock, _MAX_SLOTS, maxdata=_FRAME_DATA)
            except _SEND_BUSY:
                if deadline is not None and time.monotonic() >= deadline:
                    raise queue.Empty from None
                continue
            return _decode(data, items, want_pickle)

    def recv(self) -> Any:
        """Receive one object; blocks. ``EOFError`` when the other end is closed."""
        return self._receive(True)

    def recv_bytes(self, maxlength: int | None = None) -> bytes:
        """Receive one ``send_bytes`` message. ``OSError`` if it is longer than
        ``maxlength`` (the message is then consumed, as in multiprocessing)."""
        data = self._receive(False)
        if not isinstance(data, bytes):
            raise MessageError("received an object where bytes were expected; use recv()")
        if maxlength is not None and len(data) > maxlength:
            raise OSError("bad message length")
        return data

    def recv_bytes_into(self, buf: Any, offset: int = 0) -> int:
        """Receive one ``send_bytes`` message into ``buf`` at ``offset``; returns its
        length. ``BufferTooShort`` (multiprocessing's) if it does not fit."""
        data = self.recv_bytes()
        with memoryview(buf) as whole, whole.cast("B") as view:
            if offset < 0 or offset > len(view):
                raise ValueError("offset is negative or past the end of the buffer")
            if offset + len(data) > len(view):
                from multiprocessing import BufferTooShort

                raise BufferTooShort(data)
            view[offset : offset + len(data)] = data
        return len(data)

    def poll(self, timeout: float | None = 0.0) -> bool:
        """True if there is something to receive (or the other end closed) within
        ``timeout`` seconds; ``None`` waits for ever."""
        self._check_readable()
        return _poll(self._readable_poller, timeout)

    def __reduce__(self) -> Any:
        raise plain_pickle_error(self)

    def __repr__(self) -> str:
        state = "closed" if self._sock is None else f"fd={self._sock.fileno()}"
        return f"<ashmem.Connection {state} threshold={self._threshold}>"


def _rebuild_connection(dupfd: Any, readable: bool, writable: bool, threshold: int) -> Connection:
    fd = int(dupfd.detach())
    try:
        sock = socket.socket(fileno=fd)
    except BaseException:
        os.close(fd)
        raise
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_SEQPACKET:
        sock.close()
        raise MessageError("received an ashmem.Connection that is not an AF_UNIX SEQPACKET socket")
    return Connection(sock, readable, writable, threshold=threshold)


def _reduce_connection(conn: Connection) -> tuple[Any, ...]:
    dup = _mp_reduction.DupFd(conn.fileno())
    return (_rebuild_connection, (dup, conn.readable, conn.writable, conn.threshold))


register(Connection, _reduce_connection)


def Pipe(
    duplex: bool = True, *, threshold: int = DEFAULT_THRESHOLD
) -> tuple[Connection, Connection]:
    """A pair of connected ``Connection`` objects, as ``multiprocessing.Pipe``: both ends
    send and receive if ``duplex``, else the first only receives and the second only sends.

    >>> import ashmem, numpy as np
    >>> receiver, sender = ashmem.Pipe(duplex=False)
    >>> sender.send(np.arange(100_000.0))     # 800 KB: travels as a region, one copy
    >>> a = receiver.recv()
    >>> float(a.sum()), a.flags.writeable
    (4999950000.0, False)
    """
    _check_threshold(threshold)
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    if duplex:
        return Connection(a, threshold=threshold), Connection(b, threshold=threshold)
    a.shutdown(socket.SHUT_WR)
    b.shutdown(socket.SHUT_RD)
    return (
        Connection(a, True, False, threshold=threshold),
        Connection(b, False, True, threshold=threshold),
    )


class SimpleQueue:
    """A queue without a feeder thread or size limit, as ``multiprocessing.SimpleQueue``:
    ``put`` sends before it returns. ``ctx`` is accepted for compatibility and not needed:
    there is no lock to make (one message is one datagram).

    >>> import ashmem
    >>> q = ashmem.SimpleQueue()
    >>> q.put("frame"); q.empty(), q.get()
    (False, 'frame')
    >>> q.close()
    """

    def __init__(self, *, ctx: Any = None, threshold: int = DEFAULT_THRESHOLD) -> None:
        self._reader, self._writer = Pipe(duplex=False, threshold=threshold)
        # multiprocessing.pool takes this lock while draining at shutdown; reading needs no
        # lock here (one message is one datagram), so it is a plain per-process lock.
        self._rlock = threading.Lock()

    def __getstate__(self) -> tuple[Connection, Connection]:
        return (self._reader, self._writer)

    def __setstate__(self, state: tuple[Connection, Connection]) -> None:
        self._reader, self._writer = state
        self._rlock = threading.Lock()

    def get(self) -> Any:
        """Remove and return an object; blocks until there is one."""
        return self._reader.recv()

    def put(self, obj: Any) -> None:
        """Send ``obj``; blocks only while the socket buffer is full."""
        self._writer.send(obj)

    def empty(self) -> bool:
        """True if nothing is waiting to be received."""
        return not self._reader.poll()

    def close(self) -> None:
        """Close both ends in this process."""
        self._reader.close()
        self._writer.close()

    def __repr__(self) -> str:
        return f"<ashmem.SimpleQueue threshold={self._writer.threshold}>"


_SENTINEL = object()


class Queue:
    """A process-shared FIFO queue, as ``multiprocessing.Queue``: ``put`` hands the object to
    a feeder thread and returns; ``get(block, timeout)``; ``queue.Empty``/``queue.Full``;
    ``qsize``/``empty``/``full``; ``close``/``join_thread``/``cancel_join_thread``.

    ``ctx`` is the multiprocessing context for the size semaphore (default: the default
    start method's). Pass the queue to children as a ``Process`` argument, as with
    multiprocessing.

    >>> import ashmem
    >>> q = ashmem.Queue()
    >>> q.put([1, 2, 3]); q.get(timeout=10)
    [1, 2, 3]
    >>> q.close(); q.join_thread()
    """

    def __init__(
        self, maxsize: int = 0, *, ctx: Any = None, threshold: int = DEFAULT_THRESHOLD
    ) -> None:
        import _multiprocessing  # type: ignore[import-not-found]

        if ctx is None:
            import multiprocessing

            ctx = multiprocessing.get_context()
        if maxsize <= 0:
            maxsize = _multiprocessing.SemLock.SEM_VALUE_MAX
        self._maxsize = maxsize
        self._reader, self._writer = Pipe(duplex=False, threshold=threshold)
        self._opid = os.getpid()
        self._sem = ctx.BoundedSemaphore(maxsize)
        self._ignore_epipe = False
        self._reset()
        _mp_util.register_after_fork(self, Queue._after_fork)

    def __getstate__(self) -> tuple[Any, ...]:
        _mp_context.assert_spawning(self)
        return (self._ignore_epipe, self._maxsize, self._reader, self._writer, self._sem,
                self._opid)  # fmt: skip

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        (self._ignore_epipe, self._maxsize, self._reader, self._writer, self._sem,
         self._opid) = state  # fmt: skip
        self._reset()

    def _after_fork(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._notempty = threading.Condition(threading.Lock())
        self._buffer: collections.deque[Any] = collections.deque()
        self._thread: threading.Thread | None = None
        self._jointhread: Any = None
        self._joincancelled = False
        self._closed = False
        self._close: Any = None

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"Queue {self!r} is closed")

    def put(self, obj: Any, block: bool = True, timeout: float | None = None) -> None:
        """Queue ``obj``; with ``maxsize`` items waiting, block (up to ``timeout``) or raise
        ``queue.Full``."""
        self._check_open()
        if not self._sem.acquire(block, timeout):
            raise queue.Full
        with self._notempty:
            if self._thread is None:
                self._start_thread()
            self._buffer.append(obj)
            self._notempty.notify()

    def put_nowait(self, obj: Any) -> None:
        """``put(obj, False)``."""
        self.put(obj, False)

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        """Remove and return an object; ``queue.Empty`` if none comes (``block=False``: none
        is waiting; else within ``timeout`` seconds)."""
        self._check_open()
        if not block:
            timeout = 0.0
        obj = self._reader._receive(True, timeout)
        self._sem.release()
        return obj

    def get_nowait(self) -> Any:
        """``get(False)``."""
        return self.get(False)

    def qsize(self) -> int:
        """Approximate number of items waiting (put and not yet got)."""
        return int(self._maxsize - self._sem._semlock._get_value())

    def empty(self) -> bool:
        """True if nothing is waiting to be received (approximate, as multiprocessing's)."""
        return not self._reader.poll()

    def full(self) -> bool:
        """True if ``maxsize`` items are waiting."""
        return bool(self._sem._semlock._is_zero())

    def close(self) -> None:
        """No more ``put`` from this process; the feeder thread flushes what is buffered and
        exits. ``get`` raises ``ValueError`` afterwards."""
        self._closed = True
        close, self._close = self._close, None
        if close is not None:
            close()

    def join_thread(self) -> None:
        """Wait for the feeder thread to flush (only after ``close``)."""
        if not self._closed:
            raise ValueError(f"Queue {self!r} is not closed; call close() first")
        if self._jointhread is not None:
            self._jointhread()

    def cancel_join_thread(self) -> None:
        """Do not wait for the feeder thread at process exit (buffered items may be lost)."""
        self._joincancelled = True
        if self._jointhread is not None:
            self._jointhread.cancel()

    def _start_thread(self) -> None:
        thread = threading.Thread(
            target=Queue._feed,
            args=(
                self._buffer,
                self._notempty,
                self._writer,
                self._ignore_epipe,
                self._on_queue_feeder_error,
                self._sem,
            ),
            name="ashmem.Queue feeder",
            daemon=True,
        )
        thread.start()
        self._thread = thread
        if not self._joincancelled:
            self._jointhread = _mp_util.Finalize(
                thread, Queue._finalize_join, [weakref.ref(thread)], exitpriority=-5
            )
        self._close = _mp_util.Finalize(
            self, Queue._finalize_close, [self._buffer, self._notempty], exitpriority=10
        )

    @staticmethod
    def _finalize_join(twr: Callable[[], threading.Thread | None]) -> None:
        thread = twr()
        if thread is not None:
            thread.join()

    @staticmethod
    def _finalize_close(buffer: collections.deque[Any], notempty: threading.Condition) -> None:
        with notempty:
            buffer.append(_SENTINEL)
            notempty.notify()

    @staticmethod
    def _feed(
        buffer: collections.deque[Any],
        notempty: threading.Condition,
        writer: Connection,
        ignore_epipe: bool,
        onerror: Callable[[BaseException, Any], None],
        sem: Any,
    ) -> None:
        while True:
            with notempty:
                while not buffer:
                    notempty.wait()
                obj = buffer.popleft()
            if obj is _SENTINEL:
                return
            try:
                writer.send(obj)
                # Not kept until the next put: the object may hold a region (or much else).
                obj = None
            except Exception as exc:
                if ignore_epipe and getattr(exc, "errno", 0) == errno.EPIPE:
                    return
                if _mp_util.is_exiting():
                    _mp_util.info(f"error in ashmem.Queue feeder thread: {exc}")
                    return
                # Not sent: as if it had been removed from the queue (multiprocessing does
                # the same), so that qsize and maxsize stay right.
                sem.release()
                onerror(exc, obj)

    def _on_queue_feeder_error(self, exc: BaseException, obj: Any) -> None:
        """Called in the feeder thread when ``obj`` could not be sent (for example it does
        not pickle); prints the traceback, as multiprocessing's."""
        traceback.print_exception(type(exc), exc, exc.__traceback__)

    def __repr__(self) -> str:
        return f"<ashmem.Queue maxsize={self._maxsize} threshold={self._writer.threshold}>"
