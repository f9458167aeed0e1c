"""Hand-off by size, ashmem and its floor alone: is the size table's gap ashmem's own?

``bench_handoff.py``'s size table runs four peers interleaved in every round (ashmem, raw fd
+ mmap, ``multiprocessing.shared_memory`` and the Queue, which pushes N bytes through a
pipe), with the consumer unpinned. This script times only ashmem against its floor (raw fd
+ mmap), with bench_handoff's own producer, consumer and hand-off loop, a fresh consumer
process per size and placement, unpinned and with both processes on one core: median of
per-round medians over 7 interleaved rounds of 30 hand-offs.

Run: ``python benchmarks/profile_handoff_sizes.py``. Prints only; the README quotes it.
"""

from __future__ import annotations

import multiprocessing
import os
import socket
from statistics import median

import bench_handoff as bh
from _common import pin

SIZES = (4 << 10, 1 << 20, 64 << 20, 1 << 30)
ROUNDS = 7
PER_ROUND = 30


def measure(size: int, same_core: bool) -> tuple[float, float]:
    """(ashmem, raw) median hand-off latency in ns at ``size``."""
    ctx = multiprocessing.get_context("spawn")
    queue: multiprocessing.queues.Queue[bytes] = ctx.Queue()
    ctrl, ctrl_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock, sock_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ctrl.settimeout(120)
    proc = ctx.Process(target=bh.consumer, args=(ctrl_child, sock_child, queue), daemon=True)
    proc.start()
    ctrl_child.close()
    sock_child.close()
    everywhere = os.sched_getaffinity(0)
    producer = bh.Producer(size, queue, with_queue=False)
    try:
        if same_core:
            cpu = min(everywhere)
            pin(cpu)
            bh.place_consumer(ctrl, {cpu})
        lat: dict[str, list[float]] = {"ashmem": [], "raw": []}
        for peer in lat:
            bh.hand_off(ctrl, peer, producer.sender(peer, sock), 10)  # warm-up
        for r in range(ROUNDS):
            for peer in ("ashmem", "raw") if r % 2 else ("raw", "ashmem"):
                send = producer.sender(peer, sock)
                lat[peer].append(median(bh.hand_off(ctrl, peer, send, PER_ROUND)))
        return median(lat["ashmem"]), median(lat["raw"])
    finally:
        producer.close()
        os.sched_setaffinity(0, everywhere)
        ctrl.send(b"stop")
        proc.join(10)
        ctrl.close()
        sock.close()


def main() -> None:
    print(f"{'N':>8}  {'placement':<9}  {'ashmem':>9}  {'raw':>9}  ashmem / raw")
    for size in SIZES:
        for same_core in (False, True):
            ash, raw = measure(size, same_core)
            label = f"{size >> 20} MiB" if size >= 1 << 20 else f"{size >> 10} KiB"
            where = "one core" if same_core else "unpinned"
            print(
                f"{label:>8}  {where:<9}  {ash / 1000:7.1f} µs  {raw / 1000:7.1f} µs  "
                f"{ash / raw:.2f}x",
                flush=True,
            )


if __name__ == "__main__":
    main()
