"""The service directory (Android's ServiceManager role), embedded: no daemon.

A published service is one listening socket, named after the service, in a directory:

    $XDG_RUNTIME_DIR/ashmem/<name>          the service's SOCK_SEQPACKET socket
    $XDG_RUNTIME_DIR/ashmem/.<name>.lock    flock()ed by the serving process while it serves

The default directory is ``$XDG_RUNTIME_DIR/ashmem`` when ``$XDG_RUNTIME_DIR`` is a directory
this user owns, else ``<tempdir>/ashmem-<uid>``; either way it is created mode 0700 and
checked before use: a real directory (not a symlink), owned by this user, writable by nobody
else; otherwise ``PermissionError`` says what is wrong. Only this user (and root) can reach
those sockets at all.

To serve other users, publish in a directory they can search (``directory=``), owned by you
or root and writable by nobody else (so nobody can plant a fake service there), and name
them with ``allow_uids`` / ``allow_gids`` / ``policy``: the socket file itself is mode 0666,
and the service decides who may call it from the kernel's ``SO_PEERCRED``.

The lock makes publishing race-free: whoever holds it owns the name, may remove a stale
socket left by a crashed process, and binds the new one under a temporary name before
renaming it into place, so clients never find a socket that is not listening yet. The owner
removes the lock file while still holding the lock when it stops; whoever locks a file must
check that it is still the one at that path (see ``_lock_name``).

``start_service`` runs ``sys.executable`` with its orders on stdin: the parent's
``sys.path``, then the target and its arguments pickled (by the parent, for its own child,
over a private pipe: trusted, unlike anything a peer sends, which is never unpickled). The
child serves until its stdin reaches end-of-file, that is until the parent stops it, exits
or dies; so no service outlives the process that started it. If the child fails before it
serves, it writes why on a second pipe, so the starter's exception says it (not only the
child's stderr).

Every call here that talks to another process is bounded: a liveness probe is a
non-blocking ``connect`` (a listener with a full backlog is alive; one refusing is dead),
``get_service`` waits at most ``timeout`` (at least a second per attempt) for a WELCOME,
``start_service`` at most its ``timeout``.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import fcntl
import os
import re
import secrets
import signal
import socket
import stat
import subprocess
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from types import FrameType, TracebackType
from typing import Any

from .._closing import Closing
from .._user_dir import user_directory
from ._binder import AllowList, Binder, Policy
from ._errors import DeadObjectError, ServiceBusyError, ServiceNotFoundError
from ._launcher import NO_MAIN_GUARD, importing_main, spawn_service_process
from ._pool import process_state, set_max_threads, stop_process_state
from ._proxy import Proxy

__all__ = [
    "Service",
    "ServiceProcess",
    "add_service",
    "get_service",
    "list_services",
    "serve",
    "service_directory",
    "start_service",
]

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,79}")
_SUN_PATH_MAX = 107  # sizeof(sockaddr_un.sun_path) - 1
_services: weakref.WeakSet[Service] = weakref.WeakSet()


def _check_name(name: object) -> str:
    if not isinstance(name, str):
        raise TypeError(f"a service name must be a str, not {type(name).__name__}")
    if not _NAME.fullmatch(name):
        raise ValueError(
            f"invalid service name {name!r}: use 1-80 letters, digits, '.', '_' or '-', "
            "not starting with '.' or '-'"
        )
    return name


def service_directory() -> str:
    """The default service directory of this user, created (mode 0700) and checked.

    >>> from ashmem.binder import service_directory
    >>> import os, stat
    >>> stat.S_IMODE(os.stat(service_directory()).st_mode)
    448
    """
    return user_directory()


def _shared_directory(path: str, serving: bool) -> str:
    """Check a directory given explicitly: nobody but its owner may write to it, and a
    service only publishes where it or root is that owner."""
    path = os.path.abspath(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise FileNotFoundError(errno.ENOENT, f"service directory {path} does not exist") from None
    if not stat.S_ISDIR(st.st_mode):
        raise NotADirectoryError(errno.ENOTDIR, f"service directory {path} is not a directory")
    if st.st_mode & 0o022:
        raise PermissionError(
            errno.EPERM,
            f"service directory {path} is writable by others (mode {st.st_mode & 0o777:o}): "
            "anyone could plant a fake service there",
        )
    if serving and st.st_uid not in (os.geteuid(), 0):
        raise PermissionError(
            errno.EPERM,
            f"service directory {path} belongs to uid {st.st_uid}; publish in a directory "
            "you or root own",
        )
    return path


def _directory(directory: str | os.PathLike[str] | None, serving: bool) -> str:
    if directory is None:
        return service_directory()
    if not isinstance(directory, (str, os.PathLike)):
        raise TypeError(
            f"directory must be a str or os.PathLike path, not {type(directory).__name__}"
        )
    return _shared_directory(os.fspath(directory), serving)


def _socket_path(directory: str, name: str) -> str:
    path = os.path.join(directory, name)
    if len(os.fsencode(path)) > _SUN_PATH_MAX:
        raise ValueError(
            f"socket path {path!r} is longer than {_SUN_PATH_MAX} bytes (AF_UNIX limit); use "
            "a shorter service name or directory"
        )
    return path


class Service(Closing):
    """A binder published under a name by ``add_service``; ``close()`` unpublishes it.

    Closing removes the name, stops accepting connections and drops the current ones, so
    every client's Proxy sees the binder die. Also a context manager.

    >>> from ashmem.binder import Binder, add_service, list_services
    >>> with add_service("doctest.listed", Binder()) as service:
    ...     "doctest.listed" in list_services()
    True
    >>> "doctest.listed" in list_services()
    False
    """

    def __init__(
        self,
        name: str,
        path: str,
        lock_path: str,
        binder: Binder,
        lock_fd: int,
        listener: Any,
        node: Any,
    ) -> None:
        """Private: use ``add_service``."""
        self.name = name
        self.path = path
        self._lock_path = lock_path
        self.binder = binder
        self._lock_fd = lock_fd
        self._listener = listener
        self._node = node
        self._pid = os.getpid()
        self._closed = False
        _services.add(self)

    @property
    def closed(self) -> bool:
        """True once ``close()`` ran.

        >>> from ashmem.binder import Binder, add_service
        >>> with add_service("doctest.closed", Binder()) as service:
        ...     service.closed
        False
        """
        return self._closed

    def close(self) -> None:
        """Unpublish: remove the socket, stop accepting, drop every connection. Idempotent.
        Releases the name's lock (an fd this object owns).

        >>> from ashmem.binder import Binder, add_service
        >>> service = add_service("doctest.close", Binder())
        >>> service.close(); service.close(); service.closed
        True
        """
        if self._closed:
            return
        self._closed = True
        if os.getpid() == self._pid:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)  # ours: we hold the name's lock
            state = self._node.state
            state.remove_listener(self._listener)
            state.close_node(self._node)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._lock_path)  # still locked: see _lock_name
        os.close(self._lock_fd)  # releases the name

    def _after_fork(self) -> None:
        """In a forked child: the parent still serves; just let go of our copy of the lock."""
        if not self._closed:
            self._closed = True
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "serving"
        return f"<ashmem.binder.Service {self.name!r} at {self.path} {state}>"


def _policy(allow_uids: Iterable[int], allow_gids: Iterable[int], policy: Policy | None) -> Policy:
    uids, gids = list(allow_uids), list(allow_gids)
    for what, ids in (("allow_uids", uids), ("allow_gids", gids)):
        for value in ids:
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{what} must hold ints, not {type(value).__name__}")
    if policy is not None:
        if uids or gids:
            raise ValueError("give either policy or allow_uids/allow_gids, not both")
        if not callable(policy):
            raise TypeError(f"policy must be callable, not {type(policy).__name__}")
        return policy
    return AllowList(uids=uids, gids=gids)


def add_service(
    name: str,
    binder: Binder,
    *,
    directory: str | os.PathLike[str] | None = None,
    allow_uids: Iterable[int] = (),
    allow_gids: Iterable[int] = (),
    policy: Policy | None = None,
) -> Service:
    """Publish ``binder`` as ``name`` and serve it from this process's thread pool (started
    on demand); returns at once.

    Who may call it: this process's effective uid, plus ``allow_uids`` and callers whose
    effective primary gid is in ``allow_gids``; or, instead, whoever ``policy(credentials)``
    admits. Refused callers get ``PermissionError`` and are logged here (logger
    ``ashmem.binder``). ``FileExistsError`` if a live process already serves ``name``.

    >>> from ashmem.binder import Binder, add_service, get_service
    >>> service = add_service("doctest.added", Binder())
    >>> get_service("doctest.added").ping()
    True
    >>> service.close()
    """
    name = _check_name(name)
    if not isinstance(binder, Binder):
        raise TypeError(f"add_service needs a Binder, not {type(binder).__name__}")
    rule = _policy(allow_uids, allow_gids, policy)
    where = _directory(directory, serving=True)
    path = _socket_path(where, name)
    lock_path = os.path.join(where, f".{name}.lock")
    lock_fd = _lock_name(lock_path, name, where)
    try:
        state = process_state()
        node = state.node_for(binder, label=f"service {name!r}")
        node.policy = rule
        state.publish_service(node)
        listener = state.add_listener(_bind(where, path), node)
    except BaseException:
        os.close(lock_fd)
        raise
    return Service(name, path, lock_path, binder, lock_fd, listener, node)


def _lock_name(lock_path: str, name: str, where: str, patience: float = 0.5) -> int:
    """Take the name's lock: an fd holding ``flock(LOCK_EX)`` on ``lock_path``, which the
    caller owns. ``FileExistsError`` if a live process holds it.

    A lock held by nobody serving (another process starting the service, or removing its
    stale socket, see ``list_services``) is waited for up to ``patience`` seconds.
    """
    deadline = time.monotonic() + patience
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            if time.monotonic() >= deadline or _answers(os.path.join(where, name)):
                raise FileExistsError(
                    errno.EEXIST, f"service {name!r} is already served by a live process in {where}"
                ) from None
            time.sleep(0.01)
            continue
        except BaseException:
            os.close(fd)
            raise
        # The owner removes the file, still holding the lock, when it stops: if we locked a
        # file that was removed meanwhile, our lock guards nothing. Try again.
        try:
            same = os.stat(lock_path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


def _answers(path: str) -> bool:
    """True if something listens on the socket at ``path``. Never blocks: a non-blocking
    ``connect`` to a listener whose backlog is full fails with EAGAIN, and that listener is
    alive (stopped, busy or out of descriptors, but alive)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as probe:
        probe.setblocking(False)
        try:
            probe.connect(path)
        except BlockingIOError:
            return True
        except OSError:
            return False
    return True


