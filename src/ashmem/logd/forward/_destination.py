"""Where records go: ``relp://``, ``relp+tls://``, ``tcp://``, ``tcp+tls://`` addresses.

An address is ``SCHEME://HOST:PORT`` with optional query parameters::

    relp+tls://logs.example.net:2514?ca=/etc/ssl/ca.pem&cert=me.pem&key=me.key

=============  ==============================================================================
parameter      meaning
=============  ==============================================================================
``ca``         CA bundle (PEM) that must have signed the server's certificate; default: the
               system's trust store. The certificate is always checked, and so is its name
``server_name``  the name the certificate must carry (default: HOST; an IP address works if
               the certificate lists it)
``cert``       client certificate (PEM) for servers that ask for one; ``key`` its private key
               (default: in the ``cert`` file)
``facility``   syslog facility: a name (``user``, the default; ``local0`` ...) or 0-23
``app_name``   APP-NAME of every message (default: the record's process name)
``hostname``   HOSTNAME of every message (default: this machine's name)
``window``     RELP only: messages sent and not yet answered, at most (default 1024)
=============  ==============================================================================

TLS parameters are refused on the plain schemes, so that a typo cannot silently send
logs in the clear.

>>> d = Destination.parse("relp://127.0.0.1:2514?facility=local0")
>>> d.protocol, d.host, d.port, d.tls, d.facility
('relp', '127.0.0.1', 2514, False, 16)
>>> str(d)
'relp://127.0.0.1:2514'
"""

from __future__ import annotations

import os
import socket
import ssl
import urllib.parse
from dataclasses import dataclass

from ._syslog import facility_number

__all__ = ["SCHEMES", "Destination"]

#: The schemes an address may use: (protocol, TLS).
SCHEMES = {
    "tcp": ("tcp", False),
    "tcp+tls": ("tcp", True),
    "relp": ("relp", False),
    "relp+tls": ("relp", True),
}
_TLS_PARAMS = ("ca", "cert", "key", "server_name")
_PARAMS = (*_TLS_PARAMS, "facility", "app_name", "hostname", "window")


@dataclass(frozen=True)
class Destination:
    """A parsed forwarding address; ``Destination.parse(text)`` makes one."""

    protocol: str
    tls: bool
    host: str
    port: int
    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    server_name: str | None = None
    facility: int = 1
    app_name: str | None = None
    hostname: str | None = None
    window: int = 1024
    text: str = ""

    @classmethod
    def parse(cls, text: str) -> Destination:
        """Parse ``SCHEME://HOST:PORT[?param=value&...]``; ``ValueError`` names what is wrong."""
        if not isinstance(text, str):
            raise TypeError(f"a forwarding address is a str, not {type(text).__name__}")
        url = urllib.parse.urlsplit(text)
        if url.scheme not in SCHEMES:
            raise ValueError(
                f"forwarding address {text!r}: the scheme must be one of "
                + ", ".join(f"{s}://" for s in SCHEMES)
            )
        protocol, tls = SCHEMES[url.scheme]
        try:
            port = url.port
        except ValueError:
            port = None
        if not url.hostname or port is None or url.path not in ("", "/"):
            raise ValueError(f"forwarding address {text!r}: write it as {url.scheme}://HOST:PORT")
        params: dict[str, str] = {}
        for name, value in urllib.parse.parse_qsl(url.query, keep_blank_values=True):
            if name not in _PARAMS:
                raise ValueError(
                    f"forwarding address {text!r}: unknown parameter {name!r} "
                    f"(known: {', '.join(_PARAMS)})"
                )
            if name in _TLS_PARAMS and not tls:
                raise ValueError(
                    f"forwarding address {text!r}: {name!r} is a TLS setting; use "
                    f"{url.scheme}+tls:// to encrypt the connection"
                )
            params[name] = value
        for name in ("ca", "cert", "key"):
            if name in params:
                params[name] = os.path.abspath(params[name])
                if not os.path.isfile(params[name]):
                    raise FileNotFoundError(
                        f"forwarding address {text!r}: {name} file {params[name]} does not exist"
                    )
        if "key" in params and "cert" not in params:
            raise ValueError(f"forwarding address {text!r}: 'key' needs 'cert' too")
        window = 1024
        if "window" in params:
            if protocol != "relp" or not params["window"].isdigit():
                raise ValueError(
                    f"forwarding address {text!r}: window is a positive number, for relp only"
                )
            window = int(params["window"])
            if not 1 <= window <= 100_000:
                raise ValueError(f"forwarding address {text!r}: window must be 1-100000")
        canonical = f"{url.scheme}://{_host_port(url.hostname, port)}"
        return cls(
            protocol=protocol,
            tls=tls,
            host=url.hostname,
            port=port,
            ca=params.get("ca"),
            cert=params.get("cert"),
            key=params.get("key"),
            server_name=params.get("server_name"),
            facility=facility_number(params.get("facility", "user")),
            app_name=params.get("app_name"),
            hostname=params.get("hostname"),
            window=window,
            text=canonical,
        )

    def __str__(self) -> str:
        return self.text

    @property
    def state_name(self) -> str:
        """A file-name-safe name for this destination (its cursor file is named after it)."""
        return "".join(c if c.isalnum() or c in "-." else "_" for c in self.text)

    def tls_context(self) -> ssl.SSLContext:
        """The client TLS context: server certificate and name checked (CA from ``ca`` or
        the system store), client certificate loaded if given."""
        context = ssl.create_default_context(cafile=self.ca)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.cert is not None:
            context.load_cert_chain(self.cert, self.key)
        return context

    def connect(self, timeout: float) -> socket.socket:
        """A connected socket (TLS handshake done, certificate checked when ``tls``); the
        caller owns it. Raises ``OSError`` (``ssl.SSLError`` included) on failure."""
        sock = socket.create_connection((self.host, self.port), timeout=timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            if self.tls:
                return self.tls_context().wrap_socket(
                    sock, server_hostname=self.server_name or self.host
                )
        except BaseException:
            sock.close()
            raise
        return sock


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
