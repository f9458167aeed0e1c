"""ashmem: anonymous shared memory for Python on Linux, modelled on Android's Ashmem.

Regions have a name for debugging only, are shared by handing their file descriptor to
another process, can be restricted to read-only for good, and are freed when the last
descriptor and mapping are gone. Built on memfd_create, file seals, mmap and SCM_RIGHTS.

Layers, top to bottom: ``MemoryFile`` -> ``SharedMemory`` / ``Mapping`` -> ``ashmem.region``
(libcutils) -> the kernel. ``ashmem.fdpass`` moves regions between processes;
``ashmem.binder`` is a Binder-like IPC layer on top (services by name, Parcels, death notices);
``ashmem.compat`` is a drop-in for ``multiprocessing.shared_memory``.
Purgeable memory: ``SharedMemory.pin``/``unpin`` and ``ashmem.region.pin_region`` mark
ranges that may be discarded under memory pressure; ``ashmem.purge`` decides when.
"""

import contextlib as _contextlib
import sys as _sys_module

from . import _reduction  # noqa: F401 - registers the reducers for multiprocessing's pickler
from . import fdpass as fdpass
from . import region as region
from ._errors import BusyError as BusyError
from ._errors import ClosedError as ClosedError
from ._errors import Error as Error
from ._errors import MessageError as MessageError
from ._errors import ProtectionError as ProtectionError
from ._errors import PurgedError as PurgedError
from ._errors import UnsupportedPlatformError as UnsupportedPlatformError
from ._memory_file import MemoryFile as MemoryFile
from ._shared_memory import POPULATE_AUTO_MIN as POPULATE_AUTO_MIN
from ._shared_memory import Mapping as Mapping
from ._shared_memory import SharedMemory as SharedMemory
from .region import PROT_EXEC as PROT_EXEC
from .region import PROT_NONE as PROT_NONE
from .region import PROT_READ as PROT_READ
from .region import PROT_WRITE as PROT_WRITE

__version__ = "0.1.0"


def _start_purge_manager(unpinned_bytes: int) -> None:
    # The first unpin in this process brings in ashmem.purge, whose manager then listens to
    # every unpin itself; region and _pins sit below it and never import it.
    from . import _pins, purge

    with _contextlib.suppress(ValueError):
        _pins.unpin_listeners.remove(_start_purge_manager)
    purge._manager.on_unpin(unpinned_bytes)


def _install_purge_hook() -> None:
    from . import _pins

    if "ashmem.purge" not in _sys_module.modules:
        _pins.unpin_listeners.append(_start_purge_manager)


_install_purge_hook()


def _show_public_module() -> None:
    # Tracebacks and reprs name the module users import (ashmem.ProtectionError), not the
    # private one that defines the class; pickle finds the classes there as well.
    for value in list(globals().values()):
        if isinstance(value, type) and value.__module__.startswith(__name__ + "._"):
            value.__module__ = __name__


_show_public_module()

# Names imported on first use: the modules behind them bring threads, asyncio, logging,
# multiprocessing.pool or numpy, which programs that only share regions should not pay for.
# ``ashmem.compat`` (the multiprocessing.shared_memory drop-in) likewise: programs that do not
# use it carry neither its import nor its at-fork hook. ``ashmem.purge`` comes with the first
# unpin; ``ashmem.logd`` (log collection) with its first use.
_LAZY = {
    "binder": (".binder", None),
    "compat": (".compat", None),
    "logd": (".logd", None),
    "purge": (".purge", None),
    "numpy": (".numpy", None),
    "pool": (".pool", None),
    "DEFAULT_THRESHOLD": ("._queue", "DEFAULT_THRESHOLD"),
    "Connection": ("._queue", "Connection"),
    "Pipe": ("._queue", "Pipe"),
    "Queue": ("._queue", "Queue"),
    "SimpleQueue": ("._queue", "SimpleQueue"),
    "Pool": (".pool", "Pool"),
    "ProcessPoolExecutor": (".pool", "ProcessPoolExecutor"),
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        module_name, attr = _LAZY[name]
        module = importlib.import_module(module_name, __name__)
        value = module if attr is None else getattr(module, attr)
        if isinstance(value, type) and value.__module__.startswith(__name__ + "._"):
            value.__module__ = __name__
        return value
    raise AttributeError(f"module 'ashmem' has no attribute {name!r}")


__all__ = [
    "DEFAULT_THRESHOLD",
    "POPULATE_AUTO_MIN",
    "PROT_EXEC",
    "PROT_NONE",
    "PROT_READ",
    "PROT_WRITE",
    "BusyError",
    "ClosedError",
    "Connection",
    "Error",
    "Mapping",
    "MemoryFile",
    "MessageError",
    "Pipe",
    "Pool",
    "ProcessPoolExecutor",
    "ProtectionError",
    "PurgedError",
    "Queue",
    "SharedMemory",
    "SimpleQueue",
    "UnsupportedPlatformError",
    "binder",
    "compat",
    "fdpass",
    "logd",
    "pool",
    "purge",
    "region",
]
