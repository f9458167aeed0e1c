"""ashmem.compat: the multiprocessing.shared_memory drop-in.

The first half checks the behaviour CPython documents for ``SharedMemory`` and
``ShareableList`` (the cases of CPython's own shared_memory tests that apply, written here from
the documentation). The second half checks what is ours: names across fork, spawn,
forkserver and unrelated processes, names that die with their creator, entries that point at
the wrong region, and that nothing is left behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import pickle
import secrets
import signal
import subprocess
import sys
import textwrap
import typing
import uuid
from pathlib import Path
from typing import Any

import pytest

import ashmem
from ashmem import compat
from ashmem.compat import ShareableList, SharedMemory

from .conftest import CHILD_TIMEOUT, Children, shm_entries

NOBODY = 65534


def _unique(prefix: str = "test") -> str:
    return f"{prefix}-{os.getpid()}-{uuid.uuid4().hex[:10]}"


def _entry_file(name: str) -> str:
    return compat._entry_path(compat._directory(), name.lstrip("/"))


def _region_fds(label: str) -> int:
    """How many fds this process has of the region whose compat name is ``label``."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the listing's own fd is gone already
            count += os.readlink(f"/proc/self/fd/{fd}").startswith(f"/memfd:{label}@")
    return count


def _holds_region(label: str) -> bool:
    return _region_fds(label) > 0


def _maps_region(label: str) -> bool:
    with open("/proc/self/maps") as maps:
        return any(f"/memfd:{label}@" in line for line in maps)


def _python(code: str, **kwargs: Any) -> subprocess.Popen[str]:
    """An unrelated Python process (not a child of multiprocessing) running ``code``."""
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


# -- SharedMemory, as CPython documents it ------------------------------------------------------


def test_create_attach_and_unlink() -> None:
    shm = SharedMemory(create=True, size=512)
    try:
        assert shm.name.startswith("psm_") and shm.size == 512
        assert repr(shm) == f"SharedMemory({shm.name!r}, size=512)"
        assert shm.buf is not None and shm.buf.nbytes == 512 and not shm.buf.readonly
        shm.buf[0] = 42
        other = SharedMemory(shm.name, size=4096)  # size is ignored when attaching
        assert other.size == 512 and other.buf is not None and other.buf[0] == 42
        other.buf[511] = 7
        assert shm.buf[511] == 7
        with pytest.raises(FileExistsError) as exists:
            SharedMemory(shm.name, create=True, size=512)
        assert exists.value.filename == shm.name
        other.close()
    finally:
        shm.close()
        shm.unlink()
    with pytest.raises(FileNotFoundError) as absent:
        SharedMemory(shm.name)
    assert absent.value.filename == shm.name
    with pytest.raises(FileNotFoundError):
        shm.unlink()


def test_random_names_differ() -> None:
    blocks = [SharedMemory(create=True, size=8) for _ in range(4)]
    assert len({shm.name for shm in blocks}) == 4
    for shm in blocks:
        shm.close()
        shm.unlink()


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError):
        SharedMemory(create=True, size=-1)
    with pytest.raises(ValueError):
        SharedMemory(create=True, size=0)
    with pytest.raises(ValueError):
        SharedMemory(create=True)
    with pytest.raises(ValueError):
        SharedMemory("anything", size=-2)
    with pytest.raises(ValueError):
        SharedMemory()  # attaching needs a name
    for bad in ("", "/", "a/b", "nul\0", "x" * 201):
        with pytest.raises(ValueError, match="name"):
            SharedMemory(bad, create=True, size=8)


def test_absent_name() -> None:
    with pytest.raises(FileNotFoundError, match="no such shared memory"):
        SharedMemory(_unique("absent"))


def test_leading_slash_is_ignored_as_by_shm_open() -> None:
    name = _unique("slash")
    shm = SharedMemory("/" + name, create=True, size=8)
    try:
        assert shm.name == "/" + name
        with contextlib.closing(SharedMemory(name)) as same:
            assert same.size == 8
    finally:
        shm.close()
        shm.unlink()


