"""ashmem: anonymous shared memory for Python on Linux, modelled on Android's Ashmem.

Regions have a name for debugging only, are shared by handing their file descriptor to
another process, can be restricted to read-only for good, and are freed when the last
descriptor and mapping are gone. Built on memfd_create, file seals, mmap and SCM_RIGHTS.

Layers, top to bottom: ``MemoryFile`` -> ``SharedMemory`` / ``Mapping`` -> ``ashmem.region``
(libcutils) -> the kernel. ``ashmem.fdpass`` moves regions between processes;
``ashmem.binder`` is a Binder-like IPC layer on top (services by name, Parcels, death notices).
"""

from . import fdpass as fdpass
from . import region as region
from ._errors import BusyError as BusyError
from ._errors import ClosedError as ClosedError
from ._errors import Error as Error
from ._errors import MessageError as MessageError
from ._errors import ProtectionError as ProtectionError
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


def _show_public_module() -> None:
    # Tracebacks and reprs name the module users import (ashmem.ProtectionError), not the
    # private one that defines the class; pickle finds the classes there as well.
    for value in list(globals().values()):
        if isinstance(value, type) and value.__module__.startswith(__name__ + "._"):
            value.__module__ = __name__


_show_public_module()


def __getattr__(name: str) -> object:
    # ``ashmem.binder`` is imported on first use: it brings threads, asyncio and logging,
    # which programs that only share regions should not pay for at import.
    if name == "binder":
        import importlib

        return importlib.import_module(".binder", __name__)
    raise AttributeError(f"module 'ashmem' has no attribute {name!r}")


__all__ = [
    "POPULATE_AUTO_MIN",
    "PROT_EXEC",
    "PROT_NONE",
    "PROT_READ",
    "PROT_WRITE",
    "BusyError",
    "ClosedError",
    "Error",
    "Mapping",
    "MemoryFile",
    "MessageError",
    "ProtectionError",
    "SharedMemory",
    "UnsupportedPlatformError",
    "binder",
    "fdpass",
    "region",
]
