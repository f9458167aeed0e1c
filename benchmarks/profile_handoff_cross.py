"""Where a cross-process hand-off's microseconds go: ashmem against its floor, piece by piece.

Not a ``bench_*`` script (``make bench`` does not run it and it writes no README table). It
runs the hand-off of bench_handoff.py's placement table (a 4 KiB region, the producer pauses
1 ms before each send so the consumer is blocked in its receive) with both processes pinned
to one core and then to two cores, and swaps ashmem's pieces in one at a time:

========== ==================================== =============================================
variant    producer sends with                  consumer takes with
========== ==================================== =============================================
raw        ``socket.send_fds`` (the frame bytes) ``socket.recv_fds`` + ``mmap.mmap``
send       ``fdpass.send``                      ``socket.recv_fds`` + ``mmap.mmap``
recv       ``socket.send_fds``                  ``fdpass.recv`` + ``mmap.mmap(shm.fileno())``
recv+map   ``socket.send_fds``                  ``fdpass.recv`` + ``map_read_only()``
ashmem     ``fdpass.send``                      ``fdpass.recv`` + ``map_read_only()``
========== ==================================== =============================================

Every variant reads ``m[0]`` and ``m[-1]``; the stop stamp follows, then the clean-up. Two
passes per placement, the variants interleaved round by round in each:

plain
    Exactly as bench_handoff: the consumer blocks in its receive; latency = stop - start.
instrumented
    The consumer first waits for the socket with ``select.poll`` and then takes
    ``getrusage(RUSAGE_THREAD)``, ``time.thread_time_ns()`` and a wake stamp, so the latency
    splits into *wake* (producer's send, scheduling, switch: wake stamp - start) and *work*
    (what the consumer does after it runs: stop - wake stamp), with the work's CPU time and
    the thread's user / system time, minor faults and voluntary / involuntary context
    switches over the window. The producer records how long its send call took.

A third placement, *unpinned*, leaves both processes on every CPU as bench_handoff's size
table does; "same CPU" is the share of plain hand-offs whose consumer ran on the CPU the
producer sent from.

``--cold`` also measures, in one process, the consumer's receive + map and the producer's
send back to back, after a 1 ms sleep (the CPU idles, as in the benchmark's pause) and after
a 1 ms busy spin: what the same work costs when it starts cold; then single kernel calls of
the receive path (``recvmsg`` with fdpass's buffers and with ``recv_fds``', ``F_GET_SEALS``,
``fstat``) back to back and right after a 1 ms sleep.

    python benchmarks/profile_handoff_cross.py [--rounds 7] [--per-round 40] [--cold]
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import mmap
import multiprocessing
import os
import resource
import select
import socket
import struct
import time
from collections.abc import Callable
from statistics import median
from typing import Any

import ashmem
from ashmem import fdpass

SIZE = 4096
PAUSE_S = 0.001
WARMUP = 5
VARIANTS = ("raw", "send", "recv", "recv+map", "ashmem")
_BARE_SEND = {"raw", "recv", "recv+map"}
# The frame fdpass.send writes for one region and no payload: the bare sender sends these
# bytes with socket.send_fds, so that either receiver can take them.
_FRAME = struct.pack("<4sBBHI", b"ASF1", 0, 0, 1, 0) + b"\x01"
# Per hand-off, consumer -> producer: start of work, stop, work CPU ns, user us, sys us,
# minor faults, voluntary and involuntary switches, ok.
_REPORT = struct.Struct("<qqqqqqqqB")
_PROT_READ = mmap.PROT_READ
_RUSAGE_THREAD = resource.RUSAGE_THREAD
sched_getcpu = ctypes.CDLL(None, use_errno=True).sched_getcpu  # the CPU this thread is on


# -- consumer -----------------------------------------------------------------------------


def _receiver(variant: str, sock: socket.socket) -> Callable[[], tuple[Any, Any]]:
    """The consumer's timed part for ``variant``: returns (mapping, what to close)."""
    if variant in ("raw", "send"):

        def take() -> tuple[Any, Any]:
            _, fds, _, _ = socket.recv_fds(sock, 16, 1)
            return mmap.mmap(fds[0], 0, prot=_PROT_READ), fds[0]

    elif variant == "recv":

        def take() -> tuple[Any, Any]:
            _, items = fdpass.recv(sock, 1)
            shm = items[0]
            return mmap.mmap(shm.fileno(), 0, prot=_PROT_READ), shm  # type: ignore[union-attr]

    else:

        def take() -> tuple[Any, Any]:
            _, items = fdpass.recv(sock, 1)
            shm = items[0]
            return shm.map_read_only(), shm  # type: ignore[union-attr]

    return take


