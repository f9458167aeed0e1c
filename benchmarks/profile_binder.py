"""Where a binder call's time goes: the numbers behind the README's issue 12 breakdown.

Not a benchmark with a README table (``run_all.py`` runs only ``bench_*.py``); it prints:

1. Python-level calls per operation (``sys.setprofile`` / ``threading.setprofile`` counting
   every Python function entered and every C function called from Python), client and
   service in one process, the service on its pool threads: an empty round trip, an empty
   one-way call, a round trip carrying one region fd.
2. User and system CPU time and context switches per empty round trip, binder against the
   raw SOCK_SEQPACKET echo of ``bench_binder.py``, everything pinned to one core, from
   ``/proc/PID/task/TID/stat`` (utime, stime, in clock ticks) and ``.../status``; and the
   CPU per empty one-way call of the sending thread and of the receiving process, binder
   against a bare ``send`` loop to ``bench_binder.py``'s counting loop, on the same core
   (for binder the sending thread includes the final two-way call that waits for the count).
3. The client's Python alone: ``Proxy.transact`` of an empty call against a stand-in socket
   whose ``send`` and ``recvmsg`` return at once (a correct REPLY header), against the two
   stand-in calls alone. The same for the service: a pool thread's loop over one connection
   whose stand-in socket hands it empty two-way calls (a correct TRANSACTION header) and
   takes the replies, against the two stand-in calls alone. And a region's Parcel alone
   (a new Parcel, ``write_shared_memory``, ``close``) against the ``dup`` and ``close`` it
   makes.
4. Two single operations the sixth pass of issue 12 weighed: setting and clearing the
   calling identity (four attribute stores) on a ``threading.local`` against an object
   with slots, as the service does per plain call; and telling an empty reply Parcel, on a
   new Parcel and on one written to, by ``_wire_empty()`` against an empty-``__dict__``
   test first (each minus making the Parcel, and writing to it, alone).

Run ``python benchmarks/profile_binder.py`` (``--quick``: fewer calls).
"""

from __future__ import annotations

import collections
import os
import socket
import struct
import sys
import threading
import time
import timeit
from typing import Any

import ashmem
import bench_binder as bench
from _common import task_times
from ashmem.binder import FLAG_ONEWAY, Parcel, _proxy, _wire, add_service, get_service
from ashmem.binder._binder import Credentials

QUICK = "--quick" in sys.argv
TICK = os.sysconf("SC_CLK_TCK")

counts: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
counting = False


def count_calls(frame: Any, event: str, arg: Any) -> None:
    if not counting:
        return
    if event == "call":
        counts[threading.current_thread().name]["python"] += 1
    elif event == "c_call":
        counts[threading.current_thread().name]["C"] += 1


def call_counts(n: int) -> None:
    global counting
    threading.setprofile(count_calls)  # before the pool's threads start
    region = ashmem.SharedMemory.create("profile-region", 4096)
    counted = bench.LeastService()
    with (
        add_service(f"profile.{os.getpid()}", counted) as service,
        get_service(service.name) as proxy,
    ):

        def region_call() -> None:
            with Parcel() as data:
                data.write_shared_memory(region)
                proxy.transact(2, data)

        def oneway() -> None:
            proxy.transact(3, None, None, FLAG_ONEWAY)

        def empty() -> None:
            proxy.transact(1)

        operations = [
            ("empty round trip", empty),
            ("one-way, empty", oneway),
            ("round trip, a region fd", region_call),
        ]
        for what, call in operations:
            for _ in range(200):
                call()
            time.sleep(0.2)
            counted.oneways = 0
            counts.clear()
            sys.setprofile(count_calls)
            counting = True
            for _ in range(n):
                call()
            while call is oneway and counted.oneways < n:
                time.sleep(0.01)
            counting = False
            sys.setprofile(None)
            for thread, counter in sorted(counts.items()):
                if counter["python"] < n // 100:
                    continue  # a pool thread that only woke up in passing
                side = "client" if thread == "MainThread" else "service"
                print(
                    f"{what}: {side} ({thread}): {counter['python'] / n:.2f} Python functions "
                    f"+ {counter['C'] / n:.2f} C functions called from Python, per call"
                )
    threading.setprofile(None)  # type: ignore[arg-type]
    region.close()


