"""A ``Pool`` and a ``ProcessPoolExecutor`` that never pickle big arrays.

Both are the standard library's (``multiprocessing.pool.Pool``,
``concurrent.futures.ProcessPoolExecutor``: same methods, same semantics) with their queues
replaced by ``ashmem.SimpleQueue``/``ashmem.Queue``: arguments and results whose out-of-band
buffers are larger than ``max_nbytes`` (default 1 MiB) travel as regions and arrive as
read-only views, like joblib's ``mmap_mode="r"``. Region-backed arrays (``ashmem.numpy``),
``SharedMemory`` and ``MemoryFile`` go as descriptors, writable where they were.

A top-level argument that is an ordinary numpy array larger than ``max_nbytes`` is copied
once per call into a write-protected region, so ``pool.map(f, [big] * 8)`` copies ``big``
once and every task gets a view of that one copy. Arrays nested in other arguments are copied
once per task.

Nothing is left behind when a worker is killed: regions have no name and no file; the kernel
frees each one when its last descriptor and mapping are gone.
"""

from __future__ import annotations

import concurrent.futures.process as _cf_process
import contextlib
import multiprocessing.pool as _mp_pool
import queue
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ._queue import Queue, SimpleQueue

__all__ = ["DEFAULT_MAX_NBYTES", "Pool", "ProcessPoolExecutor"]

#: Arguments and results with out-of-band buffers larger than this travel as regions.
DEFAULT_MAX_NBYTES = 1 << 20


def _check_max_nbytes(max_nbytes: object) -> int:
    if not isinstance(max_nbytes, int) or isinstance(max_nbytes, bool):
        raise TypeError(f"max_nbytes must be an int (bytes), not {type(max_nbytes).__name__}")
    if max_nbytes < 0:
        raise ValueError(f"max_nbytes must be >= 0, got {max_nbytes}")
    return max_nbytes


class _Sharer:
    """Per call: an ordinary numpy array larger than ``max_nbytes`` becomes a read-only
    region-backed copy, made once however often the array appears."""

    def __init__(self, max_nbytes: int) -> None:
        self._max = max_nbytes
        self._done: dict[int, tuple[Any, Any]] = {}
        np = sys.modules.get("numpy")
        self._ndarray = getattr(np, "ndarray", None)

    def __call__(self, obj: Any) -> Any:
        if self._ndarray is None or type(obj) is not self._ndarray:
            return obj
        if obj.nbytes <= self._max or obj.dtype.hasobject:
            return obj
        done = self._done.get(id(obj))
        if done is not None:
            return done[1]
        from . import numpy as anp

        if anp.region_of(obj) is not None:
            return obj
        shared = anp.share_read_only(obj)
        self._done[id(obj)] = (obj, shared)  # keeps obj alive, so its id stays unique
        return shared

    def args(self, args: Iterable[Any]) -> tuple[Any, ...]:
        return tuple(self(arg) for arg in args)

    def each(self, iterable: Iterable[Any]) -> Iterator[Any]:
        for item in iterable:
            yield self(item)

    def each_args(self, iterable: Iterable[Iterable[Any]]) -> Iterator[tuple[Any, ...]]:
        for item in iterable:
            yield self.args(item)


