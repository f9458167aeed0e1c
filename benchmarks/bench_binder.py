"""Binder: transaction round trip, one-way throughput and a 64 MiB payload, against peers.

Every server below is a separate process, and every peer runs in the same invocation; rounds
interleave the peers (a, b, c, a, b, c, ...) so that load from elsewhere hits them alike.
Each table cell is the median of the per-round means.

Round trip (this process calls, the server answers):

ashmem.binder
    ``proxy.transact(code)`` to a service made with ``start_service`` whose ``on_transact``
    returns True. With a region: a new Parcel, ``write_shared_memory(region)`` (a dup), the
    transact, ``close()``; the service lets its data Parcel close the descriptor.
raw socketpair (the floor)
    ``socket.socketpair()`` (AF_UNIX stream) to a forked echo loop: ``send`` 16 bytes,
    ``recv``. With a region: ``socket.send_fds`` / ``recv_fds`` and the server closes the fd.
raw SOCK_SEQPACKET + recvmsg (binder's transport alone, informative)
    The same echo loop over what binder uses: a SOCK_SEQPACKET socketpair, and ``recvmsg``
    with room for 64 descriptors on both sides. The gap to the floor is the transport's; the
    gap from here to binder is the Python work of a call.
multiprocessing Pipe
    ``Connection.send_bytes`` / ``recv_bytes`` to a forked echo loop. With a region:
    ``multiprocessing.reduction.send_handle`` / ``recv_handle``, then a one-byte answer.
multiprocessing Manager
    A method call on a ``BaseManager`` proxy (``ping()``). With a region: ``take(region)``,
    which pickles the ``ashmem.SharedMemory`` (its fd travels by ``DupFd``); the method closes
    it.

One-way throughput: N ``FLAG_ONEWAY`` transactions with no data from 1 and from 4 client
processes; the clock stops when the service has run all of them (a two-way call waits for
that). Floors for 1 client: a SOCK_SEQPACKET socketpair (one datagram per message, as binder
uses) and a Pipe, each to a forked loop that counts messages.

64 MiB payload: this process holds 64 MiB in a ``bytes`` and sends it; the server gets a
buffer over all of it, touches every page (reads one byte per 4 KiB), answers its length.
Each sample starts after 0.2 s of quiet, so that the clean-up of the previous one (binder
unmaps a spilled payload, freeing its pages, after it has replied) never overlaps it.

ashmem.binder, auto-spill
    ``Parcel.write_bytes(payload)`` + ``transact``: the Parcel is copied once into a new
    region sealed with F_SEAL_WRITE, whose fd is sent; the service reads it in place.
ashmem.binder, region (informative)
    The bytes already sit in a sealed region (made before the clock starts):
    ``write_shared_memory`` + ``transact``; nothing is copied at all.
Connection.send_bytes + recv_bytes
    The same payload through a ``multiprocessing.Pipe``.

Before and after (``--before REV``, e.g. the commit before a change): the binder code of
``REV`` is extracted (``git archive``) into a temporary directory and a driver process runs
this same script on it (``--driver``: an old client against an old service). A second
driver process runs it on the current code, and the "before" rows compare the two drivers,
measured in the same rounds, for the round trips, one-way throughput, the 64 MiB spill, a
new connection and CPU per call. Both sides are then alike: a fresh process with one
service and nothing else. (Measured from this process, which also hosts the other peers,
the current code read 1.03x to 1.08x the CPU per empty round trip of an identical old
copy, and 1.01x to 1.05x with a region fd, in four fixed-layout runs.) ``--before`` is
for the first table; ``--placement-only`` ignores it.

CPU per call (before and after only): wall-clock times on a loaded machine move by tens of
percent from run to run, CPU time much less. For the round trips, the calling thread's CPU
time (``time.thread_time_ns``) plus the service process's, all threads
(``/proc/PID/task/*/schedstat``), over the calls; for one-way calls, the service's alone.

Accept-time check: a new connection (connect, HELLO, WELCOME: ``Proxy._connect``) against
the part of it that checks the peer right after ``accept`` (``SO_PEERCRED``, the endpoint's
policy, the per-uid and pending-HELLO books: ``_ProcessState._admit_connection``, timed
in this process on a socketpair, with the books undone after each call).

CPU placement in the table above: every process (this one, the servers, the binder
service, both ``--before`` drivers and their services, the Manager) runs on one CPU, the
first this process may use. Left to the scheduler, each pair of processes landed on one
core or on two from row to row, and the same raw ping-pong takes about 5 µs on one core and 75 µs
across two here, so one row could read binder slower than a Manager call for no reason
but placement; the placement table below measures both placements on purpose.

Placement and load (a second table, ``binder-placement``): the same empty round trip and
one-way rate with the caller and the serving process pinned (``os.sched_setaffinity`` on
this thread and on every thread of the service process, or of the raw server): both on one
core, or on two different cores; quiet, then busy (``busy_machine``: one CPU-bound process
per core, started and stopped by the benchmark). Each binder figure is compared with its
floor measured under the same placement and load, in the same interleaved rounds:

round trip floor
    A SOCK_SEQPACKET socketpair to a forked echo loop, ``send`` 16 bytes and ``recvmsg``
    with room for 64 descriptors on both sides: the transport binder uses, with none of its
    work. Beside the wall time, the CPU per call of the caller's thread
    (``time.thread_time_ns``) and of the whole serving process (``schedstat``).
one-way floor
    This process sends 16-byte datagrams on a SOCK_SEQPACKET socketpair to a forked loop
    that receives and counts them, as in the table above; for binder, one forked client
    process sends the ``FLAG_ONEWAY`` calls (it inherits the caller's placement) and this
    process waits for the count on the same core.

least Python (bound)
    What any binder written in Python must do per call over one SOCK_SEQPACKET datagram,
    and nothing more, against a forked ``least_server`` under the same placement: the
    caller builds the 16-byte header and checks the reply's (prefix, status, seq); the
    server receives with room for descriptors, checks and unpacks the header, makes a data
    and a reply Parcel and calls ``on_transact``, then sends the reply header. With a
    region: the caller attaches its descriptor to the header as it is (``SCM_RIGHTS``, no
    Parcel and no dup), and the server's data Parcel owns it and closes it (``close()``).
    Its ratio to the floor is the lowest any one-datagram-per-call design can reach here.
    Both sides send and receive as binder's round trips do, with ``ashmem._rights``'s
    ``recv_fds`` and ``send_recv_fds`` (the compiled ``ashmem._speedups`` where it is
    built: an empty call and its reply each sent together with the receive that follows),
    so the bound stays under binder whichever build this install has.
    One-way, as binder sends it: 16-byte records (the header of a one-way call with no
    payload) on a SOCK_STREAM socketpair, one ``send`` each with no check and no lock, to a
    forked ``least_stream_server`` that receives with room for descriptors, as much as is
    queued per ``recvmsg`` (as binder's stream does), and for each record unpacks and
    checks the header, makes a data and a reply Parcel and calls ``on_transact``, which
    counts.

``--placement-only`` runs this table alone (it still rewrites its README section).

``--fixed-layout`` runs everything without address-space layout randomization
(``setarch <machine> -R``), so that two revisions compared with ``--before`` run with the same
layout: with it on, 12 of 94 fresh client and service pairs ran binder's calls about 1.4x
slower for the life of the processes (``profile_layout.py``, three runs).
"""

