"""The client side: one ring per process, the ``logging`` Handler, the direct logger, flush.

A process gets its ring on first use: it connects to the collector named by ``ASHMEM_LOGD``
(else the user's ``ashmem logd`` daemon socket), reads its settings, creates a region of
``ring_size`` bytes and registers it. From then on a record costs no system call: it is
encoded and copied into the ring under a lock that the threads of the process share.

A forked child never writes into its parent's ring: ``os.register_at_fork`` drops the
inherited client in the child (lock included, so a fork while another thread was inside a
logging call cannot deadlock), and the child makes its own ring on its first record.

If no collector answers, or the one we had went away, records keep going into the ring
(the collector holds no state the client needs); at most about once a second a write
checks the connection and tries to (re)connect, and on success registers the same ring
again, so the new collector drains what the ring holds. Until a collector has answered once,
a full ring drops (counted) instead of blocking: a program with no collector must not hang.
"""

from __future__ import annotations

import collections.abc
import contextlib
import inspect
import json
import logging
import mmap
import os
import secrets
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .. import fdpass
from .._shared_memory import Mapping, SharedMemory
from ._ring import Producer

__all__ = ["Handler", "Logger", "flush", "get_logger"]

ENV = "ASHMEM_LOGD"
_RECONNECT_NS = 1_000_000_000  # at most one connection check per second
_DEFAULT_RING = 1 << 20

# Attributes every LogRecord has; anything else on a record is "extra".
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}


def _address() -> str:
    # A multiprocessing child gets its parent's address through the process object, which
    # spawn and forkserver pickle into it (``_config`` travels with it): a forkserver
    # started before ``start()`` would otherwise hand its children a stale environment.
    mp = sys.modules.get("multiprocessing")
    if mp is not None:
        try:
            path = mp.current_process()._config.get(ENV)
        except Exception:
            path = None
        if isinstance(path, str) and path:
            return path
    path = os.environ.get(ENV)
    if path:
        return path
    from ._collector import default_socket

    return default_socket()


def _process_name() -> str:
    mp = sys.modules.get("multiprocessing")
    if mp is None:
        return "MainProcess"
    try:
        return str(mp.current_process().name)
    except Exception:
        return "MainProcess"


