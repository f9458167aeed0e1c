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

Run ``python benchmarks/profile_oneway_batching.py``.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from collections.abc import Callable

from ashmem.binder import FLAG_ONEWAY, Parcel, _wire
from bench_binder import LeastService

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
    for what, ns in results.items():
        print(f"{what:58s} {ns:7.0f} ns")


if __name__ == "__main__":
    main()