from __future__ import annotations

import array
import atexit
import contextlib
import multiprocessing
import os
import shlex
import shutil
import socket
import struct
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Callable
from multiprocessing import reduction
from multiprocessing.managers import BaseManager
from typing import Any

import ashmem
from _common import (
    busy_machine,
    fixed_layout_command,
    format_ns,
    format_ratio,
    median,
    parse_args,
    pin,
    publish,
    take_flag,
    verdict,
)
from ashmem import _rights
from ashmem.binder import FLAG_ONEWAY, Binder, Parcel, Proxy, _wire, get_service, start_service

#: Which receives binder (and the bound) use in this process: the tables say it. (A
#: ``--driver`` runs this script on older code, which has no SPEEDUPS.)
RECEIVE = (
    "compiled: ashmem._speedups"
    if getattr(_rights, "SPEEDUPS", False)
    else "pure Python: ashmem._speedups not built, or ASHMEM_NO_SPEEDUPS set"
)

FORK = multiprocessing.get_context("fork")
EMPTY, REGION, ONEWAY, COUNT, BIG = 1, 2, 3, 4, 5
PAGE = 4096
MESSAGE = b"x" * 16  # the size of a binder header: the raw peers move as many bytes
BIG_SIZE = 64 << 20
SETTLE = 0.2  # quiet before each 64 MiB sample: no clean-up of the previous one overlaps it
# Issue 12's targets against the floor under the same placement and load.
ROUND_TRIP_QUIET, ROUND_TRIP_BUSY, ONEWAY_SHARE = 1.3, 1.5, 0.6


def touch(view: Any) -> int:
    """Read one byte of every page, as a consumer of the payload would fault them in."""
    return len(bytes(memoryview(view)[::PAGE]))


class BenchService(Binder):
    def __init__(self) -> None:
        self.count = 0
        self.goal = 1 << 62
        self.done = threading.Condition()

    def on_transact(self, code: int, data: Parcel, reply: Parcel, flags: int) -> bool:
        if code in (EMPTY, REGION):
            return True
        if code == ONEWAY:
            # One at a time (FLAG_ONEWAY), so no lock; wake the waiter only at the goal.
            self.count += 1
            if self.count >= self.goal:
                with self.done:
                    self.done.notify_all()
            return True
        if code == COUNT:
            with self.done:
                self.goal = data.read_long()
                self.done.wait_for(lambda: self.count >= self.goal, timeout=120)
                reply.write_long(self.count)
                self.count, self.goal = 0, 1 << 62
            return True
        if code == BIG:
            if data.data_avail() and data._data[data._pos] == 0x0A:  # a region entry
                with data.read_shared_memory() as shm, shm.map_read_only() as mapping:
                    reply.write_long(touch(mapping) * PAGE)
            else:
                view = data.read_buffer()
                assert view is not None
                reply.write_long(touch(view) * PAGE)
                view.release()
            return True
        return False


# -- peers: servers in forked processes -------------------------------------------------------


def raw_server(sock: socket.socket, with_fd: bool) -> None:
    while True:
        if with_fd:
            data, fds, _, _ = socket.recv_fds(sock, 64, 1)
            for fd in fds:
                os.close(fd)
        else:
            data = sock.recv(64)
        if not data:
            return
        sock.send(data)


def seqpacket_server(sock: socket.socket) -> None:
    while True:
        data, anc, _, _ = sock.recvmsg(_wire.MAX_MESSAGE, _wire.CMSG_SPACE, _wire.RECV_FLAGS)
        if anc:  # the placement table's region round trip sends one
            for fd in _wire.take_fds(anc):
                os.close(fd)
        if not data:
            return
        sock.send(data)


def pipe_server(conn: Any, with_fd: bool) -> None:
    while True:
        if with_fd:
            try:
                fd = reduction.recv_handle(conn)
            except (EOFError, OSError, RuntimeError):
                return
            os.close(fd)
            conn.send_bytes(b"k")
            continue
        try:
            message = conn.recv_bytes()
        except EOFError:
            return
        conn.send_bytes(message)


class ManagedPeer:
    def ping(self) -> None:
        return None

    def take(self, shm: ashmem.SharedMemory) -> None:
        shm.close()


class PeerManager(BaseManager):
    pass


PeerManager.register("ManagedPeer", ManagedPeer)


def counting_server(sock: socket.socket, count: int) -> None:
    while True:
        for _ in range(count):
            if not sock.recv(64):
                return
        sock.send(b"done")


# The least Python a binder call over SOCK_SEQPACKET needs (the placement table's bound):
# the 16-byte header built and checked on both sides, binder's receive with room for
# descriptors (``_wire.recv_fds``; a call may carry them), a data and a reply Parcel and
# ``on_transact`` in the server.
# Nothing else binder does: no argument checks, channel pool, caller identity, thread pool,
# limits or refusals.
_LEAST_HEADER = struct.Struct("<8sII")


def least_prefixes() -> tuple[bytes, bytes, bytes, bytes]:
    """The first 8 header bytes of a plain call, a one-way call, a plain reply and a call
    carrying one descriptor (looked up when used: ``--driver`` runs this script on older
    code, which has no such names)."""
    return (
        _wire.CALL_PREFIX,
        _wire.ONEWAY_PREFIX,
        _wire.pack(_wire.REPLY, 0, 0, 0, 0)[:8],
        _wire.pack(_wire.TRANSACTION, 0, 1, 0, 0)[:8],
    )


class LeastService(Binder):
    """Counts one-way calls; answers two-way calls True."""

    oneways = 0

    def on_transact(self, code: int, data: Parcel, reply: Parcel, flags: int) -> bool:
        if flags:
            self.oneways += 1
        return True


