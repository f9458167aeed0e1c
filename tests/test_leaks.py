"""Leaks: thousands of create/map/send/recv/close cycles leave nothing behind.

After the cycles the process has exactly the fds it had before, no memfd fd or mapping is
left in /proc/self, and /dev/shm is unchanged; the cross-process variant checks the child
too. Error paths (a refused writable map, a message with too many fds, a bad name) are
cycled as well: an fd leaked on failure is the classic leak.
"""

from __future__ import annotations

import gc
import json
import multiprocessing
import os
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from ashmem import PROT_READ, MessageError, ProtectionError, SharedMemory, fdpass

from . import _helpers_security as sec
from .conftest import Children, open_fd_count

PAGE = sec.PAGE


class _Baseline:
    """fd count, memfd fds/mappings and /dev/shm of this process, to compare after."""

    def __init__(self) -> None:
        self.fds = open_fd_count()
        self.links = sec.memfd_links()
        self.mappings = sec.memfd_mappings()
        self.shm = sec.shm_entries()

    def assert_unchanged(self) -> None:
        assert sec.memfd_links() == self.links
        assert sec.memfd_mappings() == self.mappings
        assert open_fd_count() == self.fds
        sec.assert_no_new_shm_entries(self.shm)


@pytest.fixture
def no_gc() -> Iterator[None]:
    """Cycles must release everything explicitly, not when the garbage collector runs."""
    enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@pytest.mark.parametrize(
    ("kind", "cycles"),
    [(socket.SOCK_SEQPACKET, 10_000), (socket.SOCK_STREAM, 2_000)],
    ids=["seqpacket", "stream"],
)
@pytest.mark.usefixtures("no_gc")
def test_create_map_send_recv_close_cycles(kind: int, cycles: int) -> None:
    a, b = socket.socketpair(socket.AF_UNIX, kind)
    with a, b:
        a.settimeout(sec.PEER_TIMEOUT)
        b.settimeout(sec.PEER_TIMEOUT)
        baseline = _Baseline()
        for i in range(cycles):
            with SharedMemory.create("leak", PAGE) as shm, shm.map_read_write() as mapping:
                mapping[0] = i & 0xFF
                fdpass.send(a, [shm], b"%d" % i)
                data, items = fdpass.recv(b, maxfds=1)
                with items[0] as got:  # type: ignore[union-attr]
                    assert isinstance(got, SharedMemory)
                    assert data == b"%d" % i
                    with got.map_read_only() as view:
                        assert view[0] == i & 0xFF
        baseline.assert_unchanged()


@pytest.mark.usefixtures("no_gc")
def test_error_paths_do_not_leak() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with a, b:
        a.settimeout(sec.PEER_TIMEOUT)
        b.settimeout(sec.PEER_TIMEOUT)
        baseline = _Baseline()
        for _ in range(1_000):
            with SharedMemory.create("leak-errors", PAGE) as shm:
                assert shm.set_protect(PROT_READ)
                with pytest.raises(ProtectionError):
                    shm.map_read_write()
                # More fds than the receiver accepts: every one of them must be closed.
                fdpass.send(b, [shm, shm, shm])
                with pytest.raises(MessageError):
                    fdpass.recv(a, maxfds=2)
            with pytest.raises(ValueError):
                SharedMemory.create("bad\0name", PAGE)
            with pytest.raises(ValueError):
                SharedMemory.create("bad-size", 0)
            r, w = os.pipe()
            try:
                with pytest.raises(ValueError):
                    SharedMemory.from_fd(r)  # not a region: the fd stays ours
            finally:
                os.close(r)
                os.close(w)
        baseline.assert_unchanged()


# -- across processes ---------------------------------------------------------------------------

CROSS_CYCLES = 1_000


def _echo_regions(sock: socket.socket, cycles: int) -> None:
    """Child: receive each region, check it, write a reply into it, close it; report our
    own fd count and memfd state before and after."""
    sock.settimeout(sec.PEER_TIMEOUT)
    before = (open_fd_count(), sec.memfd_links(), sec.memfd_mappings())
    for i in range(cycles):
        data, items = fdpass.recv(sock, maxfds=1)
        (shm,) = items
        assert isinstance(shm, SharedMemory)
        with shm, shm.map_read_write() as mapping:
            assert mapping[0] == i & 0xFF and data == b"%d" % i
            mapping[1] = (i + 1) & 0xFF
        fdpass.send(sock, [], b"done")
    after = (open_fd_count(), sec.memfd_links(), sec.memfd_mappings())
    fdpass.send(sock, [], json.dumps([before, after]).encode())


def test_cross_process_cycles(
    mp_context: multiprocessing.context.BaseContext, children: Children
) -> None:
    owner, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with owner, child_end:
        owner.settimeout(sec.PEER_TIMEOUT)
        proc: Any = children.start(mp_context, _echo_regions, child_end, CROSS_CYCLES)
        child_end.close()
        baseline = _Baseline()
        for i in range(CROSS_CYCLES):
            with SharedMemory.create("leak-cross", PAGE) as shm, shm.map_read_write() as m:
                m[0] = i & 0xFF
                fdpass.send(owner, [shm], b"%d" % i)
                assert fdpass.recv(owner, maxfds=0) == (b"done", [])
                assert m[1] == (i + 1) & 0xFF
        data, _ = fdpass.recv(owner, maxfds=0)
        before, after = json.loads(data)
        assert after == before, "the child leaked"
        children.join(proc, sec.PEER_TIMEOUT)
        baseline.assert_unchanged()