def test_track_is_accepted_and_irrelevant() -> None:
    shm = SharedMemory(create=True, size=8, track=False)
    with contextlib.closing(SharedMemory(shm.name, track=True)):
        pass
    shm.close()
    shm.unlink()


def test_pickles_by_name_in_every_protocol() -> None:
    shm = SharedMemory(create=True, size=64)
    assert shm.buf is not None
    try:
        for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
            shm.buf[0] = protocol
            data = pickle.dumps(shm, protocol=protocol)
            assert shm.name.encode() in data and len(data) < 200  # a name, not the contents
            copy = pickle.loads(data)
            assert (copy.name, copy.size, copy.buf[0]) == (shm.name, 64, protocol)
            copy.buf[1] = 100 + protocol
            assert shm.buf[1] == 100 + protocol
            copy.close()
        data = pickle.dumps(shm)
    finally:
        shm.close()
        shm.unlink()
    with pytest.raises(FileNotFoundError):  # unpickling a dead object, as CPython
        pickle.loads(data)


def test_close_is_idempotent_and_empties_buf() -> None:
    shm = SharedMemory(create=True, size=8)
    shm.close()
    shm.close()
    assert shm.buf is None
    shm.unlink()


def test_close_with_live_views_never_raises_and_never_unmaps_under_them() -> None:
    np = pytest.importorskip("numpy")
    shm = SharedMemory(create=True, size=64)
    label = shm.name
    assert shm.buf is not None
    array = np.ndarray((8,), dtype=np.int64, buffer=shm.buf)
    piece = shm.buf[8:16]
    array[:] = 7
    shm.close()  # CPython raises BufferError here (gh-115635)
    shm.unlink()
    assert shm.buf is None and list(array) == [7] * 8 and piece[0] == 7
    array[0] = 9  # still mapped: no segfault
    assert _maps_region(label)
    del array
    piece.release()
    assert not _maps_region(label)  # unmapped when the last view went
    assert not _holds_region(label)


def test_failed_init_leaves_a_closable_object() -> None:
    shm = SharedMemory.__new__(SharedMemory)
    shm.close()
    shm.unlink()
    assert shm.buf is None


# -- ShareableList, as CPython documents it -----------------------------------------------------


def test_shareable_list_documented_example() -> None:
    a = ShareableList(["howdy", b"HoWdY", -273.154, 100, None, True, 42])
    try:
        assert [type(item) for item in a] == [str, bytes, float, int, type(None), bool, int]
        assert a.format == "8s8sdqxxxxxx?xxxxxxxx?q"
        assert a[2] == -273.154
        a[2] = -78.5
        assert a[2] == -78.5
        a[2] = "dry ice"  # another type, within the 8 bytes the slot has
        assert a[2] == "dry ice" and a.format.startswith("8s8s8s")
        with pytest.raises(ValueError, match="exceeds available storage"):
            a[2] = "larger than previously allocated storage space"
        assert a[2] == "dry ice"
        assert len(a) == 7 and a.index(42) == 6
        assert a.count(b"howdy") == 0 and a.count(b"HoWdY") == 1
        with pytest.raises(ValueError, match="not in this container"):
            a.index("absent")
        assert repr(a) == f"ShareableList({list(a)!r}, name={a.shm.name!r})"
    finally:
        a.shm.close()
        a.shm.unlink()


def test_shareable_list_indexing() -> None:
    sl = ShareableList(range(5))
    try:
        assert sl[-1] == 4 and sl[-5] == 0
        sl[-1] = -4
        assert list(sl) == [0, 1, 2, 3, -4]
        with pytest.raises(IndexError):
            sl[5]
        with pytest.raises(IndexError):
            sl[-6]
        with pytest.raises(IndexError):
            sl[5] = 0
        with pytest.raises(TypeError):
            sl["0"]  # type: ignore[index]
        sl[0] = True
        sl[1] = None
        sl[2] = 2.5
        sl[3] = b"12345678"  # exactly the 8 bytes of a number slot
        assert list(sl) == [True, None, 2.5, b"12345678", -4]
        assert sl.format == "xxxxxxx?xxxxxx?xd8sq"
    finally:
        sl.shm.close()
        sl.shm.unlink()


