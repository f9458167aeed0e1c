"""ashmem.logd across real processes: every start method, unrelated processes, SIGKILL of
producers and of the collector, fork during a logging call, dictConfig, disk full, CLI."""

from __future__ import annotations

import contextlib
import json
import logging
import mmap
import os
import pathlib
import random
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import ashmem.logd
from ashmem.logd import _client, _collector, _segment

from .conftest import Children

ASHMEM = [sys.executable, "-m", "ashmem"]


def _by_pid(directory: str) -> dict[int, list[Any]]:
    out: dict[int, list[Any]] = {}
    for e in ashmem.logd.read(directory):
        out.setdefault(e.pid, []).append(e)
    for entries in out.values():
        entries.sort(key=lambda e: e.record.seq)
    return out


def _child_logs(count: int, tag: str) -> None:
    log = logging.getLogger(f"child.{tag}")
    log.handlers[:] = [ashmem.logd.Handler()]
    log.setLevel(logging.DEBUG)
    log.propagate = False
    for i in range(count):
        log.info("%s %d", tag, i, extra={"i": i})
    ashmem.logd.flush(timeout=30)


def test_every_start_method_and_subprocess(
    collector: ashmem.logd.Collector, mp_context: Any, children: Children
) -> None:
    proc = children.start(mp_context, _child_logs, 50, mp_context.get_start_method())
    children.join(proc)
    code = (
        "import logging, ashmem.logd\n"
        "log = ashmem.logd.get_logger('unrelated')\n"
        "[log.info('sub %d', i) for i in range(50)]\n"
        "ashmem.logd.flush(timeout=30)\n"
    )
    sub = subprocess.run([sys.executable, "-c", code], timeout=60)
    assert sub.returncode == 0
    collector.stop()
    logs = _by_pid(collector.directory)
    kid = logs[proc.pid]
    assert [e.record.message for e in kid] == [
        f"{mp_context.get_start_method()} {i}" for i in range(50)
    ]
    assert [e.record.seq for e in kid] == list(range(1, 51))
    assert kid[3].to_json()["extra"] == {"i": 3}
    assert kid[0].uid == os.geteuid()
    (sub_entries,) = [v for v in logs.values() if v[0].record.logger == "unrelated"]
    assert [e.record.message for e in sub_entries] == [f"sub {i}" for i in range(50)]
    assert sub_entries[0].pid not in (proc.pid, os.getpid())


def _producer_until_killed(acks: mmap.mmap, slot: int, threads: int) -> None:
    """Log forever; after each emit returns, publish how many returned."""
    log = ashmem.logd.get_logger(f"victim{slot}")
    handler_log = logging.getLogger(f"victim{slot}")
    handler_log.handlers[:] = [ashmem.logd.Handler()]
    handler_log.propagate = False
    handler_log.setLevel(logging.INFO)
    lock = threading.Lock()
    counter = [0]
    returned = memoryview(acks).cast("Q")  # one 8-byte store per count, unlike pack_into

    def loop() -> None:
        while True:
            with lock:  # one numbering for all threads: "r{i}" in emit order
                i = counter[0]
                if i % 2:
                    log.info("r%d", i)
                else:
                    handler_log.info("r%d", i)
                counter[0] = i + 1
                returned[slot] = i + 1

    for _ in range(threads - 1):
        threading.Thread(target=loop, daemon=True).start()
    loop()


