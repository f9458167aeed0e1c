"""ashmem.logd: producer cost per record, throughput to disk, collector speed, loss on SIGKILL.

Producer cost: ``logger.info("msg %d", i)`` in a loop, per call, for each peer in the same
run, rounds interleaved (a, b, c, ..., a, b, c, ...); each cell is the median of the
per-round means.

logging + NullHandler (the floor)
    What the stdlib logging call costs before any handler does work.
ashmem.logd.Handler
    The same logger with our Handler; the ring is 16 MiB so that a round fits without
    waiting for the collector (its speed is measured separately below).
ashmem.logd direct (get_logger)
    ``log.info("msg %d", i)`` on ``ashmem.logd.get_logger``.
logging.FileHandler
    Writes (and flushes) each record to a file on the same disk.
QueueHandler -> multiprocessing.Queue -> QueueListener
    The stdlib's multi-process recipe; the listener runs in another process and writes to a
    file.
loguru enqueue=True
    ``logger.info("msg {}", i)`` on loguru with a file sink added with ``enqueue=True`` (the
    record goes through a multiprocessing queue to a writer thread); loguru's own
    multi-process setup.
concurrent-log-handler
    ``ConcurrentRotatingFileHandler`` on a stdlib logger: every record takes a file lock
    and is written to the shared file by the producer itself.

The last two are in the ``bench`` extra; a peer that is not installed is left out and the
run says so.

Throughput: 1, 2, 4 and 8 producer processes each log N records with the direct API, then
``flush()``; the clock stops when every producer's flush has returned, i.e. every record is
in a segment file.

Collector: one process drains a ring holding N records into compressed blocks
(``Drain.take`` + ``SegmentWriter.append``: checksum checks, zstd, write); records/s on one
core.

Loss: a producer logs as fast as it can and publishes, after each call returned, how many
returned; it is SIGKILLed once half of them have; the table counts records that returned
from the call and never reached the file.
"""

from __future__ import annotations

import logging
import logging.handlers
import mmap
import multiprocessing
import os
import signal
import struct
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import ashmem.logd
from _common import format_ratio, median, parse_args, publish, verdict
from ashmem.logd import _ring, _segment


def _logger(name: str, handler: logging.Handler) -> logging.Logger:
    log = logging.getLogger(name)
    log.handlers[:] = [handler]
    log.propagate = False
    log.setLevel(logging.INFO)
    return log


def _listener(queue: Any, path: str) -> None:
    handler = logging.FileHandler(path)
    listener = logging.handlers.QueueListener(queue, handler)
    listener.start()
    signal.sigwait([signal.SIGTERM])
    listener.stop()  # writes whatever reached the queue
    handler.close()


def _stop_listener(listener: Any, queue: Any) -> None:
    """Stop a listener process; never let its queue hang this process's exit."""
    listener.terminate()
    listener.join(30)
    if listener.is_alive():  # stuck on a message a SIGKILLed producer cut in half
        listener.kill()
        listener.join(10)
    queue.cancel_join_thread()
    queue.close()


def _time_calls(call: Callable[[int], None], n: int) -> float:
    t0 = time.perf_counter_ns()
    for i in range(n):
        call(i)
    return (time.perf_counter_ns() - t0) / n


def producer_costs(n: int, rounds: int, tmp: str) -> dict[str, float]:
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGTERM])
    listener = ctx.Process(
        target=_listener, args=(queue, os.path.join(tmp, "queue.log")), daemon=True
    )
    listener.start()
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGTERM])
    null = _logger("bench.null", logging.NullHandler())
    ours = _logger("bench.ours", ashmem.logd.Handler())
    direct = ashmem.logd.get_logger("bench.direct")
    filed = _logger("bench.file", logging.FileHandler(os.path.join(tmp, "file.log")))
    queued = _logger("bench.queue", logging.handlers.QueueHandler(queue))
    peers: dict[str, Callable[[int], None]] = {
        "logging + NullHandler (floor)": lambda i: null.info("msg %d", i),
        "ashmem.logd.Handler": lambda i: ours.info("msg %d", i),
        "ashmem.logd direct API": lambda i: direct.info("msg %d", i),
        "logging.FileHandler": lambda i: filed.info("msg %d", i),
        "QueueHandler + mp.Queue + QueueListener": lambda i: queued.info("msg %d", i),
    }
    loguru_sink = None
    if _loguru() is not None:
        lg = _loguru()
        loguru_sink = lg.add(
            os.path.join(tmp, "loguru.log"), enqueue=True, format="{message}",
            filter=lambda record: record["extra"].get("peer") == "cost",
        )  # fmt: skip
        bound = lg.bind(peer="cost")
        peers[LOGURU] = lambda i: bound.info("msg {}", i)
    concurrent = _concurrent_handler(os.path.join(tmp, "concurrent.log"))
    if concurrent is not None:
        locked = _logger("bench.concurrent", concurrent)
        peers[CONCURRENT] = lambda i: locked.info("msg %d", i)
    samples: dict[str, list[float]] = {k: [] for k in peers}
    for _ in range(rounds):
        for name, call in peers.items():
            samples[name].append(_time_calls(call, n))
            if name.startswith("ashmem"):
                ashmem.logd.flush(timeout=60)  # the next round starts with an empty ring
    _stop_listener(listener, queue)
    if loguru_sink is not None:
        _loguru().remove(loguru_sink)  # waits for its queue to drain
    return {k: median(v) for k, v in samples.items()}


