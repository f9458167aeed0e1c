"""Purgeable memory in one process: the kernel facts it rests on, range rules, the pin truth
table, memory really returned, write-protected regions, MemoryFile, the purge manager and
PurgeableCache. Cross-process behaviour is in test_purge_processes.py."""

from __future__ import annotations

import contextlib
import errno
import logging
import mmap
import os
import socket
import time
from collections.abc import Callable, Iterator

import pytest

import ashmem
import ashmem.purge
from ashmem import _pins, _sys, region
from ashmem.region import IS_PINNED, IS_UNPINNED, NOT_PURGED, WAS_PURGED

PAGE = mmap.PAGESIZE
MiB = 1 << 20


# A PSI trigger that no real pressure fires (stalled for 1.9 s of every 2 s): the thrashing
# cgroup test and whatever else runs on the machine must not purge behind a test's back. The
# tests of the pressure path use a fake PSI file, and the cgroup test its own process.
QUIET = "full 1900000 2000000"


@pytest.fixture(autouse=True)
def _default_policy() -> Iterator[None]:
    ashmem.purge.configure(psi_trigger=QUIET)
    yield
    ashmem.purge.configure(psi_trigger=QUIET)


def _wait_for(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    """Wait for the manager thread to do something; fails (never asserts a duration)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.005)


class _Fd:
    def __init__(self, fd: int) -> None:
        self.fd = fd

    def close(self) -> None:
        os.close(self.fd)


def _rss_shmem() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("RssShmem:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no RssShmem in /proc/self/status")


@contextlib.contextmanager
def _region(name: str, size: int) -> Iterator[int]:
    fd = region.create_region(name, size)
    try:
        yield fd
    finally:
        region.release_pins(fd)
        os.close(fd)


# -- the kernel facts the design relies on (see ashmem._pins) --------------------------------


def test_kernel_facts_seek_data_cannot_tell_reserved_from_purged() -> None:
    """Why the purge mark is an xattr: fallocated pages read as holes, like punched ones,
    until written or populated."""
    with _region("facts", 4 * PAGE) as fd:
        os.posix_fallocate(fd, 0, 4 * PAGE)
        assert os.lseek(fd, 0, os.SEEK_HOLE) == 0  # reserved, never written: a hole
        os.pwrite(fd, b"x", 0)
        with mmap.mmap(fd, 4 * PAGE) as m:
            m.madvise(_sys.MADV_POPULATE_WRITE, PAGE, PAGE)
            assert os.lseek(fd, 0, os.SEEK_HOLE) == 2 * PAGE  # written + populated: data
            _sys.punch_hole(fd, 0, PAGE)
            assert os.lseek(fd, 0, os.SEEK_HOLE) == 0  # punched: a hole again
            assert m[0] == 0
        os.setxattr(fd, "user.ashmem.test", b"1")  # tmpfs user xattrs (Linux >= 6.6)


def test_kernel_facts_ofd_locks() -> None:
    """Two descriptions of one process conflict; a description upgrades its own lock. The
    creator's pin of a new region is a read lock on its first description."""
    with _region("creator", PAGE) as created:
        probe = os.open(f"/proc/self/fd/{created}", os.O_RDONLY | os.O_CLOEXEC)
        with contextlib.closing(_Fd(probe)):
            assert _sys.ofd_conflict(probe, 0, 0) == (0, PAGE)
    fd = os.memfd_create("ofd", os.MFD_CLOEXEC)
    os.ftruncate(fd, 2 * PAGE)
    with contextlib.closing(_Fd(fd)):
        a = os.open(f"/proc/self/fd/{fd}", os.O_RDWR | os.O_CLOEXEC)
        b = os.open(f"/proc/self/fd/{fd}", os.O_RDWR | os.O_CLOEXEC)
        try:
            assert _sys.ofd_lock(a, _sys.F_RDLCK, 0, PAGE, wait=False)
            assert not _sys.ofd_lock(b, _sys.F_WRLCK, 0, PAGE, wait=False)
            assert _sys.ofd_lock(b, _sys.F_WRLCK, PAGE, PAGE, wait=False)
            assert _sys.ofd_lock(a, _sys.F_WRLCK, 0, PAGE, wait=False)  # upgrade: own lock
            assert _sys.ofd_conflict(b, 0, 0) == (0, PAGE)
        finally:
            os.close(a)
            os.close(b)


def test_kernel_facts_seals_block_punching() -> None:
    with _region("sealed", PAGE) as fd:
        region.set_prot_region(fd, region.PROT_READ)
        with pytest.raises(OSError) as info:
            _sys.punch_hole(fd, 0, PAGE)
        assert info.value.errno == errno.EPERM


# -- range rules -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("offset", "length"),
    [(1, 0), (0, 1), (PAGE, PAGE + 1), (-PAGE, 0), (0, -PAGE), (2 * PAGE, 0), (PAGE, 2 * PAGE)],
)
def test_unaligned_or_outside_ranges_raise_value_error(offset: int, length: int) -> None:
    with _region("ranges", 2 * PAGE - 100) as fd:  # page-rounded size: 2 pages
        for call in (region.pin_region, region.unpin_region, region.get_pin_status):
            with pytest.raises(ValueError, match=r"page|outside"):
                call(fd, offset, length)
        assert region.pin_region(fd, PAGE, PAGE) == NOT_PURGED  # the last, partial page


