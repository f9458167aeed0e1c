"""The exceptions of ``ashmem.binder``, under the core tree of ``ashmem._errors``.

::

    ashmem.Error
     ├── MessageError(Error, ValueError)      (core) a peer sent a malformed message
     │    └── BadParcel                        a Parcel is malformed, or was read past its end
     │                                         or as the wrong type; also raised for a bad
     │                                         descriptor entry (not a region, bad index)
     ├── DeadObjectError                       the binder's process died, or the connection to
     │                                         it broke; the Proxy stays dead, get it again
     ├── RemoteError                           ``on_transact`` raised in the service; carries
     │                                         the remote type name and message, never the
     │                                         object (a peer's exception is not unpickled)
     ├── ServiceBusyError                      the service is at one of its limits (descriptors,
     │                                         connections, queued one-way calls) and refused
     │                                         this new work; nothing is wrong with the call,
     │                                         retry later
     └── ServiceNotFoundError(Error, LookupError)
                                               no service of that name answered in time

Builtins raised on purpose: ``PermissionError`` when a service refuses the caller (its uid,
gid or policy), ``TimeoutError`` when ``transact(..., timeout=...)`` expires or a service
accepts a connection but does not answer its HELLO in time, ``ValueError`` / ``TypeError``
for bad arguments. A broken connection is always ``DeadObjectError``, never a raw
``ConnectionResetError`` / ``BrokenPipeError``.

The classes show their public module, ``ashmem.binder``, in tracebacks and reprs.

Every exception here keeps its structured fields when pickled, so it can cross a process
boundary (``multiprocessing``, a test child).
"""

from __future__ import annotations

from .._errors import Error, MessageError

__all__ = [
    "BadParcel",
    "DeadObjectError",
    "RemoteError",
    "ServiceBusyError",
    "ServiceNotFoundError",
]


class BadParcel(MessageError):
    """A Parcel could not be decoded: read past its end, read as the wrong type, or its
    bytes are not a valid encoding. Data from a peer is untrusted; this is how it fails.

    >>> from ashmem.binder import Parcel, BadParcel
    >>> p = Parcel(); p.write_int(7); p.set_data_position(0)
    >>> try:
    ...     p.read_string()
    ... except BadParcel as exc:
    ...     print(exc)
    read_string at offset 0: found an int, not a string
    """


class DeadObjectError(Error):
    """The binder is dead: its process exited or was killed, or the connection broke.

    ``binder`` describes which one (a service name or a binder reference). A dead Proxy never
    comes back; get the service again.

    >>> from ashmem.binder import DeadObjectError
    >>> str(DeadObjectError("service 'clock' died", binder="clock"))
    "service 'clock' died"
    """

    def __init__(self, message: str, binder: str | None = None) -> None:
        super().__init__(message, binder)
        self.binder = binder

    def __str__(self) -> str:
        return str(self.args[0])


class RemoteError(Error):
    """``on_transact`` raised in the service; the service sent back the exception's type
    name and message (never a pickled object).

    >>> from ashmem.binder import RemoteError
    >>> exc = RemoteError("ValueError", "bad size", code=3, binder="clock")
    >>> exc.type_name, exc.remote_message, exc.code
    ('ValueError', 'bad size', 3)
    >>> str(exc)
    "ValueError in on_transact(code=3) of 'clock': bad size"
    """

    def __init__(
        self, type_name: str, remote_message: str, code: int = 0, binder: str | None = None
    ) -> None:
        super().__init__(type_name, remote_message, code, binder)
        self.type_name = type_name
        self.remote_message = remote_message
        self.code = code
        self.binder = binder

    def __str__(self) -> str:
        where = f" of {self.binder!r}" if self.binder else ""
        return f"{self.type_name} in on_transact(code={self.code}){where}: {self.remote_message}"


class ServiceBusyError(Error):
    """The service refused this call or connection because it is at one of its limits
    (descriptors near ``RLIMIT_NOFILE``, connections, queued one-way calls): its side ran
    short, not the caller's. Retry later; the Proxy is still usable.

    >>> from ashmem.binder import ServiceBusyError
    >>> str(ServiceBusyError("service 'clock' is busy: out of descriptors", binder="clock"))
    "service 'clock' is busy: out of descriptors"
    """

    def __init__(self, message: str, binder: str | None = None) -> None:
        super().__init__(message, binder)
        self.binder = binder

    def __str__(self) -> str:
        return str(self.args[0])


class ServiceNotFoundError(Error, LookupError):
    """No service of that name answered in the directory before the timeout.

    >>> from ashmem.binder import ServiceNotFoundError
    >>> exc = ServiceNotFoundError("no service 'clock'", name="clock", directory="/run/x")
    >>> exc.name, isinstance(exc, LookupError)
    ('clock', True)
    """

    def __init__(self, message: str, name: str | None = None, directory: str | None = None) -> None:
        super().__init__(message, name, directory)
        self.name = name
        self.directory = directory

    def __str__(self) -> str:
        return str(self.args[0])


# Tracebacks and reprs name the module users import them from.
for _cls in (BadParcel, DeadObjectError, RemoteError, ServiceBusyError, ServiceNotFoundError):
    _cls.__module__ = "ashmem.binder"
del _cls
