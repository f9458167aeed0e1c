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
    7 NESTED       either way, only while the receiver is waiting on this connection for the
                   reply to its own call: a call back into the receiver's process, run on the
                   waiting thread (as Android does). payload: the 16-byte token of the
                   receiver's binder, then the Parcel (SPILLED: the token only). Answered
                   with REPLY or EXCEPTION carrying the NESTED message's seq.
    8 STREAM       client -> service, on a greeted connection, no payload, no descriptor:
                   asks for a one-way stream. The service makes an ``AF_UNIX``
                   ``SOCK_STREAM`` pair, keeps one end (so no other process can change that
                   socket's options or read from it) and answers with a bare REPLY carrying
                   the seq and the other end as its one descriptor; from then on it reads
                   that stream instead of this connection, which it closes. The stream
                   carries only the client's one-way calls, as *records* (below), which
                   run as calls from the peer of the connection that asked for it.

One-way stream records. A sender's one-way calls all go over one stream, so the service
can take many with one ``recvmsg`` (a datagram socket gives one per receive). A record is
the 16-byte header of a one-way TRANSACTION (flags ONEWAY, maybe SPILLED; nfds; code) whose
seq field holds the payload's length in bytes (at most MAX_INLINE), then the payload. Its
descriptors are attached to the ``sendmsg`` that sends the record, so the kernel hands
them out with the record's first bytes (a stream ``recvmsg`` stops after the first chunk
that carries descriptors). The receiver keeps the descriptors it got in arrival order and
gives each complete record the next nfds of them; a record for which fewer arrived, a
length over MAX_INLINE, anything but a one-way TRANSACTION, or more than ``2 * MAX_FDS``
descriptors waiting is a protocol error, and the stream is dropped with everything on it.
A sender whose send stops half-way (a timeout, a cancelled coroutine) closes the stream: a
partial record at end-of-file is discarded, never run.

REFUSED codes also include 5 busy: the service is at one of its limits (descriptors near
``RLIMIT_NOFILE``, connections, queued calls); the caller did nothing wrong.

A Parcel's encoding is described in ``ashmem.binder._parcel``. Its descriptors travel as the
message's SCM_RIGHTS descriptors, in order. If the Parcel is larger than ``MAX_INLINE`` the
sender *spills* it: it copies the bytes into a new region, seals it with ``F_SEAL_WRITE``
(no writable mapping exists or can ever be made, in any process), sets SPILLED and attaches
the region as descriptor 0, ahead of the Parcel's own; the payload is empty. The receiver
maps the region read-only and reads it in place (zero-copy), after checking that it is a
region, that its size is sealed and that it is sealed against writes, so the bytes cannot
change while it parses them, that it is no larger than the receiver's ``max_spill``, and
that it has no holes (``SEEK_HOLE``): a sparse region would cost its sender nothing and the
receiver every page that reading the holes allocates.

A binder reference is ``u8 n, n bytes address, 16 bytes token``: an abstract-namespace
``AF_UNIX`` address ``\\0ashmem-binder-<pid>-<16 hex digits>`` owned by the process that
serves the binder, and the token that names the binder there. Tokens are 128-bit random
capabilities; references read from a peer are checked against this exact shape.

Limits that remain: at most ``MAX_FDS`` (64) descriptors per message, spilled region
included; every descriptor received counts against ``RLIMIT_NOFILE`` until its Parcel is
closed; a spilled payload needs as much free tmpfs / memory-cgroup room as its size.

Descriptors a peer sent are closed with ``discard_fds``: closing one can block (a socket
with ``SO_LINGER`` and unsent data, a device), so anything but a pipe or a memfd is closed
by one "ashmem-binder-closer" thread, after its linger is switched off, never by a thread
that serves others. A connection we drop (``discard_socket``) goes the same way if messages
are still queued in it, since closing it disposes of their descriptors; an empty one is
closed at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import queue
import re
import socket
import stat
import struct
import threading
from collections.abc import Iterable, Sequence
from typing import Any

