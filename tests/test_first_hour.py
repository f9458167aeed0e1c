"""What a new user hits in the first hour: huge sizes, wrong types, fdpass misuse, the CLI.

Nothing here may call the OOM killer if a check regressed: sizes beyond the machine are only
asked for with a small limit patched in, or inside a memory cgroup (test_shared_memory).
"""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

import ashmem
from ashmem import fdpass, region
from ashmem.region import PROT_READ

from .conftest import open_fd_count

PAGE = os.sysconf("SC_PAGE_SIZE")


def memfd_fds_named(name: str) -> list[str]:
    found = []
    for entry in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink(f"/proc/self/fd/{entry}")
        except OSError:
            continue
        if link.startswith(f"/memfd:{name}"):
            found.append(entry)
    return found


def meminfo(key: str) -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no {key} in /proc/meminfo")


# -- sizes ------------------------------------------------------------------------------------


def test_memory_limit_is_at_most_the_machine() -> None:
    assert 0 < region.memory_limit() <= meminfo("MemTotal") + meminfo("SwapTotal")


@pytest.mark.parametrize("reserve", [True, False])
def test_size_beyond_the_limit_is_refused_before_anything_is_allocated(
    monkeypatch: pytest.MonkeyPatch, reserve: bool
) -> None:
    limit = 8 << 20
    monkeypatch.setattr(region, "_memory_limit", lambda: (limit, "RAM + swap"))
    created: list[str] = []
    real_memfd_create = os.memfd_create

    def spy(name: str, flags: int = 0) -> int:
        created.append(name)
        return real_memfd_create(name, flags)

    monkeypatch.setattr(os, "memfd_create", spy)
    before = open_fd_count()
    with pytest.raises(ValueError) as info:
        ashmem.SharedMemory.create("typo", 1 << 50, reserve=reserve)
    message = str(info.value)
    assert "region 'typo': 1.0 PiB (1125899906842624 bytes) asked" in message
    assert "never have more than 8.0 MiB (RAM + swap)" in message
    assert created == []  # refused before the memfd even exists
    assert open_fd_count() == before
    with ashmem.SharedMemory.create("fits", limit) as shm:  # the limit itself is allowed
        assert shm.size == limit


class Interrupt(BaseException):
    pass


@pytest.mark.parametrize(
    ("failure", "expected"),
    [(KeyboardInterrupt(), KeyboardInterrupt), (OSError(errno.ENOSPC, "full"), OSError)],
)
def test_reserve_stops_between_chunks_and_frees_what_it_took(
    monkeypatch: pytest.MonkeyPatch, failure: BaseException, expected: type
) -> None:
    """A signal handler that raises (Ctrl-C) or a failure in the third chunk: the exception
    reaches the caller, and the half-reserved region is gone (no fd names it)."""
    monkeypatch.setattr(region, "RESERVE_CHUNK", 1 << 20)
    calls: list[tuple[int, int]] = []
    real_fallocate = os.posix_fallocate

    def third_chunk_fails(fd: int, offset: int, length: int) -> None:
        calls.append((offset, length))
        if len(calls) == 3:
            raise failure
        real_fallocate(fd, offset, length)

    monkeypatch.setattr(os, "posix_fallocate", third_chunk_fails)
    before = open_fd_count()
    with pytest.raises(expected) as info:
        ashmem.SharedMemory.create("interrupted", 16 << 20)
    assert calls == [(0, 1 << 20), (1 << 20, 1 << 20), (2 << 20, 1 << 20)]
    if expected is OSError:
        assert info.value.errno == errno.ENOSPC and "'interrupted'" in str(info.value)
    assert open_fd_count() == before
    assert memfd_fds_named("interrupted") == []


def test_reserve_covers_sizes_that_are_not_a_multiple_of_the_chunk(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(region, "RESERVE_CHUNK", 3 * PAGE)
    with ashmem.SharedMemory.create("odd", 10 * PAGE + 1) as shm:
        assert os.fstat(shm.fileno()).st_blocks * 512 >= 10 * PAGE + 1


# -- wrong types ------------------------------------------------------------------------------


@pytest.fixture
def shm() -> Iterator[ashmem.SharedMemory]:
    with ashmem.SharedMemory.create("types", PAGE) as region_:
        yield region_


def test_multiprocessing_habit_points_to_create() -> None:
    with pytest.raises(TypeError, match=r"SharedMemory\.create\(name, size\)"):
        ashmem.SharedMemory("x", 4096)  # type: ignore[call-arg]


def test_create_wants_int_sizes_and_takes_size_alone() -> None:
    with pytest.raises(TypeError, match=r"region size must be an int .* not str"):
        ashmem.SharedMemory.create("x", "4096")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"needs a size .*create\(size=4096\)"):
        ashmem.SharedMemory.create(4096)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="reserve must be a bool"):
        ashmem.SharedMemory.create("x", 1, reserve="yes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="populate must be True, False or None"):
        ashmem.SharedMemory.create("x", 1, populate=1)  # type: ignore[arg-type]
    with ashmem.SharedMemory.create(size=PAGE) as anonymous:
        assert anonymous.name == "none" and len(anonymous) == PAGE


def test_from_fd_says_what_it_was_given(shm: ashmem.SharedMemory) -> None:
    with pytest.raises(TypeError, match="must be an int, not str"):
        ashmem.SharedMemory.from_fd("3")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"not a SharedMemory.*dup"):
        ashmem.SharedMemory.from_fd(shm)  # type: ignore[arg-type]
    for number in (-1, 999_999):
        with pytest.raises(OSError, match="not an open file descriptor") as info:
            ashmem.SharedMemory.from_fd(number)
        assert info.value.errno == errno.EBADF
    with open(os.devnull) as f, pytest.raises(ValueError, match="not an ashmem region"):
        ashmem.SharedMemory.from_fd(f.fileno())


