"""The binder thread pool: everything this process serves (Android's ``ProcessState`` and
``IPCThreadState``).

One epoll set holds every listening socket and every connection; the pool's threads all wait
on it, and each readiness event goes to exactly one thread (``EPOLLONESHOT``: the fd is
disarmed until that thread re-arms it). The thread that takes a connection's event *owns*
the connection: only it reads from it, replies on it, re-arms it or closes it. Nobody else
ever closes a connection; to get rid of one from outside (service removed, pool stopped) we
``shutdown()`` it, which wakes its owner (or makes it readable), and the owner drops it.
That rule is what makes fd reuse races impossible.

Latency: after answering a two-way call, the owning thread keeps waiting on that same
connection for ``LINGER`` seconds with a plain blocking ``recvmsg`` (``SO_RCVTIMEO``), as long
as another pool thread is idle in epoll to serve everyone else. A client calling in a loop
then costs the service exactly one ``recvmsg`` and one ``sendmsg`` per call, like a
hand-written socket server, instead of an extra ``epoll_wait`` and ``epoll_ctl``.

Threads start on demand (one at first, another whenever no thread is left idle) up to
``set_max_threads`` (default 16); none is created per call.

One-way calls: each served binder has a FIFO. The thread that reads a one-way message
appends it *before* it reads the next one from that connection, so arrival order is queue
order; the first thread to find the binder idle delivers the queue one message at a time
until it is empty, then goes on reading its connection.
A queue over its limits (``oneway_backlog`` messages, ``oneway_backlog_fds`` descriptors,
``oneway_backlog_bytes`` bytes, see ``_limits``) *parks* the connection that overfilled it:
nobody reads it (its sender's socket buffer fills and its sends block) until the thread
delivering the queue has emptied it and re-arms it. No thread ever waits for a queue.

Hostile peers: every connection is checked right after ``accept`` (``_gate``). A connection
that has not said HELLO within ``hello_timeout`` is shut down by the pool's sweep, which
runs whenever a thread's epoll wait times out (threads wait with a timeout only while
something is pending). A listener whose ``accept`` fails for lack of descriptors is left
disarmed and re-armed by the sweep, with a growing back-off, instead of spinning.

Nested calls: while a thread handles a two-way call, a call it makes back into the caller's
process is sent on the caller's own connection (kind NESTED) and runs on the caller's thread
that waits for our reply (``_nested``), as Android does: it needs no free thread there.

Fork: a child forked from a process with a pool gets none (threads do not survive fork);
``os.register_at_fork`` closes the inherited sockets in the child so that the parent's peers
still see the parent die, and the child can start its own pool.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import logging
import os
import secrets
import select
import socket
import struct
import threading
import time
import weakref

from .._errors import MessageError
from . import _wire
from ._binder import (
    FIRST_CALL_TRANSACTION,
    FLAG_ONEWAY,
    INTERFACE_TRANSACTION,
    LAST_CALL_TRANSACTION,
    PING_TRANSACTION,
    Binder,
    Caller,
    Policy,
    _Serving,
)
from ._errors import BadParcel
from ._gate import Gate, _Connection, _Listener
from ._limits import get_limits
from ._parcel import Parcel

__all__ = ["get_max_threads", "publish", "set_max_threads"]

logger = logging.getLogger("ashmem.binder")

#: Seconds a thread keeps waiting on a connection it just served before going back to epoll.
LINGER = 0.01
DEFAULT_MAX_THREADS = 16
#: Seconds between two sweeps for expired HELLOs and paused listeners, while any are due.
SWEEP_INTERVAL = 0.25
_BUSY_NAME = "ashmem.binder.ServiceBusyError"
_ACCEPT_BATCH = 64
_READ = select.EPOLLIN | select.EPOLLONESHOT
_RECV_NOWAIT = _wire.RECV_FLAGS | _wire.DONTWAIT
_SEND_NOWAIT = _wire.SEND_FLAGS | _wire.DONTWAIT
_ERROR_TEXT_MAX = 4096
_NO_FDS: list[int] = []  # shared, never mutated: what a message without descriptors carries
_TRANSACTION = _wire.TRANSACTION
_HEADER_SIZE = _wire.HEADER_SIZE
_MAX_MESSAGE = _wire.MAX_MESSAGE
_CMSG_SPACE = _wire.CMSG_SPACE
_RECV_FLAGS = _wire.RECV_FLAGS
_take_fds = _wire.take_fds
_REPLY_HEADER = struct.Struct("<8sII").pack
_REPLY_PREFIX = _wire.pack(_wire.REPLY, 0, 0, 0, 0)[:8]

_max_threads = DEFAULT_MAX_THREADS


def set_max_threads(count: int) -> None:
    """Let this process's binder thread pool grow to ``count`` threads (default 16), as
    Android's ``setThreadPoolMaxThreadCount``. Threads start on demand; a smaller value
    does not stop threads already running. A thread that joined with ``serve`` counts.

    >>> from ashmem.binder import set_max_threads, get_max_threads
    >>> set_max_threads(8); get_max_threads()
    8
    >>> set_max_threads(16)
    """
    global _max_threads
    if not isinstance(count, int) or isinstance(count, bool):
        raise TypeError(f"set_max_threads needs an int, not {type(count).__name__}")
    if count < 1:
        raise ValueError(f"the thread pool needs at least 1 thread, got {count!r}")
    _max_threads = count
    state = _state
    if state is not None:
        state.max_threads = count


def get_max_threads() -> int:
    """The most threads this process's binder thread pool may run.

    >>> from ashmem.binder import get_max_threads
    >>> get_max_threads() >= 1
    True
    """
    return _max_threads


class _Node:
    """One binder served by this process: its token, policy and one-way queue."""

    __slots__ = (
        "__weakref__",
        "_ref",
        "closed",
        "conns",
        "draining",
        "label",
        "lock",
        "parked",
        "pinned",
        "policy",
        "queue",
        "queued_bytes",
        "queued_fds",
        "state",
        "token",
    )

    def __init__(
        self, state: _ProcessState, ref: weakref.ref[Binder], binder: Binder, label: str
    ) -> None:
        self.state = state
        # The user's binder, weakly (see ``_ProcessState.node_for``), and strongly while a
        # connection or a queued one-way call needs it: a binder lives as long as the
        # application, a connection to it, or a Parcel carrying it keeps it.
        self._ref = ref
        self.pinned: Binder | None = None
        self.label = label
        self.token = secrets.token_bytes(_wire.TOKEN_SIZE)
        # None: anyone holding the token (a capability, as an Android binder reference).
        self.policy: Policy | None = None
        self.lock = threading.Lock()
        self.queue: collections.deque[tuple[Caller, int, Parcel, int, int]] = collections.deque()
        self.queued_fds = 0
        self.queued_bytes = 0
        # Connections not read until the queue drains (see the module docstring).
        self.parked: list[_Connection] = []
        self.draining = False
        self.closed = False
        self.conns: set[_Connection] = set()

    @property
    def binder(self) -> Binder:
        binder = self._ref()
        if binder is None:
            raise LookupError(f"{self.label} was released (no reference to it is left)")
        return binder

    def pin(self) -> bool:
        """Hold the binder strongly (under ``lock``); False if it is gone already."""
        self.pinned = self._ref()
        return self.pinned is not None

    def unpin_if_idle(self) -> None:
        """Drop the strong reference once nothing here needs the binder (under ``lock``)."""
        if not self.conns and not self.queue and not self.draining:
            self.pinned = None


def _describe(exc: BaseException) -> str:
    kind = type(exc)
    if kind.__module__ == "builtins":
        return kind.__qualname__
    return f"{kind.__module__}.{kind.__qualname__}"


class _ProcessState(Gate):
    def __init__(self) -> None:
        self.pid = os.getpid()
        self.max_threads = _max_threads
        self._lock = threading.Lock()
        self._handlers: dict[int, _Listener | _Connection] = {}
        self._by_token: weakref.WeakValueDictionary[bytes, _Node] = weakref.WeakValueDictionary()
        self._nodes: dict[int, tuple[weakref.ref[Binder], _Node]] = {}  # by id(binder)
        self._threads: list[threading.Thread] = []
        self._nthreads = 0
        self._idle = 0
        self._stopping = False
        self._closed = False
        self._init_gate()
        self._paused: set[_Listener] = set()  # listeners disarmed after EMFILE
        self._next_sweep = 0.0
        self._ep = select.epoll()
        try:
            self._wake = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
            self._ep.register(self._wake, select.EPOLLIN)  # level-triggered: wakes all
            self.host_address = b"\0ashmem-binder-%d-%s" % (
                self.pid,
                secrets.token_hex(8).encode(),
            )
            host = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            try:
                host.bind(self.host_address)
                host.listen(socket.SOMAXCONN)
                host.setblocking(False)
            except BaseException:
                host.close()
                raise
        except BaseException:
            self._ep.close()
            raise
        self.add_listener(host, None)
        self._spawn()

    # -- registration -------------------------------------------------------------------

    def node_for(self, binder: Binder, label: str | None = None) -> _Node:
        """The node serving ``binder`` here, made on first use."""
        if not isinstance(binder, Binder):
            raise TypeError(f"expected a Binder, not {type(binder).__name__}")
        key = id(binder)
        with self._lock:
            entry = self._nodes.get(key)
            node = entry[1] if entry is not None and entry[0]() is binder else None
            if node is None or node.closed:
                # The side table holds the node for as long as the binder lives (identity,
                # not equality: a Binder need not be hashable), and nothing is stored on the
                # user's object, which may have __slots__. The token registry holds nodes
                # weakly, so a connection keeps a node alive, and the node its binder.
                nodes = self._nodes

                def forget(ref: weakref.ref[Binder], key: int = key) -> None:
                    # No lock: this runs wherever the binder's last reference went away.
                    if nodes.get(key, (None, None))[0] is ref:
                        nodes.pop(key, None)

                ref = weakref.ref(binder, forget)
                node = _Node(self, ref, binder, label or type(binder).__name__)
                nodes[key] = (ref, node)
                self._by_token[node.token] = node
            elif label is not None:
                node.label = label
            return node

    def add_listener(self, sock: socket.socket, node: _Node | None) -> _Listener:
        """Serve connections arriving on ``sock`` (a listening, non-blocking socket; taken)."""
        listener = _Listener(sock, node)
        with self._lock:
            if self._stopping:
                sock.close()
                raise RuntimeError("the binder thread pool is stopping")
            self._handlers[listener.fd] = listener
            self._ep.register(listener.fd, _READ)
        return listener

    def remove_listener(self, listener: _Listener) -> None:
        """Stop accepting on ``listener``; its owner thread closes it (see module doc)."""
        listener.closing = True
        with contextlib.suppress(OSError):
            listener.sock.shutdown(socket.SHUT_RDWR)

    def close_node(self, node: _Node) -> None:
        """Stop serving ``node``: refuse new connections to it and drop the current ones
        (their proxies see the binder die)."""
        with node.lock:
            node.closed = True
            conns = list(node.conns)
        self._by_token.pop(node.token, None)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RDWR)

    # -- threads ------------------------------------------------------------------------

    def _spawn(self) -> None:
        with self._lock:
            if self._stopping or self._nthreads >= self.max_threads:
                return
            self._nthreads += 1
            thread = threading.Thread(
                target=self._run, name=f"ashmem-binder-{len(self._threads) + 1}", daemon=True
            )
            self._threads.append(thread)
        thread.start()

    def join(self) -> None:
        """Run the pool loop in the calling thread until ``stop()`` (``joinThreadPool``)."""
        with self._lock:
            self._nthreads += 1
        self._run()

    def _run(self) -> None:
        ep, lock = self._ep, self._lock
        try:
            while True:
                # Wait with a timeout only while a HELLO deadline or a paused listener is
                # due: the thread whose wait times out runs the sweep.
                timeout = SWEEP_INTERVAL if self._pending or self._paused else -1
                with lock:
                    self._idle += 1
                try:
                    events = ep.poll(timeout, 1)
                except OSError:  # the epoll fd was closed under us by stop()
                    return
                finally:
                    with lock:
                        self._idle -= 1
                        starve = self._idle == 0 and self._nthreads < self.max_threads
                if self._stopping:
                    return
                if starve:
                    self._spawn()
                if timeout > 0 and time.monotonic() >= self._next_sweep:
                    self._sweep()
                # In a helper, so that an idle thread keeps no reference to its last
                # connection (and through it, to a binder).
                self._dispatch(events)
        finally:
            with lock:
                self._nthreads -= 1

    def _sweep(self) -> None:
        """Shut down connections past their HELLO deadline; re-arm paused listeners."""
        now = time.monotonic()
        self._next_sweep = now + SWEEP_INTERVAL
        deadline = now - get_limits().hello_timeout
        expired = []
        with self._lock:
            for conn in self._pending:
                if conn.accepted > deadline:
                    break  # oldest first: the rest are younger
                expired.append(conn)
            for conn in expired:
                self._forget_pending(conn)
            due = [listener for listener in self._paused if listener.paused_until <= now]
            for listener in due:
                self._paused.discard(listener)
                listener.paused_until = 0.0
        for conn in expired:
            # Its owner (a thread reading it, or epoll) sees the shutdown and drops it.
            self._log.warning(
                "hello",
                "binder: dropping pid %d (uid %d): no HELLO within %s s",
                conn.creds.pid,
                conn.creds.uid,
                get_limits().hello_timeout,
            )
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RDWR)
        for listener in due:
            self._rearm_listener(listener)

    def _dispatch(self, events: list[tuple[int, int]]) -> None:
        for fd, _ in events:
            if fd == self._wake:
                continue
            handler = self._handlers.get(fd)
            if handler is None:
                continue
            if type(handler) is _Connection:
                try:
                    self._serve(handler)
                except Exception:
                    logger.exception(
                        "binder thread pool: dropping a connection after an unexpected error"
                    )
                    self._drop(handler)
            else:
                assert isinstance(handler, _Listener)
                try:
                    self._accept(handler)
                except Exception:
                    logger.exception("binder thread pool: error accepting connections")
                    self._rearm_listener(handler)

    # -- listeners ------------------------------------------------------------------------

    def _accept(self, listener: _Listener) -> None:
        if listener.closing or self._stopping:
            self._drop_listener(listener)
            return
        for _ in range(_ACCEPT_BATCH):
            try:
                sock, _ = listener.sock.accept()
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # Our own shortage: leave the listener disarmed (its backlog stays
                    # readable, re-arming now would spin) and let the sweep retry later.
                    listener.backoff = min(max(listener.backoff * 2, 0.01), 1.0)
                    self._log.warning(
                        "accept",
                        "binder: cannot accept connections (%s); retrying in %.2f s",
                        exc.strerror,
                        listener.backoff,
                    )
                    with self._lock:
                        listener.paused_until = time.monotonic() + listener.backoff
                        self._paused.add(listener)
                    return  # this thread goes back to epoll with a timeout and sweeps
                raise
            listener.backoff = 0.0
            self._add_connection(sock, listener)
        self._rearm_listener(listener)

    def _rearm_listener(self, listener: _Listener) -> None:
        if listener.closing or self._stopping:
            self._drop_listener(listener)
            return
        try:
            self._ep.modify(listener.fd, _READ)
        except OSError:
            self._drop_listener(listener)

    def _drop_listener(self, listener: _Listener) -> None:
        with self._lock:
            if self._handlers.get(listener.fd) is not listener:
                return
            del self._handlers[listener.fd]
        with contextlib.suppress(OSError, ValueError):
            self._ep.unregister(listener.fd)
        listener.sock.close()

    def _add_connection(self, sock: socket.socket, listener: _Listener) -> None:
        """Serve a connection just accepted, if ``_admit_connection`` lets it in."""
        conn = self._admit_connection(sock, listener)
        if conn is None:
            return
        try:
            sock.setblocking(True)
            _wire.set_receive_timeout(sock, LINGER)
            self._ep.register(conn.fd, _READ)
        except (OSError, ValueError):  # stop() closed the epoll set meanwhile
            self._unregister(conn)
            _wire.discard_socket(sock)

    def _admit(self, conn: _Connection, node: _Node) -> bool:
        """Check ``node``'s policy for ``conn``; refuse (and drop) it if it fails."""
        if self._policy_admits(node, conn.creds):
            return True
        creds = conn.creds
        self._log.warning(
            f"policy {creds.uid} {node.label}",
            "binder: refused pid %d (uid %d, gid %d) access to %s: not allowed by %r",
            creds.pid,
            creds.uid,
            creds.gid,
            node.label,
            node.policy,
        )
        self._refuse(
            conn,
            _wire.REFUSED_PERMISSION,
            f"{node.label} refuses uid {creds.uid} (gid {creds.gid}); the service must "
            "allow it (allow_uids / allow_gids / policy)",
        )
        return False

    # -- connections --------------------------------------------------------------------

    def _rearm(self, conn: _Connection) -> None:
        node = conn.node
        if self._stopping or (node is not None and node.closed):
            self._drop(conn)
            return
        try:
            self._ep.modify(conn.fd, _READ)
        except OSError:
            self._drop(conn)

    def _drop(self, conn: _Connection, eof: bool = False) -> None:
        """Close ``conn``. Only its owner thread calls this. The closer thread closes the
        socket, after reading what is still queued in it: closing it here would dispose of
        the descriptors in those messages on this thread (and so could block it), and would
        reset the peer before it read our last words. After end-of-file (``eof``) nothing is
        queued and nothing more can be (the peer's end is shut), so it is closed here."""
        if self._handlers.get(conn.fd) is not conn:
            return  # dropped already
        self._unregister(conn)
        node = conn.node
        if node is not None:
            with node.lock:
                node.conns.discard(conn)
                node.unpin_if_idle()
        with contextlib.suppress(OSError, ValueError):
            self._ep.unregister(conn.fd)
        if eof:
            conn.sock.close()
        else:
            _wire.discard_socket(conn.sock)

    def _refuse(self, conn: _Connection, code: int, reason: str) -> None:
        """Tell the peer why, then drop the connection."""
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

    def _serve(self, conn: _Connection) -> None:
        """Read and handle messages on ``conn``, which this thread owns until it re-arms or
        drops it."""
        sock = conn.sock
        recvmsg = sock.recvmsg
        flags = _RECV_NOWAIT
        while True:
            try:
                msg, anc, mflags, _ = recvmsg(_MAX_MESSAGE, _CMSG_SPACE, flags)
            except BlockingIOError:  # nothing (more) to read, or the linger expired
                self._rearm(conn)
                return
            except OSError:
                self._drop(conn)
                return
            fds = _take_fds(anc) if anc else _NO_FDS
            if not msg:
                _wire.discard_fds(fds)
                self._drop(conn, eof=not fds)
                return
            if not conn.greeted and fds:
                # Descriptors before HELLO: closed unseen (the closer takes them).
                _wire.discard_fds(fds)
                self._refuse(conn, _wire.REFUSED_PROTOCOL, "the first message must be HELLO")
                return
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
            with _Serving(conn):
                if FIRST_CALL_TRANSACTION <= code <= LAST_CALL_TRANSACTION:
                    status = 0 if node.binder.on_transact(code, data, reply, 0) else 1
                else:
                    status = _invoke(node.binder, code, data, reply, 0)
        except BaseException as exc:
            data.close()
            reply.close()
            return self._reply_error(conn, node, code, seq, exc)
        if not reply.data_size() and not reply.has_file_descriptors():
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
        error = _error_parcel(node, code, conn, exc)
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
                    node.parked.append(conn)
                    return True
                return False
            node.draining = True
        # Deliver the queue, ours first, then go on reading this connection: one thread
        # reads and delivers a busy sender's calls, no epoll round trip between them.
        # Others reading other connections append to the queue meanwhile, and we deliver
        # theirs too, in the order they were appended.
        self._drain(node)
        return False

    def _drain(self, node: _Node) -> None:
        queue = node.queue
        while True:
            unparked: list[_Connection] | tuple[()] = ()
            with node.lock:
                if not queue or self._stopping:
                    node.draining = False
                    leftovers = list(queue)
                    queue.clear()
                    node.queued_fds = node.queued_bytes = 0
                    unparked, node.parked = node.parked, []
                    done = True
                    node.unpin_if_idle()
                else:
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
            for conn in unparked:
                self._rearm(conn)  # parked connections are ours to hand back to epoll
            if done:
                for _, _, stale, _, _ in leftovers:
                    stale.close()
                return
            try:
                with _Serving(caller):
                    _invoke(node.binder, code, data, Parcel(), FLAG_ONEWAY)
            except BaseException:
                logger.exception(
                    "binder: one-way on_transact(code=%d) of %s raised (caller pid %d)",
                    code,
                    node.label,
                    caller.creds.pid,
                )
            finally:
                data.close()

    # -- shutdown -----------------------------------------------------------------------

    def request_stop(self) -> None:
        """Make every pool thread return (``join`` returns); safe in a signal handler."""
        self._stopping = True
        os.eventfd_write(self._wake, 1)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop every thread, close every socket. Services' names are removed by their
        owners (``Service.close``)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._stopping = True
            handlers = list(self._handlers.values())
            threads = list(self._threads)
        os.eventfd_write(self._wake, 1)
        for handler in handlers:  # wake threads lingering on a connection
            with contextlib.suppress(OSError):
                handler.sock.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + timeout
        me = threading.current_thread()
        for thread in threads:
            if thread is not me:
                thread.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            handlers = list(self._handlers.values())
            self._handlers.clear()
        for handler in handlers:
            handler.sock.close()
        self._ep.close()
        os.close(self._wake)

    def abandon(self) -> None:
        """In a forked child: close the inherited sockets, touch nothing else."""
        self._stopping = self._closed = True
        for handler in list(self._handlers.values()):
            handler.sock.close()
        self._handlers.clear()
        self._ep.close()
        os.close(self._wake)


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


_state: _ProcessState | None = None
_state_lock = threading.Lock()


def process_state() -> _ProcessState:
    """This process's pool, started on first use."""
    global _state
    state = _state
    if state is not None:
        return state
    with _state_lock:
        if _state is None:
            _state = _ProcessState()
        return _state


def current_state() -> _ProcessState | None:
    return _state


def stop_process_state() -> None:
    """Stop this process's pool (``serve`` returning); a later use starts a new one."""
    global _state
    with _state_lock:
        state, _state = _state, None
    if state is not None:
        state.stop()


def publish(binder: Binder) -> tuple[bytes, bytes]:
    """Serve ``binder`` from this process's pool: its reference ``(address, token)``."""
    state = process_state()
    node = state.node_for(binder)
    return state.host_address, node.token


def _after_fork_in_child() -> None:
    global _state, _state_lock
    _state_lock = threading.Lock()
    state, _state = _state, None
    if state is not None:
        state.abandon()


os.register_at_fork(after_in_child=_after_fork_in_child)
