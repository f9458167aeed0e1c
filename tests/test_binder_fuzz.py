"""A live service against hostile clients: garbage, half messages, too many descriptors,
disconnects mid-call, clients that never read, and thousands of fuzzed messages.

The service runs in its own process. After each attack it must still answer everyone else,
and its descriptor count (``/proc/<pid>/fd``) must come back to where it was: whatever a
client sent, every descriptor it carried was closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ashmem import binder
from ashmem.binder import (
    FIRST_CALL_TRANSACTION,
    FLAG_ONEWAY,
    PING_TRANSACTION,
    BadParcel,
    Binder,
    Parcel,
    RemoteError,
    _limits,
    _pool,
    _wire,
)

from .conftest import scaled

pytestmark = pytest.mark.timeout(60)

ECHO = FIRST_CALL_TRANSACTION
DECODE = 2
SLEEP = 3
BOOM = 4
NOTHING = 5
GATE = 6

READERS = [
    "read_int",
    "read_long",
    "read_float",
    "read_double",
    "read_bool",
    "read_string",
    "read_bytes",
    "read_file_descriptor",
    "read_shared_memory",
    "read_binder",
    "read_int_list",
    "read_long_list",
    "read_double_list",
    "read_bool_list",
    "read_string_list",
]


class FuzzTarget(Binder):
    """ECHO, DECODE (decode whatever arrived, entry by entry), SLEEP, BOOM."""

    def __init__(self) -> None:
        # Thousands of bad calls are the point here: keep the service's log quiet.
        logging.getLogger("ashmem.binder").setLevel(logging.CRITICAL)

    def on_transact(self, code: int, data: Parcel, reply: Parcel, flags: int) -> bool:
        if code == ECHO:
            reply.write_string(data.read_string())
        elif code == DECODE:
            reply.write_int(decode_everything(data))
        elif code == SLEEP:
            time.sleep(data.read_double())
        elif code == GATE:
            # Held until the test writes to the pipe whose read end came with the call.
            fd = data.read_file_descriptor()
            try:
                select.select([fd], [], [], 30)
            finally:
                os.close(fd)
        elif code == BOOM:
            raise RuntimeError("boom")
        elif code != NOTHING:
            return False
        return True


def decode_everything(data: Parcel) -> int:
    entries = 0
    while data.data_avail():
        for name in READERS:
            position = data.data_position()
            try:
                value = getattr(data, name)()
            except BadParcel:
                data.set_data_position(position)
                continue
            if name == "read_file_descriptor":
                os.close(value)
            elif hasattr(value, "close"):
                value.close()
            entries += 1
            break
        else:
            raise BadParcel(f"nothing decodes at offset {data.data_position()}")
    return entries


def service_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@pytest.fixture(scope="module")
def target() -> Iterator[binder.ServiceProcess]:
    with binder.start_service(
        FuzzTarget, f"test.fuzz.{os.getpid()}", timeout=scaled(30)
    ) as service:
        yield service


@pytest.fixture
def baseline(target: binder.ServiceProcess) -> Iterator[int]:
    """The service's fd count before the test; checked again after it."""
    assert target.binder.ping()
    target.binder.transact(NOTHING, None, None, FLAG_ONEWAY)  # opens our one-way channel
    assert target.binder.ping()
    before = service_fds(target.pid)
    yield before
    settle(target, before)


def settle(target: binder.ServiceProcess, expected: int, within: float = 5.0) -> None:
    """Wait for the service to close what the test's clients left behind."""
    deadline = time.monotonic() + within
    while service_fds(target.pid) != expected and time.monotonic() < deadline:
        time.sleep(0.01)
    assert service_fds(target.pid) == expected, "the service leaked descriptors"
    assert echo(target.binder, "still here") == "still here"


def echo(proxy: binder.Proxy, text: str) -> str | None:
    with Parcel() as data, Parcel() as reply:
        data.write_string(text)
        assert proxy.transact(ECHO, data, reply, timeout=scaled(10))
        return reply.read_string()


def path_of(target: binder.ServiceProcess) -> str:
    return os.path.join(binder.service_directory(), target.name)


def header(kind: int, flags: int = 0, nfds: int = 0, code: int = 0, seq: int = 0) -> bytes:
    return _wire.pack(kind, flags, nfds, code, seq)


def raw_client(target: binder.ServiceProcess, hello: bool = True) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.settimeout(5)
    sock.connect(path_of(target))
    if hello:
        sock.send(header(_wire.HELLO))
        assert sock.recv(_wire.MAX_MESSAGE)[3] == _wire.WELCOME
    return sock


