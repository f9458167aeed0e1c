"""Visibility: what one process writes, the other sees, and the region fd reads like a tmpfs
file.

* writes by a child are seen by the parent and the other way round, across 16 regions at
  once, through mappings and through ``pwrite``, under every start method;
* ``lseek`` with ``SEEK_DATA``/``SEEK_HOLE`` and ``read`` on a region fd behave exactly as on
  a tmpfs file given the same operations (compared with an O_TMPFILE file in /dev/shm);
* page-aligned ``map(prot, offset, length)`` windows see the right bytes and write to the
  right place.
"""

from __future__ import annotations

import errno
import hashlib
import mmap
import multiprocessing
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ashmem import PROT_READ, PROT_WRITE, SharedMemory

from . import _helpers_security as sec
from .conftest import Children

PAGE = sec.PAGE
NREGIONS = 16
# Odd sizes (not page multiples) and one region of several MiB.
SIZES = [4 << 20] + [(i + 1) * PAGE + 37 * i for i in range(1, NREGIONS)]


def _data(tag: str, i: int, size: int) -> bytes:
    return sec.pattern(f"{tag}{i}".encode(), size)


# -- 16 regions, both directions ----------------------------------------------------------------


def _mirror(conn: Any) -> None:
    """Child: check the parent's bytes, write its own, then check the parent's new bytes."""
    chan = sec.ConnectionChannel(conn)
    if not conn.poll(sec.PEER_TIMEOUT):
        raise TimeoutError("the parent never sent the regions")
    regions: list[SharedMemory] = conn.recv()
    mappings = [shm.map_read_write() for shm in regions]
    try:
        seen = {}
        for i, (shm, m) in enumerate(zip(regions, mappings, strict=True)):
            expected = _data("parent", i, shm.size)
            seen[i] = m[:] == expected and os.pread(shm.fileno(), shm.size, 0) == expected
        for i, (shm, m) in enumerate(zip(regions, mappings, strict=True)):
            data = _data("child", i, shm.size)
            if i % 2:
                assert os.pwrite(shm.fileno(), data, 0) == len(data)
            else:
                m[:] = data
        chan.send({"phase": "child wrote", "saw parent": seen})
        assert chan.recv() == {"phase": "parent wrote again"}
        seen = {
            i: m[:] == _data("again", i, len(m)) for i, m in enumerate(mappings)
        }  # through mappings made long before the parent's writes
        chan.send({"phase": "done", "saw parent": seen})
    finally:
        for m in mappings:
            m.close()
        for shm in regions:
            shm.close()


def test_writes_are_seen_both_ways_across_16_regions(
    mp_context: multiprocessing.context.BaseContext, children: Children
) -> None:
    owner_conn, child_conn = mp_context.Pipe()  # type: ignore[attr-defined]
    regions: list[SharedMemory] = []
    mappings: list[Any] = []
    with owner_conn, child_conn:
        # The child starts first: it gets the regions only by pickling, never by fork.
        proc = children.start(mp_context, _mirror, child_conn)
        child_conn.close()
        chan = sec.ConnectionChannel(owner_conn)
        try:
            for i, size in enumerate(SIZES):
                shm = SharedMemory.create(f"visible-{i}", size)
                regions.append(shm)
                mappings.append(shm.map_read_write())
                mappings[-1][:] = _data("parent", i, size)
            owner_conn.send(regions)

            report = chan.recv()
            assert report["phase"] == "child wrote"
            assert report["saw parent"] == {str(i): True for i in range(NREGIONS)}
            for i, (shm, m) in enumerate(zip(regions, mappings, strict=True)):
                expected = _data("child", i, shm.size)
                assert m[:] == expected, f"region {i}: the child's write is not visible"
                assert os.pread(shm.fileno(), shm.size, 0) == expected

            for i, (shm, m) in enumerate(zip(regions, mappings, strict=True)):
                data = _data("again", i, shm.size)
                if i % 2:
                    m[:] = data
                else:
                    assert os.pwrite(shm.fileno(), data, 0) == len(data)
            chan.send({"phase": "parent wrote again"})
            report = chan.recv()
            assert report == {
                "phase": "done",
                "saw parent": {str(i): True for i in range(NREGIONS)},
            }
        finally:
            for m in mappings:
                m.close()
            for shm in regions:
                shm.close()
        children.join(proc, sec.PEER_TIMEOUT)


