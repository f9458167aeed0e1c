"""The binder wire protocol, version 1: one message per ``SOCK_SEQPACKET`` datagram.

Every connection is an ``AF_UNIX`` ``SOCK_SEQPACKET`` socket, so the kernel keeps message
boundaries and attaches each message's descriptors to exactly that message: one ``sendmsg``
and one ``recvmsg`` per message, nothing to reassemble, and "half a message" cannot happen
(a short datagram is just a malformed one).

Message header, 16 bytes, little-endian::

    offset size  field
    0      2     magic b"AB"
    2      1     version: 1
    3      1     kind (below)
    4      1     flags: bit 0 ONEWAY (TRANSACTION only), bit 1 SPILLED; others must be 0
    5      1     nfds: descriptors attached to this datagram (SCM_RIGHTS), <= MAX_FDS
    6      2     reserved, 0
    8      4     code: transaction code, reply status or refusal reason
    12     4     seq: set by the caller, echoed by the reply; a mismatch is an error
    16     ...   payload: the rest of the datagram (at most MAX_INLINE bytes)

Kinds and their payloads::

    1 HELLO        client -> service, first message of a connection. payload: a 16-byte
                   binder token, or nothing to address the service the socket is named for.
    2 WELCOME      service -> client. payload: the binder reference (below) of the target,
                   so the client can open more connections to the same process, and write
                   the binder into a Parcel for a third process.
    3 REFUSED      service -> client, then the service closes the connection. code: 1
                   permission (uid/gid/policy), 2 no such binder, 3 unsupported version,
                   4 malformed message. payload: a UTF-8 reason.
    4 TRANSACTION  client -> service. code: the transaction code. payload: the Parcel.
    5 REPLY        service -> client. code: 0 handled, 1 unknown transaction code.
                   payload: the reply Parcel.
    6 EXCEPTION    service -> client: on_transact raised. payload: a Parcel holding two
                   strings, the exception's type name and its message.

A Parcel's encoding is described in ``ashmem.binder._parcel``. Its descriptors travel as the
message's SCM_RIGHTS descriptors, in order. If the Parcel is larger than ``MAX_INLINE`` the
sender *spills* it: it copies the bytes into a new region, seals it with ``F_SEAL_WRITE``
(no writable mapping exists or can ever be made, in any process), sets SPILLED and attaches
the region as descriptor 0, ahead of the Parcel's own; the payload is empty. The receiver
maps the region read-only and reads it in place (zero-copy), after checking that it is a
region, that its size is sealed and that it is sealed against writes, so the bytes cannot
change while it parses them.

A binder reference is ``u8 n, n bytes address, 16 bytes token``: an abstract-namespace
``AF_UNIX`` address ``\\0ashmem-binder-<pid>-<16 hex digits>`` owned by the process that
serves the binder, and the token that names the binder there. Tokens are 128-bit random
capabilities; references read from a peer are checked against this exact shape.

Limits that remain: at most ``MAX_FDS`` (64) descriptors per message, spilled region
included; every descriptor received counts against ``RLIMIT_NOFILE`` until its Parcel is
closed; a spilled payload needs as much free tmpfs / memory-cgroup room as its size.
"""

from __future__ import annotations

import array
import contextlib
import os
import re
import socket
import struct
from collections.abc import Iterable, Sequence
from typing import Any

from .. import _sys, region
from .._errors import MessageError
from .._shared_memory import Mapping
from ._errors import BadParcel

HEADER = struct.Struct("<2sBBBBHII")
HEADER_SIZE = HEADER.size
MAGIC = b"AB"
VERSION = 1

#: Largest datagram, header included; larger Parcels are spilled into a region.
MAX_MESSAGE = 65536
#: Largest Parcel sent inline.
MAX_INLINE = MAX_MESSAGE - HEADER_SIZE
#: Most descriptors one message may carry (a spilled payload's region included).
MAX_FDS = 64
CMSG_SPACE = socket.CMSG_SPACE(MAX_FDS * array.array("i").itemsize)

HELLO = 1
WELCOME = 2
REFUSED = 3
TRANSACTION = 4
REPLY = 5
EXCEPTION = 6
KIND_NAMES = {
    HELLO: "HELLO",
    WELCOME: "WELCOME",
    REFUSED: "REFUSED",
    TRANSACTION: "TRANSACTION",
    REPLY: "REPLY",
    EXCEPTION: "EXCEPTION",
}

