"""Helpers shared by the benchmark scripts in this folder.

Each ``bench_*.py`` script measures ashmem and its peers in the same run, prints a table and
rewrites its own section of the README, between ``<!-- bench:KEY:start -->`` and
``<!-- bench:KEY:end -->``. This module holds the parts they share; its whole API is:

``parse_args(description)``
    The common command line: ``--quick`` (smoke run: fewer sizes, rounds, iterations) and
    ``--no-readme`` (print only). Returns the ``argparse.Namespace``.
``median(values)``
    The median of a non-empty sequence of numbers.
``format_ns(ns)``, ``format_bytes(n)``, ``format_ratio(x)``
    ``"12.3 µs"``, ``"64 MiB"``, ``"1.23x"``: the units every table uses.
``verdict(ok)``
    ``"met"`` or ``"MISSED"``: how a table marks a target.
``machine_description()``
    One line naming CPU model, cores, RAM, kernel, Python version and date.
``publish(key, title, headers, rows, notes=(), *, readme=True)``
    Print ``rows`` as an aligned table under ``title``, then (if ``readme``) write them as a
    markdown table, the machine line and ``notes`` into the README section ``key``.
``busy_machine(processes=None)``
    Context manager: one CPU-bound process per core (or ``processes``) runs beside the block,
    started before it and killed and reaped after it, for the "busy machine" variants. Each
    is pinned to its own CPU of ``ALL_CPUS``, whatever the caller's placement.
``pin(cpu)``
    ``os.sched_setaffinity(0, {cpu})``: place the calling process on one CPU (placement of
    ping-pong peers: same core or different cores).
``write_readme_section(key, body)``
    The README rewrite on its own: replace what is between the section's markers with
    ``body``. Touches nothing outside the markers; raises ``LookupError`` if they are missing.

A script uses it as::

    from _common import format_ns, median, parse_args, publish, verdict

    args = parse_args("binder: transaction round trip")
    ...
    publish("binder", "Binder round trip", ["peer", "median"], rows, notes=["..."],
            readme=not args.no_readme)

Scripts run as ``python benchmarks/bench_X.py``, so this folder is on ``sys.path`` and
``import _common`` works without installing anything. ``run_all.py`` (``make bench``) runs
every ``bench_*.py`` here in turn, passing its arguments on; a script exits 0 when it merely
misses a target (its table says MISSED) and non-zero only when it could not measure.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import fcntl
import os
import platform
import shutil
import statistics
import subprocess
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

__all__ = [
    "README",
    "busy_machine",
    "format_bytes",
    "format_ns",
    "format_ratio",
    "machine_description",
    "median",
    "parse_args",
    "pin",
    "publish",
    "verdict",
    "write_readme_section",
]

#: The README whose sections the benchmarks rewrite.
README = Path(__file__).resolve().parent.parent / "README.md"


def parse_args(description: str) -> argparse.Namespace:
    """Parse the command line every benchmark script accepts: ``--quick``, ``--no-readme``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: fewer sizes, rounds and iterations (numbers are rough)",
    )
    parser.add_argument(
        "--no-readme", action="store_true", help="print the table only; leave README.md alone"
    )
    return parser.parse_args()


#: What each busy process runs: a tight loop that never sleeps, at normal priority.
_SPIN = "while True:\n    pass\n"
#: The CPUs this process could use when it imported this module, before any benchmark pinned
#: itself (``busy_machine`` spreads its spinners over them).
ALL_CPUS = sorted(os.sched_getaffinity(0))


@contextlib.contextmanager
def busy_machine(processes: int | None = None) -> Iterator[int]:
    """Run one CPU-bound process per core (``os.cpu_count()`` unless ``processes``) beside
    the block; yields how many. They are killed and reaped when the block ends, also on an
    exception, so a benchmark never leaves a spinner behind."""
    count = processes if processes is not None else (os.cpu_count() or 1)
    spinners: list[subprocess.Popen[bytes]] = []
    try:
        for i in range(count):
            spinner = subprocess.Popen([sys.executable, "-c", _SPIN])
            spinners.append(spinner)
            # Spinner i on CPU i: a child inherits its parent's placement, and the caller
            # may have pinned itself to one CPU by now, which would put every spinner there.
            os.sched_setaffinity(spinner.pid, {ALL_CPUS[i % len(ALL_CPUS)]})
        yield count
    finally:
        for proc in spinners:
            proc.kill()
        for proc in spinners:
            proc.wait(timeout=30)


def pin(cpu: int) -> None:
    """Place the calling process on CPU ``cpu`` only (``os.sched_setaffinity``)."""
    os.sched_setaffinity(0, {cpu})


def median(values: Iterable[float]) -> float:
    """The median of ``values`` (must not be empty)."""
    return float(statistics.median(values))


def format_ns(ns: float) -> str:
    """A duration in nanoseconds, in the unit that keeps 3 significant digits."""
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("µs", 1e3)):
        if ns >= scale:
            return f"{ns / scale:.3g} {unit}"
    return f"{ns:.3g} ns"