def test_closed_and_foreign_fds() -> None:
    fd = region.create_region("closed", PAGE)
    os.close(fd)
    with pytest.raises(OSError) as info:
        region.pin_region(fd)
    assert info.value.errno == errno.EBADF
    r, w = os.pipe()
    try:
        with pytest.raises(ValueError, match="not an ashmem region"):
            region.unpin_region(r)
    finally:
        os.close(r)
        os.close(w)
    with pytest.raises(TypeError):
        region.pin_region(0, "0")  # type: ignore[arg-type]


# -- truth table, one process ----------------------------------------------------------------


def test_truth_table_one_process() -> None:
    with _region("truth", 3 * PAGE) as fd:
        # A new region is pinned by its creator.
        assert region.get_pin_status(fd) == IS_PINNED
        assert region.pin_region(fd) == NOT_PURGED
        # Pins are not counted: one unpin undoes any number of pins.
        assert region.pin_region(fd) == NOT_PURGED
        region.unpin_region(fd, PAGE, PAGE)
        assert region.get_pin_status(fd) == IS_UNPINNED
        assert region.get_pin_status(fd, 0, PAGE) == IS_PINNED
        assert region.get_pin_status(fd, PAGE, PAGE) == IS_UNPINNED
        assert region.get_pin_status(fd, 2 * PAGE, PAGE) == IS_PINNED
        region.unpin_region(fd)
        assert region.get_pin_status(fd, 0, PAGE) == IS_UNPINNED
        # Nothing purged yet: pinning again reports NOT_PURGED and pins everything.
        assert region.pin_region(fd) == NOT_PURGED
        assert region.get_pin_status(fd) == IS_PINNED


def test_purge_purges_only_what_nobody_pins_and_pin_reports_it() -> None:
    with _region("partial", 4 * PAGE) as fd:
        os.pwrite(fd, b"abcd" * PAGE, 0)
        region.unpin_region(fd)
        region.pin_region(fd, PAGE, PAGE)  # keep page 1
        assert region.purge_all_caches() == 3 * PAGE
        assert os.pread(fd, PAGE, 0) == bytes(PAGE)
        assert os.pread(fd, PAGE, PAGE) == (b"abcd" * PAGE)[PAGE : 2 * PAGE]
        assert region.pin_region(fd, PAGE, PAGE) == NOT_PURGED
        assert region.pin_region(fd, 0, 2 * PAGE) == WAS_PURGED  # page 0 was purged
        assert region.pin_region(fd, 0, 2 * PAGE) == NOT_PURGED  # and that was reported
        assert region.pin_region(fd) == WAS_PURGED  # pages 2 and 3
        assert region.purge_all_caches() == 0  # all pinned now


def test_purge_returns_memory() -> None:
    """Allocated blocks and RssShmem drop by what was purged; the pages read as zeros and a
    fault through the mapping allocates a fresh zero page."""
    size = 16 * MiB
    with ashmem.SharedMemory.create("returned", size) as shm, shm.map_read_write() as m:
        m[:] = b"\x5a" * size
        blocks_before = os.fstat(shm.fileno()).st_blocks * 512
        rss_before = _rss_shmem()
        assert blocks_before >= size
        shm.unpin()
        assert region.purge_all_caches() == size
        assert blocks_before - os.fstat(shm.fileno()).st_blocks * 512 >= size
        assert rss_before - _rss_shmem() >= size - MiB  # other shmem may come and go
        assert shm.pin() is True
        assert m[0] == 0 and m[size - 1] == 0 and m.find(b"\x5a") == -1
        assert shm.pin() is False
        assert ashmem.purge.stats()["returned_bytes"] >= size


