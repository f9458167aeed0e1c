"""The client side: ``Proxy``, a remote binder (death notices: ``_death``).

A Proxy keeps a small pool of connections (channels) to the process that serves its binder.
A call takes an idle channel (or opens one), sends one message, waits for one reply on that
same channel, and gives the channel back; so each channel carries at most one two-way call at
a time, replies need no routing and no thread is involved but the caller's. Threads calling
the same Proxy at once simply use different channels, which the service serves in parallel.

One-way calls all go through one dedicated channel, under a lock, so the calls one Proxy
sends arrive in the order they were sent; the service keeps that order per binder.

Every channel after the first connects to the *reference* the service returned in its
WELCOME (its process's own abstract socket and the binder's token), never to the service's
name again: if the service is restarted under the same name, an old Proxy cannot silently
reach the new process; it is dead, as on Android.

Nested calls: while a thread waits for a reply, the service may call back into this process
on the same channel (a NESTED message, see ``_wire``); the waiting thread runs that call
itself and goes on waiting. The other way round, a thread that handles a call and calls into
the caller's process sends it on the caller's connection (``_transact_nested``). Either way
no free pool thread is needed, as with Android's binder.

Every connect and every receive has a bound (the call's timeout, else ``CONNECT_TIMEOUT``
for a new connection's WELCOME), and a broken connection is always ``DeadObjectError``.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import errno
import logging
import os
import socket
import struct
import threading
import weakref
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from .._closing import Closing
from .._errors import ClosedError, MessageError
from . import _wire
from ._binder import (
    FIRST_CALL_TRANSACTION,
    FLAG_ONEWAY,
    INTERFACE_TRANSACTION,
    LAST_CALL_TRANSACTION,
    PING_TRANSACTION,
    Credentials,
    _check_call,
    _check_timeout,
    _per_thread,
)
from ._death import DeathRecipient as DeathRecipient
from ._death import watcher as _watcher
from ._errors import BadParcel, DeadObjectError, ServiceBusyError
from ._nested import call_nested, remote_error, serve_nested
from ._parcel import Parcel
from ._pool import current_state

__all__ = ["DeathRecipient", "Proxy"]

logger = logging.getLogger("ashmem.binder")

#: Called once, with the dead Proxy, when the binder's process dies or its connection breaks.

#: Idle channels a Proxy keeps open for later calls; more are closed when given back.
MAX_IDLE_CHANNELS = 8
#: Seconds to wait for a new connection's WELCOME when the call has no timeout.
CONNECT_TIMEOUT = 10.0
_T = TypeVar("_T")

_NO_FDS: list[int] = []  # shared, never mutated
_NO_PARTS: list[Any] = []  # shared, never mutated
_CALL_HEADER = _wire.PREFIXED.pack
_CALL_PREFIX = _wire.CALL_PREFIX
# A call carrying descriptors: the prefix up to the descriptor count, then count, reserved,
# code and seq (``_wire.HEADER``).
_FDS_HEADER = struct.Struct("<5sBHII").pack
_CALL_PREFIX5 = _CALL_PREFIX[:5]
_SOL_SOCKET = int(socket.SOL_SOCKET)
_SCM_RIGHTS = int(socket.SCM_RIGHTS)
# The record of an empty one-way call, by code: built once for the first codes used.
_ONEWAY_HEADERS: dict[int, bytes] = {}
_ONEWAY_HEADERS_KEPT = 256
# Module-level copies of what the call path reads each time (a global, not two lookups).
_SEND_FLAGS = _wire.SEND_FLAGS
_DONTWAIT = _wire.DONTWAIT
_RECV_FLAGS = _wire.RECV_FLAGS
_MAX_MESSAGE = _wire.MAX_MESSAGE
_CMSG_SPACE = _wire.CMSG_SPACE
_HEADER_SIZE = _wire.HEADER_SIZE
_REPLY_PREFIX = _wire.REPLY_PREFIX
_CODE_SEQ = _wire.CODE_SEQ.unpack_from
_recv_fds = _wire.recv_fds
_send_recv_fds = _wire.send_recv_fds
_TRUNCATED = _wire.TRUNCATED
_STATUS_OK = _wire.STATUS_OK
_live: weakref.WeakSet[Proxy] = weakref.WeakSet()
_DEATH_ERRNOS = (errno.EPIPE, errno.ECONNRESET, errno.ECONNREFUSED, errno.ENOTCONN)


class _Channel:
    __slots__ = ("creds", "seq", "sock")

    def __init__(self, sock: socket.socket, creds: Credentials) -> None:
        self.sock = sock
        self.creds = creds
        self.seq = 0


def _refusal(msg: bytes, code: int, label: str) -> BaseException:
    reason = msg[_wire.HEADER_SIZE :].decode("utf-8", "replace") or "no reason given"
    if code == _wire.REFUSED_PERMISSION:
        return PermissionError(errno.EACCES, f"{label} refused this process: {reason}")
    if code == _wire.REFUSED_NO_SUCH_BINDER:
        return DeadObjectError(f"{label} is gone: {reason}", binder=label)
    if code == _wire.REFUSED_BUSY:
        return ServiceBusyError(f"{label} turned this connection away: {reason}", label)
    return MessageError(f"{label} rejected a message: {reason}")


def _open_channel(
    address: str | bytes, token: bytes, timeout: float | None, label: str
) -> tuple[_Channel, bytes, bytes, Credentials]:
    """Connect and say HELLO: ``(channel, reference address, token, server credentials)``.

    Raises ``FileNotFoundError`` / ``ConnectionRefusedError`` if nobody listens there,
    ``PermissionError`` if the service refuses this process, ``DeadObjectError`` if the
    binder is gone or the connection is reset, ``ServiceBusyError`` if the service turns us
    away (or its backlog is full), ``TimeoutError`` if no answer comes within ``timeout``
    (else ``CONNECT_TIMEOUT``), ``MessageError``.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    wait = CONNECT_TIMEOUT if timeout is None else timeout
    try:
        sock.settimeout(wait)
        try:
            sock.connect(address)
            # If the service hung up first, its REFUSED (if any) is still waiting to be read.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                sock.sendmsg([_wire.pack(_wire.HELLO, 0, 0, 0, 0), token], (), _wire.SEND_FLAGS)
            msg, anc, mflags, _ = sock.recvmsg(
                _wire.MAX_MESSAGE, _wire.CMSG_SPACE, _wire.RECV_FLAGS
            )
        except TimeoutError:
            raise TimeoutError(
                errno.ETIMEDOUT,
                f"{label} did not answer a new connection within {wait} s (it is stopped, "
                "overloaded, or not accepting)",
            ) from None
        except BlockingIOError:
            raise ServiceBusyError(
                f"{label} is not accepting connections (its listen backlog is full)", label
            ) from None
        except (ConnectionResetError, BrokenPipeError) as exc:
            raise DeadObjectError(
                f"{label} closed a new connection before answering ({exc.strerror})", label
            ) from exc
        fds = _wire.take_fds(anc)
        _wire.discard_fds(fds)
        if not msg:
            raise DeadObjectError(f"{label} closed the connection before answering", label)
        kind, _, code, _ = _wire.check(msg, mflags, len(fds))
        if kind == _wire.REFUSED:
            raise _refusal(msg, code, label)
        if kind != _wire.WELCOME or fds:
            raise MessageError(f"{label} answered HELLO with {_wire.KIND_NAMES[kind]}")
        try:
            ref_address, ref_token, _ = _wire.decode_reference(msg, _wire.HEADER_SIZE, len(msg))
        except BadParcel as exc:
            raise MessageError(f"{label} sent a bad reference: {exc}") from None
        creds = Credentials(*_wire.peer_credentials(sock))
        sock.settimeout(None)
    except BaseException:
        sock.close()
        raise
    return _Channel(sock, creds), ref_address, ref_token, creds