class Pool(_mp_pool.Pool):
    """``multiprocessing.Pool`` whose tasks and results travel through ``ashmem`` queues.

    ``map``, ``imap``, ``imap_unordered``, ``starmap``, ``apply``, their ``_async`` forms and
    the context manager work as in the standard library. ``context`` is the multiprocessing
    context (default: the default start method).

    >>> import ashmem, numpy as np
    >>> big = np.ones(1 << 18)                      # 2 MiB: shared once, read-only views
    >>> with ashmem.Pool(2) as pool:
    ...     pool.map(np.sum, [big] * 4)
    [np.float64(262144.0), np.float64(262144.0), np.float64(262144.0), np.float64(262144.0)]
    """

    _state = _mp_pool.INIT  # for __del__ when __init__ raised before the pool existed

    def __init__(
        self,
        processes: int | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: Iterable[Any] = (),
        maxtasksperchild: int | None = None,
        context: Any = None,
        *,
        max_nbytes: int = DEFAULT_MAX_NBYTES,
    ) -> None:
        self._max_nbytes = _check_max_nbytes(max_nbytes)
        super().__init__(processes, initializer, initargs, maxtasksperchild, context)

    @property
    def max_nbytes(self) -> int:
        """Buffers larger than this travel as regions."""
        return self._max_nbytes

    @staticmethod
    def _help_stuff_finish(inqueue: Any, task_handler: Any, size: int) -> None:
        """``terminate()``'s drain of the task queue, without its blocking receive.

        multiprocessing takes the queue's read lock, which keeps its workers from reading,
        then ``recv()``s while ``poll()`` says a task is waiting. Our workers read without
        a lock (one task is one datagram), so a worker can take the task between the
        parent's ``poll()`` and ``recv()``, and the blocking ``recv()`` then waits for ever:
        a hung ``terminate()``, seen once in CI. Take only what is there now."""
        inqueue._rlock.acquire()  # as multiprocessing does; it is never released
        reader = inqueue._reader
        while task_handler.is_alive() and reader.poll():
            with contextlib.suppress(queue.Empty):  # a worker took it first
                reader._receive(True, timeout=0)
            time.sleep(0)

    def _setup_queues(self) -> None:
        threshold = self._max_nbytes + 1
        ctx = self._ctx  # type: ignore[attr-defined]
        self._inqueue = SimpleQueue(ctx=ctx, threshold=threshold)
        self._outqueue = SimpleQueue(ctx=ctx, threshold=threshold)
        self._quick_put = self._inqueue._writer.send
        self._quick_get = self._outqueue._reader.recv

    def apply_async(  # type: ignore[override]
        self,
        func: Callable[..., Any],
        args: Iterable[Any] = (),
        kwds: dict[str, Any] | None = None,
        callback: Callable[[Any], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
    ) -> Any:
        share = _Sharer(self._max_nbytes)
        kwds = {key: share(value) for key, value in (kwds or {}).items()}
        return super().apply_async(func, share.args(args), kwds, callback, error_callback)

    def _map_async(self, func: Any, iterable: Any, mapper: Any, *args: Any) -> Any:
        share = _Sharer(self._max_nbytes)
        if mapper is _mp_pool.starmapstar:  # type: ignore[attr-defined]
            items: Any = list(share.each_args(iterable))
        else:
            items = list(share.each(iterable))
        return super()._map_async(func, items, mapper, *args)  # type: ignore[misc]

    def imap(
        self, func: Callable[..., Any], iterable: Iterable[Any], chunksize: int | None = 1
    ) -> Any:
        return super().imap(func, _Sharer(self._max_nbytes).each(iterable), chunksize)

    def imap_unordered(
        self, func: Callable[..., Any], iterable: Iterable[Any], chunksize: int | None = 1
    ) -> Any:
        share = _Sharer(self._max_nbytes)
        return super().imap_unordered(func, share.each(iterable), chunksize)


class _CallQueue(Queue):
    """The executor's call queue: ``concurrent.futures``' ``_SafeQueue`` on ``ashmem.Queue``
    (a call that cannot be sent fails its future instead of being lost)."""

    def __init__(
        self,
        maxsize: int,
        *,
        ctx: Any,
        pending_work_items: dict[int, Any],
        shutdown_lock: Any,
        thread_wakeup: Any,
        threshold: int,
    ) -> None:
        self.pending_work_items = pending_work_items
        self.shutdown_lock = shutdown_lock
        self.thread_wakeup = thread_wakeup
        super().__init__(maxsize, ctx=ctx, threshold=threshold)

    def __getstate__(self) -> tuple[Any, ...]:
        return super().__getstate__()  # the executor's bookkeeping stays in this process

    def _on_queue_feeder_error(self, exc: BaseException, obj: Any) -> None:
        if isinstance(obj, _cf_process._CallItem):
            tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            exc.__cause__ = _cf_process._RemoteTraceback(f'\n"""\n{tb}"""')  # type: ignore[arg-type]
            work_item = self.pending_work_items.pop(obj.work_id, None)
            with self.shutdown_lock:
                self.thread_wakeup.wakeup()
            if work_item is not None:
                work_item.future.set_exception(exc)
        else:
            super()._on_queue_feeder_error(exc, obj)


class ProcessPoolExecutor(_cf_process.ProcessPoolExecutor):
    """``concurrent.futures.ProcessPoolExecutor`` whose calls and results travel through
    ``ashmem`` queues: ``submit``, ``map``, ``shutdown`` and the context manager as in the
    standard library; ``mp_context`` picks the start method.

    >>> import ashmem, numpy as np
    >>> with ashmem.ProcessPoolExecutor(2) as pool:
    ...     pool.submit(np.add, np.ones(1 << 18), 1).result().sum()   # result: a region view
    np.float64(524288.0)
    """

    def __init__(
        self,
        max_workers: int | None = None,
        mp_context: Any = None,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
        *,
        max_nbytes: int = DEFAULT_MAX_NBYTES,
        **kwargs: Any,
    ) -> None:
        self._max_nbytes = _check_max_nbytes(max_nbytes)
        super().__init__(max_workers, mp_context, initializer, initargs, **kwargs)
        # The standard executor made its queues in __init__ but starts no process before the
        # first submit: swap them for ashmem's, with the same bookkeeping.
        old_calls: Any = self._call_queue  # type: ignore[has-type]
        old_results: Any = self._result_queue
        threshold = self._max_nbytes + 1
        self._call_queue = _CallQueue(
            old_calls._maxsize,
            ctx=self._mp_context,
            pending_work_items=self._pending_work_items,
            shutdown_lock=self._shutdown_lock,
            thread_wakeup=self._executor_manager_thread_wakeup,
            threshold=threshold,
        )
        self._call_queue._ignore_epipe = True
        self._result_queue = SimpleQueue(  # type: ignore[assignment]
            ctx=self._mp_context, threshold=threshold
        )
        old_calls.close()
        old_calls.join_thread()
        old_results.close()

    @property
    def max_nbytes(self) -> int:
        """Buffers larger than this travel as regions."""
        return self._max_nbytes

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        share = _Sharer(self._max_nbytes)
        kwargs = {key: share(value) for key, value in kwargs.items()}
        return super().submit(fn, *share.args(args), **kwargs)

    def map(
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
        **kwargs: Any,
    ) -> Iterator[Any]:
        share = _Sharer(self._max_nbytes)
        shared = [share.each(iterable) for iterable in iterables]
        return super().map(fn, *shared, timeout=timeout, chunksize=chunksize, **kwargs)
