"""``ashmem demo logs``: several processes log into one collector, one is SIGKILLed
mid-stream, and every record it had written is still in the files."""

from __future__ import annotations

import logging
import mmap
import multiprocessing
import os
import signal
import struct
import tempfile
import time

from . import Handler, flush, read, start

WORKERS = 3
RECORDS = 2000


def _worker(index: int, acks: mmap.mmap) -> None:
    log = logging.getLogger(f"worker{index}")
    log.handlers[:] = [Handler()]
    log.setLevel(logging.INFO)
    log.propagate = False
    # One 8-byte store per count, never struct.pack_into (it zeroes the bytes first, and a
    # SIGKILL between the two would leave 0): see "Memory ordering" in logd/_ring.py.
    counts = memoryview(acks).cast("Q")
    for i in range(RECORDS):
        log.info("record %d", i)
        counts[index] = i + 1  # after emit returned
    flush(timeout=30)


def main() -> int:
    directory = tempfile.mkdtemp(prefix="ashmem-demo-logs-")
    acks = mmap.mmap(-1, WORKERS * 8)
    ctx = multiprocessing.get_context("fork")
    print(f"collector writing to {directory}")
    with start(directory):
        procs = [ctx.Process(target=_worker, args=(i, acks)) for i in range(WORKERS)]
        for p in procs:
            p.start()
        victim = procs[0]
        deadline = time.monotonic() + 30
        while struct.unpack_from("<Q", acks, 0)[0] < RECORDS // 3:
            if time.monotonic() > deadline or not victim.is_alive():
                break
            time.sleep(0.001)
        assert victim.pid is not None
        os.kill(victim.pid, signal.SIGKILL)
        for p in procs:
            p.join(60)
    counts: dict[int, int] = {}
    for entry in read(directory):
        counts[entry.pid] = counts.get(entry.pid, 0) + 1
    lost = 0
    for i, p in enumerate(procs):
        written = struct.unpack_from("<Q", acks, i * 8)[0]
        collected = counts.get(p.pid or 0, 0)
        how = "SIGKILLed" if p.exitcode == -signal.SIGKILL else f"exit {p.exitcode}"
        print(
            f"worker{i} pid {p.pid} ({how}): {written} records returned from emit, "
            f"{collected} collected"
        )
        lost += max(0, written - collected)
    print("nothing lost" if lost == 0 else f"LOST {lost} records")
    print(f"read them with: ashmem log tail -n 5 {directory}")
    return 0 if lost == 0 else 1