from .. import _sys, region
from .._errors import MessageError
from .._rights import FD_SIZE
from .._rights import SendFailed as SendFailed
from .._rights import recv_fds as recv_fds
from .._rights import rights as rights
from .._rights import send_recv_fds as send_recv_fds
from .._rights import take_fds as take_fds
from .._shared_memory import Mapping
from ._errors import BadParcel
from ._limits import get_limits

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
CMSG_SPACE = socket.CMSG_SPACE(MAX_FDS * FD_SIZE)

HELLO = 1
WELCOME = 2
REFUSED = 3
TRANSACTION = 4
REPLY = 5
EXCEPTION = 6
NESTED = 7
STREAM = 8
KIND_NAMES = {
    HELLO: "HELLO",
    WELCOME: "WELCOME",
    REFUSED: "REFUSED",
    TRANSACTION: "TRANSACTION",
    REPLY: "REPLY",
    EXCEPTION: "EXCEPTION",
    NESTED: "NESTED",
    STREAM: "STREAM",
}

F_ONEWAY = 0x01
F_SPILLED = 0x02
F_ALL = F_ONEWAY | F_SPILLED

REFUSED_PERMISSION = 1
REFUSED_NO_SUCH_BINDER = 2
REFUSED_VERSION = 3
REFUSED_PROTOCOL = 4
REFUSED_BUSY = 5

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
_PEEK_NOWAIT = int(socket.MSG_PEEK) | DONTWAIT
PREFIX = MAGIC + bytes((VERSION,))
FAST = struct.Struct("<3sBBBHII")  # the header with magic and version as one field
SPILL_NAME = "ashmem.binder.parcel"
#: The first 8 header bytes of every plain one-way call: TRANSACTION, flags exactly ONEWAY
#: (not spilled), no descriptors, reserved 0. A datagram that starts with them, is at least
#: HEADER_SIZE long, was not truncated and carried no descriptors passes ``check`` with
#: nothing more to look at; its code is ``CODE.unpack_from(msg, 8)``.
ONEWAY_PREFIX = HEADER.pack(MAGIC, VERSION, TRANSACTION, F_ONEWAY, 0, 0, 0, 0)[:8]
#: The same for a plain two-way TRANSACTION and a plain REPLY (flags 0, no descriptors):
#: ``CODE_SEQ.unpack_from(msg, 8)`` is then the code (the status) and the seq.
CALL_PREFIX = HEADER.pack(MAGIC, VERSION, TRANSACTION, 0, 0, 0, 0, 0)[:8]
REPLY_PREFIX = HEADER.pack(MAGIC, VERSION, REPLY, 0, 0, 0, 0, 0)[:8]
CODE = struct.Struct("<I")
CODE_SEQ = struct.Struct("<II")
#: The header as (its first 8 bytes, code, seq): one of the prefixes above with the two
#: last fields in one pack or unpack. In a one-way stream record the seq is the length.
PREFIXED = struct.Struct("<8sII")
TRUNCATED = _TRUNCATED

_HOST_ADDRESS = re.compile(rb"\0ashmem-binder-[0-9]{1,10}-[0-9a-f]{16}")
_PEERCRED = struct.Struct("3i")
_LINGER_OFF = struct.pack("ii", 0, 0)
_F_GET_SEALS = _sys.F_GET_SEALS
_TIMEVAL = struct.Struct("ll")


def pack(kind: int, flags: int, nfds: int, code: int, seq: int) -> bytes:
    """A message header."""
    return HEADER.pack(MAGIC, VERSION, kind, flags, nfds, 0, code, seq)


def close_fds(fds: Iterable[int]) -> None:
    """Close every fd, ignoring the ones already closed."""
    for fd in fds:
        try:  # noqa: SIM105 - no suppress() object per descriptor on the call path
            os.close(fd)
        except OSError:
            pass


