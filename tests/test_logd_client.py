"""ashmem.logd's write paths in one process: the plain fast path (no traceback, no extra)
and the general one store the same fields; level names follow ``logging.addLevelName``;
handler filters still apply."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from typing import Any

import pytest

import ashmem.logd

from .conftest import logd_rows


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
    rows = logd_rows(collector, "fast.direct")
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
    std_rows = logd_rows(collector, "fast.std")
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
    assert [(r["level"], r["message"]) for r in logd_rows(collector, "rename.direct")] == [
        ("INFO", "before"),
        ("NOTE", "after"),
        ("NOTE", "after via log"),
        ("INFO", "restored"),
    ]
    assert [(r["level"], r["message"]) for r in logd_rows(collector, "rename.std")] == [
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
    assert [r["message"] for r in logd_rows(collector, "filtered")] == ["keep 1", "keep 3"]


def test_process_is_the_records_process_name(
    collector: ashmem.logd.Collector, monkeypatch: pytest.MonkeyPatch
) -> None:
    import multiprocessing

    from ashmem.logd import _client

    std = _stdlib("procname.std", ashmem.logd.Handler())
    direct = ashmem.logd.get_logger("procname.direct")
    std.info("before")
    direct.info("before")
    monkeypatch.setattr(multiprocessing.current_process(), "name", "Renamed")
    std.info("plain")
    std.info("general", extra={"k": 1})
    monkeypatch.setattr(logging, "logMultiprocessing", False)  # processName is None
    std.info("no name")
    monkeypatch.setattr(logging, "logMultiprocessing", True)
    client = _client._client
    assert client is not None
    client.next_check_ns = 0  # the direct API reads the name at its once-a-second check
    direct.info("after")
    assert [(r["message"], r["process"]) for r in logd_rows(collector, "procname.std")] == [
        ("before", "MainProcess"),
        ("plain", "Renamed"),
        ("general", "Renamed"),
        ("no name", ""),
    ]
    assert [(r["message"], r["process"]) for r in logd_rows(collector, "procname.direct")] == [
        ("before", "MainProcess"),
        ("after", "Renamed"),
    ]


def test_direct_api_bad_format_arguments_never_raise(collector: ashmem.logd.Collector) -> None:
    direct = ashmem.logd.get_logger("badfmt")
    direct.info("%d items", "abc")
    direct.log(logging.INFO, "%s and %s", "one")
    direct.info("%(user)s logged in", {"user": "ann"})  # one mapping: as in logging
    direct.info("after")
    messages = [r["message"] for r in logd_rows(collector, "badfmt")]
    assert messages[0].startswith("%d items (formatting with ('abc',) failed: TypeError")
    assert messages[1].startswith("%s and %s (formatting with ('one',) failed: TypeError")
    assert messages[2:] == ["ann logged in", "after"]


def test_json_output_is_strict_json_for_nan_and_infinity(
    collector: ashmem.logd.Collector,
) -> None:
    import json

    direct = ashmem.logd.get_logger("nan")
    direct.info("values", v=float("nan"), w=float("-inf"), ok=1.5)
    ashmem.logd.flush(timeout=30)
    out = subprocess.run(
        [sys.executable, "-m", "ashmem", "log", "cat", "--json", "--logger", "nan",
         collector.directory],
        capture_output=True, timeout=60, check=True,
    )  # fmt: skip

    def refuse(name: str) -> None:
        raise ValueError(f"not strict JSON: {name}")

    (row,) = [json.loads(line, parse_constant=refuse) for line in out.stdout.splitlines()]
    assert row["extra"] == {"v": "NaN", "w": "-Infinity", "ok": 1.5}


def test_start_with_a_bad_public_key_raises_key_file_error(tmp_path: Any) -> None:
    from ashmem.logd import KeyFileError

    before = os.environ.get("ASHMEM_LOGD")
    with pytest.raises(KeyFileError, match=r"missing\.pub"):
        ashmem.logd.start(str(tmp_path / "logs"), encrypt_to=str(tmp_path / "missing.pub"))
    (tmp_path / "junk.pub").write_text("not a key\n")
    with pytest.raises(KeyFileError, match="not a PEM public key"):
        ashmem.logd.start(str(tmp_path / "logs"), encrypt_to=str(tmp_path / "junk.pub"))
    assert os.environ.get("ASHMEM_LOGD") == before  # no collector was started


def test_cat_into_a_closed_pipe_stops_quietly(collector: ashmem.logd.Collector) -> None:
    direct = ashmem.logd.get_logger("pipe")
    for i in range(4000):  # far more than a pipe holds
        direct.info("record %d with some text to fill the pipe quickly", i)
    ashmem.logd.flush(timeout=30)
    proc = subprocess.Popen(
        [sys.executable, "-m", "ashmem", "log", "cat", collector.directory],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline()  # it is writing; now the reader goes away (| head -1)
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 128 + signal.SIGPIPE
    assert err == b""