def least_server(sock: socket.socket) -> None:
    """Serve the least-Python two-way calls on ``sock`` (one-way calls have their own
    bound: ``least_stream_server``)."""
    call_prefix, _, reply_prefix, fd_prefix = least_prefixes()
    service = LeastService()
    on_transact = service.on_transact
    recv, send_recv = _wire.recv_fds, _wire.send_recv_fds
    pack, unpack = _LEAST_HEADER.pack, _LEAST_HEADER.unpack_from
    args = (_wire.MAX_MESSAGE, _wire.CMSG_SPACE, _wire.RECV_FLAGS)
    reply = None  # sent with the next receive, as binder's service does
    while True:
        if reply is None:
            msg, fds, mflags = recv(sock, *args)
        else:
            msg, fds, mflags = send_recv(sock, reply, _wire.SEND_FLAGS, *args)
        if not msg:
            return
        if mflags & _wire.TRUNCATED or len(msg) < _wire.HEADER_SIZE:
            raise RuntimeError("least_server: unexpected message")
        prefix, code, seq = unpack(msg)
        if fds:
            # A call with one region: the Parcel owns the peer's descriptor and closes it
            # (``_PeerFds``: after one F_GET_SEALS for a memfd), as binder's does.
            if prefix != fd_prefix or len(fds) != 1:
                raise RuntimeError("least_server: unexpected message")
            data = Parcel._from_wire(msg, _wire.HEADER_SIZE, fds)
            status = 0 if on_transact(code, data, Parcel(), 0) else 1
            data.close()
            reply = pack(reply_prefix, status, seq)
        elif prefix == call_prefix:
            status = 0 if on_transact(code, Parcel(), Parcel(), 0) else 1
            reply = pack(reply_prefix, status, seq)
        else:
            raise RuntimeError("least_server: unexpected message")


def least_stream_server(sock: socket.socket, count: int) -> None:
    """Count one-way records on the stream ``sock`` with the least Python (see the module
    doc); after every ``count``, send ``done``."""
    oneway_prefix = least_prefixes()[1]
    service = LeastService()
    on_transact = service.on_transact
    recvmsg, unpack = sock.recvmsg, _LEAST_HEADER.unpack_from
    args = (_wire.MAX_MESSAGE, _wire.CMSG_SPACE, _wire.RECV_FLAGS)
    header = _wire.HEADER_SIZE
    data, pos = b"", 0
    while True:
        chunk, anc, _, _ = recvmsg(*args)
        if not chunk:
            return
        if anc:
            raise RuntimeError("least_stream_server: unexpected descriptors")
        data, pos = data[pos:] + chunk, 0
        while len(data) - pos >= header:
            prefix, code, length = unpack(data, pos)
            if prefix != oneway_prefix or length:
                raise RuntimeError("least_stream_server: unexpected record")
            pos += header
            on_transact(code, Parcel(), Parcel(), FLAG_ONEWAY)
            if service.oneways == count:
                service.oneways = 0
                sock.send(b"done")


def counting_pipe(conn: Any, count: int) -> None:
    while True:
        try:
            for _ in range(count):
                conn.recv_bytes()
        except EOFError:
            return
        conn.send_bytes(b"done")


def big_pipe_server(conn: Any) -> None:
    while True:
        try:
            payload = conn.recv_bytes()
        except EOFError:
            return
        conn.send_bytes(str(touch(payload) * PAGE).encode())


# -- measuring ---------------------------------------------------------------------------------


def compared(peer: float, ours: float) -> str:
    """How ours compares with a peer's time: ``2.1x faster`` or ``1.2x slower``."""
    if peer >= ours:
        return f"{format_ratio(peer / ours)} faster"
    return f"{format_ratio(ours / peer)} slower"


def per_call(call: Callable[[], object], count: int) -> float:
    """Mean nanoseconds per ``call()`` over ``count`` calls."""
    start = time.perf_counter_ns()
    for _ in range(count):
        call()
    return (time.perf_counter_ns() - start) / count


def interleaved(peers: dict[str, Callable[[], float]], rounds: int) -> dict[str, float]:
    """The median of each peer's ``rounds`` samples, the peers taken in turn in every
    round, in reverse order every other round (no peer always runs right after another)."""
    samples: dict[str, list[float]] = {name: [] for name in peers}
    order = list(peers.items())
    for r in range(rounds):
        for name, run in order if r % 2 == 0 else reversed(order):
            samples[name].append(run())
    return {name: median(values) for name, values in samples.items()}


def oneway_client(name: str, count: int, go: Any) -> None:
    with get_service(name) as proxy:
        proxy.transact(EMPTY)
        go.wait()
        for _ in range(count):
            proxy.transact(ONEWAY, None, None, FLAG_ONEWAY)


def oneway_rate(proxy: Proxy, name: str, clients: int, count: int) -> float:
    """Transactions per second from ``clients`` processes sending ``count`` each."""
    go = FORK.Event()
    procs = [FORK.Process(target=oneway_client, args=(name, count, go)) for _ in range(clients)]
    for proc in procs:
        proc.start()
    time.sleep(0.2)  # let them connect
    with Parcel() as data, Parcel() as reply:
        data.write_long(clients * count)
        start = time.perf_counter_ns()
        go.set()
        assert proxy.transact(COUNT, data, reply, timeout=120)
        elapsed = time.perf_counter_ns() - start
        assert reply.read_long() == clients * count
    for proc in procs:
        proc.join(30)
    return clients * count / (elapsed / 1e9)


def task_cpu_ns(pid: int) -> int:
    """CPU time of every thread of ``pid`` so far, in ns (``schedstat``'s first field)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{tid}/schedstat") as stat:
            total += int(stat.read().split()[0])
    return total


def cpu_per_call(call: Callable[[], object], count: int, service_pid: int) -> float:
    """CPU ns per ``call()``: this thread's plus the service process's."""
    client, service = time.thread_time_ns(), task_cpu_ns(service_pid)
    for _ in range(count):
        call()
    spent = time.thread_time_ns() - client + task_cpu_ns(service_pid) - service
    return spent / count


def service_cpu_per_oneway(proxy: Proxy, name: str, count: int, service_pid: int) -> float:
    """The service's CPU ns per one-way call, 1 client process sending ``count``."""
    before = task_cpu_ns(service_pid)
    oneway_rate(proxy, name, 1, count)
    return (task_cpu_ns(service_pid) - before) / count


def build_speedups(src: str) -> None:
    """Compile ``ashmem/_speedups.c`` in ``src`` in place, if that revision has one, as the
    install does (this Python's compiler and flags): an old revision's driver then runs
    what an install of it would, not its pure-Python fallback. Raises if it cannot."""
    source = os.path.join(src, "ashmem", "_speedups.c")
    if not os.path.exists(source):
        return
    config = sysconfig.get_config_vars()
    target = os.path.join(src, "ashmem", "_speedups" + str(config["EXT_SUFFIX"]))
    command = [
        *shlex.split(str(config.get("CC") or "cc")),
        *shlex.split(str(config.get("CFLAGS") or "")),
        *shlex.split(str(config.get("CCSHARED") or "-fPIC")),
        "-shared",
        "-I" + sysconfig.get_paths()["include"],
        source,
        "-o",
        target,
    ]
    built = subprocess.run(command, capture_output=True, text=True)
    if built.returncode:
        raise RuntimeError(
            f"--before: could not build {source} ({' '.join(command)}):\n{built.stderr}"
        )


