"""ashmem.Queue, SimpleQueue and Pipe: multiprocessing's API, zero-copy for large buffers."""

from __future__ import annotations

import array
import gc
import multiprocessing
import os
import pickle
import queue
import signal
import socket
import threading
from typing import Any

import numpy as np
import pytest

import ashmem
import ashmem.numpy as anp
from ashmem import MessageError, SharedMemory, _queue, fdpass

from . import _helpers_security as sec
from .conftest import CHILD_TIMEOUT, Children, open_fd_count

BIG = 1 << 17  # 128 KiB, over the default 64 KiB threshold


def test_order_and_mixed_sizes() -> None:
    q = ashmem.Queue()
    items: list[Any] = []
    for i in range(40):
        items.append(np.full(BIG // 8 if i % 3 == 0 else 4, i, dtype=np.int64))
        items.append({"i": i, "text": "x" * i})
    for item in items:
        q.put(item)
    for expected in items:
        got = q.get(timeout=CHILD_TIMEOUT)
        if isinstance(expected, np.ndarray):
            np.testing.assert_array_equal(got, expected)
            large = expected.nbytes >= ashmem.DEFAULT_THRESHOLD
            # Large: one copy into a sealed region, a read-only view of it. Small: inline.
            assert (anp.region_of(got) is not None) == large
            assert got.flags.writeable != large
        else:
            assert got == expected
    q.close()
    q.join_thread()


def test_threshold_is_a_setting() -> None:
    r, w = ashmem.Pipe(threshold=16)
    with r, w:
        w.send(np.arange(4, dtype=np.int64))  # 32 bytes >= 16
        assert anp.region_of(r.recv()) is not None
    with pytest.raises(ValueError, match=">= 1"):
        ashmem.Pipe(threshold=0)
    with pytest.raises(TypeError, match="int"):
        ashmem.Queue(threshold="big")  # type: ignore[arg-type]


def test_large_pickle_stream_and_buffers() -> None:
    r, w = ashmem.Pipe()
    with r, w:
        big_list = list(range(50_000))  # a pickle stream larger than a datagram
        w.send(big_list)
        assert r.recv() == big_list
        payload = bytes(range(256)) * 1024
        w.send(pickle.PickleBuffer(payload))  # out of band: a read-only view
        view = r.recv()
        assert bytes(view) == payload and view.readonly
        w.send_bytes(payload, 256, 1024)
        assert r.recv_bytes() == payload[256:1280]
        w.send_bytes(payload)
        assert r.recv_bytes() == payload
        w.send_bytes(b"abc")
        with pytest.raises(OSError, match="bad message length"):
            r.recv_bytes(maxlength=2)
        w.send_bytes(b"hello")
        buf = bytearray(8)
        assert r.recv_bytes_into(buf, 2) == 5 and buf[2:7] == b"hello"
        w.send_bytes(b"hello")
        with pytest.raises(multiprocessing.BufferTooShort):
            r.recv_bytes_into(bytearray(3))


def test_many_messages_leave_no_descriptors_behind() -> None:
    q = ashmem.Queue()
    gc.collect()
    first = open_fd_count()
    big = np.ones(BIG // 8)
    received = 0
    for i in range(10_000):
        q.put(big if i % 500 == 0 else i)
        got = q.get(timeout=CHILD_TIMEOUT)
        received += 1 if isinstance(got, np.ndarray) else 0
        del got
        if i == 99:
            first = open_fd_count()  # after the feeder thread and its finalizers exist
    assert received == 20
    assert open_fd_count() == first
    q.close()
    q.join_thread()


def test_get_timeout_empty_full_qsize() -> None:
    q = ashmem.Queue(maxsize=2)
    assert q.empty() and q.qsize() == 0
    with pytest.raises(queue.Empty):
        q.get(timeout=0.05)
    with pytest.raises(queue.Empty):
        q.get_nowait()
    q.put(1)
    q.put_nowait(2)
    assert q.full() and q.qsize() == 2
    with pytest.raises(queue.Full):
        q.put(3, timeout=0.05)
    with pytest.raises(queue.Full):
        q.put_nowait(3)
    assert q.get(timeout=CHILD_TIMEOUT) == 1
    assert q.get(block=True, timeout=CHILD_TIMEOUT) == 2
    q.close()
    with pytest.raises(ValueError, match="closed"):
        q.put(4)
    with pytest.raises(ValueError, match="closed"):
        q.get()
    q.join_thread()


def test_join_thread_needs_close_and_cancel_is_allowed() -> None:
    q = ashmem.Queue()
    with pytest.raises(ValueError, match="close"):
        q.join_thread()
    q.put(1)
    q.cancel_join_thread()
    assert q.get(timeout=CHILD_TIMEOUT) == 1
    q.close()
    q.join_thread()


def test_unpicklable_object_is_reported_and_queue_keeps_working(capfd: Any) -> None:
    q = ashmem.Queue()
    q.put(threading.Lock())  # fails in the feeder thread, as with multiprocessing
    q.put("after")
    assert q.get(timeout=CHILD_TIMEOUT) == "after"
    assert q.qsize() == 0
    q.close()
    q.join_thread()
    assert "cannot pickle" in capfd.readouterr().err


def test_simple_queue_and_pipe_directions() -> None:
    sq = ashmem.SimpleQueue()
    sq.put(np.arange(3))
    assert not sq.empty()
    assert sq.get().tolist() == [0, 1, 2]
    assert sq.empty()
    sq.close()
    r, w = ashmem.Pipe(duplex=False)
    assert r.readable and not r.writable and w.writable and not w.readable
    with pytest.raises(OSError, match="read-only"):
        r.send(1)
    with pytest.raises(OSError, match="write-only"):
        w.recv()
    a, b = ashmem.Pipe()
    b.send("pong")
    assert a.poll(CHILD_TIMEOUT) and a.recv() == "pong"
    a.close()
    with pytest.raises(EOFError):
        b.recv()
    with pytest.raises(OSError, match="closed"):
        a.send(1)
    for conn in (r, w, b):
        conn.close()


def test_regions_memory_files_and_region_backed_arrays_go_without_copy() -> None:
    r, w = ashmem.Pipe()
    with r, w, SharedMemory.create("q", 4096) as shm, ashmem.MemoryFile("qf", 4096) as f:
        arr = anp.zeros(BIG)
        w.send({"shm": shm, "file": f, "arr": arr, "again": arr[1:]})
        got = r.recv()
        got["arr"][5] = 1.0
        assert arr[5] == 1.0 and got["again"][4] == 1.0 and got["arr"].flags.writeable
        assert os.fstat(got["shm"].fileno()).st_ino == os.fstat(shm.fileno()).st_ino
        assert isinstance(got["file"], ashmem.MemoryFile)
        got["file"].close()
        got["shm"].close()


def test_closed_region_is_refused_at_send() -> None:
    r, w = ashmem.Pipe()
    shm = SharedMemory.create("q", 4096)
    shm.close()
    with r, w, pytest.raises(ashmem.ClosedError):
        w.send(shm)


def _send_raw(sock: socket.socket, data: bytes, fds: list[int]) -> None:
    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
    head = fdpass._HEADER.pack(fdpass._MAGIC, 0, 0, len(fds), len(data))
    sock.sendmsg([head + bytes([fdpass._KIND_REGION] * len(fds)) + data], anc)


@pytest.mark.parametrize(
    "data, message",
    [
        (b"nope", "too short"),
        (b"XXXX" + bytes(20), "not an ashmem.Queue message"),
        (_queue._HEAD.pack(b"ASQ1", 7, 0, 0, 0, 0), "unknown kind"),
        (_queue._HEAD.pack(b"ASQ1", 0, 0, 1, 0, 0), "shorter than its buffer table"),
        (
            _queue._HEAD.pack(b"ASQ1", 0, 0, 1, 0, 0) + _queue._BUF.pack(5, 1),
            "no such slot",
        ),
        (
            _queue._HEAD.pack(b"ASQ1", 0, 0, 1, 0, 0) + _queue._BUF.pack(0, 1 << 20),
            "bytes of a region",
        ),
        (_queue._HEAD.pack(b"ASQ1", 0, 0, 0, 0, 9) + b"abc", "header says 9"),
    ],
)
def test_malformed_messages_raise_and_close_descriptors(data: bytes, message: str) -> None:
    r, w = ashmem.Pipe()
    raw = socket.socket(fileno=os.dup(w.fileno()))
    with r, w, raw, SharedMemory.create("hostile", 4096) as shm:
        gc.collect()  # earlier tests' garbage must not close descriptors during the count
        before = open_fd_count()
        _send_raw(raw, data, [shm.fileno()])
        with pytest.raises(MessageError, match=message):
            r.recv()
        assert open_fd_count() == before


def test_region_slot_outside_a_message_is_refused() -> None:
    with pytest.raises(pickle.UnpicklingError, match=r"outside an ashmem\.Queue message"):
        _queue._queued_region(0)


# -- across processes -------------------------------------------------------------------------


def _consume(q: Any, got: Any, ready: Any) -> None:
    ready.set()
    while True:
        item = q.get(timeout=CHILD_TIMEOUT)
        if item is None:
            return
        got.put(int(item.sum()) if isinstance(item, np.ndarray) else item)


def test_several_consumers_share_one_queue(mp_context: Any, children: Children) -> None:
    q, got = ashmem.Queue(ctx=mp_context), ashmem.Queue(ctx=mp_context)
    ready = [mp_context.Event() for _ in range(2)]
    procs = [children.start(mp_context, _consume, q, got, ev) for ev in ready]
    for ev in ready:
        assert ev.wait(CHILD_TIMEOUT)
    for i in range(60):
        q.put(np.full(BIG // 8, i, dtype=np.int64) if i % 2 else i)
    results = sorted(got.get(timeout=CHILD_TIMEOUT) for _ in range(60))
    assert results == sorted(i * (BIG // 8) if i % 2 else i for i in range(60))
    for _ in procs:
        q.put(None)
    for proc in procs:
        children.join(proc)
    for shared in (q, got):  # this process's feeder threads end here, not at exit
        shared.close()
        shared.join_thread()


def _take_and_hang(q: Any, took: Any) -> None:
    item = q.get(timeout=CHILD_TIMEOUT)
    took.put(item.name)
    threading.Event().wait(CHILD_TIMEOUT)


def _block_in_get(q: Any, ready: Any) -> None:
    ready.set()
    q.get(timeout=CHILD_TIMEOUT)


def test_consumer_killed_mid_get_leaks_nothing_and_queue_works(children: Children) -> None:
    ctx = multiprocessing.get_context("fork")
    q, took = ashmem.Queue(ctx=ctx), ashmem.Queue(ctx=ctx)
    # 1. A consumer killed while blocked in get: no lock is held, the queue goes on working.
    ready = ctx.Event()
    blocked = children.start(ctx, _block_in_get, q, ready)
    assert ready.wait(CHILD_TIMEOUT)
    os.kill(blocked.pid, signal.SIGKILL)
    blocked.join(CHILD_TIMEOUT)
    # 2. A consumer killed holding a received region: the region is freed.
    shm = SharedMemory.create("taken", 1 << 16)
    probe = sec.RegionProbe.of(shm.fileno())
    holder = children.start(ctx, _take_and_hang, q, took)
    q.put(shm)
    assert took.get(timeout=CHILD_TIMEOUT) == "taken"
    shm.close()
    os.kill(holder.pid, signal.SIGKILL)
    holder.join(CHILD_TIMEOUT)
    probe.wait_released()
    q.put("still works")
    assert q.get(timeout=CHILD_TIMEOUT) == "still works"
    q.close()
    q.join_thread()


def test_sent_objects_are_not_kept_by_the_feeder_thread() -> None:
    q = ashmem.Queue()
    a = anp.zeros(16)
    probe = sec.RegionProbe.of(anp.region_of(a).fileno())  # type: ignore[union-attr]
    q.put(a)
    got = q.get(timeout=CHILD_TIMEOUT)
    del a, got
    gc.collect()
    probe.wait_released()  # the queue is still open, its feeder thread still running
    q.close()
    q.join_thread()


def test_small_plain_arrays_of_every_layout_round_trip_inline() -> None:
    base = np.arange(60, dtype=np.float32).reshape(3, 4, 5)
    arrays = [
        base,
        base[::-1, :, ::2],
        np.asfortranarray(base),
        np.zeros(3, [("a", "i4"), ("b", "f8", (2,))]),
        np.array(["2020-01-01"], dtype="datetime64[D]"),
        np.zeros((0, 3)),
    ]
    r, w = ashmem.Pipe()
    with r, w:
        for a in arrays:
            w.send(a)
            got = r.recv()
            assert got.dtype == a.dtype and got.shape == a.shape
            assert got.flags.f_contiguous == a.flags.f_contiguous
            np.testing.assert_array_equal(got, a)
            assert got.flags.writeable and anp.region_of(got) is None