def test_shareable_list_strings_and_bytes() -> None:
    sl = ShareableList(["", "x" * 8, b"\x03\x02\x01\x00\x00\x00", "naïve ümlaut ☃"])
    try:
        assert sl.format.startswith("8s16s8s")
        assert sl[0] == "" and sl[1] == "x" * 8
        assert sl[2] == b"\x03\x02\x01"  # trailing NULs are lost, as documented
        assert sl[3] == "naïve ümlaut ☃"  # sized by its UTF-8 bytes
        sl[1] = "y" * 16  # a 16-byte slot holds 16
        assert sl[1] == "y" * 16
        with pytest.raises(ValueError):
            sl[1] = "z" * 17
    finally:
        sl.shm.close()
        sl.shm.unlink()


def test_shareable_list_refuses_unsupported_types_like_cpython() -> None:
    with pytest.raises(TypeError, match="cannot store a list") as refused:
        ShareableList([[1, 2]])
    assert isinstance(refused.value, KeyError)  # CPython raises KeyError
    sl = ShareableList([1])
    try:
        with pytest.raises(KeyError):
            sl[0] = {1: 2}
        assert sl[0] == 1
    finally:
        sl.shm.close()
        sl.shm.unlink()


def test_shareable_list_empty_and_zero_length() -> None:
    for empty in (ShareableList(), ShareableList([])):
        try:
            assert len(empty) == 0 and list(empty) == [] and empty.format == ""
            attached = ShareableList(name=empty.shm.name)
            assert len(attached) == 0
            attached.shm.close()
        finally:
            empty.shm.close()
            empty.shm.unlink()


def test_shareable_list_attach_and_pickle_by_name() -> None:
    name = _unique("list")
    sl = ShareableList(["a", 1, 2.0], name=name)
    try:
        assert sl.shm.name == name
        with pytest.raises(FileExistsError):
            ShareableList([1], name=name)
        other = ShareableList(name=name)
        other[1] = 11
        assert sl[1] == 11
        data = pickle.dumps(sl)
        assert len(data) < sl.shm.size + 100 and name.encode() in data
        copy = pickle.loads(data)
        copy[0] = "b"
        assert sl[0] == "b" and copy.format == sl.format
        other.shm.close()
        copy.shm.close()
    finally:
        sl.shm.close()
        sl.shm.unlink()
    with pytest.raises(FileNotFoundError):
        pickle.loads(data)
    assert typing.get_origin(ShareableList[int]) is ShareableList  # usable in annotations


def test_shareable_list_with_closed_block_says_so() -> None:
    sl = ShareableList([1])
    sl.shm.close()
    with pytest.raises(ValueError, match="closed"):
        sl[0]
    sl.shm.unlink()


# -- across processes ---------------------------------------------------------------------------


def _worker(shm: SharedMemory, sl: ShareableList, name: str, list_name: str) -> None:
    assert shm.buf is not None and bytes(shm.buf[:5]) == b"hello"
    shm.buf[:5] = b"HELLO"  # through the object
    by_name = SharedMemory(name=name)  # the tutorial pattern: attach by shm.name
    assert by_name.buf is not None
    by_name.buf[5:10] = b"world"
    by_name.close()
    sl[0] = sl[0] + 1
    again = ShareableList(name=list_name)
    again[1] = "child"
    again.shm.close()
    shm.close()


