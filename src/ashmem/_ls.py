"""``ashmem ls``: the memfd regions this user can see, across processes.

Where the information comes from
--------------------------------
A region is a memfd, identified by the ``(st_dev, st_ino)`` of its inode. For every process
whose ``/proc/PID`` this user may read (``PTRACE_MODE_READ``: same uid, or root):

* ``/proc/PID/fd/N`` whose link reads ``/memfd:NAME (deleted)``: the process holds the region
  by descriptor. One row per such fd.
* ``/proc/PID/maps`` lines whose path is ``/memfd:NAME (deleted)``: the process maps the
  region (shared or private: either keeps it alive); the ``dev`` and ``inode`` columns
  identify it. A process that maps a region but
  holds no fd for it (it closed the fd after ``mmap``) gets one row with ``fd`` None.

What is known about a region (size, resident bytes, protection, whether it is an ashmem
region proper) comes from opening it: through ``/proc/PID/fd/N`` (allowed to whoever may read
the fd table) or, for a region held only as mappings, through ``/proc/PID/map_files/S-E``
(allowed only with ``CAP_SYS_ADMIN`` or ``CAP_CHECKPOINT_RESTORE``, i.e. root). Without
either, those values are unknown: ``None`` in :class:`RegionInfo`, ``null`` in JSON, ``-``
in the table. A region held by fd in *any* visible process is always fully known, also on
the rows of processes that only map it.

Every memfd is listed, not only ashmem regions: ``ashmem`` tells whether the region's size is
sealed (``F_SEAL_GROW | F_SEAL_SHRINK``, what :func:`ashmem.region.valid` checks), so memfds
made by other software (Wayland pools, browsers, systemd) can be told apart without hiding
mapping-only regions whose seals cannot be read without privilege.

Races: processes exit, close fds and unmap while we scan. Any ``OSError`` about one process,
fd or mapping means that item is skipped (or its values unknown); the scan never fails
because of it. Opening goes through ``O_PATH`` first and everything is then read from our own
descriptor, so an fd number that is reused between ``readlink`` and ``open`` can neither be
misreported nor cause a real open of some other file (a FIFO, a device).

Not visible: regions in flight inside an ``SCM_RIGHTS`` message (in a socket buffer, held by
no process yet), and processes this user may not ``ptrace``-read (other users, unless root;
``/proc`` mounted with ``hidepid``).

>>> from ashmem import _ls
>>> rows = _ls.list_regions()
>>> all(row.mappers >= 0 for row in rows)
True
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import os
import stat
import sys
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass
from typing import TextIO

from . import _pins, _sys, region

__all__ = ["RegionInfo", "format_size", "format_table", "list_regions", "main"]

_PROC = "/proc"
_OPEN_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY

# (st_dev, st_ino): what identifies a region across processes.
_Key = tuple[int, int]


@dataclass(frozen=True)
class RegionInfo:
    """One memfd region as one process holds it: by fd, or (``fd`` None) only as mappings.

    A region held by several fds, or by several processes, has one ``RegionInfo`` per fd and
    per process; ``device`` and ``inode`` tell which rows are the same region. ``None`` means
    "not visible to this user" (see the module docstring). Sizes are in bytes.

    >>> import os
    >>> from ashmem import _ls, region
    >>> fd = region.create_region("doc-ls", 4096)
    >>> [row] = [r for r in _ls.list_regions() if r.pid == os.getpid() and r.fd == fd]
    >>> row.name, row.size, row.read_only, row.ashmem, row.mappers
    ('doc-ls', 4096, False, True, 0)
    >>> os.close(fd)
    """

    #: Process id of the holder.
    pid: int
    #: Its name (``/proc/PID/comm``, at most 15 bytes).
    process: str
    #: Its full command line (``/proc/PID/cmdline``, arguments joined by spaces); the name in
    #: brackets when it has none.
    command: str
    #: The descriptor number in that process; None if it holds the region only as mappings.
    fd: int | None
    #: The region's debug name, without the ``memfd:`` prefix.
    name: str
    #: ``"major:minor"`` of the region's device (the kernel's internal shmem or hugetlbfs).
    device: str
    #: The region's inode number; with ``device`` it identifies the region.
    inode: int
    #: Size of the region; None if unknown.
    size: int | None
    #: Bytes of memory the region holds (allocated pages, resident or swapped out); None if
    #: unknown.
    resident_bytes: int | None
    #: Bytes of the region that this process maps (0 if it only holds the fd).
    mapped_bytes: int
    #: Number of distinct processes that map the region (as far as this user can see).
    mappers: int
    #: True if the region is write-protected for good (``F_SEAL_WRITE`` or
    #: ``F_SEAL_FUTURE_WRITE``); None if unknown.
    read_only: bool | None
    #: True if the region's size is sealed, i.e. it is an ashmem region proper; False for any
    #: other memfd; None if unknown.
    ashmem: bool | None
    #: Bytes (page-rounded) that some process pins (``ashmem.region.pin_region``; a new region
    #: is pinned by its creator); None if unknown.
    pinned_bytes: int | None = None
    #: Bytes that no process pins: purgeable once the process that unpinned them purges.
    unpinned_bytes: int | None = None
    #: Bytes purged while unpinned and not pinned again since (they read as zeros).
    purged_bytes: int | None = None

    def to_json(self) -> dict[str, object]:
        """This row as a JSON-ready dict: the field names above as keys, in that order."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class _Probe:
    """What an open descriptor of a region tells about the region itself."""

    key: _Key
    name: str
    size: int
    resident_bytes: int
    read_only: bool | None
    ashmem: bool | None
    pinned_bytes: int | None = None
    purged_bytes: int | None = None


