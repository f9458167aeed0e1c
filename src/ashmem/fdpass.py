"""Moving regions between processes over AF_UNIX sockets (SCM_RIGHTS).

A message is one or more *frames*. Each frame is::

    offset size  field
    0      4     magic b"ASF1" (the 1 is the format version)
    4      1     flags: bit 0 MORE = another frame of this message follows
    5      1     reserved, 0
    6      2     nfds: descriptors attached to this frame (<= 253, the kernel's SCM_MAX_FD)
    8      4     data_len: payload bytes in this frame
    12     nfds  kind of each descriptor: 0 raw fd, 1 region (becomes a SharedMemory)
    ..     data_len  payload

little-endian, with the frame's descriptors attached to its first byte. The message's payload
is the concatenation of its frames' payloads, and its descriptors those of its frames, in
order. A frame carries at most 253 descriptors; on datagram sockets (``SOCK_SEQPACKET``) it
also carries at most 64 KiB of payload, so that the receiver can take every frame with one
``recvmsg`` into a fixed buffer and a larger message still goes through, in several frames.

Works on ``SOCK_SEQPACKET`` (one frame per datagram; a datagram larger than a frame may be
is refused, never silently cut) and on ``SOCK_STREAM`` (the receiver reads exactly one frame's
bytes at a time, so descriptors sent with the next message are never mixed into this one,
even when several sends arrive together). Frames of one message are sent back to back: do
not let two threads send on one socket at the same time.

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

import _socket
import contextlib
import fcntl
import os
import socket
import struct
from collections.abc import Iterable

from . import _sys, region
from ._errors import MessageError
from ._memory_file import MemoryFile
from ._rights import rights, take_fds
from ._shared_memory import SharedMemory

__all__ = ["MAX_FDS_PER_FRAME", "recv", "send"]

MAX_FDS_PER_FRAME = 253
_HEADER = struct.Struct("<4sBBHI")
_MAGIC = b"ASF1"
_MORE = 0x01
_KIND_FD = 0
_KIND_REGION = 1
# Room for a full frame of fds, plus the credentials (SO_PASSCRED: struct ucred) and security
# label (SO_PASSSEC) cmsgs the kernel puts first when the receiver enabled them; without that
# room a legitimate 253-fd frame would come back cut (MSG_CTRUNC).
_CMSG_SPACE = (
    socket.CMSG_SPACE(MAX_FDS_PER_FRAME * 4) + socket.CMSG_SPACE(12) + socket.CMSG_SPACE(256)
)
_STREAM_READ = 1 << 20  # most bytes asked of one recvmsg on a stream
# Plain ints: socket's IntFlag members make every `flags & ...` a slow Python-level call.
_MSG_CTRUNC = int(socket.MSG_CTRUNC)
_MSG_TRUNC = int(socket.MSG_TRUNC)
_MSG_CMSG_CLOEXEC = int(socket.MSG_CMSG_CLOEXEC)
_SOCK_STREAM = int(socket.SOCK_STREAM)
_MAX_DATA = 0xFFFFFFFF
_DGRAM_DATA = 64 * 1024  # payload per frame on datagram sockets
_DGRAM_FRAME = _HEADER.size + MAX_FDS_PER_FRAME + _DGRAM_DATA
_HEAD_SIZE = _HEADER.size
# One descriptor as SCM_RIGHTS carries it (a C int): the single-region message, which is
# most of them, is packed and parsed without building an array.
_FD = struct.Struct("i")
_FD_PACK = _FD.pack
_FD_UNPACK = _FD.unpack
_FD_SIZE = _FD.size
_TRUNCATED = _MSG_CTRUNC | _MSG_TRUNC
_SOL_SOCKET = int(socket.SOL_SOCKET)
_SCM_RIGHTS = int(socket.SCM_RIGHTS)
# The frame of the usual hand-off, one region and no payload, as sendmsg takes it and as
# recvmsg returns it: the header, then the descriptor's kind.
_ONE_REGION = (_HEADER.pack(_MAGIC, 0, 0, 1, 0) + bytes((_KIND_REGION,)),)
_ONE_REGION_FRAME = _ONE_REGION[0]
_ONE_REGION_SIZE = len(_ONE_REGION_FRAME)

_fcntl = fcntl.fcntl
_F_GET_SEALS = _sys.F_GET_SEALS
_SIZE_SEALS = _sys.F_SEAL_GROW | _sys.F_SEAL_SHRINK
_new_object = object.__new__

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


_SocketType = _socket.socket
_socket_family = _socket.socket.family.__get__
_AF_UNIX = int(socket.AF_UNIX)


def _check_socket(sock: object) -> None:
    if not isinstance(sock, _socket.socket):
        hint = " (wrap a raw fd with socket.socket(fileno=fd))" if isinstance(sock, int) else ""
        raise TypeError(f"sock must be a socket.socket, not {type(sock).__name__}{hint}")
    if _socket_family(sock) != _AF_UNIX:
        family = socket.AddressFamily(sock.family).name
        raise ValueError(
            f"descriptors can only cross an AF_UNIX socket, not {family}: "
            "use socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET) or an AF_UNIX "
            "listener"
        )


def _items(items: object) -> Iterable[Item]:
    if isinstance(items, (SharedMemory, MemoryFile, int)):
        return (items,)
    if isinstance(items, (bytes, bytearray, memoryview, str)):
        raise TypeError(
            f"items must be SharedMemory, MemoryFile or int descriptors (one, or an iterable "
            f"of them), not {type(items).__name__}: fdpass.send(sock, items, data) takes the "
            "payload third (socket.send_fds takes buffers second); send(sock, [], data) "
            "sends data alone"
        )
    if not hasattr(items, "__iter__"):
        raise TypeError(
            f"items must be SharedMemory, MemoryFile or int descriptors (one, or an iterable "
            f"of them), not {type(items).__name__}"
        )
    return items


def send(
    sock: socket.socket,
    items: Item | Iterable[Item],
    data: bytes | bytearray | memoryview = b"",
) -> None:
    """Send ``data`` and the descriptors of ``items`` as one message over an AF_UNIX socket.

    ``items``: a ``SharedMemory``, ``MemoryFile`` or int descriptor, or an iterable of them;
    anything else is a ``TypeError`` (bytes in particular: the payload is the third
    argument). The order differs from ``socket.send_fds(sock, buffers, fds)`` on purpose:
    the regions are what this call is for, and the payload is optional. Items are borrowed:
    the sender keeps its objects and fds open. ``SharedMemory`` and ``MemoryFile`` arrive as
    ``SharedMemory``; plain ints arrive as plain fds. The peer gets the same open file, so a
    write-protected region stays write-protected there.

    Honors the socket's timeout. A timeout or error after part of a message went out
    leaves the connection out of step: close it.
    """
    # Hot path (one hand-off = one call): exact-type tests first, the general checks only
    # when they fail; every check of the general path still runs for anything unusual.
    if not isinstance(sock, _SocketType) or _socket_family(sock) != _AF_UNIX:
        _check_socket(sock)
    if (
        (type(items) is list or type(items) is tuple)
        and len(items) == 1
        and type(one := items[0]) is SharedMemory
        and type(data) is bytes
        and not data
        and one._fd >= 0
    ):
        # The usual hand-off, one open region and no payload: its frame is a constant.
        try:
            sent = sock.sendmsg(_ONE_REGION, [(_SOL_SOCKET, _SCM_RIGHTS, _FD_PACK(one._fd))])
        except OSError as exc:
            raise _sys.translate(exc, "send descriptors") from exc
        if sent != _ONE_REGION_SIZE:
            _send_rest(sock, _ONE_REGION[0], b"", sent)
        return
    fds: list[int] = []
    kinds = bytearray()
    for item in items if type(items) is list or type(items) is tuple else _items(items):
        if type(item) is SharedMemory:
            fd = item._fd
            if fd < 0:
                item.fileno()  # raises ClosedError naming the region
            fds.append(fd)
            kinds.append(_KIND_REGION)
        else:
            fd, kind = _fd_of(item)
            fds.append(fd)
            kinds.append(kind)
    if type(data) is bytes:
        payload: bytes | memoryview = data
    else:
        if isinstance(data, str):
            raise TypeError("data must be bytes-like, not str; encode it first")
        payload = memoryview(data).cast("B")
    nfds, ndata = len(fds), len(payload)
    if ndata > _DGRAM_DATA or nfds > MAX_FDS_PER_FRAME:
        _send_frames(sock, fds, kinds, payload)
        return
    # The common message fits one frame on any socket: no slicing, no loop.
    head = _HEADER.pack(_MAGIC, 0, 0, nfds, ndata) + kinds
    ancdata = [(_SOL_SOCKET, _SCM_RIGHTS, _FD.pack(fds[0]))] if nfds == 1 else rights(fds)
    try:
        sent = sock.sendmsg((head, payload) if ndata else (head,), ancdata)
    except OSError as exc:
        raise _sys.translate(exc, "send descriptors") from exc
    if sent != len(head) + ndata:
        _send_rest(sock, head, payload, sent)


def _send_frames(
    sock: socket.socket, fds: list[int], kinds: bytearray, payload: bytes | memoryview
) -> None:
    """Send a message that needs more than one frame (or a large one-frame message on a
    stream). Borrows ``fds``."""
    if len(payload) > _MAX_DATA:
        raise ValueError(f"data of {len(payload)} bytes is too large; put it in a region")
    stream = _socket_type(sock) == _SOCK_STREAM
    data_step = _MAX_DATA if stream else _DGRAM_DATA
    nfds, ndata = len(fds), len(payload)
    view = memoryview(payload)
    fd_at = data_at = 0
    while True:
        chunk = fds[fd_at : fd_at + MAX_FDS_PER_FRAME]
        body = view[data_at : data_at + data_step]
        fd_at += len(chunk)
        data_at += len(body)
        last = fd_at >= nfds and data_at >= ndata
        head = _HEADER.pack(_MAGIC, 0 if last else _MORE, 0, len(chunk), len(body))
        head += kinds[fd_at - len(chunk) : fd_at]
        try:
            sent = sock.sendmsg([head, body], rights(chunk))
        except OSError as exc:
            raise _sys.translate(exc, "send descriptors") from exc
        if sent != len(head) + len(body):
            _send_rest(sock, head, body, sent)
        if last:
            return


def _send_rest(sock: socket.socket, head: bytes, body: bytes | memoryview, sent: int) -> None:
    """``sendmsg`` took only ``sent`` bytes of a frame: on a stream, send the rest (the
    descriptors went with the first byte, the rest is plain data); on a datagram socket
    the frame is broken."""
    total = len(head) + len(body)
    if _socket_type(sock) != _SOCK_STREAM:
        raise MessageError(f"socket sent {sent} of {total} bytes of a frame")
    try:
        sock.sendall(b"".join((head, body))[sent:])
    except OSError as exc:
        raise _sys.translate(exc, "send descriptors") from exc


# socket.socket.type wraps the kind in an IntEnum on every access; the C getter does not.
_socket_type = _socket.socket.type.__get__


def _close_all(fds: Iterable[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


_OUT_OF_STEP = (
    "timed out in the middle of a message: part of it is consumed, so this connection is out "
    "of step for good; close it (timeouts are safe only between messages)"
)


def _recv_chunk(
    sock: socket.socket, size: int, fds: list[int], fd_limit: int, at_message_start: bool
) -> bytes:
    """Receive exactly ``size`` bytes from a stream socket, collecting descriptors.

    Stops with ``MessageError`` as soon as more than ``fd_limit`` descriptors are held, so a
    peer cannot park descriptors in us chunk after chunk. Reads at most 1 MiB per call, so a
    header cannot make us allocate what it merely declares. End of stream (or a timeout)
    before the first byte of a message is ``EOFError`` (or ``TimeoutError``); anywhere else
    the message is broken and so is the connection: ``MessageError``."""
    parts: list[bytes] = []
    remaining = size
    while remaining:
        try:
            data, ancdata, flags, _ = sock.recvmsg(
                min(remaining, _STREAM_READ), _CMSG_SPACE, _MSG_CMSG_CLOEXEC
            )
        except (TimeoutError, BlockingIOError) as exc:
            if at_message_start and remaining == size:
                raise
            raise MessageError(_OUT_OF_STEP) from exc
        take_fds(ancdata, fds)
        if flags & _MSG_CTRUNC:
            raise MessageError("descriptors were cut by the kernel (MSG_CTRUNC)")
        if len(fds) > fd_limit:
            raise MessageError(
                f"peer attached descriptors beyond what this message may carry ({fd_limit})"
            )
        if not data:
            if at_message_start and remaining == size:
                raise EOFError("peer closed the connection")
            raise MessageError(
                f"connection closed in the middle of a frame ({remaining} bytes missing)"
            )
        parts.append(data)
        remaining -= len(data)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _check_header(magic: bytes, nfds: int, data_len: int, maxdata: int) -> None:
    if magic != _MAGIC:
        raise MessageError(f"not an ashmem fdpass frame (magic {magic!r})")
    if nfds > MAX_FDS_PER_FRAME:
        raise MessageError(f"frame declares {nfds} descriptors, more than {MAX_FDS_PER_FRAME}")
    if data_len > maxdata:
        raise MessageError(f"message carries more than maxdata={maxdata} bytes")


def _recv_frame(
    sock: socket.socket, fds: list[int], first: bool, maxfds: int, maxdata: int
) -> tuple[int, bytes, bytes]:
    """One frame: (flags, kinds, data). Descriptors go to ``fds``. ``first``: the frame
    starts a message. ``maxfds``/``maxdata``: what the rest of the message may still bring."""
    if _socket_type(sock) == _SOCK_STREAM:
        before = len(fds)
        fd_limit = before + min(MAX_FDS_PER_FRAME, maxfds)
        head = _recv_chunk(sock, _HEAD_SIZE, fds, fd_limit, at_message_start=first)
        magic, flags, _, nfds, data_len = _HEADER.unpack(head)
        _check_header(magic, nfds, data_len, maxdata)
        # Descriptors travel with a frame's first byte, so none may come with the rest.
        rest = (
            _recv_chunk(sock, nfds + data_len, fds, len(fds), at_message_start=False)
            if nfds + data_len
            else b""
        )
        if len(fds) - before != nfds:
            raise MessageError(f"frame declares {nfds} descriptors but carried {len(fds) - before}")
        return flags, rest[:nfds], rest[nfds:]
    try:
        data, ancdata, rflags, _ = sock.recvmsg(_DGRAM_FRAME, _CMSG_SPACE, _MSG_CMSG_CLOEXEC)
    except (TimeoutError, BlockingIOError) as exc:
        if first:
            raise
        raise MessageError(_OUT_OF_STEP) from exc
    return _datagram_frame(data, ancdata, rflags, fds, first, maxdata)


def _datagram_frame(
    data: bytes,
    ancdata: list[tuple[int, int, bytes]],
    rflags: int,
    fds: list[int],
    first: bool,
    maxdata: int,
) -> tuple[int, bytes, bytes]:
    """``_recv_frame``'s checks of one datagram that ``recvmsg`` returned."""
    before = len(fds)
    if ancdata:
        # Take every descriptor first, whatever else is wrong, so that the caller closes
        # them all. One SCM_RIGHTS message of one fd (the usual hand-off) without an array.
        if len(ancdata) == 1:
            level, kind, cdata = ancdata[0]
            if level == _SOL_SOCKET and kind == _SCM_RIGHTS and len(cdata) == _FD_SIZE:
                fds.append(_FD_UNPACK(cdata)[0])
            else:
                take_fds(ancdata, fds)
        else:
            take_fds(ancdata, fds)
    if not data:
        if first:
            raise EOFError("peer closed the connection")  # or sent an empty datagram
        raise MessageError("connection closed in the middle of a message")
    if rflags & _TRUNCATED:
        if rflags & _MSG_CTRUNC:
            raise MessageError("descriptors were cut by the kernel (MSG_CTRUNC)")
        raise MessageError(f"datagram larger than a frame may be ({_DGRAM_FRAME} bytes)")
    size = len(data)
    if size < _HEAD_SIZE:
        raise MessageError(f"frame of {size} bytes is shorter than its header")
    magic, flags, _, nfds, data_len = _HEADER.unpack_from(data)
    if magic != _MAGIC or nfds > MAX_FDS_PER_FRAME or data_len > maxdata:
        _check_header(magic, nfds, data_len, maxdata)  # raises, saying which
    if size != _HEAD_SIZE + nfds + data_len:
        raise MessageError(f"frame declares {_HEAD_SIZE + nfds + data_len} bytes but has {size}")
    if len(fds) - before != nfds:
        raise MessageError(f"frame declares {nfds} descriptors but carried {len(fds) - before}")
    body = data[_HEAD_SIZE + nfds :] if data_len else b""
    return flags, data[_HEAD_SIZE : _HEAD_SIZE + nfds], body


