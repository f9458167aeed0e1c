"""The collector: accepts rings from clients, drains them into segment files.

Transport: one ``SOCK_SEQPACKET`` socket; messages are ``ashmem.fdpass`` frames whose data is
a small JSON object (at most 4 KiB, never unpickled). On connect the collector greets with its
settings; the client answers ``{"op": "register"}`` with its ring region attached (a new ring,
or the one it already has when it comes back after a collector restart). The uid and pid of a
ring are the kernel's ``SO_PEERCRED`` of that connection, never anything the client says.
Other messages: ``{"op": "wake"}`` (drain now: a producer is waiting for room),
``{"op": "flush", "head": N}`` (answered ``{"op": "flushed"}`` once every byte before ``N`` of
the ring is written to the segment file, and fsynced unless ``fsync="never"``), and, on a
connection without a ring, ``{"op": "status"}``.

Every drain pass (every ``interval`` seconds, or at once when woken) takes the new records of
every ring, writes them as one block, and only then moves each ring's ``tail``: a collector
killed at any point loses nothing, and the next one skips the sequence numbers it finds in
the newest segment's block index (``_segment.last_seqs``). A client that dies is drained to
its last published record before its ring is let go.

Hostile clients: a connection from a uid that is neither ours nor allowed is closed at
once; a garbage message closes that connection (its ring is drained first); a garbage ring
(bad header, records that stay invalid for a second) costs that ring only. At most
``MAX_CLIENTS`` connections and ``MAX_MAPPED`` bytes of rings are held.
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import select
import selectors
import shutil
import signal
import socket
import struct
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

from .. import fdpass
from .._errors import MessageError
from .._shared_memory import Mapping, SharedMemory
from ._ring import MAX_RING_SIZE, MIN_RING_SIZE, Drain
from ._segment import Chunk, SegmentWriter, last_seqs, segment_paths

__all__ = ["CollectorServer", "Settings"]

MAX_CLIENTS = 1024
MAX_MAPPED = 4 << 30
MAX_MESSAGE = 4096
MAX_FLUSHES = 64  # flush requests one client may have waiting
_BLOCK_BYTES = 8 << 20  # records per block, at most (before compression)
_UCRED = struct.Struct("3i")


@dataclass
class Settings:
    """What ``start()`` and ``ashmem logd`` accept; see ``ashmem.logd.start``."""

    ring_size: int = 1 << 20
    on_full: str = "block"
    block_timeout: float = 5.0
    encrypt_to: str | None = None
    max_segment_bytes: int = 64 << 20
    rotate_daily: bool = False
    retain_days: float | None = None
    retain_bytes: int | None = None
    fsync: str = "interval"
    interval: float = 0.02
    allow_uids: tuple[int, ...] = ()
    # Forwarding (``ashmem.logd.forward``): destination addresses, and whether retention
    # may delete segments some destination has not confirmed (the loss is counted).
    forward: tuple[str, ...] = ()
    retain_ignores_forward: bool = False

    def check(self) -> None:
        if not MIN_RING_SIZE <= self.ring_size <= MAX_RING_SIZE:
            raise ValueError(
                f"ring_size must be between {MIN_RING_SIZE} and {MAX_RING_SIZE}, "
                f"got {self.ring_size}"
            )
        if self.on_full not in ("block", "drop"):
            raise ValueError(f"on_full must be 'block' or 'drop', not {self.on_full!r}")
        if self.fsync not in ("always", "interval", "never"):
            raise ValueError(f"fsync must be 'always', 'interval' or 'never', not {self.fsync!r}")
        if self.block_timeout < 0:
            raise ValueError("block_timeout must be >= 0")
        if self.max_segment_bytes < 4096:
            raise ValueError("max_segment_bytes must be at least 4096")
        if isinstance(self.forward, str):
            self.forward = (self.forward,)
        self.forward = tuple(self.forward)
        if self.forward:
            from .forward import Destination

            names = [Destination.parse(text).state_name for text in self.forward]
            if len(set(names)) != len(names):
                raise ValueError(
                    f"forward names one destination twice (same scheme, host and port): "
                    f"{list(self.forward)}; they would share one cursor"
                )
            if self.encrypt_to is not None:
                raise ValueError(
                    "forward and encrypt_to cannot be combined: the collector cannot read "
                    "the segments it encrypts; forward over TLS (relp+tls://) instead"
                )

    def to_args(self) -> list[str]:
        """The ``ashmem logd`` flags that give these settings."""
        args = [
            f"--ring-size={self.ring_size}",
            f"--on-full={self.on_full}",
            f"--block-timeout={self.block_timeout}",
            f"--max-segment-bytes={self.max_segment_bytes}",
            f"--fsync={self.fsync}",
            f"--interval={self.interval}",
        ]
        if self.encrypt_to is not None:
            args.append(f"--encrypt-to={self.encrypt_to}")
        if self.rotate_daily:
            args.append("--rotate-daily")
        if self.retain_days is not None:
            args.append(f"--retain-days={self.retain_days}")
        if self.retain_bytes is not None:
            args.append(f"--retain-bytes={self.retain_bytes}")
        args += [f"--allow-uid={uid}" for uid in self.allow_uids]
        args += [f"--forward={url}" for url in self.forward]
        if self.retain_ignores_forward:
            args.append("--retain-ignores-forward")
        return args


@dataclass(eq=False)
class _Conn:
    sock: socket.socket
    uid: int
    pid: int
    shm: SharedMemory | None = None
    mm: Mapping | None = None
    drain: Drain | None = None
    flushes: list[tuple[int, int]] = field(default_factory=list)  # (head, request id)
    records: int = 0
    gone: bool = False
    pidfd: int = -1  # the client process (pidfd_open), to tell "hung up" from "exited"

    def exited(self) -> bool:
        """True once the client process has exited (or we cannot tell)."""
        if self.pidfd < 0:
            return True
        ready, _, _ = select.select([self.pidfd], [], [], 0)
        return bool(ready)


def _log(message: str) -> None:
    """The collector's own log: its stderr (the daemon's journal under systemd)."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.write(f"{stamp} ashmem logd[{os.getpid()}]: {message}\n")
        sys.stderr.flush()


