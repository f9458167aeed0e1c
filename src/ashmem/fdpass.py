"""Moving regions between processes over AF_UNIX sockets (SCM_RIGHTS).

A message is one or more *frames*. Each frame is::

    offset size  field
    0      4     magic b"ASF1" (the 1 is the format version)
    4      1     flags: bit 0 MORE = another frame of this message follows
    5      1     reserved, 0
    6      2     nfds: descriptors attached to this frame (<= 253, the kernel's SCM_MAX_FD)
    8      4     data_len: payload bytes in this frame (only the last frame carries data)
    12     nfds  kind of each descriptor: 0 raw fd, 1 region (becomes a SharedMemory)
    ..     data_len  payload

little-endian, with the frame's descriptors attached to its first byte. Messages of more than
253 descriptors are split into frames of at most 253.

Works on ``SOCK_SEQPACKET`` (one frame per datagram: the receiver peeks the header, then
receives the frame whole, so nothing is truncated) and on ``SOCK_STREAM`` (the receiver reads
exactly one frame's bytes at a time, so descriptors sent with the next message are never
mixed into this one, even when several sends arrive together).

The peer is untrusted: a frame with a bad header, fewer or more descriptors than it declares,
descriptors cut by the kernel (``MSG_CTRUNC``), more descriptors than ``maxfds``, or a
"region" that is not a region raises ``MessageError``, after closing every descriptor the
message brought. Received descriptors are always CLOEXEC.

>>> import socket, ashmem
>>> a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
>>> shm = ashmem.SharedMemory.create("frames", 4096)
>>> send(a, [shm], b"hello")
>>> data, items = recv(b, maxfds=4)
>>> data, items[0].name, items[0].size
(b'hello', 'frames', 4096)
"""

from __future__ import annotations

import array
import contextlib
import os
import socket
import struct
from collections.abc import Iterable

from . import _sys, region
from ._errors import MessageError
from ._memory_file import MemoryFile
from ._shared_memory import SharedMemory

__all__ = ["MAX_FDS_PER_FRAME", "recv", "send"]

MAX_FDS_PER_FRAME = 253
_HEADER = struct.Struct("<4sBBHI")
_MAGIC = b"ASF1"
_MORE = 0x01
_KIND_FD = 0
_KIND_REGION = 1
_CMSG_SPACE = socket.CMSG_SPACE(MAX_FDS_PER_FRAME * 4)
_MAX_DATA = 0xFFFFFFFF

Item = SharedMemory | MemoryFile | int


def _fd_of(item: Item) -> tuple[int, int]:
    if isinstance(item, SharedMemory):
        return item.fileno(), _KIND_REGION
    if isinstance(item, MemoryFile):
        return item.fileno(), _KIND_REGION
    if isinstance(item, int) and not isinstance(item, bool):
        if item < 0:
            raise ValueError(f"cannot send fd {item}")
        return item, _KIND_FD
    raise TypeError(f"cannot send {type(item).__name__}: expected SharedMemory, MemoryFile or int")


def send(sock: socket.socket, items: Iterable[Item], data: bytes = b"") -> None:
    """Send ``data`` and the descriptors of ``items`` as one message.

    Items are borrowed: the sender keeps its objects and fds open. ``SharedMemory`` and
    ``MemoryFile`` arrive as ``SharedMemory``; plain ints arrive as plain fds. The peer gets
    the same open file, so a write-protected region stays write-protected there.
    """
    fds: list[int] = []
    kinds = bytearray()
    for item in items:
        fd, kind = _fd_of(item)
        fds.append(fd)
        kinds.append(kind)
    payload = memoryview(data).cast("B")
    if len(payload) > _MAX_DATA:
        raise ValueError(f"data of {len(payload)} bytes is too large; put it in a region")
    stream = sock.type == socket.SOCK_STREAM
    start = 0
    while True:
        chunk = fds[start : start + MAX_FDS_PER_FRAME]
        last = start + MAX_FDS_PER_FRAME >= len(fds)
        body = payload if last else memoryview(b"")
        header = _HEADER.pack(_MAGIC, 0 if last else _MORE, 0, len(chunk), len(body))
        frame: list[bytes | memoryview] = [header + bytes(kinds[start : start + len(chunk)]), body]
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", chunk))] if chunk else []
        try:
            sent = sock.sendmsg(frame, anc)
            total = len(frame[0]) + len(body)
            if sent < total and stream:
                # The descriptors went with the first byte; the rest is plain data.
                sock.sendall(b"".join(frame)[sent:])
            elif sent < total:
                raise MessageError(f"socket sent {sent} of {total} bytes of a frame")
        except OSError as exc:
            raise _sys.translate(exc, "send descriptors") from exc
        if last:
            return
        start += MAX_FDS_PER_FRAME