def test_shared_memory_pinned_block() -> None:
    with ashmem.SharedMemory.create("block", 2 * PAGE) as shm:
        with shm.pinned() as was_purged:
            assert was_purged is False
            assert shm.is_pinned()
            assert region.purge_all_caches() == 0
        assert not shm.is_pinned()
        assert region.purge_all_caches() == 2 * PAGE
        with shm.pinned(0, PAGE) as was_purged:
            assert was_purged is True
        with shm.pinned(PAGE, PAGE) as was_purged:
            assert was_purged is True


def test_close_releases_this_process_pins() -> None:
    shm = ashmem.SharedMemory.create("closing", PAGE)
    shm.pin()
    key = (os.fstat(shm.fileno()).st_dev, os.fstat(shm.fileno()).st_ino)
    assert key in _pins._entries
    shm.unpin()
    shm.close()
    assert key not in _pins._entries  # pin description closed: it keeps nothing alive
    assert _pins.unpinned_bytes() == 0


def test_pins_and_purges_leave_no_descriptor_behind() -> None:
    with ashmem.SharedMemory.create("warm-up", PAGE) as shm:
        shm.unpin()  # the manager's thread, wake pipe and PSI file exist from here on
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(3):
        with ashmem.SharedMemory.create("no-leak", 2 * PAGE) as shm:
            shm.pin()
            shm.unpin(0, PAGE)
            assert shm.is_pinned(PAGE, PAGE)
            region.purge_all_caches()
            assert shm.pin() is True
    with ashmem.MemoryFile("no-leak-mf", PAGE) as f:
        f.allow_purging(True)
        f.write_bytes(b"x", 0, 0, 1)
    assert len(os.listdir("/proc/self/fd")) == before


# -- write-protected regions -----------------------------------------------------------------


def test_unpin_of_a_write_protected_region_raises_and_stays_pinned() -> None:
    with ashmem.SharedMemory.create("ro", PAGE) as shm:
        shm.set_protect(ashmem.PROT_READ)
        with pytest.raises(ashmem.ProtectionError, match="can never be purged"):
            shm.unpin()
        assert shm.is_pinned()
        assert shm.pin() is False


def test_protect_after_unpin_leaves_the_data_alone() -> None:
    with ashmem.SharedMemory.create("late-ro", PAGE) as shm:
        os.pwrite(shm.fileno(), b"keep", 0)
        shm.unpin()
        shm.set_protect(ashmem.PROT_READ)
        assert region.purge_all_caches() == 0
        assert os.pread(shm.fileno(), 4, 0) == b"keep"
        assert shm.pin() is False
        assert _pins.unpinned_bytes() == 0  # dropped from the candidates


# -- MemoryFile -------------------------------------------------------------------------------


def test_memory_file_raises_purged_error_and_stays_pinned() -> None:
    with ashmem.MemoryFile("mf", 2 * PAGE) as f:
        assert f.is_purging_allowed() is False
        f.write_bytes(b"hello", 0, 0, 5)
        assert f.allow_purging(True) is False
        assert f.allow_purging(True) is True
        out = bytearray(5)
        assert f.read_bytes(out, 0, 0, 5) == 5 and out == b"hello"
        assert not f.shared_memory.is_pinned()  # each access unpins after
        assert region.purge_all_caches() == 2 * PAGE
        with pytest.raises(ashmem.PurgedError, match="purged") as info:
            f.read_bytes(out, 0, 0, 5)
        assert info.value.region == "mf"
        assert isinstance(info.value, ashmem.Error)
        assert f.shared_memory.is_pinned()  # left pinned, as Android's MemoryFile
        f.write_bytes(b"again", 0, 0, 5)
        assert f.read_bytes(out, 0, 0, 5) == 5 and out == b"again"
        assert region.purge_all_caches() == 2 * PAGE
        with f.open("rb") as stream, pytest.raises(ashmem.PurgedError):
            stream.read(5)
        assert f.allow_purging(False) is True
        assert f.shared_memory.is_pinned()


# -- the purge manager ------------------------------------------------------------------------


def test_manager_purges_on_budget_overflow_oldest_first(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="ashmem.purge")
    before = ashmem.purge.stats()["purges"].get("budget", 0)
    ashmem.purge.configure(budget_bytes=2 * PAGE, psi_trigger=QUIET)
    shms = [ashmem.SharedMemory.create(f"lru-{i}", PAGE) for i in range(4)]
    try:
        for i, shm in enumerate(shms):
            os.pwrite(shm.fileno(), bytes([i + 1]) * PAGE, 0)
        for shm in shms:
            shm.unpin()
        _wait_for(lambda: _pins.unpinned_bytes() <= 2 * PAGE, "the budget purge")
        assert ashmem.purge.stats()["purges"].get("budget", 0) > before
        assert [shm.pin() for shm in shms] == [True, True, False, False]
        assert os.pread(shms[2].fileno(), 1, 0) == b"\x03"
        assert any("trigger: budget" in r.getMessage() for r in caplog.records)
    finally:
        for shm in shms:
            shm.close()


