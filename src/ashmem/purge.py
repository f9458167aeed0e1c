"""When purging happens: the purge manager, its settings, and ``PurgeableCache``.

Android's ashmem driver purged unpinned ranges from the kernel's shrinker. Here the kernel
cannot call back into a process, so each process that unpins runs its own *purge manager*:
a daemon thread, started at the first unpin (nothing to run or configure beforehand), that
keeps this process's unpinned ranges in LRU order (``ashmem._pins``) and purges the least
recently unpinned first when

1. ``ashmem.region.purge_all_caches()`` is called (trigger ``"purge_all_caches"``);
2. the kernel reports memory pressure (trigger ``"pressure"``): a PSI trigger (``"some
   150000 2000000"`` by default: 150 ms of memory stall within 2 s) armed on this process's
   cgroup v2 ``memory.pressure`` file, or, if that cannot be armed, on
   ``/proc/pressure/memory``. The thread sleeps in ``poll()`` on it: no timer, no CPU while
   idle. A pressure event purges everything this process has unpinned. Where neither file
   can be armed (no PSI, ``psi=0``, a kernel that refuses the trigger; unprivileged triggers
   need a window that is a multiple of 2 s), the ``ashmem.purge`` logger says so once and
   purging happens only on (1) and (3);
3. this process's unpinned bytes exceed ``budget_bytes`` (trigger ``"budget"``): the oldest
   ranges are purged until the total is back under the budget.

Each purge is logged on the ``ashmem.purge`` logger at INFO (bytes purged, ranges, trigger,
bytes of memory returned). A range that another process pins is skipped and tried again at
the next purge.

>>> import ashmem.purge
>>> ashmem.purge.configure(budget_bytes=None)
>>> counters = ashmem.purge.stats()
>>> counters["budget_bytes"], set(counters["purges"]) <= {"budget", "pressure", "purge_all_caches"}
(None, True)
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import select
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from typing import Any

from . import _pins
from ._shared_memory import Mapping, SharedMemory

__all__ = ["DEFAULT_PSI_TRIGGER", "PurgeableCache", "configure", "stats"]

#: 150 ms of memory stall (some task waiting) within a 2 s window.
DEFAULT_PSI_TRIGGER = "some 150000 2000000"

_log = logging.getLogger("ashmem.purge")
_TRIGGER_RE = re.compile(r"(some|full) [1-9][0-9]* [1-9][0-9]*")


def _cgroup_pressure_file() -> str | None:
    """This process's cgroup v2 ``memory.pressure``, or None if there is no v2 hierarchy."""
    try:
        with open("/proc/self/cgroup", encoding="utf-8") as f:
            path = next((line[3:].strip() for line in f if line.startswith("0::")), None)
        with open("/proc/self/mountinfo", encoding="utf-8") as f:
            mounts = [line.split()[4] for line in f if " - cgroup2 " in line]
    except OSError:
        return None
    if path is None or not mounts:
        return None
    return os.path.join(mounts[0], path.lstrip("/"), "memory.pressure")


def _arm(trigger: str) -> tuple[int, str] | tuple[None, str]:
    """Open and arm a PSI trigger: ``(fd, path)`` or ``(None, why not)``."""
    reasons = []
    candidates = [_cgroup_pressure_file(), "/proc/pressure/memory"]
    for path in candidates:
        if path is None:
            reasons.append("no cgroup v2 hierarchy")
            continue
        try:
            fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            reasons.append(f"{path}: {exc.strerror}")
            continue
        try:
            os.write(fd, trigger.encode("ascii") + b"\0")
        except OSError as exc:
            os.close(fd)
            reasons.append(f"{path}: {exc.strerror}")
            continue
        return fd, path
    return None, "; ".join(reasons)


