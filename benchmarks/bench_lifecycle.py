"""Lifecycle: create, map and close a 4 KiB region, vs the raw syscalls and multiprocessing.

Each peer runs as a tight loop of ``number`` create/map/close cycles per round (timeit
style, garbage collector off); rounds interleave the peers and the table shows the median
per-cycle time over rounds:

raw
    ``os.memfd_create(name, MFD_CLOEXEC)``, ``os.ftruncate``, ``mmap.mmap``, then
    ``m.close()`` and ``os.close(fd)``.
ashmem
    ``SharedMemory.create(name, 4096)`` (default options), ``map_read_write()``, then close
    both. Also shown with ``reserve=False``: reserving allocates the page (``fallocate``),
    which is most of the difference to the raw sequence, where nothing is allocated.
raw + size seals + fallocate
    What ``create(reserve=True)`` asks of the kernel, in bare calls: the floor for ashmem's
    defaults. Not a peer; it tells library overhead from the cost of the semantics.
multiprocessing.shared_memory
    ``SharedMemory(create=True, size=4096)`` (which maps it), ``close()``, ``unlink()``,
    including its resource-tracker messages: that is how the peer works.

No peer touches the page.
"""

from __future__ import annotations

import fcntl
import gc
import inspect
import mmap
import os
import time
from collections.abc import Callable
from multiprocessing import shared_memory

import ashmem
from _common import (
    busy_machine,
    format_ns,
    format_ratio,
    median,
    parse_args,
    publish,
    verdict,
)

SIZE = 4096
TARGET_VS_RAW = 1.3
NAME = "bench-lifecycle"


def raw() -> None:
    fd = os.memfd_create(NAME, os.MFD_CLOEXEC)
    os.ftruncate(fd, SIZE)
    m = mmap.mmap(fd, SIZE)
    m.close()
    os.close(fd)


def raw_sealed_reserved() -> None:
    fd = os.memfd_create(NAME, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, SIZE)
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK)
    os.posix_fallocate(fd, 0, SIZE)
    m = mmap.mmap(fd, SIZE)
    m.close()
    os.close(fd)


def ashmem_default() -> None:
    shm = ashmem.SharedMemory.create(NAME, SIZE)
    m = shm.map_read_write()
    m.close()
    shm.close()


def ashmem_no_reserve() -> None:
    shm = ashmem.SharedMemory.create(NAME, SIZE, reserve=False)
    m = shm.map_read_write()
    m.close()
    shm.close()


def multiprocessing_shm() -> None:
    shm = shared_memory.SharedMemory(create=True, size=SIZE)
    shm.close()
    shm.unlink()


PEERS: dict[str, Callable[[], None]] = {
    "raw memfd_create/ftruncate/mmap/close": raw,
    "raw + size seals + fallocate": raw_sealed_reserved,
    "ashmem defaults": ashmem_default,
    "ashmem reserve=False": ashmem_no_reserve,
    "multiprocessing.shared_memory": multiprocessing_shm,
}


def defaults() -> str:
    """The library's defaults for create's options, as ``reserve=True, populate=False``."""
    parameters = inspect.signature(ashmem.SharedMemory.create).parameters
    return ", ".join(f"{name}={parameters[name].default}" for name in ("reserve", "populate"))


def per_cycle_ns(cycle: Callable[[], None], number: int) -> float:
    t0 = time.perf_counter_ns()
    for _ in range(number):
        cycle()
    return (time.perf_counter_ns() - t0) / number


def measure(rounds: int, number: int) -> dict[str, float]:
    """Median per-cycle ns of every peer over ``rounds`` interleaved rounds."""
    names = list(PEERS)
    results: dict[str, list[float]] = {name: [] for name in names}
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for name in names:  # warm up
            per_cycle_ns(PEERS[name], number // 10)
        for r in range(rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                results[name].append(per_cycle_ns(PEERS[name], number))
    finally:
        if gc_was_enabled:
            gc.enable()
    return {name: median(times) for name, times in results.items()}


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    rounds = 5 if args.quick else 21
    number = 300 if args.quick else 2000

    quiet = measure(rounds, number)
    with busy_machine() as spinners:
        busy = measure(rounds, number)

    names = list(PEERS)
    raw, same_work, mp = names[0], "raw + size seals + fallocate", "multiprocessing.shared_memory"
    headers = [
        "peer",
        "quiet: median per cycle",
        "/ raw",
        "/ same work bare",
        "/ multiprocessing",
        "busy: median per cycle",
        "/ raw (busy)",
        "target",
    ]
    rows = []
    missed = False
    for name in names:
        t, b = quiet[name], busy[name]
        target = "-"
        if name.startswith("ashmem"):
            ok_quiet = t <= TARGET_VS_RAW * quiet[raw]
            ok_busy = b <= TARGET_VS_RAW * busy[raw]
            ok_mp = t < quiet[mp]
            target = (
                f"≤ {TARGET_VS_RAW}x raw quiet: {verdict(ok_quiet)}; busy: {verdict(ok_busy)}; "
                f"< multiprocessing: {verdict(ok_mp)}"
            )
            if name == "ashmem defaults":
                missed |= not (ok_quiet and ok_busy and ok_mp)
        label = f"ashmem defaults ({defaults()})" if name == "ashmem defaults" else name
        rows.append(
            [
                label,
                format_ns(t),
                format_ratio(t / quiet[raw]),
                format_ratio(t / quiet[same_work]),
                format_ratio(t / quiet[mp]),
                format_ns(b),
                format_ratio(b / busy[raw]),
                target,
            ]
        )
    notes = [
        f"One cycle: create a 4 KiB region, map it read-write, unmap, close. Median over {rounds} "
        f"interleaved rounds of {number} cycles each (garbage collector off), measured twice "
        f"in the same run: quiet, then busy (one CPU-bound process per core, {spinners} in "
        "all, started and stopped by the benchmark). The / columns: this row's time over the "
        "raw sequence's, the same work in bare syscalls, and multiprocessing's, under the same "
        "load (lower is better). The targets apply to the ashmem defaults row. "
        "`reserve=True` fallocates the page, which neither peer does; the row "
        '"raw + size seals + fallocate" is that same work in bare syscalls, without ashmem. '
        "Run: `python benchmarks/bench_lifecycle.py`"
        + (" (`--quick`: short run, rough numbers)." if args.quick else "."),
    ]
    if missed:
        notes.append(
            "MISSED: the default ashmem row misses a target. The floor that bounds it is the "
            '"raw + size seals + fallocate" row, the region\'s guarantees (size seals, '
            "reservation) in bare syscalls and without the creator pin: "
            f"{format_ratio(quiet[same_work] / quiet[raw])} raw quiet, "
            f"{format_ratio(busy[same_work] / busy[raw])} busy."
        )
    publish(
        "lifecycle",
        "Lifecycle: create + map + close a 4 KiB region",
        headers,
        rows,
        notes,
        readme=not args.no_readme,
    )


if __name__ == "__main__":
    main()