def responses(sock: socket.socket) -> Iterator[tuple[int, int, int, bytes]]:
    """Every message the service sends until it hangs up: (kind, code, seq, payload)."""
    while True:
        try:
            msg, anc, mflags, _ = sock.recvmsg(_wire.MAX_MESSAGE, _wire.CMSG_SPACE)
        except ConnectionResetError:
            return
        fds = _wire.take_fds(anc)
        _wire.close_fds(fds)
        if not msg:
            return
        kind, _, code, seq = _wire.check(msg, mflags, len(fds))  # always well-formed
        yield kind, code, seq, msg[_wire.HEADER_SIZE :]


# -- deterministic attacks ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "garbage",
    [b"", b"x", b"AB", header(_wire.HELLO)[:10], b"GET / HTTP/1.1\r\n\r\n", os.urandom(300)],
)
def test_garbage_and_half_messages_are_refused(
    target: binder.ServiceProcess, baseline: int, garbage: bytes
) -> None:
    with raw_client(target, hello=False) as sock:
        sock.send(garbage)
        answers = list(responses(sock))
    assert [kind for kind, *_ in answers] in ([_wire.REFUSED], [])


def test_a_message_before_hello_is_refused(target: binder.ServiceProcess, baseline: int) -> None:
    with raw_client(target, hello=False) as sock:
        sock.send(header(_wire.TRANSACTION, code=ECHO))
        ((kind, code, _, reason),) = list(responses(sock))
    assert (kind, code) == (_wire.REFUSED, _wire.REFUSED_PROTOCOL)
    assert b"HELLO" in reason


def test_a_newer_protocol_version_is_refused_with_a_reason(
    target: binder.ServiceProcess, baseline: int
) -> None:
    with raw_client(target, hello=False) as sock:
        sock.send(b"AB\x02" + header(_wire.HELLO)[3:])
        ((kind, code, _, reason),) = list(responses(sock))
    assert (kind, code) == (_wire.REFUSED, _wire.REFUSED_VERSION)
    assert b"version 2" in reason


def test_too_many_descriptors_are_all_closed(target: binder.ServiceProcess, baseline: int) -> None:
    read_end, write_end = os.pipe()
    try:
        with raw_client(target) as sock:
            sock.sendmsg(
                [header(_wire.TRANSACTION, nfds=70, code=DECODE)],
                _wire.rights([read_end] * 70),
            )
            ((kind, code, _, reason),) = list(responses(sock))
        assert (kind, code) == (_wire.REFUSED, _wire.REFUSED_PROTOCOL)
        assert b"more than 64" in reason
    finally:
        os.close(read_end)
        os.close(write_end)


def test_declared_and_carried_descriptor_counts_must_match(
    target: binder.ServiceProcess, baseline: int
) -> None:
    read_end, write_end = os.pipe()
    try:
        with raw_client(target) as sock:
            sock.sendmsg([header(_wire.TRANSACTION, nfds=3, code=DECODE)], _wire.rights([read_end]))
            ((kind, _, _, reason),) = list(responses(sock))
        assert kind == _wire.REFUSED and b"declares 3" in reason
    finally:
        os.close(read_end)
        os.close(write_end)


def test_a_fake_spilled_payload_is_refused(target: binder.ServiceProcess, baseline: int) -> None:
    read_end, write_end = os.pipe()
    try:
        with raw_client(target) as sock:
            sock.sendmsg(
                [header(_wire.TRANSACTION, flags=_wire.F_SPILLED, nfds=1, code=DECODE)],
                _wire.rights([read_end]),
            )
            ((kind, _, _, reason),) = list(responses(sock))
        assert kind == _wire.REFUSED and b"not an ashmem region" in reason
    finally:
        os.close(read_end)
        os.close(write_end)


def test_disconnecting_mid_transaction(target: binder.ServiceProcess, baseline: int) -> None:
    gate_read, gate_write = os.pipe()
    try:
        with raw_client(target) as sock, Parcel() as data:
            data.write_file_descriptor(gate_read)
            out = data._outgoing()
            sock.sendmsg(
                [header(_wire.TRANSACTION, nfds=len(out.fds), code=GATE, seq=1), *out.parts],
                _wire.rights(out.fds),
            )
        # The held call keeps one pool thread (its caller is gone); everyone else is still
        # served meanwhile: this answer comes while the gate is closed.
        assert echo(target.binder, "meanwhile") == "meanwhile"
    finally:
        os.write(gate_write, b"x")
        os.close(gate_read)
        os.close(gate_write)