@dataclass(frozen=True)
class _MapLine:
    """One ``/proc/PID/maps`` line that maps a memfd."""

    start: int
    end: int
    key: _Key
    name: str


@dataclass
class _Process:
    pid: int
    name: str
    command: str
    held: list[tuple[int, _Probe]]  # (fd, what that fd showed)
    mapped: list[_MapLine]


def _decode(raw: bytes) -> str:
    # Same decoding as os.readlink, so a name reads the same from a link and from maps.
    return os.fsdecode(raw)


def _pids() -> list[int]:
    return sorted(int(entry) for entry in os.listdir(_PROC) if entry.isdigit())


def _read_comm(pid: int) -> str | None:
    """The process name, or None if the process is gone."""
    try:
        with open(f"{_PROC}/{pid}/comm", "rb") as file:
            raw = file.read()
    except OSError:
        return None
    return _decode(raw.removesuffix(b"\n"))


def _read_command(pid: int, name: str) -> str:
    """The command line of ``pid``, arguments joined by spaces; ``[name]`` if it has none
    (kernel threads, zombies) or cannot be read."""
    try:
        with open(f"{_PROC}/{pid}/cmdline", "rb") as file:
            raw = file.read()
    except OSError:
        raw = b""
    args = [_decode(arg) for arg in raw.split(b"\0") if arg]
    return " ".join(args) if args else f"[{name}]"


def _memfd_fds(pid: int) -> list[int]:
    """Fd numbers of ``pid`` whose link names a memfd; [] if the fd table is not readable."""
    try:
        entries = os.listdir(f"{_PROC}/{pid}/fd")
    except OSError:
        return []
    fds = []
    for entry in entries:
        try:
            link = os.readlink(f"{_PROC}/{pid}/fd/{entry}")
        except OSError:
            continue  # closed since the listing, or the process is gone
        if link.startswith(_sys.MEMFD_LINK_PREFIX):
            fds.append(int(entry))
    return sorted(fds)


def _read_maps(pid: int) -> list[_MapLine]:
    """The memfd lines of ``/proc/PID/maps``; [] if it is not readable."""
    try:
        with open(f"{_PROC}/{pid}/maps", "rb") as file:
            data = file.read()
    except OSError:
        return []
    lines = []
    # "start-end perms offset major:minor inode   path". The kernel escapes "\n" in the path
    # as "\012", so splitting on b"\n" is safe; the path keeps any inner or trailing blanks.
    for line in data.split(b"\n"):
        fields = line.split(None, 5)
        if len(fields) < 6 or not fields[5].startswith(b"/memfd:"):
            continue
        name = _sys.memfd_name(_decode(fields[5].replace(b"\\012", b"\n")))
        if name is None:
            continue
        start, _, end = fields[0].partition(b"-")
        major, _, minor = fields[3].partition(b":")
        key = (os.makedev(int(major, 16), int(minor, 16)), int(fields[4]))
        lines.append(_MapLine(int(start, 16), int(end, 16), key, name))
    return lines


