"""RELP, the Reliable Event Logging Protocol (librelp, rsyslog's ``imrelp``/``omrelp``):
its frame format and a client session.

A frame, in both directions (ASCII digits, single spaces, ending in a line feed)::

    field    bytes   meaning
    TXNR     1-9     transaction number: 1, 2, 3 ... per session, after 999999999 again 1;
                     0 in a server's unsolicited ``serverclose``
    SP       1
    COMMAND  1-32    ``open``, ``syslog``, ``close`` (client); ``rsp``, ``serverclose``
                     (server)
    SP       1
    DATALEN  1-9     bytes of DATA, decimal
    SP DATA  0 or 1+DATALEN   absent when DATALEN is 0
    TRAILER  1       b"\\n"

The protocol version is in the bytes of the session offer: the client opens with
``relp_version=0`` (the only version there is), ``relp_software=...`` and
``commands=syslog``; the server's ``rsp`` to ``open`` must start ``200 OK`` and offer
``commands=syslog``. Every ``syslog`` command carries one message and gets one ``rsp`` whose
data starts with a status code (``200 OK``; anything else is a refusal); the server answers
in the order the commands came. The client keeps at most ``window`` commands unanswered.

At-least-once: a message counts as delivered only when its ``rsp 200`` arrives. When the
connection breaks, every message sent and not answered is sent again on the next session
(the server may have taken some of them: duplicates, never losses).

>>> encode_frame(2, b"syslog", b"<14>1 - - - - - - hi")
b'2 syslog 20 <14>1 - - - - - - hi\\n'
>>> parser = FrameParser()
>>> parser.feed(b"2 rsp 6 200 OK\\n3 rsp 6 20")
[(2, b'rsp', b'200 OK')]
>>> parser.feed(b"0 OK\\n0 serverclose 0\\n")
[(3, b'rsp', b'200 OK'), (0, b'serverclose', b'')]
"""

from __future__ import annotations

import select
import socket
from collections.abc import Sequence

from .._errors import ProtocolError

__all__ = [
    "MAX_TXNR",
    "FrameParser",
    "RelpSession",
    "encode_frame",
]

MAX_TXNR = 999_999_999
MAX_DATA = 1 << 20  # the most we accept in one frame from a server (answers are tiny)
_OFFER = b"relp_version=0\nrelp_software=ashmem,0.1.0\ncommands=syslog"


def encode_frame(txnr: int, command: bytes, data: bytes) -> bytes:
    """One frame (see the module docstring)."""
    if data:
        return b"%d %s %d %s\n" % (txnr, command, len(data), data)
    return b"%d %s 0\n" % (txnr, command)


