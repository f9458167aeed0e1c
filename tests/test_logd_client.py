"""ashmem.logd's write paths in one process: the plain fast path (no traceback, no extra)
and the general one store the same fields; level names follow ``logging.addLevelName``;
handler filters still apply."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest

import ashmem.logd


@pytest.fixture
def collector(tmp_path: Any) -> Iterator[ashmem.logd.Collector]:
    c = ashmem.logd.start(str(tmp_path / "logs"), interval=0.005)
    try:
        yield c
    finally:
        c.stop()


def _rows(collector: ashmem.logd.Collector, logger: str) -> list[dict[str, Any]]:
    ashmem.logd.flush(timeout=30)
    rows = [e.to_json() for e in ashmem.logd.read(collector.directory)]
    return [r for r in rows if r["logger"] == logger]


def _stdlib(name: str, handler: logging.Handler) -> logging.Logger:
    log = logging.getLogger(name)
    log.handlers[:] = [handler]
    log.propagate = False
    log.setLevel(logging.DEBUG)
    return log


def _fields(row: dict[str, Any]) -> tuple[Any, ...]:
    return (row["level"], row["levelno"], row["message"], row["exc"], row["extra"])


def test_plain_and_general_paths_store_the_same_fields(
    collector: ashmem.logd.Collector,
) -> None:
    direct = ashmem.logd.get_logger("fast.direct")
    direct.info("n=%d", 1)  # plain
    direct.log(logging.INFO, "n=%d", 1)  # plain, through log()
    direct.info("n=%d", 1, exc_info=False, k=None)  # general (an extra)
    direct.warning("w %s", "x")
    direct.error("e")
    direct.critical("c")
    direct.debug("d")
    handler = ashmem.logd.Handler()
    std = _stdlib("fast.std", handler)
    std.info("n=%d", 1)  # plain
    std.info("n=%d", 1, stack_info=False, extra={})  # an empty extra: still plain
    std.info("n=%d", 1, extra={"k": None})  # general
    rows = _rows(collector, "fast.direct")
    assert [_fields(r) for r in rows] == [
        ("INFO", 20, "n=1", None, {}),
        ("INFO", 20, "n=1", None, {}),
        ("INFO", 20, "n=1", None, {"k": None}),
        ("WARNING", 30, "w x", None, {}),
        ("ERROR", 40, "e", None, {}),
        ("CRITICAL", 50, "c", None, {}),
        ("DEBUG", 10, "d", None, {}),
    ]
    assert len({(r["pid"], r["tid"], r["process"]) for r in rows}) == 1
    std_rows = _rows(collector, "fast.std")
    assert [_fields(r) for r in std_rows] == [
        ("INFO", 20, "n=1", None, {}),
        ("INFO", 20, "n=1", None, {}),
        ("INFO", 20, "n=1", None, {"k": None}),
    ]
    assert {(r["pid"], r["tid"], r["process"]) for r in std_rows} == {
        (rows[0]["pid"], rows[0]["tid"], rows[0]["process"])
    }


def test_level_names_follow_addlevelname(collector: ashmem.logd.Collector) -> None:
    direct = ashmem.logd.get_logger("rename.direct")
    std = _stdlib("rename.std", ashmem.logd.Handler())
    direct.info("before")
    std.info("before")
    logging.addLevelName(logging.INFO, "NOTE")
    try:
        direct.info("after")
        direct.log(logging.INFO, "after via log")
        std.info("after")
    finally:
        logging.addLevelName(logging.INFO, "INFO")
    direct.info("restored")
    assert [(r["level"], r["message"]) for r in _rows(collector, "rename.direct")] == [
        ("INFO", "before"),
        ("NOTE", "after"),
        ("NOTE", "after via log"),
        ("INFO", "restored"),
    ]
    assert [(r["level"], r["message"]) for r in _rows(collector, "rename.std")] == [
        ("INFO", "before"),
        ("NOTE", "after"),
    ]


def test_handler_filters_still_apply(collector: ashmem.logd.Collector) -> None:
    handler = ashmem.logd.Handler()
    handler.addFilter(lambda record: "keep" in record.getMessage())
    std = _stdlib("filtered", handler)
    std.info("keep 1")
    std.info("drop 2")
    std.info("keep 3")
    assert [r["message"] for r in _rows(collector, "filtered")] == ["keep 1", "keep 3"]