F_ONEWAY = 0x01
F_SPILLED = 0x02
F_ALL = F_ONEWAY | F_SPILLED

REFUSED_PERMISSION = 1
REFUSED_NO_SUCH_BINDER = 2
REFUSED_VERSION = 3
REFUSED_PROTOCOL = 4

STATUS_OK = 0
STATUS_UNKNOWN_TRANSACTION = 1

TOKEN_SIZE = 16
# Plain ints: the socket module's flags are IntFlag members, and every operator on those
# runs Python code (about a microsecond each, on the hot path).
SEND_FLAGS = int(socket.MSG_NOSIGNAL)
RECV_FLAGS = int(socket.MSG_CMSG_CLOEXEC)
DONTWAIT = int(socket.MSG_DONTWAIT)
_TRUNCATED = int(socket.MSG_TRUNC) | int(socket.MSG_CTRUNC)
_CTRUNC = int(socket.MSG_CTRUNC)
_SOL_SOCKET = int(socket.SOL_SOCKET)
_SCM_RIGHTS = int(socket.SCM_RIGHTS)
PREFIX = MAGIC + bytes((VERSION,))
FAST = struct.Struct("<3sBBBHII")  # the header with magic and version as one field
SPILL_NAME = "ashmem.binder.parcel"

_HOST_ADDRESS = re.compile(rb"\0ashmem-binder-[0-9]{1,10}-[0-9a-f]{16}")
_PEERCRED = struct.Struct("3i")
_TIMEVAL = struct.Struct("ll")


def pack(kind: int, flags: int, nfds: int, code: int, seq: int) -> bytes:
    """A message header."""
    return HEADER.pack(MAGIC, VERSION, kind, flags, nfds, 0, code, seq)


