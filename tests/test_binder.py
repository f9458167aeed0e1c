"""ashmem.binder across real processes: the demo scenario, credentials, access control,
one-way ordering, death notices, callbacks, large payloads, errors, timeouts, asyncio, load.

The service under test runs in its own process (``start_service``), so every call here
crosses a process boundary; clients run in this process or in children of every start
method. Children assert and exit non-zero on failure (``children.run`` checks the code).
"""

from __future__ import annotations

import asyncio
import errno
import gc
import hashlib
import inspect
import logging
import multiprocessing
import os
import select
import signal
import socket
import stat
import tempfile
import threading
import time
import typing
import weakref
from collections.abc import Iterator
from typing import Any

import pytest

import ashmem
from ashmem import binder
from ashmem._demo import TRANSACTION_GREET, DemoService
from ashmem._shared_memory import Mapping
from ashmem.binder import (
    FIRST_CALL_TRANSACTION,
    FLAG_ONEWAY,
    BadParcel,
    Binder,
    DeadObjectError,
    Parcel,
    Proxy,
    RemoteError,
    ServiceNotFoundError,
)

from .conftest import scaled

pytestmark = pytest.mark.timeout(60)

ECHO = FIRST_CALL_TRANSACTION
WHOAMI = 2
RAISE = 3
SLEEP = 4
LOG = 5
GET_LOG = 6
HASH = 7
BIG = 8
CALLBACK = 9
WRITE_FD = 10
FORWARD = 11
MAKE_REGION = 12
IDENTITY = 13
RENDEZVOUS = 14
GATE = 15
KEEP = 16
FORWARD_INTO = 17
CONCURRENT_CALLS = 6
# In the probe process: every RENDEZVOUS call waits here until CONCURRENT_CALLS are inside.
_RENDEZVOUS = threading.Barrier(CONCURRENT_CALLS)
UNKNOWN = 999

FORK = multiprocessing.get_context("fork")


def fd_count(pid: int | None = None) -> int:
    return len(os.listdir(f"/proc/{pid or 'self'}/fd"))