class Driver:
    """A driver process running this script (``--driver``) on the binder code in ``src``:
    the current code's, or an older revision's (``old``)."""

    tmp = ""

    def __init__(self, src: str) -> None:
        env = dict(os.environ, PYTHONPATH=src)
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--driver"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            text=True,
        )
        where = self.ask("where")
        if not inside(where, src):
            self.close()
            raise RuntimeError(f"the --before driver imported ashmem from {where}, not {src}")

    @classmethod
    def old(cls, revision: str) -> Driver:
        """A driver on the binder code of ``revision``, extracted into a temporary
        directory (removed by ``close``)."""
        root = subprocess.run(
            ["git", "rev-parse", "--show-toplevel"],
            capture_output=True,
            text=True,
            check=True,
            cwd=os.path.dirname(os.path.abspath(__file__)),
        ).stdout.strip()
        tmp = tempfile.mkdtemp(prefix="ashmem-bench-before-")
        # Removed by close(), or at exit if the run fails before it (the driver process
        # itself ends when this one does: its stdin closes).
        atexit.register(shutil.rmtree, tmp, ignore_errors=True)
        archive = subprocess.run(
            ["git", "archive", revision, "src"], capture_output=True, check=True, cwd=root
        ).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        build_speedups(os.path.join(tmp, "src"))
        driver = cls(os.path.join(tmp, "src"))
        driver.tmp = tmp
        return driver

    @classmethod
    def current(cls) -> Driver:
        """A driver on this checkout's code (``src`` beside ``benchmarks``), which this
        process must be running too: the two sides of a "before" row measure the same
        code that the other rows do."""
        src = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")
        if not inside(ashmem.__file__, src):
            raise RuntimeError(
                f"this run imports ashmem from {ashmem.__file__}, not this checkout's {src}: "
                "install it in place (pip install -e ., as the Makefile does) to compare it "
                "with --before"
            )
        return cls(src)

    def ask(self, command: str) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def measure(self, command: str) -> float:
        return float(self.ask(command))

    def close(self) -> None:
        try:
            with contextlib.suppress(OSError):
                self.ask("quit")
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
        finally:
            if self.tmp:
                shutil.rmtree(self.tmp, ignore_errors=True)


def inside(path: str, directory: str) -> bool:
    """Whether ``path`` is ``directory`` or below it."""
    path, directory = os.path.abspath(path), os.path.abspath(directory)
    return os.path.commonpath([path, directory]) == directory


def driver() -> int:
    """``--driver``: serve measurement commands on stdin with whatever ashmem is importable
    (see ``Driver``); one number per line on stdout."""
    service = start_service(BenchService, f"bench.before.{os.getpid()}", timeout=30)
    proxy = service.binder
    region = ashmem.SharedMemory.create("bench-region", PAGE)
    payload = b""
    for line in sys.stdin:
        command, *rest = line.split()
        count = int(rest[0]) if rest else 0
        if command == "where":
            answer = ashmem.__file__
        elif command == "empty":
            answer = str(per_call(lambda: proxy.transact(EMPTY), count))
        elif command == "region":

            def call() -> None:
                with Parcel() as data:
                    data.write_shared_memory(region)
                    proxy.transact(REGION, data)

            answer = str(per_call(call, count))
        elif command == "oneway":
            answer = str(oneway_rate(proxy, service.name, 1, count))
        elif command == "cpu-empty":
            answer = str(cpu_per_call(lambda: proxy.transact(EMPTY), count, service.pid))
        elif command == "cpu-region":

            def call_region() -> None:
                with Parcel() as data:
                    data.write_shared_memory(region)
                    proxy.transact(REGION, data)

            answer = str(cpu_per_call(call_region, count, service.pid))
        elif command == "cpu-oneway":
            answer = str(service_cpu_per_oneway(proxy, service.name, count, service.pid))
        elif command == "connect":
            answer = str(per_call(lambda: proxy._connect(None).sock.close(), count))
        elif command == "big":
            if not payload:
                payload = os.urandom(1 << 20) * (BIG_SIZE >> 20)
            time.sleep(SETTLE)
            with Parcel() as data, Parcel() as reply:
                start = time.perf_counter_ns()
                data.write_bytes(payload)
                proxy.transact(BIG, data, reply, timeout=60)
                answer = str(time.perf_counter_ns() - start)
                assert reply.read_long() == BIG_SIZE
        else:
            break
        print(answer, flush=True)
    service.stop()
    region.close()
    return 0


def admission_cost(count: int) -> float:
    """Nanoseconds of the check right after accept, on this process's pool (see the module
    docstring): ``_admit_connection`` on a connected socket, its books undone each time."""
    from ashmem.binder import _pool

    state = _pool.process_state()
    host = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener = _pool._Listener(host, None)  # the callback endpoint's policy
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:

        def check() -> None:
            conn = state._admit_connection(ours, listener)
            assert conn is not None
            state._unregister(conn)

        return per_call(check, count)
    finally:
        for sock in (host, ours, theirs):
            sock.close()


