"""How regions travel through pickling: only through picklers that can carry descriptors.

A ``SharedMemory`` or ``MemoryFile`` is a descriptor, and plain ``pickle`` has nowhere to put
one: the old ``__reduce__`` parked a duplicate in multiprocessing's resource sharer, which
leaked it for good when nobody came to fetch it. So plain pickling now raises ``TypeError``
(``_shared_memory.plain_pickle_error``) and the reducers live where descriptors can go:

* multiprocessing's ``ForkingPickler`` (``multiprocessing.reduction.register``), used for
  ``Process`` arguments under spawn and forkserver, ``multiprocessing.Queue``,
  ``SimpleQueue``, ``Pipe``/``Connection``, ``Pool``, ``Manager`` proxies and
  ``concurrent.futures.ProcessPoolExecutor``. The descriptor goes as ``DupFd``: handed to
  the child by the spawning ``Popen`` while a process starts, through the resource sharer
  otherwise (the receiver fetches it when it unpickles).
* ``ashmem.Queue`` / ``Pipe`` / ``Pool``, whose pickler sends descriptors with SCM_RIGHTS in
  the same datagram as the pickle (``ashmem._queue``). Reducers registered here with
  ``queue_reducer`` are used there too.

``import ashmem`` does not import multiprocessing (a program that only shares regions should
not pay for it, and a program that never imports it gets no resource tracker). The reducers
are registered with ``ForkingPickler`` the moment ``multiprocessing.reduction`` is imported
(at once if it already is, else by a one-shot import hook on ``sys.meta_path``), which is
before anything can be pickled through it.

What is unpickled is what multiprocessing itself unpickles (its own pickles, from its own
channels); a received descriptor is checked to be a region (``SharedMemory.from_fd``) before
anything uses it, and closed if it is not.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from typing import Any

from ._memory_file import MemoryFile
from ._shared_memory import SharedMemory

__all__ = ["QUEUE_REDUCERS", "queue_pickling", "register"]

#: Reducers that ``ashmem._queue``'s pickler uses instead of multiprocessing's, by exact type.
QUEUE_REDUCERS: dict[type, Callable[[Any], Any]] = {}

#: While ``ashmem._queue`` pickles a message in this thread, ``queue_pickling.threshold`` is
#: that connection's threshold (else absent), so that a queue reducer can pickle what will go
#: inline the cheapest way (for numpy: the protocol-4 reduce, rebuilt in C).
queue_pickling = threading.local()


_MP_MODULE = "multiprocessing.reduction"
#: Reducers for multiprocessing's pickler, registered with it once it is imported.
_MP_REDUCERS: dict[type, Callable[[Any], Any]] = {}
_lock = threading.Lock()


def _register_pending() -> None:
    module = sys.modules.get(_MP_MODULE)
    if module is None or not hasattr(module, "ForkingPickler"):
        return
    with _lock:
        for cls, reducer in _MP_REDUCERS.items():
            module.ForkingPickler.register(cls, reducer)


class _LoaderThenRegister:
    """Wraps the real loader of ``multiprocessing.reduction``: runs it, then registers."""

    def __init__(self, loader: Any) -> None:
        self._loader = loader

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self._loader.exec_module(module)
        _register_pending()


class _WatchForMultiprocessing:
    """One-shot ``sys.meta_path`` finder: when ``multiprocessing.reduction`` is imported, let
    the other finders find it and wrap its loader so that our reducers are registered as
    soon as the module has run."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != _MP_MODULE:
            return None
        with _lock:
            if self in sys.meta_path:
                sys.meta_path.remove(self)
        import importlib.util

        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            spec.loader = _LoaderThenRegister(spec.loader)  # type: ignore[assignment]
        return spec


def _watch() -> None:
    if _MP_MODULE in sys.modules:
        _register_pending()
    else:
        sys.meta_path.insert(0, _WatchForMultiprocessing())


def register(
    cls: type,
    reducer: Callable[[Any], Any],
    *,
    queue_reducer: Callable[[Any], Any] | None = None,
) -> None:
    """Use ``reducer`` for ``cls`` in multiprocessing's pickler (now, or when it is imported),
    and ``queue_reducer`` (if given) in ashmem's queues."""
    with _lock:
        _MP_REDUCERS[cls] = reducer
    _register_pending()
    if queue_reducer is not None:
        QUEUE_REDUCERS[cls] = queue_reducer


def _take_dup(dupfd: Any) -> int:
    return int(dupfd.detach())


def rebuild_shared_memory(dupfd: Any) -> SharedMemory:
    fd = _take_dup(dupfd)
    try:
        return SharedMemory.from_fd(fd)
    except BaseException:
        os.close(fd)
        raise


def _reduce_shared_memory(shm: SharedMemory) -> tuple[Any, ...]:
    from multiprocessing import reduction  # imported: we are in its pickler

    return (rebuild_shared_memory, (reduction.DupFd(shm.fileno()),))


def rebuild_memory_file(shm: SharedMemory) -> MemoryFile:
    return MemoryFile.from_shared_memory(shm)


def _reduce_memory_file(file: MemoryFile) -> tuple[Any, ...]:
    # The region goes through the same pickler, so it takes whichever path that pickler
    # gives SharedMemory (DupFd here, SCM_RIGHTS in ashmem's queues).
    return (rebuild_memory_file, (file.shared_memory,))


register(SharedMemory, _reduce_shared_memory)
register(MemoryFile, _reduce_memory_file, queue_reducer=_reduce_memory_file)
_watch()
