"""What a peer can make this process hold: the limits of the binder thread pool.

Every peer is hostile until proven otherwise, and even an admitted one may flood. Each limit
below bounds one thing a peer can make a serving process hold, per connection, per uid or in
total; the README has the same table. They apply to every endpoint this process listens on,
named services and the callback endpoint alike.

``fd_reserve`` is different: it is headroom *we* keep below ``RLIMIT_NOFILE`` so that the
process can always answer, log and close. Once the descriptors in use reach
``RLIMIT_NOFILE - fd_reserve``, new connections are closed at once and new calls that carry
descriptors are refused with ``ServiceBusyError`` (the caller is told that the service ran
short, not that it sent too much).
"""

from __future__ import annotations

import dataclasses

__all__ = ["Limits", "get_limits", "set_limits"]


@dataclasses.dataclass(frozen=True)
class Limits:
    """The binder limits of this process (see ``set_limits``).

    >>> from ashmem.binder import get_limits
    >>> get_limits().hello_timeout
    5.0
    """

    #: Seconds a new connection may take to send its HELLO before it is dropped; also how
    #: long a one-way stream may wait for the rest of a record it started.
    hello_timeout: float = 5.0
    #: Connections that have not finished HELLO, whole process.
    max_pending: int = 256
    #: Connections that have not finished HELLO, per peer uid.
    max_pending_per_uid: int = 64
    #: Open connections of one peer uid, greeted or not.
    max_connections_per_uid: int = 1024
    #: One-way calls queued for one binder before its senders stop being read.
    oneway_backlog: int = 1024
    #: Descriptors held by the one-way calls queued for one binder.
    oneway_backlog_fds: int = 256
    #: Bytes (inline and spilled) held by the one-way calls queued for one binder.
    oneway_backlog_bytes: int = 64 << 20
    #: Largest spilled payload accepted (bytes); larger ones are refused as BadParcel.
    max_spill: int = 256 << 20
    #: Descriptors kept free below RLIMIT_NOFILE: new work is refused inside this reserve.
    fd_reserve: int = 64

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name == "hello_timeout":
                if not isinstance(value, (int, float)) or isinstance(value, bool):
                    raise TypeError(f"hello_timeout must be a number, not {type(value).__name__}")
                if not value > 0:
                    raise ValueError(f"hello_timeout must be > 0 seconds, got {value!r}")
            elif not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{field.name} must be an int, not {type(value).__name__}")
            elif value < 1:
                raise ValueError(f"{field.name} must be at least 1, got {value!r}")


_current = Limits()


def get_limits() -> Limits:
    """The limits in force in this process.

    >>> from ashmem.binder import get_limits
    >>> get_limits().max_spill
    268435456
    """
    return _current


def set_limits(**changes: float) -> Limits:
    """Change some limits of this process (names as ``Limits``' fields); returns the new
    ones. They apply to connections and calls from then on.

    >>> from ashmem.binder import get_limits, set_limits
    >>> old = get_limits()
    >>> set_limits(hello_timeout=2.0).hello_timeout
    2.0
    >>> _ = set_limits(hello_timeout=old.hello_timeout)
    """
    global _current
    unknown = set(changes) - {field.name for field in dataclasses.fields(Limits)}
    if unknown:
        raise TypeError(
            f"unknown binder limit(s) {sorted(unknown)}; the limits are "
            f"{[field.name for field in dataclasses.fields(Limits)]}"
        )
    _current = dataclasses.replace(_current, **changes)  # type: ignore[arg-type]
    return _current
