"""The binder thread pool: everything this process serves (Android's ``ProcessState``).

This module holds the process state — threads, the epoll set, listeners, the binders served
(nodes), stop and fork. What a thread does with one connection's messages is ``_dispatch``
(``IPCThreadState``), admission after ``accept`` is ``_gate``; ``_ProcessState`` is all
three, as one object, so the hot path is plain method calls.

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
order; the first thread to find the binder idle delivers the queue one message at a time.

A Proxy sends its one-way calls over a *one-way stream* (``_wire``: STREAM), a
``SOCK_STREAM`` socket the service made and serves in place of the connection that asked
for it: one ``recvmsg`` takes every record queued in it, so a batch costs one receive
instead of one per call. The thread delivering a binder's queue, whenever the queue is
empty, runs the plain records (no descriptors, not spilled) its own stream holds or has
waiting (``MSG_DONTWAIT``, at most ``ONEWAY_BATCH`` between two looks at the queue), each
as soon as it is taken, with one lock and one identity for the batch instead of a queue
round per call; the first record of any other shape goes to the full path, with all its
checks, before the next is taken. When neither has anything left, it stops delivering and
goes on reading its stream. A one-way call that arrives as a datagram (a peer may still
send one) takes the full path and the queue. A stream keeps what it read and has not run
(a partial record: at most one ``MAX_MESSAGE`` beyond one receive, and ``2 * MAX_FDS``
descriptors); while no thread reads it (parked, or waiting for the rest of a record), that
is booked against its peer's uid, and the stream that would take its uid past
``oneway_backlog_bytes`` or ``oneway_backlog_fds`` is dropped.

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
import threading
import time
import weakref
from typing import NamedTuple

from . import _wire
from ._binder import (
    Binder,
    Caller,
    Policy,
)
from ._dispatch import Dispatch
from ._gate import _Connection, _Listener
from ._limits import get_limits
from ._parcel import Parcel

__all__ = ["Statistics", "get_max_threads", "publish", "set_max_threads", "statistics"]

logger = logging.getLogger("ashmem.binder")

#: Seconds a thread keeps waiting on a connection it just served before going back to epoll.
LINGER = 0.01
DEFAULT_MAX_THREADS = 16
#: Seconds between two sweeps for expired HELLOs and paused listeners, while any are due.
SWEEP_INTERVAL = 0.25
_ACCEPT_BATCH = 64
_READ = select.EPOLLIN | select.EPOLLONESHOT
# A one-way stream with complete records already read: EPOLLOUT is always ready on it
# (nothing is ever written to it), so it is handed to a pool thread at once.
_READ_NOW = select.EPOLLIN | select.EPOLLOUT | select.EPOLLONESHOT

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


class _ProcessState(Dispatch):
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
        self._served = 0  # calls handed to on_transact (two-way and one-way); see statistics
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
            # Each connection's socket as of now, under the lock: _register swaps a
            # connection's socket for a one-way stream, then looks at ``closed`` under it.
            socks = [conn.sock for conn in node.conns]
        self._by_token.pop(node.token, None)
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

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
                timeout = SWEEP_INTERVAL if self._pending or self._paused or self._stalled else -1
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
        """Shut down connections past their HELLO deadline and one-way streams past theirs
        for finishing a record; re-arm paused listeners."""
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
        self._shut_down_late(expired, "", "no HELLO within")
        for listener in due:
            self._rearm_listener(listener)
        self._expire_stalled(now)

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

    def _register(self, conn: _Connection, stream: socket.socket) -> bool:
        """Serve ``stream`` (taken), our end of the one-way stream made for ``conn``'s
        peer, in place of ``conn``'s socket, which is closed. Hands ``conn`` to epoll. Only
        its owner thread calls this. False if it could not (the pool is stopping, or the
        binder was closed meanwhile): ``conn`` is dropped."""
        old = conn.sock
        try:
            stream.setblocking(True)
            _wire.set_receive_timeout(stream, LINGER)
        except OSError:
            stream.close()
            self._drop(conn)
            return False
        with self._lock:
            if self._handlers.get(conn.fd) is conn:
                del self._handlers[conn.fd]
            with contextlib.suppress(OSError, ValueError):
                self._ep.unregister(conn.fd)
            conn.sock = stream
            conn.fd = stream.fileno()
            conn.stream = _wire.Stream()
            self._handlers[conn.fd] = conn
        _wire.discard_socket(old)
        node = conn.node
        if node is not None:
            with node.lock:
                closed = node.closed
            if closed:
                # close_node took the sockets before the swap above and shut down only the
                # old one. (One that takes them after this look gets the stream and shuts
                # it down: records sent before that may still run, none after.)
                self._drop(conn)
                return False
        try:
            self._ep.register(conn.fd, _READ)
        except (OSError, ValueError):  # stop() closed the epoll set meanwhile
            self._drop(conn)
            return False
        return True

    def _rearm(self, conn: _Connection, now: bool = False) -> None:
        """Hand ``conn`` back to epoll; ``now``: to the next pool thread at once (a stream
        holding records it already read)."""
        node = conn.node
        if self._stopping or (node is not None and node.closed):
            self._drop(conn)
            return
        try:
            self._ep.modify(conn.fd, _READ_NOW if now else _READ)
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
        if conn.stream is not None:
            self._unhold(conn)
            conn.stream.discard()
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

    # -- observation ----------------------------------------------------------------------

    def statistics(self) -> Statistics:
        """A snapshot of this pool (see ``statistics``)."""
        backlog: dict[str, int] = {}
        for node in list(self._by_token.values()):
            if not node.closed:
                backlog[node.label] = backlog.get(node.label, 0) + len(node.queue)
        with self._lock:
            connections = sum(1 for h in self._handlers.values() if isinstance(h, _Connection))
            return Statistics(
                threads=self._nthreads,
                idle_threads=self._idle,
                connections=connections,
                oneway_backlog=backlog,
                calls_served=self._served,
                refused_connections=self._refused,
            )

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
            if isinstance(handler, _Connection) and handler.stream is not None:
                handler.stream.discard()  # what a one-way stream read and did not run
        self._ep.close()
        os.close(self._wake)

    def abandon(self) -> None:
        """In a forked child: close the inherited sockets, touch nothing else."""
        self._stopping = self._closed = True
        for handler in list(self._handlers.values()):
            handler.sock.close()
            if isinstance(handler, _Connection) and handler.stream is not None:
                _wire.close_fds(handler.stream.fds)  # our copies; the parent keeps its own
        self._handlers.clear()
        self._ep.close()
        os.close(self._wake)


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


class Statistics(NamedTuple):
    """What ``ashmem.binder.statistics()`` reports about this process's thread pool.

    ``threads``: pool threads running; ``idle_threads``: those waiting for work;
    ``connections``: peer connections open (greeted or not); ``oneway_backlog``: one-way
    calls queued per served binder (by label: ``service 'name'`` or the class name; binders
    with the same label are summed); ``calls_served``: transactions handed to
    ``on_transact`` since the pool started (two-way and one-way; nested calls run on a
    caller's waiting thread and are not counted); ``refused_connections``: connections
    turned away by a policy or a limit, or dropped for a protocol error.

    >>> Statistics(1, 1, 0, {}, 0, 0).idle_threads
    1
    """

    threads: int
    idle_threads: int
    connections: int
    oneway_backlog: dict[str, int]
    calls_served: int
    refused_connections: int


def statistics() -> Statistics:
    """A snapshot of this process's binder thread pool (all zero before it starts). Counters
    only grow; the other fields are as of the call.

    >>> from ashmem.binder import Binder, add_service, get_service, statistics
    >>> before = statistics().calls_served
    >>> with add_service("doctest.statistics", Binder()), get_service("doctest.statistics") as p:
    ...     p.transact(1, timeout=5)
    False
    >>> statistics().calls_served - before
    1
    """
    state = _state
    if state is None:
        return Statistics(0, 0, 0, {}, 0, 0)
    return state.statistics()


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
