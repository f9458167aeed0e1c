"""The service side: ``Binder``, transaction codes, the caller's kernel credentials and the
access policies a service can use."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, NamedTuple, Protocol

if TYPE_CHECKING:
    from ._parcel import Parcel

__all__ = [
    "FIRST_CALL_TRANSACTION",
    "FLAG_ONEWAY",
    "INTERFACE_TRANSACTION",
    "LAST_CALL_TRANSACTION",
    "PING_TRANSACTION",
    "AllowList",
    "Binder",
    "Credentials",
    "Policy",
    "get_calling_credentials",
    "get_calling_gid",
    "get_calling_pid",
    "get_calling_uid",
]

#: The first transaction code for user calls, as Android's ``IBinder.FIRST_CALL_TRANSACTION``.
FIRST_CALL_TRANSACTION = 0x00000001
#: The last transaction code for user calls.
LAST_CALL_TRANSACTION = 0x00FFFFFF
#: ``transact`` flag: do not wait for the reply (there is none). One-way calls to the same
#: binder are delivered one at a time, in the order they arrived.
FLAG_ONEWAY = 0x00000001
#: Answered by the library itself, never by ``on_transact``: ``Proxy.ping``.
PING_TRANSACTION = 0x5F504E47  # '_PNG'
#: Answered by the library itself: ``Proxy.get_interface_descriptor``.
INTERFACE_TRANSACTION = 0x5F4E5446  # '_NTF'


class Credentials(NamedTuple):
    """A process's credentials as the kernel reported them (``SO_PEERCRED``): those in
    effect when it connected.

    >>> from ashmem.binder import Credentials
    >>> Credentials(pid=42, uid=1000, gid=1000).uid
    1000
    """

    pid: int
    uid: int
    gid: int


#: An access policy: called with the caller's credentials when it connects, returns
#: whether to admit it.
Policy = Callable[[Credentials], bool]


class Caller:
    """Whose transaction a thread is handling: the caller's credentials, and the socket its
    call came in on while the caller waits on it for the reply (None for a one-way call):
    a call from this thread back into the caller's process travels on that socket and runs
    on the caller's waiting thread. The pool's connections have the same two attributes."""

    __slots__ = ("creds", "sock")

    def __init__(self, creds: Credentials, sock: socket.socket | None) -> None:
        self.creds = creds
        self.sock = sock

    # ``with caller:`` runs a transaction from it on a pool thread, which handles calls only
    # at the top level (no transaction before, none after): the cheap form of ``_Serving``
    # for the hot path, no object made per call. A nested call uses ``_Serving``.
    def __enter__(self) -> None:
        identity = _per_thread.identity
        identity.caller = self
        identity.cleared = False

    def __exit__(self, *exc: object) -> None:
        identity = _per_thread.identity
        identity.caller = None
        identity.cleared = False


class CallerLike(Protocol):
    """What a ``Caller`` has; the pool's connections have it too."""

    @property
    def creds(self) -> Credentials: ...

    @property
    def sock(self) -> socket.socket | None: ...


class _Identity:
    """Whose transaction one thread is handling; each thread has its own
    (``_per_thread.identity``). An object with slots, not the ``threading.local`` itself:
    setting the caller and clearing it again on every call took four thread-local stores,
    about 230 ns on CPython 3.11 against 26 ns for four slot stores (``profile_binder.py``);
    a pool thread now looks its identity up once per connection it serves."""

    __slots__ = ("caller", "cleared")

    def __init__(self) -> None:
        #: The Caller (or pool connection) of the transaction this thread is handling. It
        #: also routes a call back into the caller's process (see ``_nested``), so clearing
        #: the identity does not touch it: ``cleared`` hides it from ``get_calling_*``
        #: only, as libbinder's clearCallingIdentity leaves the thread's transaction stack
        #: alone.
        self.caller: CallerLike | None = None
        self.cleared = False


class _PerThread(threading.local):
    def __init__(self) -> None:  # runs once in each thread that looks
        self.identity = _Identity()


_per_thread = _PerThread()


