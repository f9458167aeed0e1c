"""``recv_fds``: the compiled twin (``ashmem._speedups``) and the pure-Python one behave alike.

Each test runs against both. The compiled one is what binder's receive paths use where it was
built; the pure one is what runs without a C compiler, or with ``ASHMEM_NO_SPEEDUPS=1``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator

import pytest

from ashmem import _rights

try:
    from ashmem import _speedups
except ImportError:  # not built here: only the pure one is tested (and CI fails below)
    _speedups = None  # type: ignore[assignment]
else:
    # What ashmem._rights does at import, unless ASHMEM_NO_SPEEDUPS is set: the compiled
    # functions are tested as ashmem configures them, whichever the environment says.
    _speedups.set_fallback(_rights._recv_fds, _rights._send_recv_fds, _rights.SendFailed)

Recv = Callable[[socket.socket, int, int, int], tuple[bytes, "list[int] | None", int]]

IMPLS = [pytest.param(_rights._recv_fds, id="pure")]
IMPLS.append(
    pytest.param(
        _speedups.recv_fds if _speedups is not None else None,
        id="compiled",
        marks=pytest.mark.skipif(_speedups is None, reason="ashmem._speedups is not built"),
    )
)
CMSG = socket.CMSG_SPACE(64 * _rights.FD_SIZE)
CLOEXEC = int(socket.MSG_CMSG_CLOEXEC)
CUT = int(socket.MSG_TRUNC) | int(socket.MSG_CTRUNC)


@pytest.fixture(params=IMPLS)
def recv(request: pytest.FixtureRequest) -> Recv:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    yield a, b
    a.close()
    b.close()


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    r, w = os.pipe()
    yield r, w
    os.close(r)
    os.close(w)


def close_all(fds: list[int] | None) -> None:
    for fd in fds or ():
        os.close(fd)


def open_fds() -> set[int]:
    return {int(name) for name in os.listdir("/proc/self/fd")}


def test_the_compiled_one_is_built_and_chosen_where_a_compiler_is() -> None:
    # `make test` sets ASHMEM_REQUIRE_SPEEDUPS=1 where it finds a C compiler: a silent
    # fall-back to pure Python would hide a broken build step and slow every binder call.
    if not os.environ.get("ASHMEM_REQUIRE_SPEEDUPS"):
        pytest.skip("no C compiler was found (make test), so the pure receive may run")
    assert _speedups is not None
    assert _rights.SPEEDUPS
    assert _rights.recv_fds is _speedups.recv_fds


def test_a_message_without_descriptors(recv: Recv, pair: tuple[socket.socket, ...]) -> None:
    a, b = pair
    a.send(b"hello")
    data, fds, mflags = recv(b, 65536, CMSG, CLOEXEC)
    assert (data, fds, mflags & CUT) == (b"hello", None, 0)
    a.send(b"")
    assert recv(b, 65536, CMSG, 0) == (b"", None, 0)


def test_descriptors_come_in_order_new_and_close_on_exec(
    recv: Recv, pair: tuple[socket.socket, ...], pipe: tuple[int, int]
) -> None:
    a, b = pair
    r, w = pipe
    a.sendmsg([b"x" * 100], _rights.rights([w, r, w]))
    data, fds, mflags = recv(b, 65536, CMSG, CLOEXEC)
    assert (data, mflags & CUT) == (b"x" * 100, 0)
    assert fds is not None and len(fds) == 3 and not {r, w} & set(fds)
    try:
        inodes = [os.fstat(fd).st_ino for fd in fds]
        assert inodes == [os.fstat(w).st_ino, os.fstat(r).st_ino, os.fstat(w).st_ino]
        assert not any(os.get_inheritable(fd) for fd in fds)
    finally:
        close_all(fds)


def test_a_long_message_is_cut_and_says_so(recv: Recv, pair: tuple[socket.socket, ...]) -> None:
    a, b = pair
    a.send(bytes(range(200)))
    data, fds, mflags = recv(b, 50, CMSG, 0)
    assert data == bytes(range(50)) and fds is None
    assert mflags & socket.MSG_TRUNC


def test_descriptors_beyond_the_room_are_dropped_not_leaked(
    recv: Recv, pair: tuple[socket.socket, ...], pipe: tuple[int, int]
) -> None:
    a, b = pair
    r, w = pipe
    before = open_fds()
    a.sendmsg([b"four"], _rights.rights([r, w, r, w]))
    data, fds, mflags = recv(b, 64, socket.CMSG_SPACE(2 * _rights.FD_SIZE), CLOEXEC)
    assert data == b"four" and mflags & socket.MSG_CTRUNC
    assert fds is not None and len(fds) == 2
    close_all(fds)
    assert open_fds() == before


def test_no_room_for_descriptors_drops_them_all(
    recv: Recv, pair: tuple[socket.socket, ...], pipe: tuple[int, int]
) -> None:
    a, b = pair
    r, _ = pipe
    before = open_fds()
    a.sendmsg([b"x"], _rights.rights([r]))
    data, fds, mflags = recv(b, 64, 0, 0)
    assert (data, fds) == (b"x", None) and mflags & socket.MSG_CTRUNC
    assert open_fds() == before


def test_end_of_file(recv: Recv, pair: tuple[socket.socket, ...]) -> None:
    a, b = pair
    a.shutdown(socket.SHUT_WR)
    assert recv(b, 64, CMSG, 0) == (b"", None, 0)


def test_nothing_waiting_with_dontwait_or_non_blocking(
    recv: Recv, pair: tuple[socket.socket, ...]
) -> None:
    _, b = pair
    with pytest.raises(BlockingIOError):
        recv(b, 64, CMSG, socket.MSG_DONTWAIT)
    b.setblocking(False)
    with pytest.raises(BlockingIOError):
        recv(b, 64, CMSG, 0)


def test_a_kernel_receive_timeout_reads_as_blocking_io_error(
    recv: Recv, pair: tuple[socket.socket, ...]
) -> None:
    # binder's pool connections: blocking, with SO_RCVTIMEO (its LINGER).
    _, b = pair
    b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 0, 20_000))
    with pytest.raises(BlockingIOError):
        recv(b, 64, CMSG, 0)


def test_a_python_timeout_is_waited_for(recv: Recv, pair: tuple[socket.socket, ...]) -> None:
    a, b = pair
    b.settimeout(0.05)
    with pytest.raises(TimeoutError):
        recv(b, 64, CMSG, 0)
    a.send(b"late")
    assert recv(b, 64, CMSG, 0) == (b"late", None, 0)


def test_a_closed_socket(recv: Recv, pair: tuple[socket.socket, ...]) -> None:
    _, b = pair
    b.close()
    with pytest.raises(OSError) as info:
        recv(b, 64, CMSG, 0)
    assert info.value.errno == errno.EBADF


def test_bad_sizes_are_value_errors(recv: Recv, pair: tuple[socket.socket, ...]) -> None:
    _, b = pair
    with pytest.raises(ValueError):
        recv(b, -1, CMSG, 0)
    with pytest.raises(ValueError):
        recv(b, 64, -1, 0)
    with pytest.raises(ValueError):
        recv(b, _rights.MAX_RECV_BUFSIZE + 1, CMSG, 0)
    with pytest.raises(ValueError):
        recv(b, 64, _rights.MAX_RECV_ANCBUFSIZE + 1, 0)
    with pytest.raises(TypeError):
        recv(b, "64", CMSG, 0)  # type: ignore[arg-type]


def test_msg_trunc_in_flags_never_returns_more_than_bufsize(
    recv: Recv, pair: tuple[socket.socket, ...]
) -> None:
    # With MSG_TRUNC the kernel returns the datagram's real length: only bufsize bytes
    # were stored, and only they may come back.
    a, b = pair
    a.send(b"B" * 50 + b"C" * 150)
    data, fds, mflags = recv(b, 50, CMSG, socket.MSG_TRUNC)
    assert (data, fds) == (b"B" * 50, None) and mflags & socket.MSG_TRUNC


def test_a_cut_message_still_brings_its_descriptors(
    recv: Recv, pair: tuple[socket.socket, ...], pipe: tuple[int, int]
) -> None:
    # binder closes what a cut message brought: it must get them to close them.
    a, b = pair
    r, w = pipe
    before = open_fds()
    a.sendmsg([b"y" * 100], _rights.rights([r, w]))
    data, fds, mflags = recv(b, 10, CMSG, CLOEXEC)
    assert data == b"y" * 10 and mflags & socket.MSG_TRUNC
    assert fds is not None and len(fds) == 2
    close_all(fds)
    assert open_fds() == before


def test_descriptors_after_another_control_message(
    recv: Recv, pair: tuple[socket.socket, ...], pipe: tuple[int, int]
) -> None:
    # With SO_PASSCRED the kernel puts SCM_CREDENTIALS first: the descriptors are found in
    # the message after it, and the credentials are not taken for descriptors.
    a, b = pair
    b.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    r, w = pipe
    a.sendmsg([b"creds"], _rights.rights([r, w, r]))
    room = socket.CMSG_SPACE(struct.calcsize("3i")) + CMSG
    data, fds, mflags = recv(b, 64, room, CLOEXEC)
    assert data == b"creds" and not mflags & CUT
    assert fds is not None and len(fds) == 3
    assert [os.fstat(fd).st_ino for fd in fds] == [os.fstat(x).st_ino for x in (r, w, r)]
    close_all(fds)


def test_a_shutdown_from_another_thread_ends_a_blocked_receive(
    recv: Recv, pair: tuple[socket.socket, ...]
) -> None:
    # How binder stops a pool thread waiting on a connection (close_node).
    _, b = pair
    waiting = threading.Event()

    def shut() -> None:
        waiting.wait(30)
        b.shutdown(socket.SHUT_RDWR)

    closer = threading.Thread(target=shut)
    closer.start()
    try:
        waiting.set()
        assert recv(b, 64, CMSG, 0) == (b"", None, 0)
    finally:
        closer.join(30)


def test_a_buffer_larger_than_the_thread_buffer(recv: Recv) -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        payload = os.urandom(100_000)
        sender = threading.Thread(target=a.sendall, args=(payload,))
        sender.start()
        got = b""
        while len(got) < len(payload):
            data, fds, _ = recv(b, 200_000, CMSG, 0)
            assert data and fds is None
            got += data
        sender.join(10)
        assert got == payload


def test_threads_receive_into_their_own_buffers(recv: Recv) -> None:
    # Each thread's receives land in its own buffer: no thread sees another's bytes.
    errors: list[str] = []
    start = threading.Barrier(8, timeout=30)

    def worker(index: int) -> None:
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with a, b:
            start.wait()
            for round_ in range(300):
                message = bytes([index]) * (1 + (index * 37 + round_) % 3000)
                a.send(message)
                data, _, _ = recv(b, 65536, CMSG, 0)
                if data != message:
                    errors.append(f"thread {index} round {round_}")
                    return

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []


@contextlib.contextmanager
def alarm_then(action: Callable[[], object]) -> Iterator[threading.Event]:
    """SIGALRM in 50 ms, whose handler sets the event yielded; another thread then runs
    ``action`` (sends what the interrupted call waits for)."""
    handled = threading.Event()
    old = signal.signal(signal.SIGALRM, lambda *_: handled.set())

    def run() -> None:
        if handled.wait(30):
            action()

    helper = threading.Thread(target=run)
    helper.start()
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        yield handled
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        helper.join(30)


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="signals")
def test_a_signal_runs_its_handler_and_the_receive_goes_on(
    recv: Recv, pair: tuple[socket.socket, ...]
) -> None:
    # PEP 475: EINTR runs the handler and retries; the data sent after it is received.
    a, b = pair
    with alarm_then(lambda: a.send(b"after")) as handled:
        assert recv(b, 64, CMSG, 0) == (b"after", None, 0)
        assert handled.is_set()


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="signals")
def test_a_handler_that_closes_the_socket_ends_the_receive(recv: Recv) -> None:
    # After EINTR the socket is looked at again: its number, given meanwhile to another
    # socket with a message waiting, must not be read.
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    c, d = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    number = b.fileno()
    c.send(b"someone else's record")

    def handler(*_: object) -> None:
        b.close()
        os.dup2(d.fileno(), number)  # the number now names another socket

    old = signal.signal(signal.SIGALRM, handler)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        with pytest.raises(OSError) as info:
            recv(b, 64, CMSG, 0)
        assert info.value.errno == errno.EBADF
        assert d.recv(64) == b"someone else's record"  # still there: not taken
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        os.close(number)
        for sock in (a, c, d):
            sock.close()


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="signals")
def test_a_handler_that_raises_ends_the_receive(
    recv: Recv, pair: tuple[socket.socket, ...]
) -> None:
    _, b = pair

    class Stop(Exception):
        pass

    def handler(*_: object) -> None:
        raise Stop

    old = signal.signal(signal.SIGALRM, handler)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        with pytest.raises(Stop):
            recv(b, 64, CMSG, 0)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def test_the_two_agree_on_many_messages(pair: tuple[socket.socket, ...]) -> None:
    if _speedups is None:
        pytest.skip("ashmem._speedups is not built")
    a, b = pair
    r, w = os.pipe()
    try:
        for size in (0, 1, 15, 16, 17, 4095, 4096, 65535, 65536):
            for nfds in (0, 1, 3):
                results = []
                for impl in (_rights._recv_fds, _speedups.recv_fds):
                    a.sendmsg([bytes(size % 251 for _ in range(size))], _rights.rights([r] * nfds))
                    data, fds, mflags = impl(b, 65536, CMSG, CLOEXEC)
                    results.append((data, len(fds) if fds else 0, mflags))
                    for fd in fds or ():
                        os.close(fd)
                assert results[0] == results[1], (size, nfds)
    finally:
        os.close(r)
        os.close(w)


def test_binder_runs_without_the_compiled_one() -> None:
    # ASHMEM_NO_SPEEDUPS=1 picks the pure path everywhere: a round trip with a descriptor,
    # one with a timeout and a one-way call, in a fresh process.
    script = r"""
