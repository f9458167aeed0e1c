"""Every transport, both ways, under fork, spawn and forkserver (issue 14, item 4).

The parent sends a ``SharedMemory``, a ``MemoryFile``, a region-backed array, a strided view of
it and a read-only share; the receiver checks what the parent wrote, writes back through each
writable one (the parent then sees it), finds the read-only share impossible to make writable,
and sends back new objects of its own, which the parent reads: both directions.
"""

from __future__ import annotations

import concurrent.futures
import gc
import multiprocessing
from typing import Any

import numpy as np
import pytest

import ashmem
import ashmem.numpy as anp
from ashmem import MemoryFile, ProtectionError, SharedMemory

from . import _helpers_security as sec
from .conftest import CHILD_TIMEOUT, Children

PAGE = 4096


def _payload() -> tuple[Any, ...]:
    shm = SharedMemory.create("t-shm", PAGE)
    with shm.map_read_write() as m:
        m[0] = 1
    mf = MemoryFile("t-mf", PAGE)
    mf.write_bytes(b"\x03", 0, 0, 1)
    arr = anp.zeros(64, dtype=np.int64)
    arr[0] = 5
    ro = anp.share_read_only(np.arange(16, dtype=np.int32))
    return shm, mf, arr, arr[::-2], ro


def _touch(payload: tuple[Any, ...]) -> tuple[Any, ...]:
    """Receiver side: check, write back, try the read-only share, make objects to return."""
    shm, mf, arr, view, ro = payload
    assert isinstance(shm, SharedMemory) and isinstance(mf, MemoryFile)
    with shm.map_read_write() as m:
        assert m[0] == 1
        m[1] = 2
    out = bytearray(1)
    mf.read_bytes(out, 0, 0, 1)
    assert out[0] == 3
    mf.write_bytes(b"\x04", 0, 1, 1)
    assert arr[0] == 5 and arr.flags.writeable
    arr[1] = 6
    assert view.strides == (-16,) and view[-1] == 6
    view[0] = 11  # arr[63]
    assert ro.tolist() == list(range(16)) and not ro.flags.writeable
    with pytest.raises(ValueError):
        ro.setflags(write=True)
    region = anp.region_of(ro)
    assert region is not None
    with pytest.raises(ProtectionError):
        region.map_read_write()
    back_shm = SharedMemory.create("t-back", PAGE)
    with back_shm.map_read_write() as m:
        m[0] = 8
    back_mf = MemoryFile("t-back-mf", PAGE)
    back_mf.write_bytes(b"\x09", 0, 0, 1)
    return anp.full(8, 7.0), back_shm, back_mf


def _check_sender(payload: tuple[Any, ...], back: tuple[Any, ...]) -> None:
    shm, mf, arr, _, _ = payload
    with shm.map_read_only() as m:
        assert m[1] == 2
    out = bytearray(1)
    mf.read_bytes(out, 1, 0, 1)
    assert out[0] == 4
    assert arr[1] == 6 and arr[63] == 11
    back_arr, back_shm, back_mf = back
    assert back_arr.tolist() == [7.0] * 8 and anp.region_of(back_arr) is not None
    with back_shm.map_read_only() as m:
        assert m[0] == 8
    back_mf.read_bytes(out, 0, 0, 1)
    assert out[0] == 9


# -- children: receive through one transport, answer through one ------------------------------


def _process_child(payload: tuple[Any, ...], answer: Any, done: Any) -> None:
    answer.put(_touch(payload))
    done.wait(CHILD_TIMEOUT)  # keep our resource sharer up until the parent has unpickled


def _queue_child(inbox: Any, answer: Any, done: Any) -> None:
    answer.put(_touch(inbox.get(timeout=CHILD_TIMEOUT)))
    done.wait(CHILD_TIMEOUT)


def _pipe_child(conn: Any, done: Any) -> None:
    conn.send(_touch(conn.recv()))
    done.wait(CHILD_TIMEOUT)


def _run_child(children: Children, ctx: Any, target: Any, *args: Any) -> tuple[Any, Any]:
    done = ctx.Event()
    proc = children.start(ctx, target, *args, done)
    return proc, done


def _finish(children: Children, proc: Any, done: Any) -> None:
    done.set()
    children.join(proc)


def test_process_arguments(mp_context: Any, children: Children) -> None:
    payload = _payload()
    answer = mp_context.Queue()
    proc, done = _run_child(children, mp_context, _process_child, payload, answer)
    back = answer.get(timeout=CHILD_TIMEOUT)
    _finish(children, proc, done)
    _check_sender(payload, back)


def test_multiprocessing_queue(mp_context: Any, children: Children) -> None:
    payload = _payload()
    inbox, answer = mp_context.Queue(), mp_context.Queue()
    proc, done = _run_child(children, mp_context, _queue_child, inbox, answer)
    inbox.put(payload)
    back = answer.get(timeout=CHILD_TIMEOUT)
    _finish(children, proc, done)
    _check_sender(payload, back)


