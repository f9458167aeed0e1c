"""ashmem.binder against hostile peers: the six findings of issue 7, each as an attack on a
live service in its own process, then the service must answer a normal call (with a timeout:
a bound, not a measurement) and its descriptor count and resident memory must come back near
their baseline.

Foreign-uid attackers are forked children that drop to uid/gid 65534 with ``os.setresgid`` /
``os.setresuid``; they need root and are skipped otherwise. Attackers report each phase over a
pipe, so the tests assert the order of events, never elapsed time.
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import logging
import multiprocessing
import os
import resource
import select
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from ashmem import binder
from ashmem.binder import (
    FIRST_CALL_TRANSACTION,
    FLAG_ONEWAY,
    Binder,
    DeadObjectError,
    Parcel,
    Proxy,
    ServiceBusyError,
    ServiceNotFoundError,
    _pool,
    _wire,
)

from .conftest import scaled

pytestmark = pytest.mark.timeout(90)

ECHO = FIRST_CALL_TRANSACTION
HOLD = 2  # one-way: wait until released, then count the message
RELEASE = 3
COUNT = 4
CALL_BACK = 5  # read a binder, call it (two-way), reply with what it said
WAIT_PIPE = 6  # wait until the pipe (first descriptor) is readable, then reply
KEEP = 7  # keep the descriptor sent (the application holds it)
DROP_KEPT = 8  # close every descriptor kept
NOBODY = 65534
FORK = multiprocessing.get_context("fork")

needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root to run an attacker under a second uid (os.setresuid)"
)


class Target(Binder):
    """The service under attack."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.held = 0
        self.lock = threading.Lock()
        self.kept: list[int] = []

    def on_transact(self, code: int, data: Parcel, reply: Parcel, flags: int) -> bool:
        if code == ECHO:
            reply.write_string(data.read_string())
        elif code == HOLD:
            self.gate.wait(60)
            with self.lock:
                self.held += 1
        elif code == RELEASE:
            self.gate.set()
        elif code == KEEP:
            self.kept.append(data.read_file_descriptor())
        elif code == DROP_KEPT:
            for fd in self.kept:
                os.close(fd)
            self.kept.clear()
        elif code == WAIT_PIPE:
            pipe = data.read_file_descriptor()
            try:
                select.select([pipe], [], [], 30)
            finally:
                os.close(pipe)
        elif code == COUNT:
            with self.lock:
                reply.write_int(self.held)
        elif code == CALL_BACK:
            callback = data.read_binder()
            assert callback is not None
            with callback, Parcel() as ask, Parcel() as answer:
                ask.write_string(data.read_string())
                callback.transact(ECHO, ask, answer, timeout=scaled(10))
                reply.write_string(answer.read_string())
                reply.write_long(answer.read_long())
        else:
            return False
        return True


def make_target(limits: dict[str, Any], nofile: int | None, threads: int | None) -> Binder:
    """Runs in the service process: its limits, its RLIMIT_NOFILE, its pool size."""
    if limits:
        binder.set_limits(**limits)
    if nofile is not None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
    if threads is not None:
        binder.set_max_threads(threads)
    return Target()


@contextlib.contextmanager
def target(
    tag: str,
    limits: dict[str, Any] | None = None,
    nofile: int | None = None,
    threads: int | None = None,
) -> Iterator[binder.ServiceProcess]:
    name = f"test.hostile.{tag}.{os.getpid()}"
    args = (limits or {}, nofile, threads)
    with binder.start_service(make_target, name, args=args, timeout=scaled(30)) as service:
        assert service.binder.ping()
        yield service