_memfd_dev: int | None = None


def _memfd_device() -> int:
    """``st_dev`` of every memfd (they all live on the kernel's internal shmem mount)."""
    global _memfd_dev
    if _memfd_dev is None:
        fd = os.memfd_create("ashmem.binder.probe", os.MFD_CLOEXEC)
        try:
            _memfd_dev = os.fstat(fd).st_dev
        finally:
            os.close(fd)
    return _memfd_dev


def discard_fds(fds: Iterable[int]) -> None:
    """Close descriptors a peer sent (taken) without ever blocking the calling thread.

    Pipes and memfds are closed here: their last close cannot block. Anything else (a
    socket with ``SO_LINGER``, a device, a file on a network or FUSE mount) goes to the
    closer thread, which switches a socket's linger off before closing it.
    """
    dev = _memfd_dev if _memfd_dev is not None else _memfd_device()
    for fd in fds:
        try:
            # Only shmem and hugetlbfs files have seals, and their close never blocks: the
            # common case (a region) in one cheap call.
            fcntl.fcntl(fd, _F_GET_SEALS)
        except OSError:
            pass
        else:
            os.close(fd)
            continue
        try:
            st = os.fstat(fd)
        except OSError:
            continue
        mode = st.st_mode
        if stat.S_ISFIFO(mode) or (stat.S_ISREG(mode) and st.st_dev == dev):
            with contextlib.suppress(OSError):
                os.close(fd)
        else:
            try:
                closer().put(fd)
            except RuntimeError:  # no new threads (interpreter shutdown): close it here
                _close_unlingered(fd)


def discard_socket(sock: socket.socket) -> None:
    """Close a connection a peer may have filled with descriptors (taken) without blocking.

    ``shutdown(SHUT_RD)`` first: from then on the peer's sends fail (EPIPE), so nothing new
    can be queued. If nothing is queued (a peek finds end-of-file and no descriptors), the
    close cannot block and happens here; else the closer thread receives and discards what
    is queued, then closes it.
    """
    try:
        sock.shutdown(socket.SHUT_RD)
        data, _, mflags, _ = sock.recvmsg(1, 0, _PEEK_NOWAIT)
        if not data and not mflags & _CTRUNC:
            sock.close()
            return
    except OSError:
        pass
    try:
        closer().put(sock)
    except RuntimeError:  # no new threads (interpreter shutdown)
        sock.close()


class _Closer:
    """One thread that closes what a peer sent us, so that no blocking close ever runs on
    a thread that serves others."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[int | socket.socket] = queue.SimpleQueue()
        threading.Thread(target=self._run, name="ashmem-binder-closer", daemon=True).start()

    def put(self, job: int | socket.socket) -> None:
        self._jobs.put(job)

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                if isinstance(job, socket.socket):
                    self._drain_and_close(job)
                else:
                    _close_unlingered(job)
            except Exception:  # pragma: no cover - nothing may stop this thread
                pass

    @staticmethod
    def _drain_and_close(sock: socket.socket) -> None:
        try:
            sock.setblocking(False)
            for _ in range(4096):
                msg, anc, _, _ = sock.recvmsg(MAX_MESSAGE, CMSG_SPACE, RECV_FLAGS | DONTWAIT)
                for fd in take_fds(anc):
                    _close_unlingered(fd)
                if not msg and not anc:
                    break
        except OSError:
            pass
        sock.close()


def _close_unlingered(fd: int) -> None:
    try:
        if stat.S_ISSOCK(os.fstat(fd).st_mode):
            sock = socket.socket(fileno=fd)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_OFF)
            sock.close()
            return
    except OSError:
        pass
    with contextlib.suppress(OSError):
        os.close(fd)


_closer: _Closer | None = None
_closer_lock = threading.Lock()


def closer() -> _Closer:
    """This process's closer thread, started on first use."""
    global _closer
    if _closer is None:
        with _closer_lock:
            if _closer is None:
                _closer = _Closer()
    return _closer


