"""Run every ``bench_*.py`` script in this folder, one after another (``make bench``).

New benchmarks are picked up by name: drop a ``bench_something.py`` here and it runs too.
Arguments (``--quick``, ``--no-readme``) are passed to every script. A script that misses a
target still exits 0 (it prints MISSED); a script that crashes or exits non-zero makes this
runner exit 1 after the others have run.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    scripts = sorted(HERE.glob("bench_*.py"))
    if not scripts:
        print(f"no bench_*.py scripts in {HERE}")
        return 1
    failed = []
    start = time.monotonic()
    for script in scripts:
        print(f"\n=== {script.name} ===", flush=True)
        t0 = time.monotonic()
        rc = subprocess.call([sys.executable, str(script), *sys.argv[1:]])
        print(f"=== {script.name}: exit {rc} after {time.monotonic() - t0:.0f} s ===", flush=True)
        if rc != 0:
            failed.append(script.name)
    print(f"\n{len(scripts)} benchmarks in {time.monotonic() - start:.0f} s", end="")
    print(f"; failed: {', '.join(failed)}" if failed else "; none failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
