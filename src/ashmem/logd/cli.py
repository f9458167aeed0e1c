"""``ashmem log cat|tail|keygen`` and ``ashmem logd [status]``.

``add_commands(subparsers)`` adds both to the ``ashmem`` parser; ``run(args)`` runs the one
chosen. Exit codes: 0 fine, 1 damaged input (every intact record is still printed; each
damaged range is reported on stderr as ``FILE: bytes START-END damaged (reason)``), 2 a
usage problem such as a wrong or missing key (one line on stderr, no traceback).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import heapq
import json
import logging
import os
import re
import signal
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

__all__ = ["add_commands", "run"]


def add_commands(commands: Any) -> None:
    """Add ``log`` and ``logd`` to an argparse sub-parser collection."""
    log = commands.add_parser("log", help="read collected logs (cat, tail) or make keys")
    sub = log.add_subparsers(dest="log_command", required=True)
    for name, text in (
        ("cat", "print the records of log directories or segment files, ordered by time"),
        ("tail", "print the last records of a log directory, then follow it with -f"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("paths", nargs="+" if name == "cat" else 1, metavar="DIR_OR_FILE")
        if name == "tail":
            p.add_argument("-n", type=int, default=10, help="records to show first (10)")
            p.add_argument("-f", "--follow", action="store_true", help="keep printing")
        p.add_argument("--level", help="this level and above (name or number)")
        p.add_argument("--pid", type=int, action="append", help="only this pid (repeatable)")
        p.add_argument("--logger", help="this logger and its children")
        p.add_argument("--since", help="RFC 3339 time or an age like 10m, 2h, 1d")
        p.add_argument("--until", help="RFC 3339 time or an age like 10m, 2h, 1d")
        p.add_argument("--grep", help="Python regular expression searched in the message")
        p.add_argument("--key", help="private key (NAME.key) for encrypted logs")
        p.add_argument("--json", action="store_true", help="one JSON object per line")
    keygen = sub.add_parser("keygen", help="make NAME.key (private) and NAME.pub")
    keygen.add_argument("--out", required=True, metavar="NAME")

    logd = commands.add_parser("logd", help="run the log collector (foreground), or 'status'")
    logd.add_argument("action", nargs="?", choices=["run", "status"], default="run")
    logd.add_argument("--dir", help="log directory (required to run)")
    logd.add_argument("--socket", help="socket path (default $XDG_RUNTIME_DIR/ashmem/logd.sock)")
    logd.add_argument("--json", action="store_true", help="status as JSON")
    logd.add_argument("--ring-size", type=int, default=1 << 20)
    logd.add_argument("--on-full", choices=["block", "drop"], default="block")
    logd.add_argument("--block-timeout", type=float, default=5.0)
    logd.add_argument("--encrypt-to", metavar="NAME.pub")
    logd.add_argument("--max-segment-bytes", type=int, default=64 << 20)
    logd.add_argument("--rotate-daily", action="store_true")
    logd.add_argument("--retain-days", type=float)
    logd.add_argument("--retain-bytes", type=int)
    logd.add_argument("--fsync", choices=["always", "interval", "never"], default="interval")
    logd.add_argument("--interval", type=float, default=0.02, help=argparse.SUPPRESS)
    logd.add_argument("--allow-uid", type=int, action="append", default=[])
    logd.add_argument(
        "--forward", action="append", default=[], metavar="URL",
        help="also send every record to a syslog relay: relp://HOST:PORT, relp+tls://, "
        "tcp://, tcp+tls:// (repeatable; TLS options as ?ca=&cert=&key=)",
    )  # fmt: skip
    logd.add_argument(
        "--retain-ignores-forward", action="store_true",
        help="let retention delete segments not forwarded yet (the loss is counted)",
    )  # fmt: skip
    logd.add_argument("--parent-fd", type=int, help=argparse.SUPPRESS)


class _Usage(Exception):
    """A one-line error for exit code 2."""


def run(args: argparse.Namespace) -> int:
    """Run the command ``args`` names; return the exit code."""
    try:
        if args.command == "demo":
            from ._demo import main

            return main()
        if args.command == "logd":
            return _status(args) if args.action == "status" else _logd(args)
        if args.log_command == "keygen":
            from ._crypto import generate_keys

            for path in generate_keys(args.out):
                print(path)
            return 0
        code = _read(args)
        sys.stdout.flush()  # here, so that a closed pipe is caught below
        return code
    except _Usage as exc:
        print(f"ashmem: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader went away (``ashmem log cat DIR | head``): stop quietly, as cat does.
        # Python would report the failed flush of stdout at exit: point stdout elsewhere.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 128 + signal.SIGPIPE
    except (ImportError, OSError, ValueError) as exc:
        # KeyFileError is a ValueError; ImportError names the extra to install.
        print(f"ashmem: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


# -- ashmem logd -------------------------------------------------------------------------


def _logd(args: argparse.Namespace) -> int:
    from ._collector import CollectorServer, Settings, bind_listener, default_socket

    if not args.dir:
        raise _Usage("ashmem logd needs --dir DIR (where the segment files go)")
    directory = os.path.abspath(args.dir)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    settings = Settings(
        ring_size=args.ring_size,
        on_full=args.on_full,
        block_timeout=args.block_timeout,
        encrypt_to=args.encrypt_to,
        max_segment_bytes=args.max_segment_bytes,
        rotate_daily=args.rotate_daily,
        retain_days=args.retain_days,
        retain_bytes=args.retain_bytes,
        fsync=args.fsync,
        interval=args.interval,
        allow_uids=tuple(args.allow_uid),
        forward=tuple(args.forward),
        retain_ignores_forward=args.retain_ignores_forward,
    )
    path = args.socket or default_socket()
    listener = bind_listener(path)
    try:
        server = CollectorServer(directory, listener, settings, parent_fd=args.parent_fd)
        print("ready", flush=True)
        server.serve()
    finally:
        listener.close()
        with contextlib.suppress(OSError):
            os.unlink(path)
        if args.parent_fd is not None:
            # Started by start(): the socket's private directory is ours to remove too,
            # also when the parent was killed before it could.
            with contextlib.suppress(OSError):
                os.rmdir(os.path.dirname(path))
    return 0


def _status(args: argparse.Namespace) -> int:
    import socket

    from .. import fdpass
    from ._client import ENV
    from ._collector import default_socket

    path = args.socket or os.environ.get(ENV) or default_socket()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.settimeout(5.0)
    try:
        sock.connect(path)
        fdpass.recv(sock, maxfds=0, maxdata=4096)
        fdpass.send(sock, [], b'{"op": "status"}')
        data, _ = fdpass.recv(sock, maxfds=0, maxdata=16 << 20)
    except OSError as exc:
        raise _Usage(f"no log collector answers at {path}: {exc.strerror or exc}") from None
    finally:
        sock.close()
    status = json.loads(data)
    if args.json:
        print(json.dumps(status))
        return 0
    print(f"collector pid {status['pid']} writing {status['directory']}")
    print(
        f"records {status['records']}  records/s {status['records_per_s']}  "
        f"disk errors {status['disk_errors']}"
    )
    print(f"{'PID':>8} {'UID':>6} {'RING':>9} {'FILL':>6} {'RECORDS':>10} {'DROPPED':>8}")
    for c in status["clients"]:
        fill = 100.0 * c["ring_fill"] / c["ring_bytes"] if c["ring_bytes"] else 0.0
        print(
            f"{c['pid']:>8} {c['uid']:>6} {c['ring_bytes']:>9} {fill:>5.1f}% "
            f"{c['records']:>10} {c['dropped']:>8}"
        )
    for f in status.get("forward", []):
        state = "connected" if f["connected"] else "not connected"
        print(
            f"forward {f['destination']} ({state}): lag {f['lag_records']} records, "
            f"{f['lag_seconds']:.3f} s; confirmed {f['confirmed']}, resent {f['resent']}, "
            f"lost {f['lost']}"
        )
        if f["last_error"]:
            when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(f["last_error_at"]))
            print(f"  last error at {when}: {f['last_error']}")
    return 0


# -- ashmem log cat / tail ---------------------------------------------------------------


_AGE = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_time(text: str) -> int:
    """ns since the epoch for an RFC 3339 time or an age like ``10m`` (before now).

    >>> parse_time("1970-01-01T00:00:01Z")
    1000000000
    """
    match = _AGE.fullmatch(text.strip())
    if match:
        return time.time_ns() - int(float(match.group(1)) * _UNITS[match.group(2)] * 1e9)
    value = text.strip()
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    try:
        moment = datetime.datetime.fromisoformat(value)
    except ValueError:
        raise _Usage(f"cannot read time {text!r}: use RFC 3339 or an age like 10m") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    delta = moment - datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
    return (delta.days * 86400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000


@dataclass
class _Filter:
    level: int | None = None
    pids: frozenset[int] | None = None
    logger: str | None = None
    since: int | None = None
    until: int | None = None
    grep: re.Pattern[str] | None = None

    def __call__(self, entry: Any) -> bool:
        r = entry.record
        if self.level is not None and r.levelno < self.level:
            return False
        if self.pids is not None and entry.pid not in self.pids:
            return False
        if self.logger is not None and not (
            r.logger == self.logger or r.logger.startswith(self.logger + ".")
        ):
            return False
        if self.since is not None and r.time_ns < self.since:
            return False
        if self.until is not None and r.time_ns > self.until:
            return False
        return not (self.grep is not None and not self.grep.search(r.message))


def _level(text: str) -> int:
    if text.isdigit():
        return int(text)
    value = logging.getLevelName(text.upper())
    if not isinstance(value, int):
        raise _Usage(f"unknown level {text!r}: use DEBUG, INFO, WARNING, ERROR or CRITICAL")
    return value


def _make_filter(args: argparse.Namespace) -> _Filter:
    try:
        grep = re.compile(args.grep) if args.grep else None
    except re.error as exc:
        raise _Usage(f"bad --grep expression: {exc}") from None
    return _Filter(
        level=_level(args.level) if args.level else None,
        pids=frozenset(args.pid) if args.pid else None,
        logger=args.logger,
        since=parse_time(args.since) if args.since else None,
        until=parse_time(args.until) if args.until else None,
        grep=grep,
    )


def format_text(entry: Any) -> str:
    """The default one-line (plus traceback) rendering of a record."""
    d = entry.to_json()
    line = f"{d['time']} {d['level']:<8} {d['logger']} [{d['pid']}:{d['tid']}] {d['message']}"
    if d["extra"]:
        line += " " + json.dumps(d["extra"], sort_keys=True)
    if d["exc"]:
        line += "\n" + "\n".join("    " + x for x in d["exc"].splitlines())
    return line


def _render_json(entry: Any) -> str:
    return json.dumps(entry.to_json())


def _ordered(entries: Iterable[Any]) -> list[Any]:
    """By time across processes, by sequence within one ring."""
    rings: dict[tuple[int, int, int], list[Any]] = {}
    for e in entries:
        rings.setdefault((e.uid, e.pid, e.ring_id), []).append(e)
    for lst in rings.values():
        lst.sort(key=lambda e: e.record.seq)
    return list(heapq.merge(*rings.values(), key=lambda e: e.record.time_ns))


def _paths(args_paths: list[str]) -> Iterator[tuple[str, bool]]:
    from ._segment import segment_paths

    for path in args_paths:
        if os.path.isdir(path):
            for p in segment_paths(path):
                yield p, True
        elif os.path.exists(path):
            yield path, False
        else:
            raise _Usage(f"{path}: no such file or directory")


def _load_key(args: argparse.Namespace) -> Any:
    if not args.key:
        return None
    from ._crypto import load_private

    return load_private(args.key)


def _read(args: argparse.Namespace) -> int:
    from ._segment import Block, read_segment

    keep = _make_filter(args)
    key = _load_key(args)
    out = sys.stdout
    render = _render_json if args.json else format_text
    damaged = False
    entries: list[Any] = []
    ends: dict[str, int] = {}
    for path, _ in _paths(args.paths):
        for item in read_segment(path, key=key):
            if isinstance(item, Block):
                entries.extend(e for e in item.entries if keep(e))
                ends[path] = item.end
            else:
                damaged = True
                print(str(item), file=sys.stderr, flush=True)
    ordered = _ordered(entries)
    if args.log_command == "tail":
        ordered = ordered[-args.n :] if args.n > 0 else []
    for e in ordered:
        out.write(render(e) + "\n")
    out.flush()
    if args.log_command == "tail" and args.follow:
        _follow(args.paths[0], ends, keep, key, render)
    return 1 if damaged else 0


def _follow(directory: str, ends: dict[str, int], keep: _Filter, key: Any, render: Any) -> None:
    from ._segment import Block, read_segment, segment_paths

    out = sys.stdout
    while True:
        time.sleep(0.2)
        fresh: list[Any] = []
        paths = segment_paths(directory) if os.path.isdir(directory) else [directory]
        for path in paths:
            size = os.path.getsize(path)
            if ends.get(path, 0) >= size:
                continue
            for item in read_segment(path, ends.get(path, 0), key=key):
                if isinstance(item, Block):
                    fresh.extend(e for e in item.entries if keep(e))
                    ends[path] = item.end
                else:
                    print(str(item), file=sys.stderr, flush=True)
                    ends[path] = item.end
        for e in _ordered(fresh):
            out.write(render(e) + "\n")
            out.flush()
