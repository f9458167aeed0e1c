"""MemoryFile: the android.os.MemoryFile layer and its streams."""

from __future__ import annotations

import array
import errno
import io
import socket
from collections.abc import Iterator

import numpy as np
import pytest

import ashmem
from ashmem import MemoryFile

SIZE = 1000


@pytest.fixture
def mf() -> Iterator[MemoryFile]:
    with MemoryFile("notes", SIZE) as f:
        yield f


def test_properties(mf: MemoryFile) -> None:
    assert mf.length == len(mf) == SIZE
    assert mf.name == "notes"
    assert mf.shared_memory.size == SIZE
    assert mf.fileno() == mf.shared_memory.fileno()
    assert not mf.closed
    assert "notes" in repr(mf)


def test_write_then_read_bytes(mf: MemoryFile) -> None:
    mf.write_bytes(b"..hello..", 2, 10, 5)  # src is the buffer, dest is the file
    out = bytearray(20)
    assert mf.read_bytes(out, 10, 3, 5) == 5  # src is the file, dest is the buffer
    assert out[3:8] == b"hello"
    assert out[:3] == bytes(3) and out[8:] == bytes(12)


def test_any_buffer_type(mf: MemoryFile) -> None:
    mf.write_bytes(array.array("i", [1, 2]), 0, 0, 8)
    mf.write_bytes(np.arange(4, dtype=np.uint8).reshape(2, 2), 0, 8, 4)
    dest = np.zeros(12, dtype=np.uint8)
    mf.read_bytes(dest, 0, 0, 12)
    assert dest.tolist() == [1, 0, 0, 0, 2, 0, 0, 0, 0, 1, 2, 3]
    view = memoryview(bytearray(4))
    mf.read_bytes(view, 8, 0, 4)
    assert view.tobytes() == b"\x00\x01\x02\x03"
    with pytest.raises(TypeError, match="writable buffer"):
        mf.read_bytes(b"immutable", 0, 0, 1)


@pytest.mark.parametrize(
    ("src", "dest", "count"),
    [
        (-1, 0, 1),
        (0, -1, 1),
        (0, 0, -1),
        (SIZE, 0, 1),  # src past the file
        (SIZE - 5, 0, 6),
        (0, 15, 6),  # dest past the 20-byte buffer
        (0, 21, 0),
    ],
)
def test_read_bytes_out_of_range(mf: MemoryFile, src: int, dest: int, count: int) -> None:
    mf.write_bytes(b"x" * SIZE, 0, 0, SIZE)
    out = bytearray(20)
    with pytest.raises(IndexError):
        mf.read_bytes(out, src, dest, count)
    assert out == bytearray(20)


@pytest.mark.parametrize(
    ("src", "dest", "count"),
    [
        (-1, 0, 1),
        (0, -1, 1),
        (0, 0, -1),
        (0, SIZE, 1),  # dest past the file
        (0, SIZE - 2, 3),
        (18, 0, 3),  # src past the 20-byte buffer
        (21, 0, 0),
    ],
)
def test_write_bytes_out_of_range(mf: MemoryFile, src: int, dest: int, count: int) -> None:
    with pytest.raises(IndexError):
        mf.write_bytes(b"y" * 20, src, dest, count)
    out = bytearray(SIZE)
    mf.read_bytes(out, 0, 0, SIZE)
    assert out == bytearray(SIZE)  # nothing written


def test_zero_count_at_the_end_is_fine(mf: MemoryFile) -> None:
    mf.write_bytes(b"", 0, SIZE, 0)
    assert mf.read_bytes(bytearray(1), SIZE, 1, 0) == 0


def test_non_int_offsets(mf: MemoryFile) -> None:
    with pytest.raises(TypeError):
        mf.write_bytes(b"x", 0, 1.5, 1)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        mf.read_bytes(bytearray(1), True, 0, 1)  # type: ignore[arg-type]