def pin_process(pid: int, cpus: set[int]) -> None:
    """Place every thread of process ``pid`` on ``cpus`` (threads it starts later inherit
    the placement of the thread that starts them)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(int(tid), cpus)


def timed_calls(call: Callable[[], object], count: int, server_pid: int) -> tuple[float, ...]:
    """``(wall, caller CPU, server CPU)`` ns per ``call()`` over ``count`` calls."""
    server = task_cpu_ns(server_pid)
    client = time.thread_time_ns()
    start = time.perf_counter_ns()
    for _ in range(count):
        call()
    wall = time.perf_counter_ns() - start
    client = time.thread_time_ns() - client
    return wall / count, client / count, (task_cpu_ns(server_pid) - server) / count


def placement_table(
    service: Any,
    proxy: Proxy,
    region: ashmem.SharedMemory,
    rounds: int,
    calls: int,
    oneway_count: int,
    quick: bool,
) -> tuple[list[list[str]], list[str]]:
    """Binder against its floors with the caller and the server pinned to the same core and
    to different cores, quiet and busy (see the module docstring)."""
    echo_a, echo_b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    count_a, count_b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    least_a, least_b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    stream_a, stream_b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    echo = FORK.Process(target=seqpacket_server, args=(echo_b,), daemon=True)
    counter = FORK.Process(target=counting_server, args=(count_b, oneway_count), daemon=True)
    least = FORK.Process(target=least_server, args=(least_b,), daemon=True)
    streamer = FORK.Process(target=least_stream_server, args=(stream_b, oneway_count), daemon=True)
    servers = (echo, counter, least, streamer)
    for proc in servers:
        proc.start()
    pids = [service.pid]
    for proc in servers:
        assert proc.pid is not None
        pids.append(proc.pid)
    everywhere = os.sched_getaffinity(0)
    cpus = sorted(everywhere)
    placements = {"same core": (cpus[0], cpus[0])}
    if len(cpus) > 1:
        placements["different cores"] = (cpus[0], cpus[1])
    recv_args = (_wire.MAX_MESSAGE, _wire.CMSG_SPACE, _wire.RECV_FLAGS)

    def seqpacket_call() -> None:
        echo_a.send(MESSAGE)
        echo_a.recvmsg(*recv_args)

    def raw_oneway() -> float:
        start = time.perf_counter_ns()
        for _ in range(oneway_count):
            count_a.send(MESSAGE)
        count_a.recv(64)
        return oneway_count / ((time.perf_counter_ns() - start) / 1e9)

    fd = [region.fileno()]
    least_pack = _LEAST_HEADER.pack
    call_prefix, oneway_prefix, reply_prefix, fd_prefix = least_prefixes()
    least_seq = [0]
    least_recv, least_send_recv = _wire.recv_fds, _wire.send_recv_fds
    least_rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fd).tobytes())]

    def least_call(with_fd: bool = False) -> bool:
        seq = least_seq[0] = (least_seq[0] + 1) & 0xFFFFFFFF
        if with_fd:
            header = least_pack(fd_prefix, REGION, seq)
            least_a.sendmsg([header], least_rights, _wire.SEND_FLAGS)
            msg, fds, mflags = least_recv(least_a, *recv_args)
        else:  # sent and answered in one call, as binder's empty call is
            msg, fds, mflags = least_send_recv(
                least_a, least_pack(call_prefix, EMPTY, seq), _wire.SEND_FLAGS, *recv_args
            )
        if (
            msg[:8] == reply_prefix
            and not fds
            and len(msg) >= _wire.HEADER_SIZE
            and not mflags & _wire.TRUNCATED
        ):
            status, rseq = _wire.CODE_SEQ.unpack_from(msg, 8)
            if rseq == seq:
                return bool(status == 0)
        raise RuntimeError("least_call: unexpected reply")

    def least_oneway() -> float:
        send = stream_a.send
        start = time.perf_counter_ns()
        for _ in range(oneway_count):
            send(least_pack(oneway_prefix, ONEWAY, 0), _wire.SEND_FLAGS)
        stream_a.recv(64)
        return oneway_count / ((time.perf_counter_ns() - start) / 1e9)

    def empty_call() -> None:
        proxy.transact(EMPTY)

    def region_call() -> None:
        with Parcel() as data:
            data.write_shared_memory(region)
            proxy.transact(REGION, data)

    def seqpacket_fd_call() -> None:
        socket.send_fds(echo_a, [MESSAGE], fd)
        echo_a.recvmsg(*recv_args)

    # Each round trip: per peer, its call and the pid of the process that serves it.
    trips = {
        "round trip, empty": {
            "binder": (empty_call, service.pid),
            "floor": (seqpacket_call, echo.pid),
            "least": (least_call, least.pid),
        },
        "round trip, a region fd": {
            "binder": (region_call, service.pid),
            "floor": (seqpacket_fd_call, echo.pid),
            "least": (lambda: least_call(True), least.pid),
        },
    }
    oneway_rates = {
        "binder": lambda: oneway_rate(proxy, service.name, 1, oneway_count),
        "floor": raw_oneway,
        "least": least_oneway,
    }

    rows: list[list[str]] = []
    try:
        for load in ("quiet", "busy"):
            with busy_machine() if load == "busy" else contextlib.nullcontext():
                for placement, (mine, theirs) in placements.items():
                    pin(mine)
                    for pid in pids:
                        pin_process(pid, {theirs})
                    for peers in trips.values():  # warm up, settle
                        for call, pid in peers.values():
                            timed_calls(call, calls // 4, pid)
                    trip: dict[tuple[str, str], list[tuple[float, ...]]] = {}
                    rate: dict[str, list[float]] = {peer: [] for peer in oneway_rates}
                    for r in range(rounds):
                        order = ("binder", "floor", "least")[:: 1 if r % 2 else -1]
                        for what, peers in trips.items():
                            for peer in order:
                                call, pid = peers[peer]
                                sample = timed_calls(call, calls, pid)
                                trip.setdefault((what, peer), []).append(sample)
                        for peer in order:
                            rate[peer].append(oneway_rates[peer]())
                    goal = ROUND_TRIP_QUIET if load == "quiet" else ROUND_TRIP_BUSY
                    for what in trips:
                        ours = [median(s[i] for s in trip[(what, "binder")]) for i in range(3)]
                        floor = [median(s[i] for s in trip[(what, "floor")]) for i in range(3)]
                        ratio = ours[0] / floor[0]
                        least_ns = median(s[0] for s in trip[(what, "least")])
                        bound = [format_ns(least_ns), format_ratio(least_ns / floor[0])]
                        rows.append(
                            [
                                placement,
                                load,
                                what,
                                format_ns(ours[0]),
                                format_ns(floor[0]),
                                format_ratio(ratio),
                                f"<= {goal}x: {verdict(ratio <= goal)}",
                                f"{format_ns(ours[1])} + {format_ns(ours[2])}",
                                f"{format_ns(floor[1])} + {format_ns(floor[2])}",
                                format_ratio((ours[1] + ours[2]) / (floor[1] + floor[2])),
                                *bound,
                            ]
                        )
                    ours_rate, floor_rate = median(rate["binder"]), median(rate["floor"])
                    least_rate = median(rate["least"])
                    share = ours_rate / floor_rate
                    rows.append(
                        [
                            placement,
                            load,
                            "one-way calls, 1 client",
                            f"{ours_rate:,.0f} /s",
                            f"{floor_rate:,.0f} /s",
                            format_ratio(share),
                            f">= {ONEWAY_SHARE}x: {verdict(share >= ONEWAY_SHARE)}",
                            "",
                            "",
                            "",
                            f"{least_rate:,.0f} /s",
                            format_ratio(least_rate / floor_rate),
                        ]
                    )
                    for row in rows[-3:]:
                        print("  ".join(row[:7]), flush=True)
    finally:
        os.sched_setaffinity(0, everywhere)
        for pid in pids:
            with contextlib.suppress(OSError):
                pin_process(pid, everywhere)
        for proc in servers:
            proc.kill()
            proc.join(5)
        for sock in (echo_a, echo_b, count_a, count_b, least_a, least_b, stream_a, stream_b):
            sock.close()
    notes = [
        "Both sides pinned with `os.sched_setaffinity` (this thread and every thread of the "
        "serving process): on one core, or on two different cores; quiet, then busy (one "
        "CPU-bound process per core, started and stopped by the benchmark). Each binder "
        "figure against its floor measured under the same placement and load, interleaved "
        f"round by round: median of {rounds} rounds of {calls} round trips and of "
        f"{oneway_count} one-way calls. Round-trip floor: raw SOCK_SEQPACKET `send` + "
        "`recvmsg` (room for 64 descriptors) to a forked echo loop, with a region fd: "
        "`socket.send_fds` of the same 4 KiB region's fd, which the loop closes (binder: "
        "a new Parcel, `write_shared_memory`, `transact`, `close`); one-way floor: raw "
        "SOCK_SEQPACKET `send` to a forked loop that counts. Ratio: time over the floor's "
        "for round trips, rate over the floor's for one-way. CPU columns: the caller's "
        "thread + the whole serving process, per round trip (medians of the same rounds); "
        "CPU ratio: binder's sum over the floor's, which moves less with other load than "
        "the wall-clock ratio." + (" `--quick`: short run, rough numbers." if quick else ""),
        "Bound columns: the least Python a binder call over the same socket needs, "
        "measured in the same rounds and placement (`least_server`: the 16-byte header "
        "built and checked on both sides, binder's own send and receive with room for "
        f"descriptors ({RECEIVE}), a data and a "
        "reply Parcel and `on_transact` in the server; with a region, its descriptor sent "
        "as it is (no Parcel, no dup, on the caller's side) and owned and closed by the "
        "server's data Parcel; none of binder's argument checks, channel pool, caller "
        "identity, thread pool, limits or refusals). A target under the bound's ratio "
        "cannot be met by a binder with this receive that sends one datagram per call. "
        "One-way "
        "bound: 16-byte records on a SOCK_STREAM pair, one bare `send` each, to a forked "
        "`least_stream_server` that takes all that is queued per `recvmsg` and per record "
        "checks the header, makes two Parcels and calls `on_transact`: what binder's "
        "one-way stream must do, and nothing more.",
        "Measured on a shared 2-core VM while other developers' jobs ran: absolute times "
        "move between runs; compare the same-run ratios.",
    ]
    if any("MISSED" in row[6] for row in rows):
        notes.append(
            "MISSED where marked: the floor column beside it is the transport with no "
            "binder work, the bound column what a call's least Python adds to it."
        )
    return rows, notes


PLACEMENT_HEADERS = [
    "placement",
    "load",
    "what",
    "ashmem.binder",
    "raw SOCK_SEQPACKET (floor)",
    "ratio",
    "target",
    "binder CPU, caller + service",
    "floor CPU, caller + server",
    "CPU ratio",
    "least Python (bound)",
    "bound's ratio",
]


def main() -> int:
    if "--driver" in sys.argv:
        return driver()
    if take_flag("--fixed-layout"):
        # The whole run (servers, services, both --before drivers) without address-space
        # layout randomization: what profile_layout.py finds behind binder's second speed.
        command = fixed_layout_command([sys.executable, *sys.argv])
        os.execvp(command[0], command)
    placement_only = take_flag("--placement-only")
    everywhere = os.sched_getaffinity(0)
    if not placement_only:
        # The first table on one CPU: every process started from here on (servers, the
        # service and its threads, both --before drivers and their services, the Manager)
        # inherits it, so no peer's row depends on where the scheduler put its pair.
        pin(min(everywhere))
    before: Driver | None = None
    now: Driver | None = None
    drivers: list[Driver] = []  # both, with --before
    before_label = ""
    if "--before" in sys.argv:
        at = sys.argv.index("--before")
        before_label = sys.argv[at + 1]
        del sys.argv[at : at + 2]

    def before_row(
        what: str, after_ns: float, before_ns: float, shown: tuple[str, str] | None = None
    ) -> list[str]:
        ratio = after_ns / before_ns
        after_text, before_text = shown or (format_ns(after_ns), format_ns(before_ns))
        return [
            what,
            after_text,
            f"same, before ({before_label})",
            before_text,
            f"{format_ratio(ratio)} of before",
            "<= 1.05x",
            verdict(ratio <= 1.05),
        ]

    args = parse_args(__doc__.splitlines()[0])
    scale = 5 if args.quick else 1
    rounds = 3 if args.quick else 7
    calls = 6000 // scale
    slow_calls = 1500 // scale
    oneway_count = 40000 // scale

    rows: list[list[str]] = []
    notes: list[str] = []
    service = start_service(BenchService, f"bench.binder.{os.getpid()}", timeout=30)
    proxy = service.binder
    region = ashmem.SharedMemory.create("bench-region", PAGE)

    def placement() -> None:
        placed, placed_notes = placement_table(
            service, proxy, region, rounds, calls // 3, oneway_count, args.quick
        )
        publish(
            "binder-placement",
            "Binder by placement, quiet and busy: against the raw SOCK_SEQPACKET floor",
            PLACEMENT_HEADERS,
            placed,
            placed_notes,
            readme=not args.no_readme,
        )

    if placement_only:
        if before_label:
            print("--before compares the first table only: ignored with --placement-only")
        try:
            placement()
        finally:
            service.stop()
            region.close()
        return 0
    if before_label:
        before = Driver.old(before_label)
        try:
            # The current code, in a driver process of its own like the old code's.
            now = Driver.current()
        except BaseException:
            before.close()
            raise
        drivers = [before, now]

    raw_a, raw_b = socket.socketpair()
    seq_rt_a, seq_rt_b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    fd_a, fd_b = socket.socketpair()
    pipe_a, pipe_b = FORK.Pipe()
    hpipe_a, hpipe_b = FORK.Pipe()
    servers = [
        FORK.Process(target=raw_server, args=(raw_b, False), daemon=True),
        FORK.Process(target=raw_server, args=(fd_b, True), daemon=True),
        FORK.Process(target=seqpacket_server, args=(seq_rt_b,), daemon=True),
        FORK.Process(target=pipe_server, args=(pipe_b, False), daemon=True),
        FORK.Process(target=pipe_server, args=(hpipe_b, True), daemon=True),
    ]
    for server in servers:
        server.start()
    manager = PeerManager(ctx=FORK)
    manager.start()
    managed = manager.ManagedPeer()  # type: ignore[attr-defined]

    def binder_empty() -> float:
        return per_call(lambda: proxy.transact(EMPTY), calls)

    def binder_region() -> float:
        def call() -> None:
            with Parcel() as data:
                data.write_shared_memory(region)
                proxy.transact(REGION, data)

        return per_call(call, calls)

    def raw_empty() -> float:
        return per_call(lambda: (raw_a.send(MESSAGE), raw_a.recv(64)), calls)

    def seqpacket_empty() -> float:
        def call() -> None:
            seq_rt_a.send(MESSAGE)
            seq_rt_a.recvmsg(_wire.MAX_MESSAGE, _wire.CMSG_SPACE, _wire.RECV_FLAGS)

        return per_call(call, calls)

    def raw_region() -> float:
        fd = region.fileno()
        return per_call(lambda: (socket.send_fds(fd_a, [MESSAGE], [fd]), fd_a.recv(64)), calls)

    def pipe_empty() -> float:
        return per_call(lambda: (pipe_a.send_bytes(MESSAGE), pipe_a.recv_bytes()), calls)

    def pipe_region() -> float:
        pid = servers[4].pid
        fd = region.fileno()

        def call() -> None:
            reduction.send_handle(hpipe_a, fd, pid)
            hpipe_a.recv_bytes()

        return per_call(call, slow_calls)

    def manager_empty() -> float:
        return per_call(managed.ping, slow_calls)

    def manager_region() -> float:
        return per_call(lambda: managed.take(region), slow_calls // 3)

    def old(command: str) -> Callable[[], float]:
        assert before is not None
        return lambda: before.measure(command)

    def new(command: str) -> Callable[[], float]:
        assert now is not None
        return lambda: now.measure(command)

    def olds(command: str) -> dict[str, Callable[[], float]]:
        """The before/after pair for ``command``: the old code's driver ("before") and the
        current code's ("now"), measured in the same rounds as the rest."""
        return {} if before is None else {"before": old(command), "now": new(command)}

    for warm in (binder_empty, binder_region, raw_empty, raw_region, pipe_empty, manager_empty):
        warm()
    for side in drivers:
        side.measure(f"empty {calls}")
        side.measure(f"region {calls}")
    empty = interleaved(
        {
            "binder": binder_empty,
            "raw": raw_empty,
            "seqpacket": seqpacket_empty,
            "pipe": pipe_empty,
            "manager": manager_empty,
            **olds(f"empty {calls}"),
        },
        rounds,
    )
    with_region = interleaved(
        {
            "binder": binder_region,
            "raw": raw_region,
            "pipe": pipe_region,
            "manager": manager_region,
            **olds(f"region {calls}"),
        },
        rounds,
    )
    cpu: dict[str, float] = {}
    if before is not None:
        # Three times the rounds, a third of the calls each: load from elsewhere comes and
        # goes within a second, and shorter rounds spread it more evenly over both sides.
        short = calls // 3
        commands = {
            "empty": f"cpu-empty {short}",
            "region": f"cpu-region {short}",
            "oneway": f"cpu-oneway {oneway_count // 8}",
        }
        cpu = interleaved(
            {
                **{key: new(command) for key, command in commands.items()},
                **{f"{key}-before": old(command) for key, command in commands.items()},
            },
            3 * rounds,
        )
    connects = calls // 6
    checks = interleaved(
        {
            "connect": lambda: per_call(lambda: proxy._connect(None).sock.close(), connects),
            "check": lambda: admission_cost(calls),
            **olds(f"connect {connects}"),
        },
        rounds,
    )
    for label, result in (("empty transaction", empty), ("with a region fd", with_region)):
        ours = result["binder"]
        floor = result["raw"] / 1
        rows.append(
            [
                f"round trip, {label}",
                format_ns(ours),
                "raw socketpair (floor)",
                format_ns(floor),
                f"{format_ratio(ours / floor)} of the floor",
                "<= 1.3x",
                verdict(ours / floor <= 1.3),
            ]
        )
        if "seqpacket" in result:
            rows.append(
                [
                    f"round trip, {label}",
                    format_ns(ours),
                    "raw SOCK_SEQPACKET + recvmsg",
                    format_ns(result["seqpacket"]),
                    f"{format_ratio(ours / result['seqpacket'])} of it",
                    "",
                    "",
                ]
            )
        if "before" in result:
            rows.append(before_row(f"round trip, {label}", result["now"], result["before"]))
        rows.append(
            [
                f"round trip, {label}",
                format_ns(ours),
                "multiprocessing Pipe",
                format_ns(result["pipe"]),
                compared(result["pipe"], ours),
                "",
                "",
            ]
        )
        rows.append(
            [
                f"round trip, {label}",
                format_ns(ours),
                "Manager proxy call",
                format_ns(result["manager"]),
                compared(result["manager"], ours),
                ">= 3x faster",
                verdict(result["manager"] / ours >= 3),
            ]
        )

    # One-way throughput.
    seq_a, seq_b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    cpipe_a, cpipe_b = FORK.Pipe()
    counters = [
        FORK.Process(target=counting_server, args=(seq_b, oneway_count), daemon=True),
        FORK.Process(target=counting_pipe, args=(cpipe_b, oneway_count), daemon=True),
    ]
    for counter in counters:
        counter.start()

    def raw_oneway() -> float:
        start = time.perf_counter_ns()
        for _ in range(oneway_count):
            seq_a.send(MESSAGE)
        seq_a.recv(64)
        return oneway_count / ((time.perf_counter_ns() - start) / 1e9)

    def pipe_oneway() -> float:
        start = time.perf_counter_ns()
        for _ in range(oneway_count):
            cpipe_a.send_bytes(MESSAGE)
        cpipe_a.recv_bytes()
        return oneway_count / ((time.perf_counter_ns() - start) / 1e9)

    throughput = interleaved(
        {
            "binder1": lambda: oneway_rate(proxy, service.name, 1, oneway_count),
            "binder4": lambda: oneway_rate(proxy, service.name, 4, oneway_count // 4),
            "raw": raw_oneway,
            "pipe": pipe_oneway,
            **olds(f"oneway {oneway_count}"),
        },
        max(3, rounds // 2),
    )
    for clients in (1, 4):
        rate = throughput[f"binder{clients}"]
        rows.append(
            [
                f"one-way, {clients} client process{'es' if clients > 1 else ''}",
                f"{rate:,.0f} /s",
                "SOCK_SEQPACKET send (floor), 1 client" if clients == 1 else "",
                f"{throughput['raw']:,.0f} /s" if clients == 1 else "",
                f"{format_ratio(rate / throughput['raw'])} of the floor" if clients == 1 else "",
                "",
                "",
            ]
        )
    if "before" in throughput:
        # A rate: higher is better, so the ratio is before / after, as for times.
        rows.append(
            before_row(
                "one-way, 1 client process",
                1e9 / throughput["now"],
                1e9 / throughput["before"],
                shown=(f"{throughput['now']:,.0f} /s", f"{throughput['before']:,.0f} /s"),
            )
        )
    rows.append(
        [
            "one-way, 1 client process",
            f"{throughput['binder1']:,.0f} /s",
            "Pipe send_bytes, 1 client",
            f"{throughput['pipe']:,.0f} /s",
            f"{format_ratio(throughput['binder1'] / throughput['pipe'])} of it",
            "",
            "",
        ]
    )

    # 64 MiB payload.
    payload = os.urandom(1 << 20) * (BIG_SIZE >> 20)
    sealed = ashmem.SharedMemory.create("bench-64mib", BIG_SIZE)
    with sealed.map_read_write() as mapping:
        mapping[:] = payload
    sealed.set_protect(ashmem.PROT_READ)
    big_a, big_b = FORK.Pipe()
    big_server = FORK.Process(target=big_pipe_server, args=(big_b,), daemon=True)
    big_server.start()
    big_rounds = 3 if args.quick else 5

    def binder_big() -> float:
        time.sleep(SETTLE)
        with Parcel() as data, Parcel() as reply:
            start = time.perf_counter_ns()
            data.write_bytes(payload)
            proxy.transact(BIG, data, reply, timeout=60)
            elapsed = time.perf_counter_ns() - start
            assert reply.read_long() == BIG_SIZE
        return elapsed

    def binder_sealed() -> float:
        time.sleep(SETTLE)
        with Parcel() as data, Parcel() as reply:
            start = time.perf_counter_ns()
            data.write_shared_memory(sealed)
            proxy.transact(BIG, data, reply, timeout=60)
            elapsed = time.perf_counter_ns() - start
            assert reply.read_long() == BIG_SIZE
        return elapsed

    def pipe_big() -> float:
        time.sleep(SETTLE)
        start = time.perf_counter_ns()
        big_a.send_bytes(payload)
        answer = big_a.recv_bytes()
        elapsed = time.perf_counter_ns() - start
        assert int(answer) == BIG_SIZE
        return elapsed

    def spill_only() -> float:
        time.sleep(SETTLE)
        start = time.perf_counter_ns()
        fd = _wire.spill([payload], BIG_SIZE)
        elapsed = time.perf_counter_ns() - start
        os.close(fd)
        return elapsed

    binder_big(), pipe_big(), binder_sealed()
    for side in drivers:
        side.measure("big")
    big = interleaved(
        {
            "binder": binder_big,
            "sealed": binder_sealed,
            "pipe": pipe_big,
            "spill": spill_only,
            **olds("big"),
        },
        big_rounds,
    )
    speedup = big["pipe"] / big["binder"]
    rows.append(
        [
            "64 MiB payload, auto-spill",
            format_ns(big["binder"]),
            "Connection.send_bytes + recv_bytes",
            format_ns(big["pipe"]),
            compared(big["pipe"], big["binder"]),
            ">= 5x faster",
            verdict(speedup >= 5),
        ]
    )
    if "before" in big:
        rows.append(before_row("64 MiB payload, auto-spill", big["now"], big["before"]))
    rows.append(
        [
            "64 MiB already in a region",
            format_ns(big["sealed"]),
            "Connection.send_bytes + recv_bytes",
            format_ns(big["pipe"]),
            compared(big["pipe"], big["sealed"]),
            "",
            "",
        ]
    )

    share = checks["check"] / checks["connect"]
    rows.append(
        [
            "accept-time peer check",
            format_ns(checks["check"]),
            "new connection (connect, HELLO, WELCOME)",
            format_ns(checks["connect"]),
            f"{share:.1%} of a connect",
            "< 5%",
            verdict(share < 0.05),
        ]
    )
    if "before" in checks:
        rows.append(before_row("new connection", checks["now"], checks["before"]))
    for key, what in (
        ("empty", "CPU per round trip (client + service), empty"),
        ("region", "CPU per round trip (client + service), region fd"),
        ("oneway", "service CPU per one-way call"),
    ):
        if key in cpu:
            rows.append(before_row(what, cpu[key], cpu[f"{key}-before"]))
    if before is not None:
        notes.append(
            f"'before' rows: the binder code of {before_label}, an old client against an old "
            "service, against the current code in a driver process alike (each a fresh "
            "process with its own service), measured in the same rounds (`--before REV`); "
            "so the ashmem.binder column of a 'before' row is that driver's figure, not the "
            "row above's. Ratio is after / before for times, before / after for rates "
            "(above 1: slower now). "
            f"CPU rows: {3 * rounds} rounds of {calls // 3} calls ({oneway_count // 8} one-way "
            "calls), the caller's thread CPU time plus all the service's threads'."
        )
    notes.append(
        "Medians of per-round means, peers interleaved in each round "
        f"({rounds} rounds of {calls} calls for binder, raw and Pipe; {slow_calls} Manager "
        f"calls; {oneway_count} one-way calls; {big_rounds} rounds for 64 MiB). "
        "Every server is its own process. Run `python benchmarks/bench_binder.py`; the "
        "module docstring says exactly what each peer does."
    )
    notes.append(
        f"Binder's receives (`ashmem._rights.recv_fds`, `send_recv_fds`): {RECEIVE}. "
        "The floor and raw peers "
        "receive with Python's socket module."
    )
    notes.append(
        "Measured on a shared 2-core VM while other developers' jobs ran, with every "
        "process of this table on one CPU (left to the scheduler, a row could move "
        "several-fold with where its two processes landed: the placement table below has "
        "the same raw ping-pong at about 5 µs on one core and 75 µs across two)."
    )
    ours, floor, transport = empty["binder"], empty["raw"], empty["seqpacket"]
    if ours / floor > 1.3 and transport >= ours:
        # A noisy run can put the bare transport above binder itself: a split of binder's
        # excess would then be nonsense (more than all of it "the transport").
        notes.append(
            f"Round trip: the bare SOCK_SEQPACKET ping-pong (binder's transport, no binder "
            f"work) took {format_ns(transport)} here, no less than binder's "
            f"{format_ns(ours)}, so this run cannot say how binder's excess over the floor "
            "splits; the placement table below compares them round by round."
        )
    elif ours / floor > 1.3:
        notes.append(
            f"Round trip: of the {format_ns(ours - floor)} binder adds to the floor, "
            f"{format_ns(max(transport - floor, 0.0))} is the transport alone "
            "(SOCK_SEQPACKET, which keeps message boundaries and binds descriptors to their "
            "message, and recvmsg with room for descriptors) and the rest is the Python "
            "work of a call on both "
            "sides (header, checks, two Parcels, the caller's credentials, dispatch)."
        )
    if empty["manager"] / ours < 3:
        need = empty["manager"] / 3
        if need <= floor:
            why = "being 3x faster than it would mean beating a bare socket ping-pong."
        else:
            why = (
                f"being 3x faster than it would take {format_ns(need)} a call, "
                f"{format_ratio(need / floor)} the bare socket ping-pong."
            )
        notes.append(
            f"A Manager call costs {format_ratio(empty['manager'] / floor)} the floor here: " + why
        )
    if speedup < 5:
        notes.append(
            "64 MiB: auto-spill copies the caller's bytes once, into a new region sealed "
            "against writes so that the receiver can trust them; that copy alone (memfd, "
            f"pwrite, seal) took {format_ns(big['spill'])} of the {format_ns(big['binder'])} "
            f"here, so auto-spill cannot be 5x faster than {format_ns(big['pipe'])} on this "
            "machine. Data produced straight into a region (second row) is not copied at all."
        )

    publish(
        "binder",
        "Binder IPC (ashmem.binder)",
        ["benchmark", "ashmem.binder", "peer", "peer result", "ratio", "target", "verdict"],
        rows,
        notes,
        readme=not args.no_readme,
    )

    os.sched_setaffinity(0, everywhere)  # placement_table places everyone itself
    placement()

    for side in drivers:
        side.close()
    for proc in [*servers, *counters, big_server]:
        proc.kill()  # each holds copies of the others' sockets: no EOF would reach it
        proc.join(5)
    for sock in (raw_a, fd_a, seq_a, seq_rt_a):
        sock.close()
    for conn in (pipe_a, hpipe_a, cpipe_a, big_a):
        conn.close()
    manager.shutdown()
    service.stop()
    region.close()
    sealed.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
