"""Fill: copy N bytes into a new region and hand it off, vs into a fresh bytearray.

In each round this process (the producer) times, in rotating order:

bytearray
    ``buf = bytearray(N)`` and ``memoryview(buf)[:] = src``: fresh memory, one copy.
ashmem, with the library's defaults and with every combination of ``reserve`` and ``populate``
    ``SharedMemory.create(name, N)`` or ``SharedMemory.create(name, N, reserve=, populate=)``,
    ``map_read_write()``,
    ``memoryview(m)[:] = src`` (one memcpy), then ``fdpass.send`` of the region to a
    long-lived consumer process, which ``fdpass.recv``\\s it, maps it read-only and reads its
    first and last byte. The clock starts in the producer before ``create`` and stops in the
    consumer after that read (``perf_counter_ns`` is CLOCK_MONOTONIC, one clock for the whole
    system), so the hand-off is included.

``src`` is an ``N``-byte ``bytes`` object made once and resident. Teardown (``del buf``;
unmapping and closing the region, which frees its pages) is outside the timing and shown in
its own column. Every result is the median over rounds.
"""

from __future__ import annotations

import inspect
import multiprocessing
import socket
import struct
import time
from collections.abc import Callable

import ashmem
from _common import format_bytes, format_ns, format_ratio, median, parse_args, publish, verdict
from ashmem import fdpass

MiB, GiB = 1 << 20, 1 << 30
SIZES = (64 * MiB, 1 * GiB)
TARGET_RATIO = 0.9  # ashmem speed / bytearray speed
COMBINATIONS = ((True, False), (True, True), (False, False), (False, True))
_REPORT = struct.Struct("<qB")  # consumer -> producer: stop stamp, 1 if the bytes were right


def consumer(ctrl: socket.socket, sock: socket.socket) -> None:
    """Take regions until ``sock`` closes; report a stamp after reading each one's ends."""
    while True:
        try:
            _, items = fdpass.recv(sock, 1)
        except EOFError:
            return
        shm = items[0]
        assert isinstance(shm, ashmem.SharedMemory)
        m = shm.map_read_only()
        first, last = m[0], m[-1]
        t1 = time.perf_counter_ns()
        m.close()
        shm.close()
        ctrl.send(_REPORT.pack(t1, (first, last) == (0, 255)))


def fill_bytearray(src: bytes) -> tuple[int, int]:
    """(copy ns, teardown ns) for a fresh bytearray."""
    t0 = time.perf_counter_ns()
    buf = bytearray(len(src))
    with memoryview(buf) as view:
        view[:] = src
    t1 = time.perf_counter_ns()
    del buf
    return t1 - t0, time.perf_counter_ns() - t1


def filler(
    ctrl: socket.socket, sock: socket.socket, options: dict[str, bool]
) -> Callable[[bytes], tuple[int, int]]:
    """A fill through ``SharedMemory.create(..., **options)``; no options: the defaults."""

    def fill_region(src: bytes) -> tuple[int, int]:
        """(copy + hand-off ns, teardown ns) for a new region."""
        t0 = time.perf_counter_ns()
        shm = ashmem.SharedMemory.create("bench-fill", len(src), **options)
        m = shm.map_read_write()
        with memoryview(m) as view:
            view[:] = src
        fdpass.send(sock, [shm])
        t1, ok = _REPORT.unpack(ctrl.recv(_REPORT.size))
        if not ok:
            raise RuntimeError("the consumer read the wrong first/last byte")
        t2 = time.perf_counter_ns()
        m.close()
        shm.close()
        return t1 - t0, time.perf_counter_ns() - t2

    return fill_region