def test_sigkill_producers_at_random_points_loses_nothing_returned(tmp_path: Any) -> None:
    """>= 100 producers SIGKILLed at random points: every record whose emit returned is in
    the files exactly once, in order, and nothing corrupt appears."""
    directory = str(tmp_path / "logs")
    trials, batch = 100, 10
    rng = random.Random(os.getpid())
    acks = mmap.mmap(-1, trials * 8)
    # A small ring: wraps, pads and blocking on a full ring all happen during the kills.
    # block_timeout: a loaded machine must not turn a slow drain into counted drops here.
    collector = ashmem.logd.start(directory, ring_size=16384, interval=0.002, block_timeout=120)
    try:
        ctx = __import__("multiprocessing").get_context("fork")
        pids: dict[int, int] = {}
        for first in range(0, trials, batch):
            procs = []
            for slot in range(first, first + batch):
                p = ctx.Process(target=_producer_until_killed, args=(acks, slot, 1 + slot % 2))
                p.start()
                procs.append((slot, p, rng.choice([0, 1, 5, 50, 500, 3000])))
            for slot, p, at_least in procs:
                deadline = time.monotonic() + 30
                while struct.unpack_from("<Q", acks, slot * 8)[0] < at_least:
                    assert time.monotonic() < deadline, f"producer {slot} made no progress"
                    time.sleep(0.001)
                time.sleep(rng.random() * 0.003)
                os.kill(p.pid, signal.SIGKILL)
            for slot, p, _ in procs:
                p.join(10)
                assert p.exitcode == -signal.SIGKILL, f"producer {slot} exited {p.exitcode}"
                pids[p.pid] = slot
    finally:
        # 0: it drained every ring before exiting (not killed after stop's timeout).
        stopped = collector.stop()
    assert stopped == 0
    damage = [i for i, _ in _segment.read_directory(directory) if isinstance(i, _segment.Damage)]
    assert damage == []
    # Grouped by the producer's logger name, not by pid: pids wrap at 32768 here, and a
    # later producer may get the pid of one killed earlier.
    by_slot: dict[str, list[Any]] = {}
    for e in ashmem.logd.read(directory):
        by_slot.setdefault(e.record.logger, []).append(e)
    for pid, slot in pids.items():
        acked = struct.unpack_from("<Q", acks, slot * 8)[0]
        entries = sorted(by_slot.get(f"victim{slot}", []), key=lambda e: e.record.seq)
        messages = [e.record.message for e in entries]
        assert {e.pid for e in entries} <= {pid}, f"producer {slot}: records of another pid"
        # Everything whose emit returned, plus at most the one being written at the kill.
        wrong = next((i for i, m in enumerate(messages[:acked]) if m != f"r{i}"), None)
        assert len(messages) >= acked and wrong is None, (
            f"producer {slot} (pid {pid}): {acked} returned, {len(messages)} collected, "
            f"first wrong at {wrong}; notices of its pid: "
            f"{[e.record.message for e in by_slot.get('ashmem.logd', []) if e.pid == pid]}"
        )
        assert len(messages) <= acked + 1, f"producer {slot}: {len(messages)} > {acked}+1"
        assert messages == [f"r{i}" for i in range(len(messages))]
        assert [e.record.seq for e in entries] == list(range(1, len(entries) + 1))


def _logd(directory: str, socket_path: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [*ASHMEM, "logd", "--dir", directory, "--socket", socket_path, "--interval=0.005"],
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
    return proc


def test_sigkill_collector_then_new_daemon_recovers_from_client_rings(tmp_path: Any) -> None:
    directory, sock = str(tmp_path / "logs"), str(tmp_path / "logd.sock")
    first = _logd(directory, sock)
    code = (
        "import sys, ashmem.logd\n"
        "log = ashmem.logd.get_logger('survivor')\n"
        "[log.info('a %d', i) for i in range(300)]\n"
        "print('phase1', flush=True); sys.stdin.readline()\n"  # collector is killed here
        "[log.info('b %d', i) for i in range(300)]\n"
        "print('phase2', flush=True); sys.stdin.readline()\n"  # a new one started
        "ashmem.logd.flush(timeout=30)\n"
    )
    env = dict(os.environ, ASHMEM_LOGD=sock)
    client = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env
    )
    try:
        assert client.stdout is not None and client.stdin is not None
        assert client.stdout.readline() == b"phase1\n"
        first.kill()
        first.wait(10)
        client.stdin.write(b"go\n")
        client.stdin.flush()
        assert client.stdout.readline() == b"phase2\n"
        second = _logd(directory, sock)
        client.stdin.write(b"go\n")
        client.stdin.flush()
        assert client.wait(60) == 0
        second.send_signal(signal.SIGTERM)
        assert second.wait(30) == 0
    finally:
        for p in (client, first):
            if p.poll() is None:
                p.kill()
    entries = _by_pid(directory)[client.pid]
    expected = [f"a {i}" for i in range(300)] + [f"b {i}" for i in range(300)]
    assert [e.record.message for e in entries] == expected
    assert [e.record.seq for e in entries] == list(range(1, 601))