# -- SEEK_DATA / SEEK_HOLE and read, compared with tmpfs --------------------------------------

NPAGES = 8
SIZE = NPAGES * PAGE


def _dev_shm_is_tmpfs() -> bool:
    fstype = None
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            fields = line.split()
            if fields[4] == "/dev/shm":
                fstype = fields[fields.index("-") + 1]  # the last mount on top wins
    return fstype == "tmpfs"


def _tmpfs_file(size: int, reserve: bool) -> int:
    """An unnamed file on tmpfs (O_TMPFILE: it never appears in /dev/shm)."""
    try:
        fd = os.open("/dev/shm", os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        pytest.skip(f"no O_TMPFILE on /dev/shm: {exc}")
    try:
        os.ftruncate(fd, size)
        if reserve:
            os.posix_fallocate(fd, 0, size)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _seek_layout(fd: int) -> list[tuple[object, object]]:
    """(SEEK_DATA, SEEK_HOLE) from every half page, errors as errno names."""

    def seek(offset: int, whence: int) -> object:
        try:
            return os.lseek(fd, offset, whence)
        except OSError as exc:
            return errno.errorcode[exc.errno or 0]

    return [
        (seek(offset, os.SEEK_DATA), seek(offset, os.SEEK_HOLE))
        for offset in range(0, SIZE + PAGE, PAGE // 2)
    ]


def _read_extents(fd: int) -> list[tuple[int, int, str]]:
    """Walk the data extents with lseek and read each with read(2):
    ``[(start, end, sha256 of its bytes)]``."""
    extents = []
    offset = 0
    while True:
        try:
            start = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError as exc:
            assert exc.errno == errno.ENXIO
            break
        end = os.lseek(fd, start, os.SEEK_HOLE)
        assert os.lseek(fd, start, os.SEEK_SET) == start
        data = b""
        while len(data) < end - start:
            chunk = os.read(fd, end - start - len(data))
            assert chunk, "read(2) stopped inside a data extent"
            data += chunk
        extents.append((start, end, hashlib.sha256(data).hexdigest()))
        offset = end
    assert os.lseek(fd, 0, os.SEEK_END) == SIZE
    assert os.read(fd, 1) == b""  # EOF
    return extents


def _write_through_mapping(fd: int, offset: int, data: bytes) -> None:
    with mmap.mmap(fd, SIZE) as m:
        m[offset : offset + len(data)] = data


def _read_through_mapping(fd: int, offset: int) -> int:
    with mmap.mmap(fd, SIZE, prot=mmap.PROT_READ) as m:
        return m[offset]


# Each case: (operations on the fd, whether to reserve, pages that must then be data).
CASES: dict[str, tuple[Callable[[int], object], bool, set[int]]] = {
    "untouched": (lambda fd: None, False, set()),
    "pwrite": (
        lambda fd: (os.pwrite(fd, b"x", PAGE + 5), os.pwrite(fd, b"y" * PAGE, 5 * PAGE)),
        False,
        {1, 5},
    ),
    "write through a shared mapping": (
        lambda fd: _write_through_mapping(fd, 6 * PAGE + 10, b"abc"),
        False,
        {6},
    ),
    "zeros written are data": (lambda fd: os.pwrite(fd, bytes(PAGE), 2 * PAGE), False, {2}),
    "read fault through a shared mapping": (
        lambda fd: _read_through_mapping(fd, 3 * PAGE + 10),
        False,
        {3},
    ),
    "pread of a hole allocates nothing": (lambda fd: os.pread(fd, SIZE, 0), False, set()),
    # fallocate allocates every page (st_blocks) but shmem keeps fallocated pages
    # !Uptodate until written, and SEEK_DATA skips them: a reserved region is all hole.
    "reserved": (lambda fd: None, True, set()),
    "reserved, then written": (lambda fd: os.pwrite(fd, b"w", 7 * PAGE - 1), True, {6}),
}


@pytest.mark.skipif(not _dev_shm_is_tmpfs(), reason="/dev/shm is not tmpfs here")
@pytest.mark.parametrize("case", list(CASES))
def test_seek_data_and_hole_behave_as_on_tmpfs(case: str) -> None:
    operate, reserve, data_pages = CASES[case]
    with SharedMemory.create("seek", SIZE, reserve=reserve) as shm:
        tmpfs = _tmpfs_file(SIZE, reserve)
        try:
            fd = shm.fileno()
            operate(fd)
            operate(tmpfs)
            layout = _seek_layout(fd)
            assert layout == _seek_layout(tmpfs)
            assert _read_extents(fd) == _read_extents(tmpfs)
            assert os.pread(fd, SIZE, 0) == os.pread(tmpfs, SIZE, 0)
            st_region, st_tmpfs = os.fstat(fd), os.fstat(tmpfs)
            assert st_region.st_blocks == st_tmpfs.st_blocks
        finally:
            os.close(tmpfs)

    # And the layout is the one we expect, not merely the same on both.
    assert layout == _expected_layout(data_pages), case
    if reserve:
        assert st_region.st_blocks * 512 == SIZE  # every page allocated, yet reads as hole


def _expected_layout(data_pages: set[int]) -> list[tuple[object, object]]:
    """What ``_seek_layout`` must return when exactly ``data_pages`` hold data."""
    layout: list[tuple[object, object]] = []
    for offset in range(0, SIZE + PAGE, PAGE // 2):
        page = offset // PAGE
        if offset >= SIZE:
            layout.append(("ENXIO", "ENXIO"))  # at EOF both fail
        elif page in data_pages:
            end = page
            while end in data_pages:
                end += 1
            layout.append((offset, end * PAGE))  # the hole at EOF counts
        else:
            later = [p for p in sorted(data_pages) if p > page]
            layout.append((later[0] * PAGE if later else "ENXIO", offset))
    return layout


# -- map offsets and lengths ----------------------------------------------------------------------


@pytest.fixture
def patterned() -> Iterator[tuple[SharedMemory, bytes]]:
    size = 6 * PAGE + 123  # the last page is partial
    content = sec.pattern(b"window", size)
    with SharedMemory.create("windows", size) as shm:
        assert os.pwrite(shm.fileno(), content, 0) == size
        yield shm, content


@pytest.mark.parametrize("page", range(7))
def test_read_only_windows_see_the_right_bytes(
    patterned: tuple[SharedMemory, bytes], page: int
) -> None:
    shm, content = patterned
    offset = page * PAGE
    lengths = {1, PAGE - 1, PAGE, PAGE + 1, shm.size - offset}
    for length in sorted(n for n in lengths if 0 < n <= shm.size - offset):
        with shm.map(PROT_READ, offset=offset, length=length) as window:
            assert len(window) == length
            assert window.offset == offset
            assert window.readonly
            assert window[:] == content[offset : offset + length], (offset, length)
    with shm.map(PROT_READ, offset=offset) as to_the_end:
        assert len(to_the_end) == shm.size - offset
        assert to_the_end[:] == content[offset:]


def test_writable_windows_write_to_the_right_place(
    patterned: tuple[SharedMemory, bytes],
) -> None:
    shm, content = patterned
    expected = bytearray(content)
    with shm.map_read_only() as whole:
        for page, length in [(0, 10), (2, PAGE), (3, 2 * PAGE + 1), (6, 123)]:
            offset = page * PAGE
            data = bytes([page + 1]) * length
            with shm.map(PROT_READ | PROT_WRITE, offset=offset, length=length) as window:
                window[:] = data
                expected[offset : offset + length] = data
                # The window's first byte is the region's byte at `offset`.
                assert whole[offset : offset + length] == data
                assert whole[:] == bytes(expected)
        assert os.pread(shm.fileno(), shm.size, 0) == bytes(expected)
        # Two windows over the same page are the same memory.
        with (
            shm.map(PROT_READ | PROT_WRITE, offset=PAGE, length=PAGE) as a,
            shm.map(PROT_READ | PROT_WRITE, offset=0, length=2 * PAGE) as b,
        ):
            a[7:12] = b"alias"
            assert b[PAGE + 7 : PAGE + 12] == b"alias"
            assert whole[PAGE + 7 : PAGE + 12] == b"alias"
