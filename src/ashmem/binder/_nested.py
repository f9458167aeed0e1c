"""Nested calls: a call back into the process whose call this thread is handling runs on
that process's thread that waits for our reply, as with Android's binder.

While process A waits for the reply to its call on a connection to B, B's thread handling
that call may call any binder A serves (a callback A sent, A's own service). Instead of a
new connection to A's pool (which may have no free thread: a deadlock with a pool of one),
B sends a NESTED message on the connection A is waiting on (``call_nested``). A's waiting
thread runs it (``serve_nested``), answers with REPLY or EXCEPTION on the same connection,
and goes back to waiting. It works both ways and to any depth: while B waits for that
nested reply, A's handler may call into B the same way.

The connection is owned by the waiting thread on both sides (a pool thread owns the
connection of the call it handles until it replies), so nobody else reads it meanwhile.
A nested call is matched to its process by pid: the caller's kernel credentials
(``SO_PEERCRED``) against the pid the Proxy's reference names. A reference naming another
process's pid can only make us send a call, under our own identity, to a binder whose
128-bit token the sender already knew: nothing it could not do itself.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import socket
import time
from typing import TYPE_CHECKING

from .._errors import MessageError
from . import _wire
from ._binder import Caller, CallerLike, Credentials, _Serving
from ._dispatch import _ERROR_TEXT_MAX, _SEND_NOWAIT, _describe, _invoke
from ._errors import BadParcel, DeadObjectError, RemoteError, ServiceBusyError
from ._parcel import Parcel
from ._pool import current_state

if TYPE_CHECKING:
    from ._proxy import Proxy

__all__ = ["call_nested", "remote_error", "serve_nested"]

logger = logging.getLogger("ashmem.binder")

_NO_FDS: list[int] = []  # shared, never mutated
_nested_seq = itertools.count(1)


def remote_error(error: Parcel, code: int, label: str) -> BaseException:
    """The exception an EXCEPTION reply stands for."""
    try:
        type_name, text = error.read_string(), error.read_string()
    except BadParcel as exc:
        return MessageError(f"{label} sent a malformed error reply: {exc}")
    if type_name == "ashmem.binder.ServiceBusyError":
        return ServiceBusyError(text or f"{label} is busy", label)
    return RemoteError(type_name or "Exception", text or "", code, label)


def serve_nested(
    sock: socket.socket,
    creds: Credentials,
    msg: bytes,
    flags: int,
    fds: list[int],
    code: int,
    seq: int,
) -> None:
    """Run a NESTED call that arrived on ``sock`` while this thread waits there for a reply,
    and answer it on ``sock`` (see the module docstring). Takes ``fds``; borrows ``sock``.
    Raises ``OSError`` if the answer cannot be sent (the caller then treats the connection
    as broken)."""
    start = _wire.HEADER_SIZE + _wire.TOKEN_SIZE
    token = msg[_wire.HEADER_SIZE : start]
    state = current_state()
    node = state._by_token.get(token) if state is not None and len(token) == 16 else None
    answer = Parcel()
    kind, status = _wire.EXCEPTION, 0
    try:
        if node is None or node.closed:
            _wire.discard_fds(fds)
            answer.write_string("ashmem.binder.DeadObjectError")
            answer.write_string("no such binder here (it was released)")
        elif state is not None and not state._policy_admits(node, creds):
            _wire.discard_fds(fds)
            answer.write_string("PermissionError")
            answer.write_string(f"{node.label} refuses uid {creds.uid} (gid {creds.gid})")
        else:
            try:
                data = Parcel._from_wire(msg, start, fds, flags)
            except (BadParcel, OSError) as exc:
                answer.write_string(_describe(exc))
                answer.write_string(str(exc)[:_ERROR_TEXT_MAX])
            else:
                reply = Parcel()
                try:
                    with _Serving(Caller(creds, sock)):
                        status = _invoke(node.binder, code, data, reply, 0)
                except BaseException as exc:
                    logger.error(
                        "binder: nested on_transact(code=%d) of %s raised (caller pid %d)",
                        code,
                        node.label,
                        creds.pid,
                        exc_info=exc,
                    )
                    reply.close()
                    answer.write_string(_describe(exc))
                    answer.write_string(str(exc)[:_ERROR_TEXT_MAX])
                else:
                    answer.close()
                    answer, kind = reply, _wire.REPLY
                finally:
                    data.close()
        outgoing = answer._outgoing()
        if outgoing.binders and state is not None:
            state.grant(creds.uid)  # the caller may call back the binders we hand it
        try:
            _wire.send_message(sock, kind, 0, status, seq, outgoing, _SEND_NOWAIT)
        finally:
            outgoing.close()
    finally:
        answer.close()


def call_nested(
    proxy: Proxy,
    caller: CallerLike,
    code: int,
    data: Parcel | None,
    reply: Parcel | None,
    timeout: float | None,
) -> bool:
    """``proxy.transact`` into the process whose call this thread is handling: sent on the
    caller's connection (``caller.sock``, borrowed), run by its waiting thread. ``data`` is
    borrowed; ``reply`` receives the answer. Errors as ``Proxy.transact``."""
    ref = proxy._ref
    if ref is None:  # a named Proxy never connected: its token is not known yet
        proxy._give(proxy._take(timeout))
        ref = proxy._ref
        assert ref is not None
    sock = caller.sock
    assert sock is not None
    seq = next(_nested_seq) & 0xFFFFFFFF
    outgoing = _wire.EMPTY if data is None else data._outgoing()
    try:
        fds = outgoing.fds
        header = _wire.pack(_wire.NESTED, outgoing.flags, len(fds), code, seq)
        sock.sendmsg(
            [header, ref[1], *outgoing.parts], _wire.rights(fds), _wire.SEND_FLAGS | _wire.DONTWAIT
        )
    except OSError as exc:
        reason = f"the connection to {proxy._label} broke ({exc.strerror})"
        raise DeadObjectError(reason, proxy._label) from exc
    finally:
        outgoing.close()
    if outgoing.binders:
        state = current_state()
        if state is not None:
            state.grant(caller.creds.uid)
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        try:
            msg, anc, mflags, _ = sock.recvmsg(
                _wire.MAX_MESSAGE, _wire.CMSG_SPACE, _wire.RECV_FLAGS
            )
        except (BlockingIOError, TimeoutError):
            # A pool connection wakes up every LINGER seconds (SO_RCVTIMEO); a caller's
            # channel only when its own call's timeout expires.
            if deadline is not None and time.monotonic() >= deadline:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)  # a late reply must not be misread
                raise TimeoutError(
                    errno.ETIMEDOUT,
                    f"nested transaction {code} to {proxy._label} got no reply within {timeout} s",
                ) from None
            continue
        except OSError as exc:
            reason = f"the connection to {proxy._label} broke ({exc.strerror})"
            raise DeadObjectError(reason, proxy._label) from exc
        fds_in = _wire.take_fds(anc) if anc else _NO_FDS
        if not msg:
            _wire.discard_fds(fds_in)
            raise DeadObjectError(f"{proxy._label} closed the connection", proxy._label)
        try:
            kind, rflags, status, rseq = _wire.check(msg, mflags, len(fds_in))
        except MessageError:
            _wire.discard_fds(fds_in)
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            raise
        if kind == _wire.NESTED:
            try:
                serve_nested(sock, caller.creds, msg, rflags, fds_in, status, rseq)
            except OSError as exc:
                reason = f"the connection to {proxy._label} broke ({exc.strerror})"
                raise DeadObjectError(reason, proxy._label) from exc
            continue
        if rseq != seq or kind not in (_wire.REPLY, _wire.EXCEPTION):
            _wire.discard_fds(fds_in)
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            raise MessageError(
                f"{proxy._label} answered nested call {seq} with {_wire.KIND_NAMES[kind]} {rseq}"
            )
        if kind == _wire.REPLY:
            parcel = Parcel._from_wire(msg, _wire.HEADER_SIZE, fds_in, rflags)
            if reply is not None:
                reply._adopt(parcel)
            else:
                parcel.close()
            return status == _wire.STATUS_OK
        with Parcel._from_wire(msg, _wire.HEADER_SIZE, fds_in, rflags) as error:
            raise remote_error(error, code, proxy._label)