class _Client:
    """This process's ring and its connection to the collector."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.lock = threading.Lock()
        self.flush_lock = threading.Lock()
        self.address = _address()
        self.sock: socket.socket | None = None
        self.file_fd = -1
        self.flush_id = 0
        self.shm: SharedMemory | None = None
        self.mm: Mapping | None = None
        self.producer: Producer | None = None
        self.process = _process_name()
        self.next_check_ns = 0
        self.ever_connected = False
        self._connect(first=True)

    # Called with self.lock held (or before anyone else can see this object).
    def _connect(self, first: bool = False) -> bool:
        self.next_check_ns = time.time_ns() + _RECONNECT_NS
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        try:
            sock.settimeout(5.0)
            sock.connect(self.address)
            data, _items = fdpass.recv(sock, maxfds=0, maxdata=4096)
            settings = json.loads(data)
            if self.producer is None:
                size = int(settings.get("ring_size", _DEFAULT_RING))
                self._make_ring(size, settings)
            elif self.producer is not None:
                self.producer.on_full = str(settings.get("on_full", "block"))
                self.producer.block_timeout = float(settings.get("block_timeout", 5.0))
            ring: list[Any] = [self.shm] if self.shm is not None else [self.file_fd]
            fdpass.send(sock, ring, b'{"op": "register"}')
            sock.setblocking(False)
        except (OSError, ValueError, EOFError, TypeError):
            sock.close()
            if first and self.producer is None:
                self._make_ring(_DEFAULT_RING, {"on_full": "drop"})
            return False
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.close()
        self.sock = sock
        self.ever_connected = True
        return True

    def _make_ring(self, size: int, settings: dict[str, Any]) -> None:
        if _ring_file is not None:
            # Embedded mode: the ring is a file, so that it outlives a SIGKILL of the
            # only process; the next start() of the directory recovers it.
            fd = os.open(_ring_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                os.ftruncate(fd, 0)
                os.ftruncate(fd, size)
                self.mm = mmap.mmap(fd, size)  # type: ignore[assignment]
                self.file_fd = fd
            except BaseException:
                os.close(fd)
                raise
        else:
            self.shm = SharedMemory.create(f"ashmem.logd:{self.pid}", size)
            self.mm = self.shm.map_read_write()
        self.producer = Producer(
            self.mm,
            secrets.randbits(63),
            on_full=str(settings.get("on_full", "block")),
            block_timeout=float(settings.get("block_timeout", 5.0)),
            wake=self._wake,
            pid=self.pid,
            process=self.process,
        )

    def _wake(self) -> None:
        sock = self.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                fdpass.send(sock, [], b'{"op": "wake"}')

    def _check(self) -> None:
        """At most once a second: is the collector still there? If not, try another."""
        sock = self.sock
        if sock is not None:
            try:
                gone = sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
            except BlockingIOError:
                return
            except OSError:
                gone = True
            if not gone:
                return  # a stray reply (an answered flush nobody waited for): keep it
            sock.close()
            self.sock = None
        self._connect()

    def write(
        self,
        levelno: int,
        levelname: str,
        name: str,
        message: str,
        exc: str | None,
        extra: str,
        time_ns: int,
        process: str | None = None,
    ) -> bool:
        """Write one record. ``process``: the process name to store (a LogRecord's
        ``processName``; None there, as with ``logging.logProcesses = False``, stores "");
        left out, this process's name as of the last check. A record with no traceback, no
        extra and that name (left out or the same) is the common case, which
        ``Producer.write_plain`` serves from bytes it encoded once per logger and level."""
        try:
            tid = _thread_ids.tid
        except AttributeError:
            tid = _thread_id()
        with self.lock:
            producer = self.producer
            if producer is None:
                return False
            if time_ns >= self.next_check_ns:
                self._tick(producer, time_ns)
            if exc is None and extra == "{}" and (process is None or process == producer.process):
                return producer.write_plain(levelno, levelname, name, message, time_ns, tid)
            return producer.write_log(
                levelno, levelname, name, message,
                self.process if process is None else process, exc, extra, time_ns, tid,
            )  # fmt: skip

    def _tick(self, producer: Producer, time_ns: int) -> None:
        """Once a second, from a write (lock held): check the connection."""
        self.next_check_ns = time_ns + _RECONNECT_NS
        self._check()
        if not self.ever_connected:
            producer.on_full = "drop"
        # The direct API stores the process name as of the last check: a renamed
        # multiprocessing.current_process() shows within a second.
        self.process = _process_name()
        producer.set_process(self.process)

    def flush(self, timeout: float | None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.flush_lock:
            while True:
                with self.lock:
                    if self.sock is None:
                        self._connect()
                    sock = self.sock
                    head = self.producer.head if self.producer is not None else 0
                if sock is not None:
                    try:
                        self._flush_on(sock, head, deadline)
                        return
                    except TimeoutError:
                        pass  # the collector is slow, not gone: keep the connection
                    except (OSError, EOFError, ValueError):
                        with self.lock:
                            if self.sock is sock:
                                sock.close()
                                self.sock = None
                if deadline is not None and time.monotonic() >= deadline:
                    raise TimeoutError(
                        f"ashmem.logd.flush: the collector at {self.address} did not "
                        f"persist this process's records within {timeout} s"
                    )
                time.sleep(0.05)

    def _flush_on(self, sock: socket.socket, head: int, deadline: float | None) -> None:
        self.flush_id += 1
        request_id = self.flush_id
        request = {"op": "flush", "head": head, "id": request_id}
        fdpass.send(sock, [], json.dumps(request).encode())
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise TimeoutError("flush timed out")
            # Wait for the answer without holding the write lock.
            import select

            ready, _, _ = select.select([sock], [], [], left)
            if not ready:
                continue
            try:
                data, _items = fdpass.recv(sock, maxfds=0, maxdata=4096)
            except BlockingIOError:
                continue
            answer = json.loads(data)
            # Answers to earlier flushes that timed out may still arrive: skip them.
            if answer.get("op") == "flushed" and answer.get("id") == request_id:
                return

    def close(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.close()
            self.sock = None


_client: _Client | None = None
_client_lock = threading.Lock()


_thread_ids = threading.local()
_ring_file: str | None = None  # embedded mode: back this process's ring with this file


def _thread_id() -> int:
    """This thread's kernel tid, kept per thread: gettid(2) once per thread, not per
    record (system calls are what the write path avoids)."""
    tid = threading.get_native_id()
    if not 0 <= tid <= 0xFFFFFFFF:  # the ring stores 32 bits
        tid = 0
    _thread_ids.tid = tid
    return tid


def _get() -> _Client:
    # No getpid() here (a system call): the fork hook below clears _client in a child.
    client = _client
    if client is not None:
        return client
    return _new_client()


def _new_client() -> _Client:
    global _client
    with _client_lock:
        if _client is None:
            _client = _Client()
        return _client


def _after_fork_in_child() -> None:
    global _client, _client_lock, _thread_ids, _ring_file
    old, _client = _client, None
    _ring_file = None  # the file ring is the parent's; a child gets a shared one
    _client_lock = threading.Lock()
    _thread_ids = threading.local()  # the forking thread has a new tid here
    if old is not None:
        # The parent's ring stays the parent's: never write to it from here.
        with contextlib.suppress(OSError):
            if old.sock is not None:
                old.sock.close()
        old.producer = None


os.register_at_fork(after_in_child=_after_fork_in_child)


def _reset_for_address_change() -> None:
    """Forget this process's client (tests and ``start()``: a new collector address)."""
    global _client
    with _client_lock:
        if _client is not None:
            _client.close()
        _client = None


