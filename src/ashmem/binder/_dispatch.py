"""Per-connection dispatch of the binder thread pool (Android's ``IPCThreadState``
``executeCommand``): what a pool thread does with the messages of the connection it owns —
HELLO, a two-way call and its reply, a one-way call and the per-binder queue that delivers
them in order, refusals. Process state (threads, epoll, listeners, stop, fork) is
``_pool``'s, admission ``_gate``'s; the ownership rule in ``_pool``'s docstring holds here:
a method that returns False (or True, for ``_oneway``) no longer owns the connection.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import weakref
from typing import TYPE_CHECKING

from .._errors import MessageError
from . import _wire
from ._binder import (
    FIRST_CALL_TRANSACTION,
    FLAG_ONEWAY,
    INTERFACE_TRANSACTION,
    LAST_CALL_TRANSACTION,
    PING_TRANSACTION,
    Binder,
    _per_thread,
)
from ._errors import BadParcel
from ._gate import Gate, _Connection
from ._limits import get_limits
from ._parcel import Parcel

if TYPE_CHECKING:
    from ._pool import _Node

__all__ = ["Dispatch"]

logger = logging.getLogger("ashmem.binder")

_BUSY_NAME = "ashmem.binder.ServiceBusyError"
_RECV_NOWAIT = _wire.RECV_FLAGS | _wire.DONTWAIT
_SEND_NOWAIT = _wire.SEND_FLAGS | _wire.DONTWAIT
_ERROR_TEXT_MAX = 4096
_NO_FDS: list[int] = []  # shared, never mutated: what a message without descriptors carries
_TRANSACTION = _wire.TRANSACTION
_HEADER_SIZE = _wire.HEADER_SIZE
_MAX_MESSAGE = _wire.MAX_MESSAGE
_MAX_INLINE = _wire.MAX_INLINE
_CMSG_SPACE = _wire.CMSG_SPACE
_recv_fds = _wire.recv_fds
_send_recv_fds = _wire.send_recv_fds
_SendFailed = _wire.SendFailed
_from_wire = Parcel._from_wire
_REPLY_HEADER = _wire.PREFIXED.pack
_REPLY_PREFIX = _wire.REPLY_PREFIX
_ONEWAY_PREFIX = _wire.ONEWAY_PREFIX
_CALL_PREFIX = _wire.CALL_PREFIX
# The first 8 header bytes of a plain two-way call (TRANSACTION, no flags, nothing reserved)
# declaring n descriptors -> n: with ``len(msg) >= HEADER_SIZE``, no MSG_TRUNC/MSG_CTRUNC and
# n descriptors received, exactly what ``_wire.check`` accepts for that shape.
_PLAIN_CALLS = {_wire.pack(_wire.TRANSACTION, 0, n, 0, 0)[:8]: n for n in range(_wire.MAX_FDS + 1)}
_CODE_SEQ = _wire.CODE_SEQ.unpack_from
# A record's header as (first 8 bytes, code, payload length): see _wire.ONEWAY_PREFIX.
_RECORD_HEADER = _wire.PREFIXED.unpack_from
_TRUNCATED = _wire.TRUNCATED
#: One-way calls the deliverer takes from its own connection between two looks at the
#: binder's queue (which other connections fill): bounds how long they wait for it.
ONEWAY_BATCH = 64


class Dispatch(Gate):
    """The dispatch half of ``_ProcessState``: one connection's messages, on the thread
    that owns it. Uses the pool's ``_rearm``/``_drop`` (hand a connection back, or end it)
    and its token registry."""

    host_address: bytes
    _idle: int
    _served: int
    _by_token: weakref.WeakValueDictionary[bytes, _Node]

    if TYPE_CHECKING:

        def _rearm(self, conn: _Connection, now: bool = False) -> None: ...

        def _register(self, conn: _Connection, stream: socket.socket) -> bool: ...

        def _drop(self, conn: _Connection, eof: bool = False) -> None: ...

        def _admit(self, conn: _Connection, node: _Node) -> bool: ...

    def _refuse(self, conn: _Connection, code: int, reason: str) -> None:
        """Tell the peer why, then drop the connection."""
        self._refused += 1
        text = reason.encode("utf-8", "replace")[: _wire.MAX_INLINE]
        with contextlib.suppress(OSError):
            conn.sock.sendmsg([_wire.pack(_wire.REFUSED, 0, 0, code, 0), text], (), _SEND_NOWAIT)
        self._drop(conn)

    def _busy(self, conn: _Connection, code: int, seq: int, why: str) -> bool:
        """Refuse one two-way call because *we* ran short: the caller gets
        ``ServiceBusyError`` and keeps its connection. False if the connection was lost."""
        node = conn.node
        self._log.warning(
            "busy-call",
            "binder: refused a call from pid %d (uid %d) to %s: %s",
            conn.creds.pid,
            conn.creds.uid,
            node.label if node is not None else "?",
            why,
        )
        error = Parcel()
        error.write_string(_BUSY_NAME)
        error.write_string(f"{node.label if node else 'the service'} is busy: {why}")
        return self._send_exception(conn, seq, error)

    def _serve(self, conn: _Connection) -> None:
        """Read and handle messages on ``conn``, which this thread owns until it re-arms or
        drops it."""
        if conn.stream is not None:
            self._serve_stream(conn)
            return
        sock = conn.sock
        identity = _per_thread.identity  # this thread's, set per plain call below
        flags = _RECV_NOWAIT
        # An empty reply to send before waiting on for the next call: both in one call
        # (one release of the GIL), when this thread lingers here after a plain call.
        pending: bytes | None = None
        while True:
            try:
                if pending is None:
                    msg, fds, mflags = _recv_fds(sock, _MAX_MESSAGE, _CMSG_SPACE, flags)
                else:
                    reply_header, pending = pending, None
                    msg, fds, mflags = _send_recv_fds(
                        sock, reply_header, _SEND_NOWAIT, _MAX_MESSAGE, _CMSG_SPACE, flags
                    )
            except _SendFailed:  # the caller went away, or does not read its replies
                self._drop(conn)
                return
            except BlockingIOError:  # nothing (more) to read, or the linger expired
                self._rearm(conn)
                return
            except OSError:
                self._drop(conn)
                return
            if fds is None:
                fds = _NO_FDS
            if not msg:
                _wire.discard_fds(fds)
                self._drop(conn, eof=not fds)
                return
            if not conn.greeted and fds:
                # Descriptors before HELLO: closed unseen (the closer takes them).
                _wire.discard_fds(fds)
                self._refuse(conn, _wire.REFUSED_PROTOCOL, "the first message must be HELLO")
                return
            if (
                (msg[:8] == _CALL_PREFIX if not fds else _PLAIN_CALLS.get(msg[:8]) == len(fds))
                and len(msg) >= _HEADER_SIZE
                and not mflags & _TRUNCATED
                and conn.greeted
                and not (fds and self._short_of_fds_often(fds[0]))
            ):
                # run_plain: a plain two-way call (what ``check`` would look at for this one
                # shape: not spilled, as many descriptors as it declares, see _PLAIN_CALLS)
                # from a greeted peer, with room for what it brought, run here as ``_call``
                # would, without its helper calls: decode, on_transact, reply, all on this
                # thread. Anything else takes the full path (a call that finds us short of
                # descriptors too: it probes again there and answers busy).
                code, seq = _CODE_SEQ(msg, 8)
                if fds or len(msg) > _HEADER_SIZE:
                    data = _from_wire(msg, _HEADER_SIZE, fds)
                else:  # nothing but the header: a new Parcel is that same empty Parcel
                    data = Parcel()
                reply = Parcel()
                node = conn.node
                assert node is not None
                binder = node.pinned  # a greeted connection pins its node's binder
                assert binder is not None
                # ``with conn:`` (Caller.__enter__/__exit__), inline. ``cleared`` is reset
                # on the way in too: the thread running serve() may come here with a
                # clear_calling_identity() block of its own left open.
                identity.caller = conn
                identity.cleared = False
                try:
                    if FIRST_CALL_TRANSACTION <= code <= LAST_CALL_TRANSACTION:
                        status = 0 if binder.on_transact(code, data, reply, 0) else 1
                    else:
                        status = _invoke(binder, code, data, reply, 0)
                except BaseException as exc:
                    identity.caller = None
                    identity.cleared = False
                    self._served += 1
                    data.close()
                    reply.close()
                    if not self._reply_error(conn, node, code, seq, exc):
                        return
                else:
                    identity.caller = None
                    identity.cleared = False
                    self._served += 1
                    if fds:
                        # What the peer sent: closed now, as ``_call`` does, whether or not
                        # the reply can be sent (on_transact may keep ``data``: a caller
                        # that hangs up must not leave its descriptors with us).
                        data.close()
                    if reply._wire_empty():
                        if self._idle > 0 and not self._stopping:
                            # Lingering: sent at the top of the loop, with the next receive.
                            pending = _REPLY_HEADER(_REPLY_PREFIX, status, seq)
                            data = reply = binder = None  # type: ignore[assignment]
                            flags = _wire.RECV_FLAGS
                            continue
                        try:
                            sock.send(_REPLY_HEADER(_REPLY_PREFIX, status, seq), _SEND_NOWAIT)
                        except OSError:  # the caller went away, or does not read its replies
                            self._drop(conn)
                            return
                    elif not self._reply(conn, node, code, seq, status, reply):
                        return
                # Hold nothing of this call while waiting for the next (descriptors written
                # into ``data`` are closed with it, by its ``_OwnFds``).
                data = reply = binder = None  # type: ignore[assignment]
                if self._idle > 0 and not self._stopping:
                    flags = _wire.RECV_FLAGS
                    continue
                self._rearm(conn)
                return
            else:
                try:
                    kind, mflags, code, seq = _wire.check(msg, mflags, len(fds))
                except _wire.OwnDescriptorsExhausted as exc:
                    # We ran out, not the peer: the message lost descriptors, so it cannot run.
                    _wire.discard_fds(fds)
                    if conn.greeted and len(msg) >= _HEADER_SIZE and msg[3] == _TRANSACTION:
                        if msg[4] & _wire.F_ONEWAY:
                            self._log.warning(
                                "lost",
                                "binder: lost a one-way call from pid %d: %s",
                                conn.creds.pid,
                                exc,
                            )
                        elif not self._busy(conn, 0, _wire.HEADER.unpack_from(msg)[7], str(exc)):
                            return
                        self._rearm(conn)
                        return
                    self._refuse(conn, _wire.REFUSED_BUSY, str(exc))
                    return
                except MessageError as exc:
                    _wire.discard_fds(fds)
                    version = len(msg) >= 3 and msg[:2] == _wire.MAGIC and msg[2] != _wire.VERSION
                    reason = _wire.REFUSED_VERSION if version else _wire.REFUSED_PROTOCOL
                    logger.debug("binder: dropping pid %d: %s", conn.creds.pid, exc)
                    self._refuse(conn, reason, str(exc))
                    return
            if kind == _wire.TRANSACTION and conn.greeted:
                if mflags & _wire.F_ONEWAY:
                    if self._oneway(conn, code, mflags, msg, fds):
                        return
                elif fds and self._short_of_fds_often(fds[0]):
                    _wire.discard_fds(fds)
                    if not self._busy(conn, code, seq, "it is out of descriptors (RLIMIT_NOFILE)"):
                        return
                elif not self._call(conn, code, mflags, seq, msg, fds):
                    return
            elif kind == _wire.STREAM and conn.greeted:
                self._adopt_stream(conn, seq, fds)
                return
            elif not conn.greeted:
                if kind != _wire.HELLO:
                    self._refuse(conn, _wire.REFUSED_PROTOCOL, "the first message must be HELLO")
                    return
                if not self._hello(conn, msg, seq):
                    return
            else:
                _wire.discard_fds(fds)
                self._refuse(
                    conn, _wire.REFUSED_PROTOCOL, f"unexpected {_wire.KIND_NAMES[kind]} message"
                )
                return
            # Linger on this connection only while someone else watches the others.
            if self._idle > 0 and not self._stopping:
                flags = _wire.RECV_FLAGS
            else:
                self._rearm(conn)
                return

    def _hello(self, conn: _Connection, msg: bytes, seq: int) -> bool:
        token = msg[_wire.HEADER_SIZE :]
        node = conn.node
        if node is None:
            if len(token) != _wire.TOKEN_SIZE:
                self._refuse(conn, _wire.REFUSED_PROTOCOL, "HELLO needs a 16-byte binder token")
                return False
            node = self._by_token.get(token)
            if node is None or node.closed:
                self._refuse(
                    conn, _wire.REFUSED_NO_SUCH_BINDER, "no such binder here (it was released)"
                )
                return False
            conn.node = node
            if not self._admit(conn, node):
                return False
        elif token:
            self._refuse(conn, _wire.REFUSED_PROTOCOL, "a named service's HELLO takes no token")
            return False
        # (A named service's policy was checked at accept.)
        with self._lock:
            self._forget_pending(conn)
        with node.lock:
            closed = node.closed or not node.pin()
            if not closed:
                node.conns.add(conn)
        if closed:
            self._refuse(conn, _wire.REFUSED_NO_SUCH_BINDER, f"{node.label} is shutting down")
            return False
        conn.greeted = True
        welcome = _wire.encode_reference(self.host_address, node.token)
        try:
            conn.sock.sendmsg([_wire.pack(_wire.WELCOME, 0, 0, 0, seq), welcome], (), _SEND_NOWAIT)
        except OSError:
            self._drop(conn)
            return False
        return True

    def _parcel(self, conn: _Connection, msg: bytes, flags: int, fds: list[int]) -> Parcel | None:
        try:
            return Parcel._from_wire(msg, _HEADER_SIZE, fds, flags)
        except (BadParcel, OSError) as exc:
            logger.debug("binder: dropping pid %d: %s", conn.creds.pid, exc)
            self._refuse(conn, _wire.REFUSED_PROTOCOL, f"bad spilled payload: {exc}")
            return None

    def _call(
        self, conn: _Connection, code: int, flags: int, seq: int, msg: bytes, fds: list[int]
    ) -> bool:
        """A two-way transaction. False if this thread no longer owns the connection
        (dropped, or handed back to the pool)."""
        data = self._parcel(conn, msg, flags, fds)
        if data is None:
            return False
        node = conn.node
        assert node is not None
        reply = Parcel()
        try:
            with conn:
                # A greeted connection pins its node's binder (see _Node.pin).
                binder = node.pinned
                assert binder is not None
                if FIRST_CALL_TRANSACTION <= code <= LAST_CALL_TRANSACTION:
                    status = 0 if binder.on_transact(code, data, reply, 0) else 1
                else:
                    status = _invoke(binder, code, data, reply, 0)
        except BaseException as exc:
            self._served += 1
            data.close()
            reply.close()
            return self._reply_error(conn, node, code, seq, exc)
        self._served += 1
        if reply._wire_empty():
            # The common case, an empty reply: one send of the header.
            try:
                conn.sock.send(_REPLY_HEADER(_REPLY_PREFIX, status, seq), _SEND_NOWAIT)
                kept = True
            except OSError:  # the caller went away, or does not read its replies
                self._drop(conn)
                kept = False
        else:
            kept = self._reply(conn, node, code, seq, status, reply)
        if flags:
            # A spilled payload: unmapping it frees its pages if ours is the last
            # reference, which takes a while for a large one. Reply first, and let another
            # thread take the caller's next call meanwhile.
            if kept:
                self._rearm(conn)
            data.close()
            return False
        if data.has_file_descriptors():
            data.close()
        return kept

    def _reply(
        self, conn: _Connection, node: _Node, code: int, seq: int, status: int, reply: Parcel
    ) -> bool:
        try:
            try:
                outgoing = reply._outgoing()
            except OSError as exc:  # the reply could not be spilled (ENOSPC, EMFILE, ...)
                return self._reply_error(conn, node, code, seq, exc)
            if outgoing.binders:
                self.grant(conn.creds.uid)  # it may call back the binders we hand it
            try:
                _wire.send_message(conn.sock, _wire.REPLY, 0, status, seq, outgoing, _SEND_NOWAIT)
            finally:
                outgoing.close()
        except OSError:  # the caller went away, or does not read its replies
            self._drop(conn)
            return False
        finally:
            reply.close()
        return True

    def _reply_error(
        self, conn: _Connection, node: _Node, code: int, seq: int, exc: BaseException
    ) -> bool:
        return self._send_exception(conn, seq, _error_parcel(node, code, conn, exc))

    def _send_exception(self, conn: _Connection, seq: int, error: Parcel) -> bool:
        """Send ``error`` as the EXCEPTION answer to call ``seq`` and close it. False (and the
        connection dropped) if it could not be sent."""
        try:
            _wire.send_message(
                conn.sock, _wire.EXCEPTION, 0, 0, seq, error._outgoing(), _SEND_NOWAIT
            )
        except OSError:
            self._drop(conn)
            return False
        finally:
            error.close()
        return True

    def _oneway(self, conn: _Connection, code: int, flags: int, msg: bytes, fds: list[int]) -> bool:
        """Queue a one-way transaction, delivering the queue if nobody is. True if this
        thread let go of the connection (dropped, or parked until the queue drains)."""
        data = self._parcel(conn, msg, flags, fds)
        if data is None:
            return True
        node = conn.node
        assert node is not None
        held = data._wire_fds()
        nfds = len(held)
        short = bool(held) and self._short_of_fds_often(held[0])
        size = data.data_size()
        limits = get_limits()
        over = False
        with node.lock:
            node.queue.append((conn.oneway_caller, code, data, nfds, size))
            node.queued_fds += nfds
            node.queued_bytes += size
            if node.draining:
                # Someone delivers; keep reading, unless the queue is over a limit: then
                # nobody reads this sender until the deliverer re-arms it.
                if (
                    len(node.queue) >= limits.oneway_backlog
                    or node.queued_fds >= limits.oneway_backlog_fds
                    or node.queued_bytes >= limits.oneway_backlog_bytes
                    or short
                ) and not (node.closed or self._stopping):
                    # A stream keeps what it read beyond this call while parked: booked
                    # against its uid, or it is dropped.
                    if conn.stream is None or self._hold(conn):
                        node.parked.append(conn)
                        return True
                    over = True
                else:
                    return False
            else:
                node.draining = True
        if over:
            self._stream_error(conn, _OverHeld(conn.creds.uid))
            return True
        # Deliver the queue, ours first; then, for a stream, the plain records it holds or
        # has waiting: one thread reads and delivers a busy sender's calls, no epoll round
        # trip between them. Others reading other connections append to the queue
        # meanwhile, and we deliver theirs too, in the order they were appended.
        self._drain(node, conn if conn.stream is not None else None)
        return False

    def _drain(self, node: _Node, conn: _Connection | None) -> None:
        """Deliver ``node``'s queue; whenever it is empty, deliver the plain records the
        one-way stream ``conn`` (which this thread owns) holds or has waiting, in batches
        (``_own_stream_oneways``), until it has nothing more, then finish when the queue is
        empty too."""
        queue = node.queue
        while True:
            unparked: list[_Connection] | tuple[()] = ()
            with node.lock:
                if not queue and conn is not None and not self._stopping:
                    # Still the deliverer (draining stays True): read our sender's next
                    # calls, outside the lock; others keep appending to the queue.
                    done = False
                    own = True
                elif not queue or self._stopping:
                    own = False
                    node.draining = False
                    leftovers = list(queue)
                    queue.clear()
                    node.queued_fds = node.queued_bytes = 0
                    unparked, node.parked = node.parked, []
                    done = True
                    node.unpin_if_idle()
                else:
                    own = False
                    caller, code, data, nfds, size = queue.popleft()
                    node.queued_fds -= nfds
                    node.queued_bytes -= size
                    if node.parked:
                        limits = get_limits()
                        if (
                            len(queue) <= limits.oneway_backlog // 2
                            and node.queued_fds <= limits.oneway_backlog_fds // 2
                            and node.queued_bytes <= limits.oneway_backlog_bytes // 2
                        ):
                            unparked, node.parked = node.parked, []
                    done = False
            for parked in unparked:
                # Parked connections are ours to hand back to epoll; a stream may hold
                # records it read before it was parked: those are served at once.
                stream = parked.stream
                self._rearm(parked, stream is not None and stream.ready())
            if done:
                for _, _, stale, _, _ in leftovers:
                    stale.close()
                return
            if own:
                assert conn is not None
                if not self._own_stream_oneways(node, conn):
                    conn = None  # it has nothing more for the batch: finish with the queue
                continue
            self._served += 1
            try:
                with caller:
                    _invoke(node.binder, code, data, Parcel(), FLAG_ONEWAY)
            except BaseException:
                _oneway_raised(code, node, caller.creds.pid)
            finally:
                data.close()

    # -- one-way streams ------------------------------------------------------------------

    def _adopt_stream(self, conn: _Connection, seq: int, fds: list[int]) -> None:
        """STREAM: make a one-way stream, send the peer its end and serve ours instead of
        ``conn``'s socket. This thread lets go of ``conn``."""
        if fds:
            _wire.discard_fds(fds)
            self._refuse(conn, _wire.REFUSED_PROTOCOL, "STREAM takes no descriptor")
            return
        try:
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        except OSError as exc:  # EMFILE, ENFILE, ENOMEM: our shortage
            self._refuse(conn, _wire.REFUSED_BUSY, f"cannot make a one-way stream: {exc}")
            return
        try:
            with theirs:
                conn.sock.sendmsg(
                    [_wire.pack(_wire.REPLY, 0, 1, _wire.STATUS_OK, seq)],
                    _wire.rights([theirs.fileno()]),
                    _SEND_NOWAIT,
                )
        except OSError:
            ours.close()
            self._drop(conn)
            return
        self._register(conn, ours)

    def _serve_stream(self, conn: _Connection) -> None:
        """``_serve`` for a one-way stream: take its records in order, receiving whenever no
        complete one is held, until the socket has nothing more; then linger on it (a
        blocking receive, ``SO_RCVTIMEO``) while someone else watches the other
        connections, as ``_serve`` does, and re-arm it. A plain record ahead, with nobody
        delivering this binder's queue, starts a delivery here (``_drain``), which takes the
        plain records that follow in a batch."""
        stream = conn.stream
        node = conn.node
        assert stream is not None and node is not None
        self._unhold(conn)
        sock = conn.sock
        lock = node.lock
        flags = _RECV_NOWAIT
        while True:
            try:
                data, pos = stream.data, stream.pos
                if data[pos : pos + 8] == _ONEWAY_PREFIX and stream.ready():
                    lock.acquire()  # by hand: ``with`` costs more, once per batch here
                    deliver = not (node.draining or node.queue or self._stopping)
                    if deliver:
                        node.draining = True
                    lock.release()
                    if deliver:
                        # The queue was empty: our records first, straight (``_drain``
                        # would start with them too), looking at the queue between two
                        # batches; then ``_drain`` delivers what others queued meanwhile
                        # and stops delivering.
                        while self._own_stream_oneways(node, conn) and not node.queue:
                            pass
                        self._drain(node, None)
                        if stream.pos != pos or stream.data is not data:
                            continue
                        # Not one taken (a length over MAX_INLINE): the full path judges it.
                record = stream.take()
                if record is None:
                    if stream.dry and self._idle > 0 and not self._stopping:
                        flags = _wire.RECV_FLAGS  # found empty just now: linger at once
                    if not stream.fill(sock, flags):
                        self._drop(conn, eof=True)  # a cut record goes with it, unrun
                        return
                    flags = _RECV_NOWAIT
                    continue
            except BlockingIOError:
                if flags == _RECV_NOWAIT and self._idle > 0 and not self._stopping:
                    flags = _wire.RECV_FLAGS
                    continue
                if not self._hold(conn, stalled=True):  # waits with part of a record
                    self._stream_error(conn, _OverHeld(conn.creds.uid))
                    return
                self._rearm(conn)
                return
            except OSError:
                self._drop(conn)
                return
            except MessageError as exc:
                self._stream_error(conn, exc)
                return
            msg, fds = record
            try:
                kind, mflags, code, _ = _wire.check(msg, 0, len(fds))
                if kind != _TRANSACTION or not mflags & _wire.F_ONEWAY:
                    raise MessageError(f"a {_wire.KIND_NAMES[kind]} message on a one-way stream")
            except MessageError as exc:
                _wire.discard_fds(fds)
                self._stream_error(conn, exc)
                return
            if self._oneway(conn, code, mflags, msg, fds):
                return

    def _stream_error(self, conn: _Connection, exc: MessageError) -> None:
        """A one-way stream broke the protocol: drop it, and with it whatever it holds (a
        stream has no way back for a REFUSED; its sender sees EPIPE)."""
        self._refused += 1
        self._log.warning(
            f"stream {conn.creds.uid}",
            "binder: dropping the one-way stream of pid %d (uid %d): %s",
            conn.creds.pid,
            conn.creds.uid,
            exc,
        )
        self._drop(conn)

    def _own_stream_oneways(self, node: _Node, conn: _Connection) -> bool:
        """Run, one by one, up to ``ONEWAY_BATCH`` plain records (no descriptors, not
        spilled) of the one-way stream ``conn``: from what was read and, when that runs
        out, from one more receive at a time, never waiting. Each runs before the next is
        looked at, so the sender's order is kept. The first record of any other shape is
        left in place for ``_serve_stream``, which checks it fully. True if the whole batch
        was delivered (more may wait)."""
        try:
            binder = node.binder
        except LookupError:
            return False
        stream = conn.stream
        assert stream is not None
        sock = conn.sock
        on_transact = binder.on_transact
        prefix, unpack, new, header, most = (
            _ONEWAY_PREFIX,
            _RECORD_HEADER,
            Parcel,
            _HEADER_SIZE,
            _MAX_INLINE,
        )
        first, last = FIRST_CALL_TRANSACTION, LAST_CALL_TRANSACTION
        data, pos = stream.data, stream.pos
        size = len(data)
        done = 0
        # One identity for the whole batch (every call in it comes from this connection);
        # clear_calling_identity restores it on its way out, also when on_transact raises.
        # ``pos`` is this loop's own until it is written back, before every receive and on
        # the way out.
        with conn.oneway_caller:
            try:
                while done < ONEWAY_BATCH:
                    if size - pos >= header:
                        head, code, length = unpack(data, pos)
                        if head != prefix or length > most:
                            # Another shape, or a bad length: the full path takes it (and
                            # says why it drops the stream).
                            return False
                        end = pos + header + length
                        if end <= size:  # else it is cut: receive the rest
                            parcel = _from_wire(data[pos:end], header, _NO_FDS) if length else new()
                            pos = end
                            done += 1
                            try:
                                if first <= code <= last:
                                    on_transact(code, parcel, new(), FLAG_ONEWAY)
                                else:
                                    _invoke(binder, code, parcel, new(), FLAG_ONEWAY)
                            except BaseException:
                                _oneway_raised(code, node, conn.creds.pid)
                            continue
                    if self._stopping or stream.dry:
                        # Nothing more is likely waiting: end the batch without a receive
                        # that would find nothing (_serve_stream waits for more).
                        return False
                    stream.pos = pos
                    try:
                        if not stream.fill(sock):
                            return False
                    except (OSError, MessageError):  # kept in the stream for _serve_stream
                        return False
                    data, pos = stream.data, stream.pos
                    size = len(data)
                return True
            finally:
                stream.pos = pos
                self._served += done