LOGURU = "loguru enqueue=True"
CONCURRENT = "concurrent-log-handler"


def _loguru() -> Any:
    """loguru's logger without its default stderr sink, or None if loguru is missing."""
    try:
        from loguru import logger
    except ImportError:
        return None
    if not getattr(_loguru, "cleared", False):
        logger.remove()
        _loguru.cleared = True  # type: ignore[attr-defined]
    return logger


def _concurrent_handler(path: str) -> logging.Handler | None:
    try:
        from concurrent_log_handler import ConcurrentRotatingFileHandler
    except ImportError:
        return None
    handler: logging.Handler = ConcurrentRotatingFileHandler(path, "a")
    return handler


def _throughput_worker(n: int, ready: Any, go: Any) -> None:
    log = ashmem.logd.get_logger("bench.tp")
    log.info("warm-up")
    ashmem.logd.flush(timeout=60)
    ready.release()
    go.wait()
    for i in range(n):
        log.info("msg %d", i)
    ashmem.logd.flush(timeout=120)


def throughput(procs: int, n: int) -> float:
    ctx = multiprocessing.get_context("fork")
    ready, go = ctx.Semaphore(0), ctx.Event()
    workers = [ctx.Process(target=_throughput_worker, args=(n, ready, go)) for _ in range(procs)]
    for w in workers:
        w.start()
    for _ in workers:
        ready.acquire()
    t0 = time.perf_counter()
    go.set()
    for w in workers:
        w.join(300)
        assert w.exitcode == 0
    return procs * n / (time.perf_counter() - t0)


def collector_rate(n: int, tmp: str) -> float:
    mm = mmap.mmap(-1, 256 << 20)
    producer = _ring.Producer(mm, 1, on_full="drop")
    for i in range(n):
        producer.write_log(20, "INFO", "bench", f"msg {i}", "MainProcess", None, "{}", i, 1)
    cores = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(cores)})
    t0 = time.perf_counter()
    drain = _ring.Drain(mm)
    writer = _segment.SegmentWriter(tmp, fsync="never")
    while True:
        records = drain.take(8 << 20)
        if not records:
            break
        writer.append([_segment.Chunk(0, 1, 1, drain.last_seq, b"".join(records))])
        drain.commit()
    writer.close()
    rate = n / (time.perf_counter() - t0)
    os.sched_setaffinity(0, cores)
    return rate


def _loss_worker(kind: str, acks: mmap.mmap, queue: Any, path: str) -> None:
    fmt = "msg %d"
    if kind == "ashmem":
        log: Any = ashmem.logd.get_logger("bench.loss")
    elif kind == "queue":
        log = _logger("bench.lossq", logging.handlers.QueueHandler(queue))
    elif kind == "loguru":
        lg = _loguru()
        lg.add(path, enqueue=True, format="{message}")
        log, fmt = lg, "msg {}"
    elif kind == "concurrent":
        log = _logger("bench.lossc", _concurrent_handler(path))  # type: ignore[arg-type]
    else:
        log = _logger("bench.lossf", logging.FileHandler(path))
    i = 0
    while True:
        log.info(fmt, i)
        i += 1
        struct.pack_into("<Q", acks, 0, i)


def loss(kind: str, n: int, tmp: str) -> tuple[int, int]:
    """(records returned from the call, records lost) for one SIGKILL mid-stream."""
    ctx = multiprocessing.get_context("fork")
    acks = mmap.mmap(-1, 8)
    path = os.path.join(tmp, f"loss-{kind}.log")
    queue = ctx.Queue() if kind == "queue" else None
    listener = None
    if queue is not None:
        signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGTERM])
        listener = ctx.Process(target=_listener, args=(queue, path), daemon=True)
        listener.start()
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGTERM])
    worker = ctx.Process(target=_loss_worker, args=(kind, acks, queue, path))
    worker.start()
    while struct.unpack_from("<Q", acks)[0] < n:
        time.sleep(0.0005)
    worker.kill()
    worker.join()
    returned = struct.unpack_from("<Q", acks)[0]
    if kind == "ashmem":
        return returned, -1  # counted by the caller after the collector drained
    if listener is not None:
        time.sleep(1.0)  # let the listener write what reached the queue
        _stop_listener(listener, queue)
    with open(path) as f:
        got = sum(1 for line in f if line.startswith("msg "))
    return returned, max(0, returned - got)


