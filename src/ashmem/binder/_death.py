"""Death notices (``Proxy.link_to_death``): one thread per process that notices dead binders
and runs their death recipients (Android's ``BpBinder::sendObituary``).

A Proxy with a recipient keeps one extra connection to its service, on which the service
never writes: the watcher thread holds all of them in one epoll set, and anything readable
on one is the service's end closing (EOF or reset). The Proxy is then marked dead
(``Proxy._die``), which queues its recipients here; they run on this thread, one at a time,
and an exception in one is logged. Owns the watch sockets it is given (``forget`` closes
them). After fork the child forgets the parent's watcher and its sockets.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import select
import socket
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING

from . import _wire

if TYPE_CHECKING:
    from ._proxy import Proxy

__all__ = ["DeathRecipient", "DeathWatcher", "watcher"]

logger = logging.getLogger("ashmem.binder")

DeathRecipient = Callable[["Proxy"], object]


class DeathWatcher:
    """One thread per process that notices dead binders and runs death recipients."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watched: dict[int, tuple[socket.socket, weakref.ref[Proxy]]] = {}
        self._jobs: queue.SimpleQueue[tuple[Proxy, list[DeathRecipient]]] = queue.SimpleQueue()
        self._ep = select.epoll()
        self._wake = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._ep.register(self._wake, select.EPOLLIN)
        threading.Thread(target=self._run, name="ashmem-binder-death", daemon=True).start()

    def watch(self, sock: socket.socket, proxy: Proxy) -> None:
        with self._lock:
            self._watched[sock.fileno()] = (sock, weakref.ref(proxy))
            self._ep.register(sock.fileno(), select.EPOLLIN | select.EPOLLRDHUP)

    def forget(self, sock: socket.socket) -> None:
        """Stop watching ``sock`` and close it."""
        with self._lock:
            fd = sock.fileno()
            entry = self._watched.get(fd)
            if entry is not None and entry[0] is sock:
                del self._watched[fd]
                with contextlib.suppress(OSError, ValueError):
                    self._ep.unregister(fd)
            sock.close()

    def notify(self, proxy: Proxy, recipients: list[DeathRecipient]) -> None:
        self._jobs.put((proxy, recipients))
        os.eventfd_write(self._wake, 1)

    def _run(self) -> None:
        while True:
            try:
                events = self._ep.poll()
            except OSError:  # closed after fork
                return
            for fd, _ in events:
                if fd == self._wake:
                    with contextlib.suppress(BlockingIOError):
                        os.eventfd_read(self._wake)
                    self._run_jobs()
                    continue
                with self._lock:
                    entry = self._watched.get(fd)
                if entry is None:
                    continue
                sock, ref = entry
                try:
                    # The service never writes on a watch connection: anything readable is
                    # its end closing (EOF or reset), or noise to discard.
                    if sock.recv(_wire.MAX_MESSAGE, _wire.DONTWAIT):
                        continue
                    reason = "died or closed the connection"
                except BlockingIOError:
                    continue
                except OSError as exc:
                    reason = f"broke the connection ({exc.strerror})"
                self.forget(sock)
                proxy = ref()
                if proxy is not None:
                    proxy._die(f"{proxy._label} {reason}")

    def _run_jobs(self) -> None:
        while True:
            try:
                proxy, recipients = self._jobs.get_nowait()
            except queue.Empty:
                return
            for recipient in recipients:
                try:
                    recipient(proxy)
                except Exception:
                    logger.exception("binder: death recipient %r raised", recipient)


_death_watcher: DeathWatcher | None = None
_death_lock = threading.Lock()


def watcher() -> DeathWatcher:
    global _death_watcher
    found = _death_watcher
    if found is None:
        with _death_lock:
            if _death_watcher is None:
                _death_watcher = DeathWatcher()
            found = _death_watcher
    return found


def _after_fork_in_child() -> None:
    global _death_watcher, _death_lock
    _death_lock = threading.Lock()
    found, _death_watcher = _death_watcher, None
    if found is not None:
        for sock, _ in found._watched.values():
            sock.close()
        found._ep.close()
        os.close(found._wake)


os.register_at_fork(after_in_child=_after_fork_in_child)
