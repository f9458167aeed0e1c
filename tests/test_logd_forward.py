"""ashmem.logd.forward against a real rsyslogd: fields, RELP through a relay restart,
a collector SIGKILLed mid-forward, 100,000 records, TLS, retention, status.

Each test starts its own rsyslogd (``_rsyslog.Rsyslogd``) on free loopback ports and stops
it afterwards; where rsyslogd cannot run the test fails under CI and skips elsewhere.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

import ashmem.logd
from ashmem import fdpass
from ashmem.logd.forward import Destination, ProtocolError, RelpSession, format_message
from ashmem.logd.forward._relp import FrameParser
from ashmem.logd.forward._syslog import facility_number

from . import _rsyslog

pytest.importorskip("zstandard")

BOM = "\ufeff"


@pytest.fixture
def rsyslog(tmp_path: Any) -> Iterator[_rsyslog.Rsyslogd]:
    os.makedirs(tmp_path / "rsyslog", exist_ok=True)
    rs = _rsyslog.Rsyslogd(str(tmp_path / "rsyslog"))
    rs.start()
    try:
        yield rs
    finally:
        rs.stop()


def parse_sd(text: str) -> tuple[str, dict[str, str]]:
    """Parse one RFC 5424 SD-ELEMENT, undoing the escapes (independent of the formatter)."""
    assert text.startswith("[") and text.endswith("]"), text
    body = text[1:-1]
    sd_id, _, rest = body.partition(" ")
    params: dict[str, str] = {}
    i = 0
    while i < len(rest):
        eq = rest.index("=", i)
        name = rest[i:eq]
        assert rest[eq + 1] == '"'
        j = eq + 2
        value = []
        while rest[j] != '"':
            if rest[j] == "\\" and rest[j + 1] in '"\\]':
                j += 1
            value.append(rest[j])
            j += 1
        params[name] = "".join(value)
        i = j + 2  # past the quote and the space
    return sd_id, params


def key_of(msg: dict[str, Any]) -> tuple[str, str, int]:
    _, params = parse_sd(msg["sd"])
    return msg["procid"], params["ring"], int(params["seq"])


def collector_status(address: str) -> dict[str, Any]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.settimeout(10)
    try:
        sock.connect(address)
        fdpass.recv(sock, maxfds=0, maxdata=4096)
        fdpass.send(sock, [], b'{"op": "status"}')
        data, _ = fdpass.recv(sock, maxfds=0, maxdata=1 << 20)
    finally:
        sock.close()
    result: dict[str, Any] = json.loads(data)
    return result


def wait_status(address: str, predicate: Any, timeout: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        status = collector_status(address)
        if predicate(status):
            return status
        if time.monotonic() > deadline:
            pytest.fail(f"collector status never reached the expected state: {status}")
        time.sleep(0.05)


# -- without a server ------------------------------------------------------------------


def test_destination_errors_name_the_fix(tmp_path: Any) -> None:
    with pytest.raises(ValueError, match="scheme must be one of"):
        Destination.parse("udp://127.0.0.1:514")
    with pytest.raises(ValueError, match="HOST:PORT"):
        Destination.parse("relp://127.0.0.1")
    with pytest.raises(ValueError, match=r"TLS setting.*relp\+tls://"):
        Destination.parse("relp://127.0.0.1:514?ca=/x.pem")
    with pytest.raises(FileNotFoundError, match="ca file"):
        Destination.parse(f"tcp+tls://127.0.0.1:514?ca={tmp_path}/missing.pem")
    with pytest.raises(ValueError, match="unknown parameter 'cafile'"):
        Destination.parse("tcp+tls://h:1?cafile=x")
    with pytest.raises(ValueError, match="unknown syslog facility"):
        Destination.parse("tcp://h:1?facility=local9")
    with pytest.raises(ValueError, match="window"):
        Destination.parse("tcp://h:1?window=5")
    with pytest.raises(ValueError, match="cannot be combined"):
        ashmem.logd.start(tmp_path / "l", forward=["relp://h:1"], encrypt_to="x.pub")
    assert facility_number("LOCAL7") == 23
    assert Destination.parse("relp://[::1]:2514").text == "relp://[::1]:2514"


def test_relp_frames_from_a_hostile_server_are_refused() -> None:
    for garbage in (b"x" * 100, b"1 rsp 5 200 OK\n", b"1 rsp 999999999999 ", b"1 r!p 0\n"):
        with pytest.raises(ProtocolError):
            FrameParser().feed(garbage)
    a, b = socket.socketpair()
    session = RelpSession(a, window=4, timeout=5)
    assert session.send([b"m1", b"m2"]) == 2
    b.sendall(b"1 rsp 21 500 too many messages\n")
    with pytest.raises(ProtocolError, match="refused a message"):
        session.acknowledged(timeout=5)
    b.sendall(b"9 rsp 6 200 OK\n")  # answers nothing outstanding in order
    with pytest.raises(ProtocolError, match="unexpected"):
        session.acknowledged(timeout=5)
    session.close(timeout=0)
    b.close()


def test_format_escapes_what_rfc5424_requires() -> None:
    from ashmem.logd._ring import Record

    extra = json.dumps({"q": 'say "hi" \\ [x]', "bad key=]": 1, "seq": "clash", "n": None})
    r = Record(1, 1, 10, "DEBUG", 0, 1, "l" * 40, "m", "my proc", "Traceback...", extra)
    raw = format_message(r, pid=7, uid=0, ring_id=1, hostname="h h", facility=23)
    text = raw.decode()
    head, _, msg = text.partition("\ufeff")
    assert head.startswith("<191>1 1970-01-01T00:00:00.000000Z h_h my_proc 7 " + "l" * 32 + " [")
    assert msg == "m\nTraceback..."
    sd_id, params = parse_sd(head[head.index("[") : head.rindex("]") + 1])
    assert sd_id == "ashmem@32473"
    assert params["q"] == 'say "hi" \\ [x]'
    assert params["bad_key__"] == "1"
    assert params["x_seq"] == "clash" and params["seq"] == "1"
    assert params["n"] == "null"
    assert params["logger"] == "l" * 40


# -- against rsyslogd ------------------------------------------------------------------


def _emit_varied(tmp_path: Any) -> None:
    log = logging.getLogger("app.db")
    handler = ashmem.logd.Handler()
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    log.propagate = False
    try:
        log.warning("disk %d%% full", 91, extra={"mount": "/srv", "q": 'a"b]c\\d', "ü": "ß"})
        log.debug("héllo ✓ unicode")
        try:
            1 / 0  # noqa: B018
        except ZeroDivisionError:
            log.exception("boom")
        log.critical("multi\nline")
    finally:
        log.removeHandler(handler)
    ashmem.logd.get_logger("x" * 40).error("long logger name", n=3, flag=True)


@pytest.mark.parametrize("protocol", ["tcp", "relp"])
def test_every_field_rsyslog_parses_matches_the_record(
    tmp_path: Any, rsyslog: _rsyslog.Rsyslogd, protocol: str
) -> None:
    port = rsyslog.relp_port if protocol == "relp" else rsyslog.tcp_port
    logs = tmp_path / "logs"
    with ashmem.logd.start(logs, forward=[f"{protocol}://127.0.0.1:{port}?facility=local3"]):
        _emit_varied(tmp_path)
        ashmem.logd.flush(timeout=30)
        msgs = rsyslog.wait_for(lambda m: len(m) >= 5, what="5 messages")
    entries = list(ashmem.logd.read(logs))
    assert len(entries) == 5 and len(msgs) == 5
    got = {key_of(m): m for m in msgs}
    host = socket.gethostname()
    severities = {10: 7, 20: 6, 30: 4, 40: 3, 50: 2}
    for e in entries:
        r = e.record
        m = got[(str(e.pid), f"{e.ring_id:x}", r.seq)]
        assert m["pri"] == str(19 * 8 + severities[r.levelno])
        assert m["timestamp"] == e.to_json()["time"]  # microseconds, UTC
        assert m["hostname"] == host
        assert m["appname"] == r.process
        assert m["procid"] == str(os.getpid()) == str(e.pid)
        assert m["msgid"] == r.logger[:32]
        sd_id, params = parse_sd(m["sd"])
        assert sd_id == "ashmem@32473"
        expected = {
            "seq": str(r.seq), "ring": f"{e.ring_id:x}", "tid": str(r.tid),
            "uid": str(e.uid), "level": r.levelname,
        }  # fmt: skip
        if len(r.logger) > 32:
            expected["logger"] = r.logger
        for k, v in json.loads(r.extra).items():
            expected[k if k.isascii() else "_"] = v if isinstance(v, str) else json.dumps(v)
        assert params == expected
        body = r.message if r.exc is None else r.message + "\n" + r.exc
        assert m["msg"] == BOM + body
    assert any("ZeroDivisionError" in m["msg"] for m in msgs)


def test_relp_loses_nothing_when_rsyslogd_stops_mid_stream(
    tmp_path: Any, rsyslog: _rsyslog.Rsyslogd
) -> None:
    total = 12_000
    logs = tmp_path / "logs"
    emitted = threading.Event()
    relay_down = threading.Event()

    def emit() -> None:
        log = ashmem.logd.get_logger("restart")
        for i in range(total):
            log.info("record %d", i)
            if i == total // 3:
                relay_down.wait(30)  # the rest is written while rsyslogd is down
            if i % 500 == 0:
                time.sleep(0.005)
        emitted.set()

    with ashmem.logd.start(logs, forward=[f"relp://127.0.0.1:{rsyslog.relp_port}"]) as c:
        t = threading.Thread(target=emit)
        t.start()
        rsyslog.wait_for(lambda m: len(m) >= 1000, what="the first 1000 records")
        rsyslog.stop()
        relay_down.set()
        status = wait_status(c.address, lambda s: s["forward"][0]["last_error"] is not None)
        assert not status["forward"][0]["connected"]
        assert emitted.wait(60)
        t.join(30)
        ashmem.logd.flush(timeout=30)
        lag = collector_status(c.address)["forward"][0]["lag_records"]
        assert lag > 0  # what was written while the relay was down
        rsyslog.start()
        msgs = rsyslog.wait_for(
            lambda m: len({key_of(x) for x in m}) >= total, timeout=60, what="every record"
        )
        status = wait_status(c.address, lambda s: s["forward"][0]["lag_records"] == 0)
    stored = {(str(e.pid), f"{e.ring_id:x}", e.record.seq) for e in ashmem.logd.read(logs)}
    assert len(stored) == total
    keys = Counter(key_of(m) for m in msgs)
    assert set(keys) == stored  # nothing lost, nothing made up
    duplicates = sum(n - 1 for n in keys.values())
    f = status["forward"][0]
    assert f["connects"] >= 2
    assert duplicates <= f["resent"]  # every duplicate is one the forwarder counted
    print(f"RELP through a relay restart: {total} records, {duplicates} duplicates, "
          f"{f['resent']} resent")  # fmt: skip


def test_collector_sigkill_mid_forward_resumes_without_loss(
    tmp_path: Any, rsyslog: _rsyslog.Rsyslogd
) -> None:
    logs = tmp_path / "logs"
    forward = [f"relp://127.0.0.1:{rsyslog.relp_port}?window=64"]
    log = ashmem.logd.get_logger("killed")
    first = ashmem.logd.start(logs, forward=forward)
    try:
        for i in range(500):
            log.info("before %d", i)
        ashmem.logd.flush(timeout=30)
        rsyslog.wait_for(lambda m: len(m) >= 500, what="the first 500 records")
        rsyslog.pause()  # the relay stops answering: the forwarder is mid-stream
        for i in range(5000):
            log.info("during %d", i)
        ashmem.logd.flush(timeout=30)  # on disk, not forwarded
        status = wait_status(first.address, lambda s: s["forward"][0]["sent"] > 500)
        assert status["forward"][0]["lag_records"] > 0
        os.kill(first.pid, signal.SIGKILL)
        first.process.wait(30)
    finally:
        first.stop()
        rsyslog.resume()
    with ashmem.logd.start(logs, forward=forward) as second:
        for i in range(500):
            log.info("after %d", i)
        ashmem.logd.flush(timeout=30)
        msgs = rsyslog.wait_for(
            lambda m: len({key_of(x) for x in m}) >= 6000, timeout=60, what="every record"
        )
        wait_status(second.address, lambda s: s["forward"][0]["lag_records"] == 0)
    stored = {(str(e.pid), f"{e.ring_id:x}", e.record.seq) for e in ashmem.logd.read(logs)}
    assert len(stored) == 6000
    assert {key_of(m) for m in msgs} == stored


def test_100k_records_end_to_end(tmp_path: Any, rsyslog: _rsyslog.Rsyslogd) -> None:
    total = 100_000
    logs = tmp_path / "logs"
    with ashmem.logd.start(
        logs, ring_size=16 << 20, forward=[f"relp://127.0.0.1:{rsyslog.relp_port}"]
    ) as c:
        log = ashmem.logd.get_logger("bulk")
        for i in range(total):
            log.info("bulk %d", i)
        ashmem.logd.flush(timeout=60)
        msgs = rsyslog.wait_for(lambda m: len(m) >= total, timeout=90, what=f"{total} records")
        status = wait_status(c.address, lambda s: s["forward"][0]["lag_records"] == 0)
    assert len(msgs) == total
    stored = [e.record.seq for e in ashmem.logd.read(logs)]
    assert sorted(int(parse_sd(m["sd"])[1]["seq"]) for m in msgs) == sorted(stored)
    assert len(set(stored)) == total
    assert msgs[-1]["msg"] == f"{BOM}bulk {total - 1}"
    assert status["forward"][0]["confirmed"] == total


def test_tls_with_a_generated_ca_against_rsyslogd(tmp_path: Any) -> None:
    work = str(tmp_path / "rsyslog")
    os.makedirs(work)
    server, client = _rsyslog.make_tls(work)
    rs = _rsyslog.Rsyslogd(work, tls=server)
    rs.start()
    try:
        logs = tmp_path / "logs"
        ca, cert, key = client["ca"], client["cert"], client["key"]
        forward = [
            f"relp+tls://127.0.0.1:{rs.relp_tls_port}?ca={ca}&cert={cert}&key={key}"
            "&hostname=via-relp",
            f"tcp+tls://localhost:{rs.tcp_tls_port}?ca={ca}&hostname=via-tcp",
            # An unknown CA signed the server's certificate: nothing may be sent.
            f"tcp+tls://127.0.0.1:{rs.tcp_tls_port}?ca={client['other_ca']}&hostname=bad-ca",
            # The server asks for a client certificate and this one has none.
            f"relp+tls://localhost:{rs.relp_tls_port}?ca={ca}&hostname=no-client-cert",
        ]
        with ashmem.logd.start(logs, forward=forward) as c:
            log = ashmem.logd.get_logger("tls")
            for i in range(200):
                log.info("secret %d", i)
            ashmem.logd.flush(timeout=30)
            msgs = rs.wait_for(lambda m: len(m) >= 400, what="400 messages over TLS")
            status = wait_status(
                c.address,
                lambda s: (
                    s["forward"][0]["lag_records"] == s["forward"][1]["lag_records"] == 0
                    and s["forward"][2]["last_error"] is not None
                    and s["forward"][3]["last_error"] is not None
                ),
            )
        hosts = Counter(m["hostname"] for m in msgs)
        assert hosts == {"via-relp": 200, "via-tcp": 200}
        assert "CERTIFICATE_VERIFY_FAILED" in status["forward"][2]["last_error"]
        assert status["forward"][2]["confirmed"] == 0
        assert status["forward"][3]["confirmed"] == 0
        assert status["forward"][3]["lag_records"] == 200
    finally:
        rs.stop()


def test_retention_keeps_unforwarded_segments_and_status_shows_lag(tmp_path: Any) -> None:
    logs = tmp_path / "logs"
    dead = _rsyslog.free_port()  # nothing listens there
    options: dict[str, Any] = {
        "forward": [f"relp://127.0.0.1:{dead}"], "max_segment_bytes": 4096, "retain_bytes": 1,
    }  # fmt: skip
    log = ashmem.logd.get_logger("kept")
    padding = os.urandom(3000).hex()  # incompressible: every block rotates the segment
    with ashmem.logd.start(logs, **options) as c:
        for i in range(8):
            log.info("record %d %s", i, padding)
            ashmem.logd.flush(timeout=30)
        status = wait_status(
            c.address,
            lambda s: (
                s["forward"][0]["last_error"] is not None and s["forward"][0]["lag_records"] == 8
            ),
        )
        out = subprocess.run(
            [sys.executable, "-m", "ashmem", "logd", "status", "--socket", c.address],
            capture_output=True, text=True, timeout=60, check=True,
        ).stdout  # fmt: skip
    assert status["forward"][0]["lag_records"] == 8
    assert f"forward relp://127.0.0.1:{dead} (not connected): lag 8 records" in out
    assert "last error at" in out and "Connection refused" in out
    assert len(list(ashmem.logd.read(logs))) == 8  # retention deleted nothing
    kept = len([n for n in os.listdir(logs) if n.endswith(".alog")])
    assert kept >= 3  # retain_bytes=1 would have left one

    # With the override, retention deletes them anyway and counts the loss.
    with ashmem.logd.start(logs, retain_ignores_forward=True, **options) as c:
        for i in range(3):
            log.info("more %d %s", i, padding)
            ashmem.logd.flush(timeout=30)
        status = wait_status(c.address, lambda s: s["forward"][0]["lost"] > 0)
    assert len([n for n in os.listdir(logs) if n.endswith(".alog")]) < kept
    assert status["forward"][0]["lost"] >= 8


def test_graceful_restart_sends_nothing_twice(tmp_path: Any, rsyslog: _rsyslog.Rsyslogd) -> None:
    logs = tmp_path / "logs"
    forward = [
        f"relp://127.0.0.1:{rsyslog.relp_port}?hostname=relp",
        f"tcp://127.0.0.1:{rsyslog.tcp_port}?hostname=tcp",
    ]
    log = ashmem.logd.get_logger("twice")
    for run in range(2):
        with ashmem.logd.start(logs, forward=forward):
            for i in range(300):
                log.info("run %d record %d", run, i)
            ashmem.logd.flush(timeout=30)
        # stop() went on forwarding until both destinations had everything (RELP: in the
        # file already; plain TCP: sent, maybe not yet written by rsyslogd).
        relp = [m for m in rsyslog.messages() if m["hostname"] == "relp"]
        assert len(relp) == 300 * (run + 1)
        rsyslog.wait_for(lambda m, n=run: len(m) >= 600 * (n + 1), what="both destinations")
    keys = Counter(key_of(m) for m in rsyslog.messages())
    assert set(keys.values()) == {2}  # once per destination, never again after the restart
    assert len(keys) == 600


def test_lag_counts_records_beyond_the_read_ahead(tmp_path: Any) -> None:
    from ashmem.logd.forward import Forwarder

    logs = tmp_path / "logs"
    with ashmem.logd.start(logs):
        log = ashmem.logd.get_logger("lag")
        for i in range(1000):
            log.info("waiting %d", i)
        ashmem.logd.flush(timeout=30)
    forwarder = Forwarder(str(logs), f"relp://127.0.0.1:{_rsyslog.free_port()}", max_pending=64)
    forwarder.start()
    try:
        # The lag is known from the files at once; the refused connection is reported after
        # the first attempt: wait for both.
        deadline = time.monotonic() + 30
        status = forwarder.status()
        while (
            status["lag_records"] != 1000 or status["last_error"] is None
        ) and time.monotonic() < deadline:
            time.sleep(0.05)
            status = forwarder.status()
    finally:
        forwarder.stop()
    assert status["lag_records"] == 1000
    assert status["lag_seconds"] > 0
    assert "Connection refused" in (status["last_error"] or "")
    with open(forwarder.cursor_path) as f:
        cursor = json.load(f)
    assert cursor["v"] == 1 and cursor["done"] == []  # nothing confirmed, nothing skipped


def test_segments_encrypted_before_forwarding_are_passed_over(tmp_path: Any) -> None:
    from ashmem.logd._crypto import generate_keys
    from ashmem.logd.forward import Forwarder

    generate_keys(str(tmp_path / "ops"))
    logs = tmp_path / "logs"
    with ashmem.logd.start(logs, encrypt_to=str(tmp_path / "ops.pub")):
        ashmem.logd.get_logger("sealed").info("only ops.key can read this")
        ashmem.logd.flush(timeout=30)
    (segment,) = [p for p in os.listdir(logs) if p.endswith(".alog")]
    forwarder = Forwarder(str(logs), f"relp://127.0.0.1:{_rsyslog.free_port()}")
    forwarder.start()
    try:
        deadline = time.monotonic() + 30
        while not forwarder.may_delete(str(logs / segment)) and time.monotonic() < deadline:
            time.sleep(0.05)
        status = forwarder.status()
    finally:
        forwarder.stop()
    assert forwarder.may_delete(str(logs / segment))  # retention is not held up by it
    assert status["damaged"] == 1 and status["lag_records"] == 0


def test_one_destination_twice_is_refused_before_anything_starts(tmp_path: Any) -> None:
    with pytest.raises(ValueError, match="one destination twice"):
        ashmem.logd.start(tmp_path, forward=["relp://127.0.0.1:1", "relp://127.0.0.1:1?window=8"])
    cli = subprocess.run(
        [sys.executable, "-m", "ashmem", "logd", "--dir", str(tmp_path), "--socket",
         str(tmp_path / "s"), "--forward", "tcp://h:1", "--forward", "tcp://h:1"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert cli.returncode == 2
    assert cli.stderr.startswith("ashmem: forward names one destination twice")


def test_plain_tcp_reconnects_after_a_relay_restart(
    tmp_path: Any, rsyslog: _rsyslog.Rsyslogd
) -> None:
    # Plain TCP documents a loss window around a broken connection, so only what is written
    # once the relay is back is asserted to arrive; nothing may arrive twice.
    logs = tmp_path / "logs"
    log = ashmem.logd.get_logger("tcp-restart")
    with ashmem.logd.start(logs, forward=[f"tcp://127.0.0.1:{rsyslog.tcp_port}"]) as c:
        for i in range(100):
            log.info("before %d", i)
        ashmem.logd.flush(timeout=30)
        rsyslog.wait_for(lambda m: len(m) >= 100, what="the first 100 records")
        rsyslog.stop()
        wait_status(c.address, lambda s: not s["forward"][0]["connected"])
        rsyslog.start()
        for i in range(100):
            log.info("after %d", i)
        ashmem.logd.flush(timeout=30)
        msgs = rsyslog.wait_for(
            lambda m: sum(x["msg"].startswith(BOM + "after") for x in m) >= 100,
            what="the records written after the restart",
        )
        status = collector_status(c.address)["forward"][0]
    assert status["connects"] >= 2
    keys = Counter(key_of(m) for m in msgs)
    assert max(keys.values()) == 1
    assert [m["msg"] for m in msgs if "after" in m["msg"]] == [
        f"{BOM}after {i}" for i in range(100)
    ]
