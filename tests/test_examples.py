"""The examples in examples/ run, at small sizes, and print what they promise."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.parametrize(
    "script, args, expected",
    [
        ("pool_normalize.py", ["200000"], "200000 values: mean +0.000, std 1.000"),
        ("frames_pipeline.py", ["12"], "12 frames, mean brightness 127."),
    ],
)
def test_example_runs(script: str, args: list[str], expected: str) -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 0, done.stderr
    assert expected in done.stdout
