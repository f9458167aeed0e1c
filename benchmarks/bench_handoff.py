"""Hand-off: how long until a consumer process can read N bytes that a producer process holds.

A long-lived producer (this process) holds N bytes three ways and hands them to a long-lived
consumer process, one way at a time:

ashmem
    An ashmem region, already filled. The producer sends its fd with ``ashmem.fdpass.send``
    over an AF_UNIX ``SOCK_SEQPACKET`` socketpair; the consumer does ``fdpass.recv``,
    ``map_read_only()`` and reads ``m[0]`` and ``m[-1]``.
shared_memory
    A ``multiprocessing.shared_memory.SharedMemory``, already filled. The producer sends its
    name as a string over the same kind of socket; the consumer attaches by name and reads
    the first and last byte of ``buf``.
Queue
    A ``bytes`` object put on a ``multiprocessing.Queue``; the consumer ``get()``s it and reads
    its first and last byte.
raw fd + mmap (not a peer: the floor under ashmem)
    The same region's fd sent with bare ``socket.send_fds``; the consumer does
    ``socket.recv_fds`` and ``mmap.mmap(fd, 0, prot=PROT_READ)``. What the kernel and CPython
    cost without ashmem's framing, validation and objects.

The clock starts in the producer right before the send and stops in the consumer right after
it has read the last byte. ``time.perf_counter_ns`` is CLOCK_MONOTONIC, one clock for the
whole system on Linux, so the two stamps compare. Before each send the producer sleeps 1 ms
so that the consumer is blocked in its receive, as a waiting consumer would be: every sample
includes waking it up. Clean-up (unmap, close) happens after the stop stamp.
Rounds interleave the peers; the table shows the median of the per-round medians.

``--placement-only`` runs the placement table alone (it still rewrites its README section).
"""

from __future__ import annotations

import contextlib
import mmap
import multiprocessing
import os
import socket
import struct
import time
from collections.abc import Callable
from multiprocessing import shared_memory
from multiprocessing.queues import Queue
from typing import Any

import ashmem
from _common import (
    busy_machine,
    format_bytes,
    format_ns,
    format_ratio,
    median,
    parse_args,
    pin,
    publish,
    take_flag,
    verdict,
)
from ashmem import fdpass

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
SIZES = (4 * KiB, 1 * MiB, 64 * MiB, 1 * GiB)
PEERS = ("ashmem", "raw", "shared_memory", "Queue")
TARGET_NS = 100_000  # ashmem median at every N
TARGET_QUEUE_RATIO = 1000  # ashmem vs Queue at 64 MiB
PAUSE_S = 0.001  # producer sleeps this long before each send: the consumer is waiting
QUEUE_MAX_S = 30.0  # a Queue hand-off slower than this is not measured
QUEUE_MIN_ROUNDS = 3
WARMUP = 5  # untimed hand-offs per peer and size
PLACEMENT_SIZE = 4 * KiB  # the placement table's size: where the fixed costs show
TARGET_VS_FLOOR = 1.3  # ashmem over raw fd + mmap, under the same placement and load

# Consumer -> producer after every hand-off: stop stamp, 1 if it read the right bytes.
_REPORT = struct.Struct("<qB")
_FIRST, _LAST = 0, 255  # first and last byte of every payload


