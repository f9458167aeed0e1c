"""``SCM_RIGHTS``: descriptors as ancillary data of an ``AF_UNIX`` message, both ways. The
one place that builds and parses it, for ``fdpass`` and the binder wire.

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
import socket
from collections.abc import Sequence

__all__ = ["FD_SIZE", "rights", "take_fds"]

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
