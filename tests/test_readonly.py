"""Read-only cannot be upgraded by a receiving process.

The owner creates a region, maps it read-write, writes, removes ``PROT_WRITE`` with
``set_protect`` (which adds ``F_SEAL_FUTURE_WRITE``) and hands the fd to another process:
a multiprocessing child (fd passed with ``ashmem.fdpass`` or by pickling the SharedMemory,
under every start method) or an unrelated ``python`` process that connects to a socket.
The receiver then tries every way we know to write to the region or to get write access back
(``_helpers_security.EXPECTED_ATTACKS``, each with the errno Linux answers), while the owner's
old writable mapping keeps working and the receiver sees what the owner writes through it.

The receiver runs in ``_helpers_security.run_read_only_receiver``; this module is the owner.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import multiprocessing
import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ashmem import PROT_READ, PROT_WRITE, ProtectionError, SharedMemory, fdpass, region

from . import _helpers_security as sec
from .conftest import Children

HELPER = Path(sec.__file__).resolve()


# -- receivers (child process targets) ---------------------------------------------------------


def _receive_by_fdpass(sock: socket.socket) -> None:
    chan = sec.SocketChannel(sock)
    _, items = fdpass.recv(sock, maxfds=1)
    (shm,) = items
    assert isinstance(shm, SharedMemory)
    sec.run_read_only_receiver(shm, chan)


def _receive_by_pickle(conn: Any) -> None:
    chan = sec.ConnectionChannel(conn)
    if not conn.poll(sec.PEER_TIMEOUT):
        raise TimeoutError("the owner never sent the region")
    shm = conn.recv()  # SharedMemory.__reduce__ -> DupFd -> a new fd in this process
    assert isinstance(shm, SharedMemory)
    sec.run_read_only_receiver(shm, chan)


# -- the owner ----------------------------------------------------------------------------------


def _protect(shm: SharedMemory) -> None:
    assert shm.set_protect(PROT_READ) is True
    assert not shm.get_protect() & PROT_WRITE


def _own_read_only_region(
    chan: sec.Channel,
    shm: SharedMemory,
    rw: Any,
    *,
    protected: bool,
) -> None:
    """The owner's side of the protocol, after the region went to the receiver.

    ``protected`` says whether ``set_protect`` already ran before sending; if not, the
    receiver got the fd while the region was still writable, and sealing it now must still
    apply to that fd (seals belong to the inode, not to a descriptor).
    """
    hello = chan.recv()
    assert hello["phase"] == "received"
    assert hello["pid"] != os.getpid()
    if not protected:
        _protect(shm)
    chan.send({"phase": "protected"})

    report = chan.recv()
    assert report["phase"] == "attacked"
    assert report["results"] == sec.EXPECTED_ATTACKS
    assert all(report["checks"].values()), report["checks"]
    # F_GET_SEALS after each F_ADD_SEALS attempt: FUTURE_WRITE never went away.
    assert report["seals"], "the receiver tried no seals"
    for seals in report["seals"]:
        assert seals & sec.F_SEAL_FUTURE_WRITE, f"seals {seals:#x} lost FUTURE_WRITE"
        assert seals & sec.F_SEAL_GROW and seals & sec.F_SEAL_SHRINK

    # Nothing the receiver did reached the shared memory: no MAP_PRIVATE write, no punched
    # hole, no write(2).
    assert rw[:] == sec.pattern(sec.BEFORE, shm.size)
    # The owner cannot get new write access either ...
    with pytest.raises(ProtectionError) as info:
        shm.map_read_write()
    assert info.value.errno == errno.EPERM
    # ... but its existing writable mapping keeps working.
    rw[:] = sec.pattern(sec.AFTER, shm.size)
    chan.send({"phase": "rewritten"})

    done = chan.recv()
    assert done["phase"] == "done"
    assert all(done["checks"].values()), done["checks"]


@contextlib.contextmanager
def _writable_region(name: str) -> Iterator[tuple[SharedMemory, Any]]:
    with SharedMemory.create(name, sec.REGION_SIZE) as shm, shm.map_read_write() as rw:
        rw[:] = sec.pattern(sec.BEFORE, shm.size)
        yield shm, rw


# -- tests --------------------------------------------------------------------------------------


@pytest.mark.parametrize("protected", [True, False], ids=["protect-then-send", "send-then-protect"])
def test_fdpass_receiver_cannot_upgrade(children: Children, protected: bool) -> None:
    ctx = multiprocessing.get_context("fork")
    owner_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with owner_sock, child_sock:
        # The child starts before the region exists, so it cannot inherit it (or the owner's
        # writable mapping) through fork: its only access is the fd we send.
        proc = children.start(ctx, _receive_by_fdpass, child_sock)
        child_sock.close()
        chan = sec.SocketChannel(owner_sock)
        with _writable_region("readonly-fdpass") as (shm, rw):
            if protected:
                _protect(shm)
            fdpass.send(owner_sock, [shm])
            _own_read_only_region(chan, shm, rw, protected=protected)
        children.join(proc, sec.PEER_TIMEOUT)


def test_pickled_receiver_cannot_upgrade(
    mp_context: multiprocessing.context.BaseContext, children: Children
) -> None:
    owner_conn, child_conn = mp_context.Pipe()  # type: ignore[attr-defined]
    with owner_conn, child_conn:
        proc = children.start(mp_context, _receive_by_pickle, child_conn)
        child_conn.close()
        chan = sec.ConnectionChannel(owner_conn)
        with _writable_region("readonly-pickled") as (shm, rw):
            _protect(shm)
            owner_conn.send(shm)  # pickled: SharedMemory.__reduce__ / DupFd
            _own_read_only_region(chan, shm, rw, protected=True)
        children.join(proc, sec.PEER_TIMEOUT)


def test_unrelated_process_cannot_upgrade() -> None:
    """A process that shares nothing with the owner (fresh interpreter, no inherited fds,
    not a multiprocessing child) connects to a socket and receives the region."""
    with tempfile.TemporaryDirectory(prefix="ashmem-ro-") as tmp:
        path = os.path.join(tmp, "owner.sock")
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as listener:
            listener.bind(path)
            listener.listen(1)
            listener.settimeout(sec.PEER_TIMEOUT)
            proc = subprocess.Popen(
                [sys.executable, str(HELPER), path],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                close_fds=True,
            )
            try:
                conn, _ = listener.accept()
                with conn:
                    chan = sec.SocketChannel(conn)
                    with _writable_region("readonly-unrelated") as (shm, rw):
                        _protect(shm)
                        fdpass.send(conn, [shm])
                        _own_read_only_region(chan, shm, rw, protected=True)
                out, _ = proc.communicate(timeout=sec.PEER_TIMEOUT)
                assert proc.returncode == 0, out.decode(errors="replace")
            except (OSError, EOFError, ValueError):
                # The receiver died or hung: show what it printed.
                proc.kill()
                out, _ = proc.communicate(timeout=5)
                pytest.fail(f"the unrelated receiver failed:\n{out.decode(errors='replace')}")
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.communicate(timeout=5)


def test_receiver_old_writable_mapping_is_not_revoked(children: Children) -> None:
    """The other half of "existing writable mappings keep working": a process that mapped
    the region writable *before* set_protect keeps its mapping, and the owner sees its writes
    (seals restrict new access only, in every process). New writable maps fail there too."""
    ctx = multiprocessing.get_context("fork")
    owner_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with owner_sock, child_sock:
        proc = children.start(ctx, _write_after_protect, child_sock)
        child_sock.close()
        chan = sec.SocketChannel(owner_sock)
        with SharedMemory.create("readonly-old-writer", sec.REGION_SIZE) as shm:
            fdpass.send(owner_sock, [shm])
            assert chan.recv() == {"phase": "mapped"}
            _protect(shm)
            chan.send({"phase": "protected"})
            report = chan.recv()
            assert report == {
                "phase": "written",
                "new writable map": "ProtectionError(EPERM)",
            }
            with shm.map_read_only() as view:
                assert view[: len(b"written late")] == b"written late"
        children.join(proc, sec.PEER_TIMEOUT)


def _write_after_protect(sock: socket.socket) -> None:
    chan = sec.SocketChannel(sock)
    _, items = fdpass.recv(sock, maxfds=1)
    (shm,) = items
    assert isinstance(shm, SharedMemory)
    with shm, shm.map_read_write() as rw:
        chan.send({"phase": "mapped"})
        assert chan.recv() == {"phase": "protected"}
        rw[: len(b"written late")] = b"written late"
        chan.send(
            {
                "phase": "written",
                "new writable map": sec.outcome(lambda: shm.map_read_write().close()),
            }
        )


# -- a receiver that got the region while it was writable can block set_protect -----------------


def _seal_the_seals(sock: socket.socket) -> None:
    """Child: with the O_RDWR fd it was given, forbid any new seal (F_SEAL_SEAL)."""
    chan = sec.SocketChannel(sock)
    _, items = fdpass.recv(sock, maxfds=1)
    (shm,) = items
    assert isinstance(shm, SharedMemory)
    with shm:
        fcntl.fcntl(shm.fileno(), sec.F_ADD_SEALS, sec.F_SEAL_SEAL)
        chan.send({"phase": "sealed the seals"})
        chan.recv()


@pytest.mark.parametrize("api", ["SharedMemory.set_protect", "region.set_prot_region"])
def test_write_protect_fails_loudly_when_a_holder_sealed_the_seals(
    children: Children, api: str
) -> None:
    ctx = multiprocessing.get_context("fork")
    owner_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with owner_sock, child_sock:
        proc = children.start(ctx, _seal_the_seals, child_sock)
        child_sock.close()
        chan = sec.SocketChannel(owner_sock)
        with SharedMemory.create("readonly-blocked", sec.REGION_SIZE) as shm:
            fdpass.send(owner_sock, [shm])  # still writable: sent before set_protect
            assert chan.recv() == {"phase": "sealed the seals"}
            try:
                # The kernel refuses F_SEAL_FUTURE_WRITE now, so write protection is
                # impossible. That must be an error the owner cannot miss, and it must not
                # claim that the region is write-protected.
                with pytest.raises(PermissionError) as info:
                    if api == "SharedMemory.set_protect":
                        shm.set_protect(PROT_READ)
                    else:
                        region.set_prot_region(shm.fileno(), PROT_READ)
                assert info.value.errno == errno.EPERM
                assert not isinstance(info.value, ProtectionError)
                assert "F_SEAL_SEAL" in str(info.value)
                # And the truth: still writable.
                assert shm.get_protect() & PROT_WRITE
                shm.map_read_write().close()
            finally:
                chan.send({"phase": "bye"})
        children.join(proc, sec.PEER_TIMEOUT)
