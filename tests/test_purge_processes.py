"""Purgeable memory across real processes: the pin truth table between two processes under
every start method, pins surviving another process's purge, SIGKILL releasing pins, RssShmem
of a mapping process dropping, 1,000 rounds of pin racing purge, and purging under real
memory pressure: in a memory-limited cgroup v2 group where this machine lets us create one,
and in a cgroup v1 memory group (page cache thrashing) where that is what it has."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import uuid
from multiprocessing.connection import Connection
from typing import Any

import pytest

import ashmem
from ashmem import region
from ashmem.region import IS_PINNED, IS_UNPINNED

from .conftest import CHILD_TIMEOUT, Children

PAGE = os.sysconf("SC_PAGE_SIZE")
MiB = 1 << 20


def _rss_shmem() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("RssShmem:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no RssShmem")


def _serve(shm: ashmem.SharedMemory, conn: Connection) -> None:
    """A child that runs pin-API commands sent by the test and answers each one."""
    mapping = None
    while True:
        command, *args = conn.recv()
        if command == "exit":
            return
        if command == "pin":
            answer: Any = shm.pin(*args)
        elif command == "unpin":
            answer = shm.unpin(*args)
        elif command == "status":
            answer = region.get_pin_status(shm.fileno(), *args)
        elif command == "read":
            answer = os.pread(shm.fileno(), args[1], args[0])
        elif command == "map_fill":
            mapping = shm.map_read_write(populate=False)
            mapping[:] = b"\x77" * len(mapping)
            answer = _rss_shmem()
        elif command == "rss":
            answer = _rss_shmem()
        else:
            answer = f"unknown command {command}"
        conn.send(answer)


class _Peer:
    def __init__(self, children: Children, ctx: Any, shm: ashmem.SharedMemory) -> None:
        self.conn, theirs = ctx.Pipe()
        self.proc = children.start(ctx, _serve, shm, theirs)
        theirs.close()

    def __call__(self, *command: Any) -> Any:
        self.conn.send(command)
        if not self.conn.poll(CHILD_TIMEOUT):
            pytest.fail(f"peer did not answer {command}")
        return self.conn.recv()

    def stop(self) -> None:
        self.conn.send(("exit",))
        Children.join(self.proc)
        self.conn.close()


def test_truth_table_across_two_processes(
    mp_context: multiprocessing.context.BaseContext, children: Children
) -> None:
    with ashmem.SharedMemory.create("truth-2", 3 * PAGE) as shm:
        os.pwrite(shm.fileno(), b"\x11" * 3 * PAGE, 0)
        assert shm.pin() is False  # this process takes over the creator's pin
        peer = _Peer(children, mp_context, shm)
        # A pins everything, B nothing.
        assert peer("status") == IS_PINNED
        assert peer("pin", 0, PAGE) is False  # B pins page 0
        shm.unpin()  # A unpins all
        assert shm.is_pinned(0, PAGE) and peer("status", 0, PAGE) == IS_PINNED
        assert not shm.is_pinned() and peer("status", PAGE, 2 * PAGE) == IS_UNPINNED
        # B's pin survives A's purge; the rest is purged.
        assert region.purge_all_caches() == 2 * PAGE
        assert peer("read", 0, 4) == b"\x11" * 4
        assert peer("read", PAGE, 4) == bytes(4)
        assert peer("pin", 0, PAGE) is False
        assert peer("pin", PAGE, PAGE) is True  # B is told about the purge
        assert shm.pin(PAGE, PAGE) is False  # and, as in ashmem, told only once
        # Pins are per process: B's unpin does not undo A's.
        peer("unpin", 0, 0)
        assert shm.is_pinned(PAGE, PAGE)
        assert peer("status", 0, PAGE) == IS_UNPINNED
        shm.unpin(PAGE, PAGE)
        assert peer("status") == IS_UNPINNED
        peer.stop()


def test_sigkill_releases_pins_and_purge_empties_every_mapping(children: Children) -> None:
    ctx = multiprocessing.get_context("fork")
    size = 4 * MiB
    with ashmem.SharedMemory.create("killed", size) as shm:
        shm.unpin()
        peer = _Peer(children, ctx, shm)
        rss_full = peer("map_fill")
        assert peer("pin", 0, MiB) is False
        assert region.purge_all_caches() == size - MiB
        assert rss_full - peer("rss") >= size - MiB - 256 * 1024  # its RssShmem dropped
        assert peer("read", 0, 1) == b"\x77"
        os.kill(peer.proc.pid, signal.SIGKILL)
        peer.proc.join(CHILD_TIMEOUT)
        peer.conn.close()
        assert peer.proc.exitcode == -signal.SIGKILL
        assert not shm.is_pinned(0, MiB)  # the kernel dropped its lock with its files
        blocks = os.fstat(shm.fileno()).st_blocks * 512
        assert region.purge_all_caches() == MiB
        assert blocks - os.fstat(shm.fileno()).st_blocks * 512 >= MiB
        assert os.pread(shm.fileno(), 1, 0) == b"\0"


ROUNDS = 1000
FORCED_EVERY = 100


def _pinner(shm: ashmem.SharedMemory, conn: Connection) -> None:
    """Round after round: pin, check the invariant, write a new pattern, unpin. Every
    FORCED_EVERY rounds it asks the purger for a purge while unpinned, so both outcomes are
    seen whatever the scheduling."""
    fd = shm.fileno()
    expected = b"\x01" * (2 * PAGE)
    shm.pin()  # the purger may have been at it already: write only what is pinned
    os.pwrite(fd, expected, 0)
    shm.unpin()
    purged_seen = 0
    for n in range(1, ROUNDS + 1):
        if n % FORCED_EVERY == 0:
            conn.send("purge now")
            assert conn.recv() == "purged"
        was_purged = shm.pin()
        data = os.pread(fd, 2 * PAGE, 0)
        if was_purged:
            purged_seen += 1
            assert data == bytes(2 * PAGE), f"round {n}: WAS_PURGED but data survives"
        else:
            assert data == expected, f"round {n}: NOT_PURGED but the data is gone"
        expected = bytes([n % 251 + 1]) * (2 * PAGE)
        os.pwrite(fd, expected, 0)
        shm.unpin()
    conn.send(("done", purged_seen))


def test_pin_never_loses_a_race_with_purge(children: Children) -> None:
    ctx = multiprocessing.get_context("fork")
    with ashmem.SharedMemory.create("race", 2 * PAGE) as shm:
        shm.unpin()  # take the creator's pin over, then let go of it
        ours, theirs = ctx.Pipe()
        proc = children.start(ctx, _pinner, shm, theirs)
        theirs.close()
        fd = shm.fileno()
        purged = 0
        result = None
        while result is None:
            region.unpin_region(fd)  # this process holds no pin: only lists the range
            purged += region.purge_all_caches()
            if ours.poll():
                message = ours.recv()
                if message == "purge now":
                    region.unpin_region(fd)
                    assert region.purge_all_caches() == 2 * PAGE
                    ours.send("purged")
                else:
                    result = message
            elif not proc.is_alive():
                break
        Children.join(proc)
        ours.close()
        assert result is not None and result[0] == "done"
        assert result[1] >= ROUNDS // FORCED_EVERY
        assert purged >= ROUNDS // FORCED_EVERY * 2 * PAGE


# -- memory pressure in a memory-limited cgroup v2 group ----------------------------------------


def _cgroup_v2_group_dir() -> tuple[str | None, str]:
    """A directory where a child cgroup v2 group with the memory controller can be made, or
    (None, why not)."""
    try:
        with open("/proc/self/mountinfo") as f:
            mounts = [line.split()[4] for line in f if " - cgroup2 " in line]
        with open("/proc/self/cgroup") as f:
            path = next((line[3:].strip() for line in f if line.startswith("0::")), None)
    except OSError as exc:
        return None, f"cannot read cgroup information: {exc}"
    if not mounts or path is None:
        return None, "no cgroup v2 hierarchy is mounted"
    base = os.path.join(mounts[0], path.lstrip("/"))
    try:
        with open(os.path.join(base, "cgroup.controllers")) as f:
            controllers = f.read().split()
    except OSError as exc:
        return None, f"cannot read {base}/cgroup.controllers: {exc}"
    if "memory" not in controllers:
        return None, (
            f"the memory controller is not available in the cgroup v2 group {base} "
            f"(controllers: {' '.join(controllers) or 'none'}); on this machine it is bound "
            "to a cgroup v1 hierarchy"
        )
    try:
        with open(os.path.join(base, "cgroup.subtree_control"), "w") as f:
            f.write("+memory")
    except OSError as exc:
        return None, f"cannot enable the memory controller for children of {base}: {exc}"
    if not os.access(base, os.W_OK):
        return None, f"no permission to create a group under {base}"
    return base, ""


def test_purges_under_memory_pressure_in_a_limited_cgroup_v2_group(tmp_path: Any) -> None:
    base, why = _cgroup_v2_group_dir()
    if base is None:
        pytest.skip(f"no memory-limited cgroup v2 group can be created here: {why}")
    path = _thrash_file(tmp_path)
    group = os.path.join(base, f"ashmem-purge-{uuid.uuid4().hex[:8]}")
    os.mkdir(group)
    try:
        with open(os.path.join(group, "memory.max"), "w") as f:
            f.write(str(160 * MiB))
        stdout = _run_thrash_child(group, path)
        # The child moved itself into the group before starting its manager, so the trigger
        # sits on the group's own pressure file.
        assert f"source {group}/memory.pressure" in stdout
    finally:
        os.rmdir(group)


def _cgroup_v1_memory_dir() -> tuple[str | None, str]:
    """This process's cgroup v1 memory group, if we may create a child group in it."""
    try:
        with open("/proc/self/mountinfo") as f:
            mounts = [
                line.split()[4]
                for line in f
                if " - cgroup " in line and "memory" in line.split(" - ")[1].split()[-1].split(",")
            ]
        with open("/proc/self/cgroup") as f:
            path = next(
                (
                    line.split(":", 2)[2].strip()
                    for line in f
                    if "memory" in line.split(":", 2)[1].split(",")
                ),
                None,
            )
    except OSError as exc:
        return None, f"cannot read cgroup information: {exc}"
    if not mounts or path is None:
        return None, "no cgroup v1 memory hierarchy either"
    base = os.path.join(mounts[0], path.lstrip("/"))
    if not os.access(base, os.W_OK):
        return None, f"no permission to create a group under {base}"
    return base, ""


