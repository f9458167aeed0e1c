"""The public namespace: every public name exported once, documented, importable."""

from __future__ import annotations

import importlib
import pickle
from typing import Any

import pytest

import ashmem


def test_all_names_exist_once_and_are_documented() -> None:
    assert len(ashmem.__all__) == len(set(ashmem.__all__))
    for name in ashmem.__all__:
        obj = getattr(ashmem, name)
        if not isinstance(obj, int):
            assert obj.__doc__, f"ashmem.{name} has no docstring"
    public = {n for n in dir(ashmem) if not n.startswith("_")}
    # Submodules imported as a side effect of the layering are the only extras allowed, and
    # ashmem.numpy, which is left out of __all__ so that `from ashmem import *` works without
    # the numpy extra.
    assert public - set(ashmem.__all__) <= {"cli", "numpy"}


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
        ashmem.PurgedError("region 'x' was purged", "x"),
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
    order = [
        "_errors", "_sys", "_rights", "_purged", "_pins", "region", "_shared_memory",
        "_memory_file", "fdpass", "_backing", "_reduction", "numpy", "_queue", "pool",
    ]  # fmt: skip
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
        higher = set(order[index + 1 :]) | {
            "binder", "cli", "compat", "_ls", "_demo", "purge", "logd"
        }  # fmt: skip
        assert not imported & higher, f"{module} imports {imported & higher}"


# The binder package, bottom to top. Module-level imports point down this list; the few
# imports inside functions that point up (a Parcel writes and reads binders, a local
# Binder.transact makes Parcels) are listed, so that no new upward arrow hides in a function.
BINDER_ORDER = [
    "_errors", "_limits", "_wire", "_binder", "_parcel", "_launcher", "_gate", "_dispatch",
    "_pool", "_death", "_nested", "_proxy", "_directory",
]  # fmt: skip
KNOWN_UPWARD_IN_FUNCTIONS = {
    ("_binder", "_parcel"),
    ("_parcel", "_binder"),
    ("_parcel", "_proxy"),
    ("_parcel", "_pool"),
}
# What binder may import from the core: everything below it, nothing built on it.
ABOVE_BINDER = {"cli", "compat", "_ls", "_demo", "purge", "numpy", "_queue", "pool", "logd"}


def _relative_imports(tree: Any) -> list[tuple[int, str, bool]]:
    """``(level, first module name, at module level)`` of every relative import at run time
    (imports under ``if TYPE_CHECKING:`` are for annotations only and left out)."""
    import ast

    found: list[tuple[int, str, bool]] = []

    def visit(node: Any, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and getattr(child.test, "id", "") == "TYPE_CHECKING":
                continue
            if isinstance(child, ast.ImportFrom) and child.level:
                names = [child.module] if child.module else [a.name for a in child.names]
                for name in names:
                    found.append((child.level, (name or "").split(".")[0], top))
            inner = top and not isinstance(
                child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)
            )
            visit(child, inner)

    visit(tree, True)
    return found


def test_binder_layers_point_down() -> None:
    """Inside binder/ (``from .x``) and from binder/ to the core (``from ..x``)."""
    import ast
    import pathlib

    package = pathlib.Path(ashmem.__file__).parent / "binder"
    modules = {path.stem for path in package.glob("_*.py")} - {"__init__"}
    assert modules == set(BINDER_ORDER), "add a new binder module to BINDER_ORDER"
    for index, module in enumerate(BINDER_ORDER):
        tree = ast.parse((package / f"{module}.py").read_text())
        for level, name, top in _relative_imports(tree):
            if level == 2:
                assert name not in ABOVE_BINDER, f"binder/{module} imports ashmem.{name}"
            elif name in BINDER_ORDER and BINDER_ORDER.index(name) > index:
                assert not top, f"binder/{module} imports {name} (higher) at module level"
                assert (module, name) in KNOWN_UPWARD_IN_FUNCTIONS, (
                    f"binder/{module} imports {name} (higher) inside a function"
                )


def test_core_modules_never_import_binder() -> None:
    import ast
    import pathlib

    src = pathlib.Path(ashmem.__file__).parent
    for path in src.glob("*.py"):
        if path.stem in ABOVE_BINDER or path.stem in {"__init__", "__main__"}:
            continue
        for level, name, _ in _relative_imports(ast.parse(path.read_text())):
            assert not (level == 1 and name == "binder"), f"{path.name} imports binder"