class ProbeService(Binder):
    """The service the tests talk to; one code per behaviour."""

    descriptor = "ashmem.test.IProbe"

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.log: list[tuple[int, int]] = []
        self.active = 0
        self.max_active = 0
        self.kept: list[Parcel] = []

    def on_transact(self, code: int, data: Parcel, reply: Parcel, flags: int) -> bool:
        if code == ECHO:
            reply.write_string(data.read_string())
        elif code == WHOAMI:
            creds = binder.get_calling_credentials()
            reply.write_int_list([creds.pid, creds.uid, creds.gid, os.getpid()])
        elif code == RAISE:
            raise ValueError(data.read_string())
        elif code == SLEEP:
            time.sleep(data.read_double())
            reply.write_bool(True)
        elif code == RENDEZVOUS:
            # Passes only if all the calls are inside on_transact at once.
            reply.write_int(_RENDEZVOUS.wait(timeout=scaled(20)))
        elif code == GATE:
            # Held until the caller writes to the pipe whose read end it sent (bounded).
            fd = data.read_file_descriptor()
            try:
                reply.write_bool(bool(select.select([fd], [], [], 30)[0]))
            finally:
                os.close(fd)
        elif code == KEEP:
            # GATE, but on_transact keeps ``data`` (as a request log would), with the
            # descriptor after the gate's still in it.
            self.kept.append(data)
            fd = data.read_file_descriptor()
            try:
                reply.write_bool(bool(select.select([fd], [], [], 30)[0]))
            finally:
                os.close(fd)
        elif code == FORWARD_INTO:
            # The reply Parcel itself is filled by a call to another process.
            target = data.read_binder()
            assert target is not None
            with target, Parcel() as ask:
                ask.write_string(data.read_string())
                target.transact(ECHO, ask, reply, timeout=scaled(10))
        elif code == LOG:
            self._log(data.read_int(), data.read_int())
        elif code == GET_LOG:
            self._get_log(data.read_int(), reply)
        elif code == HASH:
            view = data.read_buffer()
            assert view is not None
            reply.write_string(hashlib.sha256(view).hexdigest())
            reply.write_string(type(view.obj).__name__)
            reply.write_bool(view.readonly)
        elif code == BIG:
            payload = bytes(range(256)) * (data.read_long() // 256)
            reply.write_bytes(payload)
            reply.write_string(hashlib.sha256(payload).hexdigest())
        elif code == CALLBACK:
            self._callback(data.read_binder(), data.read_string(), reply)
        elif code == WRITE_FD:
            fd = data.read_file_descriptor()
            try:
                os.write(fd, data.read_bytes() or b"")
            finally:
                os.close(fd)
        elif code == MAKE_REGION:
            text = (data.read_string() or "").encode()
            with ashmem.MemoryFile("made-by-the-service", 4096) as memory:
                memory.write_bytes(text, 0, 0, len(text))
                memory.shared_memory.set_protect(ashmem.PROT_READ)
                reply.write_shared_memory(memory)  # dup'ed into the reply
                reply.write_int(len(text))
        elif code == IDENTITY:
            # Who calls us, before and after calling back into the caller's process.
            callback = data.read_binder()
            assert callback is not None
            reply.write_int(binder.get_calling_pid())
            with callback, Parcel() as answer:
                callback.transact(IDENTITY, None, answer, timeout=scaled(10))
                reply.write_int_list(answer.read_int_list())
            reply.write_int(binder.get_calling_pid())
        elif code == FORWARD:
            target = data.read_binder()
            assert target is not None
            with target, Parcel() as ask, Parcel() as answer:
                ask.write_string(data.read_string())
                target.transact(ECHO, ask, answer, timeout=scaled(10))
                reply.write_string(answer.read_string())
        else:
            return False
        return True

    def _log(self, client: int, seq: int) -> None:
        with self.lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        time.sleep(0)  # let another thread run, if one could deliver concurrently
        with self.lock:
            self.active -= 1
            self.log.append((client, seq))
            self.changed.notify_all()

    def _get_log(self, count: int, reply: Parcel) -> None:
        with self.lock:
            self.changed.wait_for(lambda: len(self.log) >= count, timeout=scaled(20))
            log, self.log = self.log, []
            reply.write_int_list([c for c, _ in log])
            reply.write_int_list([s for _, s in log])
            reply.write_int(self.max_active)
            self.max_active = 0

    def _callback(self, callback: Proxy | None, text: str | None, reply: Parcel) -> None:
        assert callback is not None
        with callback, Parcel() as ask, Parcel() as answer:
            ask.write_string(text)
            callback.transact(ECHO, ask, answer, timeout=scaled(10))
            reply.write_string(answer.read_string())
            callback.transact(LOG, ask, None, FLAG_ONEWAY)


@pytest.fixture(scope="module")
def probe() -> Iterator[binder.ServiceProcess]:
    """The probe service, in its own process for the whole module."""
    with binder.start_service(
        ProbeService, f"test.probe.{os.getpid()}", timeout=scaled(30)
    ) as service:
        yield service


def echo(proxy: Proxy, text: str, **kwargs: Any) -> str | None:
    with Parcel() as data, Parcel() as reply:
        data.write_string(text)
        assert proxy.transact(ECHO, data, reply, **kwargs)
        return reply.read_string()


# -- the demo scenario -----------------------------------------------------------------------


def demo_client(name: str) -> None:
    message = "ünïcode message from a child process"
    encoded = message.encode()
    with ashmem.MemoryFile("demo-region", 4096) as memory:
        memory.write_bytes(encoded, 0, 0, len(encoded))
        with binder.start_service(DemoService, name, timeout=scaled(30)) as service:
            assert service.started
            with Parcel() as data, Parcel() as reply:
                data.write_shared_memory(memory)
                data.write_int(len(encoded))
                assert service.binder.transact(TRANSACTION_GREET, data, reply, timeout=scaled(10))
                answer = reply.read_string()
                offset, size = reply.read_int(), reply.read_int()
            assert answer is not None and message.upper() in answer
            assert f"caller pid {os.getpid()}" in answer
            raw = bytearray(size)
            memory.read_bytes(raw, offset, 0, size)
            assert raw[4:].decode() == answer  # the service wrote it into our region
            pid = service.pid
            assert service.stop() == 0
        assert not os.path.exists(f"/proc/{pid}") or _is_zombie_or_gone(pid)
        assert name not in binder.list_services()


def _is_zombie_or_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_demo_scenario_under_every_start_method(
    mp_context: multiprocessing.context.BaseContext, children: Any
) -> None:
    name = f"test.demo.{os.getpid()}.{mp_context.get_start_method()}"
    children.run(mp_context, demo_client, name, timeout=scaled(45))


@pytest.mark.timeout(30)
def test_ashmem_demo_command_prints_both_answers() -> None:
    import subprocess
    import sys

    run = subprocess.run(
        [sys.executable, "-c", "import sys, ashmem.cli; sys.exit(ashmem.cli.main(['demo']))"],
        capture_output=True,
        text=True,
        timeout=scaled(25),
    )
    assert run.returncode == 0, run.stderr
    lines = dict(line.split(":", 1) for line in run.stdout.splitlines() if ":" in line)
    region, parcel = lines["region   "].strip(), lines["parcel   "].strip()
    assert region == parcel
    assert "HELLO FROM THE CLIENT" in region


# -- credentials and access control ------------------------------------------------------------


def whoami(proxy: Proxy) -> list[int]:
    with Parcel() as reply:
        assert proxy.transact(WHOAMI, None, reply, timeout=scaled(10))
        result = reply.read_int_list()
    assert result is not None
    return result


def check_credentials(name: str) -> None:
    with binder.get_service(name) as proxy:
        pid, uid, gid, service_pid = whoami(proxy)
        assert (pid, uid, gid) == (os.getpid(), os.geteuid(), os.getegid())
        assert proxy.credentials.pid == service_pid != os.getpid()


def test_calling_credentials_come_from_the_kernel(
    probe: binder.ServiceProcess, children: Any
) -> None:
    check_credentials(probe.name)  # this process
    children.run(FORK, check_credentials, probe.name, timeout=scaled(20))  # a child


def test_get_calling_identity_outside_a_transaction_is_our_own() -> None:
    assert binder.get_calling_pid() == os.getpid()
    assert binder.get_calling_uid() == os.geteuid()
    assert Binder.get_calling_gid() == os.getegid()


@pytest.fixture
def shared_directory() -> Iterator[str]:
    """A directory other users may search (0711), as a system-wide service would use."""
    path = tempfile.mkdtemp(prefix="ashmem-shared-", dir="/tmp")
    os.chmod(path, 0o711)
    yield path
    for entry in os.listdir(path):
        os.unlink(os.path.join(path, entry))
    os.rmdir(path)


NOBODY = 65534


def call_as_nobody(name: str, directory: str, expect_allowed: bool) -> None:
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)
    if not expect_allowed:
        with pytest.raises(PermissionError, match="refused"):
            binder.get_service(name, directory=directory, timeout=scaled(5))
        return
    with binder.get_service(name, directory=directory, timeout=scaled(5)) as proxy:
        pid, uid, gid, _ = whoami(proxy)
        assert (pid, uid, gid) == (os.getpid(), NOBODY, NOBODY)


needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root to run a child under a second uid (os.setuid)"
)


@needs_root
def test_other_uid_is_refused_by_default_and_logged(
    shared_directory: str, children: Any, caplog: pytest.LogCaptureFixture
) -> None:
    name = f"test.uid.default.{os.getpid()}"
    with (
        caplog.at_level(logging.WARNING, logger="ashmem.binder"),
        binder.add_service(name, ProbeService(), directory=shared_directory),
    ):
        children.run(FORK, call_as_nobody, name, shared_directory, False, timeout=scaled(20))
        # The owner's uid is still welcome.
        with binder.get_service(name, directory=shared_directory) as proxy:
            assert proxy.ping()
    refusals = [r for r in caplog.records if "refused" in r.getMessage()]
    assert refusals and f"uid {NOBODY}" in refusals[0].getMessage()


@needs_root
def test_other_uid_is_admitted_by_allow_list(shared_directory: str, children: Any) -> None:
    name = f"test.uid.allowed.{os.getpid()}"
    with binder.add_service(name, ProbeService(), directory=shared_directory, allow_uids=[NOBODY]):
        children.run(FORK, call_as_nobody, name, shared_directory, True, timeout=scaled(20))


@needs_root
def test_other_gid_is_admitted_by_allow_list(shared_directory: str, children: Any) -> None:
    name = f"test.gid.allowed.{os.getpid()}"
    with binder.add_service(name, ProbeService(), directory=shared_directory, allow_gids=[NOBODY]):
        children.run(FORK, call_as_nobody, name, shared_directory, True, timeout=scaled(20))


def test_policy_callable_decides(caplog: pytest.LogCaptureFixture) -> None:
    seen: list[binder.Credentials] = []

    def policy(creds: binder.Credentials) -> bool:
        seen.append(creds)
        return False

    name = f"test.policy.{os.getpid()}"
    with (
        caplog.at_level(logging.WARNING, logger="ashmem.binder"),
        binder.add_service(name, ProbeService(), policy=policy),
        pytest.raises(PermissionError),
    ):
        binder.get_service(name, timeout=scaled(5))
    assert seen and seen[0].pid == os.getpid()
    assert any("refused" in r.getMessage() for r in caplog.records)
    with pytest.raises(ValueError, match="either"):
        binder.add_service(name, ProbeService(), policy=policy, allow_uids=[1])


# -- one-way calls -----------------------------------------------------------------------------


def send_oneway(name: str, client: int, count: int) -> None:
    with binder.get_service(name) as proxy, Parcel() as data:
        for seq in range(count):
            data.write_int(client)
            data.write_int(seq)
            assert proxy.transact(LOG, data, None, FLAG_ONEWAY)
            data.close()


def test_oneway_calls_arrive_in_order_one_at_a_time(
    probe: binder.ServiceProcess, children: Any
) -> None:
    clients, count = 3, 400
    procs = [children.start(FORK, send_oneway, probe.name, c, count) for c in range(clients)]
    for proc in procs:
        children.join(proc, 30)
    with Parcel() as data, Parcel() as reply:
        data.write_int(clients * count)
        assert probe.binder.transact(GET_LOG, data, reply, timeout=scaled(30))
        senders, seqs, max_active = reply.read_int_list(), reply.read_int_list(), reply.read_int()
    assert senders is not None and seqs is not None
    assert len(seqs) == clients * count
    for client in range(clients):
        assert [s for c, s in zip(senders, seqs, strict=True) if c == client] == list(range(count))
    assert max_active == 1


# -- death -------------------------------------------------------------------------------------


def test_death_recipient_runs_once_when_the_service_is_sigkilled() -> None:
    service = binder.start_service(ProbeService, f"test.death.{os.getpid()}", timeout=scaled(20))
    proxy = service.binder
    died = threading.Event()
    calls: list[Proxy] = []

    def recipient(who: Proxy) -> None:
        calls.append(who)
        died.set()

    unlinked = threading.Event()
    proxy.link_to_death(recipient)
    proxy.link_to_death(lambda who: unlinked.set())
    assert proxy.unlink_to_death(recipient) and not proxy.unlink_to_death(recipient)
    proxy.link_to_death(recipient)
    try:
        os.kill(service.pid, signal.SIGKILL)
        assert died.wait(10), "no death notice within 10 s"
        assert unlinked.wait(1)
        time.sleep(0.1)
        assert calls == [proxy]
        assert not proxy.is_binder_alive()
        assert not proxy.ping()
        with pytest.raises(DeadObjectError):
            echo(proxy, "anyone there?")
        with pytest.raises(DeadObjectError):
            proxy.link_to_death(recipient)
        # The killed service could not remove its socket; listing the directory does.
        stale = os.path.join(binder.service_directory(), service.name)
        assert os.path.exists(stale)
        assert service.name not in binder.list_services()
        assert not os.path.exists(stale)
    finally:
        service.stop()
    assert calls == [proxy]