def _after_fork_in_child() -> None:
    global _closer, _closer_lock
    _closer_lock = threading.Lock()
    _closer = None  # the thread did not survive the fork; its queue is the parent's


os.register_at_fork(after_in_child=_after_fork_in_child)


def check(msg: bytes, mflags: int, nfds: int) -> tuple[int, int, int, int]:
    """Validate a received datagram: ``(kind, flags, code, seq)``.

    Raises ``MessageError`` for anything malformed; the caller still owns (and must close)
    the descriptors that came with it.
    """
    if not mflags & _TRUNCATED and len(msg) >= HEADER_SIZE:
        prefix, kind, flags, declared, reserved, code, seq = FAST.unpack_from(msg)
        if (
            prefix == PREFIX
            and 0 < kind <= STREAM
            and not flags & ~F_ALL
            and not reserved
            and declared == nfds <= MAX_FDS
            and (
                not flags & F_SPILLED
                or (nfds and len(msg) == HEADER_SIZE + (TOKEN_SIZE if kind == NESTED else 0))
            )
        ):
            return kind, flags, code, seq
    raise _diagnose(msg, mflags, nfds)


def _diagnose(msg: bytes, mflags: int, nfds: int) -> MessageError:
    """Why ``check`` rejected a datagram."""
    if mflags & _CTRUNC:
        declared = msg[5] if len(msg) >= HEADER_SIZE and msg[:3] == PREFIX else None
        if declared is not None and declared <= MAX_FDS and nfds < declared:
            # The kernel could not install all of them here: our own table is full.
            return OwnDescriptorsExhausted(
                f"this process ran out of descriptors (RLIMIT_NOFILE) receiving a message "
                f"with {declared}; it got {nfds} and the rest were lost. The peer did nothing "
                "wrong; close descriptors or raise the limit"
            )
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


class OwnDescriptorsExhausted(MessageError):
    """``check``: a message lost descriptors because *this* process's descriptor table is
    full (MSG_CTRUNC with fewer than the header declares); the sender is not at fault."""


class Outgoing:
    """A Parcel as it goes on the wire (``Parcel._outgoing`` makes it; libbinder's
    ``ipcData``/``ipcObjects``): what the transport may know of a Parcel, and nothing more.

    ``flags``: ``F_SPILLED`` or 0. ``parts``: the buffers of the payload (empty when
    spilled). ``fds``: the descriptors to attach, in order, *borrowed* from the Parcel, and
    when spilled the spill region first. ``spill_fd``: that region, *owned* by this object
    (-1 if none): ``close()`` closes it once the message is sent (idempotent).
    ``binders``: the Parcel carries local binders, so the receiver may call back.
    ``size``: the bytes in ``parts``.

    >>> out = Outgoing(0, [b"x"], (), -1, False); out.close(); out.spill_fd
    -1
    """

    __slots__ = ("binders", "fds", "flags", "parts", "size", "spill_fd")

    def __init__(
        self,
        flags: int,
        parts: list[Any],
        fds: Sequence[int],
        spill_fd: int,
        binders: bool,
        size: int = 0,
    ) -> None:
        self.flags = flags
        self.parts = parts
        self.fds = fds
        self.spill_fd = spill_fd
        self.binders = binders
        self.size = size  # bytes in ``parts``

    def close(self) -> None:
        """Close the spill region, if any. Safe to call more than once."""
        fd, self.spill_fd = self.spill_fd, -1
        if fd >= 0:
            os.close(fd)


#: What an absent Parcel sends: nothing (shared; it owns no descriptor).
EMPTY = Outgoing(0, [], (), -1, False)