class _Manager:
    """The purge thread and its settings; one per process."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.enabled = True
        self.budget: int | None = None
        self.trigger = DEFAULT_PSI_TRIGGER
        self.thread: threading.Thread | None = None
        self.psi_fd: int | None = None
        self.psi_path: str | None = None
        self.wake_r = self.wake_w = -1
        self.warned = False
        self.pending_budget = False
        self.rearm = False

    # Runs in the unpinning thread: only bookkeeping and a one-byte write.
    def on_unpin(self, total: int) -> None:
        if not self.enabled:
            return
        if self.thread is None:
            self.start()
        budget = self.budget
        if budget is not None and total > budget:
            self.pending_budget = True
            self.wake()

    def wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self.wake_w, b"!")

    def start(self) -> None:
        with self.lock:
            if self.thread is not None:
                return
            self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
            self._arm_locked()
            self.thread = threading.Thread(target=self._run, name="ashmem-purge", daemon=True)
            self.thread.start()

    def _arm_locked(self) -> None:
        if self.psi_fd is not None:
            os.close(self.psi_fd)
            self.psi_fd = self.psi_path = None
        fd, where = _arm(self.trigger)
        if fd is None:
            if not self.warned:
                self.warned = True
                _log.warning(
                    "no memory-pressure trigger could be armed (%s); unpinned memory is "
                    "purged only when the budget is exceeded or purge_all_caches() is called",
                    where,
                )
            return
        self.psi_fd, self.psi_path = fd, where
        _log.debug("memory-pressure trigger %r armed on %s", self.trigger, where)

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self.wake_r, select.POLLIN)
        watched: int | None = None
        while True:
            with self.lock:
                if self.rearm:
                    self.rearm = False
                    if watched is not None:
                        poller.unregister(watched)
                        watched = None
                    self._arm_locked()
                if self.psi_fd is not None and watched is None:
                    watched = self.psi_fd
                    poller.register(watched, select.POLLPRI)
            events = poller.poll()
            for fd, event in events:
                if fd == self.wake_r:
                    with contextlib.suppress(BlockingIOError):
                        os.read(self.wake_r, 4096)
                elif event & select.POLLERR:  # the cgroup went away: stop watching it
                    poller.unregister(fd)
                    watched = None
                    with self.lock:
                        if self.psi_fd == fd:
                            os.close(fd)
                            self.psi_fd = self.psi_path = None
                elif event & select.POLLPRI and self.enabled:
                    self._purge("pressure", None)
            if self.pending_budget:
                self.pending_budget = False
                budget = self.budget
                if budget is not None and self.enabled:
                    excess = _pins.unpinned_bytes() - budget
                    if excess > 0:
                        self._purge("budget", excess)

    @staticmethod
    def _purge(trigger: str, limit: int | None) -> None:
        try:
            _pins.purge(trigger, limit)
        except Exception:  # the thread must outlive one bad purge; say what happened
            _log.exception("purge (%s) failed", trigger)

    def after_fork_in_child(self) -> None:
        self.lock = threading.Lock()
        for fd in (self.psi_fd, self.wake_r, self.wake_w):
            if fd is not None and fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.thread = None
        self.psi_fd = self.psi_path = None
        self.wake_r = self.wake_w = -1


_manager = _Manager()
os.register_at_fork(after_in_child=_manager.after_fork_in_child)
_pins.unpin_listeners.append(_manager.on_unpin)


def configure(
    budget_bytes: int | None = None,
    psi_trigger: str = DEFAULT_PSI_TRIGGER,
    enabled: bool = True,
) -> None:
    """Set this process's purge policy.

    ``budget_bytes``: purge the least recently unpinned ranges whenever this process has more
    unpinned bytes than this (the sizes of the ranges it unpinned and has not seen purged or
    pinned again, whether their pages were touched or not; None: no budget).
    ``psi_trigger``: the PSI trigger, ``"some|full STALL_US WINDOW_US"`` (unprivileged
    processes need a window that is a multiple of 2 s).
    ``enabled=False`` stops automatic purging (``purge_all_caches()`` still works).

    >>> import ashmem.purge
    >>> ashmem.purge.configure(budget_bytes=64 << 20)
    >>> ashmem.purge.stats()["budget_bytes"]
    67108864
    >>> ashmem.purge.configure()
    """
    if budget_bytes is not None and (
        not isinstance(budget_bytes, int) or isinstance(budget_bytes, bool) or budget_bytes < 0
    ):
        raise ValueError(f"budget_bytes must be None or an int >= 0, not {budget_bytes!r}")
    if not isinstance(psi_trigger, str) or not _TRIGGER_RE.fullmatch(psi_trigger):
        raise ValueError(
            f"psi_trigger must look like 'some 150000 2000000' (some|full, stall and window "
            f"in microseconds), not {psi_trigger!r}"
        )
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled must be a bool, not {type(enabled).__name__}")
    manager = _manager
    with manager.lock:
        manager.budget = budget_bytes
        manager.enabled = enabled
        if psi_trigger != manager.trigger:
            manager.trigger = psi_trigger
            manager.rearm = True
    if manager.thread is not None:
        manager.pending_budget = True
        manager.wake()


def stats() -> dict[str, Any]:
    """This process's purge counters and settings: ``unpinned_bytes`` (unpinned, not purged
    yet), ``purged_bytes`` and ``returned_bytes`` (memory the kernel freed) since start,
    ``purges`` (a dict: trigger -> number of purge passes), ``pressure_source`` (the PSI file
    armed, or None), ``budget_bytes``, ``enabled``."""
    out = _pins.stats()
    with _manager.lock:  # not half-way through a re-arm
        out["pressure_source"] = _manager.psi_path
        out["budget_bytes"] = _manager.budget
        out["enabled"] = _manager.enabled
    return out


# -- PurgeableCache --------------------------------------------------------------------------


class _Slot:
    __slots__ = ("array", "mapping", "nbytes", "pins", "shm")

    def __init__(
        self, shm: SharedMemory, mapping: Mapping, nbytes: int, array: tuple[Any, Any] | None
    ) -> None:
        self.shm = shm
        self.mapping = mapping
        self.nbytes = nbytes
        self.array = array  # (dtype, shape) for numpy values
        self.pins = 0


def _as_bytes(value: Any) -> tuple[memoryview, tuple[Any, Any] | None]:
    array = None
    if type(value).__module__ == "numpy" and hasattr(value, "dtype"):
        array = (value.dtype, value.shape)
        value = value.tobytes() if not value.flags.c_contiguous else value
    try:
        view = memoryview(value)
    except TypeError:
        raise TypeError(
            f"regenerate must return a bytes-like object or a numpy array, not "
            f"{type(value).__name__}"
        ) from None
    return view.cast("B") if view.format != "B" or view.ndim != 1 else view, array


class PurgeableCache:
    """Keys to regenerable values, each kept in its own purgeable region: unpinned while not
    in use, so the purge manager can give the memory back under pressure.

    ``with cache.get(key, regenerate) as value:`` pins the entry for the block;
    ``regenerate(key)`` is called on a miss and when the entry was purged. ``value`` is a
    read-only ``memoryview``, or a read-only numpy array when ``regenerate`` returned one.
    ``max_pinned_bytes`` bounds the bytes pinned at once: a ``get`` that would pin more
    raises ``MemoryError`` instead of waiting. Thread-safe (``regenerate`` runs under the
    cache's lock). Each entry holds two descriptors (its region and this process's pin
    descriptor of it) until ``close()``, which frees every entry.

    >>> from ashmem.purge import PurgeableCache
    >>> with PurgeableCache() as cache:
    ...     with cache.get("a", lambda key: key.encode() * 3) as value:
    ...         bytes(value)
    ...     with cache.get("a", lambda key: b"unused") as value:
    ...         bytes(value)
    ...     cache.stats()["hits"], cache.stats()["misses"]
    b'aaa'
    b'aaa'
    (1, 1)
    """

    def __init__(self, max_pinned_bytes: int | None = None) -> None:
        if max_pinned_bytes is not None and (
            not isinstance(max_pinned_bytes, int) or max_pinned_bytes < 0
        ):
            raise ValueError(
                f"max_pinned_bytes must be None or an int >= 0, not {max_pinned_bytes!r}"
            )
        self._max = max_pinned_bytes
        self._slots: OrderedDict[Hashable, _Slot] = OrderedDict()
        self._lock = threading.RLock()
        self._pinned = 0
        self._counts = {"hits": 0, "misses": 0, "purged": 0, "regenerated": 0}

    def __enter__(self) -> PurgeableCache:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __len__(self) -> int:
        return len(self._slots)

    def _reserve(self, nbytes: int, key: Hashable) -> None:
        if self._max is not None and self._pinned + nbytes > self._max:
            raise MemoryError(
                f"PurgeableCache: pinning entry {key!r} ({nbytes} bytes) would pin "
                f"{self._pinned + nbytes} bytes, over max_pinned_bytes={self._max}; leave "
                "other entries' with-blocks first or raise the limit"
            )
        self._pinned += nbytes

    def _store(self, key: Hashable, value: Any) -> _Slot:
        view, array = _as_bytes(value)
        nbytes = len(view)
        self._reserve(nbytes, key)
        try:
            shm = SharedMemory.create(f"cache:{key!r}"[:200], max(nbytes, 1), populate=False)
            try:
                mapping = shm.map_read_write(populate=False)
            except BaseException:
                shm.close()
                raise
            mapping[:nbytes] = view
        except BaseException:
            self._pinned -= nbytes
            raise
        finally:
            view.release()
        slot = _Slot(shm, mapping, nbytes, array)
        self._slots[key] = slot
        return slot

    def _refill(self, slot: _Slot, key: Hashable, value: Any) -> None:
        view, array = _as_bytes(value)
        with view:
            if len(view) != slot.nbytes:
                raise ValueError(
                    f"regenerate({key!r}) returned {len(view)} bytes, not the {slot.nbytes} it "
                    "returned before"
                )
            slot.mapping[: slot.nbytes] = view
        slot.array = array

    @contextlib.contextmanager
    def get(self, key: Hashable, regenerate: Callable[[Hashable], Any]) -> Iterator[Any]:
        """Pin the entry for ``key`` for the ``with`` block and give its value; call
        ``regenerate(key)`` first if it is missing or was purged."""
        with self._lock:
            slot = self._slots.get(key)
            if slot is None:
                self._counts["misses"] += 1
                value = regenerate(key)
                self._counts["regenerated"] += 1
                slot = self._store(key, value)
            else:
                if slot.pins == 0:
                    self._reserve(slot.nbytes, key)
                    try:
                        was_purged = slot.shm.pin()
                    except BaseException:
                        self._pinned -= slot.nbytes
                        raise
                else:
                    was_purged = False
                if was_purged:
                    self._counts["purged"] += 1
                    try:
                        self._refill(slot, key, regenerate(key))
                    except BaseException:
                        self._pinned -= slot.nbytes
                        slot.shm.unpin()
                        raise
                    self._counts["regenerated"] += 1
                else:
                    self._counts["hits"] += 1
                self._slots.move_to_end(key)
            slot.pins += 1
        view = memoryview(slot.mapping)[: slot.nbytes].toreadonly()
        try:
            if slot.array is not None:
                import numpy

                dtype, shape = slot.array
                array = numpy.frombuffer(view, dtype=dtype).reshape(shape)
                yield array
            else:
                yield view
        finally:
            # The value ends with the block: the pages may be purged once unpinned. A view
            # or array still referring to it (kept past the block) keeps the buffer alive.
            with contextlib.suppress(BufferError):
                view.release()
            with self._lock:
                slot.pins -= 1
                if slot.pins == 0 and not slot.shm.closed:
                    self._pinned -= slot.nbytes
                    slot.shm.unpin()

    def stats(self) -> dict[str, int]:
        """``hits``, ``misses`` (first use of a key), ``purged`` (found purged at ``get``),
        ``regenerated`` (calls of ``regenerate``), ``entries``, ``pinned_bytes``."""
        with self._lock:
            return {**self._counts, "entries": len(self._slots), "pinned_bytes": self._pinned}

    def close(self) -> None:
        """Free every entry (their regions and memory). Idempotent."""
        with self._lock:
            slots, self._slots = list(self._slots.values()), OrderedDict()
            for slot in slots:
                with contextlib.suppress(Exception):
                    slot.mapping.close()
                slot.shm.close()
            self._pinned = 0

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()