def test_manager_disabled_does_not_purge() -> None:
    ashmem.purge.configure(budget_bytes=0, enabled=False, psi_trigger=QUIET)
    with ashmem.SharedMemory.create("off", PAGE) as shm:
        shm.unpin()
        assert _pins.unpinned_bytes() == PAGE
        # enabling wakes the manager: now it purges
        ashmem.purge.configure(budget_bytes=0, psi_trigger=QUIET)
        _wait_for(lambda: _pins.unpinned_bytes() == 0, "the purge after enabling")
        assert shm.pin() is True


def test_manager_purges_on_a_pressure_event(monkeypatch: pytest.MonkeyPatch) -> None:
    """The pressure path end to end, with the PSI file replaced by a socket whose
    out-of-band byte raises POLLPRI, as a PSI trigger does (real pressure: the cgroup test in
    test_purge_processes.py)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with ours, theirs:
        fake = os.dup(theirs.fileno())  # the manager owns and closes this one
        monkeypatch.setattr(ashmem.purge, "_arm", lambda trigger: (fake, "fake-psi"))
        with ashmem.SharedMemory.create("pressure", 2 * PAGE) as shm:
            os.pwrite(shm.fileno(), b"x" * 2 * PAGE, 0)
            shm.unpin()  # starts the manager if nothing did yet
            ashmem.purge.configure(psi_trigger="some 100000 2000000")  # re-arm: the fake
            _wait_for(lambda: ashmem.purge.stats()["pressure_source"] == "fake-psi", "re-arm")
            before = ashmem.purge.stats()["purges"].get("pressure", 0)
            assert _pins.unpinned_bytes() == 2 * PAGE  # nothing purged before the event
            ours.send(b"!", socket.MSG_OOB)
            _wait_for(
                lambda: ashmem.purge.stats()["purges"].get("pressure", 0) > before, "the purge"
            )
            theirs.recv(1, socket.MSG_OOB)  # one event, as PSI gives one per window
            assert shm.pin() is True
            assert os.pread(shm.fileno(), 1, 0) == b"\0"
    monkeypatch.undo()
    ashmem.purge.configure(psi_trigger=QUIET)  # back to a real PSI file for the tests after
    _wait_for(lambda: ashmem.purge.stats()["pressure_source"] != "fake-psi", "re-arm back")


def test_configure_checks_its_arguments() -> None:
    with pytest.raises(ValueError, match="budget_bytes"):
        ashmem.purge.configure(budget_bytes=-1)
    with pytest.raises(ValueError, match="psi_trigger"):
        ashmem.purge.configure(psi_trigger="some 150000")
    with pytest.raises(TypeError):
        ashmem.purge.configure(enabled=1)  # type: ignore[arg-type]


def test_manager_arms_a_pressure_trigger_where_the_machine_allows() -> None:
    with ashmem.SharedMemory.create("psi", PAGE) as shm:
        shm.unpin()  # starts the manager
    source = ashmem.purge.stats()["pressure_source"]
    armable = []
    for path in ("/proc/pressure/memory", ashmem.purge._cgroup_pressure_file()):
        if path is None:
            continue
        try:
            fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            os.write(fd, ashmem.purge.DEFAULT_PSI_TRIGGER.encode() + b"\0")
            armable.append(path)
        except OSError:
            pass
        finally:
            os.close(fd)
    if not armable:
        assert source is None
    else:
        assert source in armable


# -- PurgeableCache ---------------------------------------------------------------------------


def test_purgeable_cache_hits_misses_and_purges() -> None:
    calls: list[str] = []

    def regenerate(key: object) -> bytes:
        calls.append(str(key))
        return str(key).encode() * 1000

    with ashmem.purge.PurgeableCache() as cache:
        with cache.get("a", regenerate) as value:
            assert bytes(value) == b"a" * 1000
            assert value.readonly
            with pytest.raises(TypeError):
                value[0] = 0
        with pytest.raises(ValueError):
            value[0]  # released with the block
        with cache.get("a", regenerate) as value:
            assert bytes(value[:3]) == b"aaa"
        assert calls == ["a"]
        assert region.purge_all_caches() > 0
        with cache.get("a", regenerate) as value:
            assert bytes(value) == b"a" * 1000
        assert calls == ["a", "a"]
        assert cache.stats() == {
            "hits": 1,
            "misses": 1,
            "purged": 1,
            "regenerated": 2,
            "entries": 1,
            "pinned_bytes": 0,
        }


def test_purgeable_cache_pins_while_in_use_and_bounds_pinned_bytes() -> None:
    with ashmem.purge.PurgeableCache(max_pinned_bytes=2000) as cache:
        with cache.get("x", lambda k: b"x" * 1500):
            assert region.purge_all_caches() == 0  # in use: pinned
            with (
                pytest.raises(MemoryError, match="max_pinned_bytes"),
                cache.get("y", lambda k: b"y" * 1500),
            ):
                pass
            with cache.get("x", lambda k: b"unused") as again:  # nested: same pin
                assert bytes(again[:1]) == b"x"
        with cache.get("y", lambda k: b"y" * 1500) as value:
            assert bytes(value[:1]) == b"y"


def test_purgeable_cache_numpy_values() -> None:
    numpy = pytest.importorskip("numpy")
    with ashmem.purge.PurgeableCache() as cache:
        with cache.get("m", lambda k: numpy.arange(12, dtype=numpy.int32).reshape(3, 4)) as a:
            assert a.shape == (3, 4) and a.dtype == numpy.int32 and a[2, 3] == 11
            assert not a.flags.writeable
        region.purge_all_caches()
        with cache.get("m", lambda k: numpy.ones((3, 4), dtype=numpy.int32)) as a:
            assert a.sum() == 12
        assert cache.stats()["purged"] == 1


# -- hostile holders, ashmem ls -------------------------------------------------------------------


def test_a_holder_that_keeps_a_write_lock_cannot_hang_a_pin(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_pins, "LOCK_TIMEOUT", 0.2)
    with _region("hostile", 2 * PAGE) as fd:
        region.unpin_region(fd)
        hostile = os.open(f"/proc/self/fd/{fd}", os.O_RDWR | os.O_CLOEXEC)
        with contextlib.closing(_Fd(hostile)):
            assert _sys.ofd_lock(hostile, _sys.F_WRLCK, 0, PAGE, wait=False)
            with pytest.raises(TimeoutError, match="write lock"):
                region.pin_region(fd, 0, PAGE)
            assert region.pin_region(fd, PAGE, PAGE) == NOT_PURGED  # the rest is free
            assert region.purge_all_caches() == 0  # page 0 is locked, page 1 pinned
            # Garbage in the mark attribute reads as "all purged": the safe direction.
            os.setxattr(fd, "user.ashmem.purged", b"garbage")
            assert region.pin_region(fd, PAGE, PAGE) == WAS_PURGED


def test_a_lock_on_odd_bytes_keeps_its_whole_page() -> None:
    with _region("odd", 3 * PAGE) as fd:
        os.pwrite(fd, b"k" * 3 * PAGE, 0)
        region.unpin_region(fd)
        other = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
        with contextlib.closing(_Fd(other)):
            assert _sys.ofd_lock(other, _sys.F_RDLCK, PAGE + 100, 100, wait=False)
            assert region.purge_all_caches() == 2 * PAGE  # pages 0 and 2
            assert os.pread(fd, PAGE, PAGE) == b"k" * PAGE
        assert region.pin_region(fd, PAGE, PAGE) == NOT_PURGED
        assert region.pin_region(fd, 0, PAGE) == WAS_PURGED


def test_closing_one_of_two_fds_keeps_the_pins() -> None:
    shm = ashmem.SharedMemory.create("two-fds", PAGE)
    other = shm.dup()
    with other:
        shm.pin()
        shm.close()
        assert other.is_pinned()  # this process still holds the region, and its pin
        assert region.purge_all_caches() == 0
        other.unpin()
        assert region.purge_all_caches() == PAGE


def test_ls_shows_pinned_unpinned_and_purged_bytes() -> None:
    from ashmem import _ls

    def row(fd: int) -> _ls.RegionInfo:
        [found] = [r for r in _ls.list_regions() if r.pid == os.getpid() and r.fd == fd]
        return found

    with _region("ls-purge", 4 * PAGE) as fd:
        assert (row(fd).pinned_bytes, row(fd).unpinned_bytes, row(fd).purged_bytes) == (
            4 * PAGE,
            0,
            0,
        )
        region.unpin_region(fd, 0, 2 * PAGE)
        assert region.purge_all_caches() == 2 * PAGE
        region.unpin_region(fd, 2 * PAGE, PAGE)
        info = row(fd)
        assert (info.pinned_bytes, info.unpinned_bytes, info.purged_bytes) == (
            PAGE,
            3 * PAGE,
            2 * PAGE,
        )
        assert "PURGED" in _ls.format_table([info]).splitlines()[0]