def fds_of(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def echo(proxy: Proxy, text: str, timeout: float = 5.0) -> str | None:
    with Parcel() as data, Parcel() as reply:
        data.write_string(text)
        assert proxy.transact(ECHO, data, reply, timeout=timeout)
        return reply.read_string()


def rss_of(pid: int) -> int:
    """Resident memory of ``pid`` in bytes (VmRSS)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


@contextlib.contextmanager
def attacked(service: binder.ServiceProcess, margin: int = 4) -> Iterator[None]:
    """Around an attack: afterwards the service answers a normal call (with a timeout),
    and its descriptors and resident memory come back near what they were before."""
    fds, rss = fds_of(service.pid), rss_of(service.pid)
    yield
    assert echo(service.binder, "still here") == "still here"
    deadline = time.monotonic() + 20
    while fds_of(service.pid) > fds + margin and time.monotonic() < deadline:
        time.sleep(0.02)
    assert fds_of(service.pid) <= fds + margin, "the service kept what the attack sent"
    assert rss_of(service.pid) <= rss + RSS_MARGIN, "the attack grew the service's memory"


#: What a service's resident memory may grow by across an attack (allocator noise).
RSS_MARGIN = 32 << 20


def path_of(service: binder.ServiceProcess) -> str:
    return os.path.join(binder.service_directory(), service.name)


def host_address(service: binder.ServiceProcess) -> bytes:
    """The service process's callback endpoint (an abstract socket anyone can see)."""
    ref = service.binder._ref
    assert ref is not None
    return ref[0]


def drop_to_nobody() -> None:
    os.setgroups([])
    os.setresgid(NOBODY, NOBODY, NOBODY)
    os.setresuid(NOBODY, NOBODY, NOBODY)


def refusal_code(sock: socket.socket) -> int | None:
    """The REFUSED code the service sent on ``sock`` (None: closed without one)."""
    try:
        msg = sock.recv(_wire.MAX_MESSAGE)
    except OSError:
        return None
    if len(msg) >= _wire.HEADER_SIZE and msg[3] == _wire.REFUSED:
        return _wire.HEADER.unpack_from(msg)[6]
    return None


def hold_connections(
    address: str | bytes, count: int, as_nobody: bool, report: Any, release: Any
) -> None:
    """Attacker: open ``count`` connections without HELLO and hold them; report how many
    connected, then (after ``release``) how many the service had closed and why."""
    resource.setrlimit(resource.RLIMIT_NOFILE, (count + 256, count + 256))
    if as_nobody:
        drop_to_nobody()
    socks = []
    deadline = time.monotonic() + 40
    while len(socks) < count and time.monotonic() < deadline:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sock.setblocking(False)
        try:
            sock.connect(address)
        except BlockingIOError:  # the backlog is full: let the service catch up
            sock.close()
            time.sleep(0.001)
            continue
        socks.append(sock)
    report.send(("connected", len(socks)))
    release.recv()
    closed, codes = 0, set()
    deadline = time.monotonic() + 30
    poller = select.poll()
    by_fd = {sock.fileno(): sock for sock in socks}
    for fd in by_fd:
        poller.register(fd, select.POLLIN | select.POLLRDHUP)
    while by_fd and time.monotonic() < deadline:
        for fd, _ in poller.poll(500):
            codes.add(refusal_code(by_fd.pop(fd)))
            poller.unregister(fd)
            closed += 1
    report.send(("closed", closed, sorted(c for c in codes if c is not None)))
    for sock in socks:
        sock.close()


@contextlib.contextmanager
def attacker(target_fn: Any, *args: Any) -> Iterator[tuple[Any, Any]]:
    """Run ``target_fn(*args, report, release)`` in a forked child; killed if the test fails."""
    report_parent, report_child = FORK.Pipe()
    release_parent, release_child = FORK.Pipe()
    child = FORK.Process(target=target_fn, args=(*args, report_child, release_child))
    child.daemon = True
    child.start()
    try:
        yield report_parent, release_parent
        child.join(60)
        assert child.exitcode == 0
    finally:
        if child.is_alive():
            child.kill()
            child.join(5)


# -- 1. another uid holds connections on the callback endpoint -------------------------------


@needs_root
def test_a_foreign_uid_cannot_hold_the_callback_endpoint() -> None:
    with (
        target("endpoint") as service,
        attacked(service),
        attacker(hold_connections, host_address(service), 1500, True) as (report, release),
    ):
        assert report.recv() == ("connected", 1500)
        # While uid 65534 holds 1,500 connections, the service holds none of them...
        assert echo(service.binder, "owner") == "owner"
        fresh = binder.get_service(service.name, timeout=scaled(5))  # and its owner gets in
        assert echo(fresh, "new connection") == "new connection"
        fresh.close()
        release.send("go")
        # ...because each was refused at accept, with a reason, before anything was read.
        assert report.recv() == ("closed", 1500, [_wire.REFUSED_PERMISSION])


# -- 1b. the same uid opens 10,000 connections and never says HELLO -------------------------


def test_ten_thousand_silent_connections_are_bounded_and_timed_out() -> None:
    limits = {"hello_timeout": 1.0}
    with target("silent", limits) as service:
        before = fds_of(service.pid)
        with attacked(service):
            with attacker(hold_connections, path_of(service), 10_000, False) as (report, release):
                assert report.recv() == ("connected", 10_000)
                # Connections already open keep working during the attack.
                assert echo(service.binder, "during") == "during"
                assert fds_of(service.pid) <= before + binder.get_limits().max_pending + 8
                release.send("go")
                kind, closed, codes = report.recv()
                # Every one was closed by the service: turned away (busy) or timed out.
                assert (kind, closed) == ("closed", 10_000)
                assert set(codes) <= {_wire.REFUSED_BUSY}
            fresh = binder.get_service(service.name, timeout=scaled(5))
            assert echo(fresh, "after") == "after"
            fresh.close()


# -- 2. descriptors whose close blocks (SO_LINGER) -------------------------------------------


@contextlib.contextmanager
def lingering_sockets(count: int, linger: int = 30) -> Iterator[list[socket.socket]]:
    """TCP sockets whose last close blocks for ``linger`` s: unsent data, SO_LINGER on."""
    listener = socket.create_server(("127.0.0.1", 0))
    clients, servers = [], []
    try:
        for _ in range(count):
            client = socket.create_connection(listener.getsockname())
            server, _ = listener.accept()
            servers.append(server)  # never reads
            server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            client.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                while True:
                    client.send(b"x" * 65536)
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _linger(1, linger))
            clients.append(client)
        yield clients
    finally:
        for server in servers:  # reading side first: then the clients' data is dropped
            server.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _linger(1, 0))
            server.close()
        for client in clients:
            with contextlib.suppress(OSError):
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _linger(0, 0))
            client.close()
        listener.close()