class _Serving:
    """``with _Serving(caller):`` run a transaction from ``caller`` on this thread: the one
    place the pool and the nested path set the calling identity, restored on exit (the
    previous caller, for a nested call that arrived while this thread waited)."""

    __slots__ = ("_caller", "_saved")

    def __init__(self, caller: CallerLike) -> None:
        self._caller = caller

    def __enter__(self) -> None:
        identity = _per_thread.identity
        self._saved = (identity.caller, identity.cleared)
        identity.caller = self._caller
        identity.cleared = False

    def __exit__(self, *exc: object) -> None:
        identity = _per_thread.identity
        identity.caller, identity.cleared = self._saved


class clear_calling_identity:
    """``with clear_calling_identity():`` inside a transaction, act as this process:
    ``get_calling_uid()`` and the others name this process until the block ends, then the
    caller again (libbinder's ``clearCallingIdentity`` / ``restoreCallingIdentity``, as one
    save and restore). Use it where a service calls out, or checks a permission, on its own
    behalf rather than its caller's. A call back into the calling process still travels on
    the caller's connection, as without it. Nests; outside a transaction it changes nothing.

    >>> import os
    >>> from ashmem.binder import clear_calling_identity, get_calling_pid
    >>> with clear_calling_identity():
    ...     get_calling_pid() == os.getpid()
    True
    """

    __slots__ = ("_saved",)

    def __enter__(self) -> None:
        identity = _per_thread.identity
        self._saved = identity.cleared
        identity.cleared = True

    def __exit__(self, *exc: object) -> None:
        _per_thread.identity.cleared = self._saved


def get_calling_credentials() -> Credentials:
    """Credentials of the process whose transaction this thread is handling, from the
    kernel; outside a transaction, this process's own.

    >>> import os
    >>> from ashmem.binder import get_calling_credentials
    >>> get_calling_credentials().pid == os.getpid()
    True
    """
    identity = _per_thread.identity
    caller = identity.caller
    if caller is None or identity.cleared:
        return Credentials(os.getpid(), os.geteuid(), os.getegid())
    return caller.creds


def get_calling_uid() -> int:
    """Effective uid of the calling process (``SO_PEERCRED``), or this process's own outside
    a transaction. Never taken from anything the caller sent.

    >>> import os
    >>> from ashmem.binder import get_calling_uid
    >>> get_calling_uid() == os.geteuid()
    True
    """
    return get_calling_credentials().uid


def get_calling_pid() -> int:
    """Pid of the calling process (``SO_PEERCRED``), or this process's own outside a
    transaction.

    >>> import os
    >>> from ashmem.binder import get_calling_pid
    >>> get_calling_pid() == os.getpid()
    True
    """
    return get_calling_credentials().pid


def get_calling_gid() -> int:
    """Effective primary gid of the calling process (``SO_PEERCRED``), or this process's own.

    >>> import os
    >>> from ashmem.binder import get_calling_gid
    >>> get_calling_gid() == os.getegid()
    True
    """
    return get_calling_credentials().gid


def _check_call(code: object, data: object, reply: object, flags: object, timeout: object) -> None:
    """``TypeError`` / ``ValueError`` naming what ``transact`` expected."""
    if not isinstance(code, int) or isinstance(code, bool):
        raise TypeError(f"transact: code must be an int, not {type(code).__name__}")
    if not FIRST_CALL_TRANSACTION <= code <= LAST_CALL_TRANSACTION:
        raise ValueError(
            f"transaction code {code} is outside FIRST_CALL_TRANSACTION .. "
            "LAST_CALL_TRANSACTION (1 .. 0xFFFFFF)"
        )
    from ._parcel import Parcel

    if data is not None and not isinstance(data, Parcel):
        raise TypeError(
            f"transact: data must be a Parcel or None, not {type(data).__name__} "
            "(write values into a Parcel: data = Parcel(); data.write_bytes(...))"
        )
    if reply is not None and not isinstance(reply, Parcel):
        raise TypeError(f"transact: reply must be a Parcel or None, not {type(reply).__name__}")
    if not isinstance(flags, int) or isinstance(flags, bool):
        raise TypeError(
            f"transact: flags must be an int (0 or FLAG_ONEWAY), not {type(flags).__name__}"
        )
    if flags & ~FLAG_ONEWAY:
        raise ValueError(f"unknown transact flags {flags:#x}; only FLAG_ONEWAY exists")
    _check_timeout(timeout, "transact")


