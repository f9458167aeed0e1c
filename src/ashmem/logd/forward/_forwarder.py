"""The forwarder: reads a log directory's segment files from a persisted cursor and sends
every record to one destination, at least once.

Reading. Records come from the segment files, never from memory, in file order, the oldest
segment first, read and formatted a chunk at a time while the previous chunk is on its way.
Each destination has a cursor file ``DIR/.forward-<destination>.json``; this module owns
its format::

    key          value
    v            1, the format version (another version: forward from the start again)
    destination  the address, for people reading the file
    positions    {segment file name: [block offset, records of that block confirmed]} for
                 every segment begun and not finished
    done         [segment file names] finished: closed by its collector (no ``flock``),
                 read to its end, every record in it confirmed

A segment that cannot be read here because it was encrypted (``encrypt_to``, before
forwarding was turned on) is passed over: counted as ``damaged``, then finished.
The cursor moves only when the destination confirmed the
records before it, and the file is replaced atomically (write, then ``rename``): a
forwarder killed at any point resumes at or before the first unconfirmed record, so what it
sends twice is a duplicate, never a loss. (The cursor is not fsynced: after a power cut it
may be older, which again means duplicates only.)

Confirmation. RELP: a record is confirmed by the server's ``rsp 200`` (see ``_relp``); after
a broken connection every record sent and not confirmed is sent again (``resent``). Plain
TCP (octet-counted syslog) has no answers: a record counts as confirmed once the kernel has
taken it (``sendall`` returned). Records in the socket buffers or on the wire when the
connection breaks are LOST (the forwarder checks that the server has not closed the
connection before each batch, which narrows but does not close that window), and after a
forwarder restart the records after the last saved cursor are sent again (duplicates).
Use RELP when every record matters.

Back-off. A failed connection (refused, TLS error, protocol error, refusal, broken session)
is retried after 0.1 s, doubling up to ``max_backoff`` (30 s), reset once the destination
confirms something again. The last error and its time are in ``status()``.

Retention asks ``may_delete(path)`` before deleting a segment (true only once it is
finished); where the collector's ``retain_ignores_forward`` allows deleting anyway,
``count_lost(path)`` counts the records in it that were not confirmed yet (``lost``).

Memory is bounded: at most ``max_pending`` records are read ahead of the last confirmed
one; when more wait on disk the forwarder counts them (for the lag) without holding them.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .._errors import KeyFileError, ProtocolError
from .._segment import Block, Damage, _locked_by_writer, read_segment, segment_paths
from ._destination import Destination
from ._relp import RelpSession
from ._syslog import format_message, frame

__all__ = ["Forwarder", "Forwarding"]

_CURSOR_VERSION = 1
_SAVE_EVERY = 0.2  # seconds between cursor writes while records are being confirmed
_CHUNK = 2048  # records read and formatted at a time while sending


@dataclass
class _Item:
    """One record to send (``message``) or, when ``message`` is None, a marker: once every
    item before it is confirmed, the cursor of ``segment`` moves to ``(offset, skip)``
    (``finished``: the segment is done)."""

    segment: str
    offset: int
    skip: int
    message: bytes | None = None
    time_ns: int = 0
    finished: bool = False


class Forwarder:
    """Forwards the records of the log directory ``directory`` to ``destination`` (a
    ``Destination`` or its address text) from a thread of this process.

    ``start()`` starts the thread, ``wake()`` says new records are on disk (it also polls
    every ``poll`` seconds), ``stop()`` goes on sending for up to ``drain_timeout`` seconds
    while connected, waits briefly for outstanding confirmations, saves the cursor and ends
    the thread. ``status()`` is safe from any thread.

    >>> import tempfile
    >>> f = Forwarder(tempfile.mkdtemp(), "relp://127.0.0.1:9")   # nothing listens there
    >>> f.status()["lag_records"], f.status()["destination"]
    (0, 'relp://127.0.0.1:9')
    """

    def __init__(
        self,
        directory: str,
        destination: Destination | str,
        *,
        poll: float = 0.1,
        max_backoff: float = 30.0,
        max_pending: int = 50_000,
        timeout: float = 30.0,
        drain_timeout: float = 5.0,
    ) -> None:
        if isinstance(destination, str):
            destination = Destination.parse(destination)
        self.directory = os.path.abspath(directory)
        self.destination = destination
        self.poll = poll
        self.max_backoff = max_backoff
        self.max_pending = max_pending
        self.timeout = timeout
        self.drain_timeout = drain_timeout
        self.cursor_path = os.path.join(self.directory, f".forward-{destination.state_name}.json")
        self._hostname = destination.hostname or socket.gethostname()
        self._lock = threading.Lock()
        self._positions: dict[str, tuple[int, int]] = {}
        self._done: set[str] = set()
        self._load_cursor()
        self._loaded = dict(self._positions)  # where reading continues, per segment
        self._exhausted: set[str] = set()  # read to the end, its end marker queued
        self._queue: list[_Item] = []
        self._head = 0  # first unconfirmed item
        self._sent = 0  # first item not sent on the current connection
        self._queued_messages = 0  # messages in queue[head:]
        self._unread = 0  # records on disk beyond what is loaded (when read-ahead is full)
        self._unread_at = 0.0
        self._stopping = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._thread: threading.Thread | None = None
        self._saved_at = 0.0
        self._dirty = False
        # Counters for status().
        self.connected = False
        self.sent = 0
        self.confirmed = 0
        self.resent = 0
        self.lost = 0
        self.damaged = 0
        self.connects = 0
        self.last_error: str | None = None
        self.last_error_at: float | None = None

    # -- cursor ----------------------------------------------------------------------

    def _load_cursor(self) -> None:
        try:
            with open(self.cursor_path, encoding="utf-8") as f:
                state = json.load(f)
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            # Unreadable: start over from the beginning (duplicates, never losses).
            self._error(f"cursor {self.cursor_path} unreadable ({exc}); forwarding from the start")
            return
        if not isinstance(state, dict) or state.get("v") != _CURSOR_VERSION:
            self._error(
                f"cursor {self.cursor_path} has an unknown format; forwarding from the start"
            )
            return
        positions = state.get("positions", {})
        for name, pos in positions.items() if isinstance(positions, dict) else ():
            if isinstance(pos, list) and len(pos) == 2 and all(isinstance(x, int) for x in pos):
                self._positions[str(name)] = (pos[0], pos[1])
        done = state.get("done", [])
        self._done = {str(n) for n in done} if isinstance(done, list) else set()

    def save(self) -> None:
        """Write the cursor file now (atomically)."""
        with self._lock:
            try:
                present = set(os.listdir(self.directory))
            except OSError:
                present = None
            if present is not None:
                self._done &= present
                for name in [n for n in self._positions if n not in present]:
                    del self._positions[name]
            state = {
                "v": _CURSOR_VERSION,
                "destination": str(self.destination),
                "positions": {n: list(p) for n, p in sorted(self._positions.items())},
                "done": sorted(self._done),
            }
            self._dirty = False
        tmp = f"{self.cursor_path}.{os.getpid()}.{threading.get_ident()}.tmp"
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(state, f)
            os.replace(tmp, self.cursor_path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            self._error(f"cannot save the cursor {self.cursor_path}: {exc}")
        self._saved_at = time.monotonic()

    # -- retention -------------------------------------------------------------------

    def may_delete(self, path: str) -> bool:
        """True if every record of segment ``path`` is confirmed by the destination."""
        with self._lock:
            return os.path.basename(path) in self._done

    def count_lost(self, path: str) -> int:
        """Retention deletes ``path`` although not all of it is confirmed: count its records
        that the destination has not confirmed as lost; return how many. (Some of them may
        already be read into memory and still get through: the count errs on the safe
        side.)"""
        name = os.path.basename(path)
        with self._lock:
            if name in self._done:
                return 0
            offset, skip = self._positions.get(name, (0, 0))
        count = 0
        try:
            for item in read_segment(path, offset):
                if isinstance(item, Block):
                    count += max(len(item.entries) - skip, 0)
                    skip = 0
        except (OSError, ValueError):
            pass
        with self._lock:
            self.lost += count
        return count

    # -- status ----------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Lag (records on disk not confirmed yet, and the age of the oldest one), counters,
        the last error."""
        with self._lock:
            oldest = next(
                (it.time_ns for it in self._queue[self._head :] if it.message is not None), None
            )
            lag_records = self._queued_messages + self._unread
        lag_seconds = max(time.time_ns() - oldest, 0) / 1e9 if oldest is not None else 0.0
        return {
            "destination": str(self.destination),
            "connected": self.connected,
            "lag_records": lag_records,
            "lag_seconds": round(lag_seconds, 3),
            "sent": self.sent,
            "confirmed": self.confirmed,
            "resent": self.resent,
            "lost": self.lost,
            "damaged": self.damaged,
            "connects": self.connects,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
        }

    def _error(self, message: str) -> None:
        self.last_error = message
        self.last_error_at = time.time()

    # -- thread ----------------------------------------------------------------------

    def start(self) -> None:
        """Start forwarding in a daemon thread."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self.run, name=f"ashmem.logd forward {self.destination}", daemon=True
            )
            self._thread.start()

    def wake(self) -> None:
        """New records are on disk: look now instead of at the next poll."""
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def stop(self, timeout: float | None = None) -> None:
        """Stop: if connected, go on sending what is on disk for up to ``drain_timeout``
        seconds (5), wait up to 2 s more for outstanding confirmations, save the cursor, end
        the thread (waiting up to ``timeout``, by default long enough for all that)."""
        self._stopping.set()
        self.wake()
        if self._thread is not None:
            self._thread.join(self.drain_timeout + 5.0 if timeout is None else timeout)
        self.save()
        self._wake_r.close()
        self._wake_w.close()

    def _sleep(self, seconds: float, sock: Any = None) -> bool:
        """Wait for a wake-up, ``seconds``, or (if given) ``sock`` becoming readable; True if
        ``sock`` is readable."""
        watched: list[Any] = [self._wake_r] if sock is None else [self._wake_r, sock]
        try:
            ready, _, _ = select.select(watched, [], [], seconds)
        except (OSError, ValueError):
            return False
        if self._wake_r in ready:
            with contextlib.suppress(OSError):
                self._wake_r.recv(4096)
        return sock is not None and sock in ready

    def run(self) -> None:
        """The thread's body: connect, send, reconnect with back-off, until ``stop()``."""
        backoff = 0.1
        while not self._stopping.is_set():
            sock = None
            try:
                self._read_ahead()
                sock = self.destination.connect(self.timeout)
                self.connects += 1
                if self.destination.protocol == "relp":
                    session = RelpSession(sock, window=self.destination.window,
                                          timeout=self.timeout)  # fmt: skip
                    sock = None  # the session owns it now
                    try:
                        session.open()
                        self.connected = True
                        self._pump_relp(session)
                    finally:
                        session.close(timeout=2.0 if self._stopping.is_set() else 0)
                else:
                    self.connected = True
                    self._pump_tcp(sock)
                    backoff = 0.1
            except (OSError, ProtocolError) as exc:
                self._error(f"{type(exc).__name__}: {exc}")
                if self._confirmed_on_connection:
                    backoff = 0.1
            except Exception as exc:  # a bug must not end forwarding for good
                self._error(f"internal error: {exc!r}")
            finally:
                self.connected = False
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.close()
                self._requeue()
            if self._stopping.is_set():
                break
            self._sleep_backoff(backoff)
            backoff = min(backoff * 2, self.max_backoff)
        self.save()

    _confirmed_on_connection = False

    def _sleep_backoff(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self._stopping.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._sleep(min(left, 0.5))
            with contextlib.suppress(OSError, ValueError):
                self._read_ahead()  # keeps the lag in status() current while disconnected

    def _requeue(self) -> None:
        """After a broken connection, everything sent and unconfirmed goes out again."""
        again = sum(1 for it in self._queue[self._head : self._sent] if it.message is not None)
        self.resent += again
        self._sent = self._head
        self._confirmed_on_connection = False

    # -- reading ---------------------------------------------------------------------

    def _read_ahead(self, limit: int | None = None) -> None:
        """Load records from disk until ``max_pending`` are queued (or ``limit`` more), or
        none are left. A block left half-read stays decoded for the next call."""
        room = self.max_pending - self._queued_messages
        if limit is not None:
            room = min(room, limit)
        paths = segment_paths(self.directory)
        d = self.destination
        full = False
        for path in paths:
            name = os.path.basename(path)
            with self._lock:
                if name in self._done or name in self._exhausted:
                    continue
                offset, skip = self._loaded.get(name, (0, 0))
            if full:
                break
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                live = _locked_by_writer(fd)
                size = os.fstat(fd).st_size
            finally:
                os.close(fd)
            if live and size <= max(offset, 72):
                continue
            items: list[_Item] = []
            new_pos = (offset, skip)
            try:
                for part in self._blocks(path, offset):
                    if isinstance(part, Damage):
                        self.damaged += 1
                        self._error(str(part))
                        new_pos = (part.end, 0)
                        items.append(_Item(name, part.end, 0))
                        continue
                    entries = part.entries
                    start = skip if part.offset == offset else 0
                    for i in range(start, len(entries)):
                        if room <= 0:
                            full = True
                            new_pos = (part.offset, i)
                            self._half_read = part
                            break
                        e = entries[i]
                        message = format_message(
                            e.record, pid=e.pid, uid=e.uid, ring_id=e.ring_id,
                            hostname=self._hostname, facility=d.facility, app_name=d.app_name,
                        )  # fmt: skip
                        pos = (part.end, 0) if i + 1 == len(entries) else (part.offset, i + 1)
                        items.append(_Item(name, pos[0], pos[1], message, e.record.time_ns))
                        room -= 1
                    if full:
                        break
                    new_pos = (part.end, 0)
                    if start >= len(entries):
                        items.append(_Item(name, part.end, 0))
            except FileNotFoundError:
                continue  # deleted by retention meanwhile
            except KeyFileError:
                # Encrypted before forwarding was turned on: this machine cannot read it (by
                # design), so it is passed over, counted as damaged, and left to retention.
                self.damaged += 1
                self._error(f"{path} is encrypted: not forwarded")
                items, new_pos, live, full = [], (offset, skip), False, False
            except ValueError as exc:  # unreadable otherwise: try again at the next poll
                self._error(f"{path}: {exc}")
                continue
            finished = not live and not full
            if finished:
                items.append(_Item(name, new_pos[0], new_pos[1], finished=True))
            with self._lock:
                self._queue.extend(items)
                self._queued_messages += sum(1 for it in items if it.message is not None)
                self._loaded[name] = new_pos
                if finished:
                    self._exhausted.add(name)
        self._confirm(0)  # markers with nothing unconfirmed before them apply now
        if full:
            now = time.monotonic()
            if now - self._unread_at >= 2.0:
                self._unread = self._count_unread(paths)
                self._unread_at = now
        else:
            self._unread = 0

    _half_read: Block | None = None

    def _blocks(self, path: str, offset: int) -> Iterator[Block | Damage]:
        """``read_segment(path, offset)``, starting with the block left half-read last time
        if that is the one at ``offset``."""
        half, self._half_read = self._half_read, None
        if half is not None and half.path == path and half.offset == offset:
            yield half
            offset = half.end
        yield from read_segment(path, offset)

    def _count_unread(self, paths: list[str]) -> int:
        """Records on disk after what is loaded (for the lag). A segment is decoded again
        only when its size or the read position in it changed."""
        count = 0
        cache: dict[str, tuple[tuple[int, int, int], int]] = {}
        for path in paths:
            name = os.path.basename(path)
            with self._lock:
                if name in self._done or name in self._exhausted:
                    continue
                offset, skip = self._loaded.get(name, (0, 0))
            try:
                key = (offset, skip, os.path.getsize(path))
            except OSError:
                continue
            known = self._unread_cache.get(name)
            if known is not None and known[0] == key:
                cache[name] = known
                count += known[1]
                continue
            n = 0
            with contextlib.suppress(OSError, ValueError):
                for part in read_segment(path, offset):
                    if isinstance(part, Block):
                        n += len(part.entries) - (skip if part.offset == offset else 0)
            cache[name] = (key, n)
            count += n
        self._unread_cache = cache
        return count

    _unread_cache: dict[str, tuple[tuple[int, int, int], int]] = {}  # noqa: RUF012

    # -- confirming ------------------------------------------------------------------

    def _confirm(self, count: int) -> None:
        """The destination confirmed the ``count`` oldest unconfirmed messages."""
        confirmed_any = count > 0
        with self._lock:
            queue = self._queue
            head = start = self._head
            while True:
                while head < len(queue) and queue[head].message is None:
                    self._apply(queue[head])
                    head += 1
                if count == 0 or head >= len(queue):
                    break
                self._apply(queue[head])
                head += 1
                count -= 1
                self._queued_messages -= 1
                self.confirmed += 1
            self._sent = max(self._sent, head)
            moved = head != start
            if head > 4096 and head * 2 > len(queue):
                del queue[:head]
                self._sent -= head
                head = 0
            self._head = head
            self._dirty = self._dirty or moved
        if confirmed_any:
            self._confirmed_on_connection = True
        if moved and time.monotonic() - self._saved_at >= _SAVE_EVERY:
            self.save()

    def _apply(self, item: _Item) -> None:
        if item.finished:
            self._done.add(item.segment)
            self._positions.pop(item.segment, None)
            self._exhausted.discard(item.segment)
            self._loaded.pop(item.segment, None)
        elif item.segment not in self._done:
            self._positions[item.segment] = (item.offset, item.skip)

    def _next_batch(self, limit: int) -> list[bytes]:
        batch: list[bytes] = []
        queue = self._queue
        while self._sent < len(queue) and len(batch) < limit:
            message = queue[self._sent].message
            self._sent += 1
            if message is not None:
                batch.append(message)
        return batch

    def _idle(self) -> bool:
        return self._sent >= len(self._queue)

    # -- sending ---------------------------------------------------------------------

    def _maybe_read(self) -> None:
        """Read more in chunks, so that formatting the next records overlaps with the
        relay working on the last ones; at once when everything is sent."""
        now = time.monotonic()
        unsent = len(self._queue) - self._sent
        if unsent == 0 or (unsent < _CHUNK and now - self._read_at >= 0.005):
            self._read_at = now
            self._read_ahead(_CHUNK)

    _read_at = 0.0

    def _late(self) -> bool:
        """While stopping: True once the ``drain_timeout`` for sending what is left is up."""
        if not self._stopping.is_set():
            return False
        now = time.monotonic()
        if self._drain_until is None:
            self._drain_until = now + self.drain_timeout
        return now >= self._drain_until

    _drain_until: float | None = None

    def _pump_relp(self, session: RelpSession) -> None:
        while True:
            late = self._late()
            if not late:
                self._maybe_read()
                room = session.window - session.in_flight
                if room > 0:
                    batch = self._next_batch(room)
                    if batch:
                        session.send(batch)
                        self.sent += len(batch)
            if session.in_flight:
                self._confirm(session.acknowledged(timeout=0.05))
                if late and time.monotonic() >= (self._drain_until or 0) + 2.0:
                    return  # the rest goes out after the next start
                continue
            self._confirm(0)  # markers after the last message
            if self._stopping.is_set() and (late or self._idle()):
                return
            if self._idle():
                if self._dirty:
                    self.save()
                if self._sleep(self.poll, session.sock):
                    # The server speaks while nothing is outstanding: most likely a
                    # "serverclose", or end-of-file.
                    session.check_idle()

    def _pump_tcp(self, sock: socket.socket) -> None:
        sock.settimeout(self.timeout)
        while not self._late():
            self._maybe_read()
            batch = self._next_batch(1024)
            if batch:
                _check_open(sock)
                sock.sendall(b"".join(frame(m) for m in batch))
                self.sent += len(batch)
                self._confirm(len(batch))
                continue
            self._confirm(0)
            if self._stopping.is_set():
                return
            if self._dirty:
                self.save()
            if self._sleep(self.poll, sock):
                _check_open(sock)


def _check_open(sock: socket.socket) -> None:
    """Raise ``ConnectionError`` if the server closed the connection (a syslog server never
    sends anything, so readable means end-of-file or a reset)."""
    pending = getattr(sock, "pending", None)
    ready, _, _ = select.select([sock], [], [], 0)
    if ready or (pending is not None and pending()):
        try:
            sock.settimeout(0.5)
            data = sock.recv(4096)
        except (BlockingIOError, TimeoutError):
            return  # TLS housekeeping only (session tickets), no application data
        if not data:
            raise ConnectionError("the syslog server closed the connection")


class Forwarding:
    """The forwarders of one collector, one per destination (what the collector calls).

    >>> import tempfile
    >>> group = Forwarding(tempfile.mkdtemp(), ["tcp://127.0.0.1:9", "relp://127.0.0.1:9"])
    >>> [s["destination"] for s in group.status()]
    ['tcp://127.0.0.1:9', 'relp://127.0.0.1:9']
    >>> group.stop()
    """

    def __init__(self, directory: str, destinations: list[str] | tuple[str, ...]) -> None:
        parsed = [Destination.parse(d) for d in destinations]
        names = [d.state_name for d in parsed]
        if len(set(names)) != len(names):
            raise ValueError(f"the same forwarding destination is given twice: {destinations}")
        self.forwarders = [Forwarder(directory, d) for d in parsed]

    def start(self) -> None:
        """Start every forwarder's thread."""
        for f in self.forwarders:
            f.start()

    def wake(self) -> None:
        """New records are on disk (the collector calls this after each block)."""
        for f in self.forwarders:
            f.wake()

    def may_delete(self, path: str) -> bool:
        """True if every destination has confirmed all of segment ``path``."""
        return all(f.may_delete(path) for f in self.forwarders)

    def count_lost(self, path: str) -> int:
        """``path`` is deleted anyway: count what each destination loses; the total."""
        return sum(f.count_lost(path) for f in self.forwarders)

    def status(self) -> list[dict[str, Any]]:
        """``Forwarder.status()`` of each destination, in the order given."""
        return [f.status() for f in self.forwarders]

    def stop(self) -> None:
        """Stop them all at once (each sends what is left for up to its drain time)."""
        for f in self.forwarders:
            f._stopping.set()
            f.wake()
        for f in self.forwarders:
            f.stop()