def _linger(on: int, seconds: int) -> bytes:
    import struct

    return struct.pack("ii", on, seconds)


def connect_raw(service: binder.ServiceProcess) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.settimeout(10)
    sock.connect(path_of(service))
    sock.send(_wire.pack(_wire.HELLO, 0, 0, 0, 0))
    assert sock.recv(_wire.MAX_MESSAGE)[3] == _wire.WELCOME
    return sock


def test_lingering_sockets_from_a_peer_cannot_freeze_the_pool() -> None:
    # One pool thread, plus the main thread that serve() joins: two threads to freeze.
    with target("linger", threads=1) as service, lingering_sockets(16) as socks, attacked(service):
        release_read, release_write = os.pipe()
        calls = []
        try:
            # Three calls, each carrying four lingering sockets; each waits for our signal
            # (connected first: the calls take both threads).
            calls = [connect_raw(service) for _ in range(3)]
            for i, call in enumerate(calls):
                with Parcel() as data:
                    data.write_file_descriptor(release_read)
                    for sock in socks[4 * i : 4 * i + 4]:
                        data.write_file_descriptor(sock.fileno())
                    out = data._outgoing()
                    flags, parts, fds = out.flags, out.parts, out.fds
                    header = _wire.pack(_wire.TRANSACTION, flags, len(fds), WAIT_PIPE, 1)
                    call.sendmsg([header, *parts], _wire.rights(fds))
            # Junk before HELLO carrying four more.
            junk = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            junk.connect(path_of(service))
            junk.sendmsg([b"junk" * 8], _wire.rights([s.fileno() for s in socks[12:]]))
            calls.append(junk)
            for sock in socks:
                sock.close()  # from now on the service holds the last references
            os.write(release_write, b"go")
            for call in calls[:3]:
                assert call.recv(_wire.MAX_MESSAGE)[3] == _wire.REPLY
            # The service closed those sockets without blocking a thread: it answers.
            assert echo(service.binder, "not frozen", timeout=scaled(5)) == "not frozen"
        finally:
            for call in calls:
                call.close()
            os.close(release_read)
            os.close(release_write)


# -- 3. sparse and oversized spilled payloads ------------------------------------------------


