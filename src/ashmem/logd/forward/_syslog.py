"""RFC 5424 messages from log records, and octet-counted framing (RFC 6587 §3.4.1).

One record becomes one message::

    <PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID [ashmem@32473 seq="N" ...] BOM MSG

=========  ==========================================================================
field      from
=========  ==========================================================================
PRI        facility * 8 + severity; severity from the level: CRITICAL and above 2,
           ERROR 3, WARNING 4, INFO 6, below INFO 7 (levels in between round down)
TIMESTAMP  the record's time (taken at ``emit``), UTC, microseconds: ``...T14:50:01.123456Z``
HOSTNAME   a setting, default ``socket.gethostname()``
APP-NAME   a setting, default the record's process name (``record.processName``)
PROCID     the pid the kernel reported for the writing process (``SO_PEERCRED``)
MSGID      the logger name
SD         one element ``ashmem@32473`` (32473 is the enterprise number RFC 5612 reserves
           for documentation): ``seq`` (per-ring sequence number), ``ring`` (ring id, hex),
           ``tid``, ``uid``, ``level`` (the level name), ``logger`` when MSGID had to be
           shortened, then the record's ``extra`` keys
MSG        UTF-8 with the BOM the RFC asks for: the message, then, if the record carries a
           traceback, a newline and the traceback
=========  ==========================================================================

Header fields are PRINTUSASCII (``!`` to ``~``) of bounded length (APP-NAME 48, PROCID 128,
MSGID 32, HOSTNAME 255): other characters become ``_`` and longer values are cut; an empty
one is the NILVALUE ``-``. SD parameter names follow the same rule (at most 32 characters,
without ``=``, ``]``, ``"`` and space); values escape ``"``, ``\\`` and ``]`` with a
backslash (RFC 5424 §6.3.3). ``extra`` values that are not strings are written as JSON.

>>> from ashmem.logd._ring import Record
>>> r = Record(7, 1, 30, "WARNING", 1_796_223_001_000_002_000, 11, "app.db",
...            "slow query", "worker-1", None, '{"ms": 1234, "q": "a]b"}')
>>> m = format_message(r, pid=4242, uid=1000, ring_id=255, hostname="web1")
>>> head, _, body = m.partition(BOM)
>>> print(head.decode().replace(" [", "\\n[").rstrip()); body
<12>1 2026-12-02T14:50:01.000002Z web1 worker-1 4242 app.db
[ashmem@32473 seq="7" ring="ff" tid="11" uid="1000" level="WARNING" ms="1234" q="a\\]b"]
b'slow query'
>>> frame(b"<14>1 - - - - - -")
b'17 <14>1 - - - - - -'
"""

from __future__ import annotations

import functools
import json
import re
import time
from typing import Any

__all__ = [
    "FACILITIES",
    "SD_ID",
    "facility_number",
    "format_message",
    "frame",
    "severity",
]

#: The structured-data element every message carries.
SD_ID = "ashmem@32473"
BOM = b"\xef\xbb\xbf"

#: Facility names (RFC 5424 table 1, the names syslog.h uses) and their codes.
FACILITIES = {
    "kern": 0, "user": 1, "mail": 2, "daemon": 3, "auth": 4, "syslog": 5, "lpr": 6,
    "news": 7, "uucp": 8, "cron": 9, "authpriv": 10, "ftp": 11, "ntp": 12, "security": 13,
    "console": 14, "solaris-cron": 15, "local0": 16, "local1": 17, "local2": 18,
    "local3": 19, "local4": 20, "local5": 21, "local6": 22, "local7": 23,
}  # fmt: skip

_NOT_PRINTUSASCII = re.compile(r"[^!-~]")
_NOT_SD_NAME = re.compile(r'[^!-~]|[="\]]')


def facility_number(facility: str | int) -> int:
    """The code of a facility given by name (``"local0"``) or number (0-23).

    >>> facility_number("local3"), facility_number(1)
    (19, 1)
    """
    if isinstance(facility, int) and not isinstance(facility, bool):
        if 0 <= facility <= 23:
            return facility
    elif isinstance(facility, str):
        if facility.isdigit() and 0 <= int(facility) <= 23:
            return int(facility)
        if facility.lower() in FACILITIES:
            return FACILITIES[facility.lower()]
    raise ValueError(
        f"unknown syslog facility {facility!r}: use a name such as 'user' or 'local0', "
        "or a number from 0 to 23"
    )


def severity(levelno: int) -> int:
    """The syslog severity of a ``logging`` level number.

    >>> [severity(n) for n in (50, 40, 30, 20, 10)]
    [2, 3, 4, 6, 7]
    """
    if levelno >= 50:
        return 2
    if levelno >= 40:
        return 3
    if levelno >= 30:
        return 4
    if levelno >= 20:
        return 6
    return 7


@functools.lru_cache(maxsize=4096)
def header_field(value: str, limit: int) -> str:
    """``value`` as an RFC 5424 header field: PRINTUSASCII, at most ``limit`` long, ``-``
    when empty.

    >>> header_field("my app", 48), header_field("", 32)
    ('my_app', '-')
    """
    value = _NOT_PRINTUSASCII.sub("_", value)[:limit]
    return value or "-"


@functools.lru_cache(maxsize=4096)
def _param_name(key: str) -> str:
    return _NOT_SD_NAME.sub("_", key)[:32] or "_"


def _param_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    if '"' in text or "\\" in text or "]" in text:
        return text.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")
    return text


_last_second = [-1, ""]


def _timestamp(time_ns: int) -> str:
    secs, ns = divmod(time_ns, 1_000_000_000)
    if secs != _last_second[0]:  # one strftime per second of records
        _last_second[:] = [secs, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs))]
    return f"{_last_second[1]}.{ns // 1000:06d}Z"


def format_message(
    record: Any,
    *,
    pid: int,
    uid: int,
    ring_id: int,
    hostname: str,
    facility: int = 1,
    app_name: str | None = None,
) -> bytes:
    """The RFC 5424 message (bytes, without framing) for ``record`` (a ``_ring.Record``)
    written by process ``pid`` of user ``uid``; see the module docstring for the fields."""
    logger = record.logger
    msgid = header_field(logger, 32)
    sd = (
        f'[{SD_ID} seq="{record.seq}" ring="{ring_id:x}" tid="{record.tid}" uid="{uid}" '
        f'level="{_param_value(record.levelname)}"'
    )
    if msgid != logger:
        sd += f' logger="{_param_value(logger)}"'
    if record.extra and record.extra != "{}":
        try:
            extra = json.loads(record.extra)
        except ValueError:
            extra = {"extra": record.extra}
        if not isinstance(extra, dict):
            extra = {"extra": extra}
        taken = {"seq", "ring", "tid", "uid", "level", "logger"}
        for key, value in extra.items():
            name = _param_name(str(key))
            if name in taken:
                name = ("x_" + name)[:32]
            taken.add(name)
            sd += f' {name}="{_param_value(value)}"'
    message: str = record.message if record.exc is None else record.message + "\n" + record.exc
    head = (
        f"<{facility * 8 + severity(record.levelno)}>1 {_timestamp(record.time_ns)} "
        f"{header_field(hostname, 255)} "
        f"{header_field(app_name if app_name is not None else record.process, 48)} "
        f"{pid} {msgid} {sd}] "
    )
    return head.encode() + BOM + message.encode("utf-8", "replace")


def frame(message: bytes) -> bytes:
    """``message`` with octet-counting framing (RFC 6587 §3.4.1): ``LEN SP MSG``."""
    return b"%d %s" % (len(message), message)