def format_bytes(n: int) -> str:
    """A size in bytes with a binary unit: ``4 KiB``, ``64 MiB``, ``1 GiB``."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:g} {unit}"
    return f"{n} B"


def format_ratio(x: float) -> str:
    """A ratio such as ``1.23x``; large ones without decimals (``4,512x``)."""
    if x >= 100:
        return f"{x:,.0f}x"
    return f"{x:.3g}x"


def verdict(ok: bool) -> str:
    """How tables mark a target: ``met`` or ``MISSED``."""
    return "met" if ok else "MISSED"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _ram_bytes() -> int:
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def machine_description() -> str:
    """CPU model, cores, RAM, kernel, Python version and today's date (UTC), on one line."""
    cores = os.cpu_count() or 0
    usable = len(os.sched_getaffinity(0))
    core_text = f"{cores} cores" if usable == cores else f"{usable} of {cores} cores"
    ram = _ram_bytes()
    ram_text = f"{ram / (1 << 30):.1f} GiB RAM" if ram else "unknown RAM"
    today = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    return (
        f"{_cpu_model()}, {core_text}, {ram_text}, Linux {platform.release()}, "
        f"{platform.python_implementation()} {platform.python_version()}, {today}"
    )


def _text_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows, strict=False)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(line.rstrip() for line in lines)


def _markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(headers), line(["---"] * len(headers)), *map(line, rows)])


def write_readme_section(key: str, body: str, readme: Path = README) -> None:
    """Replace the text between ``<!-- bench:KEY:start -->`` and ``<!-- bench:KEY:end -->``
    in ``readme`` with ``body``; nothing outside the markers changes.

    Holds an exclusive ``flock`` on the file while it reads and rewrites it, so scripts run
    at the same time cannot lose each other's sections. Raises ``LookupError`` (file
    untouched) if either marker is missing or they are out of order.
    """
    start, end = f"<!-- bench:{key}:start -->", f"<!-- bench:{key}:end -->"
    with open(readme, "r+", encoding="utf-8") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        text = f.read()
        i, j = text.find(start), text.find(end)
        if i < 0 or j < i:
            raise LookupError(f"{readme} has no {start} ... {end} section")
        new = text[: i + len(start)] + "\n" + body.strip("\n") + "\n" + text[j:]
        if new != text:
            f.seek(0)
            f.write(new)
            f.truncate()


def task_times(pid: int, tid: int | None = None) -> tuple[int, int, int, int]:
    """utime, stime (ticks), voluntary and involuntary switches of a thread or process."""
    tids = [str(tid)] if tid is not None else os.listdir(f"/proc/{pid}/task")
    user = system = vol = invol = 0
    for t in tids:
        with open(f"/proc/{pid}/task/{t}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        user += int(fields[11])
        system += int(fields[12])
        with open(f"/proc/{pid}/task/{t}/status") as f:
            for line in f:
                if line.startswith("voluntary_ctxt_switches"):
                    vol += int(line.split()[1])
                elif line.startswith("nonvoluntary_ctxt_switches"):
                    invol += int(line.split()[1])
    return user, system, vol, invol


def take_flag(flag: str) -> bool:
    """Whether ``flag`` is on the command line, removed from ``sys.argv`` (a script's own
    flag, before ``parse_args`` sees the common ones)."""
    if flag not in sys.argv:
        return False
    sys.argv.remove(flag)
    return True


#: ``personality(2)``'s ADDR_NO_RANDOMIZE, as ``setarch -R`` sets it.
ADDR_NO_RANDOMIZE = 0x0040000


def fixed_layout() -> bool:
    """True if this process runs without address-space layout randomization (a process
    tree started with ``setarch <machine> -R``)."""
    try:
        with open("/proc/self/personality") as f:
            return bool(int(f.read(), 16) & ADDR_NO_RANDOMIZE)
    except (OSError, ValueError):
        return False


def fixed_layout_command(argv: list[str]) -> list[str]:
    """``argv`` run without address-space layout randomization, it and every process it
    starts (``setarch <machine> -R``); ``SystemExit`` if ``setarch`` is missing."""
    if shutil.which("setarch") is None:
        raise SystemExit("running without layout randomization needs setarch (util-linux)")
    return ["setarch", platform.machine(), "-R", *argv]


def publish(
    key: str,
    title: str,
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    notes: Iterable[str] = (),
    *,
    readme: bool = True,
) -> None:
    """Print the table, then write it with the machine line and notes into README section
    ``key`` (unless ``readme`` is False). Each note becomes a paragraph under the table."""
    machine = machine_description()
    notes = list(notes)
    if fixed_layout():
        notes.append(
            "Run with address-space layout randomization off (`setarch -R`, or "
            "`bench_binder.py --fixed-layout`): every process of this run had the same "
            "layout, so its comparisons are not split between the two speeds that "
            "`profile_layout.py` finds with randomized layouts (on this VM the fixed layout "
            "ran at the usual speed)."
        )
    print(f"\n{title}\n")
    print(_text_table(headers, rows))
    print(f"\nMachine: {machine}")
    for note in notes:
        print(f"Note: {note}")
    if not readme:
        return
    body = [f"### {title}", "", _markdown_table(headers, rows), "", f"Machine: {machine}."]
    for note in notes:
        body += ["", note]
    try:
        write_readme_section(key, "\n".join(body))
    except LookupError as exc:
        print(f"README not updated: {exc}")
    else:
        print(f"README section {key!r} updated.")