def send_message(
    sock: socket.socket,
    kind: int,
    flags: int,
    code: int,
    seq: int,
    outgoing: Outgoing,
    send_flags: int,
) -> None:
    """Send one message (``outgoing``'s descriptors borrowed; the caller closes it after);
    ``flags`` are added to the header's (``F_ONEWAY``). Raises the socket's OSError."""
    fds = outgoing.fds
    parts = outgoing.parts
    header = pack(kind, flags | outgoing.flags, len(fds), code, seq)
    if fds:
        sock.sendmsg([header, *parts], rights(fds), send_flags)
    else:
        sock.sendmsg([header, *parts], (), send_flags)


def record(code: int, outgoing: Outgoing) -> bytes:
    """The header of a one-way stream record carrying ``outgoing`` (see the module doc)."""
    return HEADER.pack(
        MAGIC,
        VERSION,
        TRANSACTION,
        F_ONEWAY | outgoing.flags,
        len(outgoing.fds),
        0,
        code,
        outgoing.size,
    )


def send_record(sock: socket.socket, code: int, outgoing: Outgoing, send_flags: int) -> None:
    """Send one one-way record on a stream (``outgoing``'s descriptors borrowed), all of
    it: a stream ``sendmsg`` may take only part (a timeout, a signal), and the rest then
    follows, without descriptors. Raises the socket's OSError; after one the stream is
    unusable (a record may be cut), so the caller closes it."""
    parts = [record(code, outgoing), *outgoing.parts]
    fds = outgoing.fds
    sent = sock.sendmsg(parts, rights(fds) if fds else (), send_flags)
    if sent != HEADER_SIZE + outgoing.size:
        sock.sendall(unsent(parts, sent), send_flags)


def unsent(parts: list[Any], sent: int) -> bytes:
    """What is left of a record sent as ``parts`` after a stream send took ``sent`` bytes
    (the rest goes without descriptors: they went with the first bytes)."""
    return b"".join(bytes(part) for part in parts)[sent:]


class Stream:
    """The receiving end of a one-way stream (see the module doc): the bytes read and not
    yet taken, and the descriptors received and not yet given to a record. At most one
    receive of unread bytes beyond a cut record (2 x MAX_MESSAGE) and ``2 * MAX_FDS``
    descriptors are ever held. The reader owns it; ``discard()`` closes what it holds."""

    __slots__ = ("data", "dry", "error", "fds", "held", "pos")

    def __init__(self) -> None:
        self.data = b""
        self.pos = 0  # where the next record starts in ``data``
        self.fds: list[int] = []
        self.error: BaseException | None = None  # a failed receive, raised again by fill
        # Nothing more is likely waiting in the socket: the last receive found nothing,
        # or took less than it had room for (all there was). A hint for when to wait.
        self.dry = False
        self.held = (0, 0)  # (bytes, descriptors) booked while no thread reads it

    def fill(self, sock: socket.socket, flags: int = RECV_FLAGS | DONTWAIT) -> bool:
        """Receive once (``flags``: without waiting). False at end-of-file. Raises
        ``BlockingIOError`` if nothing is waiting (or the receive timeout expired); the
        receive's ``OSError`` or a ``MessageError`` (descriptors cut off, too many
        waiting), which every later call raises again."""
        if self.error is not None:
            raise self.error
        # socket.recvmsg, not recv_fds: one receive here takes many records, so a cheaper
        # receive saves little per record, and the runs that had it here read one-way
        # calls no faster (docs/performance.md, the eighth pass).
        try:
            chunk, anc, mflags, _ = sock.recvmsg(MAX_MESSAGE, CMSG_SPACE, flags)
        except BlockingIOError:
            self.dry = True
            raise
        except OSError as exc:
            self.error = exc
            raise
        fds = self.fds
        if anc:
            fds += take_fds(anc)
        if mflags & _CTRUNC or len(fds) > 2 * MAX_FDS or (anc and not chunk):
            self.error = MessageError(
                f"one-way stream: {len(fds)} descriptors arrived ahead of their records "
                f"(at most {2 * MAX_FDS} may wait), or some were cut off (MSG_CTRUNC: over "
                f"{MAX_FDS} for one record, or this process is out of descriptors)"
            )
            raise self.error
        self.dry = len(chunk) < MAX_MESSAGE
        if not chunk:
            return False
        data, pos = self.data, self.pos
        self.data = data[pos:] + chunk if pos < len(data) else chunk
        self.pos = 0
        return True

    def take(self) -> tuple[bytes, list[int]] | None:
        """The next complete record (header included) and its descriptors, or None until
        it has all arrived. ``MessageError`` for a record that cannot be valid (too long,
        too many descriptors, fewer descriptors arrived than it declares)."""
        data, pos = self.data, self.pos
        if len(data) - pos < HEADER_SIZE:
            return None
        nfds = data[pos + 5]
        length = CODE.unpack_from(data, pos + 12)[0]
        if length > MAX_INLINE or nfds > MAX_FDS:
            raise MessageError(
                f"one-way stream record of {length} bytes with {nfds} descriptors (at most "
                f"{MAX_INLINE} bytes and {MAX_FDS} descriptors)"
            )
        end = pos + HEADER_SIZE + length
        if end > len(data):
            return None
        fds = self.fds
        if len(fds) < nfds:
            raise MessageError(
                f"one-way stream record declares {nfds} descriptors but {len(fds)} arrived"
            )
        taken = fds[:nfds]
        del fds[:nfds]
        self.pos = end
        return data[pos:end], taken

    def ready(self) -> bool:
        """A complete record is waiting here (not in the socket)."""
        data, pos = self.data, self.pos
        if len(data) - pos < HEADER_SIZE:
            return False
        length: int = CODE.unpack_from(data, pos + 12)[0]
        return pos + HEADER_SIZE + length <= len(data)

    def discard(self) -> None:
        """Drop what is held: the bytes (a cut record is never run) and the descriptors."""
        fds, self.fds = self.fds, []
        self.data = b""
        self.pos = 0
        if fds:
            discard_fds(fds)


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