def test_objects_and_names_reach_workers(
    mp_context: multiprocessing.context.BaseContext, children: Children
) -> None:
    shm = SharedMemory(create=True, size=16)
    sl = ShareableList([41, "parent"])
    assert shm.buf is not None
    try:
        shm.buf[:5] = b"hello"
        children.run(mp_context, _worker, shm, sl, shm.name, sl.shm.name)
        assert bytes(shm.buf[:10]) == b"HELLOworld"
        assert list(sl) == [42, "child"]
        _assert_not_in_dev_shm(shm.name, sl.shm.name)
    finally:
        for block in (shm, sl.shm):
            block.close()
            block.unlink()


def _assert_not_in_dev_shm(*names: str) -> None:
    # Other test runs on this machine may have their own files there: look for ours only.
    found = [entry for entry in shm_entries() for name in names if name in entry]
    assert found == []


def _attach_and_unlink(name: str) -> None:
    shm = SharedMemory(name)
    shm.unlink()
    shm.close()


def test_unlink_elsewhere_releases_the_creators_hold(children: Children) -> None:
    shm = SharedMemory(create=True, size=8)
    name = shm.name
    children.run(multiprocessing.get_context("fork"), _attach_and_unlink, name)
    with pytest.raises(FileNotFoundError):
        SharedMemory(name)
    assert _holds_region(name)
    shm.close()
    assert not _holds_region(name)  # not even the name's own descriptor


def test_creator_close_keeps_the_name_until_unlink() -> None:
    shm = SharedMemory(create=True, size=8)
    assert shm.buf is not None
    shm.buf[0] = 5
    shm.close()
    later = SharedMemory(shm.name)
    assert later.buf is not None and later.buf[0] == 5
    holding = _region_fds(shm.name)
    later.unlink()  # from the attached object, as CPython allows
    assert _region_fds(shm.name) == holding - 1  # the name's own descriptor is gone
    later.close()
    assert not _holds_region(shm.name)


def _race(name: str, start: Any, done: Any, results: Any) -> None:
    start.wait(CHILD_TIMEOUT)
    try:
        shm = SharedMemory(name, create=True, size=8)
    except FileExistsError:
        results.put("exists")
        done.wait(CHILD_TIMEOUT)
        return
    results.put("created")
    done.wait(CHILD_TIMEOUT)  # keep the name alive until everyone has tried
    shm.unlink()
    shm.close()


def test_concurrent_creates_of_one_name_have_one_winner(children: Children) -> None:
    ctx = multiprocessing.get_context("fork")
    racers = 3
    start, done = ctx.Barrier(racers), ctx.Barrier(racers + 1)
    results = ctx.SimpleQueue()
    name = _unique("race")
    procs = [children.start(ctx, _race, name, start, done, results) for _ in range(racers)]
    outcomes = sorted(results.get() for _ in range(racers))
    done.wait(CHILD_TIMEOUT)
    for proc in procs:
        children.join(proc)
    assert outcomes == ["created", "exists", "exists"]


_CREATOR = """
    import sys
    from ashmem.compat import SharedMemory
    shm = SharedMemory(sys.argv[1], create=True, size=4096)
    shm.buf[:6] = b"remote"
    print("ready", flush=True)
    sys.stdin.read()  # until the test closes our stdin
"""


def _start_creator(name: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(_CREATOR), name],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == "ready\n"
    return proc


def test_explicit_name_from_an_unrelated_process_dies_with_it() -> None:
    name = _unique("frames")
    creator = _start_creator(name)
    try:
        shm = SharedMemory(name)
        assert shm.buf is not None and bytes(shm.buf[:6]) == b"remote"
        with pytest.raises(FileExistsError):
            SharedMemory(name, create=True, size=8)
        _, err = creator.communicate("", timeout=CHILD_TIMEOUT)  # it exits normally
        assert creator.returncode == 0 and err == ""  # no resource-tracker warning
        assert bytes(shm.buf[:6]) == b"remote"  # our hold keeps the memory
        assert not os.path.lexists(_entry_file(name))  # it removed its entry at exit
        with pytest.raises(FileNotFoundError):
            SharedMemory(name)  # the name died with its creator
        shm.close()
    finally:
        if creator.poll() is None:
            creator.kill()
            creator.wait()


