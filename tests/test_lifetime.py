"""Anonymity and lifetime of regions, across processes.

Anonymity: a region's name is for debugging only. Two regions with the same name are
different memory, and a region never has a path: not in /dev/shm, not anywhere on disk.

Lifetime: a region's memory is freed when the last fd *and* the last mapping of it are gone,
in every process, and not before; a process killed with SIGKILL leaves nothing behind.

How the tests decide that memory was released is explained in
``_helpers_security.RegionProbe``: a /proc scan for fds and mappings of the region's inode in
every process, plus a kernel-side check that the inode itself is gone (``open_by_handle_at``
on a file handle, which names the inode without keeping it alive). One test also watches
``Shmem`` in /proc/meminfo drop by the region's size, with retries because that number is
system-wide.
"""

from __future__ import annotations

import ctypes
import mmap
import multiprocessing
import os
import signal
import socket
import time
import uuid
from typing import Any

import pytest

from ashmem import PROT_READ, PROT_WRITE, SharedMemory, fdpass

from . import _helpers_security as sec
from .conftest import Children

MiB = 1 << 20
PAGE = sec.PAGE


def _unique(prefix: str) -> str:
    return f"{prefix}-{os.getpid()}-{uuid.uuid4().hex[:12]}"


def _mounted_devices() -> set[str]:
    """``major:minor`` of every mounted filesystem visible to this process."""
    with open("/proc/self/mountinfo") as mountinfo:
        return {line.split()[2] for line in mountinfo}


# -- anonymity ----------------------------------------------------------------------------------


def test_same_name_is_different_memory() -> None:
    with (
        SharedMemory.create("twin", 2 * PAGE) as a,
        SharedMemory.create("twin", 2 * PAGE) as b,
        a.map_read_write() as ma,
        b.map_read_write() as mb,
    ):
        assert a.name == b.name == "twin"
        sa, sb = os.fstat(a.fileno()), os.fstat(b.fileno())
        assert (sa.st_dev, sa.st_ino) != (sb.st_dev, sb.st_ino)
        ma[:5] = b"first"
        mb[:6] = b"second"
        assert ma[:6] == b"first\0"
        assert mb[:6] == b"second"
        assert os.pread(a.fileno(), 6, 0) == b"first\0"


def test_same_name_in_another_process_is_different_memory(children: Children) -> None:
    name = _unique("twin")
    with SharedMemory.create(name, PAGE) as shm, shm.map_read_write() as mine:
        mine[:4] = b"mine"
        children.run(multiprocessing.get_context("fork"), _scribble_on_namesake, name)
        assert mine[:4] == b"mine"
        assert mine[4:PAGE] == bytes(PAGE - 4)


def _scribble_on_namesake(name: str) -> None:
    with SharedMemory.create(name, PAGE) as shm, shm.map_read_write() as theirs:
        assert theirs[:4] == bytes(4), "a new region with the same name is not blank"
        theirs[:] = b"\xff" * PAGE


@pytest.mark.parametrize("style", ["plain", "path-like"])
def test_region_has_no_path_anywhere(style: str) -> None:
    token = _unique("anon")
    # A name that looks like a path must still create nothing there.
    name = token if style == "plain" else f"/dev/shm/{token}"
    before = sec.shm_entries()
    with SharedMemory.create(name, 4 * PAGE) as shm, shm.map_read_write() as mapping:
        mapping[:] = b"x" * len(mapping)
        fd = shm.fileno()
        assert os.readlink(f"/proc/self/fd/{fd}") == f"/memfd:{name} (deleted)"
        st = os.fstat(fd)
        # Unlinked from birth: no directory entry names this inode in any filesystem.
        assert st.st_nlink == 0
        # ... and the filesystem it lives on (the kernel-internal tmpfs of memfd) is not
        # mounted anywhere, so no path can reach it, not even through a bind mount.
        assert f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}" not in _mounted_devices()
        assert not os.path.lexists(f"/memfd:{name} (deleted)")
        assert not os.path.lexists(f"/memfd:{name}")
        assert not os.path.lexists(f"/dev/shm/{token}")
        assert not [entry for entry in sec.shm_entries() if token in entry]
        assert sec.memfd_mappings() and any(name in line for line in sec.memfd_mappings())
        sec.assert_no_new_shm_entries(before)
    sec.assert_no_new_shm_entries(before)


# -- lifetime: the last fd and the last mapping, in every process ------------------------------


def _hold_then_release(sock: socket.socket) -> None:
    """Child: receive a region, map it, then drop the fd and later the mapping, each step on
    the owner's signal, staying alive throughout (so the release is not just process exit)."""
    chan = sec.SocketChannel(sock)
    _, items = fdpass.recv(sock, maxfds=1)
    (shm,) = items
    assert isinstance(shm, SharedMemory)
    expected = sec.pattern(b"lifetime", shm.size)
    mapping = shm.map_read_only()
    chan.send({"phase": "mapped", "intact": mapping[:] == expected})
    assert chan.recv() == {"phase": "owner released"}
    intact = mapping[:] == expected  # the owner has nothing left; our mapping still works
    shm.close()
    chan.send({"phase": "fd closed", "intact": intact and mapping[:] == expected})
    assert chan.recv() == {"phase": "checked"}
    mapping.close()
    chan.send({"phase": "unmapped"})
    assert chan.recv() == {"phase": "bye"}