def test_multiprocessing_pipe(mp_context: Any, children: Children) -> None:
    payload = _payload()
    mine, theirs = mp_context.Pipe()
    proc, done = _run_child(children, mp_context, _pipe_child, theirs)
    mine.send(payload)
    assert mine.poll(CHILD_TIMEOUT)
    back = mine.recv()
    _finish(children, proc, done)
    _check_sender(payload, back)


def _probes(objs: tuple[Any, ...]) -> list[sec.RegionProbe]:
    probes = []
    for obj in objs:
        region = obj if isinstance(obj, SharedMemory) else None
        if isinstance(obj, MemoryFile):
            region = obj.shared_memory
        elif isinstance(obj, np.ndarray):
            region = anp.region_of(obj)
        assert region is not None
        probes.append(sec.RegionProbe.of(region.fileno()))
    return probes


def test_ashmem_queue(mp_context: Any, children: Children) -> None:
    payload = _payload()
    inbox, answer = ashmem.Queue(ctx=mp_context), ashmem.Queue(ctx=mp_context)
    proc, done = _run_child(children, mp_context, _queue_child, inbox, answer)
    inbox.put(payload)
    back = answer.get(timeout=CHILD_TIMEOUT)
    _finish(children, proc, done)
    for queue in (inbox, answer):  # this process's feeder threads end here, not at exit
        queue.close()
        queue.join_thread()
    _check_sender(payload, back)
    # Lifetime: once the child has exited and we drop everything, every region is freed.
    probes = _probes(payload) + _probes(back)
    for obj in (*payload, *back):
        if isinstance(obj, (SharedMemory, MemoryFile)):
            obj.close()
    del payload, back, obj
    gc.collect()
    for probe in probes:
        probe.wait_released()


def test_ashmem_pipe(mp_context: Any, children: Children) -> None:
    payload = _payload()
    mine, theirs = ashmem.Pipe()
    proc, done = _run_child(children, mp_context, _pipe_child, theirs)
    mine.send(payload)
    assert mine.poll(CHILD_TIMEOUT)
    back = mine.recv()
    _finish(children, proc, done)
    _check_sender(payload, back)


def test_multiprocessing_pool(mp_context: Any) -> None:
    payload = _payload()
    with mp_context.Pool(1) as pool:
        back = pool.apply_async(_touch, (payload,)).get(CHILD_TIMEOUT)
    _check_sender(payload, back)


def test_ashmem_pool(mp_context: Any) -> None:
    payload = _payload()
    with ashmem.Pool(1, context=mp_context) as pool:
        back = pool.apply_async(_touch, (payload,)).get(CHILD_TIMEOUT)
    _check_sender(payload, back)


@pytest.mark.parametrize(
    "executor", [concurrent.futures.ProcessPoolExecutor, ashmem.ProcessPoolExecutor]
)
def test_process_pool_executor(mp_context: Any, executor: Any) -> None:
    payload = _payload()
    with executor(1, mp_context=mp_context) as pool:
        back = pool.submit(_touch, payload).result(CHILD_TIMEOUT)
    _check_sender(payload, back)


def test_manager_proxy(mp_context: Any) -> None:
    """Method arguments of a proxy go to the manager process and come back from it."""
    shm, mf, arr, view, ro = _payload()
    with mp_context.Manager() as manager:
        store = manager.dict()
        store["objs"] = (shm, mf, arr, view, ro)  # to the manager...
        their_shm, their_mf, their_arr, their_view, their_ro = store["objs"]  # ...and back
    assert their_arr.ctypes.data != arr.ctypes.data  # a new mapping of the same pages
    their_arr[2] = 12
    their_view[1] = 13  # arr[61]
    assert arr[2] == 12 and arr[61] == 13
    their_mf.write_bytes(b"\x0e", 0, 2, 1)
    out = bytearray(1)
    mf.read_bytes(out, 2, 0, 1)
    assert out[0] == 14
    assert their_shm.size == shm.size and not their_ro.flags.writeable


def test_plain_multiprocessing_objects_still_unpickle_as_before(mp_context: Any) -> None:
    """Arrays that are not region-backed keep multiprocessing's behaviour: a writable copy."""
    a = np.arange(10)
    with mp_context.Pool(1) as pool:
        b = pool.apply(np.copy, (a,))
    assert b.tolist() == a.tolist() and b.flags.writeable and anp.region_of(b) is None


def test_fork_process_argument_is_the_same_memory(children: Children) -> None:
    ctx = multiprocessing.get_context("fork")
    arr = anp.zeros(4)
    children.run(ctx, _set_first, arr)
    assert arr[0] == 42


def _set_first(arr: Any) -> None:
    arr[0] = 42
