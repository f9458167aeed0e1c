"""ashmem.region: the libcutils layer on raw fds."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import resource
import socket
import stat
import tempfile
from collections.abc import Iterator

import pytest

import ashmem
from ashmem import _sys, region
from ashmem.region import PROT_EXEC, PROT_NONE, PROT_READ, PROT_WRITE

from .conftest import open_fd_count

F_SEAL_EXEC = 0x20


@pytest.fixture
def fd() -> Iterator[int]:
    fd = region.create_region("test-region", 8192)
    yield fd
    os.close(fd)


def test_create_region_size_name_and_flags(fd: int) -> None:
    assert region.get_size_region(fd) == 8192
    assert region.get_name_region(fd) == "test-region"
    assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
    assert not os.get_inheritable(fd)
    seals = fcntl.fcntl(fd, _sys.F_GET_SEALS)
    assert seals & _sys.F_SEAL_GROW and seals & _sys.F_SEAL_SHRINK
    assert not seals & (_sys.F_SEAL_WRITE | _sys.F_SEAL_FUTURE_WRITE | _sys.F_SEAL_SEAL)
    assert region.valid(fd)


def test_create_region_requests_noexec(fd: int) -> None:
    # MFD_NOEXEC_SEAL (Linux 6.3+) clears the exec bits and seals them.
    mode = os.fstat(fd).st_mode
    if not fcntl.fcntl(fd, _sys.F_GET_SEALS) & F_SEAL_EXEC:
        pytest.skip("kernel without MFD_NOEXEC_SEAL")
    assert mode & 0o111 == 0
    with pytest.raises(PermissionError):
        os.fchmod(fd, 0o755)


def test_size_is_sealed(fd: int) -> None:
    for size in (4096, 16384, 0):
        with pytest.raises(PermissionError) as info:
            os.ftruncate(fd, size)
        assert info.value.errno == errno.EPERM
    assert region.get_size_region(fd) == 8192


def test_none_name_is_none() -> None:
    fd = region.create_region(None, 1)
    try:
        assert region.get_name_region(fd) == "none"
    finally:
        os.close(fd)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("a" * 300, "a" * 249),
        ("é" * 200, "é" * 124),  # 2-byte chars: 249 would split one, so 248 bytes
        ("€" * 100, "€" * 83),  # 3-byte chars: 249 bytes exactly
        ("x" + "😀" * 80, "x" + "😀" * 62),  # 4-byte chars after 1 byte: 1 + 62*4 = 249
        ("with space (deleted)", "with space (deleted)"),
        ("slash/and\nnewline", "slash/and\nnewline"),
    ],
)
def test_names_are_cut_at_utf8_boundary(name: str, expected: str) -> None:
    fd = region.create_region(name, 1)
    try:
        assert region.get_name_region(fd) == expected
        assert len(expected.encode()) <= region.NAME_MAX
        assert region.kernel_name(name) == expected
    finally:
        os.close(fd)


@pytest.mark.parametrize(
    ("name", "size", "exc"),
    [
        ("nul\0byte", 4096, ValueError),
        ("ok", 0, ValueError),
        ("ok", -1, ValueError),
        ("ok", 1.5, TypeError),
        ("ok", "4096", TypeError),
        ("ok", True, TypeError),
        ("ok", None, TypeError),
        (b"bytes", 4096, TypeError),
        (42, 4096, TypeError),
    ],
)
def test_bad_create_arguments_leak_nothing(name: object, size: object, exc: type) -> None:
    before = open_fd_count()
    with pytest.raises(exc):
        region.create_region(name, size)  # type: ignore[arg-type]
    assert open_fd_count() == before


def test_too_large_size_is_refused_without_leak() -> None:
    before = open_fd_count()
    with pytest.raises(ValueError, match="too large"):
        region.create_region("huge", 1 << 63)
    assert open_fd_count() == before


@pytest.mark.parametrize("limit_known", [True, False])
def test_kernel_refusal_keeps_errno_and_names_region(
    monkeypatch: pytest.MonkeyPatch, limit_known: bool
) -> None:
    if not limit_known:  # the size check cannot read /proc either: it must step aside
        monkeypatch.setattr(region, "_limit_cache", (-1.0, 0, ""))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    highest = max(int(n) for n in os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 1, hard))
    try:
        # Fill every free slot below the limit, then creation must fail with EMFILE.
        fillers = []
        with contextlib.suppress(OSError):
            while True:
                fillers.append(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
        try:
            with pytest.raises(OSError) as info:
                region.create_region("no-slot", 4096)
        finally:
            for f in fillers:
                os.close(f)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert info.value.errno == errno.EMFILE
    assert "no-slot" in str(info.value) and "RLIMIT_NOFILE" in str(info.value)
    assert isinstance(info.value.__cause__, OSError)


def test_falls_back_when_kernel_lacks_noexec_seal(monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.memfd_create
    calls: list[int] = []

    def old_kernel(name: str, flags: int = 0) -> int:
        calls.append(flags)
        if flags & _sys.MFD_NOEXEC_SEAL:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(name, flags)

    monkeypatch.setattr(os, "memfd_create", old_kernel)
    monkeypatch.setattr(region, "_memfd_flags", region._memfd_flags | _sys.MFD_NOEXEC_SEAL)
    for _ in range(2):
        fd = region.create_region("old-kernel", 4096)
        assert region.valid(fd)
        os.close(fd)
    # The first call learns; the second goes straight to the flags that work.
    assert [bool(f & _sys.MFD_NOEXEC_SEAL) for f in calls] == [True, False, False]


@pytest.mark.parametrize("setting", ["0", "1", "2"])
def test_works_under_every_memfd_noexec_setting(setting: str) -> None:
    path = "/proc/sys/vm/memfd_noexec"
    try:
        with open(path) as f:
            saved = f.read().strip()
    except OSError:
        pytest.skip("no vm.memfd_noexec on this kernel")
    if int(setting) < int(saved):
        pytest.skip(f"vm.memfd_noexec={saved} cannot be lowered in this namespace")
    try:
        with open(path, "w") as f:
            f.write(setting)
    except OSError as exc:
        pytest.skip(f"cannot set vm.memfd_noexec: {exc}")
    try:
        fd = region.create_region("noexec", 4096)
        try:
            assert region.valid(fd)
            assert region.get_prot_region(fd) & PROT_WRITE
        finally:
            os.close(fd)
    finally:
        with open(path, "w") as f:
            f.write(saved)


def test_prot_and_set_prot(fd: int) -> None:
    assert region.get_prot_region(fd) == PROT_READ | PROT_WRITE | PROT_EXEC
    region.set_prot_region(fd, PROT_READ | PROT_WRITE)  # no change, fine
    region.set_prot_region(fd, PROT_READ | PROT_EXEC)
    assert region.get_prot_region(fd) == PROT_READ | PROT_EXEC
    assert fcntl.fcntl(fd, _sys.F_GET_SEALS) & _sys.F_SEAL_FUTURE_WRITE
    region.set_prot_region(fd, PROT_READ)  # idempotent
    region.set_prot_region(fd, PROT_NONE)  # READ cannot be revoked on memfd: accepted
    assert region.get_prot_region(fd) == PROT_READ | PROT_EXEC
    with pytest.raises(ashmem.ProtectionError) as info:
        region.set_prot_region(fd, PROT_READ | PROT_WRITE)
    assert isinstance(info.value, PermissionError)
    assert info.value.errno == errno.EPERM
    assert "test-region" in str(info.value) and "irreversible" in str(info.value)
    with pytest.raises(OSError) as write_info:
        os.write(fd, b"x")
    assert write_info.value.errno == errno.EPERM


@pytest.mark.parametrize("prot", [0x8, 0x100, -1, PROT_READ | 0x40])
def test_set_prot_rejects_invalid_bits(fd: int, prot: int) -> None:
    with pytest.raises(ValueError, match="invalid prot"):
        region.set_prot_region(fd, prot)
    assert region.get_prot_region(fd) & PROT_WRITE


def test_valid_is_only_true_for_regions(fd: int) -> None:
    assert region.valid(fd)
    assert not region.valid(-1)
    assert not region.valid(10_000)
    assert not region.valid(True)  # type: ignore[arg-type]
    r, w = os.pipe()
    a, b = socket.socketpair()
    unsealed = os.memfd_create("unsealed", os.MFD_CLOEXEC)
    with (
        tempfile.TemporaryFile() as regular,
        tempfile.TemporaryFile(dir="/dev/shm") as tmpfs,  # shmem, but born F_SEAL_SEAL
        open(os.devnull) as null,
    ):
        others = [r, w, a.fileno(), regular.fileno(), tmpfs.fileno(), null.fileno(), unsealed]
        for other in others:
            assert not region.valid(other), other
    for other in (r, w, unsealed):
        os.close(other)
    a.close()
    b.close()
    closed = os.dup(fd)
    os.close(closed)
    assert not region.valid(closed)


def test_queries_on_bad_fds() -> None:
    with tempfile.TemporaryFile() as regular:
        with pytest.raises(ValueError, match="not an ashmem region"):
            region.get_name_region(regular.fileno())
        with pytest.raises(ValueError, match="no file seals"):
            region.get_prot_region(regular.fileno())
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    with pytest.raises(OSError) as info:
        region.get_size_region(r)
    assert info.value.errno == errno.EBADF
    with pytest.raises(OSError) as info:
        region.get_name_region(r)
    assert info.value.errno == errno.EBADF


def test_reserve_allocates_every_page(fd: int) -> None:
    assert os.fstat(fd).st_blocks == 0
    region.reserve_region(fd)
    assert os.fstat(fd).st_blocks * 512 >= 8192
    assert region.get_size_region(fd) == 8192


def test_no_file_mode_bits_beyond_regular(fd: int) -> None:
    assert stat.S_ISREG(os.fstat(fd).st_mode)


def test_valid_never_raises_for_impossible_fd_numbers() -> None:
    for number in (2**31, 2**40, 2**70):
        assert not region.valid(number)
        assert region.region_size(number) is None
        with pytest.raises(OSError, match="not an open file descriptor") as info:
            ashmem.SharedMemory.from_fd(number)
        assert info.value.errno == errno.EBADF