def test_released_when_last_fd_and_mapping_are_gone_in_every_process(
    mp_context: multiprocessing.context.BaseContext, children: Children
) -> None:
    owner_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with owner_sock, child_sock:
        proc = children.start(mp_context, _hold_then_release, child_sock)
        child_sock.close()
        chan = sec.SocketChannel(owner_sock)
        shm = SharedMemory.create(_unique("lifetime"), 8 * MiB)
        mapping = shm.map_read_write()
        try:
            mapping[:] = sec.pattern(b"lifetime", shm.size)
            probe = sec.RegionProbe.of(shm.fileno())
            fdpass.send(owner_sock, [shm])
            assert chan.recv() == {"phase": "mapped", "intact": True}
            assert {pid for pid, _ in probe.holders()} == {os.getpid(), proc.pid}
        finally:
            mapping.close()
            shm.close()

        # The owner has nothing left; the child's fd and mapping keep the region alive.
        holders = probe.holders()
        assert holders and {pid for pid, _ in holders} == {proc.pid}
        assert probe.inode_alive() is not False
        chan.send({"phase": "owner released"})
        assert chan.recv() == {"phase": "fd closed", "intact": True}

        # Only the child's mapping is left (before Python 3.13 mmap keeps a private dup of
        # the fd too, so there may still be an fd entry, but it belongs to the mapping).
        holders = probe.holders()
        assert {pid for pid, _ in holders} == {proc.pid}
        assert any(what.startswith("map ") for _, what in holders), holders
        assert probe.inode_alive() is not False
        chan.send({"phase": "checked"})
        assert chan.recv() == {"phase": "unmapped"}

        # The last mapping is gone while the child is still alive: the region is freed now,
        # not at process exit.
        probe.wait_released()
        assert proc.is_alive()
        chan.send({"phase": "bye"})
        children.join(proc, sec.PEER_TIMEOUT)


def test_mapping_outlives_close_and_memory_is_freed_with_it() -> None:
    shm = SharedMemory.create(_unique("outlives"), 8 * MiB)
    rw = shm.map_read_write()
    ro = shm.map_read_only()
    try:
        rw[:] = sec.pattern(b"outlives", shm.size)
        probe = sec.RegionProbe.of(shm.fileno())
        shm.close()
        assert shm.closed
        # Both mappings still work, and still share the same memory.
        assert ro[:] == sec.pattern(b"outlives", len(ro))
        rw[-5:] = b"later"
        assert ro[-5:] == b"later"
        assert probe.inode_alive() is not False
        assert {pid for pid, _ in probe.holders()} == {os.getpid()}
        rw.close()
        assert ro[-5:] == b"later"
        assert probe.holders()
        assert probe.inode_alive() is not False
    finally:
        rw.close()
        ro.close()
        shm.close()
    probe.wait_released()


def test_a_bare_mapping_without_any_fd_keeps_the_region_alive() -> None:
    """With a libc mapping (no hidden dup, unlike mmap.mmap before 3.13) the only reference
    left after close() is the mapping itself."""
    size = 4 * MiB
    shm = SharedMemory.create(_unique("bare-mapping"), size)
    probe = sec.RegionProbe.of(shm.fileno())
    addr = sec.libc_mmap(shm.fileno(), size, PROT_READ | PROT_WRITE, mmap.MAP_SHARED)
    try:
        ctypes.memmove(addr + size - 4, b"bare", 4)
        shm.close()
        holders = probe.holders()
        assert len(holders) == 1, holders
        ((pid, what),) = holders
        assert pid == os.getpid() and what.startswith("map "), holders
        assert probe.inode_alive() is not False
        assert ctypes.string_at(addr + size - 4, 4) == b"bare"
    finally:
        sec.libc_munmap(addr, size)
        shm.close()
    probe.wait_released()