def _release(m: Any, owner: Any) -> None:
    m.close()
    if isinstance(owner, int):
        os.close(owner)
    else:
        owner.close()


def consumer(ctrl: socket.socket, sock: socket.socket) -> None:
    """Loop on commands from ``ctrl``: ``pin CPU``, ``VARIANT MODE COUNT``, ``stop``."""
    everywhere = os.sched_getaffinity(0)
    poll = select.poll()
    poll.register(sock, select.POLLIN)
    getrusage, thread_time, clock = resource.getrusage, time.thread_time_ns, time.perf_counter_ns
    pack = _REPORT.pack
    while True:
        command = ctrl.recv(64).decode()
        if not command or command == "stop":
            return
        if command.startswith("pin "):
            where = command.split()[1]
            os.sched_setaffinity(0, everywhere if where == "all" else {int(where)})
            ctrl.send(b"pinned")
            continue
        variant, mode, count = command.split()
        take = _receiver(variant, sock)
        for _ in range(int(count)):
            if mode == "plain":
                m, owner = take()
                ok = (m[0], m[-1]) == (0, 255)
                t1 = clock()
                _release(m, owner)
                # plain: the CPU it ran on, in the work-CPU slot
                ctrl.send(pack(0, t1, sched_getcpu(), 0, 0, 0, 0, 0, ok))
                continue
            poll.poll()
            r0 = getrusage(_RUSAGE_THREAD)
            c0 = thread_time()
            tw = clock()
            m, owner = take()
            ok = (m[0], m[-1]) == (0, 255)
            t1 = clock()
            c1 = thread_time()
            r1 = getrusage(_RUSAGE_THREAD)
            _release(m, owner)
            ctrl.send(
                pack(
                    tw,
                    t1,
                    c1 - c0,
                    round((r1.ru_utime - r0.ru_utime) * 1e6),
                    round((r1.ru_stime - r0.ru_stime) * 1e6),
                    r1.ru_minflt - r0.ru_minflt,
                    r1.ru_nvcsw - r0.ru_nvcsw,
                    r1.ru_nivcsw - r0.ru_nivcsw,
                    ok,
                )
            )


# -- producer -----------------------------------------------------------------------------


def hand_off(
    ctrl: socket.socket,
    sock: socket.socket,
    shm: ashmem.SharedMemory,
    variant: str,
    mode: str,
    count: int,
) -> list[tuple[int, ...]]:
    """``count`` hand-offs; per hand-off (latency, wake, work, work CPU, user, sys, minflt,
    nvcsw, nivcsw, send call), ns and counts."""
    ctrl.send(f"{variant} {mode} {count}".encode())
    if variant in _BARE_SEND:
        fds = [shm.fileno()]
        frame = [_FRAME]

        def send() -> object:
            return socket.send_fds(sock, frame, fds)

    else:
        items = [shm]

        def send() -> object:
            return fdpass.send(sock, items)

    clock = time.perf_counter_ns
    out = []
    for _ in range(count):
        time.sleep(PAUSE_S)
        mine = sched_getcpu()
        t0 = clock()
        send()
        ts = clock()
        tw, t1, cpu, user, system, minflt, nvcsw, nivcsw, ok = _REPORT.unpack(
            ctrl.recv(_REPORT.size)
        )
        if not ok:
            raise RuntimeError(f"{variant}: the consumer read the wrong bytes")
        wake = tw - t0 if tw else 0
        work = t1 - tw if tw else 0
        same = int(cpu == mine) if mode == "plain" else 0
        if mode == "plain":
            cpu = 0
        out.append((t1 - t0, wake, work, cpu, user, system, minflt, nvcsw, nivcsw, ts - t0, same))
    return out


COLUMNS = (
    "latency",
    "wake",
    "work",
    "work CPU",
    "user",
    "sys",
    "minflt",
    "vcsw",
    "ivcsw",
    "send call",
    "same CPU",
)
_NS = {"latency", "wake", "work", "work CPU", "send call"}  # the other columns: µs or counts

# user/sys (tick-sampled split), faults and switches: mean per hand-off over all samples.
_MEANS = {"user", "sys", "minflt", "vcsw", "ivcsw"}


