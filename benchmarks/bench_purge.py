"""Purgeable memory: pin + unpin cost, purging 1 GiB, PurgeableCache against functools.lru_cache.

Three measurements, each with its peers in the same run:

pin + unpin
    ``region.pin_region`` then ``region.unpin_region`` of one page and of a whole 1 GiB
    region, and the same through ``SharedMemory.pin``/``unpin``, against the floor: a bare
    ``fcntl(F_OFD_SETLK)`` read lock and unlock of one page on a private description (what
    a pin and an unpin must do at the least). Rounds of ``number`` pairs interleave the
    peers; the table shows the median per call (half a pair). Target: ≤ 10 µs per call for
    one page.
purge 1 GiB
    A 1 GiB region, every page written (``MADV_POPULATE_WRITE``), unpinned, then
    ``purge_all_caches()``: time and the bytes of memory returned (``st_blocks`` before and
    after). Floor: a bare ``fallocate(PUNCH_HOLE)`` of the same, freshly populated region.
PurgeableCache
    64 values of 256 KiB (a 16 MiB working set), 20,000 gets with Zipf-distributed keys
    (the same seeded sequence for every peer); ``regenerate`` fills the value from its key.
    ``PurgeableCache`` with a purge budget of half the working set
    (``ashmem.purge.configure(budget_bytes=8 MiB)``), against ``functools.lru_cache``
    holding everything (all memory, every repeat a hit) and holding half (32 entries).
    Memory is what the cache holds at the end: resident bytes of the cache's regions, or
    the sizes of the values ``lru_cache`` keeps.
"""

from __future__ import annotations

import fcntl
import functools
import gc
import mmap
import os
import random
import struct
import time
from collections.abc import Callable

import ashmem
import ashmem.purge
from _common import (
    format_bytes,
    format_ns,
    format_ratio,
    median,
    parse_args,
    publish,
    verdict,
)
from ashmem import _pins, region

PAGE = mmap.PAGESIZE
GiB = 1 << 30
MiB = 1 << 20
TARGET_NS = 10_000
F_OFD_SETLK = 37
_RD = struct.pack("hhqqi4x", fcntl.F_RDLCK, 0, 0, PAGE, 0)
_UN = struct.pack("hhqqi4x", fcntl.F_UNLCK, 0, 0, PAGE, 0)


def per_call_ns(pair: Callable[[], None], number: int) -> float:
    t0 = time.perf_counter_ns()
    for _ in range(number):
        pair()
    return (time.perf_counter_ns() - t0) / number / 2