class CollectorServer:
    """Serves one listening socket, writes one log directory. ``serve()`` runs until
    ``stop()`` (any thread), SIGTERM/SIGINT (when run in the main thread) or, if
    ``parent_fd`` is given, until that pipe reaches end-of-file (the parent died) and no
    client is left. Borrows ``parent_fd``."""

    def __init__(
        self,
        directory: str,
        listener: socket.socket,
        settings: Settings,
        *,
        parent_fd: int | None = None,
        local_rings: bool = False,
    ) -> None:
        settings.check()
        self._local_rings = local_rings
        self.directory = directory
        self.settings = settings
        self._listener = listener
        self._parent_fd = parent_fd
        self._recipient: bytes | None = None
        if settings.encrypt_to is not None:
            from ._crypto import load_public

            self._recipient = load_public(settings.encrypt_to)
        self._persisted = last_seqs(directory)
        self._conns: dict[int, _Conn] = {}
        self._mapped = 0
        self._segment_no = 0
        self._writer: SegmentWriter | None = None
        self._stop = threading.Event()
        self._sel: selectors.BaseSelector | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._greeting = json.dumps(
            {
                "v": 1,
                "ring_size": settings.ring_size,
                "on_full": settings.on_full,
                "block_timeout": settings.block_timeout,
            }
        ).encode()
        self._uid = os.geteuid()
        self._allowed = {self._uid, *settings.allow_uids}
        self._disk_error_at = 0.0
        self.records = 0
        self.disk_errors = 0
        self._forwarding: Any = None
        if settings.forward:
            from .forward import Forwarding

            self._forwarding = Forwarding(directory, settings.forward)
        self._rate: list[tuple[float, int]] = []
        self._day = time.gmtime().tm_yday

    # -- lifecycle -------------------------------------------------------------------

    def stop(self) -> None:
        """Ask ``serve()`` to drain every ring and return (thread- and signal-safe)."""
        self._stop.set()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def serve(self) -> None:
        sel = self._sel = selectors.DefaultSelector()
        self._listener.setblocking(False)
        sel.register(self._listener, selectors.EVENT_READ, "listen")
        sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        parent_gone = False
        if self._parent_fd is not None:
            sel.register(self._parent_fd, selectors.EVENT_READ, "parent")
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, lambda *_: self.stop())
        if self._forwarding is not None:
            self._forwarding.start()
        try:
            while not self._stop.is_set():
                for key, _ in sel.select(self.settings.interval):
                    what = key.data
                    if what == "listen":
                        self._accept(sel)
                    elif what == "wake":
                        with contextlib.suppress(OSError):
                            self._wake_r.recv(4096)
                    elif what == "parent":
                        with contextlib.suppress(OSError):
                            if not os.read(key.fd, 4096):
                                parent_gone = True
                                sel.unregister(key.fd)
                    else:
                        self._message(sel, what)
                try:
                    self._pass()
                except Exception:
                    # Never die with rings in our care: say what broke, go on next pass.
                    _log("drain pass failed:\n" + traceback.format_exc())
                    time.sleep(self.settings.interval)
                if parent_gone and not any(not c.gone for c in self._conns.values()):
                    break
            # Drain to the end: until a pass finds nothing new.
            while self._pass():
                pass
        finally:
            for conn in list(self._conns.values()):
                self._release(conn)
            sel.close()
            self._sel = None
            if self._writer is not None:
                self._writer.close()
            if self._forwarding is not None:
                self._forwarding.wake()
                self._forwarding.stop()
            self._wake_r.close()
            self._wake_w.close()

    # -- connections -----------------------------------------------------------------

    def _accept(self, sel: selectors.BaseSelector) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                _log(f"accept failed: {exc}")
                return
            pid, uid, _gid = _UCRED.unpack(
                sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
            )
            if uid not in self._allowed or len(self._conns) >= MAX_CLIENTS:
                sock.close()
                continue
            sock.settimeout(0.0)
            conn = _Conn(sock, uid, pid)
            try:
                fdpass.send(sock, [], self._greeting)
            except OSError:
                sock.close()
                continue
            # SO_PEERCRED's pid is the process that connected; a pidfd taken now names that
            # process and no other, even once its pid is reused.
            with contextlib.suppress(OSError, AttributeError):
                conn.pidfd = os.pidfd_open(pid)
            self._conns[sock.fileno()] = conn
            sel.register(sock, selectors.EVENT_READ, conn)

    def _message(self, sel: selectors.BaseSelector, conn: _Conn) -> None:
        try:
            data, items = fdpass.recv(conn.sock, maxfds=1, maxdata=MAX_MESSAGE)
        except (EOFError, OSError, MessageError):
            self._goodbye(sel, conn)
            return
        try:
            request = json.loads(data)
            op = request.get("op") if isinstance(request, dict) else None
        except ValueError:
            op = None
        try:
            if op == "register" and len(items) == 1 and conn.drain is None:
                item = items.pop()
                if isinstance(item, SharedMemory):
                    self._register(conn, item)
                    return
                if self._local_rings and conn.pid == os.getpid():
                    # A file-backed ring of this very process (embedded mode): trusted.
                    self._register_file(conn, item)
                    return
                items.append(item)
            elif op == "wake" and not items:
                return
            elif (
                op == "flush"
                and not items
                and isinstance(request.get("head"), int)
                and isinstance(request.get("id", 0), int)
                and len(conn.flushes) < MAX_FLUSHES
            ):
                conn.flushes.append((request["head"], request.get("id", 0)))
                return
            elif op == "status" and not items and conn.drain is None:
                fdpass.send(conn.sock, [], json.dumps(self.status()).encode())
                return
        except (OSError, ValueError) as exc:
            _log(f"client pid {conn.pid}: {exc}")
        finally:
            for item in items:
                if isinstance(item, int):
                    os.close(item)
                else:
                    item.close()
        self._goodbye(sel, conn)

    def _register(self, conn: _Conn, shm: SharedMemory) -> None:
        size = shm.size
        if not MIN_RING_SIZE <= size <= MAX_RING_SIZE or self._mapped + size > MAX_MAPPED:
            shm.close()
            raise ValueError(f"refused a ring of {size} bytes")
        try:
            mm = shm.map_read_write(populate=False)
        except OSError:
            shm.close()
            raise
        try:
            drain = Drain(mm, 0)
        except ValueError:
            mm.close()
            shm.close()
            raise
        drain.last_seq = self._persisted.get((conn.uid, conn.pid, drain.ring_id), 0)
        conn.shm, conn.mm, conn.drain = shm, mm, drain
        self._mapped += size
        self._adopt(conn)

    def _adopt(self, conn: _Conn) -> None:
        """A ring registered again on a new connection while we still hold it from the old
        one: keep the old reading position (one reader per ring, or records would be read
        twice) and let the old connection go."""
        assert conn.drain is not None
        for other in list(self._conns.values()):
            if (
                other is not conn
                and other.drain is not None
                and (other.uid, other.pid, other.drain.ring_id)
                == (conn.uid, conn.pid, conn.drain.ring_id)
            ):
                old = other.drain
                old.rebind(conn.mm)  # same memory, the new connection's mapping
                conn.drain.release()
                conn.drain = old
                conn.records = other.records
                other.drain = None
                other.gone = True
                self._release(other)

    def _register_file(self, conn: _Conn, fd: int) -> None:
        try:
            mm = mmap.mmap(fd, 0)
        finally:
            os.close(fd)
        try:
            drain = Drain(mm, 0)
        except ValueError:
            mm.close()
            raise
        drain.last_seq = self._persisted.get((conn.uid, conn.pid, drain.ring_id), 0)
        conn.mm, conn.drain = mm, drain  # type: ignore[assignment]
        self._adopt(conn)

    def _goodbye(self, sel: selectors.BaseSelector, conn: _Conn) -> None:
        """The client went away (or misbehaved): stop listening, keep the ring until it is
        drained to its last published record."""
        with contextlib.suppress(KeyError, ValueError):
            sel.unregister(conn.sock)
        conn.gone = True
        conn.flushes.clear()
        if conn.drain is None:
            self._release(conn)

    def _release(self, conn: _Conn) -> None:
        if self._sel is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._sel.unregister(conn.sock)
        for fd, c in list(self._conns.items()):
            if c is conn:
                del self._conns[fd]
        with contextlib.suppress(OSError):
            conn.sock.close()
        if conn.pidfd >= 0:
            os.close(conn.pidfd)
            conn.pidfd = -1
        if conn.drain is not None:
            conn.drain.release()  # its header view, or the mapping would refuse to close
        if conn.mm is not None:
            with contextlib.suppress(Exception):
                conn.mm.close()
            self._mapped -= conn.shm.size if conn.shm is not None else 0
        if conn.shm is not None:
            conn.shm.close()
        conn.mm = conn.shm = conn.drain = None

    # -- draining --------------------------------------------------------------------

    def _pass(self) -> bool:
        """Drain every ring into one block; True if anything was written."""
        chunks: list[Chunk] = []
        taken: list[tuple[_Conn, tuple[int, int | None, int], int]] = []
        budget = _BLOCK_BYTES
        for conn in list(self._conns.values()):
            drain = conn.drain
            if drain is None:
                continue
            before = (drain.tail, drain.expect, drain.last_seq)
            corrupt = drain.corrupt
            records = drain.take(max(budget, 1 << 16))
            if drain.corrupt != corrupt:
                tail, head, expect = drain.last_corruption or (0, None, None)
                _log(
                    f"ring of pid {conn.pid} (uid {conn.uid}) is corrupt: bytes {tail}-{head} "
                    f"skipped (expected seq {expect}); its other records are kept"
                )
            if records:
                body = b"".join(records)
                budget -= len(body)
                chunks.append(Chunk(conn.uid, conn.pid, drain.ring_id, drain.last_seq, body))
                taken.append((conn, before, len(records)))
            elif drain.tail != before[0]:
                taken.append((conn, before, 0))  # skipped pads or duplicates: commit
        wrote = False
        if chunks:
            try:
                writer = self._segment()
                writer.append(chunks)
            except OSError as exc:
                # Disk full or failing: the records stay in the rings (tail not moved), the
                # producers block or drop -- counted -- and we try again next pass.
                for conn, (tail, expect, last), _ in taken:
                    if conn.drain is not None:
                        conn.drain.tail, conn.drain.expect, conn.drain.last_seq = (
                            tail,
                            expect,
                            last,
                        )
                self.disk_errors += 1
                now = time.monotonic()
                if now - self._disk_error_at >= 10.0:
                    self._disk_error_at = now
                    _log(
                        f"cannot write to {self.directory}: {exc.strerror or exc}; records "
                        "stay in the client rings until there is room (full rings block, "
                        "then drop and count)"
                    )
                return False
            wrote = True
        for conn, _, count in taken:
            if conn.drain is not None:
                conn.drain.commit()
                conn.records += count
                self.records += count
        if wrote:
            self._maybe_rotate()  # before answering: a flush that returned saw the whole pass
            if self._forwarding is not None:
                self._forwarding.wake()
        self._answer_flushes()
        self._sample_rate()
        for conn in list(self._conns.values()):
            # A client that hung up but still runs keeps writing into its ring and will come
            # back (register again): keep draining the ring until its process is gone. Ask
            # whether it exited *before* reading how far it published: read the other way
            # round, a client that writes more and dies between the two reads would have
            # its last records released undrained.
            if conn.gone and (
                conn.drain is None or (conn.exited() and conn.drain.published() <= conn.drain.tail)
            ):
                self._release(conn)
        return wrote

    def _answer_flushes(self) -> None:
        synced = False
        for conn in self._conns.values():
            if not conn.flushes or conn.drain is None:
                continue
            done = [f for f in conn.flushes if f[0] <= conn.drain.tail]
            if not done:
                continue
            if not synced and self._writer is not None:
                try:
                    self._writer.sync()
                except OSError as exc:
                    _log(f"fsync failed: {exc}")
                    return
                synced = True
            conn.flushes = [f for f in conn.flushes if f[0] > conn.drain.tail]
            for _, request_id in done:
                with contextlib.suppress(OSError):
                    answer = {"op": "flushed", "id": request_id}
                    fdpass.send(conn.sock, [], json.dumps(answer).encode())

    def _segment(self) -> SegmentWriter:
        if self._writer is None:
            while True:
                try:
                    self._writer = SegmentWriter(
                        self.directory,
                        recipient=self._recipient,
                        fsync=self.settings.fsync,
                        sequence=self._segment_no,
                    )
                    break
                except FileExistsError:
                    self._segment_no += 1
            self._segment_no += 1
        return self._writer

    def _maybe_rotate(self) -> None:
        writer = self._writer
        if writer is None:
            return
        day = time.gmtime().tm_yday
        if writer.size >= self.settings.max_segment_bytes or (
            self.settings.rotate_daily and day != self._day
        ):
            self._day = day
            writer.close()
            self._writer = None
            self._retain(exclude=writer.path)

    def _retain(self, exclude: str) -> None:
        s = self.settings
        if s.retain_days is None and s.retain_bytes is None:
            return
        entries = []
        for path in segment_paths(self.directory):
            if path == exclude:
                continue
            with contextlib.suppress(OSError):
                st = os.stat(path)
                entries.append((path, st.st_mtime, st.st_size))
        now = time.time()
        total = sum(size for _, _, size in entries) + os.path.getsize(exclude)
        for path, mtime, size in entries:  # oldest first
            old = s.retain_days is not None and now - mtime > s.retain_days * 86400
            big = s.retain_bytes is not None and total > s.retain_bytes
            if not (old or big):
                continue
            if self._forwarding is not None and not self._forwarding.may_delete(path):
                if not s.retain_ignores_forward:
                    continue  # a destination still needs it
                lost = self._forwarding.count_lost(path)
                _log(f"retention deletes {path} before it was forwarded: {lost} records lost")
            with contextlib.suppress(OSError):
                os.unlink(path)
                total -= size

    # -- status ----------------------------------------------------------------------

    def _sample_rate(self) -> None:
        """Keep (time, records) samples of the last 10 s, one a second, for records/s."""
        now = time.monotonic()
        if not self._rate or now - self._rate[-1][0] >= 1.0:
            self._rate = [(t, n) for t, n in self._rate if now - t <= 10.0]
            self._rate.append((now, self.records))

    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        self._sample_rate()
        t0, n0 = self._rate[0]
        rate = (self.records - n0) / (now - t0) if now > t0 else 0.0
        clients = []
        for conn in self._conns.values():
            if conn.drain is None:
                continue
            fill, size = conn.drain.fill()
            dropped = int.from_bytes(conn.mm[16:24], "little") if conn.mm is not None else 0
            clients.append(
                {
                    "pid": conn.pid,
                    "uid": conn.uid,
                    "ring_bytes": size,
                    "ring_fill": fill,
                    "records": conn.records,
                    "dropped": dropped,
                    "corrupt": conn.drain.corrupt,
                    "connected": not conn.gone,
                }
            )
        return {
            "pid": os.getpid(),
            "directory": self.directory,
            "segment": self._writer.path if self._writer is not None else None,
            "records": self.records,
            "records_per_s": round(rate, 1),
            "disk_errors": self.disk_errors,
            "clients": clients,
            "forward": self._forwarding.status() if self._forwarding is not None else [],
        }