def cpu_split(n: int) -> None:
    service = bench.start_service(bench.BenchService, f"profile.{os.getpid()}", timeout=30)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    echo = bench.FORK.Process(target=bench.seqpacket_server, args=(theirs,), daemon=True)
    echo.start()
    assert echo.pid is not None
    cpu = min(os.sched_getaffinity(0))
    bench.pin(cpu)
    for pid in (service.pid, echo.pid):
        bench.pin_process(pid, {cpu})
    proxy = service.binder
    args = (_wire.MAX_MESSAGE, _wire.CMSG_SPACE, _wire.RECV_FLAGS)

    def raw() -> None:
        ours.send(bench.MESSAGE)
        ours.recvmsg(*args)

    def empty() -> None:
        proxy.transact(bench.EMPTY)

    me = threading.get_native_id()
    results: dict[str, list[tuple[float, ...]]] = {"binder": [], "raw": []}
    for _ in range(3):
        for name, call, pid in (("binder", empty, service.pid), ("raw", raw, echo.pid)):
            for _ in range(n // 10):
                call()
            c0, s0 = task_times(os.getpid(), me), task_times(pid)
            start = time.perf_counter_ns()
            for _ in range(n):
                call()
            wall = (time.perf_counter_ns() - start) / n
            c1, s1 = task_times(os.getpid(), me), task_times(pid)
            per = [(b - a) / n for a, b in zip(c0 + s0, c1 + s1, strict=True)]
            results[name].append((wall, *per))
    for name, rows in results.items():
        m = [bench.median(row[i] for row in rows) for i in range(9)]
        us = 1e6 / TICK
        print(
            f"{name}, one core, per empty round trip (median of 3 x {n}): wall "
            f"{m[0] / 1e3:.2f} us; caller user {m[1] * us:.2f} us, system {m[2] * us:.2f} us, "
            f"{m[3]:.2f} + {m[4]:.2f} switches; server user {m[5] * us:.2f} us, system "
            f"{m[6] * us:.2f} us, {m[7]:.2f} + {m[8]:.2f} switches (voluntary + not)"
        )
    # One-way: the sender's thread CPU per call and the receiver's (whole process), same core.
    count_a, count_b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    counter = bench.FORK.Process(target=bench.counting_server, args=(count_b, n), daemon=True)
    counter.start()
    assert counter.pid is not None
    bench.pin_process(counter.pid, {cpu})
    sender = get_service(service.name)
    sender.transact(bench.EMPTY)

    def binder_oneways() -> None:
        for _ in range(n):
            sender.transact(bench.ONEWAY, None, None, FLAG_ONEWAY)
        with Parcel() as data, Parcel() as reply:  # wait until the service ran them all
            data.write_long(n)
            assert proxy.transact(bench.COUNT, data, reply, timeout=120)

    def raw_oneways() -> None:
        for _ in range(n):
            count_a.send(bench.MESSAGE)
        count_a.recv(64)

    oneway: dict[str, list[tuple[float, float]]] = {"binder": [], "raw": []}
    for _ in range(3):
        for name, run, pid in (
            ("binder", binder_oneways, service.pid),
            ("raw", raw_oneways, counter.pid),
        ):
            mine, theirs_before = time.thread_time_ns(), bench.task_cpu_ns(pid)
            run()
            oneway[name].append(
                (
                    (time.thread_time_ns() - mine) / n,
                    (bench.task_cpu_ns(pid) - theirs_before) / n,
                )
            )
    for name, samples in oneway.items():
        sent = bench.median(sample[0] for sample in samples)
        got = bench.median(sample[1] for sample in samples)
        print(
            f"{name}, one core, per one-way call (median of 3 x {n}): sender's thread "
            f"{sent / 1e3:.2f} us CPU, receiver {got / 1e3:.2f} us CPU"
        )
    sender.close()
    counter.kill()
    counter.join(5)
    count_a.close()
    count_b.close()
    os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
    echo.kill()
    echo.join(5)
    ours.close()
    theirs.close()
    service.stop()


class StubSocket:
    """Answers every call at once with the REPLY the proxy expects."""

    seq = 0

    def send(self, data: bytes, flags: int = 0) -> int:
        self.seq = struct.unpack_from("<I", data, 12)[0]
        return len(data)

    def recvmsg(self, size: int, ancsize: int, flags: int) -> tuple[bytes, list[Any], int, Any]:
        return _wire.pack(_wire.REPLY, 0, 0, 0, self.seq), [], 0, None

    def close(self) -> None:
        pass


def client_python(n: int) -> None:
    proxy = _proxy.Proxy("stub", b"", "stub")
    stub = StubSocket()
    proxy._idle.append(_proxy._Channel(stub, Credentials(1, 1, 1)))  # type: ignore[arg-type]
    header = _wire.pack(_wire.TRANSACTION, 0, 0, 1, 1)

    def stubs_alone() -> None:
        stub.send(header)
        stub.recvmsg(0, 0, 0)

    call = min(timeit.repeat(lambda: proxy.transact(1), number=n, repeat=5)) / n
    alone = min(timeit.repeat(stubs_alone, number=n, repeat=5)) / n
    print(
        f"client Python per empty transact, stand-in socket (best of 5 x {n}): "
        f"{call * 1e9:.0f} ns, of which the two stand-in calls {alone * 1e9:.0f} ns"
    )


class StubConnection:
    """Hands the service loop ``n`` empty two-way calls, then nothing more (EAGAIN)."""

    def __init__(self, n: int) -> None:
        self.left = n
        self.message = _wire.pack(_wire.TRANSACTION, 0, 0, 1, 7)

    def fileno(self) -> int:
        return -1

    def recvmsg(self, size: int, ancsize: int, flags: int) -> tuple[bytes, list[Any], int, Any]:
        self.left -= 1
        if self.left < 0:
            raise BlockingIOError
        return self.message, [], 0, None

    def send(self, data: bytes, flags: int = 0) -> int:
        return len(data)


def service_python(n: int) -> None:
    from ashmem.binder._dispatch import Dispatch
    from ashmem.binder._gate import _Connection

    class Loop(Dispatch):
        _idle = 1  # another thread watches epoll: the loop lingers, as in a real pool
        _stopping = False
        _served = 0

        def _rearm(self, conn: Any) -> None:
            pass

    class Node:
        label = "stub"
        pinned = bench.LeastService()

    def serve() -> float:
        conn = _Connection.__new__(_Connection)
        conn.sock = StubConnection(n)  # type: ignore[assignment]
        conn.creds = Credentials(1, 1, 1)
        conn.node = Node()  # type: ignore[assignment]
        conn.greeted = True
        conn.stream = None
        start = time.perf_counter_ns()
        Loop()._serve(conn)
        return (time.perf_counter_ns() - start) / n

    def stubs() -> float:
        stub = StubConnection(n)
        start = time.perf_counter_ns()
        try:
            while True:
                stub.recvmsg(0, 0, 0)
                stub.send(stub.message, 0)
        except BlockingIOError:
            pass
        return (time.perf_counter_ns() - start) / n

    loop = min(serve() for _ in range(5))
    alone = min(stubs() for _ in range(5))
    print(
        f"service Python per empty call, stand-in socket (best of 5 x {n}): {loop:.0f} ns, "
        f"of which the two stand-in calls {alone:.0f} ns"
    )


def parcel_python(n: int) -> None:
    region = ashmem.SharedMemory.create("profile-parcel", 4096)
    fd = region.fileno()

    def parcel() -> None:
        with Parcel() as data:
            data.write_shared_memory(region)

    def dup_close() -> None:
        os.close(os.dup(fd))

    whole = min(timeit.repeat(parcel, number=n, repeat=5)) / n
    syscalls = min(timeit.repeat(dup_close, number=n, repeat=5)) / n
    region.close()
    print(
        f"a region's Parcel (new, write_shared_memory, close; best of 5 x {n}): "
        f"{whole * 1e9:.0f} ns, of which its dup + close {syscalls * 1e9:.0f} ns"
    )


def single_operations(n: int) -> None:
    class Local(threading.local):
        caller = None
        cleared = False

    class Slots:
        __slots__ = ("caller", "cleared")

    def best(stmt: str, setup: str = "pass", **names: Any) -> float:
        return min(timeit.repeat(stmt, setup, globals=names, number=n, repeat=5)) / n * 1e9

    stores = "o.caller = c; o.cleared = False; o.caller = None; o.cleared = False"
    local, slots = best(stores, o=Local(), c=1), best(stores, o=Slots(), c=1)
    print(
        f"identity set and cleared (four stores, best of 5 x {n}): threading.local "
        f"{local:.0f} ns, object with slots {slots:.0f} ns"
    )
    for label, make in (("new", "p = Parcel()"), ("written", "p = Parcel(); p.write_int(1)")):
        alone = best(make, Parcel=Parcel)
        method = best(f"{make}; p._wire_empty()", Parcel=Parcel) - alone
        first = best(f"{make}; not p.__dict__ or p._wire_empty()", Parcel=Parcel) - alone
        print(
            f"empty-reply test on a {label} Parcel (best of 5 x {n}): _wire_empty() "
            f"{method:.0f} ns, empty __dict__ first {first:.0f} ns"
        )


def main() -> None:
    n = 2000 if QUICK else 20000
    call_counts(n // 4)
    cpu_split(n * 5)  # utime and stime count clock ticks: enough calls to resolve them
    client_python(n * 5)
    service_python(n * 5)
    parcel_python(n * 5)
    single_operations(n * 25)


if __name__ == "__main__":
    main()