def test_fork_while_another_thread_is_inside_a_logging_call(
    collector: ashmem.logd.Collector,
) -> None:
    log = logging.getLogger("forky")
    log.handlers[:] = [ashmem.logd.Handler()]
    log.propagate = False
    stop = threading.Event()

    def spam() -> None:
        while not stop.is_set():
            log.warning("parent spam")

    t = threading.Thread(target=spam)
    t.start()
    kids = []
    try:
        for n in range(5):
            pid = os.fork()
            if pid == 0:  # pragma: no cover - child
                code = 1
                try:
                    log.warning("child %d", n)
                    ashmem.logd.flush(timeout=20)
                    code = 0
                finally:
                    os._exit(code)
            kids.append(pid)
    finally:
        stop.set()
        t.join(10)
    for pid in kids:
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    ashmem.logd.flush(timeout=30)
    collector.stop()
    logs = _by_pid(collector.directory)
    for n, pid in enumerate(kids):
        assert [e.record.message for e in logs[pid]] == [f"child {n}"]
    assert {e.record.message for e in logs[os.getpid()]} >= {"parent spam"}


def test_dictconfig_in_an_unrelated_process(collector: ashmem.logd.Collector) -> None:
    code = (
        "import logging, logging.config, ashmem.logd\n"
        "logging.config.dictConfig({'version': 1, 'handlers': {'shm': {\n"
        "    'class': 'ashmem.logd.Handler', 'formatter': 'f'}},\n"
        "  'formatters': {'f': {'format': 'IGNORED %(message)s'}},\n"
        "  'root': {'level': 'INFO', 'handlers': ['shm']}})\n"
        "logging.getLogger('cfg.sub').info('configured %s', 'ok', extra={'n': [1, 2]})\n"
        "try:\n    1/0\nexcept ZeroDivisionError:\n"
        "    logging.getLogger('cfg').exception('failed')\n"
        "ashmem.logd.flush(timeout=30)\n"
    )
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0
    collector.stop()
    out = subprocess.run(
        [*ASHMEM, "log", "cat", "--json", "--logger", "cfg", collector.directory],
        capture_output=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["message"] for r in rows] == ["configured ok", "failed"]
    assert rows[0]["extra"] == {"n": [1, 2]} and rows[0]["exc"] is None
    assert "ZeroDivisionError" in rows[1]["exc"]
    assert set(rows[0]) == {
        "time", "time_ns", "level", "levelno", "logger", "message", "pid", "tid",
        "process", "uid", "seq", "exc", "extra",
    }  # fmt: skip


