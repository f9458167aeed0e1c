"""Two speeds of one binder round trip: does the address-space layout pick the speed?

On this project's 2-core VM a binder round trip with caller and service on one core runs at
one of two speeds, fixed for the life of the processes: the usual one, and about 1.4x
slower, while the raw socket ping-pong measured by the same processes does not move. This
script starts fresh processes and counts how often each speed comes up with address-space
layout randomization (ASLR) on, as every program runs by default, and with it off for the
whole process tree (``setarch <machine> -R``: every process gets the same layout).

Each child pins itself to CPU 0, starts a binder service (``start_service``, a spawned
process, also pinned to CPU 0) and forks ``bench_binder``'s raw ``SOCK_SEQPACKET`` echo
loop on the same CPU, then times empty round trips to both, interleaved: the median of 5
rounds of 20,000 calls each. The parent runs the children alternately with and without
ASLR and prints each child's binder time, its raw time and their ratio. It counts a child
as slow when its ratio is more than 1.2x the median ratio of the children run without
ASLR.

``--mixed`` adds two modes that give the service another layout than its client (the
client sets or clears ADDR_NO_RANDOMIZE with ``personality(2)`` before it spawns the
service): client fixed and service randomized, client randomized and service fixed.

Run ``python benchmarks/profile_layout.py [children per mode, default 24] [--mixed]``. It
prints only; the README quotes it. Needs ``setarch`` (util-linux).
"""

from __future__ import annotations

import ctypes
import os
import socket
import subprocess
import sys
from statistics import median

from _common import ADDR_NO_RANDOMIZE, fixed_layout_command

CALLS = 20_000
ROUNDS = 5
SLOW = 1.2  # a child's binder/raw ratio over the no-ASLR median that counts as slow


#: ``personality(QUERY)`` reads the current value without changing it.
QUERY = 0xFFFFFFFF


def child(service_layout: str) -> None:
    import bench_binder as bench
    from ashmem.binder import start_service

    if service_layout != "same":
        # The service is spawned (a new exec), so it takes the personality set here; this
        # process keeps the layout it started with.
        libc = ctypes.CDLL(None, use_errno=True)
        current = libc.personality(QUERY)
        if service_layout == "fixed":
            libc.personality(current | ADDR_NO_RANDOMIZE)
        else:
            libc.personality(current & ~ADDR_NO_RANDOMIZE)
    os.sched_setaffinity(0, {0})
    service = start_service(bench.BenchService, f"profile.layout.{os.getpid()}", timeout=30)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    # The echo closes its copy of our end, so it sees end-of-file when this process ends,
    # however it ends.
    echo = bench.FORK.Process(target=echo_loop, args=(ours, theirs), daemon=True)
    try:
        bench.pin_process(service.pid, {0})
        proxy = service.binder
        echo.start()
        theirs.close()
        header = bytes(16)

        def raw() -> None:
            ours.send(header)
            ours.recv(64)

        def binder() -> None:
            proxy.transact(bench.EMPTY)

        for call in (raw, binder):
            bench.per_call(call, 2000)  # warm up
        peers = {"binder": binder, "raw": raw}
        times = bench.interleaved(
            {name: lambda call=call: bench.per_call(call, CALLS) for name, call in peers.items()},
            ROUNDS,
        )
        print(f"{times['binder']:.0f} {times['raw']:.0f}", flush=True)
    finally:
        ours.close()
        theirs.close()
        if echo.pid is not None:
            echo.join(10)
        service.stop()


def echo_loop(ours: socket.socket, theirs: socket.socket) -> None:
    import bench_binder as bench

    ours.close()
    bench.seqpacket_server(theirs)


def main() -> None:
    counts = [arg for arg in sys.argv[1:] if arg.isdigit()]
    per_mode = int(counts[0]) if counts else 24
    script = os.path.abspath(__file__)
    fixed = fixed_layout_command([sys.executable, script, "--child"])
    modes = {
        "ASLR on": [sys.executable, script, "--child", "same"],
        "ASLR off": [*fixed, "same"],
    }
    if "--mixed" in sys.argv:
        modes["client fixed, service randomized"] = [*fixed, "randomized"]
        modes["client randomized, service fixed"] = [sys.executable, script, "--child", "fixed"]
    results: dict[str, list[tuple[float, float]]] = {mode: [] for mode in modes}
    for _ in range(per_mode):
        for mode, argv in modes.items():
            try:
                out = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=True)
                # The last line is the child's (a service it spawned shares its stdout).
                binder_ns, raw_ns = (float(x) for x in out.stdout.splitlines()[-1].split())
            except (subprocess.SubprocessError, ValueError, IndexError) as exc:
                stderr = getattr(exc, "stderr", "") or ""
                print(f"{mode}: a child failed, skipped: {exc!r} {stderr[-500:]}", flush=True)
                continue
            results[mode].append((binder_ns, raw_ns))
    baseline = median(b / r for b, r in results["ASLR off"])
    print(
        f"{per_mode} children per mode, each: binder and raw SOCK_SEQPACKET empty round trips, "
        f"one core, median of {ROUNDS} x {CALLS} calls; slow: binder/raw over {SLOW}x the "
        f"median ratio without ASLR ({baseline:.2f}x)"
    )
    for mode, pairs in results.items():
        pairs.sort(key=lambda pair: pair[0] / pair[1])  # by ratio; the columns line up
        slow = sum(b / r > SLOW * baseline for b, r in pairs)
        print(f"\n{mode}: {slow} of {len(pairs)} children slow")
        print("  binder/raw: " + " ".join(f"{b / r:6.2f}" for b, r in pairs))
        print("  binder µs:  " + " ".join(f"{b / 1000:6.2f}" for b, _ in pairs))
        print("  raw µs:     " + " ".join(f"{r / 1000:6.2f}" for _, r in pairs))


if __name__ == "__main__":
    if "--child" in sys.argv:
        child(sys.argv[sys.argv.index("--child") + 1])
    else:
        main()