def _reap(where: str, name: str) -> None:
    """Remove the socket a dead service left behind, if nobody holds its name. Only with
    the name's lock held, so that it can never remove a service being started."""
    lock_path = os.path.join(where, f".{name}.lock")
    try:
        fd = _lock_name(lock_path, name, where, patience=0)
    except OSError:  # held (someone is starting it), or not our directory
        return
    try:
        path = os.path.join(where, name)
        if not _answers(path):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock_path)
    finally:
        os.close(fd)


def _bind(directory: str, path: str) -> socket.socket:
    """A listening socket at ``path``, put in place atomically. The caller holds the lock."""
    tmp = os.path.join(directory, f".{secrets.token_hex(6)}.tmp")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        sock.bind(tmp)
        try:
            os.chmod(tmp, 0o666)  # the directory and the policy decide who gets in
            sock.listen(socket.SOMAXCONN)
            sock.setblocking(False)
            os.replace(tmp, path)  # replaces a stale socket left by a crashed service
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except BaseException:
        sock.close()
        raise
    return sock


def serve(
    name: str,
    binder: Binder,
    *,
    directory: str | os.PathLike[str] | None = None,
    allow_uids: Iterable[int] = (),
    allow_gids: Iterable[int] = (),
    policy: Policy | None = None,
    max_threads: int | None = None,
) -> None:
    """Publish ``binder`` as ``name`` and serve it in this thread too (Android's
    ``joinThreadPool``) until SIGTERM or SIGINT, then unpublish and return. Arguments as
    ``add_service``; ``max_threads`` sets the pool size.

    Typical service main::

        if __name__ == "__main__":
            serve("clock", ClockService())
    """
    if max_threads is not None:
        set_max_threads(max_threads)
    service = add_service(
        name,
        binder,
        directory=directory,
        allow_uids=allow_uids,
        allow_gids=allow_gids,
        policy=policy,
    )
    state = process_state()
    previous: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():

        def stop(signum: int, frame: FrameType | None) -> None:
            state.request_stop()

        for stopping in (signal.SIGTERM, signal.SIGINT):
            previous[stopping] = signal.signal(stopping, stop)
    try:
        state.join()
    finally:
        for stopping, handler in previous.items():
            signal.signal(stopping, handler)
        service.close()
        stop_process_state()


