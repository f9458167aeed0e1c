"""SharedMemory and Mapping: the android.os.SharedMemory layer."""

from __future__ import annotations

import errno
import gc
import glob
import io
import mmap
import os
import pathlib
import pickle
import shutil
import subprocess
import sys
from collections.abc import Iterator

import numpy as np
import pytest

import ashmem
from ashmem import PROT_EXEC, PROT_READ, PROT_WRITE, SharedMemory

from .conftest import Children, open_fd_count

PAGE = mmap.ALLOCATIONGRANULARITY


@pytest.fixture
def shm() -> Iterator[SharedMemory]:
    with SharedMemory.create("frames", 4 * PAGE) as shm:
        yield shm


def test_create_properties(shm: SharedMemory) -> None:
    assert shm.name == "frames"
    assert shm.size == 4 * PAGE
    assert not shm.closed
    assert ashmem.region.valid(shm.fileno())
    assert shm.get_protect() == PROT_READ | PROT_WRITE | PROT_EXEC
    assert "frames" in repr(shm)


def test_create_none_name_and_long_name() -> None:
    with SharedMemory.create(None, 1) as a, SharedMemory.create("n" * 400, 1) as b:
        assert a.name == "none"
        assert b.name == "n" * 249


def test_reserve_and_populate_options() -> None:
    with SharedMemory.create("lazy", 16 * PAGE, reserve=False) as lazy:
        assert os.fstat(lazy.fileno()).st_blocks == 0
    with SharedMemory.create("reserved", 16 * PAGE) as reserved:
        assert os.fstat(reserved.fileno()).st_blocks * 512 >= 16 * PAGE
    with SharedMemory.create("populated", 16 * PAGE, reserve=False, populate=True) as pop:
        with pop.map_read_write() as m:
            assert os.fstat(pop.fileno()).st_blocks * 512 >= 16 * PAGE
            m[-1] = 7
        # populate=False overrides the object's default for one mapping
        with pop.map_read_only(populate=False) as r:
            assert r[-1] == 7


def rss_shmem() -> int:
    """Shared-memory pages mapped into this process (RssShmem), in bytes."""
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssShmem:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no RssShmem in /proc/self/status")


def test_populate_default_prefaults_large_writable_mappings_of_reserved_regions() -> None:
    big = ashmem.POPULATE_AUTO_MIN
    with SharedMemory.create("auto-big", big) as shm:
        before = rss_shmem()
        with shm.map_read_only():
            assert rss_shmem() - before < big // 2  # read-only: never prefaulted
        with shm.map_read_write():
            assert rss_shmem() - before >= big
    with SharedMemory.create("auto-small", big - PAGE) as shm:
        before = rss_shmem()
        with shm.map_read_write():
            assert rss_shmem() - before < big // 2
    with SharedMemory.create("never", big, populate=False) as shm:
        before = rss_shmem()
        with shm.map_read_write():
            assert rss_shmem() - before < big // 2


def test_reserve_false_is_lazy_end_to_end() -> None:
    """reserve=False: nothing allocated or prefaulted until touched, also through dup()."""
    big = 4 * ashmem.POPULATE_AUTO_MIN
    with SharedMemory.create("lazy", big, reserve=False) as shm, shm.dup() as twin:
        assert os.fstat(shm.fileno()).st_blocks == 0
        for touched, holder in enumerate((shm, twin), start=1):
            with holder.map_read_write() as m:
                m[touched * PAGE] = 1  # touching one page allocates that page only
                assert os.fstat(holder.fileno()).st_blocks * 512 == touched * PAGE
        with shm.map_read_write(populate=True):  # asked for: everything
            assert os.fstat(shm.fileno()).st_blocks * 512 >= big


def test_close_is_idempotent_and_everything_after_raises_closed() -> None:
    shm = SharedMemory.create("gone", PAGE)
    shm.close()
    shm.close()
    assert shm.closed
    assert "closed" in repr(shm)
    for call in (
        shm.fileno,
        shm.map_read_write,
        shm.map_read_only,
        lambda: shm.map(PROT_READ),
        lambda: shm.map(0xFFFF),  # closed is checked before prot
        lambda: shm.set_protect(PROT_READ),
        lambda: shm.set_protect(0xFFFF),
        shm.dup,
        shm.get_protect,
    ):
        with pytest.raises(ashmem.ClosedError, match="'gone' is closed") as info:
            call()
        assert isinstance(info.value, ValueError)
        assert info.value.region == "gone"