def sealed_memfd(size: int, written: list[tuple[int, int]]) -> int:
    """A memfd of ``size`` bytes, sealed like a spill, with only ``written`` ranges written.
    Its Parcel is one string spanning all of it, so that reading it would touch every page
    (and a shmem hole allocates a page when read)."""
    fd = os.memfd_create("hostile-spill", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, size)
    header = b"\x06" + (size - 5).to_bytes(4, "little")
    for offset, length in written:
        os.pwrite(fd, (header if offset == 0 else b"").ljust(length, b"x"), offset)
    seals = 0x0002 | 0x0004 | 0x0008  # SHRINK | GROW | WRITE
    fcntl.fcntl(fd, 1033, seals)  # F_ADD_SEALS
    return fd


def send_spilled(service: binder.ServiceProcess, fd: int) -> tuple[int | None, str]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.settimeout(10)
    try:
        sock.connect(path_of(service))
        sock.send(_wire.pack(_wire.HELLO, 0, 0, 0, 0))
        assert sock.recv(_wire.MAX_MESSAGE)[3] == _wire.WELCOME
        header = _wire.pack(_wire.TRANSACTION, _wire.F_SPILLED, 1, ECHO, 1)
        sock.sendmsg([header], _wire.rights([fd]))
        msg = sock.recv(_wire.MAX_MESSAGE)
        kind = msg[3] if len(msg) >= _wire.HEADER_SIZE else None
        return kind, msg[_wire.HEADER_SIZE :].decode("utf-8", "replace")
    finally:
        sock.close()


MIB = 1 << 20


@pytest.mark.parametrize(
    ("where", "written"),
    [
        ("start", [(60 * MIB, 4 * MIB)]),
        ("middle", [(0, MIB), (63 * MIB, MIB)]),
        ("end", [(0, MIB)]),
    ],
)
def test_a_spill_with_holes_is_refused_before_it_is_mapped(
    where: str, written: list[tuple[int, int]]
) -> None:
    with target(f"sparse-{where}") as service, attacked(service):
        fd = sealed_memfd(64 * MIB, written)  # mostly holes
        try:
            kind, reason = send_spilled(service, fd)
        finally:
            os.close(fd)
        assert kind == _wire.REFUSED and "hole at offset" in reason


def test_a_spill_larger_than_max_spill_is_refused() -> None:
    with target("maxspill", {"max_spill": 4 * MIB}) as service, attacked(service):
        fd = sealed_memfd(8 * MIB, [(0, 8 * MIB)])
        try:
            kind, reason = send_spilled(service, fd)
        finally:
            os.close(fd)
        assert kind == _wire.REFUSED and "max_spill" in reason


# -- 4. a one-way flood with 63 descriptors per message -------------------------------------


def test_a_oneway_flood_with_descriptors_cannot_starve_other_callers() -> None:
    with target("flood", nofile=1024) as service, attacked(service):
        read_end, write_end = os.pipe()
        sent = [0] * 8
        stop = threading.Event()

        def flood(index: int) -> None:
            with binder.get_service(service.name, timeout=scaled(5)) as proxy:
                while not stop.is_set():
                    with Parcel() as data:
                        for _ in range(63):
                            data.write_file_descriptor(write_end)
                        try:
                            proxy.transact(HOLD, data, None, FLAG_ONEWAY, timeout=scaled(0.5))
                        except TimeoutError:
                            return  # pushed back: the service stopped reading us
                    sent[index] += 1

        flooders = [threading.Thread(target=flood, args=(i,)) for i in range(8)]
        for thread in flooders:
            thread.start()
        for thread in flooders:
            thread.join(60)
        try:
            assert sum(sent) > 0
            # The service stayed below its descriptor limit, and legitimate calls with a
            # descriptor all go through, none blamed for the flood.
            assert fds_of(service.pid) < 1024 - binder.get_limits().fd_reserve // 2
            for i in range(20):
                with Parcel() as data, Parcel() as reply:
                    data.write_string(f"legit {i}")
                    data.write_file_descriptor(read_end)
                    assert service.binder.transact(ECHO, data, reply, timeout=scaled(5))
                    assert reply.read_string() == f"legit {i}"
        finally:
            stop.set()
            service.binder.transact(RELEASE, timeout=scaled(10))
            os.close(read_end)
            os.close(write_end)
        # Nothing queued was lost: every message sent was delivered.
        deadline = time.monotonic() + 30
        delivered = -1
        while time.monotonic() < deadline:
            with Parcel() as reply:
                service.binder.transact(COUNT, None, reply, timeout=scaled(5))
                delivered = reply.read_int()
            if delivered >= sum(sent):
                break
            time.sleep(0.05)
        assert delivered == sum(sent)


