"""Which mapping is backed by which region, so that a view of a region can travel as its
descriptor instead of as a copy of its bytes.

A ``Mapping`` does not keep its region's descriptor (on Python >= 3.13 mmap keeps none, and
``SharedMemory.close()`` may have run long ago), and a descriptor cannot be had back from an
address without ``CAP_SYS_ADMIN`` (``/proc/self/map_files``). So the layers that make
mappings on purpose to hand out views (``ashmem.numpy``, the receiving end of
``ashmem.Queue``) remember, per mapping, one ``SharedMemory`` that owns a descriptor of the
same region. The entry lives exactly as long as the mapping (a weak key): when the last array
or memoryview over the mapping is gone, the mapping is unmapped and the descriptor closed, in
that order of interest, and the region is freed once no process holds either.

Cost: one descriptor per remembered mapping (not per view), for as long as the mapping lives.

``sealed_copy`` is the one copy that ordinary buffers pay to travel as a region (queues,
pools, ``share_read_only``).
"""

from __future__ import annotations

import os
import weakref
from typing import Any

from . import _sys
from ._shared_memory import Mapping, SharedMemory
from .region import PROT_READ

__all__ = ["find", "remember", "sealed_copy"]

_PWRITE_CHUNK = 1 << 30

# The value is [shm, address-of-the-mapping's-first-byte or None]; the address is filled in
# by ashmem.numpy the first time it needs it (computing it needs numpy or a writable buffer).
_OWNERS: weakref.WeakKeyDictionary[Mapping, list[Any]] = weakref.WeakKeyDictionary()

# Longest chain of .base / .obj links followed before giving up (numpy collapses view chains,
# so real chains are two or three links long).
_MAX_CHAIN = 32


def remember(mapping: Mapping, shm: SharedMemory) -> None:
    """Record that ``shm`` (taken: it is closed when ``mapping`` is gone) backs
    ``mapping``."""
    _OWNERS[mapping] = [shm, None]


def find(obj: object) -> tuple[list[Any], Mapping] | None:
    """The entry and mapping behind ``obj`` (an array, a memoryview, a Mapping), following
    ``.base`` (numpy) and ``.obj`` (memoryview) links; None if it is not a remembered
    mapping or the entry's descriptor was closed."""
    for _ in range(_MAX_CHAIN):
        if obj is None:
            return None
        if isinstance(obj, Mapping):
            entry = _OWNERS.get(obj)
            if entry is None or entry[0].closed:
                return None
            return entry, obj
        obj = obj.obj if isinstance(obj, memoryview) else getattr(obj, "base", None)
    return None


def sealed_copy(data: memoryview, name: str) -> SharedMemory:
    """A new write-protected region holding the bytes of ``data`` (a ``'B'`` memoryview):
    one copy, by ``pwrite`` straight into the region's pages, so the sender sets up no
    mapping and takes no page faults. The caller owns the result."""
    size = len(data)
    shm = SharedMemory.create(name, max(size, 1), reserve=False, populate=False)
    try:
        fd = shm.fileno()
        done = 0
        while done < size:
            try:
                done += os.pwrite(fd, data[done : done + _PWRITE_CHUNK], done)
            except OSError as exc:
                raise _sys.translate(exc, f"copy {size} bytes into", name) from exc
        shm.set_protect(PROT_READ)
    except BaseException:
        shm.close()
        raise
    return shm
