"""``ashmem ls``: real processes hold regions by fd, read-only, only as mappings and shared
between two processes; ``ashmem ls`` runs as a real subprocess and must report each exactly.

The children are this file run as a script (``python test_ls.py holder TOKEN``): each prints
one JSON line once its regions are in place, then waits for EOF on stdin. Each also arms
``alarm()``, and the ``procs`` fixture kills whatever is left, so nothing outlives a test.
"""

from __future__ import annotations

import json
import mmap
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ashmem import _ls, region

PAGE = mmap.PAGESIZE
CHILD_TIMEOUT = 20  # seconds: a child's own alarm() and the longest wait for its report
LS_TIMEOUT = 30.0
NOBODY = 65534

# ---------------------------------------------------------------------------------------------
# Children (run as `python test_ls.py ROLE ARGS...`)
# ---------------------------------------------------------------------------------------------


def _set_comm(name: str) -> None:
    with open("/proc/self/comm", "w") as comm:
        comm.write(name)


def _map_untracked(fd: int, prot: int) -> mmap.mmap:
    """Map the whole region behind ``fd`` (shared) so that only the mapping refers to it.

    Before 3.13 CPython's mmap keeps a hidden dup of the fd (``trackfd=False`` arrived in
    3.13); ls would rightly report that dup as an fd holding the region. Point that fd number
    at /dev/null instead, so a region whose own fd is closed is held by the mapping alone.
    """
    st = os.fstat(fd)
    if sys.version_info >= (3, 13):
        return mmap.mmap(fd, st.st_size, flags=mmap.MAP_SHARED, prot=prot, trackfd=False)

    def fds_of_region() -> set[int]:
        found = set()
        for entry in os.listdir("/proc/self/fd"):
            try:
                other = os.stat(f"/proc/self/fd/{entry}")
            except FileNotFoundError:
                continue  # the directory fd of the listing itself
            if (other.st_dev, other.st_ino) == (st.st_dev, st.st_ino):
                found.add(int(entry))
        return found

    before = fds_of_region()
    mapping = mmap.mmap(fd, st.st_size, flags=mmap.MAP_SHARED, prot=prot)
    for hidden in fds_of_region() - before:
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, hidden)
        os.close(devnull)
    return mapping


def _touch(mapping: mmap.mmap, pages: int) -> None:
    for page in range(pages):
        mapping[page * PAGE] = 1


def _report(info: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(info) + "\n")
    sys.stdout.flush()


def _wait_for_eof() -> None:
    sys.stdin.buffer.read()


def _holder(token: str) -> None:
    """Holds: a region by fd (mapped, touched, unmapped), a read-only region by fd and a
    read-only mapping, a region only as a mapping, a region by fd and mapping that the peer
    maps too, and a plain memfd whose size is not sealed."""
    _set_comm("ls-holder")
    keep: list[mmap.mmap] = []

    held = region.create_region(f"ls-held-{token}", 64 * 1024)
    with mmap.mmap(held, 64 * 1024, flags=mmap.MAP_SHARED) as mapping:
        _touch(mapping, 3)

    read_only = region.create_region(f"ls-readonly-{token}", 16 * 1024)
    with mmap.mmap(read_only, 16 * 1024, flags=mmap.MAP_SHARED) as mapping:
        _touch(mapping, 1)
    region.set_prot_region(read_only, region.PROT_READ)
    keep.append(_map_untracked(read_only, mmap.PROT_READ))

    mapped_only = region.create_region(f"ls-mapped-only-{token}", 32 * 1024)
    mapping = _map_untracked(mapped_only, mmap.PROT_READ | mmap.PROT_WRITE)
    _touch(mapping, 2)
    keep.append(mapping)
    os.close(mapped_only)

    shared = region.create_region(f"ls-shared-{token}", 8 * 1024)
    mapping = _map_untracked(shared, mmap.PROT_READ | mmap.PROT_WRITE)
    _touch(mapping, 1)
    keep.append(mapping)

    plain = os.memfd_create(f"ls-plain-{token}")
    os.ftruncate(plain, 4096)

    _report(
        {
            "pid": os.getpid(),
            "fds": {
                f"ls-held-{token}": held,
                f"ls-readonly-{token}": read_only,
                f"ls-shared-{token}": shared,
                f"ls-plain-{token}": plain,
            },
        }
    )
    _wait_for_eof()