def test_closing_a_service_kills_its_proxies() -> None:
    name = f"test.closed.{os.getpid()}"
    service = binder.add_service(name, ProbeService())
    proxy = binder.get_service(name)
    died = threading.Event()
    proxy.link_to_death(lambda who: died.set())
    assert echo(proxy, "x") == "x"
    service.close()
    assert died.wait(5)
    with pytest.raises(DeadObjectError):
        echo(proxy, "y")
    with pytest.raises(ServiceNotFoundError):
        binder.get_service(name, timeout=scaled(0.2))


def test_a_restarted_service_is_a_new_binder() -> None:
    name = f"test.restart.{os.getpid()}"
    with binder.add_service(name, ProbeService()):
        old = binder.get_service(name)
        assert old.ping()
    with binder.add_service(name, ProbeService()):
        # The old Proxy never reaches the new process's binder, as on Android.
        assert not old.ping()
        assert binder.get_service(name).ping()


# -- callbacks and references ------------------------------------------------------------------


class Callback(Binder):
    def __init__(self) -> None:
        self.callers: list[int] = []
        self.oneway = threading.Event()

    def on_transact(self, code: int, data: Parcel, reply: Parcel, flags: int) -> bool:
        self.callers.append(binder.get_calling_pid())
        if code == ECHO:
            reply.write_string(f"callback got {data.read_string()}")
            return True
        if code == LOG and flags & FLAG_ONEWAY:
            self.oneway.set()
            return True
        return False


def test_service_calls_back_through_write_binder(probe: binder.ServiceProcess) -> None:
    callback = Callback()
    with Parcel() as data, Parcel() as reply:
        data.write_binder(callback)
        data.write_string("ping")
        assert probe.binder.transact(CALLBACK, data, reply, timeout=scaled(20))
        assert reply.read_string() == "callback got ping"
    assert callback.oneway.wait(10)
    assert callback.callers == [probe.pid, probe.pid]  # the kernel says who called back


class IdentityCallback(Binder):
    """Says who called it, as itself inside ``clear_calling_identity``, and after."""

    def on_transact(self, code: int, data: Parcel, reply: Parcel, flags: int) -> bool:
        seen = [binder.get_calling_pid()]
        with binder.clear_calling_identity():
            seen.append(binder.get_calling_pid())
            with binder.clear_calling_identity():  # nests
                seen.append(binder.get_calling_pid())
            seen.append(binder.get_calling_pid())
        seen.append(binder.get_calling_pid())
        reply.write_int_list(seen)
        return True


def test_calling_identity_is_saved_and_restored_across_a_nested_call(
    probe: binder.ServiceProcess,
) -> None:
    me = os.getpid()
    with Parcel() as data, Parcel() as reply:
        data.write_binder(IdentityCallback())
        assert probe.binder.transact(IDENTITY, data, reply, timeout=scaled(20))
        before, inside, after = reply.read_int(), reply.read_int_list(), reply.read_int()
    # The probe sees us before and after its call out; the callback (run on this thread,
    # which waited for the reply) sees the probe, then this process while cleared.
    assert (before, after) == (me, me)
    assert inside == [probe.pid, me, me, me, probe.pid]
    assert binder.get_calling_pid() == me  # this thread is back to no transaction


class SlottedCallback(Binder):
    __slots__ = ("seen",)

    def __init__(self) -> None:
        self.seen: list[int] = []

    def on_transact(self, code: int, data: Parcel, reply: Parcel, flags: int) -> bool:
        self.seen.append(binder.get_calling_pid())
        reply.write_string(f"callback got {data.read_string()}")
        return code == ECHO


def test_a_binder_with_slots_is_served_and_left_untouched(probe: binder.ServiceProcess) -> None:
    callback = SlottedCallback()
    before = dict(getattr(callback, "__dict__", {}))
    with Parcel() as data, Parcel() as reply:
        data.write_binder(callback)
        data.write_string("ping")
        assert probe.binder.transact(CALLBACK, data, reply, timeout=scaled(20))
        assert reply.read_string() == "callback got ping"
    assert callback.seen[0] == probe.pid
    # The pool keeps its bookkeeping in its own table, not on the user's object.
    assert dict(getattr(callback, "__dict__", {})) == before
    # ... and that table does not keep a dropped binder alive.
    gone = weakref.ref(callback)
    del callback
    deadline = time.monotonic() + 10  # the probe drops its connection to it asynchronously
    while gone() is not None and time.monotonic() < deadline:
        gc.collect()
        time.sleep(0.01)
    assert gone() is None


def forward_through(probe_name: str, target_name: str) -> None:
    with (
        binder.get_service(probe_name) as probe,
        binder.get_service(target_name) as target,
        Parcel() as data,
        Parcel() as reply,
    ):
        data.write_binder(target)  # a Proxy, handed on to a third process
        data.write_string("via a forwarded reference")
        assert probe.transact(FORWARD, data, reply, timeout=scaled(20))
        assert reply.read_string() == "via a forwarded reference"


