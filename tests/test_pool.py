"""ashmem.Pool and ashmem.ProcessPoolExecutor: the standard APIs, big arrays never pickled."""

from __future__ import annotations

import gc
import multiprocessing
import os
import signal
import threading
from typing import Any

import numpy as np
import pytest

import ashmem
import ashmem.numpy as anp
from ashmem import _ls

from . import _helpers_security as sec
from .conftest import CHILD_TIMEOUT, shm_entries

MiB = 1 << 20


def _describe(a: Any) -> tuple[int | None, bool, float]:
    """(inode of the region behind ``a`` or None, writable, sum)."""
    region = anp.region_of(a)
    inode = None if region is None else os.fstat(region.fileno()).st_ino
    return inode, bool(a.flags.writeable), float(a.sum())


def _add(a: Any, b: Any) -> Any:
    return a + b


def _ones(n: int) -> Any:
    return np.ones(n)


def _square(x: int) -> int:
    return x * x


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_pool_shares_a_big_array_once_read_only(method: str) -> None:
    big = np.arange(MiB // 4, dtype=np.float64)  # 2 MiB > max_nbytes
    ctx = multiprocessing.get_context(method)
    with ashmem.Pool(2, context=ctx) as pool:
        seen = pool.map(_describe, [big] * 6)
        inodes = {inode for inode, _, _ in seen}
        assert len(inodes) == 1 and None not in inodes  # one copy, every task a view of it
        assert all(not writable and total == big.sum() for _, writable, total in seen)
        small = pool.map(_describe, [np.ones(10)] * 2)
        assert all(inode is None and writable for inode, writable, _ in small)
        # Results larger than max_nbytes come back as read-only region views.
        result = pool.apply_async(_ones, (MiB // 4,)).get(CHILD_TIMEOUT)
        assert anp.region_of(result) is not None and not result.flags.writeable
        assert result.sum() == MiB // 4


def test_terminate_never_waits_for_a_task_a_worker_took() -> None:
    """terminate() drains the task queue while ``poll()`` says a task waits. A worker reads
    without the drain's lock, so it can take that task first: the drain must then go on,
    not wait for a task that will never come (multiprocessing's own drain hangs here)."""
    tasks = ashmem.SimpleQueue()
    reader = tasks._reader
    told = iter([True])  # poll() saw a task once; a worker took it before the drain did

    class RacingReader:
        def poll(self, timeout: float | None = 0.0) -> bool:
            return next(told, False)

        def recv(self) -> Any:  # what multiprocessing's drain calls
            return reader.recv()

        def _receive(self, want_pickle: bool, timeout: float | None = None) -> Any:
            return reader._receive(want_pickle, timeout)

    inqueue = type("Inqueue", (), {"_rlock": threading.Lock(), "_reader": RacingReader()})()
    handler_may_end = threading.Event()
    handler = threading.Thread(target=handler_may_end.wait, daemon=True)  # the task handler
    handler.start()
    drain = threading.Thread(
        target=ashmem.Pool._help_stuff_finish, args=(inqueue, handler, 2), daemon=True
    )
    drain.start()
    drain.join(CHILD_TIMEOUT)
    stuck = drain.is_alive()
    handler_may_end.set()
    tasks.put(None)  # frees a drain stuck in recv(), so the test leaves no thread behind
    drain.join(CHILD_TIMEOUT)
    tasks.close()
    assert not stuck, "terminate()'s drain waited for a task a worker had taken"


def test_pool_api() -> None:
    ctx = multiprocessing.get_context("fork")
    with ashmem.Pool(2, context=ctx, max_nbytes=64) as pool:
        assert pool.max_nbytes == 64
        assert pool.map(_square, range(10)) == [x * x for x in range(10)]
        assert list(pool.imap(_square, range(5))) == [0, 1, 4, 9, 16]
        assert sorted(pool.imap_unordered(_square, range(5))) == [0, 1, 4, 9, 16]
        assert pool.starmap(_add, [(1, 2), (3, 4)]) == [3, 7]
        assert pool.starmap_async(_add, [(1, 2)]).get(CHILD_TIMEOUT) == [3]
        assert pool.apply(_add, (2, 3)) == 5
        shared = pool.apply(_add, (np.ones(100), np.ones(100)))
        assert shared.sum() == 200 and anp.region_of(shared) is not None
        assert pool.apply_async(_describe, kwds={"a": np.ones(100)}).get(CHILD_TIMEOUT)[0]
    with pytest.raises(ValueError, match="max_nbytes"):
        ashmem.Pool(1, max_nbytes=-1)


def test_region_backed_arrays_stay_writable_through_the_pool() -> None:
    a = anp.zeros(16)
    with ashmem.Pool(1, context=multiprocessing.get_context("spawn")) as pool:
        pool.apply(np.copyto, (a[4:8], 3.0))
    assert a.tolist() == [0.0] * 4 + [3.0] * 4 + [0.0] * 8


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_executor(method: str) -> None:
    ctx = multiprocessing.get_context(method)
    big = np.ones(MiB // 4)
    with ashmem.ProcessPoolExecutor(2, mp_context=ctx) as pool:
        assert pool.max_nbytes == MiB
        seen = list(pool.map(_describe, [big] * 4))
        assert len({inode for inode, _, _ in seen}) == 1 and not seen[0][1]
        result = pool.submit(_add, big, big).result(CHILD_TIMEOUT)
        assert result.sum() == 2 * big.size and not result.flags.writeable
        assert pool.submit(_square, 7).result(CHILD_TIMEOUT) == 49
        failed = pool.submit(_square, threading.Lock())  # cannot be pickled: its future fails
        with pytest.raises(TypeError):
            failed.result(CHILD_TIMEOUT)
        assert pool.submit(_square, 3).result(CHILD_TIMEOUT) == 9


def _hang(a: Any, started: Any) -> None:
    started.set()
    threading.Event().wait(CHILD_TIMEOUT)


def _our_processes() -> set[int]:
    me = os.getpid()
    return {pid for pid in map(int, filter(str.isdigit, os.listdir("/proc"))) if
            sec._descends_from_us(pid) or pid == me}  # fmt: skip


def test_sigkill_of_a_worker_mid_task_leaks_nothing() -> None:
    ctx = multiprocessing.get_context("fork")
    gc.collect()
    shm_before = shm_entries()
    regions_before = {r.inode for r in _ls.list_regions()}
    big = anp.share_read_only(np.ones(MiB // 4))
    region = anp.region_of(big)
    assert region is not None
    probe = sec.RegionProbe.of(region.fileno())
    manager = ctx.Manager()
    started = manager.Event()
    pool = ashmem.Pool(1, context=ctx)
    try:
        pool.apply_async(_hang, (big, started))
        assert started.wait(CHILD_TIMEOUT)
        (worker,) = pool._pool  # type: ignore[attr-defined]
        assert any(pid == worker.pid for pid, _ in probe.holders())
        os.kill(worker.pid, signal.SIGKILL)
        worker.join(CHILD_TIMEOUT)
        assert pool.apply_async(_square, (4,)).get(CHILD_TIMEOUT) == 16  # replaced, works
    finally:
        pool.terminate()
        pool.join()
        manager.shutdown()
    del big, region
    probe.wait_released()
    gc.collect()
    ours = _our_processes()
    leftovers = [
        r for r in _ls.list_regions()
        if r.pid in ours and r.inode not in regions_before and (r.name or "").startswith("ashmem.")
    ]  # fmt: skip
    assert leftovers == []
    # Other processes on this machine come and go in /dev/shm; nothing new may be ours.
    assert not {n for n in shm_entries() - shm_before if not n.startswith("sem.")}