# -- 5. a stopped service with a full backlog ------------------------------------------------


def test_directory_calls_are_bounded_against_a_stopped_service() -> None:
    with target("stopped") as service, attacked(service):
        os.kill(service.pid, signal.SIGSTOP)
        junk = []
        try:
            while True:  # fill its listen backlog
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
                sock.setblocking(False)
                try:
                    sock.connect(path_of(service))
                except BlockingIOError:
                    sock.close()
                    break
                junk.append(sock)
            assert service.name in binder.list_services()  # stopped, but alive
            with pytest.raises(FileExistsError):
                binder.add_service(service.name, Binder())
            with pytest.raises((ServiceBusyError, TimeoutError)):
                binder.get_service(service.name, timeout=scaled(0.5))
        finally:
            for sock in junk:
                sock.close()
            os.kill(service.pid, signal.SIGCONT)


# -- 6. a service that resets new connections ------------------------------------------------


def test_get_service_turns_resets_into_library_errors() -> None:
    directory = tempfile.mkdtemp(prefix="ashmem-reset-")
    path = os.path.join(directory, "resetter")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(path)
    listener.listen(16)
    stop = threading.Event()

    def reset_everyone() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            # Wait for the HELLO, then close with it unread: the client sees ECONNRESET.
            select.select([conn], [], [], 5)
            conn.close()

    thread = threading.Thread(target=reset_everyone)
    thread.start()
    try:
        with pytest.raises(ServiceNotFoundError):
            binder.get_service("resetter", directory=directory, timeout=scaled(0.5))
    finally:
        stop.set()
        thread.join(10)
        listener.close()
        os.unlink(path)
        os.rmdir(directory)


# -- nested calls and callback lifetime ------------------------------------------------------


class Callback(Binder):
    def __init__(self, back: Proxy | None = None) -> None:
        self.back = back
        self.threads: list[int] = []

    def on_transact(self, code: int, data: Parcel, reply: Parcel, flags: int) -> bool:
        self.threads.append(threading.get_ident())
        text = data.read_string()
        if self.back is not None:  # call the service again, from inside its call to us
            text = echo(self.back, f"{text}, again")
        reply.write_string(f"{text}, called back")
        reply.write_long(threading.get_ident())
        return True


class Blocker(Binder):
    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def on_transact(self, code: int, data: Parcel, reply: Parcel, flags: int) -> bool:
        self.entered.set()
        self.release.wait(60)
        return True


def nested_with_one_thread_each(name: str) -> None:
    """In a fresh (forked) process: our pool has one thread, and it is busy."""
    binder.set_max_threads(1)
    blocker = Blocker()
    service = binder.add_service(f"{name}.blocker", blocker)
    busy = threading.Thread(
        target=lambda: binder.get_service(f"{name}.blocker").transact(ECHO, timeout=scaled(60))
    )
    busy.start()
    assert blocker.entered.wait(10)  # our only pool thread is taken
    remote = binder.get_service(name, timeout=scaled(10))
    callback = Callback(back=remote)
    with Parcel() as data, Parcel() as reply:
        data.write_binder(callback)
        data.write_string("hello")
        assert remote.transact(CALL_BACK, data, reply, timeout=scaled(20))
        assert reply.read_string() == "hello, again, called back"
        # The callback ran on this thread, the one waiting for the reply.
        assert reply.read_long() == threading.get_ident()
    assert callback.threads == [threading.get_ident()]
    blocker.release.set()
    busy.join(10)
    service.close()


def test_a_nested_call_runs_on_the_waiting_thread_with_pools_of_one(children: Any) -> None:
    with target("nested", threads=1) as service:
        children.run(FORK, nested_with_one_thread_each, service.name, timeout=scaled(60))
        assert echo(service.binder, "after") == "after"


def test_a_callback_lives_as_long_as_the_parcel_carrying_it() -> None:
    with target("lifetime") as service, Parcel() as data, Parcel() as reply:
        data.write_binder(Callback())  # no other reference
        data.write_string("kept")
        gc.collect()
        assert service.binder.transact(CALL_BACK, data, reply, timeout=scaled(20))
        assert reply.read_string() == "kept, called back"


