"""loguru and structlog writing into the ring, read back from the collector's files."""

from __future__ import annotations

import json

import pytest

import ashmem.logd

from .conftest import logd_rows

loguru = pytest.importorskip("loguru")
structlog = pytest.importorskip("structlog")


def test_loguru_sink(collector: ashmem.logd.Collector) -> None:
    sink = loguru.logger.add(ashmem.logd.loguru_sink, level="DEBUG", format="IGNORED {message}")
    try:
        loguru.logger.bind(user="ann", n=[1, 2]).info("hello {}", 1)
        try:
            1 / 0  # noqa: B018
        except ZeroDivisionError:
            loguru.logger.exception("boom")
        loguru.logger.debug("quiet")
    finally:
        loguru.logger.remove(sink)
    rows = logd_rows(collector, __name__)
    assert [(r["level"], r["levelno"], r["message"]) for r in rows] == [
        ("INFO", 20, "hello 1"),
        ("ERROR", 40, "boom"),
        ("DEBUG", 10, "quiet"),
    ]
    assert rows[0]["extra"] == {"n": [1, 2], "user": "ann"} and rows[0]["exc"] is None
    assert "ZeroDivisionError" in rows[1]["exc"]
    assert rows[0]["time_ns"] <= rows[1]["time_ns"] <= rows[2]["time_ns"]


def test_structlog_factory_with_an_event_dict(collector: ashmem.logd.Collector) -> None:
    structlog.configure(
        processors=[structlog.processors.format_exc_info],
        logger_factory=ashmem.logd.StructlogFactory(),
        cache_logger_on_first_use=False,
    )
    try:
        log = structlog.get_logger("svc").bind(request=7)
        log.info("started", port=8080)
        try:
            {}["missing"]
        except KeyError:
            log.exception("lookup failed")
        log.warning("slow", ms=1.5)
    finally:
        structlog.reset_defaults()
    rows = logd_rows(collector, "svc")
    assert [(r["level"], r["message"]) for r in rows] == [
        ("INFO", "started"),
        ("ERROR", "lookup failed"),
        ("WARNING", "slow"),
    ]
    assert rows[0]["extra"] == {"port": 8080, "request": 7}
    assert "KeyError" in rows[1]["exc"] and "exception" not in rows[1]["extra"]
    assert rows[2]["extra"] == {"ms": 1.5, "request": 7}


def test_structlog_factory_with_a_rendered_string(collector: ashmem.logd.Collector) -> None:
    structlog.configure(
        processors=[structlog.processors.JSONRenderer(sort_keys=True)],
        logger_factory=ashmem.logd.StructlogFactory(default_name="app"),
        cache_logger_on_first_use=False,
    )
    try:
        structlog.get_logger().error("disk full", free=0)
    finally:
        structlog.reset_defaults()
    [row] = logd_rows(collector, "app")
    assert row["level"] == "ERROR"
    assert json.loads(row["message"]) == {"event": "disk full", "free": 0}