def test_name_of_a_killed_creator_is_absent_then_replaced() -> None:
    name = _unique("killed")
    creator = _start_creator(name)
    creator.send_signal(signal.SIGKILL)
    try:
        # Dead but not yet reaped (a zombie), then reaped: absent both ways.
        os.waitid(os.P_PID, creator.pid, os.WEXITED | os.WNOWAIT)
        with pytest.raises(FileNotFoundError):
            SharedMemory(name)
        creator.wait(CHILD_TIMEOUT)
        assert os.path.lexists(_entry_file(name))  # nobody removed it: it is stale
        with pytest.raises(FileNotFoundError):
            SharedMemory(name)
        shm = SharedMemory(name, create=True, size=8)  # replaces the stale entry
        entry = compat._read_entry(_entry_file(name))
        assert entry is not None and entry.pid == os.getpid()
        shm.close()
        shm.unlink()
    finally:
        if creator.poll() is None:
            creator.kill()
            creator.wait()
        for stream in (creator.stdin, creator.stdout, creator.stderr):
            if stream is not None:
                stream.close()


def _write_entry(name: str, pid: int, start: int, fd: int, tag: str) -> None:
    path = _entry_file(name)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    os.symlink(compat._format_entry(compat._Entry(pid, start, fd, tag)), path)


def test_an_entry_pointing_at_another_region_is_refused() -> None:
    """What a recycled pid or fd number looks like: the entry's pid and fd now lead to
    something else. Attaching must refuse it, and create must replace it."""
    name = _unique("recycled")
    tag = secrets.token_hex(8)
    me, start = os.getpid(), compat._my_start()
    wrong_tag = ashmem.SharedMemory.create(f"{name}@{secrets.token_hex(8)}", 4096)
    other = ashmem.SharedMemory.create("someone-else", 4096)
    read_end, write_end = os.pipe()
    try:
        for fd in (wrong_tag.fileno(), other.fileno(), read_end, 999_999):
            _write_entry(name, me, start, fd, tag)
            with pytest.raises(FileNotFoundError):
                SharedMemory(name)
        _write_entry(name, 2**22 + 7, 0, 3, tag)  # no such process
        with pytest.raises(FileNotFoundError):
            SharedMemory(name)
        os.unlink(_entry_file(name))
        with open(_entry_file(name), "wb") as garbage:  # not even a symlink
            garbage.write(b"ashmem-compat 1 1 1 1 0123456789abcdef")
        with pytest.raises(FileNotFoundError):
            SharedMemory(name)
        _write_entry(name, me, start, other.fileno(), tag)
        shm = SharedMemory(name, create=True, size=8)
        assert shm.buf is not None and SharedMemory(name).size == 8
        shm.close()
        shm.unlink()
    finally:
        for fd in (read_end, write_end):
            os.close(fd)
        wrong_tag.close()
        other.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(_entry_file(name))


def test_a_write_protected_region_attaches_read_only() -> None:
    shm = SharedMemory(create=True, size=4096)
    assert shm.buf is not None
    shm.buf[0] = 3
    ashmem.region.set_prot_region(shm._region.fileno(), ashmem.PROT_READ)  # type: ignore[union-attr]
    reader = SharedMemory(shm.name)
    assert reader.buf is not None and reader.buf.readonly and reader.buf[0] == 3
    shm.buf[0] = 4  # the creator's writable mapping keeps working, as on Android
    assert reader.buf[0] == 4
    reader.close()
    shm.close()
    shm.unlink()