class _OverHeld(MessageError):
    """A one-way stream would take its uid's streams past what they may hold unrun."""

    def __init__(self, uid: int) -> None:
        limits = get_limits()
        super().__init__(
            f"the one-way streams of uid {uid} would hold more than "
            f"{limits.oneway_backlog_bytes} bytes or {limits.oneway_backlog_fds} descriptors "
            "of calls not yet run (oneway_backlog_bytes, oneway_backlog_fds)"
        )


def _oneway_raised(code: int, node: _Node, pid: int) -> None:
    """Log the exception a one-way ``on_transact`` raised (there is no caller to tell)."""
    logger.exception(
        "binder: one-way on_transact(code=%d) of %s raised (caller pid %d)",
        code,
        node.label,
        pid,
    )


def _describe(exc: BaseException) -> str:
    kind = type(exc)
    if kind.__module__ == "builtins":
        return kind.__qualname__
    return f"{kind.__module__}.{kind.__qualname__}"


def _invoke(binder: Binder, code: int, data: Parcel, reply: Parcel, flags: int) -> int:
    if FIRST_CALL_TRANSACTION <= code <= LAST_CALL_TRANSACTION:
        if binder.on_transact(code, data, reply, flags):
            return _wire.STATUS_OK
        return _wire.STATUS_UNKNOWN_TRANSACTION
    if code == PING_TRANSACTION:
        return _wire.STATUS_OK
    if code == INTERFACE_TRANSACTION:
        reply.write_string(binder.descriptor)
        return _wire.STATUS_OK
    return _wire.STATUS_UNKNOWN_TRANSACTION


def _error_parcel(node: _Node, code: int, conn: _Connection, exc: BaseException) -> Parcel:
    logger.error(
        "binder: on_transact(code=%d) of %s raised (caller pid %d, uid %d)",
        code,
        node.label,
        conn.creds.pid,
        conn.creds.uid,
        exc_info=exc,
    )
    error = Parcel()
    error.write_string(_describe(exc))
    error.write_string(str(exc)[:_ERROR_TEXT_MAX])
    return error