class Proxy(Closing):
    """A binder in another process: call it with ``transact``.

    Get one from ``get_service``, ``start_service`` or ``Parcel.read_binder``; it is not
    made directly. Thread-safe: any number of threads may call one Proxy at once.

    >>> from ashmem.binder import Binder, Parcel, add_service, get_service
    >>> class Echo(Binder):
    ...     def on_transact(self, code, data, reply, flags):
    ...         reply.write_string(data.read_string())
    ...         return True
    >>> service = add_service("doctest.echo", Echo())
    >>> proxy = get_service("doctest.echo")
    >>> data, reply = Parcel(), Parcel()
    >>> data.write_string("hi")
    >>> proxy.transact(1, data, reply), reply.read_string()
    (True, 'hi')
    >>> proxy.close(); service.close()

    Ownership: a Proxy owns its sockets; ``close()`` closes them (garbage collection too).
    """

    _closed = True  # until __init__ has run: close() and __del__ stay safe

    def __init__(self, address: str | bytes, token: bytes, label: str) -> None:
        """Private: use ``get_service``, ``start_service`` or ``Parcel.read_binder``."""
        self._target: tuple[str | bytes, bytes] = (address, token)
        self._ref: tuple[bytes, bytes] | None = None
        self._creds: Credentials | None = None
        self._label = label
        self._idle: list[_Channel] = []
        self._lock = threading.Lock()
        self._oneway_lock = threading.Lock()
        self._oneway: _Channel | None = None
        self._recipients: list[DeathRecipient] = []
        self._watch: socket.socket | None = None
        self._dead: str | None = None
        self._closed = False
        # The serving process, to route a call into a process whose call we are handling
        # back on that caller's connection (-1 until known).
        self._peer_pid = -1
        _live.add(self)

    @classmethod
    def _from_reference(cls, address: bytes, token: bytes) -> Proxy:
        pid = address.rsplit(b"-", 2)[1].decode()
        proxy = cls(address, token, f"binder {token[:4].hex()} of pid {pid}")
        proxy._ref = (address, token)
        proxy._peer_pid = int(pid)
        return proxy

    @classmethod
    def _connect_named(cls, path: str, name: str, timeout: float | None) -> Proxy:
        """Connect to the service listening at ``path`` (errors as ``_open_channel``)."""
        label = f"service {name!r}"
        channel, address, token, creds = _open_channel(path, b"", timeout, label)
        proxy = cls(path, b"", label)
        proxy._adopt_reference(address, token, creds)
        proxy._idle.append(channel)
        return proxy

    def _adopt_reference(self, address: bytes, token: bytes, creds: Credentials) -> None:
        if self._ref is None or self._creds is None:
            self._ref = (address, token)
            self._target = (address, token)
            self._creds = creds
            self._peer_pid = creds.pid

    # -- channels -------------------------------------------------------------------------

    def _connect(self, timeout: float | None) -> _Channel:
        if self._closed:
            raise ClosedError(f"the Proxy for {self._label} is closed")
        address, token = self._target
        try:
            channel, ref_address, ref_token, creds = _open_channel(
                address, token, timeout, self._label
            )
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            reason = f"the process serving {self._label} is gone ({exc.strerror})"
            self._die(reason)
            raise DeadObjectError(reason, self._label) from exc
        except DeadObjectError as exc:
            self._die(str(exc))
            raise
        self._adopt_reference(ref_address, ref_token, creds)
        return channel

    def _take(self, timeout: float | None) -> _Channel:
        try:
            return self._idle.pop()  # list.pop is atomic: no lock on the fast path
        except IndexError:
            return self._connect(timeout)

    def _give(self, channel: _Channel) -> None:
        if len(self._idle) < MAX_IDLE_CHANNELS:
            self._idle.append(channel)
            if self._dead is not None or self._closed:
                self._close_idle()
        else:
            channel.sock.close()

    def _close_idle(self) -> None:
        while True:
            try:
                channel = self._idle.pop()
            except IndexError:
                return
            channel.sock.close()

    def _reference(self) -> tuple[bytes, bytes]:
        """``(address, token)`` to write this binder into a Parcel."""
        if self._ref is None:
            self._give(self._take(None))
        assert self._ref is not None
        return self._ref

    # -- transactions ---------------------------------------------------------------------

    def transact(
        self,
        code: int,
        data: Parcel | None = None,
        reply: Parcel | None = None,
        flags: int = 0,
        *,
        timeout: float | None = None,
    ) -> bool:
        """Call ``on_transact(code, data, reply, flags)`` in the service; return what it
        returned (False: it does not know ``code``).

        ``data`` is borrowed (sent as it is, descriptors included, and left to the caller to
        close); larger than ``MAX_INLINE`` bytes it travels in a sealed region instead of
        the socket. ``reply``, if given, is replaced by the reply and owns its descriptors.
        With ``FLAG_ONEWAY`` the call returns once sent, True, with no reply.

        Raises ``RemoteError`` if ``on_transact`` raised, ``DeadObjectError`` if the
        service is gone, ``ServiceBusyError`` if the service is at one of its limits (it ran
        short, not you), ``PermissionError`` if it refuses this process, ``TimeoutError``
        after ``timeout`` seconds (the call may still run in the service), ``TypeError``
        for arguments of the wrong type, ``ValueError`` for a code outside
        ``FIRST_CALL_TRANSACTION`` .. ``LAST_CALL_TRANSACTION``.

        Called while this thread handles a call from the service's own process, the call
        runs there on the thread waiting for our reply (no free pool thread needed).

        >>> from ashmem.binder import Binder, Parcel, add_service, get_service
        >>> class Twice(Binder):
        ...     def on_transact(self, code, data, reply, flags):
        ...         reply.write_long(2 * data.read_long())
        ...         return True
        >>> with add_service("doctest.twice", Twice()), get_service("doctest.twice") as p:
        ...     data, reply = Parcel(), Parcel()
        ...     data.write_long(21)
        ...     p.transact(1, data, reply, timeout=5), reply.read_long()
        (True, 42)
        """
        if (
            code.__class__ is not int
            or not FIRST_CALL_TRANSACTION <= code <= LAST_CALL_TRANSACTION
            or flags.__class__ is not int
            or (data is not None and data.__class__ is not Parcel)
            or (reply is not None and reply.__class__ is not Parcel)
            or (
                timeout is not None
                and timeout.__class__ is not float
                and timeout.__class__ is not int
            )
        ):
            # Not the plain types: the full check raises the right error, or admits
            # subclasses (an IntEnum code, a Parcel subclass).
            _check_call(code, data, reply, flags, timeout)
        if flags == FLAG_ONEWAY and data is None and timeout is None and self._dead is None:
            # A one-way call without data on the open one-way channel: ``_send_oneway`` of
            # the bare header, inline. (No channel yet: ``_transact`` connects it.) The lock
            # by hand: ``with`` costs about 80 ns more per call here.
            lock = self._oneway_lock
            lock.acquire()
            try:
                channel = self._oneway
                if channel is not None:
                    sock = channel.sock
                    try:
                        # A record of the bare header (payload length 0) on the one-way
                        # stream: 16 bytes go as one piece, or not at all.
                        header = _ONEWAY_HEADERS.get(code)
                        if header is None:
                            header = _wire.record(code, _wire.EMPTY)
                            if len(_ONEWAY_HEADERS) < _ONEWAY_HEADERS_KEPT:
                                _ONEWAY_HEADERS[code] = header
                        sock.send(header, _SEND_FLAGS)
                    except BaseException as exc:
                        self._oneway = None
                        sock.close()
                        error = self._stream_broke(exc, code, timeout)
                        if error is exc:
                            raise
                        raise error from exc
                    if self._dead is not None or self._closed:
                        self._oneway = None
                        sock.close()
                    return True
            finally:
                lock.release()
        if flags or self._dead is not None or _per_thread.identity.caller is not None:
            return self._transact(code, data, reply, flags, timeout)
        # A plain two-way call from outside any transaction, the common case: what
        # ``_transact`` does for it, inline (no helper calls). Data with binders or more
        # than MAX_INLINE bytes takes ``_transact``.
        if data is None:
            parts: list[Any] = _NO_PARTS
            fds: Sequence[int] = ()
        else:
            plain = data._wire_plain()
            if plain is None:
                return self._transact(code, data, reply, flags, timeout)
            parts, fds = plain
        try:
            channel = self._idle.pop()  # list.pop is atomic: no lock on the fast path
        except IndexError:
            channel = self._connect(timeout)
        sock = channel.sock
        seq = channel.seq = (channel.seq + 1) & 0xFFFFFFFF
        received = None
        try:
            if timeout is not None:
                sock.settimeout(timeout)
            if fds:
                # The descriptors are borrowed from ``data``: the kernel dups them into the
                # message (``_wire.send_message`` with ``_rights.rights``, inline).
                sock.sendmsg(
                    [_FDS_HEADER(_CALL_PREFIX5, len(fds), 0, code, seq), *parts],
                    [(_SOL_SOCKET, _SCM_RIGHTS, array.array("i", fds).tobytes())],
                    _SEND_FLAGS,
                )
                msg, received, mflags = _recv_fds(sock, _MAX_MESSAGE, _CMSG_SPACE, _RECV_FLAGS)
            elif parts:
                sock.sendmsg([_CALL_HEADER(_CALL_PREFIX, code, seq), *parts], (), _SEND_FLAGS)
                msg, received, mflags = _recv_fds(sock, _MAX_MESSAGE, _CMSG_SPACE, _RECV_FLAGS)
            else:  # the header alone: sent and answered in one call
                msg, received, mflags = _send_recv_fds(
                    sock,
                    _CALL_HEADER(_CALL_PREFIX, code, seq),
                    _SEND_FLAGS,
                    _MAX_MESSAGE,
                    _CMSG_SPACE,
                    _RECV_FLAGS,
                )
            if timeout is not None:
                sock.settimeout(None)
        except BaseException as exc:
            # The channel's state is unknown (a reply may still come): never reuse it.
            sock.close()
            if received:  # a reply came, and then settimeout failed
                _wire.discard_fds(received)
            error = self._failure(exc, code, timeout)
            if error is exc:
                raise
            raise error from exc
        if (
            msg[:8] == _REPLY_PREFIX
            and received is None
            and len(msg) >= _HEADER_SIZE
            and not mflags & _TRUNCATED
        ):
            # A plain REPLY (see _wire.REPLY_PREFIX); a wrong seq goes on to _finish.
            status: int
            status, rseq = _CODE_SEQ(msg, 8)
            if rseq == seq:
                idle = self._idle  # ``_give``, inline
                if len(idle) < MAX_IDLE_CHANNELS:
                    idle.append(channel)
                    if self._dead is not None or self._closed:
                        self._close_idle()
                else:
                    sock.close()
                if reply is not None:
                    reply._adopt_bytes(msg, _HEADER_SIZE)
                return status == _STATUS_OK
        return self._wait(channel, seq, msg, received or _NO_FDS, mflags, reply, code, timeout)

    def _transact(
        self,
        code: int,
        data: Parcel | None,
        reply: Parcel | None,
        flags: int,
        timeout: float | None,
    ) -> bool:
        if self._dead is not None:
            raise DeadObjectError(self._dead, self._label)
        if flags:
            if flags & ~FLAG_ONEWAY:
                raise ValueError(f"unknown transact flags {flags:#x}; only FLAG_ONEWAY exists")
            if data is None:  # the bare header: nothing to spill, close or grant
                self._send_oneway(code, _wire.EMPTY, timeout)
                return True
            oneway = data._outgoing()
            try:
                self._send_oneway(code, oneway, timeout)
            finally:
                oneway.close()
            if oneway.binders:
                self._grant()
            return True
        caller = _per_thread.identity.caller
        if caller is not None and caller.creds.pid == self._peer_pid and caller.sock is not None:
            return call_nested(self, caller, code, data, reply, timeout)
        outgoing = _wire.EMPTY if data is None else data._outgoing()
        try:
            try:
                channel = self._idle.pop()  # list.pop is atomic: no lock on the fast path
            except IndexError:
                channel = self._connect(timeout)
            if outgoing.binders:
                self._grant()
            sock = channel.sock
            seq = channel.seq = (channel.seq + 1) & 0xFFFFFFFF
            received = None
            try:
                if timeout is not None:
                    sock.settimeout(timeout)
                if outgoing is _wire.EMPTY:
                    msg, received, mflags = _send_recv_fds(
                        sock,
                        _CALL_HEADER(_CALL_PREFIX, code, seq),
                        _SEND_FLAGS,
                        _MAX_MESSAGE,
                        _CMSG_SPACE,
                        _RECV_FLAGS,
                    )
                else:
                    _wire.send_message(
                        sock, _wire.TRANSACTION, 0, code, seq, outgoing, _wire.SEND_FLAGS
                    )
                    msg, received, mflags = _recv_fds(sock, _MAX_MESSAGE, _CMSG_SPACE, _RECV_FLAGS)
                if timeout is not None:
                    sock.settimeout(None)
            except BaseException as exc:
                # The channel's state is unknown (a reply may still come): never reuse it.
                sock.close()
                if received:  # a reply came, and then settimeout failed
                    _wire.discard_fds(received)
                error = self._failure(exc, code, timeout)
                if error is exc:
                    raise
                raise error from exc
        finally:
            if outgoing.spill_fd >= 0:
                outgoing.close()
        if (
            msg[:8] == _REPLY_PREFIX
            and received is None
            and len(msg) >= _HEADER_SIZE
            and not mflags & _TRUNCATED
        ):
            # The common answer, a plain REPLY: what ``check`` and ``_finish`` would look at
            # (see _wire.REPLY_PREFIX), without the calls; a wrong seq goes on to _finish.
            status: int
            status, rseq = _CODE_SEQ(msg, 8)
            if rseq == seq:
                self._give(channel)
                if reply is not None:
                    reply._adopt_bytes(msg, _HEADER_SIZE)
                return status == _STATUS_OK
        return self._wait(channel, seq, msg, received or _NO_FDS, mflags, reply, code, timeout)

    def _wait(
        self,
        channel: _Channel,
        seq: int,
        msg: bytes,
        fds: list[int],
        mflags: int,
        reply: Parcel | None,
        code: int,
        timeout: float | None,
    ) -> bool:
        """Handle ``msg`` and ``fds`` (owned), what came back for call ``seq`` on ``channel``
        (which this call owns), and wait on while the service calls back into us on it."""
        sock = channel.sock
        while True:
            result = self._finish(channel, seq, msg, fds, mflags, reply, code)
            if result is not None:
                return result
            # The service called back into us on this channel, and we answered: wait on.
            received = None
            try:
                if timeout is not None:
                    sock.settimeout(timeout)
                msg, received, mflags = _recv_fds(sock, _MAX_MESSAGE, _CMSG_SPACE, _RECV_FLAGS)
                fds = received or _NO_FDS
                if timeout is not None:
                    sock.settimeout(None)
            except BaseException as exc:
                sock.close()
                if received:  # a reply came, and then settimeout failed
                    _wire.discard_fds(received)
                error = self._failure(exc, code, timeout)
                if error is exc:
                    raise
                raise error from exc

    def _grant(self) -> None:
        """We sent the service binders: let its uid connect to our callback endpoint."""
        state = current_state()
        creds = self._creds
        if state is not None and creds is not None:
            state.grant(creds.uid)

    def _failure(self, exc: BaseException, code: int, timeout: float | None) -> BaseException:
        if isinstance(exc, _wire.SendFailed):
            # Our callers see the send's OSError as sock.send raises it (the subclass its
            # errno picks: BlockingIOError, BrokenPipeError...), not the internal type.
            exc = OSError(exc.errno, exc.strerror)
        if isinstance(exc, TimeoutError):
            return TimeoutError(
                f"transaction {code} to {self._label} got no reply within {timeout} s; it may "
                "still run in the service"
            )
        if isinstance(exc, OSError) and exc.errno in _DEATH_ERRNOS:
            reason = f"the connection to {self._label} broke ({exc.strerror})"
            self._die(reason)
            return DeadObjectError(reason, self._label)
        return exc

    def _finish(
        self,
        channel: _Channel,
        seq: int,
        msg: bytes,
        fds: list[int],
        mflags: int,
        reply: Parcel | None,
        code: int,
    ) -> bool | None:
        """Handle the reply to call ``seq`` received on ``channel`` (which this call owns),
        with the descriptors that came with it (owned: closed on any error). None: it was a
        nested call from the service, answered here; wait on."""
        try:
            if not msg:
                reason = f"{self._label} died or closed the connection"
                self._die(reason)
                raise DeadObjectError(reason, self._label)
            kind, rflags, status, rseq = _wire.check(msg, mflags, len(fds))
            if kind == _wire.NESTED:
                try:
                    serve_nested(channel.sock, channel.creds, msg, rflags, fds, status, rseq)
                except OSError as exc:
                    reason = f"the connection to {self._label} broke ({exc.strerror})"
                    self._die(reason)
                    raise DeadObjectError(reason, self._label) from exc
                return None
            if rseq != seq or kind not in (_wire.REPLY, _wire.EXCEPTION):
                if kind == _wire.REFUSED:
                    raise _refusal(msg, status, self._label)
                raise MessageError(
                    f"{self._label} answered call {seq} with {_wire.KIND_NAMES[kind]} {rseq}"
                )
        except BaseException:
            _wire.discard_fds(fds)
            channel.sock.close()
            raise
        self._give(channel)
        if kind == _wire.REPLY:
            if reply is not None:
                reply._adopt(Parcel._from_wire(msg, _wire.HEADER_SIZE, fds, rflags))
            elif fds:
                _wire.discard_fds(fds)
            return status == _wire.STATUS_OK
        with Parcel._from_wire(msg, _wire.HEADER_SIZE, fds, rflags) as error:
            raise remote_error(error, code, self._label)

    def _connect_oneway(self, timeout: float | None) -> _Channel:
        """A new one-way stream (see ``_wire``): on a connection greeted as usual, STREAM
        asks the service for one; its answer carries our end, and the connection is closed.
        Errors as ``_connect``."""
        channel = self._connect(timeout)
        sock = channel.sock
        wait = CONNECT_TIMEOUT if timeout is None else timeout
        try:
            sock.settimeout(wait)
            seq = channel.seq = (channel.seq + 1) & 0xFFFFFFFF
            sock.send(_wire.pack(_wire.STREAM, 0, 0, 0, seq), _SEND_FLAGS)
            msg, anc, mflags, _ = sock.recvmsg(_MAX_MESSAGE, _CMSG_SPACE, _RECV_FLAGS)
            fds = _wire.take_fds(anc)
            stream = None
            try:
                if not msg:
                    raise ConnectionResetError(errno.ECONNRESET, "closed before answering")
                kind, _, status, rseq = _wire.check(msg, mflags, len(fds))
                if kind == _wire.REFUSED:
                    raise _refusal(msg, status, self._label)
                if kind == _wire.REPLY and rseq == seq and status == _STATUS_OK and len(fds) == 1:
                    with contextlib.suppress(OSError):
                        stream = socket.socket(fileno=fds[0])
                        fds = []
                if (
                    stream is None
                    or stream.family != socket.AF_UNIX
                    or stream.type != socket.SOCK_STREAM
                ):
                    raise MessageError(
                        f"{self._label} answered STREAM with {_wire.KIND_NAMES[kind]} "
                        f"(status {status}, seq {rseq} for {seq}, {len(fds)} descriptors), "
                        "not a stream"
                    )
            except BaseException:
                if stream is not None:
                    fds = [stream.detach()]
                _wire.discard_fds(fds)
                raise
            stream.setblocking(True)
        except BaseException as exc:
            if isinstance(exc, TimeoutError):
                raise TimeoutError(
                    errno.ETIMEDOUT,
                    f"{self._label} did not open a one-way stream within {wait} s",
                ) from None
            error = self._failure(exc, 0, timeout)
            if error is exc:
                raise
            raise error from exc
        finally:
            sock.close()
        return _Channel(stream, channel.creds)

    def _stream_broke(self, exc: BaseException, code: int, timeout: float | None) -> BaseException:
        """What to raise for a one-way stream that failed with ``exc`` (closed already; the
        one-way lock held). A broken stream means the service is gone, or it dropped the
        stream because it ran short (descriptors, or what this uid's streams may hold):
        a new stream tells which. Gone: ``DeadObjectError`` (``_connect`` marks the Proxy
        dead). Still there: the new stream is kept for the next calls and this one gets
        ``ServiceBusyError``, since it was not sent and calls sent just before it may not
        have run."""
        if not (isinstance(exc, OSError) and exc.errno in _DEATH_ERRNOS):
            return self._failure(exc, code, timeout)
        try:
            self._oneway = self._connect_oneway(timeout)
        except BaseException as reopen:  # DeadObjectError, or why it could not tell
            return reopen
        return ServiceBusyError(
            f"{self._label} dropped this Proxy's one-way stream ({exc.strerror}): it ran short "
            f"(see its log). Call {code} was not sent, and one-way calls sent just before it "
            "may not have run; later calls use a new stream",
            self._label,
        )

    def _send_oneway(self, code: int, outgoing: _wire.Outgoing, timeout: float | None) -> None:
        with self._oneway_lock:
            channel = self._oneway
            if channel is None:
                channel = self._oneway = self._connect_oneway(timeout)
            sock = channel.sock
            try:
                if timeout is not None:
                    sock.settimeout(timeout)
                _wire.send_record(sock, code, outgoing, _SEND_FLAGS)
                if timeout is not None:
                    sock.settimeout(None)
            except BaseException as exc:
                self._oneway = None
                sock.close()
                error = self._stream_broke(exc, code, timeout)
                if error is exc:
                    raise
                raise error from exc
            if self._dead is not None or self._closed:
                self._oneway = None
                sock.close()

    async def transact_async(
        self,
        code: int,
        data: Parcel | None = None,
        reply: Parcel | None = None,
        flags: int = 0,
        *,
        timeout: float | None = None,
    ) -> bool:
        """``transact`` for asyncio: waits for the reply without blocking the event loop (the
        channel's socket is watched with ``loop.add_reader``). Cancelling, or ``timeout``,
        abandons the call and its channel; the service may still run it.

        >>> import asyncio
        >>> from ashmem.binder import Binder, add_service, get_service
        >>> class Yes(Binder):
        ...     def on_transact(self, code, data, reply, flags):
        ...         return True
        >>> with add_service("doctest.async", Yes()), get_service("doctest.async") as p:
        ...     asyncio.run(p.transact_async(1, timeout=5))
        True
        """
        _check_call(code, data, reply, flags, timeout)
        if self._dead is not None:
            raise DeadObjectError(self._dead, self._label)
        loop = asyncio.get_running_loop()
        outgoing = _wire.EMPTY if data is None else data._outgoing()
        try:
            coro = self._call_async(loop, code, outgoing, reply, flags)
            if timeout is None:
                return await coro
            try:
                return await asyncio.wait_for(coro, timeout)
            except asyncio.TimeoutError:
                raise TimeoutError(
                    f"transaction {code} to {self._label} got no reply within {timeout} s"
                ) from None
        finally:
            outgoing.close()

    async def _call_async(
        self,
        loop: asyncio.AbstractEventLoop,
        code: int,
        outgoing: _wire.Outgoing,
        reply: Parcel | None,
        flags: int,
    ) -> bool:
        if flags:
            await self._send_oneway_async(loop, code, outgoing)
            return True
        try:
            channel = self._idle.pop()
        except IndexError:
            channel = await loop.run_in_executor(None, self._connect, None)
        sock = channel.sock
        seq = channel.seq = (channel.seq + 1) & 0xFFFFFFFF
        nowait = _wire.DONTWAIT
        try:
            await _retry_blocking(
                loop,
                sock,
                True,
                lambda: _wire.send_message(
                    sock, _wire.TRANSACTION, 0, code, seq, outgoing, _wire.SEND_FLAGS | nowait
                ),
            )
        except BaseException as exc:  # cancelled, timed out or broken: drop the channel
            sock.close()
            error = self._failure(exc, code, None)
            if error is exc:
                raise
            raise error from exc
        while True:
            try:
                msg, anc, mflags, _ = await _retry_blocking(
                    loop,
                    sock,
                    False,
                    lambda: sock.recvmsg(
                        _wire.MAX_MESSAGE, _wire.CMSG_SPACE, _wire.RECV_FLAGS | nowait
                    ),
                )
            except BaseException as exc:  # cancelled, timed out or broken: drop the channel
                sock.close()
                error = self._failure(exc, code, None)
                if error is exc:
                    raise
                raise error from exc
            fds = _wire.take_fds(anc) if anc else _NO_FDS
            result = self._finish(channel, seq, msg, fds, mflags, reply, code)
            if result is not None:
                return result

    async def _send_oneway_async(
        self,
        loop: asyncio.AbstractEventLoop,
        code: int,
        outgoing: _wire.Outgoing,
    ) -> None:
        # Same channel and lock as the blocking one-way path, so one Proxy's one-way calls
        # stay in order whichever API sent them. Nothing here blocks the loop: the lock is
        # taken in an executor when a thread holds it (the blocking path holds it across a
        # back-pressured send), the channel is connected in an executor (a service that
        # does not accept makes that wait up to CONNECT_TIMEOUT), and a full socket is
        # waited for with add_writer. Other coroutines of this Proxy wait for the lock the
        # same way, so holding it across those awaits keeps the order without blocking.
        await _acquire_async(loop, self._oneway_lock)
        try:
            channel = self._oneway
            if channel is None:
                channel = await _in_executor(
                    loop, self._connect_oneway, None, release=lambda lost: lost.sock.close()
                )
                self._oneway = channel
            sock = channel.sock
            parts = [_wire.record(code, outgoing), *outgoing.parts]
            rest = b""  # after a partial send: what is left of the record
            try:
                while True:
                    try:
                        if not rest:
                            fds = outgoing.fds
                            sent = sock.sendmsg(
                                parts, _wire.rights(fds) if fds else (), _SEND_FLAGS | _DONTWAIT
                            )
                            if sent == _HEADER_SIZE + outgoing.size:
                                return
                            rest = _wire.unsent(parts, sent)
                        else:
                            rest = rest[sock.send(rest, _SEND_FLAGS | _DONTWAIT) :]
                            if not rest:
                                return
                    except BlockingIOError:
                        pass  # the service's queue is full: wait until it drains
                    await _wait_ready(loop, sock, True)
            except BaseException as exc:
                if rest or not isinstance(exc, asyncio.CancelledError):
                    # Broken, or a record cut in the middle: the stream cannot go on.
                    self._oneway = None
                    sock.close()
                if isinstance(exc, OSError) and exc.errno in _DEATH_ERRNOS:
                    error = await _in_executor(loop, self._stream_broke, exc, code, None)
                else:
                    error = self._failure(exc, code, None)
                if error is exc:
                    raise
                raise error from exc
        finally:
            self._oneway_lock.release()

    def ping(self, *, timeout: float | None = None) -> bool:
        """True if the service answers (the library answers for it, not ``on_transact``);
        False if it is dead.

        >>> from ashmem.binder import Binder, add_service, get_service
        >>> with add_service("doctest.ping", Binder()), get_service("doctest.ping") as p:
        ...     p.ping()
        True
        """
        _check_timeout(timeout, "ping")
        try:
            return self._transact(PING_TRANSACTION, None, None, 0, timeout)
        except DeadObjectError:
            return False

    def get_interface_descriptor(self, *, timeout: float | None = None) -> str:
        """The service binder's ``descriptor`` attribute (its interface name).

        >>> from ashmem.binder import Binder, add_service, get_service
        >>> class Clock(Binder):
        ...     descriptor = "demo.IClock"
        >>> with add_service("doctest.clock", Clock()), get_service("doctest.clock") as p:
        ...     p.get_interface_descriptor()
        'demo.IClock'
        """
        _check_timeout(timeout, "get_interface_descriptor")
        with Parcel() as reply:
            self._transact(INTERFACE_TRANSACTION, None, reply, 0, timeout)
            return reply.read_string() or ""

    # -- death ------------------------------------------------------------------------------

    def is_binder_alive(self) -> bool:
        """False once the Proxy knows its binder died (a failed call, or a death notice if
        ``link_to_death`` is in use). It never becomes True again.

        >>> from ashmem.binder import Binder, add_service, get_service
        >>> with add_service("doctest.alive", Binder()), get_service("doctest.alive") as p:
        ...     p.is_binder_alive()
        True
        """
        return self._dead is None and not self._closed

    def link_to_death(self, recipient: DeathRecipient) -> None:
        """Call ``recipient(proxy)`` once when the service's process dies or the connection
        breaks. It runs on the "ashmem-binder-death" thread; exceptions are logged. Keeps
        one extra connection open to notice the death at once. ``DeadObjectError`` if the
        binder is already dead.

        >>> import threading
        >>> from ashmem.binder import Binder, add_service, get_service
        >>> died = threading.Event()
        >>> service = add_service("doctest.death", Binder())
        >>> proxy = get_service("doctest.death")
        >>> proxy.link_to_death(lambda who: died.set())
        >>> service.close()
        >>> died.wait(5), proxy.is_binder_alive()
        (True, False)
        """
        if not callable(recipient):
            raise TypeError(f"recipient must be callable, not {type(recipient).__name__}")
        watch: _Channel | None = None
        if self._watch is None:
            watch = self._connect(None)
        with self._lock:
            if self._dead is not None:
                dead = True
            else:
                dead = False
                self._recipients.append(recipient)
                if self._watch is None and watch is not None:
                    self._watch, watch = watch.sock, None
                    _watcher().watch(self._watch, self)
        if watch is not None:
            watch.sock.close()
        if dead:
            raise DeadObjectError(self._dead or "dead", self._label)

    def unlink_to_death(self, recipient: DeathRecipient) -> bool:
        """Forget ``recipient``; False if it was not linked (or already called).

        >>> from ashmem.binder import Binder, add_service, get_service
        >>> with add_service("doctest.unlink", Binder()), get_service("doctest.unlink") as p:
        ...     callback = print
        ...     p.link_to_death(callback)
        ...     p.unlink_to_death(callback), p.unlink_to_death(callback)
        (True, False)
        """
        with self._lock:
            for i, linked in enumerate(self._recipients):
                if linked is recipient or linked == recipient:
                    del self._recipients[i]
                    break
            else:
                return False
            watch = None
            if not self._recipients:
                watch, self._watch = self._watch, None
        if watch is not None:
            _watcher().forget(watch)
        return True

    def _die(self, reason: str) -> None:
        with self._lock:
            if self._dead is not None:
                return
            self._dead = reason
            recipients, self._recipients = self._recipients, []
            watch, self._watch = self._watch, None
        self._close_idle()
        if self._oneway_lock.acquire(blocking=False):
            try:
                oneway, self._oneway = self._oneway, None
            finally:
                self._oneway_lock.release()
            if oneway is not None:
                oneway.sock.close()
        if watch is not None or recipients:
            watcher = _watcher()
            if watch is not None:
                watcher.forget(watch)
            if recipients:
                watcher.notify(self, recipients)

    # -- properties and lifetime ------------------------------------------------------------

    @property
    def credentials(self) -> Credentials:
        """pid, uid and gid of the serving process, from the kernel (``SO_PEERCRED``).

        >>> import os
        >>> from ashmem.binder import Binder, add_service, get_service
        >>> with add_service("doctest.creds", Binder()), get_service("doctest.creds") as p:
        ...     p.credentials.pid == os.getpid()
        True
        """
        if self._creds is None:
            self._give(self._take(None))
        assert self._creds is not None
        return self._creds

    @property
    def label(self) -> str:
        """What this Proxy talks to, for messages: ``service 'name'`` or ``binder ...``.

        >>> from ashmem.binder import Binder, add_service, get_service
        >>> with add_service("doctest.label", Binder()), get_service("doctest.label") as p:
        ...     p.label
        "service 'doctest.label'"
        """
        return self._label

    def close(self) -> None:
        """Close every connection (sockets this Proxy owns). Idempotent; the binder itself
        is untouched. Calls made after ``close()`` raise ``ClosedError``.

        >>> import ashmem
        >>> from ashmem.binder import Binder, add_service, get_service
        >>> with add_service("doctest.pclose", Binder()):
        ...     proxy = get_service("doctest.pclose")
        ...     proxy.close()
        ...     try:
        ...         proxy.ping()
        ...     except ashmem.ClosedError:
        ...         print("closed")
        closed
        """
        if self._closed:
            return
        self._closed = True
        with self._lock:
            watch, self._watch = self._watch, None
            self._recipients = []
        self._close_idle()
        with self._oneway_lock:
            oneway, self._oneway = self._oneway, None
        if oneway is not None:
            oneway.sock.close()
        if watch is not None:
            _watcher().forget(watch)

    def _after_fork(self) -> None:
        """In a forked child: drop the parent's sockets and death links, keep the target."""
        self._lock = threading.Lock()
        self._oneway_lock = threading.Lock()
        for channel in self._idle:
            channel.sock.close()
        self._idle = []
        if self._oneway is not None:
            self._oneway.sock.close()
            self._oneway = None
        if self._watch is not None:
            self._watch.close()
            self._watch = None
        self._recipients = []

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    def __reduce__(self) -> Any:
        raise TypeError("a Proxy cannot be pickled; send it with Parcel.write_binder")

    def __repr__(self) -> str:
        state = "dead" if self._dead else "closed" if self._closed else "alive"
        pid = f" pid={self._creds.pid}" if self._creds else ""
        return f"<ashmem.binder.Proxy {self._label}{pid} {state}>"