def _close_all(fds: Iterable[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def _take_fds(ancdata: list[tuple[int, int, bytes]], into: list[int]) -> None:
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds = array.array("i")
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
            into.extend(fds)


def _recv_chunk(sock: socket.socket, size: int, fds: list[int]) -> bytes:
    """Receive exactly ``size`` bytes from a stream socket, collecting descriptors."""
    parts: list[bytes] = []
    remaining = size
    while remaining:
        data, ancdata, flags, _ = sock.recvmsg(remaining, _CMSG_SPACE, socket.MSG_CMSG_CLOEXEC)
        _take_fds(ancdata, fds)
        if flags & socket.MSG_CTRUNC:
            raise MessageError("descriptors were cut by the kernel (MSG_CTRUNC)")
        if not data:
            if remaining == size and not parts:
                raise EOFError("peer closed the connection")
            raise MessageError(
                f"connection closed in the middle of a frame ({remaining} bytes missing)"
            )
        parts.append(data)
        remaining -= len(data)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _recv_frame(sock: socket.socket, fds: list[int]) -> tuple[int, bytes, bytes]:
    """One frame: (flags, kinds, data). Descriptors go to ``fds``."""
    before = len(fds)
    if sock.type == socket.SOCK_STREAM:
        head = _recv_chunk(sock, _HEADER.size, fds)
        magic, flags, _, nfds, data_len = _HEADER.unpack(head)
        if magic != _MAGIC:
            raise MessageError(f"not an ashmem fdpass frame (magic {magic!r})")
        rest = _recv_chunk(sock, nfds + data_len, fds) if nfds + data_len else b""
    else:
        head = sock.recv(_HEADER.size, socket.MSG_PEEK)
        if not head:
            # A zero-length datagram is consumed; EOF is also empty.
            sock.recv(1)
            raise EOFError("peer closed the connection")
        if len(head) < _HEADER.size:
            sock.recvmsg(1, _CMSG_SPACE, socket.MSG_CMSG_CLOEXEC)
            raise MessageError(f"frame of {len(head)} bytes is shorter than its header")
        magic, flags, _, nfds, data_len = _HEADER.unpack(head)
        total = _HEADER.size + nfds + data_len
        if magic != _MAGIC:
            total = _HEADER.size  # drop the datagram; MSG_TRUNC discards the rest
        data, ancdata, rflags, _ = sock.recvmsg(total, _CMSG_SPACE, socket.MSG_CMSG_CLOEXEC)
        _take_fds(ancdata, fds)
        if magic != _MAGIC:
            raise MessageError(f"not an ashmem fdpass frame (magic {magic!r})")
        if rflags & socket.MSG_CTRUNC:
            raise MessageError("descriptors were cut by the kernel (MSG_CTRUNC)")
        if rflags & socket.MSG_TRUNC or len(data) != total:
            raise MessageError(f"frame truncated: {len(data)} of {total} bytes")
        rest = data[_HEADER.size :]
    if nfds > MAX_FDS_PER_FRAME:
        raise MessageError(f"frame declares {nfds} descriptors, more than {MAX_FDS_PER_FRAME}")
    if len(fds) - before != nfds:
        raise MessageError(f"frame declares {nfds} descriptors but carried {len(fds) - before}")
    return flags, rest[:nfds], rest[nfds:]


def recv(sock: socket.socket, maxfds: int) -> tuple[bytes, list[SharedMemory | int]]:
    """Receive one message sent by ``send``: ``(data, items)``.

    Regions arrive as ``SharedMemory`` objects, raw fds as ints; the caller owns both. At
    most ``maxfds`` descriptors are accepted: a message with more raises ``MessageError``
    and every descriptor it brought is closed. ``EOFError`` when the peer has closed the
    connection between messages. Honors the socket's timeout.
    """
    if maxfds < 0:
        raise ValueError(f"maxfds must be >= 0, got {maxfds}")
    fds: list[int] = []
    kinds = bytearray()
    try:
        while True:
            flags, frame_kinds, data = _recv_frame(sock, fds)
            kinds += frame_kinds
            if len(fds) > maxfds:
                raise MessageError(f"peer sent more than {maxfds} descriptors")
            if not flags & _MORE:
                break
            if data:
                raise MessageError("a frame marked MORE carries data")
        # Check every descriptor before wrapping any, so that on failure all of them are
        # still plain fds that we own and can close.
        for fd, kind in zip(fds, kinds, strict=True):
            if kind == _KIND_REGION and not region.valid(fd):
                raise MessageError(f"peer sent fd {fd} as a region, but it is not one")
            if kind not in (_KIND_REGION, _KIND_FD):
                raise MessageError(f"unknown descriptor kind {kind}")
    except BaseException:
        _close_all(fds)
        raise
    items: list[SharedMemory | int] = [
        SharedMemory._adopt(fd) if kind == _KIND_REGION else fd
        for fd, kind in zip(fds, kinds, strict=True)
    ]
    return data, items
