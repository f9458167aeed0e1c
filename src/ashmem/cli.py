"""``ashmem …`` console commands: ``ls`` (regions visible across processes) and ``demo``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="ashmem", description="Anonymous shared memory for Python on Linux."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    ls = commands.add_parser("ls", help="list the regions this user can see, across processes")
    ls.add_argument("--json", action="store_true", help="print JSON instead of a table")

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

        return _ls.main(json_output=args.json)
    from . import _demo

    return _demo.main()


if __name__ == "__main__":
    sys.exit(main())