def test_map_arguments_are_type_checked(shm: ashmem.SharedMemory) -> None:
    with pytest.raises(TypeError, match="offset must be an int, not float"):
        shm.map(PROT_READ, 0.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="length must be an int, not str"):
        shm.map(PROT_READ, 0, "10")  # type: ignore[arg-type]


def test_resize_says_sizes_are_sealed(shm: ashmem.SharedMemory) -> None:
    with shm.map_read_write() as m, pytest.raises(PermissionError, match="sizes are sealed"):
        m.resize(2 * PAGE)


def test_len_is_the_size(shm: ashmem.SharedMemory) -> None:
    assert len(shm) == shm.size == PAGE


def test_exported_classes_name_their_public_module() -> None:
    assert repr(ashmem.ProtectionError) == "<class 'ashmem.ProtectionError'>"
    assert ashmem.SharedMemory.__module__ == "ashmem"
    code = (
        "import ashmem; s = ashmem.SharedMemory.create('ro', 4096); "
        "s.set_protect(ashmem.PROT_READ); s.map_read_write()"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1].startswith("ashmem.ProtectionError: [Errno 1]")


# -- fdpass misuse ----------------------------------------------------------------------------


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with a, b:
        yield a, b


@pytest.mark.parametrize("payload", [b"\x05", bytearray(b"\x05"), "hello"])
def test_send_refuses_data_in_the_items_slot(
    pair: tuple[socket.socket, socket.socket], payload: object
) -> None:
    a, b = pair
    with pytest.raises(TypeError, match=rf"not {type(payload).__name__}: .*payload third"):
        fdpass.send(a, payload)  # type: ignore[arg-type]
    b.setblocking(False)
    with pytest.raises(BlockingIOError):  # nothing went out
        b.recv(1)


def test_send_takes_one_region_or_an_iterable(
    pair: tuple[socket.socket, socket.socket], shm: ashmem.SharedMemory
) -> None:
    a, b = pair
    fdpass.send(a, shm, b"one")
    data, items = fdpass.recv(b)  # default maxfds
    assert data == b"one" and len(items) == 1
    with items[0] as got:  # type: ignore[union-attr]
        assert got.name == "types"
    fdpass.send(a, (r for r in [shm]))
    _, items = fdpass.recv(b)
    items[0].close()  # type: ignore[union-attr]
    with pytest.raises(TypeError, match="data must be bytes-like, not str"):
        fdpass.send(a, [], "text")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="not object"):
        fdpass.send(a, object())  # type: ignore[arg-type]


def test_send_and_recv_refuse_what_is_not_an_af_unix_socket(shm: ashmem.SharedMemory) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
        with pytest.raises(ValueError, match="only cross an AF_UNIX socket, not AF_INET"):
            fdpass.send(tcp, [shm])
        with pytest.raises(ValueError, match="AF_UNIX"):
            fdpass.recv(tcp)
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with a, b, pytest.raises(TypeError, match=r"socket\.socket, not int.*fileno=fd"):
        fdpass.send(a.fileno(), [shm])  # type: ignore[arg-type]


# -- CLI --------------------------------------------------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ashmem", *args],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"ashmem {ashmem.__version__}"


HOLDER = """
import sys, ashmem
regions = [ashmem.SharedMemory.create(name, 4096) for name in sys.argv[1:]]
print("ready", flush=True)
sys.stdin.read()
"""


def test_ls_filters_by_pid_and_name_and_shows_the_command_line() -> None:
    tag = f"fh{os.getpid()}"
    names = [f"{tag}-frames-1", f"{tag}-frames-2", f"{tag}-config"]
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, *names],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "ready\n"
        with ashmem.SharedMemory.create(f"{tag}-frames-mine", 4096):
            result = run_cli("ls", "--json", "--pid", str(holder.pid), "--name", f"{tag}-frames*")
            assert result.returncode == 0, result.stderr
            rows = json.loads(result.stdout)
            assert sorted(row["name"] for row in rows) == names[:2]
            assert {row["pid"] for row in rows} == {holder.pid}
            assert all(row["command"].endswith(" ".join(names)) for row in rows)
            table = run_cli("ls", "--wide", "--pid", str(holder.pid), "--name", f"{tag}-config")
            lines = table.stdout.splitlines()
            assert len(lines) == 2 and lines[0].split()[:2] == ["PID", "PROCESS"]
            assert "-c \\nimport sys, ashmem" in lines[1] and lines[1].endswith(names[2])
    finally:
        holder.kill()
        holder.wait(30)
