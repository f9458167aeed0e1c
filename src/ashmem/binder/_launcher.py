"""The process ``start_service`` starts: a fresh interpreter prepared the way
``multiprocessing``'s spawn prepares its children, then ``serve``.

The starter takes ``multiprocessing.spawn.get_preparation_data`` (``sys.path``, ``sys.argv``,
the working directory, and how to re-create ``__main__``: by module name for ``python -m
pkg.mod``, which keeps relative imports working, or by path for a script) and pickles it,
with the target, its arguments and ``serve``'s options, to the new process over a private
pipe (its stdin): trusted data from our own parent, unlike anything a peer sends. The child
hands it to ``multiprocessing.spawn.prepare``, so ``start_service`` finds a target exactly
where a spawn ``Process`` would.

Two differences from spawn. ``__main__`` is re-created only when the target lives there
(a script without a ``__main__`` guard that starts a service from a module keeps working),
and a target that lives in a ``__main__`` no new process can import (an interactive
session, ``python -c``, a package's ``__main__.py``) is refused in the starter with the fix,
instead of an ``AttributeError`` in the child. A script that starts the service from its
top level (no ``if __name__ == "__main__":`` guard) gets ``RuntimeError`` rather than a
chain of processes: in the starter if the script has no guard at all, else in the child,
whose message reaches the starter's ``ChildProcessError``.

Wire on stdin: ``u64 length, pickle`` twice (preparation data and the reason pipe's fd;
then target, name, args, options). stdin stays open for as long as the starter wants the
service: end-of-file means it stopped it, exited, or was killed.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.context
import multiprocessing.spawn
import os
import pickle
import signal
import struct
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

from ._binder import Binder

__all__ = ["NO_MAIN_GUARD", "importing_main", "launch", "spawn_service_process"]

_LENGTH = struct.Struct("<Q")
# ``serve`` is handed in: it lives above this module (in _directory, which starts us).
_ENTRY = (
    "from ashmem.binder._directory import serve; "
    "from ashmem.binder._launcher import launch; launch(serve)"
)

NO_MAIN_GUARD = (
    "start_service() was called while the service process was importing the main script: "
    "the target is defined in a script whose top-level code starts the service. Put that "
    "code under 'if __name__ == \"__main__\":' (the new process imports the script to find "
    "the target, as multiprocessing's spawn does), or define the target in a module"
)
_importing_main = False  # True in a service process while it re-creates the starter's main


def importing_main() -> bool:
    """True in a service process while it imports the starter's main module."""
    return _importing_main


def _preparation_data(target: Callable[..., Any]) -> dict[str, Any]:
    """spawn's preparation data for a process that will unpickle ``target``."""
    context = multiprocessing.context._default_context
    method_was_set = multiprocessing.get_start_method(allow_none=True) is not None
    data: dict[str, Any] = multiprocessing.spawn.get_preparation_data("ashmem-service")
    # The service is no multiprocessing child: it gets no share of our authkey (which
    # refuses ordinary pickling anyway).
    data.pop("authkey", None)
    if not method_was_set:
        # get_preparation_data asks for the start method, which fixes it in this process;
        # ours does not use multiprocessing, so leave the application free to choose.
        context._actual_context = None  # type: ignore[attr-defined]
        data.pop("start_method", None)
    in_main = getattr(target, "__module__", None) == "__main__"
    if not in_main:
        data.pop("init_main_from_name", None)
        data.pop("init_main_from_path", None)
        return data
    name = data.get("init_main_from_name")
    if name is not None and (name == "__main__" or name.endswith(".__main__")):
        # spawn does not re-run a package's __main__.py (it would run its main-only code).
        data.pop("init_main_from_name")
        name = None
    if name is None and "init_main_from_path" not in data:
        what = getattr(target, "__qualname__", repr(target))
        raise ValueError(
            f"start_service: target {what} is defined in a __main__ that a new process "
            "cannot import (an interactive session, python -c, or a package's __main__.py); "
            "define it in a module, as multiprocessing's spawn needs too"
        )
    main = sys.modules.get("__main__")
    main_path = getattr(main, "__file__", None)
    if main_path and not _has_main_guard(main_path):
        raise RuntimeError(NO_MAIN_GUARD + f" ({main_path} has no such guard)")
    return data


