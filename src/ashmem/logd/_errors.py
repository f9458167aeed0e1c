"""The exceptions of ``ashmem.logd``, under the core tree of ``ashmem._errors``.

::

    ashmem.Error
     ├── KeyFileError(Error, ValueError)      a key file is missing, unreadable, of the wrong
     │                                        kind, or not the key the log was encrypted to
     ├── CollectorError(Error, ConnectionError)
     │                                        no collector answers at the address given
     └── ProtocolError(Error, ConnectionError)
                                              a syslog relay broke the RELP protocol or
                                              refused a message (forwarding reconnects)

Builtins raised on purpose: ``TimeoutError`` from ``flush(timeout)``, ``ValueError`` /
``TypeError`` for bad arguments, ``ImportError`` naming ``ashmem[logs]`` when zstandard or
cryptography is missing.
"""

from __future__ import annotations

from .._errors import Error

__all__ = ["CollectorError", "KeyFileError", "ProtocolError"]


class KeyFileError(Error, ValueError):
    """A key file cannot be used: missing, unreadable, wrong kind, or another key.

    >>> import ashmem
    >>> issubclass(KeyFileError, ashmem.Error)
    True
    """

    def __str__(self) -> str:
        return str(self.args[0])


class CollectorError(Error, ConnectionError):
    """No log collector answers at the address given (``ASHMEM_LOGD`` or ``--socket``), or
    one could not be started.

    >>> issubclass(CollectorError, ConnectionError)
    True
    """

    def __str__(self) -> str:
        return str(self.args[0])


class ProtocolError(Error, ConnectionError):
    """A syslog relay broke the RELP protocol, refused a session or a message, or closed
    the session; the forwarder reconnects and sends every unconfirmed record again."""