def _probe(path: str) -> _Probe | None:
    """Describe the memfd that the /proc magic link ``path`` points to.

    None if it is gone, not readable, or not a memfd. ``O_PATH`` resolves the link without
    opening the file (no side effect, even if the fd number now names a FIFO or a device);
    everything else is read from that descriptor, which nobody else can swap under us.
    """
    try:
        path_fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return _probe_fd(path_fd)
    finally:
        os.close(path_fd)


def _probe_fd(path_fd: int) -> _Probe | None:
    try:
        st = os.fstat(path_fd)
        link = os.readlink(f"/proc/self/fd/{path_fd}")
    except OSError:
        return None
    name = _sys.memfd_name(link)
    if name is None or not stat.S_ISREG(st.st_mode):
        return None
    read_only: bool | None = None
    ashmem: bool | None = None
    pinned: int | None = None
    purged: int | None = None
    try:
        # Seals can only be read through a real open; reopen our own O_PATH descriptor,
        # read-only (always allowed on a memfd, even a write-sealed one).
        fd = os.open(f"/proc/self/fd/{path_fd}", _OPEN_FLAGS)
    except OSError:
        pass
    else:
        try:
            ashmem = region.valid(fd)
            read_only = not region.get_prot_region(fd) & region.PROT_WRITE
        except (OSError, ValueError):
            read_only = None  # no seals to read (not a shmem or hugetlbfs file after all)
        try:
            # Our fresh description holds no locks, so it sees every process's pins.
            pinned = _pins.pinned_bytes(fd, st.st_size)
            purged = _pins.purged_bytes(fd, st.st_size)
        except OSError:
            pinned = purged = None
        finally:
            os.close(fd)
    return _Probe(
        key=(st.st_dev, st.st_ino),
        name=name,
        size=st.st_size,
        # st_blocks counts the 512-byte units of pages allocated to the inode in shmem,
        # whether in RAM or swapped out; holes (never-touched pages) do not count.
        resident_bytes=st.st_blocks * 512,
        read_only=read_only,
        ashmem=ashmem,
        pinned_bytes=pinned,
        purged_bytes=purged,
    )


def _scan_process(pid: int) -> _Process | None:
    name = _read_comm(pid)
    if name is None:
        return None
    held = []
    for fd in _memfd_fds(pid):
        probe = _probe(f"{_PROC}/{pid}/fd/{fd}")
        if probe is not None:
            held.append((fd, probe))
    maps = _read_maps(pid)
    command = _read_command(pid, name) if held or maps else name
    return _Process(pid, name, command, held, maps)


def _scan() -> Iterator[_Process]:
    for pid in _pids():
        process = _scan_process(pid)
        if process is not None and (process.held or process.mapped):
            yield process


def _probe_mapping(pid: int, lines: Iterable[_MapLine]) -> _Probe | None:
    """Open a region that ``pid`` only maps via ``map_files`` (needs CAP_SYS_ADMIN or
    CAP_CHECKPOINT_RESTORE); None if not allowed or every mapping is gone."""
    for line in lines:
        probe = _probe(f"{_PROC}/{pid}/map_files/{line.start:x}-{line.end:x}")
        # The range may have been unmapped and reused for another file since maps was read.
        if probe is not None and probe.key == line.key:
            return probe
    return None