def _has_main_guard(path: str) -> bool:
    """Whether the script at ``path`` tests ``__name__`` at all (a cheap check that keeps a
    script without a guard from starting itself over and over)."""
    try:
        with open(path, "rb") as script:
            return b"__name__" in script.read()
    except OSError:
        return True  # cannot tell: the child reports what goes wrong


def spawn_service_process(
    target: Callable[..., Any], name: str, args: tuple[Any, ...], options: dict[str, Any]
) -> tuple[subprocess.Popen[bytes], int]:
    """Start the process that serves ``name`` and send it its orders: ``(process, fd)``,
    where ``fd`` (owned by the caller) is the read end of the pipe on which the child
    writes why it failed. ``ValueError``/``RuntimeError`` as the module docstring says."""
    preparation = _preparation_data(target)
    orders = pickle.dumps((target, name, args, options))
    reason_read, reason_write = os.pipe()
    try:
        process = subprocess.Popen(
            [sys.executable, "-c", _ENTRY],
            stdin=subprocess.PIPE,
            # The child imports ashmem before it can read its sys.path from the pipe.
            env=dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p)),
            pass_fds=(reason_write,),
            start_new_session=True,  # a terminal's Ctrl-C is for us; we stop it ourselves
        )
    except BaseException:
        os.close(reason_read)
        raise
    finally:
        os.close(reason_write)
    try:
        assert process.stdin is not None
        first = pickle.dumps((preparation, reason_write))
        process.stdin.write(_LENGTH.pack(len(first)) + first + _LENGTH.pack(len(orders)) + orders)
        process.stdin.flush()
    except BaseException:
        process.kill()
        process.wait(5)
        os.close(reason_read)
        raise
    return process, reason_read


def _read_exactly(fd: int, size: int) -> bytes:
    parts = []
    while size:
        chunk = os.read(fd, size)
        if not chunk:
            raise EOFError("start_service: the starter went away before sending its orders")
        parts.append(chunk)
        size -= len(chunk)
    return b"".join(parts)


def _receive(fd: int) -> Any:
    (size,) = _LENGTH.unpack(_read_exactly(fd, _LENGTH.size))
    # Our own parent pickled this for us over a private pipe: trusted.
    return pickle.loads(_read_exactly(fd, size))


def launch(serve: Callable[..., None]) -> None:
    """Entry point of a process made by ``start_service``: its orders arrive on stdin; it
    then ``serve``s what the target makes."""
    stdin = sys.stdin.fileno()
    preparation, reason_fd = _receive(stdin)
    os.set_inheritable(reason_fd, False)
    try:
        _launch_with(stdin, preparation, serve)
    except BaseException as exc:
        # Tell the starter why, so that its exception says it (stderr gets it too).
        with contextlib.suppress(OSError):
            os.write(reason_fd, f"{type(exc).__name__}: {exc}".encode()[:4096])
        raise


def _launch_with(stdin: int, preparation: dict[str, Any], serve: Callable[..., None]) -> None:
    global _importing_main
    _importing_main = True
    try:
        multiprocessing.spawn.prepare(preparation)
    finally:
        _importing_main = False
    target, name, args, options = _receive(stdin)

    def watch_starter() -> None:
        # Raw reads: a daemon thread must not hold the lock of a buffered sys.stdin when
        # the interpreter shuts down.
        while os.read(stdin, 4096):
            pass
        os.kill(os.getpid(), signal.SIGTERM)  # serve() stops cleanly; before it, we just die

    threading.Thread(target=watch_starter, name="ashmem-service-starter", daemon=True).start()
    binder = target(*args)
    if not isinstance(binder, Binder):
        raise TypeError(f"start_service target returned {type(binder).__name__}, not a Binder")
    serve(name, binder, **options)
