"""What a one-way call's receive costs per call, one datagram each against several per read.

Not a benchmark with a README table (``run_all.py`` runs only ``bench_*.py``); it prints the
numbers behind the README's one-way bound (issue 12). In one process, pinned to one CPU,
``BATCH`` 16-byte messages (a binder header's size) are queued on an ``AF_UNIX`` socketpair,
then received; the time per message is the best of ``REPEAT`` batches:

1. ``SOCK_SEQPACKET``, ``recv(64)``: the one-way floor's receive in ``bench_binder.py``.
2. ``SOCK_SEQPACKET``, ``recvmsg`` with room for 64 descriptors and a 64 KiB buffer: what
   binder must do per datagram, since any one-way call may carry descriptors.
3. ``SOCK_STREAM``, ``recvmsg`` of up to 64 KiB with the same room: the kernel hands over
   every queued message in one call, so the receive is shared among them.
4. Parsing and dispatching the records of such a read: header unpacked, a data and a reply
   ``Parcel``, ``on_transact`` called.

And the sender's ``send`` of one message on each socket type.

Then binder's own one-way stream (issue 12), each side's Python alone:

5. The sender: ``Proxy.transact(code, None, None, FLAG_ONEWAY)`` on an open one-way stream
   whose socket is replaced by a stand-in whose ``send`` does nothing (a C function), per
   call, and the stand-in's call alone.
6. The service: the pool's loop over a stream's plain records (``_own_stream_oneways``)
   on ``BATCH`` records already read, with stand-ins for the pool and the connection,
   per record; and ``on_transact`` with its two Parcels alone.

And, with a forked service and this process sending on one core: how often the service
sleeps (voluntary context switches of all its threads, per call), binder's service
against ``bench_binder``'s ``least_stream_server``, whose sender is also run taking a lock
around each ``send``: a server that keeps up with its sender sleeps whenever it has caught
up, and each sleep costs a wake-up.

Run ``python benchmarks/profile_oneway_batching.py``.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
import types
from collections.abc import Callable

from _common import task_times
from ashmem import binder
from ashmem.binder import FLAG_ONEWAY, Parcel, _wire
from ashmem.binder._binder import Caller, Credentials
from ashmem.binder._dispatch import Dispatch
from bench_binder import (
    _LEAST_HEADER,
    LeastService,
    least_prefixes,
    least_stream_server,
    pin_process,
)

BATCH = 150  # fits in a socketpair's default send buffer as datagrams
REPEAT = 400
MESSAGE = _wire.ONEWAY_PREFIX + struct.pack("<II", 3, 0)
SPACE = _wire.CMSG_SPACE


def best_per_message(fill: Callable[[], None], run: Callable[[], None]) -> float:
    """Nanoseconds per message of ``run``, best of ``REPEAT``; ``fill`` queues a batch."""
    best = float("inf")
    for _ in range(REPEAT):
        fill()
        start = time.perf_counter_ns()
        run()
        best = min(best, (time.perf_counter_ns() - start) / BATCH)
    return best


def drain(sock: socket.socket) -> None:
    """Read whatever is queued on ``sock``, without waiting."""
    while True:
        try:
            sock.recv(65536, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return


def measure_socket(kind: int, results: dict[str, float]) -> None:
    """Send and receive costs per message on a socketpair of ``kind``, into ``results``."""
    dontwait = _wire.RECV_FLAGS | socket.MSG_DONTWAIT
    label = "SOCK_SEQPACKET" if kind == socket.SOCK_SEQPACKET else "SOCK_STREAM"
    a, b = socket.socketpair(socket.AF_UNIX, kind)
    send, recv, recvmsg = a.send, b.recv, b.recvmsg

    def fill() -> None:
        for _ in range(BATCH):
            send(MESSAGE)

    def send_batch() -> None:
        for _ in range(BATCH):
            send(MESSAGE, _wire.SEND_FLAGS)

    def recv_each() -> None:
        for _ in range(BATCH):
            recv(64)

    def recvmsg_each() -> None:
        for _ in range(BATCH):
            recvmsg(_wire.MAX_MESSAGE, SPACE, dontwait)

    def recvmsg_all() -> None:
        got = 0
        while got < BATCH * len(MESSAGE):
            got += len(recvmsg(_wire.MAX_MESSAGE, SPACE, dontwait)[0])

    results[f"send, {label}"] = best_per_message(lambda: drain(b), send_batch)
    drain(b)
    if kind == socket.SOCK_SEQPACKET:
        results["receive, SOCK_SEQPACKET recv(64) (the floor's)"] = best_per_message(
            fill, recv_each
        )
        results["receive, SOCK_SEQPACKET recvmsg with descriptor room"] = best_per_message(
            fill, recvmsg_each
        )
    else:
        results["receive, SOCK_STREAM recvmsg of all queued, per message"] = best_per_message(
            fill, recvmsg_all
        )
    a.close()
    b.close()


def main() -> None:
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    results: dict[str, float] = {}
    for kind in (socket.SOCK_SEQPACKET, socket.SOCK_STREAM):
        measure_socket(kind, results)

    service = LeastService()  # bench_binder's bound: counts the one-way calls
    on_transact = service.on_transact
    unpack = _wire.CODE.unpack_from
    buffer = MESSAGE * BATCH

    def dispatch() -> None:
        pos, end = 0, len(buffer)
        while pos + _wire.HEADER_SIZE <= end:
            code = unpack(buffer, pos + 8)[0]
            pos += _wire.HEADER_SIZE
            on_transact(code, Parcel(), Parcel(), FLAG_ONEWAY)

    results["parse + dispatch one record of such a read"] = best_per_message(lambda: None, dispatch)
    measure_binder_python(results)
    for what, ns in results.items():
        print(f"{what:58s} {ns:7.0f} ns")
    for what, per_call in switches_per_call().items():
        print(f"{what:58s} {per_call:7.3f} per call")


def measure_binder_python(results: dict[str, float]) -> None:
    """Items 5 and 6 of the module doc, into ``results``."""
    name = f"profile.oneway.{os.getpid()}"
    with binder.add_service(name, LeastService()), binder.get_service(name) as proxy:
        proxy.transact(3, None, None, FLAG_ONEWAY)  # opens the one-way stream
        channel = proxy._oneway
        assert channel is not None
        real = channel.sock
        channel.sock = types.SimpleNamespace(send={}.get)  # type: ignore[assignment]
        transact = proxy.transact

        def send_batch() -> None:
            for _ in range(BATCH):
                transact(3, None, None, FLAG_ONEWAY)

        stand_in = {}.get

        def stand_in_batch() -> None:
            for _ in range(BATCH):
                stand_in(MESSAGE, 0)

        results["binder sender, transact one-way, stand-in socket"] = best_per_message(
            lambda: None, send_batch
        )
        results["  of which the stand-in send"] = best_per_message(lambda: None, stand_in_batch)
        channel.sock = real

    service = LeastService()
    node = types.SimpleNamespace(binder=service, label="profile")
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    creds = Credentials(os.getpid(), os.getuid(), os.getgid())
    stream = _wire.Stream()
    conn = types.SimpleNamespace(
        stream=stream, sock=b, oneway_caller=Caller(creds, None), creds=creds
    )
    pool = types.SimpleNamespace(_served=0, _stopping=False)
    records = MESSAGE * BATCH

    def refill() -> None:
        stream.data, stream.pos, stream.dry = records, 0, True

    def run_loop() -> None:  # batches of ONEWAY_BATCH until all BATCH records ran
        while stream.pos < len(records):
            Dispatch._own_stream_oneways(pool, node, conn)  # type: ignore[arg-type]

    results["binder service, a stream's plain record (in memory)"] = best_per_message(
        refill, run_loop
    )
    on_transact = service.on_transact

    def on_transact_alone() -> None:
        for _ in range(BATCH):
            on_transact(3, Parcel(), Parcel(), FLAG_ONEWAY)

    results["  of which on_transact and its two Parcels"] = best_per_message(
        lambda: None, on_transact_alone
    )
    a.close()
    b.close()


def voluntary_switches(pid: int) -> int:
    """Voluntary context switches of every thread of ``pid`` so far."""
    return task_times(pid)[2]


SWITCH_CALLS = 100_000


def least_switches(locked: bool) -> float:
    """The least stream server's voluntary switches per record, this process sending on
    the same core: a bare ``send`` each, or (``locked``) with a ``threading.Lock`` taken
    and released around it, as a Proxy's one-way path does (about 0.1 µs more)."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    pid = os.fork()
    if pid == 0:  # the bound's server
        try:
            a.close()
            least_stream_server(b, SWITCH_CALLS)
        finally:
            os._exit(0)
    b.close()
    record = _LEAST_HEADER.pack(least_prefixes()[1], 3, 0)
    send = a.send
    lock = threading.Lock()
    before = voluntary_switches(pid)
    if locked:
        for _ in range(SWITCH_CALLS):
            lock.acquire()
            send(record, _wire.SEND_FLAGS)
            lock.release()
    else:
        for _ in range(SWITCH_CALLS):
            send(record, _wire.SEND_FLAGS)
    a.recv(64)  # "done": all counted
    switches = (voluntary_switches(pid) - before) / SWITCH_CALLS
    a.close()
    os.waitpid(pid, 0)
    return switches


def switches_per_call() -> dict[str, float]:
    """The service's voluntary switches per one-way call, this process sending on the same
    core: binder's service, then the least stream server."""
    cpu = min(os.sched_getaffinity(0))
    out: dict[str, float] = {}
    with binder.start_service(LeastService, f"profile.switches.{os.getpid()}") as service:
        pin_process(service.pid, {cpu})
        proxy = service.binder
        proxy.transact(3, None, None, FLAG_ONEWAY)  # opens the one-way stream
        before = voluntary_switches(service.pid)
        for _ in range(SWITCH_CALLS):
            proxy.transact(3, None, None, FLAG_ONEWAY)
        proxy.ping(timeout=30)  # a two-way call: the one-way calls before it have run
        out["binder service sleeps, one core"] = (
            voluntary_switches(service.pid) - before
        ) / SWITCH_CALLS
    for label, locked in (("", False), (", sender taking a lock per send", True)):
        out[f"least stream server sleeps, one core{label}"] = least_switches(locked)
    return out


if __name__ == "__main__":
    main()