def measure(rounds: int, per_round: int) -> dict[str, dict[str, dict[str, float]]]:
    ctx = multiprocessing.get_context("spawn")
    ctrl, ctrl_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock, sock_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ctrl.settimeout(120)
    proc = ctx.Process(target=consumer, args=(ctrl_child, sock_child), daemon=True)
    proc.start()
    ctrl_child.close()
    sock_child.close()
    shm = ashmem.SharedMemory.create("profile-cross", SIZE)
    with shm.map_read_write() as m:
        m[:] = bytes(range(256)) * (SIZE // 256)
    everywhere = os.sched_getaffinity(0)
    cpus = sorted(everywhere)
    placements: dict[str, tuple[int | str, int | str]] = {
        "same core": (cpus[0], cpus[0]),
        "different cores": (cpus[0], cpus[-1]),
        "unpinned": ("all", "all"),  # as bench_handoff's size table: the scheduler places
    }
    results: dict[str, dict[str, dict[str, float]]] = {}
    try:
        for placement, (mine, theirs) in placements.items():
            os.sched_setaffinity(0, everywhere if mine == "all" else {int(mine)})
            ctrl.send(f"pin {theirs}".encode())
            if ctrl.recv(16) != b"pinned":
                raise RuntimeError("the consumer did not confirm its placement")
            table: dict[str, dict[str, float]] = {}
            for mode in ("plain", "instrumented"):
                per: dict[str, list[tuple[float, ...]]] = {v: [] for v in VARIANTS}
                every: dict[str, list[tuple[int, ...]]] = {v: [] for v in VARIANTS}
                for v in VARIANTS:
                    hand_off(ctrl, sock, shm, v, mode, WARMUP)
                for r in range(rounds):
                    order = VARIANTS[r % len(VARIANTS) :] + VARIANTS[: r % len(VARIANTS)]
                    for v in order:
                        samples = hand_off(ctrl, sock, shm, v, mode, per_round)
                        every[v] += samples
                        per[v].append(tuple(median(col) for col in zip(*samples, strict=True)))
                for v in VARIANTS:
                    row = table.setdefault(v, {})
                    if mode == "plain":
                        row["latency"] = median(r[0] for r in per[v])
                        row["same CPU"] = sum(s[-1] for s in every[v]) / len(every[v])
                        continue
                    for i, name in enumerate(COLUMNS[1:-1], start=1):
                        if name in _MEANS:  # rare or coarse: a median would hide them
                            row[name] = sum(s[i] for s in every[v]) / len(every[v])
                        else:
                            row[name] = median(r[i] for r in per[v])
            results[placement] = table
    finally:
        ctrl.send(b"stop")
        proc.join(30)
        shm.close()
        os.sched_setaffinity(0, everywhere)
    return results


# -- in one process: hot against cold -------------------------------------------------------


def _pause(how: str) -> None:
    if how == "sleep":
        time.sleep(PAUSE_S)
    elif how == "spin":  # the CPU stays busy (and the caches mostly ours) for as long
        end = time.perf_counter_ns() + int(PAUSE_S * 1e9)
        while time.perf_counter_ns() < end:
            pass


def cold(loops: int) -> dict[str, dict[str, float]]:
    """Median send and receive + map, bare and ashmem: back to back, after a 1 ms sleep
    (the CPU idles: what the benchmark's pause does) and after a 1 ms busy spin."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    shm = ashmem.SharedMemory.create("profile-cold", SIZE)
    items, fds, frame = [shm], [shm.fileno()], [_FRAME]
    clock = time.perf_counter_ns
    out: dict[str, dict[str, float]] = {}
    gc.disable()
    try:
        for pause in ("none", "sleep", "spin"):
            keys = ("send", "fdpass.send", "recv", "recv+map")
            stamps: dict[str, list[int]] = {k: [] for k in keys}
            for i in range(loops):
                for kind in ("bare", "ashmem") if i % 2 else ("ashmem", "bare"):
                    _pause(pause)
                    t0 = clock()
                    if kind == "bare":
                        socket.send_fds(a, frame, fds)
                    else:
                        fdpass.send(a, items)
                    t1 = clock()
                    _pause(pause)
                    t2 = clock()
                    if kind == "bare":
                        _, got, _, _ = socket.recv_fds(b, 16, 1)
                        m = mmap.mmap(got[0], 0, prot=_PROT_READ)
                        m[0], m[-1]
                        t3 = clock()
                        m.close()
                        os.close(got[0])
                        stamps["send"].append(t1 - t0)
                        stamps["recv"].append(t3 - t2)
                    else:
                        _, its = fdpass.recv(b, 1)
                        region = its[0]
                        mm = region.map_read_only()  # type: ignore[union-attr]
                        mm[0], mm[-1]
                        t3 = clock()
                        mm.close()
                        region.close()  # type: ignore[union-attr]
                        stamps["fdpass.send"].append(t1 - t0)
                        stamps["recv+map"].append(t3 - t2)
            label = {
                "none": "back to back",
                "sleep": "1 ms sleep first",
                "spin": "1 ms spin first",
            }[pause]
            out[label] = {k: median(v) for k, v in stamps.items()}
    finally:
        gc.enable()
        shm.close()
        a.close()
        b.close()
    return out


def cold_pieces(loops: int) -> dict[str, dict[str, float]]:
    """Single kernel calls of the receive path, back to back and each right after a 1 ms
    sleep: ``recvmsg`` into fdpass's buffers (a full frame, 64 KiB + 265 bytes, and room
    for 253 fds) against ``recv_fds``' (16 bytes, one fd), ``F_GET_SEALS``, ``fstat``."""
    import fcntl

    from ashmem import _sys

    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    shm = ashmem.SharedMemory.create("profile-pieces", SIZE)
    fds, frame = [shm.fileno()], [_FRAME]
    big = (fdpass._DGRAM_FRAME, fdpass._CMSG_SPACE, fdpass._MSG_CMSG_CLOEXEC)
    small = (16, socket.CMSG_SPACE(4), fdpass._MSG_CMSG_CLOEXEC)
    clock = time.perf_counter_ns
    out: dict[str, dict[str, float]] = {}
    gc.disable()
    try:
        for pause in ("none", "sleep"):
            stamps: dict[str, list[int]] = {
                k: []
                for k in (
                    "recvmsg, fdpass's buffers",
                    "recvmsg, 16 B + 1 fd",
                    "F_GET_SEALS",
                    "fstat",
                )
            }
            for i in range(loops):
                for key, sizes in (
                    (("recvmsg, fdpass's buffers", big), ("recvmsg, 16 B + 1 fd", small))
                    if i % 2
                    else (("recvmsg, 16 B + 1 fd", small), ("recvmsg, fdpass's buffers", big))
                ):
                    socket.send_fds(a, frame, fds)
                    _pause(pause)
                    t0 = clock()
                    _, anc, _, _ = b.recvmsg(*sizes)
                    stamps[key].append(clock() - t0)
                    fd = struct.unpack("i", anc[0][2])[0]
                    _pause(pause)
                    t0 = clock()
                    fcntl.fcntl(fd, _sys.F_GET_SEALS)
                    t1 = clock()
                    _pause(pause)
                    t2 = clock()
                    os.fstat(fd)
                    t3 = clock()
                    stamps["F_GET_SEALS"].append(t1 - t0)
                    stamps["fstat"].append(t3 - t2)
                    os.close(fd)
            out["back to back" if pause == "none" else "1 ms sleep first"] = {
                k: median(v) for k, v in stamps.items()
            }
    finally:
        gc.enable()
        shm.close()
        a.close()
        b.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--per-round", type=int, default=40)
    parser.add_argument("--cold", action="store_true", help="also the one-process hot/cold run")
    parser.add_argument("--cold-loops", type=int, default=2000)
    args = parser.parse_args()
    with open("/proc/loadavg", encoding="utf-8") as f:
        print("load average at start:", f.read().split()[:3])
    results = measure(args.rounds, args.per_round)
    print(
        f"{args.rounds} rounds x {args.per_round} hand-offs per variant, mode and placement; "
        "median of per-round medians; times in µs, counters per hand-off window"
    )
    for placement, table in results.items():
        print(f"\n{placement}")
        print(f"{'variant':<13}" + "".join(f"{c:>10}" for c in COLUMNS))
        for v in (*VARIANTS, "ashmem - raw"):
            row = (
                table[v]
                if v in table
                else {c: table["ashmem"][c] - table["raw"][c] for c in COLUMNS}
            )
            print(
                f"{v:<13}"
                + "".join(f"{row[c] / 1000 if c in _NS else row[c]:>10.2f}" for c in COLUMNS)
            )
    if args.cold:
        print(f"\none process, {args.cold_loops} operations each, bare and ashmem alternating")
        for label, row in cold(args.cold_loops).items():
            send, fsend, recv, rmap = (
                row[k] / 1000 for k in ("send", "fdpass.send", "recv", "recv+map")
            )
            print(
                f"{label:<18} send: bare {send:.2f} µs, fdpass.send {fsend:.2f} µs "
                f"(+{fsend - send:.2f}); receive + map: bare {recv:.2f} µs, ashmem {rmap:.2f} µs "
                f"(+{rmap - recv:.2f})"
            )
    if args.cold:
        print(f"\none kernel call at a time, {args.cold_loops} each")
        for label, row in cold_pieces(args.cold_loops).items():
            print(f"{label:<18} " + ", ".join(f"{k} {v / 1000:.2f} µs" for k, v in row.items()))
    with open("/proc/loadavg", encoding="utf-8") as f:
        print("load average at end:", f.read().split()[:3])


if __name__ == "__main__":
    main()