def test_a_proxy_can_be_handed_to_a_third_process(
    probe: binder.ServiceProcess, children: Any
) -> None:
    name = f"test.forward.{os.getpid()}"
    service = ProbeService()
    with binder.add_service(name, service):
        children.run(FORK, forward_through, probe.name, name, timeout=scaled(30))


def test_read_binder_rejects_a_foreign_address() -> None:
    raw = bytearray(b"\x0b")
    address = b"/run/docker.sock"
    raw += bytes((len(address),)) + address + b"t" * 16
    with pytest.raises(BadParcel, match="foreign address"):
        Parcel.unmarshall(raw).read_binder()


# -- payloads, descriptors, errors -------------------------------------------------------------


@pytest.mark.timeout(60)
def test_64_mib_payload_goes_through_a_sealed_region_both_ways(
    probe: binder.ServiceProcess,
) -> None:
    payload = os.urandom(1 << 20) * 64
    before = fd_count()
    with Parcel() as data, Parcel() as reply:
        data.write_bytes(payload)
        assert probe.binder.transact(HASH, data, reply, timeout=scaled(30))
        digest, exporter, readonly = reply.read_string(), reply.read_string(), reply.read_bool()
    assert digest == hashlib.sha256(payload).hexdigest()
    assert (exporter, readonly) == (Mapping.__name__, True)  # read in place, zero-copy
    size = 64 << 20
    with Parcel() as data, Parcel() as reply:
        data.write_long(size)
        assert probe.binder.transact(BIG, data, reply, timeout=scaled(30))
        view = reply.read_buffer()
        assert view is not None and len(view) == size and isinstance(view.obj, Mapping)
        assert hashlib.sha256(view).hexdigest() == reply.read_string()
        view.release()
    assert fd_count() == before


def test_a_spilled_region_cannot_be_written_by_anyone() -> None:
    from ashmem.binder import _wire

    fd = _wire.spill([b"x" * 100], 100)
    try:
        assert ashmem.region.get_prot_region(fd) & ashmem.PROT_WRITE == 0
        with pytest.raises(OSError) as info:
            os.write(fd, b"y")
        assert info.value.errno == errno.EPERM
    finally:
        os.close(fd)


def test_descriptor_passing_across_processes(probe: binder.ServiceProcess) -> None:
    read_end, write_end = os.pipe()
    try:
        with Parcel() as data:
            data.write_file_descriptor(write_end)  # dup'ed: we keep ours
            data.write_bytes(b"written by the service")
            assert probe.binder.transact(WRITE_FD, data, None, timeout=scaled(10))
        os.close(write_end)
        write_end = -1
        assert os.read(read_end, 100) == b"written by the service"
        assert os.read(read_end, 100) == b""  # no copy of the write end was kept anywhere
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)


def test_a_caller_that_hangs_up_leaves_no_descriptor_in_the_service(
    probe: binder.ServiceProcess,
) -> None:
    # The service keeps the call's Parcel; the caller gives up before the reply, so the
    # reply cannot be sent. The descriptors the caller sent are closed all the same: the
    # write end of this pipe reaches EOF once no process holds a copy.
    gate_read, gate_write = os.pipe()
    witness_read, witness_write = os.pipe()
    try:
        with Parcel() as data:
            data.write_file_descriptor(gate_read)
            data.write_file_descriptor(witness_write)
            with pytest.raises(TimeoutError):
                probe.binder.transact(KEEP, data, timeout=scaled(0.2))
        os.close(witness_write)
        witness_write = -1
        os.write(gate_write, b"x")  # now the service answers a caller that is gone
        assert select.select([witness_read], [], [], scaled(30))[0], "descriptor kept"
        assert os.read(witness_read, 1) == b""
    finally:
        for fd in (gate_read, gate_write, witness_read, witness_write):
            if fd >= 0:
                os.close(fd)
    assert echo(probe.binder, "still serving", timeout=scaled(5)) == "still serving"


def test_a_reply_filled_by_another_call_is_sent(probe: binder.ServiceProcess) -> None:
    callback = Callback()
    with Parcel() as data, Parcel() as reply:
        data.write_binder(callback)
        data.write_string("relayed")
        assert probe.binder.transact(FORWARD_INTO, data, reply, timeout=scaled(20))
        assert reply.read_string() == "callback got relayed"


def test_a_reply_can_carry_a_region(probe: binder.ServiceProcess) -> None:
    before = fd_count()
    with Parcel() as data, Parcel() as reply:
        data.write_string("from the service's own region")
        assert probe.binder.transact(MAKE_REGION, data, reply, timeout=scaled(10))
        with reply.read_shared_memory() as shm, shm.map_read_only() as mapping:
            assert bytes(mapping[: reply.read_int()]) == b"from the service's own region"
            assert shm.name == "made-by-the-service"
            assert not shm.get_protect() & ashmem.PROT_WRITE  # still read-only here
    assert fd_count() == before


def test_a_released_callback_binder_is_dead_to_new_callers() -> None:
    import gc

    callback: Callback | None = Callback()
    with Parcel() as parcel:
        parcel.write_binder(callback)
        reference = parcel.marshall()
    first = Parcel.unmarshall(reference).read_binder()
    assert first is not None and echo(first, "alive") == "callback got alive"
    first.close()  # no connection keeps it alive any more, once the pool notices
    alive = weakref.ref(callback)
    callback = None
    deadline = time.monotonic() + 5
    while alive() is not None and time.monotonic() < deadline:
        gc.collect()
        time.sleep(0.01)
    assert alive() is None, "the pool kept a binder nobody references"
    late = Parcel.unmarshall(reference).read_binder()
    assert late is not None
    with pytest.raises(DeadObjectError, match="gone"):
        echo(late, "anyone?")