def _peer(path: str) -> None:
    """Opens the region at ``path`` (``/proc/PID/fd/N`` of the holder), maps it, closes the
    fd: it holds the region only as a mapping."""
    _set_comm("ls-peer")
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    mapping = _map_untracked(fd, mmap.PROT_READ | mmap.PROT_WRITE)
    os.close(fd)
    _touch(mapping, 1)
    _report({"pid": os.getpid()})
    _wait_for_eof()
    mapping.close()


def _churn(seconds: str) -> None:
    """Forks short-lived processes that create, map and touch a region and exit at once,
    until stdin closes or ``seconds`` pass: processes vanish while ls scans them."""
    _set_comm("ls-churn")
    _report({"pid": os.getpid()})
    deadline = time.monotonic() + float(seconds)
    while time.monotonic() < deadline and not select.select([sys.stdin], [], [], 0)[0]:
        pid = os.fork()
        if pid == 0:
            fd = region.create_region("ls-churn", 4 * PAGE)
            _touch(mmap.mmap(fd, 4 * PAGE, flags=mmap.MAP_SHARED), 4)
            os._exit(0)
        os.waitpid(pid, 0)


_ROLES: dict[str, Callable[..., None]] = {"holder": _holder, "peer": _peer, "churn": _churn}

# ---------------------------------------------------------------------------------------------
# Harness
# ---------------------------------------------------------------------------------------------