def open_spilled(fd: int, max_size: int | None = None) -> Mapping:
    """Map a spilled payload read-only. Borrows ``fd`` (the caller closes it).

    Raises ``BadParcel`` unless ``fd`` is a region whose size and contents are sealed, of
    at most ``max_size`` bytes (default: the ``max_spill`` limit), and fully allocated (no
    hole: reading a hole of a shmem file allocates a page charged to the reader, so a
    sparse payload would cost its sender nothing and us its whole declared size).
    """
    size = region.region_size(fd)
    if size is None:
        raise BadParcel("the spilled payload is not an ashmem region with a sealed size")
    if size == 0:
        raise BadParcel("the spilled payload is an empty region")
    if max_size is None:
        max_size = get_limits().max_spill
    if size > max_size:
        raise BadParcel(
            f"the spilled payload is {size} bytes, more than this process accepts "
            f"(max_spill = {max_size}; see ashmem.binder.set_limits)"
        )
    try:
        sealed = region.contents_sealed_region(fd)
    except (OSError, ValueError) as exc:
        raise BadParcel(f"cannot inspect the spilled payload: {exc}") from exc
    if not sealed:
        raise BadParcel(
            "the spilled payload is not sealed with F_SEAL_WRITE: its sender could still "
            "change it while it is read"
        )
    try:
        # F_SEAL_WRITE (checked above) also forbids punching holes later, and F_SEAL_GROW
        # allocating past the end: what we see now stays true while we read.
        hole = os.lseek(fd, 0, os.SEEK_HOLE)
    except OSError as exc:
        raise BadParcel(f"cannot inspect the spilled payload: {exc}") from exc
    if hole < size:
        raise BadParcel(
            f"the spilled payload has a hole at offset {hole} of {size} bytes: a spill must "
            "be fully written (its sender pays for its memory, not the receiver)"
        )
    return Mapping(fd, size, region.PROT_READ, 0, SPILL_NAME)