def test_exceptions_become_remote_errors_and_the_pool_survives(
    probe: binder.ServiceProcess,
) -> None:
    for _ in range(20):  # more than the pool has threads
        with Parcel() as data:
            data.write_string("bad size")
            with pytest.raises(RemoteError) as info:
                probe.binder.transact(RAISE, data, timeout=scaled(10))
        assert (info.value.type_name, info.value.remote_message) == ("ValueError", "bad size")
        assert info.value.code == RAISE
    with Parcel() as data:  # reading the wrong type is a BadParcel in the service
        data.write_int(1)
        with pytest.raises(RemoteError, match="BadParcel"):
            probe.binder.transact(ECHO, data, timeout=scaled(10))
    assert probe.binder.transact(UNKNOWN, timeout=scaled(10)) is False
    assert echo(probe.binder, "still serving", timeout=scaled(10)) == "still serving"
    with pytest.raises(ValueError, match="FIRST_CALL_TRANSACTION"):
        probe.binder.transact(0)
    with pytest.raises(ValueError, match="flags"):
        probe.binder.transact(ECHO, flags=0x10)


def test_ping_and_interface_descriptor(probe: binder.ServiceProcess) -> None:
    assert probe.binder.ping(timeout=scaled(5))
    assert probe.binder.get_interface_descriptor() == "ashmem.test.IProbe"


def test_timeout_abandons_the_call_not_the_proxy(probe: binder.ServiceProcess) -> None:
    gate_read, gate_write = os.pipe()
    try:
        with Parcel() as data:
            data.write_file_descriptor(gate_read)
            # The TimeoutError comes while the call is still held in the service: the gate
            # opens only after it.
            with pytest.raises(TimeoutError, match="no reply within"):
                probe.binder.transact(GATE, data, timeout=scaled(0.2))
    finally:
        os.write(gate_write, b"x")
        os.close(gate_read)
        os.close(gate_write)
    assert echo(probe.binder, "after timeout", timeout=scaled(5)) == "after timeout"
    assert probe.binder.is_binder_alive()


def test_asyncio_transact(probe: binder.ServiceProcess) -> None:
    async def one(i: int) -> str | None:
        with Parcel() as data, Parcel() as reply:
            data.write_string(f"async {i}")
            assert await probe.binder.transact_async(ECHO, data, reply, timeout=scaled(10))
            return reply.read_string()

    async def main() -> None:
        results = await asyncio.gather(*(one(i) for i in range(50)))
        assert results == [f"async {i}" for i in range(50)]
        with Parcel() as data:
            data.write_double(1.0)
            with pytest.raises(TimeoutError):
                await probe.binder.transact_async(SLEEP, data, timeout=scaled(0.1))
        for seq in range(100):
            with Parcel() as data:
                data.write_int(7)
                data.write_int(seq)
                assert await probe.binder.transact_async(LOG, data, flags=FLAG_ONEWAY)

    asyncio.run(main())
    with Parcel() as data, Parcel() as reply:
        data.write_int(100)
        assert probe.binder.transact(GET_LOG, data, reply, timeout=scaled(20))
        assert reply.read_int_list() == [7] * 100
        assert reply.read_int_list() == list(range(100))


def use_inherited_proxy(proxy: Proxy) -> None:
    assert echo(proxy, "from a forked child") == "from a forked child"
    assert whoami(proxy)[0] == os.getpid()


def test_a_proxy_inherited_through_fork_reconnects(
    probe: binder.ServiceProcess, children: Any
) -> None:
    assert echo(probe.binder, "parent") == "parent"
    children.run(FORK, use_inherited_proxy, probe.binder, timeout=scaled(20))
    assert echo(probe.binder, "parent again") == "parent again"


