"""Shared fixtures: every start method, fd accounting, children that cannot hang CI."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

START_METHODS = ["fork", "spawn", "forkserver"]
CHILD_TIMEOUT = 60.0


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