class Procs:
    """Starts the child roles above and guarantees none outlives the test."""

    def __init__(self) -> None:
        self._procs: list[subprocess.Popen[bytes]] = []

    def start(
        self, role: str, *args: str, as_user: int | None = None
    ) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
        """Start ``role`` and return it with the JSON line it reports once ready."""
        proc = subprocess.Popen(
            [*_user_prefix(as_user), sys.executable, __file__, role, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        self._procs.append(proc)
        return proc, _read_report(proc)

    def cleanup(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(5)
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    pipe.close()


def _user_prefix(uid: int | None) -> list[str]:
    if uid is None:
        return []
    return ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--"]


def _read_report(proc: subprocess.Popen[bytes]) -> dict[str, Any]:
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + CHILD_TIMEOUT
    data = b""
    while not data.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
            proc.kill()
            pytest.fail(f"child {proc.args!r} did not report within {CHILD_TIMEOUT}s")
        chunk = os.read(fd, 4096)
        if not chunk:
            pytest.fail(f"child {proc.args!r} exited with {proc.wait(5)} before reporting")
        data += chunk
    report: dict[str, Any] = json.loads(data)
    return report


@pytest.fixture
def procs() -> Iterator[Procs]:
    started = Procs()
    try:
        yield started
    finally:
        started.cleanup()


def run_ls(*args: str, as_user: int | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``ashmem ls ARGS`` as a real subprocess; fail on a non-zero exit."""
    result = subprocess.run(
        [*_user_prefix(as_user), sys.executable, "-m", "ashmem.cli", "ls", *args],
        capture_output=True,
        text=True,
        timeout=LS_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result


def ls_json(as_user: int | None = None) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = json.loads(run_ls("--json", as_user=as_user).stdout)
    return rows


def map_files_readable() -> bool:
    """Whether this process may open /proc/PID/map_files (root, or CAP_CHECKPOINT_RESTORE)."""
    entry = os.listdir("/proc/self/map_files")[0]
    try:
        os.stat(f"/proc/self/map_files/{entry}")
    except PermissionError:
        return False
    return True


def can_run_as_nobody() -> bool:
    """Root, setpriv, and an interpreter that nobody may run (a Python built with a shared
    libpython under root's home cannot load it as nobody)."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        return False
    probe = subprocess.run(
        [*_user_prefix(NOBODY), sys.executable, "-c", "import ashmem"],
        capture_output=True,
        timeout=30,
        check=False,
    )
    return probe.returncode == 0


class Scene:
    """The holder and peer, and the rows that ``ashmem ls`` must report for them."""

    def __init__(self, procs: Procs, as_user: int | None = None) -> None:
        self.token = uuid.uuid4().hex[:8]
        self.holder, report = procs.start("holder", self.token, as_user=as_user)
        self.fds: dict[str, int] = report["fds"]
        self.holder_pid: int = report["pid"]
        shared_fd = self.fds[self.name("shared")]
        self.peer, report = procs.start(
            "peer", f"/proc/{self.holder_pid}/fd/{shared_fd}", as_user=as_user
        )
        self.peer_pid: int = report["pid"]

    def name(self, kind: str) -> str:
        return f"ls-{kind}-{self.token}"

    def expected(self, privileged: bool) -> dict[tuple[int, int | None, str], dict[str, Any]]:
        """(pid, fd, name) -> the fields that row must have; ``min_resident`` is what the
        child touched."""
        h, p, fds = self.holder_pid, self.peer_pid, self.fds
        mapped_only_known = privileged  # no other process holds it by fd
        n = self.name
        return {
            (h, fds[n("held")], n("held")): dict(
                process="ls-holder",
                size=65536,
                min_resident=3 * PAGE,
                mapped_bytes=0,
                mappers=0,
                read_only=False,
                ashmem=True,
            ),
            (h, fds[n("readonly")], n("readonly")): dict(
                process="ls-holder",
                size=16384,
                min_resident=PAGE,
                mapped_bytes=16384,
                mappers=1,
                read_only=True,
                ashmem=True,
            ),
            (h, None, n("mapped-only")): dict(
                process="ls-holder",
                size=32768 if mapped_only_known else None,
                min_resident=2 * PAGE if mapped_only_known else None,
                mapped_bytes=32768,
                mappers=1,
                read_only=False if mapped_only_known else None,
                ashmem=True if mapped_only_known else None,
            ),
            (h, fds[n("shared")], n("shared")): dict(
                process="ls-holder",
                size=8192,
                min_resident=PAGE,
                mapped_bytes=8192,
                mappers=2,
                read_only=False,
                ashmem=True,
            ),
            # The peer only maps it, but the holder's fd makes it fully known.
            (p, None, n("shared")): dict(
                process="ls-peer",
                size=8192,
                min_resident=PAGE,
                mapped_bytes=8192,
                mappers=2,
                read_only=False,
                ashmem=True,
            ),
            (h, fds[n("plain")], n("plain")): dict(
                process="ls-holder",
                size=4096,
                min_resident=0,
                mapped_bytes=0,
                mappers=0,
                read_only=False,
                ashmem=False,
            ),
        }

    def rows(self, listing: list[dict[str, Any]]) -> dict[tuple[int, int | None, str], Any]:
        """Rows of this scene's processes, by (pid, fd, name); fails on a duplicate."""
        mine: dict[tuple[int, int | None, str], Any] = {}
        for row in listing:
            if row["pid"] in (self.holder_pid, self.peer_pid):
                key = (row["pid"], row["fd"], row["name"])
                assert key not in mine, f"duplicate row {key}"
                mine[key] = row
        return mine


def _prot_cells(line: str) -> list[str]:
    """The PROT and ASHMEM cells of a table line (size cells have a space in them)."""
    found = re.search(r"\s(rw|ro|-)\s+(yes|no|-)\s", line)
    assert found is not None, line
    return list(found.groups())


JSON_KEYS = [
    "pid",
    "process",
    "command",
    "fd",
    "name",
    "device",
    "inode",
    "size",
    "resident_bytes",
    "mapped_bytes",
    "mappers",
    "read_only",
    "ashmem",
    "pinned_bytes",
    "unpinned_bytes",
    "purged_bytes",
]


def check_scene(scene: Scene, listing: list[dict[str, Any]], privileged: bool) -> None:
    expected = scene.expected(privileged)
    rows = scene.rows(listing)
    assert set(rows) == set(expected)
    for key, want in expected.items():
        row = rows[key]
        assert list(row) == JSON_KEYS, key
        for field in ("process", "size", "mapped_bytes", "mappers", "read_only", "ashmem"):
            assert row[field] == want[field], (key, field, row)
        if want["min_resident"] is None:
            assert row["resident_bytes"] is None, (key, row)
        else:
            size = row["size"]
            assert want["min_resident"] <= row["resident_bytes"] <= -(-size // PAGE) * PAGE
    # The two rows of the shared region are one region; every other region is distinct.
    ids = {key: (row["device"], row["inode"]) for key, row in rows.items()}
    shared = scene.name("shared")
    assert ids[(scene.holder_pid, scene.fds[shared], shared)] == ids[(scene.peer_pid, None, shared)]
    assert len(set(ids.values())) == len(ids) - 1


# ---------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------


def test_json_reports_every_field(procs: Procs) -> None:
    scene = Scene(procs)
    check_scene(scene, ls_json(), privileged=map_files_readable())


def table_cells(line: str) -> list[str]:
    """The cells of one table row, with the PROCESS cell (a command line, which has spaces)
    replaced by the process's comm."""
    pid = int(line.split()[0])
    comm = _ls._read_comm(pid)
    assert comm is not None, f"process {pid} is gone"
    cell = _ls._command_cell(_ls._read_command(pid, comm), wide=False)
    assert f" {cell} " in line, (cell, line)
    return line.replace(f" {cell} ", f" {comm} ", 1).split()


def test_table_lists_the_regions(procs: Procs) -> None:
    scene = Scene(procs)
    result = run_ls()
    lines = result.stdout.splitlines()
    header = lines[0]
    assert header.split() == [*_ls._HEADER, "NAME"]
    by_name = {line.split()[-1]: line for line in lines[1:] if scene.token in line}
    held, mapped_only = scene.name("held"), scene.name("mapped-only")
    assert set(by_name) == {
        scene.name(kind) for kind in ("held", "readonly", "mapped-only", "shared", "plain")
    }
    # Names start where the header's NAME does: columns are aligned.
    for name, line in by_name.items():
        assert line.index(name) == header.index("NAME"), line
    held_cells = table_cells(by_name[held])
    assert held_cells[:3] == [str(scene.holder_pid), "ls-holder", str(scene.fds[held])]
    assert f"  {sys.executable[:20]}" in by_name[held]  # PROCESS: the command line
    assert "64.0 KiB" in by_name[held]
    assert _prot_cells(by_name[held]) == ["rw", "yes"]
    assert _prot_cells(by_name[scene.name("readonly")]) == ["ro", "yes"]
    assert _prot_cells(by_name[scene.name("plain")]) == ["rw", "no"]
    assert table_cells(by_name[mapped_only])[2] == "-"  # fd: held only as a mapping


@pytest.mark.skipif(
    not can_run_as_nobody(), reason="needs root, setpriv and a Python that nobody may run"
)
def test_unprivileged_user_sees_own_regions_with_unknowns(procs: Procs) -> None:
    scene = Scene(procs, as_user=NOBODY)
    check_scene(scene, ls_json(as_user=NOBODY), privileged=False)
    table = run_ls(as_user=NOBODY)
    [line] = [ln for ln in table.stdout.splitlines() if ln.endswith(scene.name("mapped-only"))]
    assert table_cells(line)[2:4] == ["-", "-"]  # fd and size unknown
    assert "map_files" in table.stderr  # the note saying why


@pytest.mark.parametrize("stage", ["comm", "fds", "probe", "maps"])
def test_process_vanishing_mid_scan(
    procs: Procs, monkeypatch: pytest.MonkeyPatch, stage: str
) -> None:
    """Kill (and reap) a holder and its peer at one step of the holder's scan: list_regions
    must not fail, must report what it read before the kill and nothing it could not, and a
    second holder must still be reported in full."""
    victim = Scene(procs)
    survivor = Scene(procs)
    killed = False

    def kill_victim() -> None:
        nonlocal killed
        if not killed:
            killed = True
            for proc in (victim.holder, victim.peer):
                proc.kill()
                proc.wait(5)

    if stage == "probe":
        original_probe = _ls._probe

        def probe(path: str) -> Any:
            if path.startswith(f"/proc/{victim.holder_pid}/"):
                kill_victim()
            return original_probe(path)

        monkeypatch.setattr(_ls, "_probe", probe)
    else:
        name = {"comm": "_read_comm", "fds": "_memfd_fds", "maps": "_read_maps"}[stage]
        original: Callable[[int], Any] = getattr(_ls, name)

        def read_then_kill(pid: int) -> Any:
            result = original(pid)
            if pid == victim.holder_pid:
                kill_victim()
            return result

        monkeypatch.setattr(_ls, name, read_then_kill)

    listing = [row.to_json() for row in _ls.list_regions()]
    assert killed
    check_scene(survivor, listing, privileged=map_files_readable())

    left = {(row["fd"], row["name"]): row for row in listing if row["pid"] == victim.holder_pid}
    if stage != "maps":
        # Killed before any of its regions could be opened: nothing is reported.
        assert left == {}
    else:
        # Its fds were opened and its maps read before the kill; its mapping-only region
        # could no longer be opened through map_files, so what that would tell is unknown.
        held = victim.name("held")
        assert left[(victim.fds[held], held)]["size"] == 65536
        mapped_only = left[(None, victim.name("mapped-only"))]
        assert (mapped_only["size"], mapped_only["mapped_bytes"]) == (None, 32768)


def test_ls_survives_processes_exiting_during_the_scan(procs: Procs) -> None:
    churn, _ = procs.start("churn", "10")
    for _ in range(3):
        listing = ls_json()
        assert all(list(row) == JSON_KEYS for row in listing)
    assert churn.poll() is None, "the churn child should still be forking"


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (None, "-"),
        (0, "0 B"),
        (1023, "1023 B"),
        (4096, "4.0 KiB"),
        (3 * 1024 * 1024 // 2, "1.5 MiB"),
        (1 << 30, "1.0 GiB"),
        (1 << 60, "1024.0 PiB"),
    ],
)
def test_format_size(size: int | None, text: str) -> None:
    assert _ls.format_size(size) == text


def test_table_escapes_names_and_aligns_unknowns() -> None:
    rows = [
        _ls.RegionInfo(
            pid=7,
            process="a\tb",
            command="a\tb",
            fd=None,
            name="two\nlines \udcff",
            device="0:1",
            inode=9,
            size=None,
            resident_bytes=None,
            mapped_bytes=8192,
            mappers=3,
            read_only=None,
            ashmem=None,
        ),
        _ls.RegionInfo(
            pid=12345,
            process="python3",
            command="python3",
            fd=42,
            name="frames",
            device="0:1",
            inode=10,
            size=1 << 20,
            resident_bytes=4096,
            mapped_bytes=0,
            mappers=0,
            read_only=True,
            ashmem=True,
            pinned_bytes=(1 << 20) - 8192,
            unpinned_bytes=8192,
            purged_bytes=4096,
        ),
    ]
    lines = _ls.format_table(rows).split("\n")
    assert len(lines) == 3
    assert lines[1].endswith("two\\nlines \\xff")
    assert "a\\tb" in lines[1]
    assert lines[1].split()[:3] == ["7", "a\\tb", "-"]
    assert lines[2].split() == [
        "12345",
        "python3",
        "42",
        "1.0",
        "MiB",
        "4.0",
        "KiB",
        "0",
        "B",
        "0",
        "ro",
        "yes",
        "1016.0",
        "KiB",
        "8.0",
        "KiB",
        "4.0",
        "KiB",
        "frames",
    ]
    starts = {line.index(name) for line, name in zip(lines, ["NAME", "two", "frames"], strict=True)}
    assert len(starts) == 1
    assert json.loads(json.dumps(rows[1].to_json()))["size"] == 1 << 20


def test_main_handles_a_closed_pipe() -> None:
    """`ashmem ls | head -0`: no traceback when the reader has gone."""
    ls = subprocess.Popen(
        [sys.executable, "-m", "ashmem.cli", "ls"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert ls.stdout is not None and ls.stderr is not None
    ls.stdout.close()
    try:
        stderr = ls.stderr.read()
        ls.wait(LS_TIMEOUT)
    finally:
        if ls.poll() is None:
            ls.kill()
            ls.wait(5)
        ls.stderr.close()
    assert b"Traceback" not in stderr


if __name__ == "__main__":
    signal.alarm(CHILD_TIMEOUT)  # a child never outlives a stuck test run
    _ROLES[sys.argv[1]](*sys.argv[2:])