def get_service(
    name: str,
    *,
    timeout: float = 5.0,
    directory: str | os.PathLike[str] | None = None,
) -> Proxy:
    """Connect to the service ``name``, waiting up to ``timeout`` seconds for it to appear
    (0: look once), as Android's ``ServiceManager.getService``.

    Raises ``ServiceNotFoundError`` if nobody serves it in time, ``PermissionError`` if it
    refuses this process, ``ServiceBusyError`` if it turns this connection away at one of
    its limits, ``TimeoutError`` if a process listens under that name but does not answer
    the connection within ``max(timeout, 1)`` seconds (it is stopped, e.g. SIGSTOP, or
    overloaded). Never a raw ``ConnectionResetError``: a service that resets the connection
    (one stopping) counts as not there yet.

    >>> from ashmem.binder import get_service, ServiceNotFoundError
    >>> try:
    ...     get_service("doctest.nobody", timeout=0)
    ... except ServiceNotFoundError as exc:
    ...     exc.name
    'doctest.nobody'
    """
    name = _check_name(name)
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool):
        raise TypeError(f"get_service: timeout must be a number, not {type(timeout).__name__}")
    where = _directory(directory, serving=False)
    path = _socket_path(where, name)
    deadline = time.monotonic() + timeout
    delay = 0.002
    while True:
        remaining = deadline - time.monotonic()
        try:
            return Proxy._connect_named(path, name, max(remaining, 1.0))
        except ServiceBusyError:
            if remaining <= 0:  # its backlog stayed full: it is alive but not accepting
                raise
        except (FileNotFoundError, ConnectionRefusedError, DeadObjectError):
            # Not there yet, a stale socket, or a service stopping: look again.
            if remaining <= 0:
                raise ServiceNotFoundError(
                    f"no service {name!r} answered in {where} within {timeout} s",
                    name=name,
                    directory=where,
                ) from None
        time.sleep(min(delay, max(remaining, 0.0)))
        delay = min(delay * 2, 0.05)