def test_cli_filters_tail_and_damage(tmp_path: Any) -> None:
    d = str(tmp_path / "logs")
    with ashmem.logd.start(d, max_segment_bytes=4096, retain_bytes=None):
        log = ashmem.logd.get_logger("cli.test")
        for i in range(200):
            log.log(logging.WARNING if i % 10 == 0 else logging.INFO, "line %d", i)
            if i % 10 == 9:
                ashmem.logd.flush(timeout=30)  # several blocks, so several segments
        ashmem.logd.get_logger("other").error("needle in haystack")
        ashmem.logd.flush(timeout=30)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*ASHMEM, "log", *args], capture_output=True, text=True, timeout=60)

    assert len(_segment.segment_paths(d)) > 1  # rotated by size
    out = run("cat", "--level", "warning", "--logger", "cli", d)
    assert [line.split()[-1] for line in out.stdout.splitlines()] == [
        str(i) for i in range(0, 200, 10)
    ]
    assert run("cat", "--grep", "need+le", d).stdout.count("\n") == 1
    assert run("cat", "--pid", "1", d).stdout == ""
    assert (
        run("cat", "--since", "1h", "--until", "2999-01-01T00:00:00Z", d).stdout.count("\n") == 201
    )
    assert run("cat", "--since", "2999-01-01T00:00:00+00:00", d).stdout == ""
    tail = run("tail", "-n", "3", d).stdout.splitlines()
    assert [t.split()[-1] for t in tail] == ["198", "199", "haystack"]
    # Damage: print the rest, report the range, exit 1.
    path = _segment.segment_paths(d)[0]
    data = bytearray(pathlib.Path(path).read_bytes())
    data[120] ^= 0xFF  # in the first block's index
    pathlib.Path(path).write_bytes(data)
    out = run("cat", d)
    assert out.returncode == 1
    assert f"{path}: bytes 72-" in out.stderr and "damaged (checksum mismatch)" in out.stderr
    assert "needle in haystack" in out.stdout
    assert run("cat", "--key", str(tmp_path / "missing.key"), d).returncode == 2


def test_retention_deletes_oldest_segments(tmp_path: Any) -> None:
    d = str(tmp_path / "logs")
    with ashmem.logd.start(d, max_segment_bytes=4096, retain_bytes=12000):
        log = ashmem.logd.get_logger("ret")
        for i in range(40):
            log.info("%d %s", i, os.urandom(600).hex())  # incompressible: fills segments
            ashmem.logd.flush(timeout=30)
    sizes = [os.path.getsize(p) for p in _segment.segment_paths(d)]
    assert sum(sizes) <= 12000 + max(sizes)
    messages = [e.record.message.split()[0] for e in ashmem.logd.read(d)]
    assert messages[-1] == "39" and "0" not in messages


