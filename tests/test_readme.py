"""Every code block in README.md runs as printed, so the front door cannot drift.

The kinds of block, by their fence's info string:

- ``pycon``: an interactive session, run with doctest (output and tracebacks compared).
- ``python`` whose first line is ``# file: NAME``: written to NAME in a scratch directory,
  for the ``console`` blocks after it to run.
- ``python`` otherwise: run as a script in the scratch directory; it must exit 0.
- ``console``: ``$ command`` lines run with bash in the scratch directory (the virtualenv's
  ``bin`` first on PATH, so ``python`` and ``ashmem`` are this checkout's). The lines after a
  command are its expected output, compared after folding digits and runs of spaces (pids,
  fd numbers and column widths differ from run to run). A command ending in ``&`` runs in
  the background for the rest of the block; its expected lines, if any, are read from its
  output before the next command starts.
- ``sh``: commands for the reader's own shell (make, pip, source). Not run here (``make
  test`` would run itself); every ``make`` target they name must exist in the Makefile.
- ``text``: drawings (the error tree), not code. Their names are checked against the code.
- ``diff``: a change to the reader's own code (the compat drop-in): both sides run as Python.
"""

from __future__ import annotations

import doctest
import os
import re
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
TIMEOUT = 60.0
FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.S | re.M)


@dataclass
class Block:
    kind: str
    text: str
    line: int

    @property
    def file_name(self) -> str | None:
        first = self.text.splitlines()[0] if self.text else ""
        match = re.fullmatch(r"# file: (\S+).*", first)
        return match.group(1) if match else None


def blocks() -> list[Block]:
    text = README.read_text()
    return [
        Block(m.group(1), m.group(2), text.count("\n", 0, m.start()) + 1)
        for m in FENCE.finditer(text)
    ]


def test_every_block_has_a_known_kind() -> None:
    kinds = {block.kind for block in blocks()}
    assert kinds <= {"pycon", "python", "console", "sh", "text", "diff"}, kinds


def env() -> dict[str, str]:
    environment = dict(os.environ)
    environment["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{environment['PATH']}"
    environment["PYTHONUNBUFFERED"] = "1"
    return environment


def fold(line: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"\d+(\.\d+)?", "0", line)).strip()


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The directory every block runs in, with every ``# file:`` block written into it."""
    where = tmp_path_factory.mktemp("readme")
    for block in blocks():
        if block.kind == "python" and block.file_name:
            (where / block.file_name).write_text(block.text)
    return where


def _id(block: Block) -> str:
    return f"line{block.line}"


@pytest.mark.parametrize("block", [b for b in blocks() if b.kind == "pycon"], ids=_id)
def test_pycon_block(block: Block, scratch: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(scratch)
    parser = doctest.DocTestParser()
    test = parser.get_doctest(block.text, {}, f"README.md:{block.line}", str(README), block.line)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"README.md line {block.line}: see the doctest report above"


@pytest.mark.parametrize(
    "block", [b for b in blocks() if b.kind == "python" and not b.file_name], ids=_id
)
def test_python_block(block: Block, scratch: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", block.text], cwd=scratch, env=env(),
        capture_output=True, text=True, timeout=TIMEOUT, check=False,
    )  # fmt: skip
    assert result.returncode == 0, f"README.md line {block.line}:\n{result.stderr}"


@pytest.mark.parametrize("block", [b for b in blocks() if b.kind == "diff"], ids=_id)
def test_diff_block_both_sides_run(block: Block, scratch: Path) -> None:
    for sign in "-+":
        side = "\n".join(x[1:] for x in block.text.splitlines() if x.startswith(sign))
        result = subprocess.run(
            [sys.executable, "-c", side], cwd=scratch, env=env(),
            capture_output=True, text=True, timeout=TIMEOUT, check=False,
        )  # fmt: skip
        assert result.returncode == 0, f"README.md line {block.line} ({sign}):\n{result.stderr}"


def _read_lines(proc: subprocess.Popen[str], count: int, deadline: float) -> list[str]:
    assert proc.stdout is not None
    lines: list[str] = []
    while len(lines) < count:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([proc.stdout], [], [], left)[0]:
            pytest.fail(f"no output from background command after {TIMEOUT} s: {lines}")
        line = proc.stdout.readline()
        if not line:
            pytest.fail(f"background command exited early; printed {lines}")
        lines.append(line.rstrip("\n"))
    return lines


def _steps(text: str) -> list[tuple[str, list[str]]]:
    steps: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        if line.startswith("$ "):
            steps.append((line[2:], []))
        else:
            assert steps, f"output before any command: {line!r}"
            steps[-1][1].append(line)
    return steps


@pytest.mark.parametrize("block", [b for b in blocks() if b.kind == "console"], ids=_id)
def test_console_block(block: Block, scratch: Path) -> None:
    background: list[subprocess.Popen[str]] = []
    try:
        for command, expected in _steps(block.text):
            deadline = time.monotonic() + TIMEOUT
            if command.rstrip().endswith("&"):
                proc = subprocess.Popen(
                    ["bash", "-c", f"exec {command.rstrip()[:-1]}"], cwd=scratch, env=env(),
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                    start_new_session=True,
                )  # fmt: skip
                background.append(proc)
                got = _read_lines(proc, len(expected), deadline)
            else:
                result = subprocess.run(
                    ["bash", "-c", command], cwd=scratch, env=env(),
                    capture_output=True, text=True, timeout=TIMEOUT, check=False,
                )  # fmt: skip
                assert result.returncode == 0, f"{command!r} failed:\n{result.stderr}"
                got = result.stdout.splitlines()
            assert [fold(x) for x in got] == [fold(x) for x in expected], (
                f"README.md line {block.line}: {command!r} printed\n" + "\n".join(got)
            )
    finally:
        for proc in background:
            with_suppressed = proc.poll() is None
            if with_suppressed:
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


def test_sh_blocks_name_real_make_targets() -> None:
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([\w-]+):", makefile, re.M))
    named = [
        target
        for block in blocks()
        if block.kind == "sh"
        for target in re.findall(r"^make (\S+)", block.text, re.M)
    ]
    assert named, "the quick start names make targets"
    assert set(named) <= targets, set(named) - targets


def test_error_tree_names_every_exported_exception() -> None:
    import ashmem
    import ashmem.binder

    trees = "\n".join(b.text for b in blocks() if b.kind == "text")
    for module in (ashmem, ashmem.binder):
        for name in module.__all__:
            value = getattr(module, name)
            if isinstance(value, type) and issubclass(value, BaseException):
                assert re.search(rf"\b{name}\b", trees), f"{name} is not in the README's tree"


def _anchors(markdown: str) -> set[str]:
    """The anchors GitHub makes for a file's headings: lower case, punctuation dropped,
    spaces as hyphens."""
    return {
        re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        for heading in re.findall(r"^#+ (.+)$", FENCE.sub("", markdown), re.M)
    }


def test_relative_links_reach_a_file_and_heading() -> None:
    """The README points into docs/ and benchmarks/: every such link names a file that
    exists, and a heading in it where it names one."""
    links = re.findall(r"\]\(([^)#:]+)(?:#([^)]+))?\)", FENCE.sub("", README.read_text()))
    assert any(path == "docs/performance.md" and anchor for path, anchor in links), (
        "the README links to headings of its measurement notes"
    )
    for path, anchor in links:
        target = ROOT / path
        assert target.is_file(), f"README links to {path}, which does not exist"
        if anchor:
            assert anchor in _anchors(target.read_text()), f"no heading #{anchor} in {path}"
