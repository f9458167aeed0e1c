"""``SCM_RIGHTS``: descriptors as ancillary data of an ``AF_UNIX`` message, both ways. The
one place that builds and parses it, for ``fdpass`` and the binder wire; and the receives
binder's hot path makes (``recv_fds``, ``send_recv_fds``), compiled where
``ashmem._speedups`` was built.

>>> import os, socket
>>> a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
>>> r, w = os.pipe()
>>> _ = a.sendmsg([b"x"], rights([r]))
>>> msg, anc, _, _ = b.recvmsg(1, socket.CMSG_SPACE(4))
>>> fds = take_fds(anc); len(fds), fds[0] != r
(1, True)
>>> for fd in (*fds, r, w): os.close(fd)
>>> a.close(); b.close()
"""

from __future__ import annotations

import array
import errno
import os
import socket
from collections.abc import Callable, Sequence

__all__ = ["FD_SIZE", "SPEEDUPS", "SendFailed", "recv_fds", "rights", "send_recv_fds", "take_fds"]

_SOL_SOCKET = int(socket.SOL_SOCKET)
_SCM_RIGHTS = int(socket.SCM_RIGHTS)
#: Bytes per descriptor in the ancillary data (a C int).
FD_SIZE = array.array("i").itemsize


def rights(fds: Sequence[int]) -> list[tuple[int, int, bytes]]:
    """Ancillary data attaching ``fds`` (borrowed: the kernel dups them into the message)
    to one ``sendmsg``; empty for none."""
    if not fds:
        return []
    return [(_SOL_SOCKET, _SCM_RIGHTS, array.array("i", fds).tobytes())]


def take_fds(ancdata: list[tuple[int, int, bytes]], into: list[int] | None = None) -> list[int]:
    """The descriptors in ``recvmsg`` ancillary data, in order, appended to ``into`` (a new
    list if None), which is returned. The caller owns them. A trailing partial int (a
    truncated control message) is ignored."""
    fds: list[int] = [] if into is None else into
    for level, kind, data in ancdata:
        if level == _SOL_SOCKET and kind == _SCM_RIGHTS:
            chunk = array.array("i")
            chunk.frombytes(data[: len(data) - len(data) % FD_SIZE])
            fds.extend(chunk)
    return fds


#: Limits of ``recv_fds`` (both versions): the compiled one receives into fixed buffers.
MAX_RECV_BUFSIZE = 1 << 24
MAX_RECV_ANCBUFSIZE = 4096


def _recv_fds(
    sock: socket.socket, bufsize: int, ancbufsize: int, flags: int
) -> tuple[bytes, list[int] | None, int]:
    """One ``recvmsg`` on ``sock``: its data (at most ``bufsize`` bytes), the
    ``SCM_RIGHTS`` descriptors it brought, in order (None for none; the caller owns them),
    and its flags (``MSG_TRUNC``, ``MSG_CTRUNC``...). ``ValueError`` for ``bufsize`` over
    ``MAX_RECV_BUFSIZE`` or ``ancbufsize`` over ``MAX_RECV_ANCBUFSIZE``. The pure-Python
    version; ``recv_fds`` is the one to call.

    >>> a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    >>> r, w = os.pipe()
    >>> _ = a.sendmsg([b"hi"], rights([r]))
    >>> data, fds, mflags = _recv_fds(b, 16, socket.CMSG_SPACE(FD_SIZE), 0)
    >>> data, len(fds), mflags
    (b'hi', 1, 0)
    >>> for fd in (*fds, r, w): os.close(fd)
    >>> a.close(); b.close()
    """
    if not 0 <= bufsize <= MAX_RECV_BUFSIZE or not 0 <= ancbufsize <= MAX_RECV_ANCBUFSIZE:
        raise ValueError(
            f"bufsize must be 0..{MAX_RECV_BUFSIZE} and ancbufsize 0..{MAX_RECV_ANCBUFSIZE}, "
            f"not {bufsize} and {ancbufsize}"
        )
    data, anc, mflags, _ = sock.recvmsg(bufsize, ancbufsize, flags)
    return data, (take_fds(anc) or None) if anc else None, mflags


class SendFailed(OSError):
    """The send of ``send_recv_fds`` failed (its errno says why); nothing was received."""


def _send_recv_fds(
    sock: socket.socket,
    data: bytes,
    send_flags: int,
    bufsize: int,
    ancbufsize: int,
    flags: int,
) -> tuple[bytes, list[int] | None, int]:
    """``sock.send(data, send_flags)``, then ``recv_fds(sock, bufsize, ancbufsize, flags)``:
    a call's request and its answer, for a ``SOCK_SEQPACKET`` socket (a send there is whole
    or fails). ``SendFailed`` (an ``OSError``, same errno) if the send fails, except a
    Python timeout's ``TimeoutError``, raised as it is. The pure-Python version;
    ``send_recv_fds`` is the one to call."""
    if data.__class__ is not bytes:
        raise TypeError(f"send_recv_fds() sends bytes, not {type(data).__name__}")
    if not 0 <= bufsize <= MAX_RECV_BUFSIZE or not 0 <= ancbufsize <= MAX_RECV_ANCBUFSIZE:
        _recv_fds(sock, bufsize, ancbufsize, flags)  # raises ValueError; nothing is sent
    try:
        sent = sock.send(data, send_flags)
    except TimeoutError:  # settimeout(t): as sock.send raises it (the compiled one, too)
        raise
    except OSError as exc:
        raise SendFailed(exc.errno, exc.strerror) from exc
    if sent != len(data):
        raise SendFailed(errno.EMSGSIZE, os.strerror(errno.EMSGSIZE))
    return _recv_fds(sock, bufsize, ancbufsize, flags)


#: ``recv_fds``: compiled (``ashmem._speedups``, built at install where a C compiler is
#: found; it hands a socket with a Python timeout, ``settimeout(t)`` with t > 0, to
#: ``_recv_fds``) or the pure-Python ``_recv_fds`` above. ``ASHMEM_NO_SPEEDUPS`` set to
#: anything but ``""`` or ``"0"`` picks the latter. The two behave alike
#: (``tests/test_speedups.py``).
recv_fds: Callable[[socket.socket, int, int, int], tuple[bytes, list[int] | None, int]] = _recv_fds
#: ``send_recv_fds``: the same choice, for ``_send_recv_fds``.
send_recv_fds: Callable[
    [socket.socket, bytes, int, int, int, int], tuple[bytes, list[int] | None, int]
] = _send_recv_fds
#: Whether ``recv_fds`` and ``send_recv_fds`` are the compiled ones.
SPEEDUPS = False
if os.environ.get("ASHMEM_NO_SPEEDUPS", "") in ("", "0"):
    try:
        from . import _speedups
    except (ImportError, OSError):  # not built, or could not start: the pure path runs
        pass
    else:
        _speedups.set_fallback(_recv_fds, _send_recv_fds, SendFailed)
        recv_fds = _speedups.recv_fds
        send_recv_fds = _speedups.send_recv_fds
        SPEEDUPS = True