def _publish(address: str | None) -> None:
    """Tell this process's future children (every start method) where the collector is."""
    import multiprocessing

    config = multiprocessing.current_process()._config  # type: ignore[attr-defined]
    if address is None:
        config.pop(ENV, None)
    else:
        config[ENV] = address


def _readdress(address: str) -> None:
    """A new collector address (``start()``): keep this process's ring, register it there."""
    client = _client
    if client is None:
        return
    with client.lock:
        client.address = address
        if client.sock is not None:
            with contextlib.suppress(OSError):
                client.sock.close()
            client.sock = None
        client._connect()


# LogRecord.__init__ always sets the same attributes: a record with no more than that many
# has no extra (the set difference below costs more than the rest of emit's bookkeeping).
_PLAIN_SIZE = len(logging.LogRecord("", 0, "", 0, "", (), None).__dict__)
_LogRecord = logging.LogRecord


def _extra(record_dict: dict[str, Any]) -> str:
    if len(record_dict) <= _PLAIN_SIZE:
        return "{}"
    keys = record_dict.keys() - _STANDARD
    if not keys:
        return "{}"
    extra = {k: record_dict[k] for k in sorted(keys)}
    try:
        return json.dumps(extra, default=repr)
    except (ValueError, TypeError):
        return json.dumps({k: repr(v) for k, v in extra.items()})


