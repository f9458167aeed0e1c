"""The public namespace: every public name exported once, documented, importable."""

from __future__ import annotations

import importlib
import pickle

import pytest

import ashmem


def test_all_names_exist_once_and_are_documented() -> None:
    assert len(ashmem.__all__) == len(set(ashmem.__all__))
    for name in ashmem.__all__:
        obj = getattr(ashmem, name)
        if not isinstance(obj, int):
            assert obj.__doc__, f"ashmem.{name} has no docstring"
    public = {n for n in dir(ashmem) if not n.startswith("_")}
    # Submodules imported as a side effect (of the layering, or of a test importing
    # ashmem.logd) are the only extras allowed.
    assert public - set(ashmem.__all__) <= {"cli", "logd"}


def test_error_tree() -> None:
    assert issubclass(ashmem.ClosedError, ashmem.Error)
    assert issubclass(ashmem.ClosedError, ValueError)
    assert issubclass(ashmem.ProtectionError, ashmem.Error)
    assert issubclass(ashmem.ProtectionError, PermissionError)
    assert issubclass(ashmem.BusyError, BufferError)
    assert issubclass(ashmem.MessageError, ValueError)
    errors = importlib.import_module("ashmem._errors")
    for name in ("ClosedError", "ProtectionError", "BusyError", "MessageError"):
        assert name in errors.__doc__


@pytest.mark.parametrize(
    "error",
    [
        ashmem.ClosedError("region 'x' is closed", "x"),
        ashmem.ProtectionError("region 'x' is write-protected", "x"),
        ashmem.BusyError("busy", "x"),
        ashmem.MessageError("bad frame"),
    ],
)
def test_errors_pickle_with_their_fields(error: Exception) -> None:
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error)
    assert str(copy) == str(error)
    assert getattr(copy, "region", None) == getattr(error, "region", None)
    assert getattr(copy, "errno", None) == getattr(error, "errno", None)


def test_layers_point_down() -> None:
    """A lower layer never imports a higher one."""
    import ast
    import pathlib

    src = pathlib.Path(ashmem.__file__).parent
    order = ["_errors", "_sys", "region", "_shared_memory", "_memory_file", "fdpass"]
    for index, module in enumerate(order):
        tree = ast.parse((src / f"{module}.py").read_text())
        imported = {
            alias.name.split(".")[0]
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.level == 1
            for alias in node.names
        } | {
            (node.module or "").split(".")[0]
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module
        }
        higher = set(order[index + 1 :]) | {"binder", "cli", "_ls", "_demo", "logd"}
        assert not imported & higher, f"{module} imports {imported & higher}"