def list_services(directory: str | os.PathLike[str] | None = None) -> list[str]:
    """Names of the services that are listening in ``directory``, sorted.

    Never blocks on a service: a stopped or overloaded one that still listens is listed.

    Sockets left behind by services that died without cleaning up (SIGKILL, power loss)
    are removed on the way, when this process may (it needs write access to the
    directory, and takes the name's lock first).

    >>> from ashmem.binder import Binder, add_service, list_services
    >>> with add_service("doctest.names", Binder()):
    ...     "doctest.names" in list_services()
    True
    """
    where = _directory(directory, serving=False)
    names = []
    for entry in os.scandir(where):
        if not _NAME.fullmatch(entry.name):
            continue
        try:
            if not stat.S_ISSOCK(entry.stat(follow_symlinks=False).st_mode):
                continue
        except OSError:
            continue
        if _answers(entry.path):
            names.append(entry.name)
        else:
            _reap(where, entry.name)
    return sorted(names)


class ServiceProcess:
    """A service process made by ``start_service``, and the Proxy bound to it.

    The process lives until ``stop()``, or until this process exits or dies (it watches a
    pipe from us). A context manager: leaving stops it.

    ``started`` is False if the service was already running when ``start_service`` was
    called; ``stop()`` then only closes the Proxy and leaves the process alone.

    >>> import os
    >>> from ashmem.binder import Binder, start_service
    >>> service = start_service(Binder, "doctest.process")
    >>> service.started, service.pid != os.getpid(), service.is_alive()
    (True, True, True)
    >>> service.stop(), service.is_alive()
    (0, False)
    """

    def __init__(self, name: str, binder: Proxy, process: subprocess.Popen[bytes] | None) -> None:
        """Private: use ``start_service``."""
        self.name = name
        self.binder = binder
        self._process = process

    @property
    def started(self) -> bool:
        """True if ``start_service`` started this process."""
        return self._process is not None

    @property
    def pid(self) -> int:
        """Pid of the service process (from the kernel, ``SO_PEERCRED``)."""
        return self.binder.credentials.pid

    def is_alive(self) -> bool:
        """True while the service process runs (for one we did not start: while its binder
        is not known to be dead)."""
        if self._process is None:
            return self.binder.is_binder_alive()
        return self._process.poll() is None

    def stop(self, timeout: float = 5.0) -> int | None:
        """Close the Proxy and, if we started it, stop the process: SIGTERM (it unpublishes
        and exits 0), then SIGKILL after ``timeout`` seconds. Returns its exit code (negative:
        killed by that signal), None if we did not start it."""
        self.binder.close()
        _started.discard(self)
        process = self._process
        if process is None:
            return None
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout)
        if process.stdin is not None:
            process.stdin.close()
        return process.returncode

    def _after_fork(self) -> None:
        """In a forked child: drop our copy of the pipe, which keeps the service alive."""
        process = self._process
        if process is not None and process.stdin is not None:
            with contextlib.suppress(OSError):
                process.stdin.close()

    def __enter__(self) -> ServiceProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<ashmem.binder.ServiceProcess {self.name!r} started={self.started}>"