@pytest.mark.parametrize("code", [ECHO, NOTHING], ids=["replies with data", "empty replies"])
def test_a_client_that_never_reads_its_replies_is_dropped(
    target: binder.ServiceProcess, baseline: int, code: int
) -> None:
    # Empty replies take the service's lingering path, which sends each one together with
    # the next receive (send_recv_fds): a full caller must be dropped there too.
    with raw_client(target) as sock, Parcel() as data:
        if code == ECHO:
            data.write_string("x" * 1000)
        parts = data._outgoing().parts
        message = [header(_wire.TRANSACTION, code=code), *parts]
        deadline = time.monotonic() + 20
        dropped = False
        while not dropped and time.monotonic() < deadline:
            try:
                sock.sendmsg(message, (), socket.MSG_DONTWAIT)
            except BlockingIOError:
                time.sleep(0.005)
            except (BrokenPipeError, ConnectionResetError):
                dropped = True
            assert echo(target.binder, "others first") == "others first"
        assert dropped, "the service kept a client that never reads"


def test_exceptions_never_kill_the_pool(target: binder.ServiceProcess, baseline: int) -> None:
    for _ in range(40):
        target.binder.transact(BOOM, None, None, FLAG_ONEWAY)
        with pytest.raises(RemoteError, match=r"RuntimeError.*boom"):
            target.binder.transact(BOOM, timeout=scaled(10))
    assert echo(target.binder, "alive") == "alive"


class Gate(Binder):
    def __init__(self) -> None:
        self.open = threading.Event()
        self.seen: list[int] = []

    def on_transact(self, code: int, data: Parcel, reply: Parcel, flags: int) -> bool:
        self.open.wait(20)
        self.seen.append(data.read_int())
        return True


def test_a_oneway_flood_pushes_back_on_its_sender(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_limits, "_current", _limits.Limits(oneway_backlog=4))
    gate = Gate()
    name = f"test.flood.{os.getpid()}"
    with binder.add_service(name, gate), binder.get_service(name) as proxy:
        sent = 0
        with pytest.raises(TimeoutError):  # the queue and socket buffers fill, then we wait
            for sent in range(100_000):
                with Parcel() as data:
                    data.write_int(sent)
                    proxy.transact(ECHO, data, None, FLAG_ONEWAY, timeout=scaled(0.5))
        assert 4 < sent < 100_000
        gate.open.set()
        deadline = time.monotonic() + 20
        while len(gate.seen) < sent and time.monotonic() < deadline:
            time.sleep(0.01)
        assert gate.seen == list(range(sent))  # nothing lost, nothing reordered


# -- fuzzing the wire protocol against the live service ----------------------------------------

SENTINEL = 0xC0FFEE


def _valid_parcels() -> list[bytes]:
    parcels = []
    for write, value in [
        ("write_string", "hello"),
        ("write_int_list", [1, 2]),
        ("write_bytes", b"\x00" * 5),
        ("write_bool", True),
    ]:
        p = Parcel()
        getattr(p, write)(value)
        parcels.append(p.marshall())
    parcels.append(b"\x09\x00\x00\x00\x00")  # an fd entry, index 0
    parcels.append(b"\x0a\x01\x00\x00\x00")  # a region entry, index 1
    return parcels


VALID_PARCELS = _valid_parcels()


@st.composite
def frames(draw: st.DrawFn) -> tuple[bytes, int]:
    """One datagram and how many descriptors to attach to it."""
    fds = draw(st.sampled_from([0, 0, 0, 1, 2, 65]))
    shape = draw(st.sampled_from(["noise", "header", "call"]))
    if shape == "noise":
        return draw(st.binary(max_size=40)), fds
    payload = draw(st.one_of(st.binary(max_size=48), st.sampled_from(VALID_PARCELS)))
    if shape == "call":  # a well-formed call, so the fuzz reaches the decoders
        flags = draw(st.sampled_from([0, 0, _wire.F_ONEWAY]))
        code = draw(st.sampled_from([DECODE, DECODE, ECHO, PING_TRANSACTION, 0, 2**24]))
        return header(_wire.TRANSACTION, flags, fds, code, draw(st.integers(0, 99))) + payload, fds
    raw = struct.pack(
        "<2sBBBBHII",
        draw(st.sampled_from([b"AB", b"AB", b"BA"])),
        draw(st.sampled_from([1, 1, 1, 0, 2])),
        draw(st.integers(0, 8)),
        draw(st.sampled_from([0, 1, 2, 3, 4, 0x80])),
        draw(st.sampled_from([fds, fds, 0, 1, 64, 255])),
        draw(st.sampled_from([0, 0, 1])),
        draw(st.sampled_from([DECODE, ECHO, BOOM, PING_TRANSACTION, 0])),  # never SLEEP
        draw(st.integers(0, 2**32 - 1)),
    )
    return raw + payload, fds


