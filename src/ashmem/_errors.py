"""The whole ashmem exception tree.

::

    Exception
     ├── ashmem.Error                         root of everything ashmem raises on purpose
     │    ├── ClosedError(Error, ValueError)   you closed it: region, mapping or stream
     │    ├── ProtectionError(Error, PermissionError)
     │    │                                    the region is write-protected (sealed) and the
     │    │                                    operation needs write access; errno is EPERM
     │    ├── BusyError(Error, BufferError)    a mapping cannot be unmapped while memoryviews
     │    │                                    or numpy arrays still point into it
     │    ├── PurgedError(Error)               purgeable data was discarded under memory
     │    │                                    pressure while unpinned (MemoryFile with
     │    │                                    purging allowed); regenerate it
     │    ├── MessageError(Error, ValueError)  a peer sent a malformed message: bad header,
     │    │                                    truncated, fds missing, cut (MSG_CTRUNC) or
     │    │                                    more than allowed; every fd it carried is closed
     │    └── UnsupportedPlatformError(Error, OSError)
     │                                         the kernel or OS lacks what a layer needs
     └── OSError                               any other kernel failure (ENOSPC, ENOMEM,
                                               EMFILE, ...), re-raised by ``ashmem._sys`` with
                                               the original errno, a message that names the
                                               region and the operation, and the original
                                               OSError as ``__cause__``

Bad arguments raise the builtin ``ValueError`` / ``TypeError`` / ``IndexError``.

Every exception here keeps its structured fields (``region``, ``errno``) when pickled, so it
can cross a process boundary.
"""

from __future__ import annotations

import errno as _errno


class Error(Exception):
    """Root of the exceptions that ashmem raises on purpose.

    >>> import ashmem
    >>> issubclass(ashmem.ClosedError, ashmem.Error)
    True
    """


class ClosedError(Error, ValueError):
    """The object (region, mapping, stream) was closed by its owner.

    ``region`` names the region, for the message and for code that handles it.
    """

    def __init__(self, message: str, region: str | None = None) -> None:
        super().__init__(message, region)
        self.region = region

    def __str__(self) -> str:
        return str(self.args[0])


class ProtectionError(Error, PermissionError):
    """Write access was asked of a region whose write access was removed for good.

    ``errno`` is ``EPERM``; ``region`` names the region.
    """

    def __init__(self, message: str, region: str | None = None) -> None:
        super().__init__(_errno.EPERM, message)
        self.region = region

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_protection_error, (self.strerror, self.region))


def _rebuild_protection_error(message: str, region: str | None) -> ProtectionError:
    return ProtectionError(message, region)


class BusyError(Error, BufferError):
    """A mapping cannot be closed while buffers exported from it are alive."""

    def __init__(self, message: str, region: str | None = None) -> None:
        super().__init__(message, region)
        self.region = region

    def __str__(self) -> str:
        return str(self.args[0])


class PurgedError(Error):
    """The data was purged while unpinned: the memory went back to the system and the range
    now reads as zeros. Raised by ``MemoryFile`` access while purging is allowed; the range
    is pinned again when this is raised, so write the data anew.

    ``region`` names the region.

    >>> import ashmem
    >>> issubclass(ashmem.PurgedError, ashmem.Error)
    True
    """

    def __init__(self, message: str, region: str | None = None) -> None:
        super().__init__(message, region)
        self.region = region

    def __str__(self) -> str:
        return str(self.args[0])


class MessageError(Error, ValueError):
    """A peer sent a malformed message. The fds it carried were closed, none leaked."""

    def __str__(self) -> str:
        return str(self.args[0])


class UnsupportedPlatformError(Error, OSError):
    """The running kernel or OS cannot provide what this layer needs."""
