"""Forwarding collected logs to a syslog relay (rsyslog, syslog-ng): RFC 5424 messages over
octet-counted TCP or RELP, optionally in TLS, at least once.

The collector runs one ``Forwarder`` thread per destination (``start(dir, forward=[...])``,
``ashmem logd --forward URL``). Each reads the segment files from a cursor saved in the log
directory, so it survives a relay outage, a relay restart and a collector restart; retention
does not delete a segment before every destination has confirmed it.

>>> d = Destination.parse("relp+tls://127.0.0.1:6514?facility=local0")
>>> d.protocol, d.tls, d.port
('relp', True, 6514)

The pieces: ``_syslog`` (message format, framing), ``_relp`` (RELP frames and session),
``_destination`` (addresses, TLS), ``_forwarder`` (cursor, reading, sending, back-off).
"""

from __future__ import annotations

from .._errors import ProtocolError as ProtocolError
from ._destination import Destination as Destination
from ._forwarder import Forwarder as Forwarder
from ._forwarder import Forwarding as Forwarding
from ._relp import RelpSession as RelpSession
from ._syslog import format_message as format_message
from ._syslog import frame as frame

__all__ = [
    "Destination",
    "Forwarder",
    "Forwarding",
    "ProtocolError",
    "RelpSession",
    "format_message",
    "frame",
]