import os, sys
from ashmem import _rights, SharedMemory
from ashmem.binder import Binder, Parcel, add_service, get_service, FLAG_ONEWAY
assert not _rights.SPEEDUPS and _rights.recv_fds is _rights._recv_fds

class Echo(Binder):
    def on_transact(self, code, data, reply, flags):
        if code == 1:
            region = data.read_shared_memory()
            reply.write_shared_memory(region)
            region.close()
        return True

region = SharedMemory.create("nospeedups", 4096)
with add_service("test.nospeedups.%d" % os.getpid(), Echo()):
    with get_service("test.nospeedups.%d" % os.getpid()) as proxy:
        with Parcel() as data, Parcel() as reply:
            data.write_shared_memory(region)
            assert proxy.transact(1, data, reply, timeout=10)
            back = reply.read_shared_memory()
            assert back.size == 4096
            back.close()
        assert proxy.transact(2)
        assert proxy.transact(3, None, None, FLAG_ONEWAY)
        assert proxy.transact(2, timeout=10)
region.close()
print("ok")
"""
    env = dict(os.environ, ASHMEM_NO_SPEEDUPS="1")
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


# send_recv_fds: a request and its answer in one call (binder's empty call and reply).

SendRecv = Callable[
    [socket.socket, bytes, int, int, int, int], tuple[bytes, "list[int] | None", int]
]
SEND_RECV_IMPLS = [
    pytest.param(_rights._send_recv_fds, id="pure"),
    pytest.param(
        _speedups.send_recv_fds if _speedups is not None else None,
        id="compiled",
        marks=pytest.mark.skipif(_speedups is None, reason="ashmem._speedups is not built"),
    ),
]


@pytest.fixture(params=SEND_RECV_IMPLS)
def send_recv(request: pytest.FixtureRequest) -> SendRecv:
    return request.param  # type: ignore[no-any-return]


def test_send_recv_sends_once_then_receives(
    send_recv: SendRecv, pair: tuple[socket.socket, ...], pipe: tuple[int, int]
) -> None:
    a, b = pair
    r, _ = pipe
    a.sendmsg([b"answer"], _rights.rights([r]))  # the answer waits already
    data, fds, mflags = send_recv(b, b"request", 0, 64, CMSG, CLOEXEC)
    assert data == b"answer" and not mflags & CUT
    assert fds is not None and len(fds) == 1
    close_all(fds)
    assert a.recv(64) == b"request"
    with pytest.raises(BlockingIOError):
        a.recv(64, socket.MSG_DONTWAIT)  # sent once


def test_a_failed_send_is_send_failed_and_receives_nothing(
    send_recv: SendRecv, pair: tuple[socket.socket, ...]
) -> None:
    a, b = pair
    a.close()
    with pytest.raises(_rights.SendFailed) as info:
        send_recv(b, b"request", socket.MSG_NOSIGNAL, 64, CMSG, 0)
    assert info.value.errno == errno.EPIPE


def test_a_full_peer_is_send_failed_not_blocking_io_error(
    send_recv: SendRecv, pair: tuple[socket.socket, ...]
) -> None:
    # binder's service tells "the caller does not read its replies" (drop it) from "no
    # next call yet" (wait in epoll) by this.
    a, b = pair
    with pytest.raises(BlockingIOError):
        while True:
            b.send(b"x" * 1024, socket.MSG_DONTWAIT)
    a.send(b"next call")
    with pytest.raises(_rights.SendFailed) as info:
        send_recv(b, b"reply", socket.MSG_DONTWAIT, 64, CMSG, 0)
    assert info.value.errno == errno.EAGAIN
    assert not isinstance(info.value, BlockingIOError)
    assert b.recv(64) == b"next call"  # not taken


def test_nothing_to_receive_after_the_send(
    send_recv: SendRecv, pair: tuple[socket.socket, ...]
) -> None:
    a, b = pair
    with pytest.raises(BlockingIOError):
        send_recv(b, b"reply", 0, 64, CMSG, socket.MSG_DONTWAIT)
    assert a.recv(64) == b"reply"  # the send went


def test_send_recv_with_a_python_timeout(
    send_recv: SendRecv, pair: tuple[socket.socket, ...]
) -> None:
    a, b = pair
    b.settimeout(0.05)
    with pytest.raises(TimeoutError):
        send_recv(b, b"request", 0, 64, CMSG, 0)
    assert a.recv(64) == b"request"
    a.send(b"answer")
    assert send_recv(b, b"again", 0, 64, CMSG, 0)[0] == b"answer"


def test_send_recv_sends_bytes_only(send_recv: SendRecv, pair: tuple[socket.socket, ...]) -> None:
    class Bytes(bytes):
        pass

    a, b = pair
    with pytest.raises(TypeError):
        send_recv(b, bytearray(b"x"), 0, 64, CMSG, 0)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        send_recv(b, Bytes(b"x"), 0, 64, CMSG, 0)
    with pytest.raises(BlockingIOError):
        a.recv(64, socket.MSG_DONTWAIT)  # nothing was sent


def test_bad_sizes_send_nothing(send_recv: SendRecv, pair: tuple[socket.socket, ...]) -> None:
    a, b = pair
    with pytest.raises(ValueError):
        send_recv(b, b"request", 0, -1, CMSG, 0)
    with pytest.raises(ValueError):
        send_recv(b, b"request", 0, 64, _rights.MAX_RECV_ANCBUFSIZE + 1, 0)
    with pytest.raises(BlockingIOError):
        a.recv(64, socket.MSG_DONTWAIT)


def test_a_closed_socket_is_a_failed_send(
    send_recv: SendRecv, pair: tuple[socket.socket, ...]
) -> None:
    _, b = pair
    b.close()
    with pytest.raises(_rights.SendFailed) as info:
        send_recv(b, b"request", 0, 64, CMSG, 0)
    assert info.value.errno == errno.EBADF


def test_a_cut_send_receives_nothing(send_recv: SendRecv, pipe: tuple[int, int]) -> None:
    # Only a stream socket can take part of a send: that is a failed send (EMSGSIZE), and
    # the message waiting, with its descriptor, is left where it is.
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        b.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        a.sendmsg([b"waiting"], _rights.rights([pipe[0]]))
        before = open_fds()
        with pytest.raises(_rights.SendFailed) as info:
            send_recv(b, bytes(1 << 20), socket.MSG_DONTWAIT, 64, CMSG, CLOEXEC)
        assert info.value.errno == errno.EMSGSIZE
        assert open_fds() == before
        data, fds, _ = _rights._recv_fds(b, 64, CMSG, CLOEXEC)
        assert data == b"waiting" and fds is not None and len(fds) == 1
        close_all(fds)


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="signals")
def test_a_signal_while_waiting_for_the_answer_sends_nothing_again(
    send_recv: SendRecv, pair: tuple[socket.socket, ...]
) -> None:
    a, b = pair
    with alarm_then(lambda: a.send(b"answer")) as handled:
        assert send_recv(b, b"request", 0, 64, CMSG, 0)[0] == b"answer"
        assert handled.is_set()
    assert a.recv(64) == b"request"
    with pytest.raises(BlockingIOError):
        a.recv(64, socket.MSG_DONTWAIT)
