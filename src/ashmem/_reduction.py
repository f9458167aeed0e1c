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

What is unpickled is what multiprocessing itself unpickles (its own pickles, from its own
channels); a received descriptor is checked to be a region (``SharedMemory.from_fd``) before
anything uses it, and closed if it is not.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from multiprocessing import reduction
from typing import Any

from ._memory_file import MemoryFile
from ._shared_memory import SharedMemory

__all__ = ["QUEUE_REDUCERS", "register"]

#: Reducers that ``ashmem._queue``'s pickler uses instead of multiprocessing's, by exact type.
QUEUE_REDUCERS: dict[type, Callable[[Any], Any]] = {}


def register(
    cls: type,
    reducer: Callable[[Any], Any],
    *,
    queue_reducer: Callable[[Any], Any] | None = None,
) -> None:
    """Use ``reducer`` for ``cls`` in multiprocessing's pickler, and ``queue_reducer`` (if
    given) in ashmem's queues."""
    reduction.register(cls, reducer)
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
    return (rebuild_shared_memory, (reduction.DupFd(shm.fileno()),))


def rebuild_memory_file(shm: SharedMemory) -> MemoryFile:
    return MemoryFile.from_shared_memory(shm)


def _reduce_memory_file(file: MemoryFile) -> tuple[Any, ...]:
    # The region goes through the same pickler, so it takes whichever path that pickler
    # gives SharedMemory (DupFd here, SCM_RIGHTS in ashmem's queues).
    return (rebuild_memory_file, (file.shared_memory,))


register(SharedMemory, _reduce_shared_memory)
register(MemoryFile, _reduce_memory_file, queue_reducer=_reduce_memory_file)