def _check_timeout(timeout: object, method: str) -> None:
    if timeout is None:
        return
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool):
        raise TypeError(
            f"{method}: timeout must be a number of seconds or None, not {type(timeout).__name__}"
        )
    if not timeout >= 0:
        raise ValueError(f"{method}: timeout must be >= 0 seconds, got {timeout!r}")


class AllowList:
    """The default access policy: admit the service's own uid, plus listed uids and gids.

    ``gids`` are matched against the caller's effective primary gid, the one the kernel
    reports with ``SO_PEERCRED``; supplementary groups are not consulted.

    >>> from ashmem.binder import AllowList, Credentials
    >>> policy = AllowList(uid=1000, uids=[65534])
    >>> policy(Credentials(1, 65534, 65534)), policy(Credentials(1, 33, 33))
    (True, False)
    """

    def __init__(
        self, uid: int | None = None, uids: Iterable[int] = (), gids: Iterable[int] = ()
    ) -> None:
        self.uid = os.geteuid() if uid is None else uid
        self.uids = frozenset(uids)
        self.gids = frozenset(gids)

    def __call__(self, creds: Credentials) -> bool:
        return creds.uid == self.uid or creds.uid in self.uids or creds.gid in self.gids

    def __repr__(self) -> str:
        extra = ""
        if self.uids:
            extra += f", uids={sorted(self.uids)}"
        if self.gids:
            extra += f", gids={sorted(self.gids)}"
        return f"AllowList(uid={self.uid}{extra})"


class Binder:
    """A remotable object: subclass it and override ``on_transact``.

    Publish it by name (``add_service``, ``serve``, ``start_service``) or hand it to another
    process inside a Parcel (``Parcel.write_binder``). Its ``on_transact`` then runs on this
    process's binder thread pool, several calls at once; one-way calls to one binder run
    one at a time, in order.

    >>> from ashmem.binder import Binder, Parcel, FIRST_CALL_TRANSACTION
    >>> class Adder(Binder):
    ...     def on_transact(self, code, data, reply, flags):
    ...         if code != FIRST_CALL_TRANSACTION:
    ...             return False
    ...         reply.write_int(data.read_int() + data.read_int())
    ...         return True
    >>> data, reply = Parcel(), Parcel()
    >>> data.write_int(2); data.write_int(3)
    >>> Adder().transact(FIRST_CALL_TRANSACTION, data, reply), reply.read_int()
    (True, 5)
    """

    #: The interface this binder implements, returned by ``Proxy.get_interface_descriptor``.
    descriptor: str = ""

    def on_transact(self, code: int, data: Parcel, reply: Parcel, flags: int) -> bool:
        """Handle transaction ``code``: read arguments from ``data``, write results to
        ``reply``, return True. Return False for a code you do not know (the caller's
        ``transact`` then returns False). An exception is sent back to the caller as
        ``RemoteError`` and logged here; the thread pool keeps serving.

        ``data`` and ``reply`` are closed when this returns (their descriptors too): take
        what you keep with ``read_file_descriptor`` / ``read_shared_memory``, which hand
        you your own dups. Inside, ``get_calling_uid()`` / ``get_calling_pid()`` name the
        caller.

        >>> from ashmem.binder import Binder, Parcel
        >>> Binder().on_transact(1, Parcel(), Parcel(), 0)
        False
        """
        return False

    def transact(
        self, code: int, data: Parcel | None = None, reply: Parcel | None = None, flags: int = 0
    ) -> bool:
        """Call ``on_transact`` directly, in this thread, as a local binder call does on
        Android: ``data`` is read from position 0 and ``reply`` is left at position 0.
        Exceptions propagate unchanged.

        >>> from ashmem.binder import Binder
        >>> Binder().transact(1)
        False
        """
        from ._parcel import Parcel

        _check_call(code, data, reply, flags, None)
        data = Parcel() if data is None else data
        data.set_data_position(0)
        out = Parcel() if reply is None else reply
        handled = bool(self.on_transact(code, data, out, flags))
        out.set_data_position(0)
        return handled

    def ping(self) -> bool:
        """A local binder is always alive.

        >>> from ashmem.binder import Binder
        >>> Binder().ping()
        True
        """
        return True

    get_calling_uid = staticmethod(get_calling_uid)
    get_calling_pid = staticmethod(get_calling_pid)
    get_calling_gid = staticmethod(get_calling_gid)