def test_disk_full_keeps_records_in_the_ring_and_says_so(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """A fault injected at the write call (ENOSPC): no crash, a clear message, nothing
    lost once there is room again."""
    import errno

    d = str(tmp_path / "logs")
    os.makedirs(d)
    sock_path = str(tmp_path / "s.sock")
    listener = _collector.bind_listener(sock_path)
    server = _collector.CollectorServer(d, listener, _collector.Settings(interval=0.005))
    full = threading.Event()
    full.set()
    real_write = _segment._os_write

    def write(fd: int, data: Any) -> int:
        if full.is_set() and len(data) > 72:  # blocks fail, the file header goes through
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(_segment, "_os_write", write)
    thread = threading.Thread(target=server.serve)
    thread.start()
    monkeypatch.setenv(_client.ENV, sock_path)
    _client._readdress(sock_path)
    try:
        log = ashmem.logd.get_logger("full")
        for i in range(20):
            log.info("kept %d", i)
        with pytest.raises(TimeoutError):
            ashmem.logd.flush(timeout=0.3)
        full.clear()
        ashmem.logd.flush(timeout=30)
    finally:
        server.stop()
        thread.join(30)
        listener.close()
        _client._reset_for_address_change()
    assert server.disk_errors > 0
    assert "No space left on device" in capfd.readouterr().err
    assert [e.record.message for e in ashmem.logd.read(d)][-20:] == [f"kept {i}" for i in range(20)]


@pytest.fixture
def tiny_tmpfs(tmp_path: Any) -> Iterator[str]:
    """A 192 KiB tmpfs, where the machine lets us mount one (root, no seccomp veto)."""
    mountpoint = str(tmp_path / "tiny")
    os.makedirs(mountpoint)
    mount = ["mount", "-t", "tmpfs", "-o", "size=192k,mode=0700", "tmpfs", mountpoint]
    try:
        done = subprocess.run(mount, capture_output=True, timeout=30)
    except FileNotFoundError:
        pytest.skip("no mount command")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", mountpoint], timeout=30)


def test_real_disk_full_on_a_tiny_tmpfs(tiny_tmpfs: str, capfd: pytest.CaptureFixture[str]) -> None:
    """A real ENOSPC: the collector says so and keeps running, the producer drops (counted,
    with notices in order), no segment is damaged, and once there is room every record
    written after it is collected."""
    d = os.path.join(tiny_tmpfs, "logs")
    collector = ashmem.logd.start(d, interval=0.005, on_full="drop", ring_size=65536)
    try:
        log = ashmem.logd.get_logger("tiny")
        total, err = 0, ""
        # Batches, each flushed, until the disk is full: then a flush cannot complete.
        while "No space left on device" not in err:
            assert total < 20000, "the tmpfs never filled"
            for _ in range(100):  # random text: zstd cannot squeeze it under the limit
                log.info("r%d %s", total, os.urandom(96).hex())
                total += 1
            with contextlib.suppress(TimeoutError):
                ashmem.logd.flush(timeout=5)
            err += capfd.readouterr().err
        # Now more than the ring holds (this process's ring may be an earlier test's, of
        # any size): these overflow it and drop.
        producer = _client._get().producer
        assert producer is not None
        drops_before = producer.dropped_total
        while producer.dropped_total < drops_before + 100:
            assert total < 100000, "the ring never overflowed"
            log.info("r%d %s", total, os.urandom(96).hex())
            total += 1
        assert collector.process.poll() is None  # still running
        remount = ["mount", "-o", "remount,size=16m", tiny_tmpfs]
        assert subprocess.run(remount, timeout=30).returncode == 0
        ashmem.logd.flush(timeout=60)  # the ring is drained: the next records fit
        for i in range(100):
            log.info("after %d", i)
        ashmem.logd.flush(timeout=60)
    finally:
        stopped = collector.stop()
    assert stopped == 0
    assert [i for i, _ in _segment.read_directory(d) if isinstance(i, _segment.Damage)] == []
    mine = [e.record for e in ashmem.logd.read(d) if e.pid == os.getpid()]
    dropped = [r for r in mine if r.kind == 3]
    kept = [int(r.message.split()[0][1:]) for r in mine if r.logger == "tiny" and r.kind == 1
            and r.message.startswith("r")]  # fmt: skip
    assert dropped
    assert (
        kept == sorted(set(kept))
        and len(kept) + sum(int(r.message.split()[0]) for r in dropped) == total
    )
    assert [r.message for r in mine if r.message.startswith("after")] == [
        f"after {i}" for i in range(100)
    ]
    assert [r.seq for r in mine] == list(range(mine[0].seq, mine[0].seq + len(mine)))


def test_status_and_hostile_clients(collector: ashmem.logd.Collector) -> None:
    import socket

    from ashmem import fdpass

    ashmem.logd.get_logger("st").info("x")
    ashmem.logd.flush(timeout=30)
    # Garbage: a raw datagram, a bad JSON, a fake "ring" that is not one.
    for payload in (b"\x00garbage", None):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        s.connect(collector.address)
        if payload is not None:
            s.send(payload)
        else:
            fake = ashmem.SharedMemory.create("fake", 8192)
            fdpass.send(s, [fake], b'{"op": "register"}')
            fake.close()
        s.settimeout(10)
        fdpass.recv(s, maxfds=0, maxdata=4096)  # the greeting
        assert s.recv(100) == b""  # then the collector hangs up on us
        s.close()
    out = subprocess.run(
        [*ASHMEM, "logd", "status", "--json", "--socket", collector.address],
        capture_output=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    status = json.loads(out.stdout)
    mine = [c for c in status["clients"] if c["pid"] == os.getpid()]
    assert mine and mine[0]["records"] >= 1 and status["records"] >= 1
    ashmem.logd.get_logger("st").info("still collecting")
    ashmem.logd.flush(timeout=30)


def test_embedded_mode_recovers_a_sigkilled_process_on_next_start(tmp_path: Any) -> None:
    d = str(tmp_path / "logs")
    code = (
        "import sys, time, ashmem.logd\n"
        f"ashmem.logd.start({d!r}, embedded=True, interval=0.5)\n"
        "log = ashmem.logd.get_logger('solo')\n"
        "[log.info('kept %d', i) for i in range(500)]\n"
        "print('written', flush=True); time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"written\n"
    finally:
        proc.kill()
        proc.wait(10)
    assert os.path.exists(os.path.join(d, "embedded.ring"))
    again = ashmem.logd.start(d, embedded=True)
    again.stop()
    assert isinstance(again, ashmem.logd.EmbeddedCollector)
    messages = [e.record.message for e in ashmem.logd.read(d) if e.pid == proc.pid]
    assert messages == [f"kept {i}" for i in range(500)]
    # A second recovery finds nothing new: no duplicates.
    third = ashmem.logd.start(d, embedded=True)
    third.stop()
    assert third.recovered == 0  # type: ignore[attr-defined]


def test_tail_follow_prints_new_records_as_they_come(collector: ashmem.logd.Collector) -> None:
    import select

    log = ashmem.logd.get_logger("follow")
    log.info("before")
    ashmem.logd.flush(timeout=30)
    tail = subprocess.Popen(
        [*ASHMEM, "log", "tail", "-n", "1", "-f", collector.directory],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert tail.stdout is not None

        def line() -> str:
            ready, _, _ = select.select([tail.stdout], [], [], 30)
            assert ready, "ashmem log tail -f printed nothing"
            return tail.stdout.readline()  # type: ignore[union-attr]

        assert line().rstrip().endswith("before")
        log.info("after")
        ashmem.logd.flush(timeout=30)
        assert line().rstrip().endswith("after")
    finally:
        tail.kill()
        tail.wait(10)


def test_hung_up_client_that_writes_then_dies_during_the_release_check_loses_nothing(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client hangs up but keeps running; the collector keeps its ring. Between the
    collector's "has it exited?" and "is everything drained?" the client writes more and
    dies: those records must still be collected, not released with the ring."""
    d = str(tmp_path / "logs")
    os.makedirs(d)
    sock_path = str(tmp_path / "s.sock")
    listener = _collector.bind_listener(sock_path)
    server = _collector.CollectorServer(d, listener, _collector.Settings(interval=0.005))
    code = (
        "import sys, ashmem.logd\n"
        "from ashmem.logd import _client\n"
        "log = ashmem.logd.get_logger('hangup')\n"
        "[log.info('a %d', i) for i in range(10)]\n"
        "ashmem.logd.flush(timeout=30)\n"
        "c = _client._client\n"
        "c.sock.close(); c.sock = None; c.next_check_ns = 1 << 62  # gone, never back\n"
        "print('hung up', flush=True); sys.stdin.readline()\n"
        "[log.info('b %d', i) for i in range(10)]\n"
        "import os; os._exit(0)  # no flush, no goodbye\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=dict(os.environ, ASHMEM_LOGD=sock_path),
    )
    real_exited = _collector._Conn.exited
    phases: list[str] = []

    def exited(conn: Any) -> bool:
        # The collector asks while the client is alive and hung up: let it write and die
        # right now, in the middle of the collector's release check.
        if conn.pid == child.pid and not phases:
            assert child.stdin is not None
            child.stdin.write(b"go\n")
            child.stdin.flush()
            assert child.wait(60) == 0
            phases.append("wrote and died inside the check")
        return bool(real_exited(conn))

    monkeypatch.setattr(_collector._Conn, "exited", exited)
    thread = threading.Thread(target=server.serve)
    thread.start()
    try:
        assert child.stdout is not None and child.stdout.readline() == b"hung up\n"
        deadline = time.monotonic() + 60
        while not phases:
            assert time.monotonic() < deadline, "the collector never checked the hung-up client"
            time.sleep(0.01)
    finally:
        server.stop()
        thread.join(30)
        listener.close()
        child.kill()
        child.wait()
    assert not thread.is_alive()
    mine = [e.record.message for e in ashmem.logd.read(d) if e.record.logger == "hangup"]
    assert mine == [f"a {i}" for i in range(10)] + [f"b {i}" for i in range(10)]


def test_reregistering_on_the_same_collector_reads_each_record_once(
    collector: ashmem.logd.Collector,
) -> None:
    log = ashmem.logd.get_logger("again")
    for round_ in range(5):
        for i in range(100):
            log.info("r%d.%d", round_, i)
        _client._readdress(collector.address)  # a new connection, the same ring
    ashmem.logd.flush(timeout=30)
    collector.stop()
    mine = [e.record.message for e in ashmem.logd.read(collector.directory)
            if e.record.logger == "again"]  # fmt: skip
    assert mine == [f"r{r}.{i}" for r in range(5) for i in range(100)]


def test_rotate_daily_starts_a_new_segment_when_the_day_changes(tmp_path: Any) -> None:
    d = str(tmp_path / "logs")
    os.makedirs(d)
    sock_path = str(tmp_path / "s.sock")
    listener = _collector.bind_listener(sock_path)
    settings = _collector.Settings(interval=0.005, rotate_daily=True, fsync="always")
    server = _collector.CollectorServer(d, listener, settings)
    thread = threading.Thread(target=server.serve)
    thread.start()
    _client._readdress(sock_path)
    try:
        log = ashmem.logd.get_logger("daily")
        log.info("today")
        ashmem.logd.flush(timeout=30)
        server._day = -1  # as if midnight (UTC) passed since the segment was opened
        log.info("tomorrow")  # written into the old segment, which then rotates
        ashmem.logd.flush(timeout=30)
        log.info("day after")
        ashmem.logd.flush(timeout=30)
    finally:
        server.stop()
        thread.join(30)
        listener.close()
        _client._reset_for_address_change()
    per_file = [
        [e.record.message for b in _segment.read_segment(p) if isinstance(b, _segment.Block)
         for e in b.entries if e.record.logger == "daily"]
        for p in _segment.segment_paths(d)
    ]  # fmt: skip
    assert per_file == [["today", "tomorrow"], ["day after"]]


def test_application_killed_collector_child_drains_exits_and_cleans_up(tmp_path: Any) -> None:
    logs = str(tmp_path / "logs")
    code = f"""
import os, sys, ashmem.logd
c = ashmem.logd.start({logs!r}, interval=0.005)
log = ashmem.logd.get_logger("orphaned")
for i in range(100):
    log.info("r%d", i)
print(c.pid, os.path.dirname(c.address), flush=True)
sys.stdin.read()  # until the test kills us
"""
    app = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert app.stdout is not None
        pid_s, private = app.stdout.readline().decode().split()
        app.kill()  # no stop(), no flush(): the records are still in the application's ring
        app.wait(timeout=60)
        deadline = time.monotonic() + 60
        while os.path.exists(f"/proc/{pid_s}") and time.monotonic() < deadline:
            with open(f"/proc/{pid_s}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    break  # exited; its reaper has not waited yet
            time.sleep(0.02)
        else:
            assert not os.path.exists(f"/proc/{pid_s}"), "collector child did not exit"
    finally:
        with contextlib.suppress(OSError):
            app.kill()
        if app.stdin is not None:
            app.stdin.close()
        app.wait(timeout=60)
    messages = [e.record.message for e in ashmem.logd.read(logs) if e.record.logger == "orphaned"]
    assert messages == [f"r{i}" for i in range(100)]
    assert not os.path.exists(private)
