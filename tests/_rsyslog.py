"""A real rsyslogd for the forwarding tests and benchmark: started on free loopback ports
with a generated configuration, stopped afterwards.

``Rsyslogd(workdir, tls=None)`` writes ``rsyslog.conf`` into ``workdir`` with an ``imtcp``
and an ``imrelp`` input on 127.0.0.1 (plain), and, with ``tls=TlsFiles(...)``, a TLS
``imtcp`` (ossl driver) and a TLS ``imrelp`` that asks for a client certificate. Every
message goes through a ruleset with a direct queue (so a RELP ``rsp`` is sent only once the
message is in the output file) into ``out.jsonl``: one JSON object per message with the
fields rsyslog parsed (``pri``, ``timestamp``, ``hostname``, ``appname``, ``procid``,
``msgid``, ``sd``, ``msg``). It loads no system configuration and binds nothing outside
127.0.0.1. ``start()``, ``stop()`` (SIGTERM), ``pause()``/``resume()`` (SIGSTOP/SIGCONT),
``messages()`` (everything written so far).

``require_rsyslogd()`` returns the path of ``rsyslogd`` and the modules; where they are
missing it fails the test under CI (``CI`` set) and skips it elsewhere, saying why.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from typing import Any

import pytest

MODULE_DIRS = ("/usr/lib/x86_64-linux-gnu/rsyslog", "/usr/lib/aarch64-linux-gnu/rsyslog",
               "/usr/lib/rsyslog", "/usr/lib64/rsyslog")  # fmt: skip
NEEDED = ("imtcp.so", "imrelp.so", "lmnsd_ossl.so")


def _unavailable(reason: str) -> None:
    message = f"rsyslogd is not usable here: {reason} (make test installs rsyslog, " \
              "rsyslog-relp, rsyslog-openssl)"  # fmt: skip
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def require_rsyslogd() -> str:
    """Path of rsyslogd with the modules the tests use; fail (CI) or skip otherwise."""
    path = shutil.which("rsyslogd") or ("/usr/sbin/rsyslogd" if os.path.exists(
        "/usr/sbin/rsyslogd") else None)  # fmt: skip
    if path is None:
        _unavailable("no rsyslogd on PATH or in /usr/sbin")
    for d in MODULE_DIRS:
        if all(os.path.exists(os.path.join(d, m)) for m in NEEDED):
            return str(path)
    _unavailable(f"modules {', '.join(NEEDED)} not found in {', '.join(MODULE_DIRS)}")
    raise AssertionError("unreachable")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class TlsFiles:
    ca: str
    server_cert: str
    server_key: str


_TEMPLATE = """
template(name="fields" type="list" option.jsonf="on") {
  property(outname="pri" name="pri" format="jsonf")
  property(outname="timestamp" name="timestamp" dateFormat="rfc3339" format="jsonf")
  property(outname="hostname" name="hostname" format="jsonf")
  property(outname="appname" name="app-name" format="jsonf")
  property(outname="procid" name="procid" format="jsonf")
  property(outname="msgid" name="msgid" format="jsonf")
  property(outname="sd" name="structured-data" format="jsonf")
  property(outname="msg" name="msg" format="jsonf")
}
"""


class Rsyslogd:
    def __init__(self, workdir: str, *, tls: TlsFiles | None = None, extra: str = "") -> None:
        self.binary = require_rsyslogd()
        self.workdir = workdir
        self.tls = tls
        self.output = os.path.join(workdir, "out.jsonl")
        self.conf = os.path.join(workdir, "rsyslog.conf")
        self.pidfile = os.path.join(workdir, "rsyslogd.pid")
        self.log = os.path.join(workdir, "rsyslogd.log")
        spool = os.path.join(workdir, "spool")
        os.makedirs(spool, exist_ok=True)
        self.tcp_port = free_port()
        self.relp_port = free_port()
        self.tcp_tls_port = free_port() if tls else 0
        self.relp_tls_port = free_port() if tls else 0
        lines = [
            f'global(workDirectory="{spool}" maxMessageSize="256k" '
            'parser.escapeControlCharactersOnReceive="off"'
            + (
                f' defaultNetstreamDriverCAFile="{tls.ca}"'
                f' defaultNetstreamDriverCertFile="{tls.server_cert}"'
                f' defaultNetstreamDriverKeyFile="{tls.server_key}"'
                if tls
                else ""
            )
            + ")",
            'module(load="imtcp" maxSessions="64"'
            + (
                ' streamDriver.name="ossl" streamDriver.mode="1" streamDriver.authMode="anon"'
                if tls
                else ""
            )
            + ")",
            'module(load="imrelp"' + (' tls.tlslib="openssl"' if tls else "") + ")",
            _TEMPLATE,
            'ruleset(name="out" queue.type="Direct") {',
            f'  action(type="omfile" file="{self.output}" template="fields")',
            "}",
            extra,
        ]
        if tls:
            lines += [
                f'input(type="imtcp" port="{self.tcp_tls_port}" address="127.0.0.1" ruleset="out")',
                f'input(type="imrelp" port="{self.relp_tls_port}" address="127.0.0.1" '
                f'ruleset="out" tls="on" tls.cacert="{tls.ca}" tls.mycert="{tls.server_cert}" '
                f'tls.myprivkey="{tls.server_key}" tls.authMode="certvalid")',
            ]
        else:
            lines += [
                f'input(type="imtcp" port="{self.tcp_port}" address="127.0.0.1" ruleset="out")',
                f'input(type="imrelp" port="{self.relp_port}" address="127.0.0.1" ruleset="out")',
            ]
        with open(self.conf, "w") as f:
            f.write("\n".join(lines) + "\n")
        self.process: subprocess.Popen[bytes] | None = None
        self._read_at = 0
        self._messages: list[dict[str, Any]] = []

    @property
    def ports(self) -> list[int]:
        if self.tls:
            return [self.tcp_tls_port, self.relp_tls_port]
        return [self.tcp_port, self.relp_port]

    def start(self, timeout: float = 20.0) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.pidfile)
        logf = open(self.log, "ab")  # noqa: SIM115 - handed to the child
        try:
            self.process = subprocess.Popen(
                [self.binary, "-f", self.conf, "-i", self.pidfile, "-n"],
                stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
            )  # fmt: skip
        except OSError as exc:
            _unavailable(f"cannot run {self.binary}: {exc}")
        finally:
            logf.close()
        deadline = time.monotonic() + timeout
        waiting = set(self.ports)
        while waiting:
            if self.process.poll() is not None:
                _unavailable(f"rsyslogd exited with {self.process.returncode}: {self._tail()}")
            for port in list(waiting):
                if _listening(port):
                    waiting.discard(port)
            if time.monotonic() > deadline:
                self.stop()
                _unavailable(f"rsyslogd did not listen on {sorted(waiting)}: {self._tail()}")
            time.sleep(0.05)

    def _tail(self) -> str:
        try:
            with open(self.log, errors="replace") as f:
                return f.read()[-2000:]
        except OSError:
            return ""

    def stop(self, timeout: float = 15.0) -> None:
        proc = self.process
        if proc is None:
            return
        self.process = None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGCONT)
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def pause(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def messages(self) -> list[dict[str, Any]]:
        """Every message rsyslogd has written so far (read incrementally)."""
        try:
            with open(self.output, "rb") as f:
                f.seek(self._read_at)
                data = f.read()
        except FileNotFoundError:
            return self._messages
        end = data.rfind(b"\n") + 1
        for line in data[:end].splitlines():
            self._messages.append(json.loads(line))
        self._read_at += end
        return self._messages

    def wait_for(self, predicate: Any, timeout: float = 60.0, what: str = "") -> list[Any]:
        """Poll ``messages()`` until ``predicate(messages)`` holds; fail after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            msgs = self.messages()
            if predicate(msgs):
                return msgs
            if time.monotonic() > deadline:
                pytest.fail(f"rsyslogd output: {what} not reached after {timeout} s "
                            f"({len(msgs)} messages); its log: {self._tail()}")  # fmt: skip
            time.sleep(0.05)