def test_map_argument_checks_in_order(shm: SharedMemory) -> None:
    size = shm.size
    cases: list[tuple[dict[str, int], type[Exception], str]] = [
        ({"prot": 0x100, "offset": -1, "length": 0}, ValueError, "invalid prot"),
        ({"prot": PROT_WRITE, "offset": -1}, ValueError, "without PROT_READ"),
        ({"prot": PROT_READ, "offset": -1, "length": 0}, ValueError, "offset must be >= 0"),
        ({"prot": PROT_READ, "offset": 0, "length": 0}, ValueError, "length must be > 0"),
        ({"prot": PROT_READ, "offset": 0, "length": -5}, ValueError, "length must be > 0"),
        ({"prot": PROT_READ, "offset": PAGE, "length": size}, ValueError, "past the end"),
        ({"prot": PROT_READ, "offset": size}, ValueError, "past the end"),
        ({"prot": PROT_READ, "offset": 0, "length": size + 1}, ValueError, "past the end"),
    ]
    for kwargs, exc, match in cases:
        with pytest.raises(exc, match=match):
            shm.map(**kwargs)
    shm.set_protect(PROT_READ)
    with pytest.raises(ashmem.ProtectionError) as info:
        shm.map(PROT_READ | PROT_WRITE)
    assert info.value.errno == errno.EPERM
    assert "'frames'" in str(info.value) and "map_read_only()" in str(info.value)
    # argument errors still come first on a protected region
    with pytest.raises(ValueError, match="past the end"):
        shm.map(PROT_READ | PROT_WRITE, 0, size + 1)


def test_windows_see_the_right_bytes(shm: SharedMemory) -> None:
    with shm.map_read_write() as whole:
        for page in range(4):
            whole[page * PAGE : (page + 1) * PAGE] = bytes([page + 1]) * PAGE
    with shm.map(PROT_READ, 2 * PAGE) as tail:
        assert len(tail) == 2 * PAGE and tail.offset == 2 * PAGE
        assert tail[0] == 3 and tail[-1] == 4
    with shm.map(PROT_READ | PROT_WRITE, PAGE, 10) as small:
        assert len(small) == 10 and small[:] == bytes([2]) * 10
        small[0:2] = b"ab"
    with shm.map_read_only() as whole:
        assert whole[PAGE : PAGE + 3] == b"ab\x02"


UNALIGNED_SCRIPT = """
import io, mmap, ashmem
P = mmap.PAGESIZE
with ashmem.SharedMemory.create("win", 3 * P) as shm:
    with shm.map_read_write() as m:
        m[:] = bytes(i % 251 for i in range(3 * P))
    w = shm.map(ashmem.PROT_READ | ashmem.PROT_WRITE, P + 100, 50)
    assert len(w) == 50 and len(memoryview(w)) == 50 and w.offset == P + 100
    assert w[0] == (P + 100) % 251 and w[-1] == (P + 149) % 251
    assert w[0:3] == bytes((P + 100 + i) % 251 for i in range(3))
    w[0:2] = b"XY"
    with shm.map_read_only() as whole:
        assert whole[P + 100 : P + 102] == b"XY"
    view = memoryview(w)
    try:
        w.close()
        raise AssertionError("closed under a live view")
    except ashmem.BusyError:
        pass
    view.release()
    try:
        w.seek(0)
        raise AssertionError("file methods must be refused on a window")
    except io.UnsupportedOperation:
        pass
    w.close()
    try:
        w[0]
        raise AssertionError("access after close")
    except ValueError:
        pass
    ro = shm.map(ashmem.PROT_READ, 7, 2 * P)
    assert len(ro) == 2 * P and ro[-1] == (7 + 2 * P - 1) % 251
    for write in (lambda: ro.__setitem__(0, 1), lambda: memoryview(ro).__setitem__(0, 1)):
        try:
            write()
            raise AssertionError("wrote through a read-only window")
        except TypeError:
            pass
    ro.close()
print("ok")
"""