_started: set[ServiceProcess] = set()  # strong: stopped at exit even if the caller dropped it
_atexit_registered = False


def _stop_started() -> None:
    for handle in list(_started):
        with contextlib.suppress(Exception):
            handle.stop(timeout=2.0)


def start_service(
    target: Callable[..., Binder],
    name: str,
    *,
    args: Sequence[Any] = (),
    timeout: float = 10.0,
    directory: str | os.PathLike[str] | None = None,
    allow_uids: Iterable[int] = (),
    allow_gids: Iterable[int] = (),
    policy: Policy | None = None,
    max_threads: int | None = None,
) -> ServiceProcess:
    """Bind to the service ``name``, starting it first if nobody serves it (Android's
    ``bindService(..., BIND_AUTO_CREATE)``): spawns a fresh Python process that calls
    ``target(*args)`` to make the Binder and ``serve``s it, then waits until it answers.

    The new process is prepared as multiprocessing's spawn prepares its children
    (``_launcher``), so ``target`` (a Binder subclass or a factory) may live wherever a spawn
    ``Process`` target may: a module, the main script, or a module run with ``python -m``
    (relative imports included); it and ``args`` are pickled to the new process. A target
    defined in an interactive ``__main__`` (or ``python -c``) is ``ValueError``: no new
    process can import it. The other arguments are ``serve``'s. Raises ``ChildProcessError`` if the
    process exits before answering (with the reason it gave), ``TimeoutError`` after
    ``timeout`` seconds (the process is then killed), ``RuntimeError`` if ``target`` lives in
    a script whose top-level code is not under ``if __name__ == "__main__":`` (the new
    process imports that script), and what ``get_service`` raises if a process already
    serving ``name`` does not answer. Works from any process, daemonic multiprocessing
    children included.

    >>> from ashmem.binder import Binder, start_service
    >>> with start_service(Binder, "doctest.started") as service:
    ...     service.binder.ping(), service.started
    (True, True)
    """
    global _atexit_registered
    if importing_main():
        raise RuntimeError(NO_MAIN_GUARD)
    if not callable(target):
        raise TypeError(
            f"start_service: target must be a Binder subclass or a function returning one, "
            f"not {type(target).__name__} (note the order: start_service(target, name))"
        )
    name = _check_name(name)
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool):
        raise TypeError(f"start_service: timeout must be a number, not {type(timeout).__name__}")
    where = _directory(directory, serving=False)
    try:
        return ServiceProcess(name, get_service(name, timeout=0, directory=where), None)
    except ServiceNotFoundError:
        pass
    options = {
        "directory": where,
        "allow_uids": list(allow_uids),
        "allow_gids": list(allow_gids),
        "policy": policy,
        "max_threads": max_threads,
    }
    process, reason_read = spawn_service_process(target, name, tuple(args), options)
    try:
        deadline = time.monotonic() + timeout
        delay = 0.002
        while True:
            try:
                proxy = get_service(name, timeout=0, directory=where)
                break
            except ServiceNotFoundError:
                if process.poll() is not None:
                    why = _read_reason(reason_read)
                    raise ChildProcessError(
                        f"the process for service {name!r} exited with code "
                        f"{process.returncode} before answering: " + (why or "its stderr says why")
                    ) from None
                if time.monotonic() >= deadline:
                    raise TimeoutError(
                        f"service {name!r} did not answer within {timeout} s of starting"
                    ) from None
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
    except BaseException:
        if process.poll() is None:
            process.kill()
        process.wait(5)
        if process.stdin is not None:
            with contextlib.suppress(OSError):
                process.stdin.close()
        raise
    finally:
        os.close(reason_read)
    handle = ServiceProcess(name, proxy, process)
    _started.add(handle)
    if not _atexit_registered:
        atexit.register(_stop_started)
        _atexit_registered = True
    return handle


def _read_reason(fd: int) -> str:
    """What a failed service process wrote on its reason pipe (non-blocking)."""
    os.set_blocking(fd, False)
    try:
        return os.read(fd, 4096).decode("utf-8", "replace").strip()
    except OSError:
        return ""


def _after_fork_in_child() -> None:
    for service in list(_services):
        service._after_fork()
    for handle in list(_started):
        handle._after_fork()
    _started.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)