def list_regions() -> list[RegionInfo]:
    """Every memfd region this user can see, one row per (process, fd) that holds it and one
    per process that only maps it; sorted by pid, then fd (mapping-only rows last).

    Never fails because a process exits or denies access during the scan: what cannot be
    read is left out or reported as None. Raises ``OSError`` only if ``/proc`` itself cannot
    be listed.

    >>> import os
    >>> from ashmem import _ls, region
    >>> fd = region.create_region("listed", 8192)
    >>> [(r.name, r.size) for r in _ls.list_regions() if r.pid == os.getpid() and r.fd == fd]
    [('listed', 8192)]
    >>> os.close(fd)
    """
    processes = list(_scan())

    probes: dict[_Key, _Probe] = {}
    mappers: dict[_Key, set[int]] = {}
    for process in processes:
        for _, probe in process.held:
            probes.setdefault(probe.key, probe)
        for line in process.mapped:
            mappers.setdefault(line.key, set()).add(process.pid)

    rows: list[RegionInfo] = []
    for process in processes:
        mapped_bytes: dict[_Key, int] = {}
        lines_by_key: dict[_Key, list[_MapLine]] = {}
        for line in process.mapped:
            mapped_bytes[line.key] = mapped_bytes.get(line.key, 0) + line.end - line.start
            lines_by_key.setdefault(line.key, []).append(line)

        for fd, probe in process.held:
            rows.append(_row(process, fd, probe.key, probe, probe.name, mapped_bytes, mappers))

        held_keys = {probe.key for _, probe in process.held}
        for key, lines in lines_by_key.items():
            if key in held_keys:
                continue
            if key not in probes:
                found = _probe_mapping(process.pid, lines)
                if found is not None:
                    probes[key] = found
            known = probes.get(key)
            name = known.name if known is not None else lines[0].name
            rows.append(_row(process, None, key, known, name, mapped_bytes, mappers))

    rows.sort(key=lambda row: (row.pid, row.fd is None, row.fd or 0, row.name, row.inode))
    return rows


def _row(
    process: _Process,
    fd: int | None,
    key: _Key,
    probe: _Probe | None,
    name: str,
    mapped_bytes: dict[_Key, int],
    mappers: dict[_Key, set[int]],
) -> RegionInfo:
    dev, inode = key
    pinned = probe.pinned_bytes if probe is not None else None
    unpinned = None
    if pinned is not None and probe is not None:
        unpinned = -(-probe.size // _pins.PAGE) * _pins.PAGE - pinned
    return RegionInfo(
        pid=process.pid,
        process=process.name,
        command=process.command,
        fd=fd,
        name=name,
        device=f"{os.major(dev)}:{os.minor(dev)}",
        inode=inode,
        size=probe.size if probe is not None else None,
        resident_bytes=probe.resident_bytes if probe is not None else None,
        mapped_bytes=mapped_bytes.get(key, 0),
        mappers=len(mappers.get(key, ())),
        read_only=probe.read_only if probe is not None else None,
        ashmem=probe.ashmem if probe is not None else None,
        pinned_bytes=pinned,
        unpinned_bytes=unpinned,
        purged_bytes=probe.purged_bytes if probe is not None else None,
    )


def format_size(size: int | None) -> str:
    """A byte count for people: ``512 B``, ``4.0 KiB``, ``1.5 GiB``; ``-`` for None.

    >>> format_size(4096), format_size(1536 * 1024), format_size(100), format_size(None)
    ('4.0 KiB', '1.5 MiB', '100 B', '-')
    """
    return "-" if size is None else region.format_bytes(size)


def _printable(text: str) -> str:
    """``text`` safe for one table cell: control characters and undecodable bytes escaped."""
    out = []
    for char in text:
        if char.isprintable():
            out.append(char)
        elif 0xDC80 <= ord(char) <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape)
            out.append(f"\\x{ord(char) - 0xDC00:02x}")
        else:
            out.append(char.encode("unicode_escape").decode("ascii"))
    return "".join(out)


def _flag(value: bool | None, true: str, false: str) -> str:
    return "-" if value is None else true if value else false


_HEADER = (
    "PID", "PROCESS", "FD", "SIZE", "RESIDENT", "MAPPED", "MAPPERS", "PROT", "ASHMEM",
    "PINNED", "UNPINNED", "PURGED",
)  # fmt: skip
_RIGHT = {"PID", "FD", "SIZE", "RESIDENT", "MAPPED", "MAPPERS", "PINNED", "UNPINNED", "PURGED"}


