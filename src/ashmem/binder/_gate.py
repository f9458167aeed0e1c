"""Who gets in, and how much a peer may make this process hold: the checks the binder
thread pool (``_pool``) runs right after ``accept``, and the books behind them.

Every endpoint a process listens on (a named service's socket, and the callback endpoint:
the abstract socket through which binders written into Parcels are reached) checks a new
connection before anything is read from it:

1. the endpoint's policy, from the kernel's ``SO_PEERCRED``: a named service's own; for the
   callback endpoint, this uid, the uids this process sent a binder to (``grant``), and the
   uids any of its services admit (their further connections go there);
2. the descriptors left below ``RLIMIT_NOFILE`` (``fd_reserve``);
3. the connections the peer's uid holds, and the connections still waiting for HELLO, per
   uid and in total (see ``_limits`` for the numbers).

A refused peer is told why (REFUSED) and closed at once by the closer thread
(``_wire.discard_socket``: closing it disposes of whatever descriptors it queued, and that
can block). Refusals are logged at most once a second per uid and endpoint.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import resource
import socket
import threading
import time
import weakref
from typing import TYPE_CHECKING

from . import _wire
from ._binder import Caller, Credentials
from ._limits import get_limits

if TYPE_CHECKING:
    from ._pool import _Node

__all__ = ["Gate"]

logger = logging.getLogger("ashmem.binder")

#: One log line per this many seconds for each kind of refusal, with a count of the rest.
LOG_INTERVAL = 1.0
_SEND_NOWAIT = _wire.SEND_FLAGS | _wire.DONTWAIT
#: Messages bringing descriptors between two probes of the descriptor reserve.
FD_PROBE_EVERY = 8


class _Listener:
    __slots__ = ("backoff", "closing", "fd", "node", "paused_until", "sock")

    def __init__(self, sock: socket.socket, node: _Node | None) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.node = node  # None for the host socket, which finds binders by token
        self.closing = False
        self.paused_until = 0.0  # > 0: disarmed after EMFILE until then (the sweep re-arms)
        self.backoff = 0.0


class _Connection(Caller):
    """A peer's connection. Also the ``Caller`` of the calls read from it (``creds`` and
    ``sock``: see ``_binder.Caller``)."""

    __slots__ = ("accepted", "fd", "greeted", "node", "oneway_caller", "stream")
    sock: socket.socket  # always set: the connection itself

    def __init__(self, sock: socket.socket, creds: Credentials, node: _Node | None) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.creds = creds
        self.node = node
        self.greeted = False
        self.accepted = time.monotonic()
        # The Caller of its one-way calls: no reply socket (the sender does not wait).
        self.oneway_caller = Caller(creds, None)
        # Set once the peer handed over a one-way stream (STREAM): ``sock`` is then that
        # stream, and this holds what was read from it and not yet run.
        self.stream: _wire.Stream | None = None


class _RateLimitedLog:
    """At most one warning per ``LOG_INTERVAL`` per key (a kind of event, and the peer uid
    where there is one); the ones held back are counted in the next line."""

    def __init__(self) -> None:
        self._last: dict[str, float] = {}
        self._held: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()

    def warning(self, kind: str, message: str, *args: object) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(kind, -LOG_INTERVAL) < LOG_INTERVAL:
                self._held[kind] += 1
                return
            self._last[kind] = now
            held = self._held.pop(kind, 0)
        if held:
            message += " (and %d more like it in the last %.0f s)"
            args = (*args, held, LOG_INTERVAL)
        logger.warning(message, *args)


class Gate:
    """The admission half of ``_ProcessState``: its books and the check after ``accept``.

    The books are guarded by the pool's ``_lock``; ``_handlers`` is the pool's fd map, where
    an admitted connection is entered."""

    _lock: threading.Lock
    _handlers: dict[int, _Listener | _Connection]
    _stopping: bool

    def _init_gate(self) -> None:
        # Connections not greeted yet (oldest first), per uid; connections per peer uid.
        self._pending: dict[_Connection, None] = {}
        self._pending_by_uid: dict[int, int] = {}
        self._conns_by_uid: dict[int, int] = {}
        self._services: weakref.WeakSet[_Node] = weakref.WeakSet()
        # Uids this process sent a binder to: they may connect to the callback endpoint.
        self._granted: set[int] = {os.geteuid()}
        self._log = _RateLimitedLog()
        self._fd_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        self._fd_high = self._fd_high_water()
        self._probe_in = 0  # messages with descriptors until the next probe (racy: a hint)
        self._was_short = False
        # Connections refused (policy, limits, protocol); see ``statistics``. A plain int:
        # ``+= 1`` runs no Python call, so no thread switch splits it (CPython 3.10+).
        self._refused = 0
        # What one-way streams hold while no thread reads them (parked, or waiting in
        # epoll for the rest of a record), per peer uid: [bytes, descriptors]; and the
        # streams waiting for the rest of a record, since when (oldest first): the sweep
        # drops those past ``hello_timeout``.
        self._held: dict[int, list[int]] = {}
        self._stalled: dict[_Connection, float] = {}
        self._held_lock = threading.Lock()  # a leaf: nothing else is taken under it

    def _hold(self, conn: _Connection, stalled: bool = False) -> bool:
        """Book what ``conn``'s stream holds (bytes read but not run, descriptors not yet
        given to a record) as it leaves its thread, after dropping the bytes already run.
        False if that would take its uid's streams past ``oneway_backlog_bytes`` or
        ``oneway_backlog_fds``: the caller drops it. A stream that holds nothing is not
        booked. ``stalled``: it waits for its peer to finish a record, which it must do
        within ``hello_timeout`` (``_expire_stalled``); a parked one waits for us."""
        stream = conn.stream
        assert stream is not None
        if stream.pos:
            stream.data = stream.data[stream.pos :]
            stream.pos = 0
        held = (len(stream.data), len(stream.fds))
        if held == (0, 0):
            return True
        limits = get_limits()
        uid = conn.creds.uid
        with self._held_lock:
            books = self._held.setdefault(uid, [0, 0])
            if (
                books[0] + held[0] > limits.oneway_backlog_bytes
                or books[1] + held[1] > limits.oneway_backlog_fds
            ):
                if books == [0, 0]:
                    del self._held[uid]
                return False
            books[0] += held[0]
            books[1] += held[1]
            if stalled:
                self._stalled[conn] = time.monotonic()
        stream.held = held
        return True

    def _unhold(self, conn: _Connection) -> None:
        """``conn``'s stream is back on a thread (or dropped): unbook what ``_hold`` booked."""
        stream = conn.stream
        if stream is None or stream.held == (0, 0):
            return
        held, stream.held = stream.held, (0, 0)
        uid = conn.creds.uid
        with self._held_lock:
            self._stalled.pop(conn, None)
            books = self._held[uid]
            books[0] -= held[0]
            books[1] -= held[1]
            if books == [0, 0]:
                del self._held[uid]

    def _expire_stalled(self, now: float) -> None:
        """Shut down the streams that have waited longer than ``hello_timeout`` for the
        rest of a record (their owner, epoll, then sees end-of-file and drops them with
        what they hold). A peer could otherwise keep descriptors here for good, even the
        other end of its own stream, which would then never report end-of-file."""
        deadline = now - get_limits().hello_timeout
        with self._held_lock:
            expired = []
            for conn, since in self._stalled.items():
                if since > deadline:
                    break  # oldest first: the rest are younger
                expired.append(conn)
            for conn in expired:
                del self._stalled[conn]
        self._shut_down_late(expired, "the one-way stream of ", "a record left unfinished for")

    def _shut_down_late(self, conns: list[_Connection], what: str, late: str) -> None:
        """Log and shut down connections past a ``hello_timeout`` deadline; each one's owner
        (a thread reading it, or epoll) sees the shutdown and drops it."""
        for conn in conns:
            self._log.warning(
                f"{late} {conn.creds.uid}",
                "binder: dropping %spid %d (uid %d): %s %s s",
                what,
                conn.creds.pid,
                conn.creds.uid,
                late,
                get_limits().hello_timeout,
            )
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RDWR)

    def _fd_high_water(self) -> int:
        """The lowest free descriptor number at or above this means we are inside
        ``fd_reserve`` (see ``_short_of_fds``)."""
        limit = self._fd_limit
        if limit == resource.RLIM_INFINITY or limit <= 0:
            return 1 << 30
        return max(limit - get_limits().fd_reserve, limit // 2)

    def _short_of_fds(self, fd: int) -> bool:
        """True if this process is inside its descriptor reserve, probed by duplicating
        ``fd`` (borrowed) once: the kernel hands out the lowest free number, so a new
        descriptor numbered N means numbers 0 .. N-1 are all taken. Probing after what a
        peer brought was installed matters: an application that keeps descriptors fills
        the table upwards while each new message reuses the same low hole, so the
        numbers of the received descriptors themselves say nothing."""
        try:
            probe = os.dup(fd)
        except OSError:  # EMFILE: no room at all
            return True
        os.close(probe)
        return probe >= self._fd_high

    def _short_of_fds_often(self, fd: int) -> bool:
        """``_short_of_fds`` for messages: probed on every ``FD_PROBE_EVERY``-th message
        that brings descriptors (on every one while short, or when one lands at the
        high-water mark), "not short" trusted in between. The reserve (64 by default) is
        far larger than what a few calls between two probes can take, and a call path with
        a region saves a dup and a close each time."""
        self._probe_in -= 1
        if self._probe_in > 0 and fd < self._fd_high and not self._was_short:
            return False
        self._probe_in = FD_PROBE_EVERY
        self._was_short = short = self._short_of_fds(fd)
        return short

    def grant(self, uid: int) -> None:
        """Let ``uid`` connect to the callback endpoint: we sent it a binder."""
        if uid not in self._granted:
            with self._lock:
                self._granted.add(uid)

    def publish_service(self, node: _Node) -> None:
        """``node`` is a named service: uids its policy admits may also reach the callback
        endpoint (where their Proxy opens its further connections)."""
        self._services.add(node)

    def _endpoint_admits(self, listener: _Listener, creds: Credentials) -> bool:
        """The policy of the endpoint a peer connected to, checked right after accept."""
        node = listener.node
        if node is not None:
            return self._policy_admits(node, creds)
        if creds.uid in self._granted:
            return True
        return any(
            service.policy is not None
            and not service.closed
            and self._policy_admits(service, creds)
            for service in list(self._services)
        )

    def _policy_admits(self, node: _Node, creds: Credentials) -> bool:
        policy = node.policy
        if policy is None:
            return True
        try:
            return bool(policy(creds))
        except Exception:
            logger.exception("binder: access policy of %s raised; refusing the caller", node.label)
            return False

    def _forget_pending(self, conn: _Connection) -> None:
        """Under ``_lock``: ``conn`` no longer counts as waiting for HELLO."""
        if self._pending.pop(conn, False) is None:
            uid = conn.creds.uid
            left = self._pending_by_uid.pop(uid, 1) - 1
            if left > 0:
                self._pending_by_uid[uid] = left

    def _admit_connection(self, sock: socket.socket, listener: _Listener) -> _Connection | None:
        """The check right after ``accept``: the endpoint's policy, then the limits. An
        admitted connection is booked (pending HELLO) and returned; a refused one is told
        why and closed, and None returned. Nothing is read from the peer here."""
        try:
            creds = Credentials(*_wire.peer_credentials(sock))
        except OSError:
            _wire.discard_socket(sock)
            return None
        if not self._endpoint_admits(listener, creds):
            what = listener.node.label if listener.node is not None else "the callback endpoint"
            self._log.warning(
                f"policy {creds.uid} {what}",
                "binder: refused pid %d (uid %d, gid %d) access to %s: not allowed by its policy",
                creds.pid,
                creds.uid,
                creds.gid,
                what,
            )
            self._turn_away(
                sock,
                _wire.REFUSED_PERMISSION,
                f"{what} refuses uid {creds.uid} (gid {creds.gid}); the service must allow it "
                "(allow_uids / allow_gids / policy)",
            )
            return None
        limits = get_limits()
        uid = creds.uid
        busy = None
        if self._short_of_fds(sock.fileno()):
            busy = "it is out of descriptors (RLIMIT_NOFILE)"
        with self._lock:
            if busy is None:
                if self._stopping:
                    busy = "it is stopping"
                elif self._conns_by_uid.get(uid, 0) >= limits.max_connections_per_uid:
                    busy = f"uid {uid} holds {limits.max_connections_per_uid} connections"
                elif self._pending_by_uid.get(uid, 0) >= limits.max_pending_per_uid:
                    busy = f"uid {uid} has {limits.max_pending_per_uid} connections without HELLO"
                elif len(self._pending) >= limits.max_pending:
                    busy = f"{limits.max_pending} connections are waiting for HELLO"
            if busy is None:
                conn = _Connection(sock, creds, listener.node)
                self._handlers[conn.fd] = conn
                self._pending[conn] = None
                self._pending_by_uid[uid] = self._pending_by_uid.get(uid, 0) + 1
                self._conns_by_uid[uid] = self._conns_by_uid.get(uid, 0) + 1
        if busy is not None:
            self._log.warning(
                f"busy {uid}", "binder: turned away pid %d (uid %d): %s", creds.pid, uid, busy
            )
            self._turn_away(sock, _wire.REFUSED_BUSY, f"the service is busy: {busy}")
            return None
        return conn

    def _turn_away(self, sock: socket.socket, code: int, reason: str) -> None:
        """Tell a peer we never admitted why, and close it (on the closer thread)."""
        self._refused += 1
        text = reason.encode("utf-8", "replace")[: _wire.MAX_INLINE]
        with contextlib.suppress(OSError):
            sock.sendmsg([_wire.pack(_wire.REFUSED, 0, 0, code, 0), text], (), _SEND_NOWAIT)
        _wire.discard_socket(sock)

    def _unregister(self, conn: _Connection) -> None:
        """Forget ``conn`` in the books (it stays open)."""
        with self._lock:
            if self._handlers.get(conn.fd) is conn:
                del self._handlers[conn.fd]
                self._forget_pending(conn)
                uid = conn.creds.uid
                left = self._conns_by_uid.pop(uid, 1) - 1
                if left > 0:
                    self._conns_by_uid[uid] = left
