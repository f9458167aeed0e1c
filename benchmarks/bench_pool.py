"""Pool: map a function over 8 chunks of a large float64 array, with 2 worker processes.

Each task sums its chunk (it reads every byte). Peers, each with its workers already started
and warmed up:

ashmem.Pool, ordinary array
    ``ashmem.Pool.map(f, np.array_split(a, 8))`` with a plain numpy array: each chunk is
    larger than ``max_nbytes`` (1 MiB), so it is copied once into a sealed region and the
    worker gets a read-only view.
ashmem.Pool, region-backed array
    The same with ``a`` made by ``ashmem.numpy`` in the first place: the chunks travel as a
    descriptor plus offset, nothing is copied.
multiprocessing.Pool
    ``multiprocessing.Pool.map``: each chunk is pickled, written through a pipe, unpickled.
joblib.Parallel
    ``Parallel(n_jobs=2)(delayed(f)(c) for c in chunks)`` with joblib's defaults (loky
    workers, auto-memmapping of arrays above 1 MB into a file in /dev/shm or a temp folder).

Wall time: from the call to the last result in hand. Memory, in a separate run of the same
call (sampling costs CPU): the sum of PSS over this process and all its descendants, sampled
every 5 ms, and the same sum just before the call (array
allocated, every pool idle); "extra / array" is how much the peak exceeds that idle sum, as
a multiple of the array's size. The target, peak at most 1.2x the array plus the idle pool,
is extra / array at most 0.2. Rounds interleave the peers; the table shows medians.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections.abc import Callable

import numpy as np

import ashmem
import ashmem.numpy as anp
from _common import format_bytes, format_ns, format_ratio, median, parse_args, publish, verdict

MiB = 1 << 20
CHUNKS = 8
WORKERS = 2


def total(chunk: np.ndarray) -> float:
    return float(chunk.sum())


def _children_of(pid: int) -> set[int]:
    tree = {pid}
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    parents[int(entry)] = int(stat.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                pass
    grew = True
    while grew:
        grew = False
        for child, parent in parents.items():
            if parent in tree and child not in tree:
                tree.add(child)
                grew = True
    return tree


def tree_pss(pids: set[int] | None = None) -> int:
    """Sum of PSS (bytes) over ``pids`` (default: this process and its descendants)."""
    pss = 0
    for pid in _children_of(os.getpid()) if pids is None else pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as rollup:
                for line in rollup:
                    if line.startswith("Pss:"):
                        pss += int(line.split()[1]) * 1024
                        break
        except OSError:
            pass
    return pss


class PeakSampler:
    """Samples the PSS of the process tree every 5 ms in a thread while the ``with`` body
    runs. The tree is listed once at the start (the pools' workers are long-lived), so a
    sample reads only their ``smaps_rollup``. Sampling costs CPU, so timed runs are separate
    runs without it."""

    def __enter__(self) -> PeakSampler:
        self.pids = _children_of(os.getpid())
        self.peak = tree_pss(self.pids)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, tree_pss(self.pids))

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, tree_pss(self.pids))


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    size = 64 * MiB if args.quick else 512 * MiB
    rounds = 2 if args.quick else 3
    from joblib import Parallel, delayed

    ctx = multiprocessing.get_context("forkserver")
    plain = np.random.default_rng(0).random(size // 8)
    region = anp.from_array(plain, name="bench-pool")
    expected = float(plain.sum())
    parallel = Parallel(n_jobs=WORKERS)
    with ashmem.Pool(WORKERS, context=ctx) as ash_pool, ctx.Pool(WORKERS) as mp_pool:
        peers: dict[str, Callable[[], list[float]]] = {
            "ashmem.Pool, ordinary array": lambda: ash_pool.map(
                total, np.array_split(plain, CHUNKS)
            ),
            "ashmem.Pool, region-backed array": lambda: ash_pool.map(
                total, np.array_split(region, CHUNKS)
            ),
            "multiprocessing.Pool": lambda: mp_pool.map(total, np.array_split(plain, CHUNKS)),
            "joblib.Parallel": lambda: parallel(
                delayed(total)(c) for c in np.array_split(plain, CHUNKS)
            ),
        }
        small = np.ones(4 * MiB // 8)  # warm-up: start every worker, memmap path included
        ash_pool.map(total, np.array_split(small, CHUNKS))
        mp_pool.map(total, np.array_split(small, CHUNKS))
        parallel(delayed(total)(c) for c in np.array_split(small, CHUNKS))
        times: dict[str, list[float]] = {p: [] for p in peers}
        ratios: dict[str, list[float]] = {p: [] for p in peers}
        peaks: dict[str, list[float]] = {p: [] for p in peers}
        for _ in range(rounds):
            for name, run in peers.items():
                t0 = time.perf_counter_ns()
                results = run()
                elapsed = time.perf_counter_ns() - t0
                if abs(sum(results) - expected) > 1e-6 * abs(expected):
                    raise RuntimeError(f"{name}: wrong sum {sum(results)} != {expected}")
                times[name].append(elapsed)
                del results
                time.sleep(0.2)  # let freed memory settle before the idle sample
                idle = tree_pss()
                with PeakSampler() as sampler:
                    run()
                peaks[name].append(sampler.peak)
                ratios[name].append(max(0, sampler.peak - idle) / size)
                time.sleep(0.2)
    rows = []
    med = {p: median(times[p]) for p in peers}
    for name in peers:
        rows.append([
            name, format_ns(med[name]), format_bytes(int(median(peaks[name]))),
            f"{median(ratios[name]):.2f}x",
            format_ratio(med["multiprocessing.Pool"] / med[name]),
        ])  # fmt: skip
    best = min(
        ("ashmem.Pool, ordinary array", "ashmem.Pool, region-backed array"), key=lambda p: med[p]
    )
    speedup = med["multiprocessing.Pool"] / med["ashmem.Pool, region-backed array"]
    speedup_plain = med["multiprocessing.Pool"] / med["ashmem.Pool, ordinary array"]
    vs_joblib = med["ashmem.Pool, ordinary array"] / med["joblib.Parallel"]
    vs_joblib_region = med["ashmem.Pool, region-backed array"] / med["joblib.Parallel"]
    mem_region = median(ratios["ashmem.Pool, region-backed array"])
    mem_plain = median(ratios["ashmem.Pool, ordinary array"])
    notes = [
        f"Array: {format_bytes(size)} of float64 in {CHUNKS} chunks, {WORKERS} workers "
        "(forkserver), each task sums its chunk. Peak is the sum of PSS over the whole process "
        "tree; extra / array is (peak - the same sum just before the call) / array size.",
        "Targets: at least 3x faster than multiprocessing.Pool: region-backed "
        f"{format_ratio(speedup)} {verdict(speedup >= 3)}, ordinary array "
        f"{format_ratio(speedup_plain)} {verdict(speedup_plain >= 3)}. No slower than joblib: "
        f"ordinary array at {format_ratio(vs_joblib)} of joblib's time "
        f"{verdict(vs_joblib <= 1.0)}, region-backed at {format_ratio(vs_joblib_region)} "
        f"{verdict(vs_joblib_region <= 1.0)}. Peak memory at most 1.2x the array plus the idle "
        f"pool (extra / array <= 0.2): region-backed {mem_region:.2f}x "
        f"{verdict(mem_region <= 0.2)}, "
        f"ordinary array {mem_plain:.2f}x {verdict(mem_plain <= 0.2)} (an ordinary "
        "array is copied once into regions, as joblib copies it once into its memmap file: "
        "the floor for a plain array is that one copy; make it with ashmem.numpy to need none).",
        f"Fastest ashmem row: {best}.",
        "PSS counts only pages some process maps at the moment of the sample: the regions an "
        "ordinary array is copied into, and joblib's memmap file, hold memory also between "
        "the moments a worker maps them, which /proc/meminfo's Shmem would show (it is "
        "system-wide, so not used here).",
        "Measured while other developers' jobs ran on the same 2 cores: absolute times move "
        "between runs; the same-run ratios are what to compare.",
    ]
    publish("pool", "Pool: sum 8 chunks of a large array in 2 workers",
            ["peer", "wall time", "peak PSS (tree)", "extra / array", "vs multiprocessing.Pool"],
            rows, notes, readme=not args.no_readme)  # fmt: skip


if __name__ == "__main__":
    main()