def bench_pins(rounds: int, number: int) -> list[list[str]]:
    small = ashmem.SharedMemory.create("bench-pin", PAGE)
    big = ashmem.SharedMemory.create("bench-pin-1g", GiB, reserve=False)
    small_fd, big_fd = small.fileno(), big.fileno()
    floor_fd = os.open(f"/proc/self/fd/{small_fd}", os.O_RDONLY | os.O_CLOEXEC)
    region.unpin_region(small_fd)
    region.unpin_region(big_fd)
    ashmem.purge.configure(enabled=False)  # measure the calls, not a purge thread

    def floor() -> None:
        fcntl.fcntl(floor_fd, F_OFD_SETLK, _RD)
        fcntl.fcntl(floor_fd, F_OFD_SETLK, _UN)

    def page() -> None:
        region.pin_region(small_fd, 0, PAGE)
        region.unpin_region(small_fd, 0, PAGE)

    def whole_gib() -> None:
        region.pin_region(big_fd)
        region.unpin_region(big_fd)

    def shm_page() -> None:
        small.pin(0, PAGE)
        small.unpin(0, PAGE)

    peers = {
        "fcntl OFD lock + unlock, 1 page (floor)": floor,
        "region.pin_region + unpin_region, 1 page": page,
        "region.pin_region + unpin_region, 1 GiB": whole_gib,
        "SharedMemory.pin + unpin, 1 page": shm_page,
    }
    names = list(peers)
    results: dict[str, list[float]] = {name: [] for name in names}
    gc.disable()
    try:
        for name in names:
            per_call_ns(peers[name], number // 10)
        for r in range(rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                results[name].append(per_call_ns(peers[name], number))
    finally:
        gc.enable()
        os.close(floor_fd)
        small.close()
        big.close()
        ashmem.purge.configure()
    floor_ns = median(results[names[0]])
    rows = []
    for name in names:
        t = median(results[name])
        target = "-"
        if "1 page" in name and "floor" not in name:
            target = f"≤ 10 µs: {verdict(t <= TARGET_NS)}"
        rows.append([name, format_ns(t), format_ratio(t / floor_ns), target])
    return rows


def _populated(name: str, size: int) -> ashmem.SharedMemory:
    shm = ashmem.SharedMemory.create(name, size, reserve=False)
    with shm.map_read_write(populate=True):
        pass
    return shm


def bench_purge(rounds: int, size: int) -> list[list[str]]:
    ours: list[float] = []
    floor: list[float] = []
    returned: list[int] = []
    from ashmem import _sys

    for _ in range(rounds):
        with _populated("bench-purge", size) as shm:
            fd = shm.fileno()
            shm.unpin()
            blocks = os.fstat(fd).st_blocks * 512
            t0 = time.perf_counter_ns()
            purged = region.purge_all_caches()
            ours.append(time.perf_counter_ns() - t0)
            assert purged == size, purged
            returned.append(blocks - os.fstat(fd).st_blocks * 512)
        with _populated("bench-punch", size) as shm:
            fd = os.open(f"/proc/self/fd/{shm.fileno()}", os.O_RDWR | os.O_CLOEXEC)
            t0 = time.perf_counter_ns()
            _sys.punch_hole(fd, 0, size)
            floor.append(time.perf_counter_ns() - t0)
            os.close(fd)
    t, f = median(ours), median(floor)
    return [
        [
            f"region.purge_all_caches(), {format_bytes(size)} unpinned",
            format_ns(t),
            format_bytes(int(median(returned))),
            format_ratio(t / f),
        ],
        [f"bare fallocate(PUNCH_HOLE), {format_bytes(size)} (floor)", format_ns(f), "-", "1x"],
    ]


def zipf_keys(n_keys: int, count: int, seed: int = 8) -> list[int]:
    rng = random.Random(seed)
    weights = [1 / (k + 1) for k in range(n_keys)]
    return rng.choices(range(n_keys), weights=weights, k=count)


def bench_cache(n_keys: int, value_size: int, gets: int) -> list[list[str]]:
    keys = zipf_keys(n_keys, gets)
    working_set = n_keys * value_size
    calls = {"n": 0, "ns": 0}

    def regenerate(key: object) -> bytes:
        t0 = time.perf_counter_ns()
        value = bytes([int(str(key)) % 251]) * value_size
        calls["n"] += 1
        calls["ns"] += time.perf_counter_ns() - t0
        return value

    rows = []
    # PurgeableCache with a purge budget of half the working set.
    ashmem.purge.configure(budget_bytes=working_set // 2)
    cache = ashmem.purge.PurgeableCache()
    calls.update(n=0, ns=0)
    t0 = time.perf_counter_ns()
    for key in keys:
        with cache.get(key, regenerate) as value:
            value[0]
    elapsed = time.perf_counter_ns() - t0
    stats = cache.stats()

    def resident() -> int:
        return sum(os.fstat(s.shm.fileno()).st_blocks * 512 for s in cache._slots.values())

    at_last_get = resident()
    # The budget is the manager thread's job; give it time to catch up (not timed).
    deadline = time.monotonic() + 10
    while _pins.unpinned_bytes() > working_set // 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    settled = resident()
    hit_rate = stats["hits"] / gets
    rows.append(
        [
            "PurgeableCache, purge budget = half the working set",
            f"{hit_rate:.1%}",
            str(calls["n"]),
            format_ns(elapsed / gets),
            f"{at_last_get / MiB:.2f} MiB at the last get, {settled / MiB:.2f} MiB once the "
            "manager caught up",
        ]
    )
    regen_ns = calls["ns"] / max(calls["n"], 1)
    cache.close()
    ashmem.purge.configure()

    for label, maxsize in (("holding everything", None), ("holding half", n_keys // 2)):
        calls.update(n=0, ns=0)
        cached = functools.lru_cache(maxsize=maxsize)(regenerate)
        t0 = time.perf_counter_ns()
        for key in keys:
            cached(key)[0]
        elapsed = time.perf_counter_ns() - t0
        info = cached.cache_info()
        rows.append(
            [
                f"functools.lru_cache, {label}",
                f"{info.hits / gets:.1%}",
                str(calls["n"]),
                format_ns(elapsed / gets),
                format_bytes(info.currsize * value_size),
            ]
        )
        cached.cache_clear()
    rows.append(["(one regenerate call)", "-", "-", format_ns(regen_ns), "-"])
    return rows


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    rounds = 5 if args.quick else 21
    number = 2000 if args.quick else 20000
    purge_rounds = 1 if args.quick else 5
    purge_size = 256 * MiB if args.quick else GiB
    gets = 2000 if args.quick else 20000

    pin_rows = bench_pins(rounds, number)
    purge_rows = bench_purge(purge_rounds, purge_size)
    cache_rows = bench_cache(64, 256 * 1024, gets)
    missed = any("MISSED" in row[-1] for row in pin_rows)

    suffix = " (`--quick`: smoke run, not for the README)." if args.quick else "."
    publish(
        "purge-pin",
        "Purgeable memory: pin + unpin, per call",
        ["peer", "median per call", "/ floor", "target"],
        pin_rows,
        [
            f"Median over {rounds} interleaved rounds of {number} pin+unpin pairs, per call "
            "(half a pair), garbage collector off, purge manager disabled. The 1 GiB region "
            "is not reserved: a pin locks bytes, it never touches pages, so its size does not "
            "matter. Run: `python benchmarks/bench_purge.py`" + suffix,
            *(["MISSED: a one-page row is over 10 µs per call."] if missed else []),
        ],
        readme=not args.no_readme,
    )
    publish(
        "purge-purge",
        "Purgeable memory: purging unpinned pages",
        ["what", "median time", "memory returned", "/ floor"],
        purge_rows,
        [
            f"Median over {purge_rounds} rounds; each round populates a fresh region. "
            "purge_all_caches() takes the purger's write lock, marks the range purged, punches "
            "and unlocks; the floor is the punch alone."
        ],
        readme=not args.no_readme,
    )
    publish(
        "purge-cache",
        "Purgeable memory: PurgeableCache against functools.lru_cache",
        ["cache", "hit rate", "regenerate calls", "per get", "memory held at the end"],
        cache_rows,
        [
            f"{gets} gets of 64 keys (Zipf, seeded), values of 256 KiB (16 MiB working set). "
            "The budget is enforced by the purge manager thread after the unpins that "
            "overflow it; it shares the GIL with the loop of gets, so it can fall behind and "
            "the cache then holds more than the budget (and hits more) until it catches up. "
            "lru_cache's memory is the values it holds (Python objects); PurgeableCache's is "
            "the resident bytes of its regions."
        ],
        readme=not args.no_readme,
    )


if __name__ == "__main__":
    main()