def _filesystem_type(path: str) -> str:
    best, kind = "", ""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            mount_point, fs_type = fields[4], line.split(" - ")[1].split()[0]
            if path.startswith(mount_point.rstrip("/") + "/") and len(mount_point) > len(best):
                best, kind = mount_point, fs_type
    return kind


_THRASH_CHILD = textwrap.dedent(
    """
    import os, sys, time
    group, path = sys.argv[1], sys.argv[2]
    with open(os.path.join(group, "cgroup.procs"), "w") as f:
        f.write(str(os.getpid()))
    import ashmem, ashmem.purge
    ashmem.purge.configure(psi_trigger="some 20000 2000000")
    size = 96 << 20
    shm = ashmem.SharedMemory.create("pressure", size)
    with shm.map_read_write() as m:
        for offset in range(0, size, 1 << 20):
            m[offset : offset + (1 << 20)] = b"\\x42" * (1 << 20)
    shm.unpin()
    print("source", ashmem.purge.stats()["pressure_source"], flush=True)
    # Page cache charged to this group: drop what the parent's write left, then read the
    # file again and again. With the unpinned region resident it does not fit: the kernel
    # evicts and refaults (memory stalls) until the purge gives the region's memory back.
    fd = os.open(path, os.O_RDONLY)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    buffer = bytearray(1 << 20)
    deadline = time.monotonic() + 60
    while ashmem.purge.stats()["purges"].get("pressure", 0) == 0:
        if time.monotonic() > deadline:
            print("no pressure purge", ashmem.purge.stats(), flush=True)
            sys.exit(3)
        os.lseek(fd, 0, os.SEEK_SET)
        while os.readv(fd, [buffer]):
            pass
    print("purged", shm.pin(), flush=True)
    """
)