def payload(size: int) -> bytes:
    """``size`` bytes starting with _FIRST and ending with _LAST (size is a multiple of 256)."""
    return bytes(range(256)) * (size // 256)


# -- consumer process ---------------------------------------------------------------------


def _take_ashmem(sock: socket.socket, queue: Queue[bytes]) -> tuple[int, bool]:
    _, items = fdpass.recv(sock, 1)
    shm = items[0]
    assert isinstance(shm, ashmem.SharedMemory)
    m = shm.map_read_only()
    first, last = m[0], m[-1]
    t1 = time.perf_counter_ns()
    m.close()
    shm.close()
    return t1, (first, last) == (_FIRST, _LAST)


def _take_raw(sock: socket.socket, queue: Queue[bytes]) -> tuple[int, bool]:
    _, fds, _, _ = socket.recv_fds(sock, 16, 1)
    m = mmap.mmap(fds[0], 0, prot=mmap.PROT_READ)
    first, last = m[0], m[-1]
    t1 = time.perf_counter_ns()
    m.close()
    os.close(fds[0])
    return t1, (first, last) == (_FIRST, _LAST)


def _take_shared_memory(sock: socket.socket, queue: Queue[bytes]) -> tuple[int, bool]:
    name = sock.recv(256).decode()
    shm = shared_memory.SharedMemory(name=name)
    buf = shm.buf
    assert buf is not None
    first, last = buf[0], buf[-1]
    del buf
    t1 = time.perf_counter_ns()
    # Attaching registered the segment with the resource tracker (Python < 3.13 always does,
    # 3.13+ by default): that cost is part of the peer. This consumer was spawned by the
    # producer and shares its tracker, so the registration is the producer's own entry
    # again and the producer's unlink() removes it: nothing leaks, nothing to unregister.
    shm.close()
    return t1, (first, last) == (_FIRST, _LAST)


def _take_queue(sock: socket.socket, queue: Queue[bytes]) -> tuple[int, bool]:
    data = queue.get()
    first, last = data[0], data[-1]
    t1 = time.perf_counter_ns()
    del data
    return t1, (first, last) == (_FIRST, _LAST)


_TAKE: dict[str, Callable[[socket.socket, Queue[bytes]], tuple[int, bool]]] = {
    "ashmem": _take_ashmem,
    "raw": _take_raw,
    "shared_memory": _take_shared_memory,
    "Queue": _take_queue,
}


def consumer(ctrl: socket.socket, sock: socket.socket, queue: Queue[bytes]) -> None:
    """Loop: read ``"PEER COUNT"`` on ``ctrl``, take COUNT hand-offs, report each one."""
    while True:
        command = ctrl.recv(64).decode()
        if not command or command == "stop":  # empty: the producer is gone
            return
        if command.startswith("pin "):
            cpus = command.split()[1]
            os.sched_setaffinity(0, {int(c) for c in cpus.split(",")})
            ctrl.send(b"pinned")
            continue
        peer, count = command.split()
        take = _TAKE[peer]
        for _ in range(int(count)):
            t1, ok = take(sock, queue)
            ctrl.send(_REPORT.pack(t1, ok))


# -- producer (this process) --------------------------------------------------------------


class Producer:
    """Holds one payload of ``size`` bytes in every peer's form and hands it off on demand."""

    def __init__(self, size: int, queue: Queue[bytes], with_queue: bool) -> None:
        self.size = size
        self.queue = queue
        self.data = payload(size) if with_queue else b""
        self.region = ashmem.SharedMemory.create("bench-handoff", size)
        with self.region.map_read_write() as m, memoryview(m) as view:
            view[:] = self.data or payload(size)
        self.shm = shared_memory.SharedMemory(create=True, size=size)
        assert self.shm.buf is not None
        self.shm.buf[:] = self.data or payload(size)
        self.shm_name = self.shm.name

    def sender(self, peer: str, sock: socket.socket) -> Callable[[], Any]:
        if peer == "ashmem":
            items = [self.region]
            return lambda: fdpass.send(sock, items)
        if peer == "raw":
            fds = [self.region.fileno()]
            return lambda: socket.send_fds(sock, [b"r"], fds)
        if peer == "shared_memory":
            name = self.shm_name
            return lambda: sock.send(name.encode())
        data, put = self.data, self.queue.put
        return lambda: put(data)

    def close(self) -> None:
        self.region.close()
        self.shm.close()
        self.shm.unlink()
        self.data = b""


def hand_off(ctrl: socket.socket, peer: str, send: Callable[[], Any], count: int) -> list[int]:
    """``count`` timed hand-offs through ``peer``; latencies in ns."""
    ctrl.send(f"{peer} {count}".encode())
    latencies = []
    for _ in range(count):
        time.sleep(PAUSE_S)
        t0 = time.perf_counter_ns()
        send()
        t1, ok = _REPORT.unpack(ctrl.recv(_REPORT.size))
        if not ok:
            raise RuntimeError(f"{peer}: the consumer read the wrong first/last byte")
        latencies.append(t1 - t0)
    return latencies


def place_consumer(ctrl: socket.socket, cpus: set[int]) -> None:
    """Move the consumer process onto ``cpus`` and wait until it is there."""
    ctrl.send(("pin " + ",".join(str(c) for c in sorted(cpus))).encode())
    if ctrl.recv(16) != b"pinned":
        raise RuntimeError("the consumer did not confirm its placement")


def placement_rows(
    ctrl: socket.socket, sock: socket.socket, queue: Queue[bytes], rounds: int, per_round: int
) -> list[list[str]]:
    """ashmem against its floor (raw fd + mmap) at 4 KiB, with both processes pinned to the
    same core and to different cores, quiet and with one spinner per core."""
    everywhere = os.sched_getaffinity(0)
    cpus = sorted(everywhere)
    placements = {"same core": (cpus[0], cpus[0])}
    if len(cpus) > 1:
        placements["different cores"] = (cpus[0], cpus[1])
    rows = []
    producer = Producer(PLACEMENT_SIZE, queue, with_queue=False)
    try:
        for load in ("quiet", "busy"):
            with busy_machine() if load == "busy" else contextlib.nullcontext():
                for placement, (mine, theirs) in placements.items():
                    pin(mine)
                    place_consumer(ctrl, {theirs})
                    lat: dict[str, list[float]] = {"ashmem": [], "raw": []}
                    for peer in lat:
                        hand_off(ctrl, peer, producer.sender(peer, sock), WARMUP)
                    for r in range(rounds):
                        for peer in ("ashmem", "raw") if r % 2 else ("raw", "ashmem"):
                            send = producer.sender(peer, sock)
                            lat[peer].append(median(hand_off(ctrl, peer, send, per_round)))
                    ash, raw = median(lat["ashmem"]), median(lat["raw"])
                    ok = ash <= TARGET_VS_FLOOR * raw
                    rows.append(
                        [
                            placement,
                            load,
                            format_ns(ash),
                            format_ns(raw),
                            format_ratio(ash / raw),
                            f"≤ {TARGET_VS_FLOOR}x floor: {verdict(ok)}",
                        ]
                    )
    finally:
        producer.close()
        os.sched_setaffinity(0, everywhere)
        place_consumer(ctrl, everywhere)
    return rows


def available_memory() -> int:
    with open("/proc/meminfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def main() -> None:
    # ``--placement-only``: the placement table alone (it still rewrites its README section).
    placement_only = take_flag("--placement-only")
    args = parse_args(__doc__.splitlines()[0])
    sizes = [] if placement_only else SIZES[:3] if args.quick else SIZES
    rounds = 3 if args.quick else 7
    per_round = 10 if args.quick else 30  # hand-offs per peer per round (cheap peers)
    queue_round_s = 0.3 if args.quick else 1.5  # Queue time budget per round at large N
    queue_total_s = 2.0 if args.quick else 10.0  # ... and per size, at least 3 rounds

    ctx = multiprocessing.get_context("spawn")
    queue: Queue[bytes] = ctx.Queue()
    ctrl, ctrl_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock, sock_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ctrl.settimeout(300)
    proc = ctx.Process(target=consumer, args=(ctrl_child, sock_child, queue), daemon=True)
    proc.start()
    ctrl_child.close()
    sock_child.close()

    placed: list[list[str]] = []
    results: dict[tuple[int, str], list[float]] = {}  # (size, peer) -> per-round medians
    samples: dict[tuple[int, str], int] = {}
    skipped: dict[int, str] = {}
    queue_ns_per_byte = 0.0  # from the previous size, to avoid a slow warm-up at 1 GiB
    try:
        for size in sizes:
            # The Queue at size N keeps up to ~4 N alive at once (the object, its pickle,
            # the bytes read from the pipe, the unpickled copy) besides the other peers' 2 N.
            with_queue = available_memory() > 6 * size + 2 * GiB
            if not with_queue:
                skipped[size] = "not enough free memory"
            producer = Producer(size, queue, with_queue)
            try:
                counts = {"ashmem": per_round, "raw": per_round, "shared_memory": per_round}
                for peer in counts:  # warm up
                    hand_off(ctrl, peer, producer.sender(peer, sock), WARMUP)
                queue_rounds = 0
                if with_queue:
                    # One Queue hand-off warms it up and tells how many fit the time budget;
                    # where the previous size predicts more than a second, that prediction
                    # (the Queue is linear in N) stands in for the warm-up.
                    estimate = queue_ns_per_byte * size
                    if estimate < 1e9:
                        send = producer.sender("Queue", sock)
                        estimate = hand_off(ctrl, "Queue", send, 1)[0]
                    if estimate > QUEUE_MAX_S * 1e9:
                        skipped[size] = f"one hand-off takes about {format_ns(estimate)}"
                    else:
                        count = max(1, min(per_round, int(queue_round_s * 1e9 / estimate)))
                        counts["Queue"] = count
                        fit = int(queue_total_s * 1e9 / (estimate * count))
                        queue_rounds = min(rounds, max(QUEUE_MIN_ROUNDS, fit))
                for r in range(rounds):
                    peers = [p for p in counts if p != "Queue" or r < queue_rounds]
                    for peer in peers[r % len(peers) :] + peers[: r % len(peers)]:
                        lat = hand_off(ctrl, peer, producer.sender(peer, sock), counts[peer])
                        results.setdefault((size, peer), []).append(median(lat))
                        samples[(size, peer)] = samples.get((size, peer), 0) + len(lat)
                if (size, "Queue") in results:
                    queue_ns_per_byte = median(results[(size, "Queue")]) / size
                print(
                    f"{format_bytes(size):>7}: "
                    + ", ".join(
                        f"{p} {format_ns(median(results[(size, p)]))}"
                        for p in PEERS
                        if (size, p) in results
                    ),
                    flush=True,
                )
            finally:
                producer.close()
        placed = placement_rows(ctrl, sock, queue, rounds, per_round)
    finally:
        with contextlib.suppress(OSError):
            ctrl.send(b"stop")
        proc.join(30)
        if proc.is_alive():
            proc.terminate()
            proc.join()
        for s in (ctrl, sock):
            s.close()
        queue.close()
        queue.join_thread()

    headers = [
        "N",
        "ashmem",
        "shared_memory",
        "Queue",
        "shared_memory / ashmem",
        "Queue / ashmem",
        "target",
        "raw fd + mmap (floor)",
    ]
    rows = []
    missed = False
    for size in sizes:
        ash = median(results[(size, "ashmem")])
        shm = median(results[(size, "shared_memory")])
        queue_cell, ratio_cell = f"skipped ({skipped.get(size, '')})", "-"
        q_ratio = None
        if (size, "Queue") in results:
            q = median(results[(size, "Queue")])
            q_ratio = q / ash
            queue_cell, ratio_cell = format_ns(q), format_ratio(q_ratio)
        ok = ash <= TARGET_NS
        target = f"≤ 100 µs: {verdict(ok)}"
        missed |= not ok
        if size == 64 * MiB:
            ok = q_ratio is not None and q_ratio >= TARGET_QUEUE_RATIO
            target += f"; ≥ 1000x Queue: {verdict(ok)}"
            missed |= not ok
        rows.append(
            [
                format_bytes(size),
                format_ns(ash),
                format_ns(shm),
                queue_cell,
                format_ratio(shm / ash),
                ratio_cell,
                target,
                format_ns(median(results[(size, "raw")])),
            ]
        )
    counts_note = ", ".join(
        f"{format_bytes(size)}: {samples[(size, 'ashmem')]}"
        + (f" ({samples[(size, 'Queue')]} for the Queue)" if (size, "Queue") in samples else "")
        for size in sizes
    )
    notes = [
        "Time from the producer's send until the consumer process has a usable view and has "
        "read the first and last byte: median of per-round medians over "
        f"{rounds} interleaved rounds. \"X / ashmem\": the peer's time over ashmem's (above 1: "
        "ashmem is faster). ashmem: `fdpass.send` of the region fd over a `SOCK_SEQPACKET` "
        "socketpair, `fdpass.recv` + `map_read_only()` + `m[0]`, `m[-1]`. shared_memory: the "
        "name sent over the same socket, `SharedMemory(name=...)` + `buf[0]`, `buf[-1]`. "
        "Queue: `put(bytes)` / `get()`. The producer pauses 1 ms before each hand-off, so "
        "the consumer is blocked in its receive and every sample includes waking it up. "
        '"raw fd + mmap" is not a peer but the floor under ashmem: the same fd sent with '
        "bare `socket.send_fds`, received with `socket.recv_fds` and mapped with `mmap.mmap`.",
        f"Samples per peer and size: {counts_note}. Run: `python benchmarks/bench_handoff.py`"
        + (" (`--quick`: smoke run, not for the README)." if args.quick else "."),
    ]
    if missed:
        notes.append("MISSED: at least one target above was not met.")
    placement_notes = [
        f"{format_bytes(PLACEMENT_SIZE)} hand-offs as in the table above, with both processes "
        "pinned (`os.sched_setaffinity`): on one core, or on two different cores; quiet, then "
        "busy (one CPU-bound process per core, started and stopped by the benchmark). Each "
        "ashmem figure is compared with the floor (raw fd + mmap) measured in the same "
        f"placement and load, interleaved: median of per-round medians over {rounds} rounds "
        f"of {per_round} hand-offs each."
        + (" `--quick`: short run, rough numbers." if args.quick else ""),
    ]
    if any("MISSED" in row[-1] for row in placed):
        placement_notes.append(
            "MISSED where marked: the floor column is what bounds it (the same kernel work "
            "without ashmem's framing, checks and objects)."
        )
    publish(
        "handoff-placement",
        "Hand-off by placement, quiet and busy: ashmem against its floor",
        ["placement", "load", "ashmem", "raw fd + mmap (floor)", "ashmem / floor", "target"],
        placed,
        placement_notes,
        readme=not args.no_readme,
    )
    if placement_only:
        return
    publish(
        "handoff",
        "Hand-off: producer holds N bytes, consumer process reads first and last byte",
        headers,
        rows,
        notes,
        readme=not args.no_readme,
    )


if __name__ == "__main__":
    main()