def recover_file_ring(directory: str, path: str, settings: Settings) -> int:
    """Embedded mode, at start: write what a killed process left in its file-backed ring
    ``path`` into ``directory`` (skipping what is already there); return how many records.
    The ring file is then emptied, ready for a fresh ring."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return 0
    try:
        if os.fstat(fd).st_size < MIN_RING_SIZE:
            return 0
        with mmap.mmap(fd, 0) as mm:
            try:
                drain = Drain(mm, 0)
            except ValueError:
                return 0
            uid, pid = os.geteuid(), drain.pid_hint
            drain.last_seq = last_seqs(directory).get((uid, pid, drain.ring_id), 0)
            try:
                records = drain.take()
            finally:
                drain.release()  # before the mapping closes
            # Records that stay unreadable are what the killed producer was writing.
            if records:
                recipient = None
                if settings.encrypt_to is not None:
                    from ._crypto import load_public

                    recipient = load_public(settings.encrypt_to)
                writer = SegmentWriter(directory, recipient=recipient, fsync=settings.fsync,
                                       sequence=999999)  # fmt: skip
                try:
                    writer.append([Chunk(uid, pid, drain.ring_id, drain.last_seq,
                                         b"".join(records))])  # fmt: skip
                finally:
                    writer.close()
            return len(records)
    finally:
        os.close(fd)


def bind_listener(path: str) -> socket.socket:
    """A listening SEQPACKET socket at ``path``; a stale socket file there is replaced, a
    live one (something answers) is ``FileExistsError``."""
    if os.path.exists(path):
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)
        else:
            raise FileExistsError(f"a log collector already listens at {path}")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        sock.bind(path)
        sock.listen(128)
    except BaseException:
        sock.close()
        raise
    return sock


def default_socket() -> str:
    """Where ``ashmem logd`` listens by default: ``logd.sock`` in the user's private
    binder service directory (``$XDG_RUNTIME_DIR/ashmem``, else ``<tmp>/ashmem-<uid>``)."""
    from ..binder import service_directory

    return os.path.join(service_directory(), "logd.sock")


def prepare_directory(directory: str) -> str:
    directory = os.path.abspath(directory)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    return directory


def cleanup_private(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)