def test_memory_is_returned_to_the_system() -> None:
    """Shmem in /proc/meminfo goes up by the region's size at creation (reserve=True
    allocates every page) and down by as much when the fd and the mapping are closed.

    Shmem is system-wide: other processes may allocate or free shmem at the same moment.
    Noise can only hide the effect for a while, not fake it for long, so the measurement is
    repeated a few times, spaced out, and must succeed once; a region that is never freed
    fails every attempt."""
    size = 64 * MiB
    need_kib = 3 * size // 4 // 1024
    attempts: list[str] = []
    for _ in range(4):
        start = sec.shmem_kib()
        shm = SharedMemory.create(_unique("meminfo"), size)
        mapping = shm.map_read_write()
        try:
            mapping[::PAGE] = b"t" * (size // PAGE)  # touch every page through the mapping
            held = sec.shmem_kib()
        finally:
            mapping.close()
            shm.close()
        dropped = _wait_for_drop(held, need_kib, timeout=2.0)
        attempts.append(f"start={start} held={held} dropped={dropped} KiB")
        if held - start >= need_kib and dropped >= need_kib:
            return
        time.sleep(0.5)
    pytest.fail(f"Shmem did not rise and fall by {need_kib} KiB: {attempts}")


def _wait_for_drop(held: int, need_kib: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while True:
        dropped = held - sec.shmem_kib()
        if dropped >= need_kib or time.monotonic() > deadline:
            return dropped
        time.sleep(0.01)


# -- SIGKILL leaves nothing behind --------------------------------------------------------------


def _hold_until_killed(sock: socket.socket) -> None:
    """Child: hold many regions in every way (fds, mappings, fds closed but mapped, a region
    received from the parent), report them, then wait to be killed."""
    chan = sec.SocketChannel(sock)
    _, items = fdpass.recv(sock, maxfds=1)
    (received,) = items
    assert isinstance(received, SharedMemory)
    keep: list[Any] = [received, received.map_read_only()]
    probes = []
    for i in range(16):
        size = 32 * MiB if i == 0 else (i + 1) * PAGE + i  # one big, the rest odd sizes
        shm = SharedMemory.create(f"doomed-{i}", size, populate=i == 0)
        mapping = shm.map_read_write()
        mapping[-1:] = b"z"
        probes.append(sec.RegionProbe.of(shm.fileno()).to_json())
        if i % 3 == 0:
            shm.close()  # only the mapping is left
        keep += [shm, mapping]
    # One more held only by a libc mapping: no fd at all.
    with SharedMemory.create("doomed-bare", PAGE) as shm:
        probes.append(sec.RegionProbe.of(shm.fileno()).to_json())
        sec.libc_mmap(shm.fileno(), PAGE, PROT_READ, mmap.MAP_SHARED)
    chan.send({"phase": "holding", "probes": probes})
    chan.recv()  # never answered: the parent kills us


def test_sigkill_leaves_nothing_behind(
    mp_context: multiprocessing.context.BaseContext, children: Children
) -> None:
    shm_before = sec.shm_entries()
    owner_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with owner_sock, child_sock:
        proc = children.start(mp_context, _hold_until_killed, child_sock)
        child_sock.close()
        chan = sec.SocketChannel(owner_sock)
        with SharedMemory.create(_unique("sent-to-doomed"), MiB) as shm:
            sent = sec.RegionProbe.of(shm.fileno())
            fdpass.send(owner_sock, [shm])
        # Our copy is closed: the child's fd is the only reference to `sent`.
        report = chan.recv()
        assert report["phase"] == "holding"
        probes = [sent] + [sec.RegionProbe.from_json(p) for p in report["probes"]]
        assert len(probes) == 18
        for probe in probes:
            holders = probe.holders()
            assert holders and {pid for pid, _ in holders} == {proc.pid}, (probe, holders)
            assert probe.inode_alive() is not False

        os.kill(proc.pid, signal.SIGKILL)
        proc.join(sec.PEER_TIMEOUT)
        assert proc.exitcode == -signal.SIGKILL

    for probe in probes:
        probe.wait_released()
    sec.assert_no_new_shm_entries(shm_before)


def _send_and_die(sock: socket.socket, conn: Any) -> None:
    """Child: send a region over ``sock`` (which nobody reads), close our copy, report."""
    with SharedMemory.create("in-flight", 4 * MiB) as shm:
        probe = sec.RegionProbe.of(shm.fileno())
        fdpass.send(sock, [shm])
    conn.send(probe.to_json())
    conn.recv()  # killed before anything arrives


def test_descriptors_in_flight_are_released_with_the_socket(children: Children) -> None:
    """A region sent over a socket and never received lives in the socket's queue (an
    SCM_RIGHTS reference /proc cannot show); killing the sender and closing the socket
    releases it."""
    ctx = multiprocessing.get_context("fork")
    owner_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    owner_conn, child_conn = ctx.Pipe()
    try:
        proc = children.start(ctx, _send_and_die, child_sock, child_conn)
        child_sock.close()
        child_conn.close()
        assert owner_conn.poll(sec.PEER_TIMEOUT), "the child never reported"
        probe = sec.RegionProbe.from_json(owner_conn.recv())
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(sec.PEER_TIMEOUT)
        assert proc.exitcode == -signal.SIGKILL

        # No process holds it, yet it is alive: the unread message holds the descriptor.
        assert not probe.holders()
        if sec.can_probe_inodes():
            assert probe.inode_alive() is True
    finally:
        owner_sock.close()
        child_sock.close()
        owner_conn.close()
        child_conn.close()
    probe.wait_released()