def _listening(port: int) -> bool:
    # /proc/net/tcp lists listening sockets (state 0A) without connecting to them.
    needle = f":{port:04X} 00000000:0000 0A"
    with open("/proc/net/tcp") as f:
        return any(needle in line for line in f)


def make_tls(workdir: str, *, client: bool = True) -> tuple[TlsFiles, dict[str, str]]:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate, as PEM
    files in ``workdir`` (made with ``cryptography``); returns the server's files and
    ``{"ca", "cert", "key", "other_ca"}`` for the client (``other_ca``: an unrelated CA)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def ca(cn: str) -> tuple[Any, Any]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder().subject_name(name(cn)).issuer_name(name(cn))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                           crl_sign=True, content_commitment=False, key_encipherment=False,
                           data_encipherment=False, key_agreement=False,
                           encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256())
        )  # fmt: skip
        return key, cert

    def leaf(cn: str, ca_key: Any, ca_cert: Any, server: bool) -> tuple[Any, Any]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder().subject_name(name(cn)).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            # Python 3.13 verifies strictly (VERIFY_X509_STRICT): key identifiers, a leaf
            # that is not a CA, the usage it is for.
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                           ca_key.public_key()), critical=False)
            .add_extension(x509.ExtendedKeyUsage(
                           [ExtendedKeyUsageOID.SERVER_AUTH if server
                            else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        )  # fmt: skip
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
        return key, builder.sign(ca_key, hashes.SHA256())

    def write(path: str, *objs: Any) -> str:
        with open(path, "wb") as f:
            for obj in objs:
                if hasattr(obj, "private_bytes"):
                    f.write(obj.private_bytes(serialization.Encoding.PEM,
                            serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()))  # fmt: skip
                else:
                    f.write(obj.public_bytes(serialization.Encoding.PEM))
        return path

    ca_key, ca_cert = ca("ashmem test CA")
    s_key, s_cert = leaf("localhost", ca_key, ca_cert, True)
    c_key, c_cert = leaf("ashmem client", ca_key, ca_cert, False)
    _, other = ca("some other CA")
    j = os.path.join
    files = TlsFiles(write(j(workdir, "ca.pem"), ca_cert), write(j(workdir, "server.pem"), s_cert),
                     write(j(workdir, "server.key"), s_key))  # fmt: skip
    client_files = {
        "ca": files.ca,
        "cert": write(j(workdir, "client.pem"), c_cert),
        "key": write(j(workdir, "client.key"), c_key),
        "other_ca": write(j(workdir, "other-ca.pem"), other),
    }
    return files, client_files