def main() -> int:
    args = parse_args("ashmem.logd: producer cost, throughput, collector speed, loss")
    n, rounds = (2000, 3) if args.quick else (20000, 7)
    tmp = tempfile.mkdtemp(prefix="bench-logd-")
    rows: list[list[str]] = []
    with ashmem.logd.start(os.path.join(tmp, "logs"), ring_size=16 << 20):
        costs = producer_costs(n, rounds, tmp)
    floor = costs["logging + NullHandler (floor)"]
    queue_cost = costs["QueueHandler + mp.Queue + QueueListener"]
    loguru_cost = costs.get(LOGURU)
    targets = {
        "ashmem.logd.Handler": ("<= floor + 1.5 µs", costs["ashmem.logd.Handler"] <= floor + 1500),
        "ashmem.logd direct API": ("<= 1 µs", costs["ashmem.logd direct API"] <= 1000),
    }
    for name, cost in costs.items():
        target, ok = targets.get(name, ("", None))
        if name.startswith("ashmem"):
            speedup = queue_cost / cost
            target = f"{target}; >= 5x QueueHandler ({format_ratio(speedup)})"
            ok = bool(ok) and speedup >= 5
            if loguru_cost is not None:
                vs_loguru = loguru_cost / cost
                target = f"{target}; >= 5x loguru enqueue ({format_ratio(vs_loguru)})"
                ok = ok and vs_loguru >= 5
        rows.append(
            [
                "producer cost per call",
                name,
                f"{cost / 1000:.2f} µs",
                format_ratio(cost / floor),
                target,
                verdict(ok) if ok is not None else "",
            ]
        )
    counts = [1, 2] if args.quick else [1, 2, 4, 8]
    per = 5000 if args.quick else 100000
    with ashmem.logd.start(os.path.join(tmp, "tp"), ring_size=4 << 20):
        for procs in counts:
            rate = throughput(procs, per // procs if procs > 1 else per)
            rows.append(
                ["throughput to disk", f"{procs} producer processes", f"{rate:,.0f} rec/s",
                 "", "", ""]
            )  # fmt: skip
    rate = collector_rate(20000 if args.quick else 500000, tmp)
    rows.append(
        ["collector, one core", "drain + zstd + write", f"{rate:,.0f} rec/s", "",
         ">= 500k rec/s", verdict(rate >= 500_000)]
    )  # fmt: skip
    kill_at = 2000 if args.quick else 20000
    kinds = [("file", "logging.FileHandler"), ("queue", "QueueHandler + mp.Queue + QueueListener")]
    if _loguru() is not None:
        kinds.append(("loguru", LOGURU))
    if _concurrent_handler(os.path.join(tmp, "probe.log")) is not None:
        kinds.append(("concurrent", CONCURRENT))
    for kind, label in [*kinds, ("ashmem", "ashmem.logd")]:
        if kind == "ashmem":
            d = os.path.join(tmp, "loss")
            with ashmem.logd.start(d):
                returned, _ = loss(kind, kill_at, tmp)
            got = sum(1 for e in ashmem.logd.read(d) if e.record.logger == "bench.loss")
            lost = max(0, returned - got)
        else:
            returned, lost = loss(kind, kill_at, tmp)
        rows.append(
            ["lost on SIGKILL", label, f"{lost} of {returned}", "",
             "0" if kind == "ashmem" else "", verdict(lost == 0) if kind == "ashmem" else ""]
        )  # fmt: skip
    notes = [
        "Producer cost: median over rounds of the mean per call; ratio to the NullHandler "
        "floor (the whole stdlib logging call with a handler that does nothing). Targets from "
        "issue 9. MISSED: the producer is pure Python (str.encode, struct.pack, zlib.crc32, "
        "one mmap slice store, a lock), each step a few hundred ns on this machine; the 1 µs "
        "and floor + 1.5 µs targets would need a C extension. The QueueHandler peer only "
        "hands a record to a feeder thread; what that costs on SIGKILL is in the loss rows.",
        "Throughput: producers log with the direct API into 4 MiB rings; one collector on "
        "this 2-core machine, so more producers share the cores with it.",
        "Measured on a shared 2-core VM while other developers ran builds and tests: trust "
        "the same-run ratios over the absolute times.",
    ]
    missing = [name for name in (LOGURU, CONCURRENT) if name not in costs]
    if missing:
        notes.append(f"Not installed, so not measured: {', '.join(missing)} (the bench extra).")
    publish(
        "logd",
        "Log collection (ashmem.logd)",
        ["benchmark", "peer", "result", "vs floor", "target", "verdict"],
        rows,
        notes,
        readme=not args.no_readme,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