_LIFECYCLE = """
    import os, sys
    from ashmem.compat import SharedMemory, ShareableList
    shm = SharedMemory(create=True, size=1 << 20)
    sl = ShareableList([1, "two"])

    def holding():
        links = []
        for fd in os.listdir("/proc/self/fd"):
            try:
                links.append(os.readlink(f"/proc/self/fd/{fd}"))
            except OSError:
                pass  # the listing's own fd
        return sum(shm.name in link for link in links)

    parent_holds = holding()  # the object's fd (and mmap's dup before 3.13), the name's
    pid = os.fork()
    if pid == 0:
        # A forked child holds no copy of the name's descriptor and, exiting normally
        # (atexit runs), does not remove its parent's names.
        assert holding() == parent_holds - 1, (holding(), parent_holds)
        sys.exit(0)
    _, status = os.waitpid(pid, 0)
    assert status == 0, status
    SharedMemory(shm.name).close()
    print(shm.name, sl.shm.name, "multiprocessing" in sys.modules, flush=True)
    # exit without close() or unlink(): CPython would warn about leaked shared_memory objects
"""


def test_nothing_outlives_an_unrelated_process_and_nothing_warns() -> None:
    proc = _python(_LIFECYCLE)
    out, err = proc.communicate(timeout=CHILD_TIMEOUT)
    assert proc.returncode == 0, err
    assert err == ""  # no resource tracker, no warning at exit
    name, list_name, imported_multiprocessing = out.split()
    assert imported_multiprocessing == "False"  # so no resource tracker either
    for gone in (name, list_name):
        assert not os.path.lexists(_entry_file(gone))
        with pytest.raises(FileNotFoundError):
            SharedMemory(gone)
    _assert_not_in_dev_shm(name, list_name)


def _as_nobody_create(name: str, dumpable: bool, ready: int, stop: int) -> None:
    os.setgid(NOBODY)
    os.setuid(NOBODY)
    # Changing uid without exec made us undumpable (fs.suid_dumpable); a process that was
    # started as this user is dumpable unless it says otherwise.
    ctypes.CDLL(None).prctl(4, int(dumpable), 0, 0, 0)  # PR_SET_DUMPABLE
    shm = SharedMemory(name, create=True, size=8)
    assert shm.buf is not None
    shm.buf[0] = 77
    os.write(ready, b"x")
    os.read(stop, 1)
    shm.unlink()


def _as_nobody_attach(name: str, result: int) -> None:
    os.setgid(NOBODY)
    os.setuid(NOBODY)
    try:
        shm = SharedMemory(name)
        outcome = f"attached {shm.buf[0] if shm.buf is not None else None}"
    except OSError as exc:
        outcome = type(exc).__name__
    os.write(result, outcome.encode())


def _fork_run(target: Any, *args: Any) -> int:
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            target(*args)
            code = 0
        finally:
            os._exit(code)
    return pid


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run two processes as nobody")
@pytest.mark.parametrize("dumpable", [True, False])
def test_unrelated_same_user_process_without_privileges(dumpable: bool) -> None:
    """Two sibling processes of an ordinary user (neither is the other's ancestor): the
    second attaches to the first's name, unless the first is not dumpable."""
    name = _unique("nobody")
    ready_r, ready_w = os.pipe()
    stop_r, stop_w = os.pipe()
    result_r, result_w = os.pipe()
    creator = _fork_run(_as_nobody_create, name, dumpable, ready_w, stop_r)
    try:
        assert os.read(ready_r, 1) == b"x"
        attacher = _fork_run(_as_nobody_attach, name, result_w)
        _, status = os.waitpid(attacher, 0)
        assert status == 0
        outcome = os.read(result_r, 100).decode()
        assert outcome == ("attached 77" if dumpable else "PermissionError")
    finally:
        os.write(stop_w, b"x")
        os.waitpid(creator, 0)
        for fd in (ready_r, ready_w, stop_r, stop_w, result_r, result_w):
            os.close(fd)


def test_readme_example_runs_as_printed(tmp_path: Any) -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("## Drop-in for `multiprocessing.shared_memory`", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    script = tmp_path / "example.py"
    script.write_text(code)
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=CHILD_TIMEOUT
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "b'HELLO'\n", "")
