"""Where a hand-off's and a lifecycle's microseconds go: ashmem's Python against bare calls.

Not a ``bench_*`` script (``make bench`` does not run it and it writes no README table): it
measures, in one process over a ``SOCK_SEQPACKET`` socketpair, the paths the hand-off and
lifecycle tables time, split where the costs are:

send
    ``fdpass.send(sock, [shm])`` against ``socket.send_fds(sock, [b"r"], [fd])``.
receive + map
    ``fdpass.recv`` + ``map_read_only()`` + ``m[0]``, ``m[-1]`` (the consumer's timed window
    in bench_handoff) against ``socket.recv_fds`` + ``mmap.mmap`` + the same reads.
clean-up
    ``m.close()`` + ``shm.close()`` of the received region against ``m.close()`` +
    ``os.close(fd)`` (after the consumer's stop stamp in bench_handoff, but paid per hand-off).
lifecycle
    ``SharedMemory.create(size=4096)`` + ``map_read_write()`` + close both, against the same
    work in bare syscalls (memfd_create, ftruncate, size seals, fallocate, mmap, close).

For each path it prints the median time per operation, ashmem's excess over the bare calls
(what ashmem's Python costs: the syscalls are the same, see the README), and the Python
function calls per operation counted by ``cProfile`` (built-ins included, so ``len()`` and
``isinstance()`` count).

``--before REV`` also measures the library as it was at git revision ``REV`` (its ``src/``
exported to a temporary directory), alternating the two in separate processes round by
round, so that both are measured in the same run under the same load::

    python benchmarks/profile_handoff.py --before main
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import fcntl
import gc
import json
import mmap
import os
import pstats
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from statistics import median

ROOT = Path(__file__).resolve().parent.parent
SIZE = 4096
PATHS = ("send", "receive + map", "clean-up", "lifecycle")


# -- worker: runs in a child process with ashmem importable from the chosen src/ ------------


def _worker(loops: int) -> dict[str, dict[str, float]]:
    import ashmem
    from ashmem import fdpass

    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    shm = ashmem.SharedMemory.create("profile", SIZE)
    items, fds = [shm], [shm.fileno()]
    prot_read = mmap.PROT_READ

    def ashmem_handoff(stamps: list[int]) -> None:
        t0 = time.perf_counter_ns()
        fdpass.send(a, items)
        t1 = time.perf_counter_ns()
        _, got = fdpass.recv(b, 1)
        region = got[0]
        m = region.map_read_only()  # type: ignore[union-attr]
        m[0], m[-1]
        t2 = time.perf_counter_ns()
        m.close()
        region.close()  # type: ignore[union-attr]
        t3 = time.perf_counter_ns()
        stamps += (t1 - t0, t2 - t1, t3 - t2)

    def bare_handoff(stamps: list[int]) -> None:
        t0 = time.perf_counter_ns()
        socket.send_fds(a, [b"r"], fds)
        t1 = time.perf_counter_ns()
        _, got, _, _ = socket.recv_fds(b, 16, 1)
        m = mmap.mmap(got[0], 0, prot=prot_read)
        m[0], m[-1]
        t2 = time.perf_counter_ns()
        m.close()
        os.close(got[0])
        t3 = time.perf_counter_ns()
        stamps += (t1 - t0, t2 - t1, t3 - t2)

    def ashmem_lifecycle(stamps: list[int]) -> None:
        t0 = time.perf_counter_ns()
        region = ashmem.SharedMemory.create(size=SIZE)
        m = region.map_read_write()
        m.close()
        region.close()
        stamps.append(time.perf_counter_ns() - t0)

    seals = fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK
    flags = os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING

    def bare_lifecycle(stamps: list[int]) -> None:
        t0 = time.perf_counter_ns()
        fd = os.memfd_create("none", flags)
        os.ftruncate(fd, SIZE)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
        os.posix_fallocate(fd, 0, SIZE)
        m = mmap.mmap(fd, SIZE)
        m.close()
        os.close(fd)
        stamps.append(time.perf_counter_ns() - t0)

    def run(op: Callable[[list[int]], None], n: int) -> list[list[int]]:
        stamps: list[int] = []
        for _ in range(n):
            op(stamps)
        width = len(stamps) // n
        return [stamps[i::width] for i in range(width)]

    out: dict[str, dict[str, float]] = {}
    gc.disable()
    try:
        for op in (ashmem_handoff, bare_handoff, ashmem_lifecycle, bare_lifecycle):
            run(op, loops // 10)  # warm up
        hand_a = run(ashmem_handoff, loops)
        hand_b = run(bare_handoff, loops)
        life_a = run(ashmem_lifecycle, loops)
        life_b = run(bare_lifecycle, loops)
    finally:
        gc.enable()
    for i, path in enumerate(PATHS[:3]):
        out[path] = {"ashmem": median(hand_a[i]), "bare": median(hand_b[i])}
    out["lifecycle"] = {"ashmem": median(life_a[0]), "bare": median(life_b[0])}

    # Python calls per operation (cProfile counts every Python and built-in call).
    def calls(fn: Callable[[], None], n: int = 200) -> float:
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(n):
            fn()
        prof.disable()
        return pstats.Stats(prof).total_calls / n  # type: ignore[attr-defined,no-any-return]

    held: list[object] = []

    def send_only() -> None:
        fdpass.send(a, items)

    def recv_map() -> None:
        _, got = fdpass.recv(b, 1)
        m = got[0].map_read_only()  # type: ignore[union-attr]
        m[0], m[-1]
        held.append((m, got[0]))

    def clean_up() -> None:
        m, region = held.pop()  # type: ignore[misc]
        m.close()
        region.close()

    def lifecycle() -> None:
        region = ashmem.SharedMemory.create(size=SIZE)
        region.map_read_write().close()
        region.close()

    # Each counted loop sees only its own calls: the setup it needs is done outside it.
    out["send"]["calls"] = calls(send_only)
    for _ in range(200):
        fdpass.recv(b, 1)[1][0].close()  # type: ignore[union-attr]
    for _ in range(200):
        fdpass.send(a, items)
    out["receive + map"]["calls"] = calls(recv_map)
    out["clean-up"]["calls"] = calls(clean_up)
    out["lifecycle"]["calls"] = calls(lifecycle)
    shm.close()
    a.close()
    b.close()
    return out


# -- driver ------------------------------------------------------------------------------


@contextlib.contextmanager
def exported_src(rev: str) -> Iterator[Path]:
    """``src/`` of git revision ``rev``, exported to a temporary directory."""
    with tempfile.TemporaryDirectory(prefix="ashmem-profile-") as tmp:
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", rev, "src"],
            check=True,
            capture_output=True,
        ).stdout
        tar_path = Path(tmp) / "src.tar"
        tar_path.write_bytes(archive)
        with tarfile.open(tar_path) as tar:
            tar.extractall(tmp, filter="data")
        yield Path(tmp) / "src"


def run_worker(src: Path, loops: int) -> dict[str, dict[str, float]]:
    env = dict(os.environ, PYTHONPATH=str(src))
    result = subprocess.run(
        [sys.executable, __file__, "--worker", str(loops)],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    )
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", metavar="REV", help="also measure git revision REV")
    parser.add_argument("--rounds", type=int, default=5, help="worker processes per version")
    parser.add_argument("--loops", type=int, default=5000, help="operations per worker")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        print(json.dumps(_worker(args.worker)))
        return

    with contextlib.ExitStack() as stack:
        versions = {"now": ROOT / "src"}
        if args.before:
            versions = {f"at {args.before}": stack.enter_context(exported_src(args.before))}
            versions["now"] = ROOT / "src"
        results: dict[str, list[dict[str, dict[str, float]]]] = {v: [] for v in versions}
        for r in range(args.rounds):
            order = list(versions) if r % 2 == 0 else list(reversed(versions))
            for version in order:
                results[version].append(run_worker(versions[version], args.loops))
    print(
        f"{args.rounds} rounds x {args.loops} operations per path and version, versions "
        "alternating; median of per-round medians; calls: Python + built-in calls per "
        "operation (cProfile)"
    )
    print(f"{'path':<15} {'version':<18} {'ashmem':>9} {'bare':>9} {'excess':>9} {'calls':>6}")
    for path in PATHS:
        for version, rounds in results.items():
            ash = median(r[path]["ashmem"] for r in rounds) / 1000
            bare = median(r[path]["bare"] for r in rounds) / 1000
            excess = median((r[path]["ashmem"] - r[path]["bare"]) for r in rounds) / 1000
            count = median(r[path]["calls"] for r in rounds)
            print(
                f"{path:<15} {version:<18} {ash:>7.2f}µs {bare:>7.2f}µs {excess:>7.2f}µs "
                f"{count:>6.1f}"
            )


if __name__ == "__main__":
    main()
