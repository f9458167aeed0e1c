"""Pickling of regions: plain pickle refuses with a clear error and leaks nothing; the
picklers that carry descriptors (multiprocessing's, ashmem's) move them (issue 13, items 3
and 5)."""

from __future__ import annotations

import gc
import multiprocessing
import pickle
from typing import Any

import pytest

import ashmem
from ashmem import MemoryFile, ProtectionError, SharedMemory

from .conftest import CHILD_TIMEOUT, open_fd_count

PAGE = 4096


@pytest.mark.parametrize(
    "make", [lambda: SharedMemory.create("p", PAGE), lambda: MemoryFile("p", PAGE)]
)
def test_plain_pickle_is_a_type_error_that_says_how_to_send(make: Any) -> None:
    with make() as obj:
        with pytest.raises(TypeError, match="plain pickle") as info:
            pickle.dumps(obj)
        message = str(info.value)
        assert type(obj).__name__ in message
        assert "multiprocessing" in message and "ashmem.fdpass.send" in message


def test_connection_does_not_plain_pickle() -> None:
    a, b = ashmem.Pipe()
    with a, b, pytest.raises(TypeError, match="plain pickle"):
        pickle.dumps(a)


def test_failed_pickles_leak_no_descriptor() -> None:
    with SharedMemory.create("p", PAGE) as shm, MemoryFile("p", PAGE) as mf:
        gc.collect()
        before = open_fd_count()
        for _ in range(100):
            for obj in (shm, mf, [shm], {"mf": mf}):
                with pytest.raises(TypeError):
                    pickle.dumps(obj)
        assert open_fd_count() == before


def test_memory_file_from_shared_memory_takes_the_region() -> None:
    shm = SharedMemory.create("wrapped", PAGE)
    f = MemoryFile.from_shared_memory(shm)
    f.write_bytes(b"abc", 0, 0, 3)
    assert f.name == "wrapped" and f.length == PAGE and f.shared_memory is shm
    f.close()
    assert shm.closed


def test_memory_file_from_write_protected_region_is_read_only() -> None:
    shm = SharedMemory.create("ro", PAGE)
    with shm.map_read_write() as m:
        m[0:2] = b"hi"
    shm.set_protect(ashmem.PROT_READ)
    with MemoryFile.from_shared_memory(shm) as f:
        out = bytearray(2)
        f.read_bytes(out, 0, 0, 2)
        assert out == b"hi"
        with pytest.raises(ProtectionError, match="read-only"):
            f.write_bytes(b"x", 0, 0, 1)
        with f.open("r+b") as stream, pytest.raises(ProtectionError):
            stream.write(b"x")


def test_memory_file_from_shared_memory_type_check() -> None:
    with pytest.raises(TypeError, match="SharedMemory"):
        MemoryFile.from_shared_memory(3)  # type: ignore[arg-type]


def _read_memory_file(f: MemoryFile) -> bytes:
    assert isinstance(f, MemoryFile)
    out = bytearray(5)
    f.read_bytes(out, 0, 0, 5)
    f.write_bytes(b"!", 0, 5, 1)
    return bytes(out)


def test_memory_file_through_a_spawn_pool() -> None:
    with MemoryFile("greeting", PAGE) as f:
        f.write_bytes(b"hello", 0, 0, 5)
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            assert pool.apply_async(_read_memory_file, (f,)).get(CHILD_TIMEOUT) == b"hello"
        out = bytearray(1)
        f.read_bytes(out, 5, 0, 1)
        assert out == b"!"


def test_received_non_region_is_refused_and_closed() -> None:
    """multiprocessing's rebuild hands us a descriptor; one that is not a region is closed."""
    import os

    from ashmem import _reduction

    class FakeDup:
        def __init__(self, fd: int) -> None:
            self.fd = fd

        def detach(self) -> int:
            return self.fd

    r, w = os.pipe()
    os.close(w)
    gc.collect()
    before = open_fd_count()
    with pytest.raises(ValueError, match="not an ashmem region"):
        _reduction.rebuild_shared_memory(FakeDup(r))
    assert open_fd_count() == before - 1  # r was taken and closed