def test_the_thread_pool_serves_calls_concurrently(probe: binder.ServiceProcess) -> None:
    # Each call waits in the service at a barrier that opens only when all of them are
    # inside on_transact at once: served one after the other, they would all fail.
    arrivals: list[int] = []

    def meet() -> None:
        with Parcel() as reply:
            assert probe.binder.transact(RENDEZVOUS, None, reply, timeout=scaled(30))
            arrivals.append(reply.read_int())

    callers = [threading.Thread(target=meet) for _ in range(CONCURRENT_CALLS)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join(60)
    assert sorted(arrivals) == list(range(CONCURRENT_CALLS))


# -- load --------------------------------------------------------------------------------------


def hammer(name: str, client_base: int, threads: int, calls: int) -> None:
    failures: list[BaseException] = []

    def work(client: int) -> None:
        try:
            with binder.get_service(name) as proxy:
                for i in range(calls):
                    text = f"client {client} call {i}"
                    assert echo(proxy, text, timeout=scaled(30)) == text
                pid = whoami(proxy)[0]
                assert pid == os.getpid()
        except BaseException as exc:
            failures.append(exc)

    workers = [threading.Thread(target=work, args=(client_base + t,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert not failures, failures[:3]


@pytest.mark.timeout(90)
def test_hundred_clients_times_hundred_transactions(
    probe: binder.ServiceProcess, children: Any
) -> None:
    processes, threads, calls = 4, 25, 100
    procs = [
        children.start(FORK, hammer, probe.name, p * threads, threads, calls)
        for p in range(processes)
    ]
    for proc in procs:
        children.join(proc, 80)
    assert echo(probe.binder, "after the storm") == "after the storm"


# -- the directory -----------------------------------------------------------------------------


def test_list_services_and_names() -> None:
    name = f"test.listed.{os.getpid()}"
    with binder.add_service(name, ProbeService()) as service:
        assert name in binder.list_services()
        assert stat.S_ISSOCK(os.stat(service.path).st_mode)
        with pytest.raises(FileExistsError):
            binder.add_service(name, ProbeService())
    assert name not in binder.list_services()
    assert not os.path.exists(service.path)
    for bad in ["", ".hidden", "a/b", "x" * 81, "-x", "sp ace"]:
        with pytest.raises(ValueError, match="invalid service name"):
            binder.add_service(bad, ProbeService())


def test_a_stale_socket_is_replaced() -> None:
    import socket

    name = f"test.stale.{os.getpid()}"
    path = os.path.join(binder.service_directory(), name)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    stale.bind(path)
    stale.close()  # a crashed service leaves its socket behind
    with pytest.raises(ServiceNotFoundError):
        binder.get_service(name, timeout=scaled(0.1))
    with binder.add_service(name, ProbeService()):  # takes the name over
        assert binder.get_service(name).ping()
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    stale.bind(path)
    stale.close()
    assert name not in binder.list_services()  # and removes what is left behind
    assert not os.path.exists(path)


def test_get_service_waits_for_a_late_service() -> None:
    name = f"test.late.{os.getpid()}"
    services: list[binder.Service] = []
    waiting = threading.Event()

    def publish_late() -> None:
        waiting.wait(10)
        time.sleep(0.3)  # let get_service find nothing and start waiting
        services.append(binder.add_service(name, Binder()))

    timer = threading.Thread(target=publish_late)
    timer.start()
    try:
        assert name not in binder.list_services()
        waiting.set()
        with binder.get_service(name, timeout=scaled(10)) as proxy:
            assert proxy.ping()
        # The service appeared while get_service was waiting, not before it was called.
        assert len(services) == 1
    finally:
        timer.join()
        for service in services:
            service.close()


def test_default_directory_is_private(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    directory = binder.service_directory()
    assert directory == str(runtime / "ashmem")
    st = os.stat(directory)
    assert stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == os.geteuid()
    os.chmod(directory, 0o777)
    with pytest.raises(PermissionError, match="writable by others"):
        binder.service_directory()


@needs_root
def test_fallback_directory_owned_by_someone_else_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    planted = tmp_path / f"ashmem-{os.geteuid()}"
    planted.mkdir(mode=0o700)
    os.chown(planted, NOBODY, NOBODY)
    with pytest.raises(PermissionError, match="belongs to uid 65534"):
        binder.service_directory()


def test_start_service_reports_a_crashing_target() -> None:
    with pytest.raises(ChildProcessError, match="exited with code 1"):
        binder.start_service(_broken_target, f"test.broken.{os.getpid()}")


def _broken_target() -> Binder:
    raise RuntimeError("this service cannot start")


def test_start_service_binds_to_a_running_service(probe: binder.ServiceProcess) -> None:
    with binder.start_service(ProbeService, probe.name) as again:
        assert not again.started
        assert again.pid == probe.pid
        assert again.stop() is None
    assert probe.binder.ping()  # stop() left the process it did not start alone


_NO_EXAMPLE = {"serve"}  # blocks until SIGTERM: its docstring shows a service main instead


def test_public_names_are_exported_once_with_docstrings() -> None:
    assert len(binder.__all__) == len(set(binder.__all__))
    for name in binder.__all__:
        value = getattr(binder, name)
        if typing.get_origin(value) is not None:  # a type alias (Policy, DeathRecipient)
            continue
        if inspect.isclass(value) or inspect.isfunction(value):
            assert (value.__doc__ and ">>>" in value.__doc__) or name in _NO_EXAMPLE, name
    assert issubclass(binder.BadParcel, ashmem.MessageError)
    assert issubclass(binder.DeadObjectError, ashmem.Error)


# -- first-hour errors (issue 13): types named, public module shown, no main guard ------------


@pytest.mark.parametrize(
    ("args", "kwargs", "expected"),
    [
        (("1",), {}, "code must be an int"),
        ((1, b"abc"), {}, "data must be a Parcel"),
        ((1, None, b"abc"), {}, "reply must be a Parcel"),
        ((1, None, None, "1"), {}, "flags must be an int"),
        ((1,), {"timeout": "5"}, "timeout must be a number"),
    ],
)
def test_transact_names_the_expected_type(
    probe: binder.ServiceProcess, args: tuple[Any, ...], kwargs: dict[str, Any], expected: str
) -> None:
    with pytest.raises(TypeError, match=expected):
        probe.binder.transact(*args, **kwargs)
    with pytest.raises(TypeError, match=expected):
        asyncio.run(probe.binder.transact_async(*args, **kwargs))
    assert echo(probe.binder, "still fine") == "still fine"


def test_directory_calls_name_the_expected_type() -> None:
    with pytest.raises(TypeError, match="name must be a str"):
        binder.get_service(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="timeout must be a number"):
        binder.get_service("x", timeout="1")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="needs a Binder"):
        binder.add_service("x", object())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="target must be a Binder subclass"):
        binder.start_service("name", "target")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="hello_timeout must be a number"):
        binder.set_limits(hello_timeout="5")
    with pytest.raises(TypeError, match="unknown binder limit"):
        binder.set_limits(nonsense=1)


def test_binder_errors_show_their_public_module() -> None:
    for error in (BadParcel, DeadObjectError, RemoteError, ServiceNotFoundError):
        assert error.__module__ == "ashmem.binder"
        assert getattr(binder, error.__name__) is error
    assert binder.ServiceBusyError.__module__ == "ashmem.binder"


_UNGUARDED = """
from ashmem.binder import Binder, start_service

class Greeter(Binder):
    pass

start_service(Greeter, "test.unguarded.{pid}", timeout=20)
"""


def test_start_service_without_a_main_guard_says_so_in_the_caller(tmp_path: Any) -> None:
    import subprocess
    import sys

    script = tmp_path / "unguarded.py"
    script.write_text(_UNGUARDED.format(pid=os.getpid()))
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=scaled(60)
    )
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("RuntimeError") and "if __name__ ==" in last


def test_start_service_reports_why_the_child_failed() -> None:
    with pytest.raises(ChildProcessError, match="RuntimeError: this service cannot start"):
        binder.start_service(_broken_target, f"test.broken.why.{os.getpid()}")


class Held(Binder):
    """One-way calls wait at a gate; two-way calls answer at once."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.delivered: list[int] = []

    def on_transact(self, code: int, data: Parcel, reply: Parcel, flags: int) -> bool:
        if flags & FLAG_ONEWAY:
            self.entered.set()
            assert self.gate.wait(30)
            self.delivered.append(data.read_int())
        return True


def test_statistics_show_the_pool_its_backlog_and_refusals() -> None:
    name = f"test.statistics.{os.getpid()}"
    held = Held()

    def backlog() -> int:
        return binder.statistics().oneway_backlog.get(f"service {name!r}", -1)

    with binder.add_service(name, held), binder.get_service(name) as proxy:
        before = binder.statistics()
        assert proxy.transact(ECHO, timeout=scaled(10))
        after = binder.statistics()
        assert after.calls_served == before.calls_served + 1
        assert after.threads >= 1 and 0 <= after.idle_threads <= after.threads
        assert after.connections >= 1
        assert backlog() == 0
        # One one-way call held inside on_transact, three queued behind it (one at a time),
        # each from its own connection: the thread delivering reads no more of its own.
        senders = [binder.get_service(name) for _ in range(3)]
        try:
            for value, sender in enumerate([proxy, *senders]):
                with Parcel() as data:
                    data.write_int(value)
                    sender.transact(ECHO, data, flags=FLAG_ONEWAY)
                assert held.entered.wait(10)
                deadline = time.monotonic() + 10
                while backlog() != value and time.monotonic() < deadline:
                    time.sleep(0.01)
                assert backlog() == value
            assert held.delivered == []
            held.gate.set()
        finally:
            for sender in senders:
                sender.close()
        assert proxy.transact(ECHO, timeout=scaled(10))  # two-way calls are served meanwhile
        deadline = time.monotonic() + 10
        while len(held.delivered) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert held.delivered == [0, 1, 2, 3] and backlog() == 0
        # A peer that speaks garbage is refused, and counted.
        refused = binder.statistics().refused_connections
        junk = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        junk.settimeout(10)
        junk.connect(os.path.join(binder.service_directory(), name))
        junk.send(b"junk" * 8)
        assert junk.recv(4096)[3] == 3  # REFUSED
        junk.close()
        assert binder.statistics().refused_connections == refused + 1


def test_async_one_way_send_does_not_block_the_loop_on_a_stalled_connect() -> None:
    # The service is stopped (SIGSTOP): a new connection is queued by the kernel but never
    # welcomed, so the one-way channel's connect waits. Other coroutines must keep running
    # meanwhile; the send completes once the service runs again.
    with binder.start_service(
        ProbeService, f"test.stalled.{os.getpid()}", timeout=scaled(30)
    ) as service:
        proxy = service.binder
        assert proxy.ping(timeout=scaled(10))
        os.kill(service.pid, signal.SIGSTOP)
        # A fallback: if the loop were blocked, nothing below could send SIGCONT.
        rescue = threading.Timer(20, os.kill, (service.pid, signal.SIGCONT))
        rescue.start()
        events: list[str] = []

        async def send() -> None:
            with Parcel() as data:
                data.write_int(1)
                data.write_int(1)
                await proxy.transact_async(LOG, data, flags=FLAG_ONEWAY, timeout=scaled(30))
            events.append("sent")

        async def tick() -> None:
            for _ in range(20):
                await asyncio.sleep(0.01)
            events.append("ticked")
            os.kill(service.pid, signal.SIGCONT)

        async def main() -> None:
            await asyncio.gather(send(), tick())

        try:
            asyncio.run(main())
        finally:
            rescue.cancel()
            os.kill(service.pid, signal.SIGCONT)
        assert events == ["ticked", "sent"]
        assert echo(proxy, "after", timeout=scaled(10)) == "after"