@pytest.fixture(scope="module")
def attached() -> Iterator[list[int]]:
    """Descriptors the fuzzer attaches: a pipe end and a region, as many times as asked."""
    import ashmem

    r, w = os.pipe()
    os.close(w)
    region = ashmem.region.create_region("fuzz", 4096)
    yield [r, region]
    os.close(r)
    os.close(region)


@pytest.mark.timeout(120)
def test_property_fuzzed_messages_never_hurt_the_service(
    target: binder.ServiceProcess, attached: list[int]
) -> None:
    assert target.binder.ping()
    target.binder.transact(NOTHING, None, None, FLAG_ONEWAY)
    assert target.binder.ping()
    before = service_fds(target.pid)
    examples = 0

    @settings(
        max_examples=4500,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(hello=st.booleans(), datagrams=st.lists(frames(), min_size=1, max_size=4))
    def attack(hello: bool, datagrams: list[tuple[bytes, int]]) -> None:
        nonlocal examples
        examples += 1
        with raw_client(target, hello) as sock:
            for datagram, count in datagrams:
                fds = [attached[i % 2] for i in range(count)]
                try:
                    sock.sendmsg([datagram], _wire.rights(fds), socket.MSG_DONTWAIT)
                except OSError as exc:  # refused and closed already
                    assert exc.errno in (errno.EPIPE, errno.ECONNRESET, errno.EAGAIN)
                    break
            # Whatever came before, the service answers this or has hung up: it never
            # hangs, and everything it sends is well-formed.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                sock.send(header(_wire.TRANSACTION, code=PING_TRANSACTION, seq=SENTINEL))
            for kind, _, seq, _ in responses(sock):
                assert kind in (_wire.WELCOME, _wire.REPLY, _wire.EXCEPTION, _wire.REFUSED)
                if kind == _wire.REPLY and seq == SENTINEL:
                    break

    attack()
    assert examples >= 4500
    settle(target, before)


# -- one-way datagrams: a peer may still send them on a connection, mixed with anything -------

HOLD, RECORD = 7, 8


class Recorder(Binder):
    """HOLD blocks until ``release``; every call is recorded as (int read, has fds)."""

    def __init__(self) -> None:
        self.held = threading.Event()
        self.release = threading.Event()
        self.seen: list[tuple[int, bool]] = []

    def on_transact(self, code: int, data: Parcel, reply: Parcel, flags: int) -> bool:
        self.seen.append((data.read_int(), data.has_file_descriptors()))
        if code == HOLD:
            self.held.set()
            self.release.wait(20)
        elif code == BOOM:
            raise RuntimeError("boom")
        return code in (HOLD, RECORD, BOOM)


def test_oneway_datagrams_mixed_with_other_messages_run_in_order_with_every_check(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """While the service runs one one-way call sent as a datagram, the same connection
    queues plain one-way datagrams, one carrying a descriptor, one that raises, a two-way
    call and garbage: all run in order, the two-way call is answered, the garbage refused,
    and the descriptor is closed by the service."""
    caplog.set_level(logging.CRITICAL, logger="ashmem.binder")  # BOOM is expected (restored)
    recorder = Recorder()
    name = f"test.batch.{os.getpid()}"
    read_end, write_end = os.pipe()
    oneway = _wire.F_ONEWAY

    def call(kind: int, flags: int, code: int, value: int, fds: list[int], seq: int = 0) -> None:
        with Parcel() as data:
            data.write_int(value)
            parts = data._outgoing().parts
        sock.sendmsg(
            [header(kind, flags, len(fds), code, seq), *parts], _wire.rights(fds) if fds else []
        )

    try:
        with binder.add_service(name, recorder):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            sock.settimeout(scaled(10))
            with sock:
                sock.connect(os.path.join(binder.service_directory(), name))
                sock.send(header(_wire.HELLO))
                assert sock.recv(_wire.MAX_MESSAGE)[3] == _wire.WELCOME
                call(_wire.TRANSACTION, oneway, HOLD, 0, [])
                assert recorder.held.wait(scaled(10))
                call(_wire.TRANSACTION, oneway, RECORD, 1, [])
                call(_wire.TRANSACTION, oneway, BOOM, 2, [])
                call(_wire.TRANSACTION, oneway, RECORD, 3, [])
                call(_wire.TRANSACTION, oneway, RECORD, 4, [read_end])
                call(_wire.TRANSACTION, oneway, RECORD, 5, [])
                call(_wire.TRANSACTION, 0, RECORD, 6, [], seq=77)
                sock.send(b"AB\x01" + b"\xff" * 13)  # an unknown kind
                os.close(read_end)
                read_end = -1
                recorder.release.set()
                answers = list(responses(sock))
        with_fd = [value == 4 for value in range(7)]
        assert recorder.seen == list(zip(range(7), with_fd, strict=True))
        assert [(kind, code, seq) for kind, code, seq, _ in answers] == [
            (_wire.REPLY, _wire.STATUS_OK, 77),
            (_wire.REFUSED, _wire.REFUSED_PROTOCOL, 0),
        ]
        # The service closed its copy of the pipe's read end: writing finds no reader.
        with pytest.raises(BrokenPipeError):
            os.write(write_end, b"x")
    finally:
        for fd in (read_end, write_end):
            if fd >= 0:
                os.close(fd)


# -- the one-way stream: records, descriptors bound to them, cut records, hostile streams ------


def stream_of(path: str) -> socket.socket:
    """A one-way stream asked for over a raw connection (HELLO, STREAM), as a Proxy does."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as sock:
        sock.settimeout(scaled(10))
        sock.connect(path)
        sock.send(header(_wire.HELLO))
        assert sock.recv(_wire.MAX_MESSAGE)[3] == _wire.WELCOME
        sock.send(header(_wire.STREAM, seq=5))
        msg, anc, mflags, _ = sock.recvmsg(_wire.MAX_MESSAGE, _wire.CMSG_SPACE)
        (fd,) = _wire.take_fds(anc)
        kind, _, status, seq = _wire.check(msg, mflags, 1)
        assert (kind, status, seq) == (_wire.REPLY, _wire.STATUS_OK, 5)
        # The connection that asked is closed: the service reads the stream instead.
        assert sock.recv(_wire.MAX_MESSAGE) == b""
    stream = socket.socket(fileno=fd)
    assert (stream.family, stream.type) == (socket.AF_UNIX, socket.SOCK_STREAM)
    stream.settimeout(scaled(10))
    return stream


def record_of(code: int, value: int, fds: list[int] | None = None, pad: int = 0) -> Parcel:
    """A Parcel holding ``value``, then ``pad`` bytes, then ``fds``."""
    data = Parcel()
    data.write_int(value)
    if pad:
        data.write_bytes(bytes(pad))
    for fd in fds or ():
        data.write_file_descriptor(fd)
    return data


def record_bytes(code: int, data: Parcel) -> bytes:
    out = data._outgoing()
    assert not out.fds
    return _wire.record(code, out) + b"".join(bytes(part) for part in out.parts)


def held_fds() -> int:
    """Descriptors this process's one-way streams hold while waiting for their records."""
    state = _pool.current_state()
    assert state is not None
    with state._held_lock:
        return sum(books[1] for books in state._held.values())


def held_bytes() -> int:
    """Bytes this process's one-way streams hold while waiting for their records."""
    state = _pool.current_state()
    assert state is not None
    with state._held_lock:
        return sum(books[0] for books in state._held.values())


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + scaled(10)
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert condition(), what


def test_a_oneway_stream_runs_every_shape_in_order(caplog: pytest.LogCaptureFixture) -> None:
    """Records queued behind a held call: plain, raising, with a descriptor, spilled, one
    sent a byte at a time, then a record cut in the middle and the stream closed. All but
    the cut one run, in order; the descriptor is closed by the service; the cut one never
    runs, and the stream's end is noticed (the connection goes away)."""
    caplog.set_level(logging.CRITICAL, logger="ashmem.binder")  # BOOM is expected (restored)
    recorder = Recorder()
    name = f"test.stream.{os.getpid()}"
    read_end, write_end = os.pipe()

    def send(code: int, value: int, fds: list[int] | None = None, pad: int = 0) -> None:
        with record_of(code, value, fds, pad) as data:
            out = data._outgoing()
            try:
                _wire.send_record(stream, code, out, _wire.SEND_FLAGS)
            finally:
                out.close()

    try:
        with binder.add_service(name, recorder):
            before = binder.statistics().connections
            stream = stream_of(os.path.join(binder.service_directory(), name))
            with stream:
                send(HOLD, 0)
                assert recorder.held.wait(scaled(10))
                send(RECORD, 1)
                send(BOOM, 2)
                send(RECORD, 3, [read_end])
                send(RECORD, 4, pad=2 * _wire.MAX_INLINE)  # spilled into a sealed region
                os.close(read_end)
                read_end = -1
                recorder.release.set()
                with record_of(RECORD, 5, pad=100) as data:
                    whole = record_bytes(RECORD, data)
                for i in range(len(whole)):  # received in pieces: a record across reads
                    stream.send(whole[i : i + 1])
                send(RECORD, 6)
                with record_of(RECORD, 7, pad=100) as data:
                    stream.send(record_bytes(RECORD, data)[:40])  # cut: never complete
            wait_for(lambda: binder.statistics().connections == before, "the stream is closed")
        assert recorder.seen == [(value, value == 3) for value in range(7)]
        with pytest.raises(BrokenPipeError):  # the service closed its copy of the read end
            os.write(write_end, b"x")
    finally:
        for fd in (read_end, write_end):
            if fd >= 0:
                os.close(fd)


@pytest.mark.parametrize(
    "attack",
    [
        "garbage",
        "too long",
        "two-way call",
        "hello",
        "fewer descriptors than declared",
        "descriptors ahead of records",
        "descriptors cut off",
        "fake spill",
    ],
)
def test_a_hostile_oneway_stream_is_dropped_with_all_it_held(
    target: binder.ServiceProcess, baseline: int, attack: str
) -> None:
    oneway = _wire.F_ONEWAY
    read_end, write_end = os.pipe()
    try:
        with stream_of(path_of(target)) as stream:
            if attack == "garbage":
                stream.send(b"XY" + bytes(14))
            elif attack == "too long":
                stream.send(header(_wire.TRANSACTION, oneway, 0, DECODE, _wire.MAX_INLINE + 1))
            elif attack == "two-way call":
                stream.send(header(_wire.TRANSACTION, 0, 0, DECODE, 0))
            elif attack == "hello":
                stream.send(header(_wire.HELLO))
            elif attack == "fewer descriptors than declared":
                stream.sendmsg(
                    [header(_wire.TRANSACTION, oneway, 2, DECODE, 0)], _wire.rights([read_end])
                )
            elif attack == "descriptors ahead of records":
                for _ in range(3):  # one byte each: no record ever claims them
                    stream.sendmsg([b"A"], _wire.rights([read_end] * 64))
            elif attack == "descriptors cut off":
                too_many = _wire.rights([read_end] * 70)
                stream.sendmsg([header(_wire.TRANSACTION, oneway, 64, DECODE, 0)], too_many)
            else:
                stream.sendmsg(
                    [header(_wire.TRANSACTION, oneway | _wire.F_SPILLED, 1, DECODE, 0)],
                    _wire.rights([read_end]),
                )
            # The service drops the stream: reading it ends (after a REFUSED, for a bad
            # payload), and nothing it held stays open there (``baseline``).
            with contextlib.suppress(ConnectionResetError):
                while stream.recv(4096):
                    pass
    finally:
        os.close(read_end)
        os.close(write_end)


def test_a_stream_asked_for_while_its_service_closes_runs_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The service closes between answering STREAM and serving the new stream in place of
    the connection that asked (``_register``): the stream is dropped, and a record sent on
    it never reaches the binder."""
    recorder = Recorder()
    recorder.release.set()
    name = f"test.stream.closing.{os.getpid()}"
    service = binder.add_service(name, recorder)
    state = _pool.current_state()
    assert state is not None
    register = state._register
    closed = threading.Event()

    def close_first(conn: Any, stream: socket.socket) -> bool:
        service.close()  # close_node runs while conn still reads its old socket
        closed.set()
        return register(conn, stream)

    monkeypatch.setattr(state, "_register", close_first)
    before = binder.statistics().connections
    try:
        with stream_of(os.path.join(binder.service_directory(), name)) as stream:
            assert closed.wait(scaled(10))
            with (
                contextlib.suppress(BrokenPipeError, ConnectionResetError),
                record_of(RECORD, 1) as data,
            ):
                stream.send(record_bytes(RECORD, data))
            # The service's end goes away: reading ours ends.
            with contextlib.suppress(ConnectionResetError):
                while stream.recv(4096):
                    pass
        # The thread that would have run the record drops the stream only after it: by now
        # the record ran, or never will.
        assert recorder.seen == []
        wait_for(lambda: binder.statistics().connections == before, "nothing of it is kept")
    finally:
        service.close()


def test_oneway_calls_of_every_shape_keep_their_order_through_a_proxy() -> None:
    """Blocking and asyncio one-way calls on one Proxy, with and without a descriptor,
    spilled or not, share its stream and run in the order they were sent."""
    recorder = Recorder()
    recorder.release.set()
    name = f"test.stream.order.{os.getpid()}"
    read_end, write_end = os.pipe()
    try:
        with binder.add_service(name, recorder), binder.get_service(name) as proxy:

            async def main() -> None:
                for value in range(40):
                    fds = [read_end] if value % 4 == 1 else []
                    pad = 2 * _wire.MAX_INLINE if value % 4 == 2 else 0
                    with record_of(RECORD, value, fds, pad) as data:
                        if value % 2:
                            await proxy.transact_async(
                                RECORD, data, flags=FLAG_ONEWAY, timeout=scaled(10)
                            )
                        else:
                            assert proxy.transact(RECORD, data, None, FLAG_ONEWAY)

            asyncio.run(main())
            wait_for(lambda: len(recorder.seen) >= 40, "every call ran")
        assert recorder.seen == [(value, value % 4 == 1) for value in range(40)]
    finally:
        os.close(read_end)
        os.close(write_end)


def test_an_async_sender_waits_on_a_full_stream_and_sends_whole_records() -> None:
    """While the service holds a call, 60 KB records fill the stream and the asyncio sender
    waits with part of a record sent; once released, every record arrives whole, in
    order, and the loop ran meanwhile."""
    recorder = Recorder()
    name = f"test.stream.full.{os.getpid()}"
    count = 20
    with binder.add_service(name, recorder), binder.get_service(name) as proxy:
        assert proxy.transact(HOLD, record_of(HOLD, 0), None, FLAG_ONEWAY)
        assert recorder.held.wait(scaled(10))
        sent = 0

        async def sender() -> None:
            nonlocal sent
            for value in range(1, count + 1):
                with record_of(RECORD, value, pad=60_000) as data:
                    await proxy.transact_async(RECORD, data, flags=FLAG_ONEWAY, timeout=scaled(30))
                sent += 1

        async def main() -> int:
            task = asyncio.ensure_future(sender())
            while True:  # until the sender stops making progress: the stream is full
                before = sent
                await asyncio.sleep(0.05)
                if sent == before or task.done():
                    break
            held_back = sent
            recorder.release.set()
            await task
            return held_back

        held_back = asyncio.run(main())
        assert held_back < count  # 1.2 MB cannot fit in the stream while nobody reads it
        wait_for(lambda: len(recorder.seen) >= count + 1, "every call ran")
    assert recorder.seen == [(value, False) for value in range(count + 1)]


def test_a_send_cut_by_its_timeout_never_runs_and_the_next_call_reconnects() -> None:
    """A blocking one-way send that times out part-way through a record closes the stream:
    that record never runs, the ones before it all do, and the next call opens a new
    stream."""
    recorder = Recorder()
    name = f"test.stream.cut.{os.getpid()}"
    with binder.add_service(name, recorder), binder.get_service(name) as proxy:
        assert proxy.transact(HOLD, record_of(HOLD, 0), None, FLAG_ONEWAY)
        assert recorder.held.wait(scaled(10))
        cut = 0
        with pytest.raises(TimeoutError):
            for cut in range(1, 1000):
                with record_of(RECORD, cut, pad=60_000) as data:
                    proxy.transact(RECORD, data, None, FLAG_ONEWAY, timeout=scaled(0.3))
        assert 1 < cut < 1000
        recorder.release.set()
        assert proxy.transact(RECORD, record_of(RECORD, 5000), None, FLAG_ONEWAY)
        wait_for(lambda: len(recorder.seen) >= cut + 1, "every call ran")
        assert proxy.ping(timeout=scaled(10))
    values = [value for value, _ in recorder.seen]
    # Two streams are read independently: the old one's records in order, then or
    # meanwhile the new one's.
    assert sorted(values) == [*range(cut), 5000]
    assert [value for value in values if value != 5000] == list(range(cut))


def test_streams_stalled_mid_record_hold_no_more_than_their_uid_may(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Streams that stop in the middle of a record keep its bytes and descriptors until
    the rest comes; together, one uid's may hold at most ``oneway_backlog_fds``
    descriptors (and ``oneway_backlog_bytes``): the stream that would go past is dropped,
    the others finish their records, which run with every descriptor."""
    monkeypatch.setattr(_limits, "_current", _limits.Limits(oneway_backlog_fds=100))
    recorder = Recorder()
    recorder.release.set()
    name = f"test.stream.held.{os.getpid()}"
    read_end, write_end = os.pipe()
    try:
        with binder.add_service(name, recorder):
            path = os.path.join(binder.service_directory(), name)
            refused = binder.statistics().refused_connections
            streams = [stream_of(path) for _ in range(3)]
            rests = []
            for value, stream in enumerate(streams):
                with record_of(RECORD, value, [read_end] * 40, pad=100) as data:
                    out = data._outgoing()
                    whole = _wire.record(RECORD, out) + b"".join(bytes(p) for p in out.parts)
                    stream.sendmsg([whole[:30]], _wire.rights(list(out.fds)))
                rests.append(whole[30:])
                if value < 2:  # held and booked: 40, then 80 descriptors
                    wait_for(lambda v=value: held_fds() >= 40 * (v + 1), "booked")
                    assert held_fds() == 40 * (value + 1)
            # The third would take the uid to 120 > 100: dropped, its 40 closed.
            assert streams[2].recv(4096) == b""
            assert binder.statistics().refused_connections == refused + 1
            for stream, rest in zip(streams[:2], rests, strict=False):
                stream.send(rest)
            wait_for(lambda: len(recorder.seen) >= 2, "both records ran")
            # Two streams are read independently: either record may run first.
            assert sorted(recorder.seen) == [(0, True), (1, True)]
            for stream in streams:
                stream.close()
    finally:
        os.close(read_end)
        os.close(write_end)


def test_a_record_longer_than_allowed_after_a_pause_drops_the_stream() -> None:
    """Half a header, then (once the service waits for the rest) the other half declaring
    more than MAX_INLINE bytes, and that many: the stream is dropped, not looped over."""
    recorder = Recorder()
    name = f"test.stream.long.{os.getpid()}"
    with binder.add_service(name, recorder):
        with stream_of(os.path.join(binder.service_directory(), name)) as stream:
            head = header(_wire.TRANSACTION, _wire.F_ONEWAY, 0, RECORD, _wire.MAX_INLINE + 8)
            stream.send(head[:8])
            wait_for(lambda: held_bytes() == 8, "the service waits for the rest")
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                stream.sendall(head[8:] + bytes(_wire.MAX_INLINE + 8))
            with contextlib.suppress(ConnectionResetError):
                assert stream.recv(4096) == b""
        assert recorder.seen == []
        wait_for(lambda: held_bytes() == 0, "nothing is held any more")


def test_a_record_left_unfinished_is_dropped_after_hello_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A record cut short that carries the sender's own end of the stream: the stream
    never reports end-of-file by itself, so the deadline drops it and what it held."""
    monkeypatch.setattr(_limits, "_current", _limits.Limits(hello_timeout=scaled(0.5)))
    name = f"test.stream.stalled.{os.getpid()}"
    with binder.add_service(name, Recorder()):
        before = binder.statistics().connections
        stream = stream_of(os.path.join(binder.service_directory(), name))
        head = header(_wire.TRANSACTION, _wire.F_ONEWAY, 1, RECORD, 100)
        stream.sendmsg([head + b"x"], _wire.rights([stream.fileno()]))
        stream.close()
        wait_for(lambda: held_fds() == 1, "the service holds the descriptor")
        wait_for(lambda: held_fds() == 0, "the deadline dropped the stream")
        wait_for(lambda: binder.statistics().connections == before, "the stream is closed")


def test_a_stream_the_service_drops_is_busy_not_dead_and_replaced() -> None:
    """The service drops a Proxy's one-way stream while it lives (it ran short): the next
    one-way call gets ServiceBusyError, the Proxy stays alive and later calls run."""
    recorder = Recorder()
    recorder.release.set()
    name = f"test.stream.dropped.{os.getpid()}"
    with binder.add_service(name, recorder), binder.get_service(name) as proxy:
        assert proxy.transact(RECORD, record_of(RECORD, 0), None, FLAG_ONEWAY)
        wait_for(lambda: len(recorder.seen) == 1, "the first call ran")
        state = _pool.current_state()
        assert state is not None
        (ours,) = [h for h in list(state._handlers.values()) if getattr(h, "stream", None)]
        ours.sock.shutdown(socket.SHUT_RDWR)  # as the service does when it drops one
        wait_for(lambda: ours.fd not in state._handlers, "the service dropped the stream")
        with pytest.raises(binder.ServiceBusyError, match="dropped this Proxy's one-way"):
            for value in range(1, 100):  # the first send may still fit in a closing socket
                proxy.transact(RECORD, record_of(RECORD, value), None, FLAG_ONEWAY)
        assert proxy.is_binder_alive()
        assert proxy.transact(RECORD, record_of(RECORD, 1000), None, FLAG_ONEWAY)
        wait_for(lambda: recorder.seen[-1:] == [(1000, False)], "a later call ran")
