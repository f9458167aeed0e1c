"""``start_service`` from every layout a spawn ``Process`` starts from: a script, a module
run with ``-m``, a package module with relative imports run with ``-m``, and an interactive
``__main__`` (``python -c``). Each runs as its own interpreter, as a user would run it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from .conftest import scaled

pytestmark = pytest.mark.timeout(90)

_SERVICE = """
import sys
from ashmem.binder import Binder, Parcel, start_service
{imports}

class Echo(Binder):
    def on_transact(self, code, data, reply, flags):
        reply.write_string({answer})
        return True


def main():
    with start_service(Echo, sys.argv[1], timeout=30) as service:
        with Parcel() as data, Parcel() as reply:
            data.write_string("hi")
            assert service.binder.transact(1, data, reply, timeout=30)
            print(reply.read_string(), service.pid != __import__("os").getpid())


if __name__ == "__main__":
    main()
"""


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)  # the layout alone must make the target importable
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=scaled(60),
        env=env,
    )


def _name(layout: str) -> str:
    return f"test.launch.{layout}.{os.getpid()}"


def test_a_target_in_a_script(tmp_path: Path) -> None:
    script = tmp_path / "echo_script.py"
    script.write_text(_SERVICE.format(imports="", answer='__name__ + ":" + data.read_string()'))
    done = _run([str(script), _name("script")], tmp_path)
    assert done.returncode == 0, done.stderr
    # The service re-imported the script as __mp_main__, as spawn does.
    assert done.stdout.split() == ["__mp_main__:hi", "True"]


def test_a_target_in_a_module_run_with_dash_m(tmp_path: Path) -> None:
    (tmp_path / "echo_module.py").write_text(
        _SERVICE.format(imports="", answer='__name__ + ":" + data.read_string()')
    )
    done = _run(["-m", "echo_module", _name("module")], tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["__mp_main__:hi", "True"]


def test_a_target_in_a_package_with_relative_imports(tmp_path: Path) -> None:
    package = tmp_path / "echopkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "words.py").write_text("def shout(text):\n    return text.upper() + '!'\n")
    (package / "app.py").write_text(
        _SERVICE.format(
            imports="from .words import shout", answer='__package__ + ":" + shout("hi")'
        )
    )
    done = _run(["-m", "echopkg.app", _name("package")], tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["echopkg:HI!", "True"]


def test_an_interactive_main_with_an_importable_target(tmp_path: Path) -> None:
    (tmp_path / "echo_lib.py").write_text(
        _SERVICE.format(imports="", answer='__name__ + ":" + data.read_string()')
    )
    code = textwrap.dedent(
        f"""
        import sys
        sys.argv[1:] = [{_name("interactive")!r}]
        import echo_lib
        echo_lib.main()
        """
    )
    done = _run(["-c", code], tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["echo_lib:hi", "True"]


def test_an_interactive_main_cannot_hold_the_target(tmp_path: Path) -> None:
    code = f"import sys\nsys.argv[1:] = [{_name('in-main')!r}]\n" + _SERVICE.format(
        imports="", answer='"never"'
    )
    done = _run(["-c", code], tmp_path)
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("ValueError") and "define it in a module" in last