# -- errors name what went wrong -------------------------------------------------------------


def test_a_truncated_message_says_which_side_ran_out() -> None:
    msg = _wire.pack(_wire.TRANSACTION, 0, 3, ECHO, 1)
    ours = _wire._diagnose(msg, int(socket.MSG_CTRUNC), 1)
    assert "this process ran out of descriptors" in str(ours) and "peer did nothing" in str(ours)
    full = _wire.pack(_wire.TRANSACTION, 0, 64, ECHO, 1)
    theirs = _wire._diagnose(full, int(socket.MSG_CTRUNC), 64)
    assert "peer attached more than 64" in str(theirs)


def test_a_dead_service_is_a_dead_object_not_a_socket_error() -> None:
    with target("dies") as service:
        proxy = binder.get_service(service.name, timeout=scaled(5))
        os.kill(service.pid, signal.SIGKILL)
        with pytest.raises(DeadObjectError):
            for _ in range(3):
                echo(proxy, "anyone?")
        proxy.close()


# -- near RLIMIT_NOFILE: new work is refused, and the caller is told it is not its fault ----


def test_a_service_near_its_descriptor_limit_refuses_new_work_with_a_clear_error() -> None:
    with target("nofile", nofile=160) as service, attacked(service):
        read_end, write_end = os.pipe()
        try:
            accepted = 0
            with pytest.raises(ServiceBusyError) as refused:
                for _ in range(200):  # the application keeps every descriptor it gets
                    with Parcel() as data:
                        data.write_file_descriptor(read_end)
                        service.binder.transact(KEEP, data, timeout=scaled(5))
                    accepted += 1
            # Refused before the limit itself, saying that the service ran short...
            assert 0 < accepted < 160
            assert "out of descriptors" in str(refused.value)
            assert "MSG_CTRUNC" not in str(refused.value)
            # ...and calls without descriptors still go through.
            assert echo(service.binder, "no fds") == "no fds"
            service.binder.transact(DROP_KEPT, timeout=scaled(5))
            with Parcel() as data:  # once the application let go, descriptors work again
                data.write_file_descriptor(read_end)
                assert service.binder.transact(KEEP, data, timeout=scaled(5))
            service.binder.transact(DROP_KEPT, timeout=scaled(5))
        finally:
            os.close(read_end)
            os.close(write_end)


# -- our own EMFILE: accept backs off, and recovers ------------------------------------------


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def out_of_descriptors(name: str, report: Any, release: Any) -> None:
    """Service side, in a forked child: serve, then use up every descriptor we may open."""
    records = _Records()
    logging.getLogger("ashmem.binder").addHandler(records)
    service = binder.add_service(name, Target())
    state = _pool.current_state()
    assert state is not None
    open_now = len(os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (open_now + 16, open_now + 16))
    spare = []
    with contextlib.suppress(OSError):
        while True:
            spare.append(os.dup(0))
    report.send("exhausted")
    deadline = time.monotonic() + 20
    while not state._paused and time.monotonic() < deadline:  # the client's connect arrived
        time.sleep(0.01)
    paused = bool(state._paused)
    for fd in spare:
        os.close(fd)
    report.send(("paused", paused))
    release.recv()  # the client got in: the sweep re-armed the listener
    failures = [m for m in records.messages if "cannot accept" in m]
    report.send(("accept failures logged", len(failures)))
    service.close()


def test_running_out_of_descriptors_backs_off_and_recovers() -> None:
    name = f"test.hostile.emfile.{os.getpid()}"
    with attacker(out_of_descriptors, name) as (report, release):
        assert report.recv() == "exhausted"
        result: list[Any] = []

        def connect() -> None:
            try:
                with binder.get_service(name, timeout=scaled(30)) as proxy:
                    result.append(echo(proxy, "in at last", timeout=scaled(10)))
            except Exception as exc:  # reported below
                result.append(exc)

        client = threading.Thread(target=connect)
        client.start()
        # The service could not accept: its listener was paused, not spinning...
        assert report.recv() == ("paused", True)
        client.join(40)
        # ...and once descriptors were free again, the client got in.
        assert result == ["in at last"]
        release.send("done")
        kind, logged = report.recv()
        assert kind == "accept failures logged" and 1 <= logged <= 3
