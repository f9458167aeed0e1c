"""``ashmem …`` console commands: ``ls`` (regions visible across processes) and ``demo``.

``python -m ashmem …`` runs the same commands.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="ashmem", description="Anonymous shared memory for Python on Linux."
    )
    parser.add_argument("--version", action="version", version=f"ashmem {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    ls = commands.add_parser("ls", help="list the regions this user can see, across processes")
    ls.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ls.add_argument(
        "--pid", type=int, action="append", default=[], metavar="PID",
        help="only regions held or mapped by this process (repeatable)",
    )  # fmt: skip
    ls.add_argument(
        "--name", action="append", default=[], metavar="GLOB",
        help="only regions whose name matches this shell pattern, e.g. 'frames*' (repeatable)",
    )  # fmt: skip
    ls.add_argument(
        "-w", "--wide", action="store_true",
        help="show whole command lines in the PROCESS column (default: cut to 40 characters)",
    )  # fmt: skip

    demo = commands.add_parser(
        "demo", help="share a region between two processes and print what each wrote"
    )
    demo.add_argument("what", nargs="?", choices=["logs"], help="logs: the log collector demo")

    from .logd import cli as logd_cli

    logd_cli.add_commands(commands)
    args = parser.parse_args(argv)
    if args.command in ("log", "logd") or getattr(args, "what", None) == "logs":
        return logd_cli.run(args)
    if args.command == "ls":
        from . import _ls

        return _ls.main(json_output=args.json, pids=args.pid, names=args.name, wide=args.wide)
    from . import _demo

    return _demo.main()


if __name__ == "__main__":
    sys.exit(main())
