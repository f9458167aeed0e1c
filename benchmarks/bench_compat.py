"""ashmem.compat vs multiprocessing.shared_memory: attach by name, and create + unlink.

Each peer runs as a tight loop of ``number`` cycles per round (garbage collector off); rounds
interleave the peers and the table shows the median per-cycle time over rounds. The block is
4 KiB and no cycle touches it.

attach + close
    ``SharedMemory(name)`` then ``close()``, on a block that this process created once
    before the loop. ashmem.compat reads the name's entry, checks the creator's
    ``/proc/PID/fd/N`` link, opens it, checks the region's tag and maps it;
    multiprocessing does ``shm_open``, ``fstat``, ``mmap`` and, on CPython < 3.13 (always)
    or with ``track=True``, sends a register message to its resource tracker.
create + close + unlink
    ``SharedMemory(create=True, size=4096)`` (a random name), ``close()``, ``unlink()``.
    ashmem.compat also writes and removes the entry under the directory's lock, and reserves
    the page (``fallocate``); multiprocessing also registers and unregisters the name with
    its resource tracker.
"""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Callable
from multiprocessing import shared_memory

from _common import format_ns, format_ratio, median, parse_args, publish
from ashmem import compat

SIZE = 4096


def per_cycle_ns(cycle: Callable[[], None], number: int) -> float:
    t0 = time.perf_counter_ns()
    for _ in range(number):
        cycle()
    return (time.perf_counter_ns() - t0) / number


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    rounds = 5 if args.quick else 15
    number = 200 if args.quick else 1000

    load_before = os.getloadavg()[0]
    ours = compat.SharedMemory(create=True, size=SIZE)
    theirs = shared_memory.SharedMemory(create=True, size=SIZE)

    def attach_compat() -> None:
        compat.SharedMemory(ours.name).close()

    def attach_multiprocessing() -> None:
        shared_memory.SharedMemory(theirs.name).close()

    def create_compat() -> None:
        shm = compat.SharedMemory(create=True, size=SIZE)
        shm.close()
        shm.unlink()

    def create_multiprocessing() -> None:
        shm = shared_memory.SharedMemory(create=True, size=SIZE)
        shm.close()
        shm.unlink()

    cases: dict[str, dict[str, Callable[[], None]]] = {
        "attach + close": {
            "ashmem.compat": attach_compat,
            "multiprocessing.shared_memory": attach_multiprocessing,
        },
        "create + close + unlink": {
            "ashmem.compat": create_compat,
            "multiprocessing.shared_memory": create_multiprocessing,
        },
    }
    results: dict[tuple[str, str], list[float]] = {
        (case, peer): [] for case, peers in cases.items() for peer in peers
    }
    keys = list(results)
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for case, peer in keys:  # warm up
            per_cycle_ns(cases[case][peer], number // 10)
        for r in range(rounds):
            for case, peer in keys[r % len(keys) :] + keys[: r % len(keys)]:
                results[case, peer].append(per_cycle_ns(cases[case][peer], number))
    finally:
        if gc_was_enabled:
            gc.enable()
        ours.close()
        ours.unlink()
        theirs.close()
        theirs.unlink()

    load_after = os.getloadavg()[0]
    rows = []
    for case in cases:
        ours_ns = median(results[case, "ashmem.compat"])
        theirs_ns = median(results[case, "multiprocessing.shared_memory"])
        rows.append(
            [case, format_ns(ours_ns), format_ns(theirs_ns), format_ratio(ours_ns / theirs_ns)]
        )
    notes = [
        f"Median over {rounds} interleaved rounds of {number} cycles each (garbage collector "
        "off), 4 KiB blocks, nothing touched. Ratio: ashmem.compat's time over "
        "multiprocessing's (lower is better). No target: the drop-in is for correctness "
        "(no leak, no tracker), and this shows what a name costs. Run: "
        "`python benchmarks/bench_compat.py`"
        + (" (`--quick`: smoke run, not for the README)." if args.quick else "."),
        f"Load average (1 min) {load_before:.2f} before and {load_after:.2f} after the run, on "
        f"{os.cpu_count()} cores: other work shared the machine, so compare the ratio first. "
        f"Names live in {compat._directory()}; the entry and /proc lookups are file-system "
        "calls, so their cost depends on that file system (a tmpfs under $XDG_RUNTIME_DIR on "
        "most desktops).",
    ]
    publish(
        "compat",
        "Drop-in: ashmem.compat vs multiprocessing.shared_memory",
        ["cycle", "ashmem.compat", "multiprocessing.shared_memory", "ratio"],
        rows,
        notes,
        readme=not args.no_readme,
    )


if __name__ == "__main__":
    main()