class Handler(logging.Handler):
    """A ``logging.Handler`` that writes records into this process's shared-memory ring.

    The message stored is ``record.getMessage()``; a Formatter set on this handler does not
    change what is stored (formatting happens when reading). Connects to the collector named
    by ``ASHMEM_LOGD`` (set by ``ashmem.logd.start``), else the user's ``ashmem logd``.
    Works in ``logging.config.dictConfig`` as ``{"class": "ashmem.logd.Handler"}``.

    >>> import logging, ashmem.logd
    >>> isinstance(ashmem.logd.Handler(), logging.Handler)
    True
    """

    def __init__(self, level: int | str = logging.NOTSET) -> None:
        super().__init__(level)
        _get()

    def handle(self, record: logging.LogRecord) -> Any:
        """Filter, then emit without ``logging.Handler``'s lock: the ring has its own. With
        no filter, a plain record (no extra, no traceback, this process's name) goes straight
        to ``Producer.write_plain`` from here (no ``emit`` call, no ``with``)."""
        if self.filters:
            rv = self.filter(record)
            if rv:
                if isinstance(rv, logging.LogRecord):  # Python 3.12+: a filter may replace it
                    record = rv
                self.emit(record)
            return rv
        time_ns = _time_ns()
        try:
            # Every attribute read before ``record.__dict__``: on CPython 3.11 that access
            # turns the record's inline attribute values into a dict, and each attribute read
            # after it costs several times more.
            if record.exc_info or record.exc_text or record.stack_info:
                self.emit(record)
                return True
            levelno, levelname, name = record.levelno, record.levelname, record.name
            process = record.processName
            if record.__class__ is _LogRecord:  # getMessage() inlined
                message = str(record.msg)
                args = record.args
                if args:
                    message = message % args
            else:
                message = record.getMessage()
            if len(record.__dict__) > _PLAIN_SIZE:  # an extra
                self._write(record, message, time_ns)
                return True
            client = _client or _new_client()
            try:
                tid = _thread_ids.tid
            except AttributeError:
                tid = _thread_id()
            lock = client.lock
            lock.acquire()  # not ``with``: half the cost; the finally releases it
            try:
                producer = client.producer
                if producer is not None:
                    if time_ns >= client.next_check_ns:
                        client._tick(producer, time_ns)
                    if process == producer.process:
                        producer.write_plain(levelno, levelname, name, message, time_ns, tid)
                        return True
            finally:
                lock.release()
            _get().write(levelno, levelname, name, message, None, "{}", time_ns, process or "")
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)
        return True

    def emit(self, record: logging.LogRecord) -> None:
        time_ns = _time_ns()
        try:
            self._write(record, record.getMessage(), time_ns)
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)

    @staticmethod
    def _write(record: logging.LogRecord, message: str, time_ns: int) -> None:
        """Write ``record`` whose message is ``message``, traceback and extra included."""
        levelno, levelname, name = record.levelno, record.levelname, record.name
        process = record.processName or ""
        exc = None
        if record.exc_info:
            exc = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
        elif record.exc_text:
            exc = record.exc_text
        if record.stack_info:
            exc = (exc + "\n" if exc else "") + record.stack_info
        extra = _extra(record.__dict__)  # "{}" for a record with no extra
        _get().write(levelno, levelname, name, message, exc, extra, time_ns, process)


_time_ns = time.time_ns
# logging's own table of level names, which ``logging.addLevelName`` changes in place: the
# direct API stores the name ``logging.getLevelName`` would give, without the call.
_level_names = logging._levelToName


def _format_args(msg: object, args: tuple[object, ...]) -> str:
    """The message when ``str(msg) % args`` raised: a single mapping argument formats
    ``%(name)s`` fields, as in ``logging``; otherwise the record says what failed, so that
    a bad format costs neither the record nor the caller an exception."""
    if len(args) == 1 and isinstance(args[0], collections.abc.Mapping) and args[0]:
        with contextlib.suppress(Exception):
            return str(msg) % args[0]
    try:
        return str(msg) % args
    except Exception as exc:
        try:
            shown = repr(args)
        except Exception:
            shown = f"{len(args)} arguments"
        return f"{msg} (formatting with {shown} failed: {type(exc).__name__}: {exc})"


def _level_method(level: int, doc: str) -> Callable[..., None]:
    """``Logger.info`` and its siblings: ``Logger.log`` at a fixed level, with the plain
    case (no ``exc_info``, no extra) written in the fewest steps."""

    # ``**kw`` holds ``exc_info`` too (Logger.log takes it out): a keyword-only parameter
    # would cost every call, and the plain call passes no keyword. Same calls, same records
    # as ``(msg, *args, exc_info=None, **extra)``, the signature type checkers see.
    def method(self: Logger, msg: object, *args: object, **kw: Any) -> None:
        if level < self.level:
            return
        if kw:
            self.log(level, msg, *args, **kw)
            return
        time_ns = _time_ns()
        if args:
            try:
                message = str(msg) % args
            except Exception:
                message = _format_args(msg, args)
        else:
            message = str(msg)
        client = _client or _new_client()
        try:
            tid = _thread_ids.tid
        except AttributeError:
            tid = _thread_id()
        lock = client.lock
        lock.acquire()  # not ``with``: half the cost; the finally releases it
        try:
            producer = client.producer
            if producer is None:
                return
            if time_ns >= client.next_check_ns:
                client._tick(producer, time_ns)
            try:
                levelname = _level_names[level]
            except KeyError:
                levelname = logging.getLevelName(level)
            producer.write_plain(level, levelname, self.name, message, time_ns, tid)
        finally:
            lock.release()

    method.__doc__ = doc
    method.__signature__ = _LEVEL_SIGNATURE  # type: ignore[attr-defined]  # what help() shows
    return method


