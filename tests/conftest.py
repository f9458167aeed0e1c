"""Shared fixtures: every start method, fd accounting, children that cannot hang CI."""

from __future__ import annotations

import multiprocessing
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest

START_METHODS = ["fork", "spawn", "forkserver"]


def scaled(seconds: float) -> float:
    """A test timeout times ``ASHMEM_TEST_TIMEOUT_SCALE`` (default 1): one knob for slow
    or loaded machines. Timeouts bound hangs; no test asserts an elapsed time."""
    return seconds * TIMEOUT_SCALE


TIMEOUT_SCALE = float(os.environ.get("ASHMEM_TEST_TIMEOUT_SCALE", "1") or "1")
CHILD_TIMEOUT = scaled(60.0)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Scale every pytest-timeout bound (markers and the ini default) by the same factor."""
    if TIMEOUT_SCALE == 1:
        return
    default = float(items[0].config.getini("timeout") or 0) if items else 0.0
    for item in items:
        marker = item.get_closest_marker("timeout")
        seconds = float(marker.args[0]) if marker is not None and marker.args else default
        if seconds:
            item.add_marker(pytest.mark.timeout(scaled(seconds)))


# Process-lifetime threads: started once and kept by design (the binder pool, its closer
# and death watcher, the purge thread), not left behind by a test.
_RESIDENT_THREADS = ("ashmem-binder-", "ashmem-purge", "pydevd")


def _own_children() -> set[int]:
    children: set[int] = set()
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/children") as listing:
                children.update(int(pid) for pid in listing.read().split())
        except OSError:
            continue
    return children


# Process-lifetime helpers multiprocessing starts once and keeps, as resident as the pool.
_RESIDENT_CHILDREN = (b"multiprocessing.forkserver", b"multiprocessing.resource_tracker")


def _alive(pid: int) -> bool:
    """A running child that is not one of multiprocessing's resident helpers."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            if stat.read().rsplit(")", 1)[1].split()[0] == "Z":
                return False
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            command = cmdline.read()
    except OSError:
        return False
    return not any(helper in command for helper in _RESIDENT_CHILDREN)


# Modules where something left behind fails the module; elsewhere it is a warning for now.
_STRICT_MODULES = (
    "tests.test_binder",
    "tests.test_numpy",
    "tests.test_queue",
    "tests.test_transports",
)


def _resident(thread: Any) -> bool:
    """Threads that live as long as the process by design: ours by name, and CPython's
    resource sharer (it serves descriptors pickled with ``DupFd`` for spawn and forkserver
    children, started by whichever test first sends one)."""
    if thread.name.startswith(_RESIDENT_THREADS):
        return True
    sharer = sys.modules.get("multiprocessing.resource_sharer")
    return sharer is not None and thread is getattr(sharer._resource_sharer, "_thread", None)


@pytest.fixture(scope="module", autouse=True)
def _nothing_left_behind(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test module that leaves threads or child processes running after it ends
    (as CPython's _test_multiprocessing reports dangling ones). Resident threads and a
    zombie waiting to be reaped do not count; stragglers get a bounded grace period."""
    import threading
    import time

    threads_before = set(threading.enumerate())
    children_before = _own_children()
    yield
    deadline = time.monotonic() + scaled(10.0)
    while True:
        threads = [
            t
            for t in threading.enumerate()
            if t not in threads_before and t.is_alive() and not _resident(t)
        ]
        children = [pid for pid in _own_children() - children_before if _alive(pid)]
        if not threads and not children:
            return
        if time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    message = (
        f"{request.module.__name__} left behind threads {[t.name for t in threads]} "
        f"and child processes {children}"
    )
    if request.module.__name__.startswith(_STRICT_MODULES):
        pytest.fail(message, pytrace=False)
    import warnings

    warnings.warn(message, pytest.PytestWarning, stacklevel=1)


def open_fd_count() -> int:
    """Number of fds open in this process."""
    return len(os.listdir("/proc/self/fd"))


def shm_entries() -> set[str]:
    """Names in /dev/shm (where multiprocessing.shared_memory and POSIX shm live)."""
    try:
        return set(os.listdir("/dev/shm"))
    except FileNotFoundError:
        return set()


@pytest.fixture(params=START_METHODS)
def mp_context(request: pytest.FixtureRequest) -> multiprocessing.context.BaseContext:
    """A multiprocessing context for each start method; one test body runs under all."""
    return multiprocessing.get_context(request.param)


class Children:
    """Starts processes and guarantees that none outlives the test, even when it fails."""

    def __init__(self) -> None:
        self._procs: list[Any] = []

    def start(
        self,
        ctx: multiprocessing.context.BaseContext,
        target: Callable[..., Any],
        *args: Any,
    ) -> Any:
        proc = ctx.Process(target=target, args=args, daemon=True)  # type: ignore[attr-defined]
        proc.start()
        self._procs.append(proc)
        return proc

    def run(
        self,
        ctx: multiprocessing.context.BaseContext,
        target: Callable[..., Any],
        *args: Any,
        timeout: float = CHILD_TIMEOUT,
    ) -> None:
        """Run ``target(*args)`` in a child and fail unless it exits 0 within ``timeout``."""
        proc = self.start(ctx, target, *args)
        self.join(proc, timeout)

    @staticmethod
    def join(proc: Any, timeout: float = CHILD_TIMEOUT) -> None:
        proc.join(timeout)
        if proc.is_alive():
            proc.kill()
            proc.join(5)
            pytest.fail(f"child {proc.pid} hung for {timeout}s and was killed")
        assert proc.exitcode == 0, f"child {proc.pid} exited with {proc.exitcode}"

    def cleanup(self) -> None:
        for proc in self._procs:
            if proc.is_alive():
                proc.kill()
            proc.join(5)


@pytest.fixture
def collector(tmp_path: Any) -> Iterator[Any]:
    """A log collector (``ashmem.logd.start``) in a child process, stopped after the test."""
    import ashmem.logd

    c = ashmem.logd.start(str(tmp_path / "logs"), interval=0.005)
    try:
        yield c
    finally:
        c.stop()


def logd_rows(collector: Any, logger: str) -> list[dict[str, Any]]:
    """Flush, then the ``--json`` objects of ``logger``'s records in ``collector``'s files."""
    import ashmem.logd

    ashmem.logd.flush(timeout=30)
    rows = [e.to_json() for e in ashmem.logd.read(collector.directory)]
    return [r for r in rows if r["logger"] == logger]


@pytest.fixture
def children() -> Iterator[Children]:
    kids = Children()
    yield kids
    kids.cleanup()


@pytest.fixture(autouse=True)
def _forget_closed_pins() -> Iterator[None]:
    """Close, at the end of the test that made them, the pin descriptors of regions whose raw
    fds the test closed with os.close: otherwise the purge thread closes them later, in the
    middle of another test's descriptor count."""
    yield
    import sys

    pins = sys.modules.get("ashmem._pins")
    if pins is not None:
        with pins._lock:
            pins._prune_locked()