def defaults() -> str:
    """The library's defaults for create's options, as ``reserve=True, populate=False``."""
    parameters = inspect.signature(ashmem.SharedMemory.create).parameters
    return ", ".join(f"{name}={parameters[name].default}" for name in ("reserve", "populate"))


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    sizes = SIZES[:1] if args.quick else SIZES
    rounds = {64 * MiB: 3 if args.quick else 11, 1 * GiB: 5}

    ctx = multiprocessing.get_context("spawn")
    ctrl, ctrl_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock, sock_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ctrl.settimeout(300)
    proc = ctx.Process(target=consumer, args=(ctrl_child, sock_child), daemon=True)
    proc.start()
    ctrl_child.close()
    sock_child.close()

    peers: dict[str, Callable[[bytes], tuple[int, int]]] = {"bytearray": fill_bytearray}
    default_name = f"ashmem defaults ({defaults()})"
    peers[default_name] = filler(ctrl, sock, {})
    for reserve, populate in COMBINATIONS:
        options = {"reserve": reserve, "populate": populate}
        peers[f"ashmem reserve={reserve} populate={populate}"] = filler(ctrl, sock, options)
    names = list(peers)
    times: dict[tuple[int, str], list[int]] = {}
    teardowns: dict[tuple[int, str], list[int]] = {}
    try:
        for size in sizes:
            src = bytes(range(256)) * (size // 256)
            for name in names:  # warm up
                peers[name](src)
            for r in range(rounds[size]):
                for name in names[r % len(names) :] + names[: r % len(names)]:
                    elapsed, teardown = peers[name](src)
                    times.setdefault((size, name), []).append(elapsed)
                    teardowns.setdefault((size, name), []).append(teardown)
            print(
                f"{format_bytes(size)}: "
                + ", ".join(f"{n} {format_ns(median(times[(size, n)]))}" for n in names),
                flush=True,
            )
            del src
    finally:
        sock.close()  # the consumer sees EOF and returns
        proc.join(30)
        if proc.is_alive():
            proc.terminate()
            proc.join()
        ctrl.close()

    headers = ["N", "peer", "median", "throughput", "speed vs bytearray", "target", "teardown"]
    rows = []
    winners = []
    missed = []  # sizes where the defaults miss the target
    for size in sizes:
        base = median(times[(size, "bytearray")])
        best = min(names[2:], key=lambda n: median(times[(size, n)]))
        winners.append(f"{format_bytes(size)}: {best.removeprefix('ashmem ')}")
        for name in names:
            t = median(times[(size, name)])
            target = "-"
            if name != "bytearray":
                ok = base / t >= TARGET_RATIO
                target = f"≥ 0.9x: {verdict(ok)}"
                if name == default_name and not ok:
                    missed.append(format_bytes(size))
            rows.append(
                [
                    format_bytes(size),
                    name,
                    format_ns(t),
                    f"{size / t:.2f} GB/s",
                    format_ratio(base / t),
                    target,
                    format_ns(median(teardowns[(size, name)])),
                ]
            )
    notes = [
        "bytearray: `bytearray(N)` + `memoryview(buf)[:] = src`. ashmem: "
        "`SharedMemory.create(name, N)` (defaults) or `create(name, N, reserve=, populate=)`, "
        "`map_read_write()`, "
        "`memoryview(m)[:] = src` + `fdpass.send` to a consumer process, timed until the "
        'consumer has mapped it and read its first and last byte. "speed vs bytearray": '
        "bytearray time / this time (≥ 0.9x is the target; the library's defaults are the row "
        "that counts). Teardown (freeing the buffer; unmapping and closing the region) is not "
        f"in the median. Median over {', '.join(str(rounds[s]) for s in sizes)} rounds "
        f"({', '.join(format_bytes(s) for s in sizes)}), peers interleaved.",
        f"Fastest explicit combination: {'; '.join(winners)}. Run: "
        "`python benchmarks/bench_fill.py`"
        + (" (`--quick`: smoke run, not for the README)." if args.quick else "."),
    ]
    if missed:
        notes.append(
            "MISSED: ashmem with its defaults is below 0.9x bytearray speed at "
            f"{', '.join(missed)}."
        )
    publish(
        "fill",
        "Fill: copy N bytes into a new region and hand it off, vs a fresh bytearray",
        headers,
        rows,
        notes,
        readme=not args.no_readme,
    )


if __name__ == "__main__":
    main()