async def _wait_ready(loop: asyncio.AbstractEventLoop, sock: socket.socket, write: bool) -> None:
    future: asyncio.Future[None] = loop.create_future()

    def ready() -> None:
        if not future.done():
            future.set_result(None)

    fd = sock.fileno()
    if write:
        loop.add_writer(fd, ready)
    else:
        loop.add_reader(fd, ready)
    try:
        await future
    finally:
        if write:
            loop.remove_writer(fd)
        else:
            loop.remove_reader(fd)


async def _acquire_async(loop: asyncio.AbstractEventLoop, lock: threading.Lock) -> None:
    """Take ``lock`` without blocking the loop. If the waiting coroutine is cancelled, the
    lock is released again as soon as the executor thread gets it."""
    if lock.acquire(blocking=False):
        return
    await _in_executor(loop, lock.acquire, release=lambda _: lock.release())


async def _in_executor(
    loop: asyncio.AbstractEventLoop,
    function: Callable[..., _T],
    *args: Any,
    release: Callable[[_T], object] | None = None,
) -> _T:
    """``function(*args)`` on the default executor. Cancelling the awaiting coroutine does
    not stop the thread; what it returns then is handed to ``release`` (a channel closed, a
    lock released) instead of being lost."""
    future = loop.run_in_executor(None, function, *args)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:

        def settle(done: asyncio.Future[_T]) -> None:
            if not done.cancelled() and done.exception() is None and release is not None:
                release(done.result())

        future.add_done_callback(settle)
        raise


async def _retry_blocking(
    loop: asyncio.AbstractEventLoop, sock: socket.socket, write: bool, attempt: Callable[[], Any]
) -> Any:
    """Run a non-blocking socket call, waiting for readiness while it would block."""
    while True:
        try:
            return attempt()
        except BlockingIOError:
            await _wait_ready(loop, sock, write)


def _after_fork_in_child() -> None:
    # (The death watcher forgets the parent's sockets first: _death registered earlier.)
    for proxy in list(_live):
        proxy._after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)
