"""ashmem.numpy: region-backed arrays, their round trips, lifetime and read-only shares."""

from __future__ import annotations

import gc
import subprocess
import sys
from multiprocessing.reduction import ForkingPickler
from typing import Any

import numpy as np
import pytest

import ashmem
import ashmem.numpy as anp
from ashmem import ProtectionError, SharedMemory

from . import _helpers_security as sec
from .conftest import open_fd_count

STRUCT = np.dtype([("id", "<u4"), ("pos", "<f8", (3,)), ("tag", "S5")])


def _through_pipe(obj: Any) -> Any:
    a, b = ashmem.Pipe()
    with a, b:
        a.send(obj)
        return b.recv()


def _through_forking_pickler(obj: Any) -> Any:
    return ForkingPickler.loads(ForkingPickler.dumps(obj))


TRANSPORTS = [_through_pipe, _through_forking_pickler]


def _arrays() -> list[Any]:
    base = anp.from_array(np.arange(60, dtype=np.float32).reshape(3, 4, 5))
    rec = anp.zeros(4, STRUCT)
    rec["id"] = [1, 2, 3, 4]
    rec["pos"][2] = (1.5, 2.5, 3.5)
    rec["tag"] = b"abcde"
    fortran = anp.from_array(np.asfortranarray(np.arange(12, dtype=np.int16).reshape(3, 4)))
    return [
        base,
        base[1:, ::2, 3],  # offset and strides
        base[::-1, :, ::-2],  # negative strides
        base.T,
        rec,
        rec[1:3],
        rec["pos"],  # a field: offset inside the record, stride of the record
        fortran,
        anp.empty((0, 7), np.int64),
        anp.zeros((4, 0)),
        anp.full((), 3 + 4j),
    ]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_round_trips_keep_shape_dtype_strides_and_memory(transport: Any) -> None:
    for array in _arrays():
        got = transport(array)
        assert got.shape == array.shape and got.dtype == array.dtype
        assert got.strides == array.strides
        assert got.flags.f_contiguous == array.flags.f_contiguous
        np.testing.assert_array_equal(got, array)
        assert anp.region_of(got) is not None
        if array.size:
            assert got.ctypes.data != array.ctypes.data  # another mapping...
            flat = got.reshape(-1) if got.flags.c_contiguous else None
            first = (0,) * got.ndim
            got[first] = got[first]  # writable
            if flat is not None and got.dtype.kind == "f":
                flat[0] = 99
                assert array.reshape(-1)[0] == 99  # ...of the same pages


def test_sender_writes_are_seen_by_the_receiver() -> None:
    a = anp.zeros(8)
    got = _through_pipe(a[2:6])
    a[3] = 5.0
    assert got[1] == 5.0


def test_constructors() -> None:
    assert anp.zeros(3, "u1").tolist() == [0, 0, 0]
    assert anp.full((2,), 7).dtype == np.array(7).dtype
    assert anp.full((2, 2), 1.5, dtype=np.float32).dtype == np.float32
    f = anp.empty((3, 4), order="F")
    assert f.flags.f_contiguous and not f.flags.c_contiguous
    assert anp.from_array([[1, 2], [3, 4]]).tolist() == [[1, 2], [3, 4]]
    named = anp.zeros(4, name="frames")
    region = anp.region_of(named)
    assert region is not None and region.name == "frames"


@pytest.mark.parametrize(
    "call",
    [
        lambda: anp.empty(3, object),
        lambda: anp.zeros(3, [("a", "i4"), ("b", "O")]),
        lambda: anp.full(2, None, dtype=object),
        lambda: anp.from_array(np.array([{}, []], dtype=object)),
    ],
)
def test_object_dtypes_are_refused(call: Any) -> None:
    with pytest.raises(TypeError, match="Python objects"):
        call()


