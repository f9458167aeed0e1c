"""Log collection on shared memory: per-process rings, a collector, crash-proof files.

Each process writes its records into a ring in a shared region (no system call per record);
a collector process maps every ring and writes what they hold into zstd-compressed segment
files, optionally encrypted to a public key. A producer killed at any point loses at most the
record it was writing; a collector killed at any point loses nothing (the next one drains
the rings again, without duplicates). ``ashmem log cat|tail`` reads the files.

>>> import logging, tempfile, ashmem.logd
>>> directory = tempfile.mkdtemp()
>>> with ashmem.logd.start(directory) as collector:
...     log = logging.getLogger("demo")
...     log.addHandler(ashmem.logd.Handler())
...     log.warning("disk %d%% full", 91, extra={"mount": "/srv"})
...     ashmem.logd.flush(timeout=30)
>>> [(e.record.message, e.to_json()["extra"]) for e in ashmem.logd.read(directory)]
[('disk 91% full', {'mount': '/srv'})]

Needs the ``logs`` extra for the files (``pip install 'ashmem[logs]'``: zstandard, and
cryptography for encryption); producers need nothing beyond the standard library.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

from ._client import ENV as ENV
from ._client import Handler as Handler
from ._client import Logger as Logger
from ._client import flush as flush
from ._client import get_logger as get_logger
from ._collector import Settings
from ._errors import CollectorError as CollectorError
from ._errors import KeyFileError as KeyFileError
from ._integrations import StructlogFactory as StructlogFactory
from ._integrations import loguru_sink as loguru_sink
from ._segment import Cursor as Cursor
from ._segment import Entry as Entry
from ._segment import read_directory as read_directory

__all__ = [
    "ENV",
    "Collector",
    "CollectorError",
    "Cursor",
    "EmbeddedCollector",
    "Entry",
    "Handler",
    "KeyFileError",
    "Logger",
    "StructlogFactory",
    "flush",
    "get_logger",
    "loguru_sink",
    "read",
    "read_directory",
    "start",
]


class Collector:
    """A collector running in a child process of this one (made by ``start``).

    ``address`` is its socket path, also in ``os.environ["ASHMEM_LOGD"]`` while it runs.
    ``stop()`` drains every ring and waits for the child to exit; so does leaving a
    ``with`` block. If this process dies, the child drains what is left and exits once its
    last client is gone.
    """

    def __init__(self, directory: str, settings: Settings, *, timeout: float = 30.0) -> None:
        self.directory = os.path.abspath(directory)
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        self._private = tempfile.mkdtemp(prefix="ashmem-logd-", dir=_runtime_dir())
        self.address = os.path.join(self._private, "logd.sock")
        self._parent_r, self._parent_w = os.pipe()
        os.set_inheritable(self._parent_r, True)
        package_root = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (package_root, env.get("PYTHONPATH", "")) if p
        )
        args = [
            sys.executable,
            "-m",
            "ashmem",
            "logd",
            "--dir",
            self.directory,
            "--socket",
            self.address,
            f"--parent-fd={self._parent_r}",
            *settings.to_args(),
        ]
        self.process = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, pass_fds=(self._parent_r,),
            env=env,
        )  # fmt: skip
        os.close(self._parent_r)
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        line = self.process.stdout.readline() if ready else b""
        if line.strip() != b"ready":
            self.process.kill()
            self.process.wait()
            os.close(self._parent_w)
            raise CollectorError(
                f"the log collector for {self.directory} did not start "
                f"(exit code {self.process.returncode}); see its messages above"
            )
        self._previous = os.environ.get(ENV)
        os.environ[ENV] = self.address
        from ._client import _publish, _readdress

        _publish(self.address)
        _readdress(self.address)

    @property
    def pid(self) -> int:
        """The collector process's pid."""
        return int(self.process.pid)

    def stop(self, timeout: float = 30.0) -> int:
        """Drain every ring, stop the collector; its exit code (0 when all went well)."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._parent_w >= 0:
            os.close(self._parent_w)
            self._parent_w = -1
        if self.process.stdout is not None:
            self.process.stdout.close()
        self._unpublish()
        return int(self.process.returncode)

    def __enter__(self) -> Collector:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _unpublish(self) -> None:
        """Give ``ASHMEM_LOGD`` back to what it was before ``start`` (if it still names this
        collector) and remove the private directory of its socket."""
        if os.environ.get(ENV) == self.address:
            if self._previous is None:
                del os.environ[ENV]
            else:
                os.environ[ENV] = self._previous
            from ._client import _publish

            _publish(self._previous)
        import shutil

        shutil.rmtree(self._private, ignore_errors=True)


class EmbeddedCollector(Collector):
    """A collector in a thread of this process, its ring backed by a file (Logan's mode).

    Made by ``start(directory, embedded=True)``. The ring of this process is the file
    ``DIR/embedded.ring`` (when ``start`` comes before the process's first record), so
    records written before a SIGKILL of the whole process are still on disk; the next
    ``start(DIR, embedded=True)`` writes them into the log first. Child processes log to
    this collector through its socket, with shared rings of their own.
    """

    def __init__(self, directory: str, settings: Settings) -> None:
        import fcntl
        import socket
        import threading

        from . import _client
        from ._collector import CollectorServer, bind_listener, recover_file_ring

        self.directory = os.path.abspath(directory)
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        ring_path = os.path.join(self.directory, "embedded.ring")
        self._lock_fd = os.open(
            os.path.join(self.directory, ".embedded.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
            0o600,
        )  # fmt: skip
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._lock_fd)
            raise CollectorError(
                f"another process runs an embedded collector on {self.directory}; "
                "use one directory per process, or a shared collector (start())"
            ) from None
        self.recovered = recover_file_ring(self.directory, ring_path, settings)
        self._private = tempfile.mkdtemp(prefix="ashmem-logd-", dir=_runtime_dir())
        self.address = os.path.join(self._private, "logd.sock")
        self._listener: socket.socket = bind_listener(self.address)
        self._server = CollectorServer(self.directory, self._listener, settings, local_rings=True)
        self._thread = threading.Thread(
            target=self._server.serve, name="ashmem.logd collector", daemon=True
        )
        self._thread.start()
        self._previous = os.environ.get(ENV)
        os.environ[ENV] = self.address
        if _client._client is None:
            _client._ring_file = ring_path
        _client._publish(self.address)
        _client._readdress(self.address)

    @property
    def pid(self) -> int:
        """This process's pid: the collector is a thread here."""
        return os.getpid()

    def stop(self, timeout: float = 30.0) -> int:
        """Drain every ring, stop the collector thread; 0 if it stopped in time."""
        import fcntl

        self._server.stop()
        self._thread.join(timeout)
        self._listener.close()
        self._unpublish()
        if self._lock_fd >= 0:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = -1
        return 1 if self._thread.is_alive() else 0


def _runtime_dir() -> str | None:
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime) and os.access(runtime, os.W_OK):
        return runtime
    return None


def start(directory: str | os.PathLike[str], **options: Any) -> Collector:
    """Run a collector writing to ``directory`` in a child process; return its handle.

    Sets ``ASHMEM_LOGD`` so that this process and its children log to it. Options (also the
    flags of ``ashmem logd``): ``ring_size`` (bytes per client ring, default 1 MiB),
    ``on_full`` (``"block"``, default, waiting up to ``block_timeout`` seconds, 5 by default,
    then dropping; or ``"drop"``; drops are counted and logged), ``encrypt_to`` (path of a
    ``.pub`` file from ``ashmem log keygen``), ``max_segment_bytes`` (64 MiB),
    ``rotate_daily``, ``retain_days``, ``retain_bytes``, ``fsync`` (``"always"``,
    ``"interval"`` = at most once a second and on ``flush``, default, or ``"never"``),
    ``interval`` (seconds between drain passes, 0.02), ``allow_uids``, ``forward`` (syslog
    relay addresses such as ``"relp://HOST:PORT"``, see ``ashmem.logd.forward``; segments
    are kept until every one has confirmed them unless ``retain_ignores_forward``). See the
    module example.

    ``embedded=True`` runs the collector in a thread of this process instead and backs
    this process's ring with a file in ``directory``: see ``EmbeddedCollector``.
    """
    embedded = bool(options.pop("embedded", False))
    settings = Settings(**options)
    if settings.encrypt_to is not None:
        settings.encrypt_to = os.path.abspath(os.fspath(settings.encrypt_to))
    settings.check()
    if settings.encrypt_to is not None:
        from ._crypto import load_public

        load_public(settings.encrypt_to)  # KeyFileError here, not in the collector's stderr
    if embedded:
        return EmbeddedCollector(os.fspath(directory), settings)
    return Collector(os.fspath(directory), settings)


def read(directory: str | os.PathLike[str], *, key: str | None = None) -> Iterator[Entry]:
    """Every intact record of the log directory, in file order (``ashmem log cat`` sorts
    them by time). ``key`` is the path of the private ``.key`` file for encrypted logs.
    Damaged ranges are skipped here; ``read_directory`` reports them.
    """
    private = None
    if key is not None:
        from ._crypto import load_private

        private = load_private(key)
    for item, _cursor in read_directory(os.fspath(directory), key=private):
        entries = getattr(item, "entries", None)
        if entries is not None:
            yield from entries