def recv(
    sock: socket.socket, maxfds: int = MAX_FDS_PER_FRAME, *, maxdata: int | None = None
) -> tuple[bytes, list[SharedMemory | int]]:
    """Receive one message sent by ``send``: ``(data, items)``.

    Regions arrive as ``SharedMemory`` objects, raw fds as ints; the caller owns both. At
    most ``maxfds`` descriptors (default 253, one frame's worth) and (if given) ``maxdata``
    payload bytes are accepted: a
    message with more raises ``MessageError`` as soon as that is known, and every
    descriptor it brought is closed. ``EOFError`` when the peer has closed the connection
    between messages.

    Honors the socket's timeout between messages (``TimeoutError``, nothing consumed). A
    timeout in the middle of a message raises ``MessageError``: part of it was consumed,
    so the connection is out of step and must be closed.
    """
    if not isinstance(sock, _SocketType) or _socket_family(sock) != _AF_UNIX:
        _check_socket(sock)
    if type(maxfds) is not int and (not isinstance(maxfds, int) or isinstance(maxfds, bool)):
        raise TypeError(f"maxfds must be an int, not {type(maxfds).__name__}")
    if maxfds < 0:
        raise ValueError(f"maxfds must be >= 0, got {maxfds}")
    if maxdata is None:
        data_left = _MAX_DATA
    elif maxdata < 0:
        raise ValueError(f"maxdata must be >= 0, got {maxdata}")
    else:
        data_left = maxdata
    fds: list[int] = []
    try:
        if _socket_type(sock) == _SOCK_STREAM:
            flags, kinds, data = _recv_frame(sock, fds, True, maxfds, data_left)
        else:
            # The first frame of a message: a timeout or BlockingIOError propagates as it is
            # (nothing was consumed).
            data, ancdata, rflags, _ = sock.recvmsg(_DGRAM_FRAME, _CMSG_SPACE, _MSG_CMSG_CLOEXEC)
            if (
                data == _ONE_REGION_FRAME
                and len(ancdata) == 1
                and not rflags & _TRUNCATED
                and maxfds
                and (cmsg := ancdata[0])[0] == _SOL_SOCKET
                and cmsg[1] == _SCM_RIGHTS
                and len(cmsg[2]) == _FD_SIZE
            ):
                # The usual hand-off: one complete frame declaring one region and no
                # payload, with exactly one descriptor attached (so every check of the
                # general path below holds, byte for byte). The one check left is the one
                # that needs the kernel: one F_GET_SEALS proves a memfd with its size sealed.
                # Its size is read by the first map (mmap's own fstat) or the first
                # size/len(), never twice.
                fd = _FD_UNPACK(cmsg[2])[0]
                fds.append(fd)
                try:
                    seals = _fcntl(fd, _F_GET_SEALS)
                except (OSError, OverflowError):
                    seals = 0
                if seals & _SIZE_SEALS != _SIZE_SEALS:
                    raise MessageError(f"peer sent fd {fd} as a region, but it is not one")
                shm = _new_object(SharedMemory)
                shm._fd = fd
                shm._size_pending = True
                shm._name_pending = True
                return b"", [shm]
            flags, kinds, data = _datagram_frame(data, ancdata, rflags, fds, True, data_left)
        if len(fds) > maxfds:
            raise MessageError(f"peer sent more than {maxfds} descriptors")
        if flags & _MORE:
            kinds, data = _recv_more(sock, fds, kinds, data, maxfds, data_left)
        if not fds:
            return data, []
        # Check every descriptor before wrapping any, so that on failure all of them are
        # still plain fds that we own and can close.
        if len(fds) == 1:  # the usual hand-off: no lists to build
            fd = fds[0]
            kind = kinds[0]
            if kind == _KIND_REGION:
                # One F_GET_SEALS: a memfd with its size sealed. Its size is read by the
                # first map (mmap's own fstat) or the first size/len(), never twice.
                if not region._sealed_region(fd):
                    raise MessageError(f"peer sent fd {fd} as a region, but it is not one")
                return data, [SharedMemory._adopt_sealed(fd)]
            if kind == _KIND_FD:
                return data, [fd]
            raise MessageError(f"unknown descriptor kind {kind}")
        for fd, kind in zip(fds, kinds, strict=True):
            if kind == _KIND_REGION:
                if not region._sealed_region(fd):
                    raise MessageError(f"peer sent fd {fd} as a region, but it is not one")
            elif kind != _KIND_FD:
                raise MessageError(f"unknown descriptor kind {kind}")
    except BaseException:
        _close_all(fds)
        raise
    items: list[SharedMemory | int] = [
        SharedMemory._adopt_sealed(fd) if kind == _KIND_REGION else fd
        for fd, kind in zip(fds, kinds, strict=True)
    ]
    return data, items


def _recv_more(
    sock: socket.socket, fds: list[int], kinds: bytes, data: bytes, maxfds: int, maxdata: int
) -> tuple[bytes, bytes]:
    """The frames after a first one that said MORE: (all kinds, all data). Descriptors go
    to ``fds``, which the caller closes on any error."""
    all_kinds = bytearray(kinds)
    parts = [data]
    data_left = maxdata - len(data)
    flags = _MORE
    while flags & _MORE:
        flags, frame_kinds, frame_data = _recv_frame(sock, fds, False, maxfds - len(fds), data_left)
        all_kinds += frame_kinds
        parts.append(frame_data)
        data_left -= len(frame_data)
        if len(fds) > maxfds:
            raise MessageError(f"peer sent more than {maxfds} descriptors")
    return bytes(all_kinds), b"".join(parts)
