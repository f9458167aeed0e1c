"""Other logging libraries writing into the ring: a loguru sink and a structlog factory.

Neither library is imported here: a loguru sink is any callable that takes loguru's
message (a ``str`` with a ``.record`` dict), and a structlog logger factory any callable
that returns an object with one method per level. Both write what the ``Handler`` writes
(time, level, logger name, message, exception text, ``extra``), into the same ring.
"""

from __future__ import annotations

import datetime
import json
import logging
import time
import traceback
from typing import Any

from ._client import _get

__all__ = ["StructlogFactory", "loguru_sink"]

_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


def _time_ns(when: Any) -> int:
    if isinstance(when, datetime.datetime) and when.tzinfo is not None:
        delta = when - _EPOCH  # exact to the microsecond, unlike timestamp() * 1e9
        return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000
    return time.time_ns()


def _extra(values: dict[str, Any]) -> str:
    if not values:
        return "{}"
    try:
        return json.dumps(values, default=repr, sort_keys=True)
    except (TypeError, ValueError):  # keys that are not strings, and the like
        return json.dumps({str(k): repr(v) for k, v in values.items()}, sort_keys=True)


def loguru_sink(message: Any) -> None:
    """A loguru sink: ``logger.add(ashmem.logd.loguru_sink)``.

    Stores loguru's own time, level (name and number), the module name as the logger name,
    the message, the traceback of ``logger.exception``/``opt(exception=...)`` and the
    record's ``extra`` (``bind``/``contextualize``), as the ``Handler`` does for ``logging``.
    Formatting options of ``add`` do not change what is stored (formatting happens when
    reading).

    >>> class Message(str):  # what loguru hands a sink
    ...     record = {"time": None, "level": type("L", (), {"no": 20, "name": "INFO"}),
    ...               "name": "doc", "message": "hi", "exception": None, "extra": {}}
    >>> loguru_sink(Message("hi"))
    """
    record = message.record
    exc = None
    caught = record.get("exception")
    if caught is not None and caught.type is not None:
        exc = "".join(traceback.format_exception(caught.type, caught.value, caught.traceback))
        exc = exc.rstrip("\n")
    level = record["level"]
    _get().write(
        int(level.no),
        str(level.name),
        str(record.get("name") or ""),
        str(record["message"]),
        exc,
        _extra(dict(record.get("extra") or {})),
        _time_ns(record.get("time")),
    )


_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "msg": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "exception": logging.ERROR,
    "critical": logging.CRITICAL,
    "fatal": logging.CRITICAL,
}


class _StructlogLogger:
    """What ``StructlogFactory`` returns: one method per structlog level name."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def _write(self, level: int, event: Any = None, **fields: Any) -> None:
        time_ns = time.time_ns()
        exc = fields.pop("exception", None)
        if event is None:
            event = fields.pop("event", "")
        _get().write(
            level,
            logging.getLevelName(level),
            self.name,
            str(event),
            exc if isinstance(exc, str) else None,
            _extra(fields),
            time_ns,
        )

    def __getattr__(self, method: str) -> Any:
        level = _LEVELS.get(method)
        if level is None:
            raise AttributeError(method)

        def write(event: Any = None, **fields: Any) -> None:
            self._write(level, event, **fields)

        return write


class StructlogFactory:
    """A structlog logger factory: ``structlog.configure(logger_factory=StructlogFactory(),
    ...)``. The logger name is the first argument of ``structlog.get_logger(name)``, else
    ``default_name``.

    With a last processor that renders a string (``JSONRenderer``, ``KeyValueRenderer``)
    the string is the message; with one that returns the event dict (so that structlog calls
    ``logger.info(**event_dict)``), ``event`` is the message, an ``exception`` string (from
    ``format_exc_info``) is the traceback, and every other key goes to ``extra``.

    >>> log = StructlogFactory()("doc")
    >>> log.info(event="ready", port=8080)
    """

    def __init__(self, default_name: str = "structlog") -> None:
        self.default_name = default_name

    def __call__(self, *args: Any) -> _StructlogLogger:
        return _StructlogLogger(str(args[0]) if args else self.default_name)