def test_object_arrays_still_travel_by_pickling() -> None:
    got = _through_pipe(np.array([{"a": 1}, None], dtype=object))
    assert got.tolist() == [{"a": 1}, None]


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="negative dimension"):
        anp.empty((2, -1))
    with pytest.raises(TypeError, match="shape must be ints"):
        anp.empty((2, "3"))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="order"):
        anp.empty(3, order="K")
    with SharedMemory.create("small", 64) as shm:
        with pytest.raises(ValueError, match="needs 72 bytes"):
            anp.as_array(shm, 9, np.float64)
        with pytest.raises(TypeError, match=r"SharedMemory or ashmem\.Mapping"):
            anp.as_array(b"x" * 64, 8)  # type: ignore[arg-type]


def test_as_array_over_a_shared_memory_and_a_mapping() -> None:
    shm = SharedMemory.create("frame", 4096)
    a = anp.as_array(shm, (4,), np.int32, offset=8)
    shm.close()  # the array keeps its own descriptor and mapping
    a[:] = [1, 2, 3, 4]
    assert anp.region_of(a) is not None
    assert _through_pipe(a).tolist() == [1, 2, 3, 4]
    with SharedMemory.create("frame", 4096) as shm2, shm2.map_read_only() as m:
        b = anp.as_array(m, 16, np.uint8)
        assert not b.flags.writeable and anp.region_of(b) is None
        del b


def test_closing_the_shared_memory_first_leaves_no_dangling_array() -> None:
    shm = SharedMemory.create("first", 1 << 16)
    a = anp.as_array(shm, 1 << 13, np.float64)
    shm.close()
    gc.collect()
    a[:] = 1.0
    assert a.sum() == 1 << 13


def test_memory_is_released_when_the_last_array_is_gone() -> None:
    gc.collect()
    before = open_fd_count()
    a = anp.zeros(1 << 16)
    region = anp.region_of(a)
    assert region is not None
    probe = sec.RegionProbe.of(region.fileno())
    view = _through_pipe(a[10:20])
    del a, region
    gc.collect()
    assert probe.holders()  # the received view still holds it
    del view
    gc.collect()
    probe.wait_released()
    assert open_fd_count() == before


def test_share_read_only() -> None:
    source = anp.zeros(6, np.int64)
    shared = anp.share_read_only(source[2:])
    source[3] = 9  # the sender's writable view keeps working
    assert shared[1] == 9 and not shared.flags.writeable
    with pytest.raises(ValueError):
        shared.setflags(write=True)
    for transport in TRANSPORTS:
        got = transport(shared)
        assert got.tolist() == [0, 9, 0, 0] and not got.flags.writeable
        with pytest.raises(ValueError):
            got.setflags(write=True)
        region = anp.region_of(got)
        assert region is not None
        with pytest.raises(ProtectionError):
            region.map_read_write()


def test_share_read_only_copies_an_ordinary_array_once() -> None:
    plain = np.arange(5)
    shared = anp.share_read_only(plain)
    plain[0] = 100
    assert shared.tolist() == [0, 1, 2, 3, 4]
    region = anp.region_of(shared)
    assert region is not None and not region.get_protect() & ashmem.PROT_WRITE


def test_flag_read_only_array_arrives_read_only() -> None:
    a = anp.zeros(4)
    view = a[:]
    view.flags.writeable = False
    assert not _through_pipe(view).flags.writeable


def test_plain_pickle_copies() -> None:
    import pickle

    a = anp.full(3, 2.0)
    b = pickle.loads(pickle.dumps(a))
    assert b.tolist() == [2.0] * 3 and anp.region_of(b) is None


def test_import_error_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['numpy'] = None\n"
        "try:\n    import ashmem.numpy\nexcept ImportError as e:\n    print(e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert "pip install 'ashmem[numpy]'" in out.stdout


def test_core_import_does_not_import_numpy_or_multiprocessing() -> None:
    """The reducers reach multiprocessing's pickler without importing it (import hook)."""
    code = "import ashmem, sys; print(sorted(m for m in ('numpy', 'multiprocessing', "
    code += "'concurrent.futures', 'ashmem._queue') if m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "[]"
    code = (
        "import ashmem, ashmem.numpy, numpy\n"
        "from multiprocessing.reduction import ForkingPickler as P\n"
        "print(all(t in P._extra_reducers for t in (ashmem.SharedMemory, ashmem.MemoryFile, "
        "numpy.ndarray)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "True"