def test_everything_after_close_is_closed_error() -> None:
    mf = MemoryFile("shut", 64)
    stream = mf.open("r+b")
    mf.close()
    mf.close()
    assert mf.closed
    assert "closed" in repr(mf)
    calls = [
        lambda: mf.read_bytes(bytearray(1), 0, 0, 1),
        lambda: mf.write_bytes(b"x", 0, 0, 1),
        lambda: mf.length,
        lambda: len(mf),
        mf.fileno,
        lambda: mf.shared_memory,
        lambda: mf.open("rb"),
        stream.read,
        lambda: stream.write(b"x"),
        lambda: stream.seek(0),
        stream.tell,
    ]
    for call in calls:
        with pytest.raises(ashmem.ClosedError, match="'shut' is closed"):
            call()


def test_streams(mf: MemoryFile) -> None:
    with mf.open("wb") as out:
        assert out.writable() and not out.readable() and out.seekable()
        assert out.write(b"first ") == 6
        assert out.write(memoryview(b"second")) == 6
        assert out.tell() == 12
        with pytest.raises(io.UnsupportedOperation):
            out.read(1)
    with mf.open("rb") as inp:
        assert inp.readable() and not inp.writable()
        assert inp.read(6) == b"first "
        buf = bytearray(6)
        assert inp.readinto(buf) == 6 and buf == b"second"
        assert inp.seek(-2, io.SEEK_END) == SIZE - 2
        assert inp.read() == b"\0\0"
        assert inp.read(5) == b""
        inp.seek(100)
        assert inp.seek(5, io.SEEK_CUR) == 105
        with pytest.raises(ValueError):
            inp.seek(-1)
        with pytest.raises(io.UnsupportedOperation):
            inp.write(b"x")
    with mf.open("r+b") as both:
        both.seek(6)
        both.write(b"SECOND")
        both.seek(0)
        assert both.read(12) == b"first SECOND"
    # the buffered layer of the io module works on top
    buffered = io.BufferedReader(mf.open("rb"))
    assert buffered.read(5) == b"first"
    with pytest.raises(ValueError, match="mode"):
        mf.open("w")


def test_stream_never_grows_the_file(mf: MemoryFile) -> None:
    with mf.open("r+b") as s:
        s.seek(SIZE - 3)
        with pytest.raises(OSError) as info:
            s.write(b"abcd")
        assert info.value.errno == errno.EFBIG
        assert "never grows" in str(info.value)
        assert s.tell() == SIZE - 3
        s.seek(0, io.SEEK_END)
        assert s.read() == b""
        s.seek(-3, io.SEEK_END)
        assert s.write(b"abc") == 3  # exactly fills
    assert len(mf) == SIZE
    out = bytearray(3)
    mf.read_bytes(out, SIZE - 3, 0, 3)
    assert out == b"abc"


def test_closed_stream_does_not_close_file(mf: MemoryFile) -> None:
    s = mf.open("rb")
    s.close()
    with pytest.raises(ValueError):
        s.read(1)
    assert not mf.closed


def test_send_to_another_process_socket(mf: MemoryFile) -> None:
    mf.write_bytes(b"shared", 0, 0, 6)
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with a, b:
        ashmem.fdpass.send(a, [mf])
        _, items = ashmem.fdpass.recv(b, 1)
    shm = items[0]
    assert isinstance(shm, ashmem.SharedMemory)
    with shm, shm.map_read_only() as m:
        assert m[0:6] == b"shared"
        assert shm.name == "notes"


def test_write_protected_file_keeps_its_own_mapping(mf: MemoryFile) -> None:
    # as on Android: MemoryFile's mapping was made before the protection
    mf.shared_memory.set_protect(ashmem.PROT_READ)
    mf.write_bytes(b"ok", 0, 0, 2)
    with pytest.raises(ashmem.ProtectionError):
        mf.shared_memory.map_read_write()