def _level_signature(
    self: Logger, msg: object, *args: object, exc_info: Any = None, **extra: Any
) -> None:
    """The signature the level methods document (they take ``**kw``: see there)."""


_LEVEL_SIGNATURE = inspect.signature(_level_signature)


class Logger:
    """The direct API: like a ``logging.Logger`` that writes straight into the ring, with
    less overhead (no LogRecord, no handler chain). Made by ``get_logger(name)``.

    Keyword arguments other than ``exc_info`` become the record's ``extra``. The level name
    stored is the one ``logging.getLevelName`` gives (``logging.addLevelName`` applies).

    >>> log = get_logger("app.db")
    >>> log.info("connected to %s", "db1", shard=3)
    """

    __slots__ = ("level", "name")

    def __init__(self, name: str, level: int = logging.DEBUG) -> None:
        self.name = name
        self.level = level

    def log(
        self, level: int, msg: object, *args: object, exc_info: Any = None, **extra: Any
    ) -> None:
        """Write one record at ``level`` (an int, as in ``logging``)."""
        if level < self.level:
            return
        time_ns = _time_ns()
        if args:
            try:
                message = str(msg) % args
            except Exception:
                message = _format_args(msg, args)
        else:
            message = str(msg)
        levelname = _level_names.get(level) or logging.getLevelName(level)
        exc = None
        if exc_info:
            if exc_info is True:
                exc_info = sys.exc_info()
            elif isinstance(exc_info, BaseException):
                exc_info = (type(exc_info), exc_info, exc_info.__traceback__)
            if exc_info[0] is not None:
                exc = "".join(traceback.format_exception(*exc_info)).rstrip("\n")
        extra_s = json.dumps(extra, default=repr) if extra else "{}"
        _get().write(level, levelname, self.name, message, exc, extra_s, time_ns)

    if TYPE_CHECKING:  # the signatures _level_method's closures have, for type checkers

        def debug(self, msg: object, *args: object, exc_info: Any = None, **extra: Any) -> None:
            """Log at DEBUG."""

        def info(self, msg: object, *args: object, exc_info: Any = None, **extra: Any) -> None:
            """Log at INFO."""

        def warning(self, msg: object, *args: object, exc_info: Any = None, **extra: Any) -> None:
            """Log at WARNING."""

        def error(self, msg: object, *args: object, exc_info: Any = None, **extra: Any) -> None:
            """Log at ERROR."""

        def critical(self, msg: object, *args: object, exc_info: Any = None, **extra: Any) -> None:
            """Log at CRITICAL."""

    else:
        debug = _level_method(logging.DEBUG, "Log at DEBUG.")
        info = _level_method(logging.INFO, "Log at INFO.")
        warning = _level_method(logging.WARNING, "Log at WARNING.")
        error = _level_method(logging.ERROR, "Log at ERROR.")
        critical = _level_method(logging.CRITICAL, "Log at CRITICAL.")

    def exception(self, msg: object, *args: object, exc_info: Any = True, **extra: Any) -> None:
        """Log at ERROR with the exception being handled."""
        self.log(logging.ERROR, msg, *args, exc_info=exc_info, **extra)


def get_logger(name: str) -> Logger:
    """A direct logger named ``name`` (see ``Logger``).

    >>> get_logger("worker").name
    'worker'
    """
    return Logger(name)


def flush(timeout: float | None = None) -> None:
    """Return once the collector has persisted every record this process wrote before the
    call. ``TimeoutError`` if ``timeout`` seconds pass first (no collector, or it is stuck).
    See the example of ``ashmem.logd``.
    """
    _get().flush(timeout)