#: ``PROCESS`` shows this many characters of a command line unless ``--wide``.
COMMAND_WIDTH = 40


def _command_cell(command: str, wide: bool) -> str:
    text = _printable(command)
    if wide or len(text) <= COMMAND_WIDTH:
        return text
    return text[: COMMAND_WIDTH - 3] + "..."


def format_table(rows: Iterable[RegionInfo], *, wide: bool = False) -> str:
    """The rows as an aligned text table, one line per row plus a header, names last (they
    may be long). Unknown values are ``-``; ``PROT`` is ``ro`` (write-protected) or ``rw``.
    ``PROCESS`` is the command line, cut to ``COMMAND_WIDTH`` characters unless ``wide``.

    >>> print(format_table([]))
    PID  PROCESS  FD  SIZE  RESIDENT  MAPPED  MAPPERS  PROT  ASHMEM  PINNED  UNPINNED  PURGED  NAME
    """
    cells = [list(_HEADER)]
    names = ["NAME"]
    for row in rows:
        cells.append(
            [
                str(row.pid),
                _command_cell(row.command, wide),
                "-" if row.fd is None else str(row.fd),
                format_size(row.size),
                format_size(row.resident_bytes),
                format_size(row.mapped_bytes),
                str(row.mappers),
                _flag(row.read_only, "ro", "rw"),
                _flag(row.ashmem, "yes", "no"),
                format_size(row.pinned_bytes),
                format_size(row.unpinned_bytes),
                format_size(row.purged_bytes),
            ]
        )
        names.append(_printable(row.name))
    widths = [max(len(line[i]) for line in cells) for i in range(len(_HEADER))]
    lines = []
    for line, name in zip(cells, names, strict=True):
        padded = [
            cell.rjust(width) if title in _RIGHT else cell.ljust(width)
            for cell, width, title in zip(line, widths, _HEADER, strict=True)
        ]
        lines.append("  ".join([*padded, name]))
    return "\n".join(lines)


_UNKNOWN_NOTE = (
    "-: unknown. A region held only as mappings (its fd closed) can be opened only through "
    "/proc/PID/map_files, which needs root (CAP_SYS_ADMIN or CAP_CHECKPOINT_RESTORE)."
)


def _write(out: TextIO, text: str) -> None:
    out.write(text)
    out.write("\n")
    out.flush()


def select(
    rows: Iterable[RegionInfo], pids: Collection[int] = (), names: Collection[str] = ()
) -> list[RegionInfo]:
    """The rows held by one of ``pids`` whose region name matches one of the shell patterns
    ``names`` (``fnmatch``, case-sensitive); an empty collection matches everything.

    >>> rows = [r for r in list_regions() if r.pid == -1]
    >>> select(rows, pids=[1], names=["frames*"])
    []
    """
    return [
        row
        for row in rows
        if (not pids or row.pid in pids)
        and (not names or any(fnmatch.fnmatchcase(row.name, pattern) for pattern in names))
    ]


def main(
    json_output: bool,
    pids: Collection[int] = (),
    names: Collection[str] = (),
    wide: bool = False,
) -> int:
    """``ashmem ls [--json] [--pid PID] [--name GLOB] [--wide]``: print :func:`list_regions`
    (filtered by :func:`select`) as a table, or as a JSON list of
    :meth:`RegionInfo.to_json` objects. Returns the exit status."""
    try:
        rows = select(list_regions(), pids, names)
    except OSError as exc:
        print(f"ashmem ls: cannot list processes in {_PROC}: {exc}", file=sys.stderr)
        return 1
    try:
        if json_output:
            _write(sys.stdout, json.dumps([row.to_json() for row in rows], indent=2))
        else:
            _write(sys.stdout, format_table(rows, wide=wide))
            if any(row.size is None or row.read_only is None for row in rows):
                print(_UNKNOWN_NOTE, file=sys.stderr)
    except BrokenPipeError:
        # `ashmem ls | head`: the reader left. Point stdout at /dev/null so the interpreter's
        # final flush does not raise again, and exit quietly.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 1
    return 0