def _newer_pythons() -> list[str]:
    found = []
    candidates = glob.glob(os.path.expanduser("~/.pyenv/versions/3.1[2-9]*/bin/python3"))
    candidates += [p for p in (shutil.which(f"python3.{m}") for m in (12, 13, 14)) if p]
    for exe in candidates:
        probe = subprocess.run(
            [exe, "-c", "import sys; print(sys.version_info >= (3, 12))"],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        if probe.stdout.strip() == "True":
            found.append(exe)
    return found[:1]


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="the refusal is for Python < 3.12")
def test_unaligned_offset_is_refused_with_the_fix_before_312(shm: SharedMemory) -> None:
    with pytest.raises(ValueError, match=r"not a multiple of the page size.*\[100:\]"):
        shm.map(PROT_READ, 100, 10)


def test_unaligned_offset_exposes_exactly_the_window_on_312() -> None:
    pythons = [sys.executable] if sys.version_info >= (3, 12) else _newer_pythons()
    if not pythons:
        pytest.skip("no Python >= 3.12 on this machine")
    src = pathlib.Path(ashmem.__file__).parent.parent
    result = subprocess.run(
        [pythons[0], "-c", UNALIGNED_SCRIPT],
        env={**os.environ, "PYTHONPATH": str(src)},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_mapping_is_a_buffer(shm: SharedMemory) -> None:
    with shm.map_read_write() as m:
        assert not m.readonly
        assert len(m) == shm.size
        view = memoryview(m)
        view[0:3] = b"abc"
        array = np.frombuffer(m, dtype=np.uint8)
        array[3] = ord("d")
        assert m[0:4] == b"abcd"
        assert m[3] == ord("d")
        assert "read-write" in repr(m)
        del view, array


def test_read_only_mapping_rejects_writes(shm: SharedMemory) -> None:
    with shm.map_read_write() as rw:
        rw[0] = 1
    with shm.map_read_only() as ro:
        assert ro.readonly
        assert "read-only" in repr(ro)
        with pytest.raises(TypeError):
            ro[0] = 2
        with pytest.raises(TypeError):
            ro[0:1] = b"x"
        view = memoryview(ro)
        assert view.readonly
        with pytest.raises(TypeError):
            view[0] = 2
        array = np.frombuffer(ro, dtype=np.uint8)
        assert not array.flags.writeable
        with pytest.raises(ValueError):
            array[0] = 2
        assert ro[0] == 1
        del view, array


def test_close_refuses_while_views_are_alive(shm: SharedMemory) -> None:
    m = shm.map_read_write()
    view = memoryview(m)[10:20]
    array = np.frombuffer(m, dtype=np.uint8)
    with pytest.raises(ashmem.BusyError, match="still alive") as info:
        m.close()
    assert isinstance(info.value, BufferError)
    assert info.value.region == "frames"
    view[0] = 5  # still perfectly usable: nothing was unmapped
    assert array[10] == 5
    view.release()
    with pytest.raises(ashmem.BusyError):
        m.close()
    del array
    gc.collect()
    m.close()
    m.close()  # idempotent
    assert m.closed
    assert "closed" in repr(m)


def test_access_after_close_raises_not_crashes(shm: SharedMemory) -> None:
    m = shm.map_read_write()
    m.close()
    for access in (
        lambda: m[0],
        lambda: m[0:4],
        lambda: m.__setitem__(0, 1),
        lambda: memoryview(m),
        lambda: np.frombuffer(m, dtype=np.uint8),
        lambda: len(m),
    ):
        with pytest.raises(ValueError):
            access()


def test_mappings_outlive_the_shared_memory() -> None:
    shm = SharedMemory.create("outlive", PAGE)
    m = shm.map_read_write()
    shm.close()
    m[0:5] = b"still"
    assert m[0:5] == b"still"
    m.close()


def test_set_protect(shm: SharedMemory) -> None:
    rw = shm.map_read_write()
    assert shm.set_protect(PROT_READ | PROT_WRITE | PROT_EXEC)  # nothing removed
    with pytest.raises(ValueError, match="invalid prot"):
        shm.set_protect(0x80)
    assert shm.set_protect(PROT_READ)
    assert shm.get_protect() == PROT_READ | PROT_EXEC
    assert shm.set_protect(PROT_READ)  # idempotent
    assert shm.set_protect(PROT_READ | PROT_WRITE) is False
    assert shm.get_protect() == PROT_READ | PROT_EXEC
    # the existing writable mapping keeps working, and new readers see its writes
    rw[0:4] = b"live"
    with shm.map_read_only() as ro:
        assert ro[0:4] == b"live"
    rw.close()


def test_protection_is_shared_by_dups(shm: SharedMemory) -> None:
    with shm.dup() as other:
        assert other.fileno() != shm.fileno()
        assert other.name == shm.name and other.size == shm.size
        shm.set_protect(PROT_READ)
        with pytest.raises(ashmem.ProtectionError):
            other.map_read_write()


def test_from_fd_takes_ownership_and_checks() -> None:
    fd = ashmem.region.create_region("adopted", PAGE)
    shm = SharedMemory.from_fd(fd)
    assert shm.fileno() == fd and shm.name == "adopted" and shm.size == PAGE
    shm.close()
    with pytest.raises(OSError):
        os.fstat(fd)
    r, w = os.pipe()
    with pytest.raises(ValueError, match="not an ashmem region"):
        SharedMemory.from_fd(r)
    os.fstat(r)  # left open: still the caller's
    os.close(r)
    os.close(w)


def _hold_region_and_wait(conn: object, name: str) -> None:
    import multiprocessing.connection

    assert isinstance(conn, multiprocessing.connection.Connection)
    shm = SharedMemory.create(name, PAGE)
    with shm.map_read_write() as m:
        m[0:5] = b"child"
    conn.send(shm.fileno())
    conn.recv()  # wait until the parent took it


def test_from_pid_copies_an_fd_out_of_a_child(children: Children) -> None:
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe()
    proc = children.start(ctx, _hold_region_and_wait, child, "from-pid")
    assert parent.poll(30)
    child_fd = parent.recv()
    try:
        shm = SharedMemory.from_pid(proc.pid, child_fd)
    finally:
        parent.send("done")
    children.join(proc)
    with shm, shm.map_read_only() as m:
        assert shm.name == "from-pid"
        assert m[0:5] == b"child"


def test_from_pid_errors() -> None:
    with pytest.raises(ProcessLookupError):
        SharedMemory.from_pid(2**22 + 12345, 0)
    r, w = os.pipe()
    try:
        with pytest.raises(ValueError, match="not an ashmem region"):
            SharedMemory.from_pid(os.getpid(), r)
        before = open_fd_count()
        with pytest.raises(OSError) as info:
            SharedMemory.from_pid(os.getpid(), 9999)
        assert info.value.errno == errno.EBADF
        assert open_fd_count() == before
    finally:
        os.close(r)
        os.close(w)


def _try_from_pid_as_nobody(pid: int, fd: int) -> None:
    os.setgid(65534)
    os.setuid(65534)
    try:
        SharedMemory.from_pid(pid, fd)
    except PermissionError as exc:
        assert "ptrace" in str(exc)
        os._exit(0)
    os._exit(1)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to another uid")
def test_from_pid_without_ptrace_access_is_permission_error(
    shm: SharedMemory, children: Children
) -> None:
    import multiprocessing

    children.run(
        multiprocessing.get_context("fork"), _try_from_pid_as_nobody, os.getpid(), shm.fileno()
    )


def _check_pickled(shm: SharedMemory, expected: bytes) -> None:
    with shm, shm.map_read_write() as m:
        assert shm.name == "pickled"
        assert m[0 : len(expected)] == expected
        m[0:5] = b"reply"


def test_pickles_to_children_under_every_start_method(
    mp_context: object, children: Children
) -> None:
    with SharedMemory.create("pickled", PAGE) as shm, shm.map_read_write() as m:
        m[0:7] = b"message"
        children.run(mp_context, _check_pickled, shm, b"message")  # type: ignore[arg-type]
        assert m[0:7] == b"replyge"


def test_mapping_does_not_pickle(shm: SharedMemory) -> None:
    with shm.map_read_only() as m, pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(m)


def test_failed_construction_is_safe_to_collect() -> None:
    # class-level defaults make close()/__del__ safe on half-built objects
    half = SharedMemory.__new__(SharedMemory)
    half.close()
    assert half.closed
    del half
    gc.collect()


RESERVE_IN_CGROUP = """
import os, sys
with open(os.path.join(sys.argv[1], "cgroup.procs"), "w") as f:
    f.write(str(os.getpid()))
import ashmem
for size in (256 << 20, 1 << 50):
    try:  # larger than the cgroup could ever grant: refused before anything is allocated
        ashmem.SharedMemory.create("huge", size, reserve=True)
    except ValueError as exc:
        print("refused:", exc)
    else:
        print("created")
hog = b"x" * (40 << 20)  # the cgroup now holds ~50 of its 64 MiB
try:  # fits the limit, not the room that is left: the kernel says ENOMEM at creation
    ashmem.SharedMemory.create("too-big", 40 << 20, reserve=True)
except OSError as exc:
    print(exc.errno, exc)
else:
    print("created")
"""


def _memory_cgroup_v1() -> pathlib.Path | None:
    for line in pathlib.Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            base = pathlib.Path("/sys/fs/cgroup/memory") / path.lstrip("/")
            return base if (base / "memory.oom_control").exists() else None
    return None


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a memory cgroup")
def test_reserve_fails_with_enomem_in_a_full_memory_cgroup() -> None:
    """reserve=True allocates at creation: a memory cgroup that cannot grant the pages makes
    creation fail with ENOMEM, instead of a later write stalling or dying in a page fault."""
    parent = _memory_cgroup_v1()
    if parent is None:
        pytest.skip("no writable cgroup v1 memory controller (oom_control) here")
    cgroup = parent / f"ashmem-test-{os.getpid()}"
    try:
        cgroup.mkdir()
        (cgroup / "memory.limit_in_bytes").write_text(str(64 << 20))
        (cgroup / "memory.oom_control").write_text("1")  # ENOMEM instead of the OOM killer
    except OSError as exc:
        pytest.skip(f"cannot configure a memory cgroup: {exc}")
    try:
        result = subprocess.run(
            [sys.executable, "-c", RESERVE_IN_CGROUP, str(cgroup)],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        refused, typo, enomem = result.stdout.splitlines()
        assert refused.startswith("refused: region 'huge': 256.0 MiB"), refused
        assert typo.startswith("refused: region 'huge': 1.0 PiB"), typo
        for line in (refused, typo):
            assert "more than 64.0 MiB (the memory cgroup's limit" in line
        assert enomem.startswith(f"{errno.ENOMEM} "), enomem
        assert "'too-big'" in enomem and "reserve" in enomem
        # the child is gone and the cgroup holds nothing of the failed region
        assert int((cgroup / "memory.usage_in_bytes").read_text()) < 8 << 20
    finally:
        cgroup.rmdir()


def _first_byte(shm: SharedMemory) -> int:
    with shm, shm.map_read_only() as m:
        return m[0]


def _put_region(queue: object) -> None:
    shm = SharedMemory.create("queued", PAGE)
    with shm.map_read_write() as m:
        m[0] = 99
    queue.put(shm)  # type: ignore[attr-defined]
    queue.join()  # type: ignore[attr-defined]  # keep the sender alive until it is taken


def test_pool_tasks_and_queues_carry_regions(mp_context: object) -> None:
    regions = [SharedMemory.create(f"task{i}", PAGE) for i in range(4)]
    for i, shm in enumerate(regions):
        with shm.map_read_write() as m:
            m[0] = i + 10
    with mp_context.Pool(2) as pool:  # type: ignore[attr-defined]
        assert pool.map_async(_first_byte, regions).get(timeout=60) == [10, 11, 12, 13]
    for shm in regions:
        shm.close()
    queue = mp_context.JoinableQueue()  # type: ignore[attr-defined]
    proc = mp_context.Process(target=_put_region, args=(queue,), daemon=True)  # type: ignore[attr-defined]
    proc.start()
    try:
        got = queue.get(timeout=60)
        queue.task_done()
        with got, got.map_read_only() as m:
            assert got.name == "queued" and m[0] == 99
    finally:
        Children.join(proc)


def test_mapping_size_len_and_resize_are_the_same_on_every_python() -> None:
    """``size()`` is the region's size and ``len()`` the window's, whether or not mmap kept
    a descriptor of its own (3.13+ maps with ``trackfd=False``); resizing stays refused."""
    with SharedMemory.create("sizes", 3 * PAGE) as shm:
        for m in (shm.map_read_only(), shm.map_read_write(), shm.map(PROT_READ, PAGE, PAGE)):
            with m:
                assert m.size() == 3 * PAGE
                assert len(m) == (PAGE if m.offset else 3 * PAGE)
                with pytest.raises(PermissionError, match="sizes are sealed"):
                    m.resize(PAGE)
                assert len(m) == (PAGE if m.offset else 3 * PAGE)
            with pytest.raises(ValueError):
                m.size()
            with pytest.raises(ValueError):
                len(m)


def test_mapping_made_directly_without_its_region_size() -> None:
    """``Mapping(fd, ...)`` (as a lower layer may make one) without ``region_size``: before
    3.13 mmap's own descriptor answers ``size()``; from 3.13 there is none, and it says so."""
    with (
        SharedMemory.create("direct", 2 * PAGE) as shm,
        ashmem.Mapping(shm.fileno(), PAGE, PROT_READ) as m,
    ):
        if sys.version_info >= (3, 13):
            with pytest.raises(io.UnsupportedOperation, match=r"SharedMemory\.size"):
                m.size()
        else:
            assert m.size() == 2 * PAGE
        assert len(m) == PAGE


def test_mappings_hold_no_descriptor_from_313_and_close_cleanly() -> None:
    """From 3.13 a Mapping keeps no duplicate of the region fd (``trackfd=False``): mapping
    opens no descriptor, the mapping works after every fd of the region is closed, and
    closing it releases the memory's last reference without an fd to close. Before 3.13
    mmap keeps one duplicate per mapping, closed with the mapping."""
    before = open_fd_count()
    shm = SharedMemory.create("no-dup", PAGE)
    maps = [shm.map_read_write(), shm.map_read_only()]
    per_mapping = 0 if sys.version_info >= (3, 13) else 1
    assert open_fd_count() == before + 1 + 2 * per_mapping
    shm.close()
    maps[0][0:3] = b"abc"
    assert maps[1][0:3] == b"abc"
    for m in maps:
        m.close()
        assert m.closed
        m.close()  # idempotent
    assert open_fd_count() == before


def test_map_read_only_is_the_whole_map_read_only() -> None:
    """map_read_only() maps inline (the consumer's side of every hand-off): its mapping must
    be what map(PROT_READ) gives, for a created region and for a received one whose size is
    still unread, and it keeps map()'s errors."""
    import socket

    from ashmem import fdpass

    size = 2 * PAGE + 100
    with SharedMemory.create("ro-whole", size) as shm:
        with shm.map_read_write() as w:
            w[-1] = 5
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with a, b:
            fdpass.send(a, shm)
            _, (received,) = fdpass.recv(b, 1)
        assert isinstance(received, SharedMemory) and received._size_pending
        for region in (shm, received):
            with region.map_read_only() as m, region.map(PROT_READ) as general:
                assert type(m) is type(general)
                got = (m.readonly, m.offset, len(m), m.size(), m.region_name, m[-1])
                assert got == (True, 0, size, size, general.region_name, 5)
                with pytest.raises(TypeError):
                    m[0] = 1
            assert not region._size_pending and region.size == size
        with pytest.raises(TypeError, match="populate must be"):
            received.map_read_only(populate=1)  # type: ignore[arg-type]
        with received.map_read_only(populate=True) as m:
            assert m[-1] == 5
        received.close()
        with pytest.raises(ashmem.ClosedError, match="'ro-whole' is closed"):
            received.map_read_only()