class FrameParser:
    """Splits the bytes a server sends into ``(txnr, command, data)`` frames; keeps what
    is incomplete for the next ``feed``. Raises ``ProtocolError`` on anything malformed."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, bytes, bytes]]:
        self._buf += data
        out: list[tuple[int, bytes, bytes]] = []
        while True:
            frame = self._one()
            if frame is None:
                return out
            out.append(frame)

    def _one(self) -> tuple[int, bytes, bytes] | None:
        buf = self._buf
        # The header is at most 9 + 1 + 32 + 1 + 9 digits: find its three fields.
        first = buf.find(b" ", 0, 10)
        second = buf.find(b" ", first + 1, first + 34) if first > 0 else -1
        if first < 0 or second < 0:
            if len(buf) > 10 + 33 + 10:
                raise ProtocolError(f"RELP frame header is malformed: {bytes(buf[:60])!r}")
            return None
        end = second + 1
        while end < len(buf) and end - second <= 10 and buf[end] in b"0123456789":
            end += 1
        if end == len(buf):
            return None
        txnr_text, command, length_text = (
            buf[:first],
            buf[first + 1 : second],
            buf[second + 1 : end],
        )
        if not (txnr_text.isdigit() and length_text.isdigit() and command.isalpha()):
            raise ProtocolError(f"RELP frame header is malformed: {bytes(buf[:60])!r}")
        length = int(length_text)
        if length > MAX_DATA:
            raise ProtocolError(f"RELP frame of {length} bytes is larger than {MAX_DATA}")
        if length == 0:
            if buf[end : end + 1] != b"\n":
                raise ProtocolError("RELP frame with DATALEN 0 does not end in a line feed")
            stop = end + 1
            data = b""
        else:
            if len(buf) < end + 1 + length + 1:
                return None
            if buf[end : end + 1] != b" " or buf[end + 1 + length : end + 2 + length] != b"\n":
                raise ProtocolError("RELP frame does not match its DATALEN")
            data = bytes(buf[end + 1 : end + 1 + length])
            stop = end + 2 + length
        del buf[:stop]
        return int(txnr_text), bytes(command), data


def _status(data: bytes) -> int:
    head = data[:3]
    return int(head) if head.isdigit() else 0


class RelpSession:
    """A RELP session on a connected socket (plain or TLS) that this object takes over and
    closes. ``open()`` runs the handshake; ``send(messages)`` sends syslog commands, at
    most ``window`` unanswered at a time; ``acknowledged()`` reads answers and returns how
    many of the oldest outstanding messages were confirmed.

    >>> a, b = socket.socketpair()
    >>> session = RelpSession(a, window=2)
    >>> session.send([b"m1", b"m2", b"m3"])      # the window holds two
    2
    >>> b.recv(100)
    b'1 syslog 2 m1\\n2 syslog 2 m2\\n'
    >>> _ = b.sendall(b"1 rsp 6 200 OK\\n")
    >>> session.acknowledged(timeout=5)
    1
    >>> session.close(timeout=0); b.close()
    """

    def __init__(self, sock: socket.socket, *, window: int = 1024, timeout: float = 30.0):
        if window < 1:
            raise ValueError("the RELP window must be at least 1")
        self.sock = sock
        self.window = window
        self.timeout = timeout
        self._parser = FrameParser()
        self._next = 1
        self._outstanding: list[int] = []  # txnrs sent, not answered, oldest first

    @property
    def in_flight(self) -> int:
        """Messages sent and not answered yet."""
        return len(self._outstanding)

    def _txnr(self) -> int:
        txnr = self._next
        self._next = 1 if txnr >= MAX_TXNR else txnr + 1
        return txnr

    def open(self) -> None:
        """Send ``open`` and wait for the server's ``200 OK`` offering ``commands=syslog``."""
        txnr = self._txnr()
        self.sock.settimeout(self.timeout)
        self.sock.sendall(encode_frame(txnr, b"open", _OFFER))
        while True:
            data = self.sock.recv(65536)
            if not data:
                raise ProtocolError("the RELP server closed the connection during open")
            for rtxnr, command, rdata in self._parser.feed(data):
                if command != b"rsp" or rtxnr != txnr:
                    raise ProtocolError(f"unexpected RELP answer to open: {command!r} {rtxnr}")
                if _status(rdata) != 200:
                    raise ProtocolError(f"the RELP server refused the session: {rdata[:200]!r}")
                offers = rdata.split(b"\n")[1:]
                if not any(o.startswith(b"commands=") and b"syslog" in o for o in offers):
                    raise ProtocolError("the RELP server does not offer the syslog command")
                return

    def send(self, messages: Sequence[bytes]) -> int:
        """Send as many of ``messages`` as the window allows, in one write; return how many."""
        room = self.window - len(self._outstanding)
        batch = messages[: max(room, 0)]
        if not batch:
            return 0
        frames = []
        for message in batch:
            txnr = self._txnr()
            frames.append(encode_frame(txnr, b"syslog", message))
            self._outstanding.append(txnr)
        self.sock.settimeout(self.timeout)
        self.sock.sendall(b"".join(frames))
        return len(batch)

    def acknowledged(self, timeout: float) -> int:
        """Wait up to ``timeout`` seconds for answers (0: take only what is there); return
        how many outstanding messages, oldest first, the server confirmed. Raises
        ``ProtocolError`` on a refusal, a ``serverclose`` or a closed connection."""
        if not self._outstanding:
            return 0
        pending = getattr(self.sock, "pending", None)
        if not (pending is not None and pending()):
            ready, _, _ = select.select([self.sock], [], [], timeout)
            if not ready:
                return 0
        self.sock.settimeout(self.timeout)
        data = self.sock.recv(1 << 18)
        if not data:
            raise ProtocolError("the RELP server closed the connection")
        done = 0
        for txnr, command, rdata in self._parser.feed(data):
            if command == b"serverclose":
                raise ProtocolError("the RELP server closed the session (serverclose)")
            if command != b"rsp" or not self._outstanding or txnr != self._outstanding[0]:
                raise ProtocolError(f"unexpected RELP frame {txnr} {command!r}")
            self._outstanding.pop(0)
            if _status(rdata) != 200:
                raise ProtocolError(f"the RELP server refused a message: {rdata[:200]!r}")
            done += 1
        return done

    def check_idle(self) -> None:
        """With nothing outstanding, the server spoke or closed: raise ``ProtocolError``
        (a ``serverclose``, end-of-file or an answer to nothing); return if it was only TLS
        housekeeping."""
        try:
            self.sock.settimeout(0.2)
            data = self.sock.recv(1 << 16)
        except TimeoutError:
            return
        if not data:
            raise ProtocolError("the RELP server closed the connection")
        for txnr, command, _ in self._parser.feed(data):
            if command == b"serverclose":
                raise ProtocolError("the RELP server closed the session (serverclose)")
            raise ProtocolError(f"unexpected RELP frame {txnr} {command!r}")

    def close(self, timeout: float = 2.0) -> None:
        """Send ``close`` (when ``timeout`` > 0 and nothing is outstanding), wait briefly
        for its answer, close the socket."""
        try:
            if timeout > 0 and not self._outstanding:
                txnr = self._txnr()
                self.sock.settimeout(timeout)
                self.sock.sendall(encode_frame(txnr, b"close", b""))
                self._outstanding.append(txnr)
                self.acknowledged(timeout)
        except (OSError, ProtocolError):
            pass
        finally:
            self._outstanding.clear()
            unwrap = getattr(self.sock, "unwrap", None)
            if unwrap is not None and timeout > 0:
                try:
                    self.sock.settimeout(timeout)
                    unwrap()
                except (OSError, ValueError):
                    pass
            self.sock.close()