def test_purges_under_page_cache_thrashing_in_a_limited_cgroup_v1_group(
    tmp_path: Any,
) -> None:
    """Where no cgroup v2 group can be limited (this machine): real memory pressure in a
    cgroup v1 memory group, seen by the PSI trigger on whatever file could be armed."""
    base, why = _cgroup_v1_memory_dir()
    if base is None:
        pytest.skip(f"no memory-limited cgroup v1 group can be created here: {why}")
    path = _thrash_file(tmp_path)
    group = os.path.join(base, f"ashmem-purge-{uuid.uuid4().hex[:8]}")
    try:
        os.mkdir(group)
    except OSError as exc:
        pytest.skip(f"cannot create a cgroup v1 memory group under {base}: {exc}")
    try:
        with open(os.path.join(group, "memory.limit_in_bytes"), "w") as f:
            f.write(str(160 * MiB))
        _run_thrash_child(group, path)
    finally:
        os.rmdir(group)


def _thrash_file(tmp_path: Any) -> str:
    """96 MiB on a disk filesystem, whose page cache the kernel can evict."""
    if _filesystem_type(str(tmp_path)) in ("tmpfs", "ramfs", ""):
        pytest.skip(f"{tmp_path} is not on a disk filesystem: its pages cannot be evicted")
    path = tmp_path / "thrash"
    with open(path, "wb") as f:
        for _ in range(96):
            f.write(os.urandom(MiB))
        os.fsync(f.fileno())
    return str(path)


def _run_thrash_child(group: str, path: str) -> str:
    """Run the thrashing child in ``group`` (160 MiB); it exits 0 only after a pressure
    purge. Returns its output."""
    child = subprocess.run(
        [sys.executable, "-c", _THRASH_CHILD, group, path],
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT + 30,
    )
    if "source None" in child.stdout:
        pytest.skip("no PSI trigger could be armed here")
    assert child.returncode == 0, child.stdout + child.stderr
    assert "purged True" in child.stdout, child.stdout  # the region's pin says so
    return child.stdout