def take_fds(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    """The descriptors in ``recvmsg`` ancillary data; the caller owns them."""
    fds: list[int] = []
    for level, kind, data in ancdata:
        if level == _SOL_SOCKET and kind == _SCM_RIGHTS:
            chunk = array.array("i")
            chunk.frombytes(data[: len(data) - len(data) % chunk.itemsize])
            fds.extend(chunk)
    return fds


def close_fds(fds: Iterable[int]) -> None:
    """Close every fd, ignoring the ones already closed."""
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def rights(fds: Sequence[int]) -> list[tuple[int, int, bytes]]:
    """Ancillary data attaching ``fds`` (borrowed) to a message."""
    if not fds:
        return []
    return [(_SOL_SOCKET, _SCM_RIGHTS, array.array("i", fds).tobytes())]


def check(msg: bytes, mflags: int, nfds: int) -> tuple[int, int, int, int]:
    """Validate a received datagram: ``(kind, flags, code, seq)``.

    Raises ``MessageError`` for anything malformed; the caller still owns (and must close)
    the descriptors that came with it.
    """
    if not mflags & _TRUNCATED and len(msg) >= HEADER_SIZE:
        prefix, kind, flags, declared, reserved, code, seq = FAST.unpack_from(msg)
        if (
            prefix == PREFIX
            and 0 < kind <= EXCEPTION
            and not flags & ~F_ALL
            and not reserved
            and declared == nfds <= MAX_FDS
            and (not flags & F_SPILLED or (nfds and len(msg) == HEADER_SIZE))
        ):
            return kind, flags, code, seq
    raise _diagnose(msg, mflags, nfds)


def _diagnose(msg: bytes, mflags: int, nfds: int) -> MessageError:
    """Why ``check`` rejected a datagram."""
    if mflags & _CTRUNC:
        return MessageError(
            f"peer attached more than {MAX_FDS} descriptors to one message (MSG_CTRUNC)"
        )
    if mflags & _TRUNCATED:
        return MessageError(f"message longer than {MAX_MESSAGE} bytes (MSG_TRUNC)")
    if len(msg) < HEADER_SIZE:
        return MessageError(f"message of {len(msg)} bytes is shorter than the 16-byte header")
    magic, version, kind, flags, declared, reserved, _, _ = HEADER.unpack_from(msg)
    if magic != MAGIC:
        return MessageError(f"not an ashmem binder message (magic {magic!r})")
    if version != VERSION:
        return MessageError(f"protocol version {version} is not supported (this side speaks 1)")
    if kind not in KIND_NAMES:
        return MessageError(f"unknown message kind {kind}")
    if flags & ~F_ALL or reserved:
        return MessageError(f"reserved bits set (flags {flags:#x}, reserved {reserved:#x})")
    if declared != nfds:
        return MessageError(f"message declares {declared} descriptors but carried {nfds}")
    if nfds > MAX_FDS:
        return MessageError(f"message carried {nfds} descriptors, more than {MAX_FDS}")
    return MessageError("a SPILLED message must carry its region first and no inline bytes")


def send_message(
    sock: socket.socket,
    kind: int,
    flags: int,
    code: int,
    seq: int,
    outgoing: tuple[int, list[Any], Sequence[int], int],
    send_flags: int,
) -> None:
    """Send one message made by ``Parcel._outgoing`` (its descriptors borrowed); ``flags``
    are added to the header's (``F_ONEWAY``). Raises the socket's OSError."""
    spilled, parts, fds, _ = outgoing
    header = pack(kind, flags | spilled, len(fds), code, seq)
    if fds:
        sock.sendmsg([header, *parts], rights(fds), send_flags)
    else:
        sock.sendmsg([header, *parts], (), send_flags)


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """``(pid, uid, gid)`` of the peer, from the kernel (``SO_PEERCRED``): those in effect
    when it called ``connect`` (or ``listen``, seen from the client). Borrows ``sock``."""
    pid, uid, gid = _PEERCRED.unpack(
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    )
    return pid, uid, gid


def set_receive_timeout(sock: socket.socket, seconds: float) -> None:
    """Kernel-side receive timeout (``SO_RCVTIMEO``) for a blocking socket: a blocking
    ``recvmsg`` then fails with ``BlockingIOError`` after ``seconds``."""
    whole = int(seconds)
    sock.setsockopt(
        socket.SOL_SOCKET,
        socket.SO_RCVTIMEO,
        _TIMEVAL.pack(whole, int((seconds - whole) * 1_000_000)),
    )


def encode_reference(address: bytes, token: bytes) -> bytes:
    """The wire form of a binder reference."""
    return bytes((len(address),)) + address + token


def decode_reference(data: Any, offset: int, end: int) -> tuple[bytes, bytes, int]:
    """``(address, token, next_offset)`` of a reference at ``data[offset:end]``.

    Raises ``BadParcel`` unless it has exactly the shape of a reference this library makes.
    """
    if offset >= end:
        raise BadParcel(f"binder reference at offset {offset} is cut off")
    n = data[offset]
    stop = offset + 1 + n + TOKEN_SIZE
    if stop > end:
        raise BadParcel(f"binder reference at offset {offset} is cut off")
    address = bytes(data[offset + 1 : offset + 1 + n])
    if not _HOST_ADDRESS.fullmatch(address):
        raise BadParcel(f"binder reference at offset {offset} has a foreign address {address!r}")
    return address, bytes(data[offset + 1 + n : stop]), stop


def spill(parts: Sequence[Any], total: int) -> int:
    """Copy ``parts`` (``total`` bytes) into a new region sealed against writes.

    Returns the region fd, which the caller owns. ``OSError`` (translated) on ENOSPC etc.
    """
    fd = region.create_region(SPILL_NAME, total)
    try:
        offset = 0
        for part in parts:
            with memoryview(part) as raw:
                view = raw.cast("B") if raw.format != "B" or raw.ndim != 1 else raw
                while len(view):
                    written = os.pwrite(fd, view, offset)
                    offset += written
                    view = view[written:]
        # No mapping of this region ever existed, so F_SEAL_WRITE is allowed: from here on
        # nobody, in any process, can change these bytes.
        region.seal_contents_region(fd)
    except OSError as exc:
        os.close(fd)
        raise _sys.translate(exc, f"spill a {total}-byte Parcel", SPILL_NAME) from exc
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_spilled(fd: int) -> Mapping:
    """Map a spilled payload read-only. Borrows ``fd`` (the caller closes it).

    Raises ``BadParcel`` unless ``fd`` is a region whose size and contents are sealed.
    """
    size = region.region_size(fd)
    if size is None:
        raise BadParcel("the spilled payload is not an ashmem region with a sealed size")
    if size == 0:
        raise BadParcel("the spilled payload is an empty region")
    try:
        sealed = region.contents_sealed_region(fd)
    except (OSError, ValueError) as exc:
        raise BadParcel(f"cannot inspect the spilled payload: {exc}") from exc
    if not sealed:
        raise BadParcel(
            "the spilled payload is not sealed with F_SEAL_WRITE: its sender could still "
            "change it while it is read"
        )
    return Mapping(fd, size, region.PROT_READ, 0, SPILL_NAME)
