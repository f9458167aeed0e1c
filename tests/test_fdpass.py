"""ashmem.fdpass: regions and fds over AF_UNIX, on SEQPACKET and STREAM, against bad peers."""

from __future__ import annotations

import array
import contextlib
import fcntl
import os
import resource
import socket
import struct
from collections.abc import Iterator

import pytest

import ashmem
from ashmem import SharedMemory, fdpass

from .conftest import Children, open_fd_count

SOCK_TYPES = [socket.SOCK_SEQPACKET, socket.SOCK_STREAM]
HEADER = struct.Struct("<4sBBHI")


@pytest.fixture(params=SOCK_TYPES, ids=["seqpacket", "stream"])
def pair(request: pytest.FixtureRequest) -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair(socket.AF_UNIX, request.param)
    a.settimeout(30)
    b.settimeout(30)
    with a, b:
        yield a, b


def _close_items(items: list[SharedMemory | int]) -> None:
    for item in items:
        if isinstance(item, SharedMemory):
            item.close()
        else:
            os.close(item)


def test_regions_fds_and_data(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    r, w = os.pipe()
    with SharedMemory.create("sent", 4096) as shm, shm.map_read_write() as m:
        m[0:4] = b"ping"
        fdpass.send(a, [shm, r], b"payload")
        data, items = fdpass.recv(b, maxfds=2)
        assert data == b"payload"
        got, raw = items
        assert isinstance(got, SharedMemory) and isinstance(raw, int)
        for fd in (got.fileno(), raw):
            assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
        assert got.name == "sent" and got.size == 4096
        with got.map_read_write() as theirs:
            assert theirs[0:4] == b"ping"
            theirs[0:4] = b"pong"
        assert m[0:4] == b"pong"
        os.write(w, b"!")
        assert os.read(raw, 1) == b"!"
        got.close()
        os.close(raw)
    os.close(r)
    os.close(w)


def test_empty_message(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    fdpass.send(a, [])
    assert fdpass.recv(b, 0) == (b"", [])


def test_messages_sent_together_stay_apart(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    regions = [SharedMemory.create(f"r{i}", 4096 * (i + 1)) for i in range(3)]
    try:
        for i, shm in enumerate(regions):
            fdpass.send(a, [shm] * (i + 1), f"message {i}".encode())
        fdpass.send(a, [], b"no fds")
        for i in range(3):
            data, items = fdpass.recv(b, maxfds=10)
            assert data == f"message {i}".encode()
            assert len(items) == i + 1
            assert all(isinstance(s, SharedMemory) and s.name == f"r{i}" for s in items)
            _close_items(items)
        assert fdpass.recv(b, maxfds=10) == (b"no fds", [])
    finally:
        for shm in regions:
            shm.close()


def test_more_than_253_fds_are_chunked(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    before = open_fd_count()
    with SharedMemory.create("many", 4096) as shm:
        fdpass.send(a, [shm] * 600, b"tail")
        data, items = fdpass.recv(b, maxfds=600)
        assert data == b"tail" and len(items) == 600
        assert len({s.fileno() for s in items if isinstance(s, SharedMemory)}) == 600
        _close_items(items)
    assert open_fd_count() == before


@pytest.mark.parametrize("kind", SOCK_TYPES, ids=["seqpacket", "stream"])
def test_large_data_in_many_frames(kind: int) -> None:
    a, b = socket.socketpair(socket.AF_UNIX, kind)
    payload = os.urandom(3 << 20)
    with a, b, SharedMemory.create("big", 4096) as shm:
        import threading

        sender = threading.Thread(target=fdpass.send, args=(a, [shm], payload))
        sender.start()
        data, items = fdpass.recv(b, 1)
        sender.join(30)
        assert data == payload and len(items) == 1
        _close_items(items)


def test_too_many_fds_are_refused_and_closed(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    before = open_fd_count()
    with SharedMemory.create("flood", 4096) as shm:
        fdpass.send(a, [shm] * 5)
        with pytest.raises(ashmem.MessageError, match=r"more than 4|may carry \(4\)"):
            fdpass.recv(b, maxfds=4)
        # chunked flood: refused after the first frame already exceeds the limit
        fdpass.send(a, [shm] * 300)
        with pytest.raises(ashmem.MessageError):
            fdpass.recv(b, maxfds=10)
    with contextlib.suppress(BlockingIOError, TimeoutError):
        b.setblocking(False)
        while b.recv(65536, socket.MSG_DONTWAIT):
            pass
    assert open_fd_count() == before


def _raw_frame(nfds: int, kinds: bytes, data: bytes, flags: int = 0) -> bytes:
    return HEADER.pack(b"ASF1", flags, 0, nfds, len(data)) + kinds + data


def _send_raw(sock: socket.socket, frame: bytes, fds: list[int]) -> None:
    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
    sock.sendmsg([frame], anc)


@pytest.mark.parametrize(
    ("frame", "nfds_sent", "match"),
    [
        (b"GARBAGE!garbage!", 0, "not an ashmem fdpass frame"),
        (_raw_frame(2, b"\x01\x01", b""), 1, "declares 2 descriptors but carried 1"),
        (_raw_frame(0, b"", b""), 2, "declares 0 descriptors but carried 2"),
        (_raw_frame(1, b"\x07", b""), 1, "unknown descriptor kind 7"),
        (_raw_frame(1, b"\x01", b""), 1, "not one"),  # a pipe claimed to be a region
        (_raw_frame(1, b"\x01", b"")[:-1], 1, "but has|middle of a frame"),  # cut short
    ],
    ids=["garbage", "fewer-fds", "extra-fds", "bad-kind", "fake-region", "short-frame"],
)
def test_malformed_frames_close_everything(
    pair: tuple[socket.socket, socket.socket], frame: bytes, nfds_sent: int, match: str
) -> None:
    a, b = pair
    r, w = os.pipe()
    before = open_fd_count()
    _send_raw(a, frame, [r] * nfds_sent)
    a.shutdown(socket.SHUT_WR)  # on a stream, a frame cut short would otherwise just wait
    with pytest.raises(ashmem.MessageError, match=match):
        fdpass.recv(b, maxfds=10)
    assert open_fd_count() == before
    os.close(r)
    os.close(w)


def test_short_and_oversized_datagrams_are_refused() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with a, b:
        a.send(b"ASF1")
        with pytest.raises(ashmem.MessageError, match="shorter than its header"):
            fdpass.recv(b, 1)
        a.send(_raw_frame(0, b"", bytes(100_000)))
        with pytest.raises(ashmem.MessageError, match="larger than a frame"):
            fdpass.recv(b, 1)
        fdpass.send(a, [], b"next")  # the socket is still usable
        assert fdpass.recv(b, 1) == (b"next", [])


def test_truncated_stream_frame() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with b:
        a.sendall(_raw_frame(0, b"", b"0123456789")[:-4])
        a.close()
        with pytest.raises(ashmem.MessageError, match="middle of a frame"):
            fdpass.recv(b, 1)


def test_eof_between_messages(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    a.close()
    with pytest.raises(EOFError):
        fdpass.recv(b, 1)


def test_cut_descriptors_are_detected_not_lost(pair: tuple[socket.socket, socket.socket]) -> None:
    """When the receiver has no room for the fds, the kernel cuts them (MSG_CTRUNC)."""
    a, b = pair
    with SharedMemory.create("cut", 4096) as shm:
        fdpass.send(a, [shm] * 20)
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        before = open_fd_count()
        used = {int(n) for n in os.listdir("/proc/self/fd")}
        free = [n for n in range(len(used) + 10) if n not in used]
        # Room for exactly 3 more descriptors: the kernel installs 3 and cuts the rest.
        resource.setrlimit(resource.RLIMIT_NOFILE, (free[3], hard))
        try:
            with pytest.raises(ashmem.MessageError, match="MSG_CTRUNC"):
                fdpass.recv(b, maxfds=20)
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        assert open_fd_count() == before


def test_bad_items() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with a, b:
        with pytest.raises(TypeError, match="cannot send str"):
            fdpass.send(a, ["nope"])  # type: ignore[list-item]
        with pytest.raises(ValueError, match="cannot send fd -1"):
            fdpass.send(a, [-1])
        with pytest.raises(ValueError):
            fdpass.recv(b, -1)
        closed = SharedMemory.create("closed", 1)
        closed.close()
        with pytest.raises(ashmem.ClosedError):
            fdpass.send(a, [closed])


def _receive_and_reply(sock: socket.socket) -> None:
    data, items = fdpass.recv(sock, 4)
    (shm,) = items
    assert isinstance(shm, SharedMemory)
    with shm, shm.map_read_write() as m:
        assert m[0 : len(data)] == data
        m[0:5] = b"reply"
    fdpass.send(sock, [], b"done")


def test_across_processes(mp_context: object, children: Children) -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    a.settimeout(30)
    with a, b, SharedMemory.create("cross", 4096) as shm, shm.map_read_write() as m:
        m[0:7] = b"request"
        proc = children.start(mp_context, _receive_and_reply, b)  # type: ignore[arg-type]
        fdpass.send(a, [shm], b"request")
        assert fdpass.recv(a, 0) == (b"done", [])
        children.join(proc)
        assert m[0:7] == b"replyst"


def test_received_region_keeps_its_name_after_close() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with a, b, SharedMemory.create("named", 4096) as shm:
        fdpass.send(a, [shm])
        _, (got,) = fdpass.recv(b, 1)
        assert isinstance(got, SharedMemory)
        got.close()
        assert got.name == "named"
        with pytest.raises(ashmem.ClosedError, match="'named' is closed"):
            got.fileno()


def test_received_region_name_is_read_lazily_and_survives_the_sender_closing() -> None:
    """The name is not read at receive time (it comes from /proc on first use), and it is
    the region's own name even when the sender's copy is gone by then."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with a, b:
        shm = SharedMemory.create("lazy-name", 4096)
        fdpass.send(a, [shm])
        shm.close()  # the sender's only copy goes before the receiver looks at the name
        _, (got,) = fdpass.recv(b, 1)
        assert isinstance(got, SharedMemory)
        assert got._name_pending  # nothing read yet: the hand-off path made no readlink
        with got:
            assert got.name == "lazy-name"
            assert not got._name_pending
            assert got.size == 4096


def test_stream_peer_cannot_park_descriptors_beyond_maxfds() -> None:
    """Descriptors hung on every byte of a long frame are refused at the first excess one."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    r, w = os.pipe()
    before = open_fd_count()
    with a, b:
        a.sendall(HEADER.pack(b"ASF1", 0, 0, 0, 1000))  # declares no fds, 1000 bytes
        for _ in range(5):
            _send_raw(a, b"x", [r] * 253)
        b.settimeout(10)
        with pytest.raises(ashmem.MessageError, match="beyond what this message may carry"):
            fdpass.recv(b, maxfds=0)
        assert open_fd_count() == before
    # the same on the header's own first byte: more than maxfds
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        before = open_fd_count()
        _send_raw(a, _raw_frame(3, b"\0\0\0", b""), [r] * 3)
        with pytest.raises(ashmem.MessageError):
            fdpass.recv(b, maxfds=2)
        assert open_fd_count() == before
    os.close(r)
    os.close(w)


def test_declared_size_is_not_allocated_up_front() -> None:
    # A 12-byte header declaring 4 GiB must not make recv ask for 4 GiB at once.
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        a.sendall(HEADER.pack(b"ASF1", 0, 0, 0, 0xFFFFFFFF) + b"x")
        a.shutdown(socket.SHUT_WR)
        resource.setrlimit(resource.RLIMIT_AS, (3 << 30, hard))
        try:
            with pytest.raises(ashmem.MessageError, match="middle of a frame"):
                fdpass.recv(b, maxfds=0)
        finally:
            resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


@pytest.mark.parametrize("kind", SOCK_TYPES, ids=["seqpacket", "stream"])
def test_maxdata(kind: int) -> None:
    a, b = socket.socketpair(socket.AF_UNIX, kind)
    with a, b:
        fdpass.send(a, [], b"x" * 100)
        assert fdpass.recv(b, 0, maxdata=100) == (b"x" * 100, [])
        fdpass.send(a, [], b"x" * 101)
        with pytest.raises(ashmem.MessageError, match="maxdata=100"):
            fdpass.recv(b, 0, maxdata=100)


@pytest.mark.parametrize("kind", SOCK_TYPES, ids=["seqpacket", "stream"])
def test_full_frame_of_fds_with_passcred(kind: int) -> None:
    """SO_PASSCRED makes the kernel add a credentials cmsg; 253 fds must still fit."""
    a, b = socket.socketpair(socket.AF_UNIX, kind)
    with a, b, SharedMemory.create("cred", 4096) as shm:
        b.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        fdpass.send(a, [shm] * 253)
        _, items = fdpass.recv(b, 253)
        assert len(items) == 253
        _close_items(items)


def test_timeouts_between_and_inside_messages() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        b.settimeout(0.2)
        with pytest.raises(TimeoutError):
            fdpass.recv(b, 1)  # nothing consumed: safe to retry
        fdpass.send(a, [], b"ok")
        assert fdpass.recv(b, 1) == (b"ok", [])
        a.sendall(_raw_frame(0, b"", b"0123456789")[:14])  # half a message
        with pytest.raises(ashmem.MessageError, match="out of step"):
            fdpass.recv(b, 1)
        # a send that times out is still a TimeoutError, with the operation named
        a.settimeout(0.2)
        with pytest.raises(TimeoutError, match="cannot send descriptors"):
            while True:
                fdpass.send(a, [], bytes(1 << 16))


@pytest.mark.parametrize(
    "data",
    [b"", b"one frame", bytearray(b"mutable"), memoryview(array.array("i", [1, 2, 3]))],
    ids=["empty", "bytes", "bytearray", "int-view"],
)
@pytest.mark.parametrize("form", ["bare", "list", "tuple", "iterator"])
def test_one_region_in_every_form_and_payload(
    pair: tuple[socket.socket, socket.socket], form: str, data: object
) -> None:
    """The one-region message takes a shorter path; every item and payload form still
    arrives as sent: the region (its name, size, bytes) and the payload's bytes."""
    a, b = pair
    with SharedMemory.create("one", 8192) as shm, shm.map_read_write() as m:
        m[-1] = 9
        items = {"bare": shm, "list": [shm], "tuple": (shm,), "iterator": iter([shm])}[form]
        fdpass.send(a, items, data)  # type: ignore[arg-type]
        got_data, got = fdpass.recv(b, 1)
        assert got_data == bytes(memoryview(data).cast("B"))  # type: ignore[arg-type]
        (region,) = got
        assert isinstance(region, SharedMemory)
        with region, region.map_read_only() as view:
            assert (region.name, region.size, view[-1]) == ("one", 8192, 9)


def test_one_raw_fd_and_a_memory_file(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    r, w = os.pipe()
    try:
        fdpass.send(a, r)
        _, (fd,) = fdpass.recv(b, 1)
        assert isinstance(fd, int) and fd != r
        os.write(w, b"x")
        assert os.read(fd, 1) == b"x"
        os.close(fd)
    finally:
        os.close(r)
        os.close(w)
    with ashmem.MemoryFile("mf", 4096) as mf:
        fdpass.send(a, [mf])
        _, (region,) = fdpass.recv(b, 1)
        assert isinstance(region, SharedMemory)
        with region:
            assert (region.name, region.size) == ("mf", 4096)


@pytest.mark.parametrize(
    "seals", [None, 0, fcntl.F_SEAL_GROW], ids=["unsealable", "no-seals", "grow-only"]
)
def test_a_memfd_whose_size_is_not_sealed_is_not_a_region(
    pair: tuple[socket.socket, socket.socket], seals: int | None
) -> None:
    """The single-descriptor path still checks what makes a region: a memfd that a peer
    could shrink under our mapping (no F_SEAL_SHRINK) is refused and closed."""
    a, b = pair
    flags = os.MFD_CLOEXEC if seals is None else os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING
    fd = os.memfd_create("fake", flags)
    os.ftruncate(fd, 4096)
    if seals:
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
    before = open_fd_count()
    try:
        _send_raw(a, _raw_frame(1, b"\x01", b""), [fd])
        with pytest.raises(ashmem.MessageError, match="not one"):
            fdpass.recv(b, 1)
        assert open_fd_count() == before
    finally:
        os.close(fd)


def test_sending_a_closed_region_sends_nothing(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    closed = SharedMemory.create("gone", 4096)
    closed.close()
    with pytest.raises(ashmem.ClosedError, match="'gone' is closed"):
        fdpass.send(a, [closed], b"never")
    fdpass.send(a, [], b"next")
    assert fdpass.recv(b, 0) == (b"next", [])


def test_received_region_name_after_sender_and_receiver_closed() -> None:
    """Both copies closed, the name nobody asked for before: the receiver's closed object
    still tells it (read at close, while its fd still existed), and so do its errors."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with a, b:
        shm = SharedMemory.create("both-closed", 4096)
        fdpass.send(a, shm)
        shm.close()
        _, (got,) = fdpass.recv(b, 1)
        assert isinstance(got, SharedMemory)
        m = got.map_read_only()
        assert m.region_name is None  # mapping did not read the name either
        got.close()
        assert got.name == "both-closed"
        assert m[0] == 0  # the mapping outlives both descriptors
        m.close()
        with pytest.raises(ashmem.ClosedError, match="'both-closed' is closed"):
            got.map_read_only()


def test_received_region_size_is_read_lazily_and_right_every_way(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    """The receive path reads no size (one F_GET_SEALS is its whole check); whichever comes
    first, a whole-region map (mmap's own fstat), a window, dup(), size, len() or close(),
    the size is the region's, also after the sender closed its copy."""
    a, b = pair
    size = 3 * 4096 + 904  # not a whole number of pages: mmap must not round it
    shm = SharedMemory.create("lazy-size", size)
    with shm.map_read_write() as m:
        m[-1] = 7
    for _ in range(5):
        fdpass.send(a, shm)
    shm.close()
    received = []
    for _ in range(5):
        _, (got,) = fdpass.recv(b, 1)
        assert isinstance(got, SharedMemory)
        assert got._size_pending  # nothing read at receive time
        received.append(got)
    mapped, windowed, duped, asked, closed = received
    with mapped.map_read_only() as m:
        assert (len(m), m.size(), m[-1]) == (size, size, 7)
    assert not mapped._size_pending
    assert (mapped.size, len(mapped)) == (size, size)
    with windowed.map(ashmem.PROT_READ, offset=4096) as w:
        assert (len(w), w[-1]) == (size - 4096, 7)
    with duped.dup() as copy:
        assert (copy.size, duped.size) == (size, size)
    assert (asked.size, len(asked)) == (size, size)
    closed.close()  # never mapped, size never asked: a closed region still tells it
    assert (closed.size, len(closed)) == (size, size)
    assert f"size={size} closed" in repr(closed)
    for got in received:
        got.close()


@pytest.mark.parametrize("what", ["pipe", "regular file", "socket"])
def test_a_descriptor_that_is_not_a_memfd_is_not_a_region(
    pair: tuple[socket.socket, socket.socket], what: str, tmp_path: object
) -> None:
    """Without an fstat on the receive path, F_GET_SEALS alone must refuse every
    descriptor that is not a sealable memfd (it fails on files that cannot carry seals)."""
    a, b = pair
    closers: list[int] = []
    if what == "pipe":
        fd, w = os.pipe()
        closers.append(w)
    elif what == "regular file":
        fd = os.open(os.path.join(str(tmp_path), "f"), os.O_RDWR | os.O_CREAT, 0o600)
        os.ftruncate(fd, 4096)
    else:
        s1, s2 = socket.socketpair()
        fd = s1.detach()
        closers.append(s2.detach())
    closers.append(fd)
    before = open_fd_count()
    try:
        _send_raw(a, _raw_frame(1, b"\x01", b""), [fd])
        with pytest.raises(ashmem.MessageError, match="not one"):
            fdpass.recv(b, 1)
        assert open_fd_count() == before
    finally:
        for c in closers:
            os.close(c)


def test_regions_of_one_message_each_get_their_own_size(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    """The several-descriptor path adopts regions the same way: sizes read lazily, each the
    right one; a non-region among them still fails the whole message, closing every fd."""
    a, b = pair
    small, large = SharedMemory.create("small", 4096), SharedMemory.create("large", 5 * 4096)
    fdpass.send(a, [small, large])
    small.close()
    large.close()
    _, items = fdpass.recv(b, maxfds=2)
    got_small, got_large = items
    assert isinstance(got_small, SharedMemory) and isinstance(got_large, SharedMemory)
    assert got_small._size_pending and got_large._size_pending
    with got_large.map_read_only() as m:
        assert len(m) == 5 * 4096
    assert (got_small.size, got_large.size) == (4096, 5 * 4096)
    _close_items(items)
    r, w = os.pipe()
    with SharedMemory.create("real", 4096) as real:
        before = open_fd_count()
        _send_raw(a, _raw_frame(2, b"\x01\x01", b""), [real.fileno(), r])
        with pytest.raises(ashmem.MessageError, match="not one"):
            fdpass.recv(b, 2)
        assert open_fd_count() == before
    os.close(r)
    os.close(w)


def test_the_one_region_frame_is_the_general_format() -> None:
    """The usual hand-off (one region, no payload) is sent as a precomputed frame: the same
    bytes and descriptor the general path builds, so any receiver reads it."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with a, b, SharedMemory.create("wire", 4096) as shm:
        fdpass.send(a, [shm])
        data, anc, flags, _ = b.recvmsg(1024, socket.CMSG_SPACE(64))
        assert data == _raw_frame(1, b"\x01", b"")
        assert flags == 0 and len(anc) == 1 and anc[0][:2] == (socket.SOL_SOCKET, socket.SCM_RIGHTS)
        (fd,) = array.array("i", anc[0][2])
        with SharedMemory.from_fd(fd) as got:
            assert (got.name, got.size) == ("wire", 4096)


def test_a_received_region_is_what_adopting_its_fd_makes() -> None:
    """recv builds the one-region message's SharedMemory inline: it must be the object
    ``_adopt_sealed`` makes (name and size pending, read when asked), and right when asked,
    also after the sender closed its copy."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with a, b:
        shm = SharedMemory.create("inline", 3 * 4096)
        fdpass.send(a, [shm])
        shm.close()
        _, (got,) = fdpass.recv(b, 1)
        assert type(got) is SharedMemory
        reference = SharedMemory._adopt_sealed(os.dup(got.fileno()))
        try:
            assert vars(got).keys() == vars(reference).keys()
            assert {k: v for k, v in vars(got).items() if k != "_fd"} == {
                k: v for k, v in vars(reference).items() if k != "_fd"
            }
            assert (got.name, got.size, len(got)) == ("inline", 3 * 4096, 3 * 4096)
        finally:
            reference.close()
            got.close()


@pytest.mark.parametrize(
    ("nfds_sent", "maxfds", "match"),
    [
        (0, 1, "declares 1 descriptors but carried 0"),
        (2, 3, "declares 1 descriptors but carried 2"),
        (1, 0, "more than 0 descriptors|beyond what this message may carry"),
    ],
    ids=["no-fd", "two-fds", "maxfds-0"],
)
def test_the_one_region_frame_with_the_wrong_descriptors(
    pair: tuple[socket.socket, socket.socket], nfds_sent: int, maxfds: int, match: str
) -> None:
    """The exact bytes of the one-region frame take the short receive path only with
    exactly one descriptor that the caller accepts; otherwise the general checks refuse it
    and close everything."""
    a, b = pair
    with SharedMemory.create("wrong", 4096) as shm:
        before = open_fd_count()
        _send_raw(a, _raw_frame(1, b"\x01", b""), [shm.fileno()] * nfds_sent)
        with pytest.raises(ashmem.MessageError, match=match):
            fdpass.recv(b, maxfds)
        assert open_fd_count() == before


def test_one_region_with_credentials_takes_the_general_path() -> None:
    """SO_PASSCRED adds a second control message: the one-region frame still arrives."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with a, b, SharedMemory.create("cred-one", 4096) as shm:
        b.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        fdpass.send(a, shm)
        _, (got,) = fdpass.recv(b, 1)
        assert isinstance(got, SharedMemory)
        with got:
            assert (got.name, got.size) == ("cred-one", 4096)


def test_one_region_cut_by_the_kernel_is_detected() -> None:
    """No room for the one descriptor: the kernel drops it (MSG_CTRUNC), and the short
    receive path must not take the frame for a good one."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with a, b, SharedMemory.create("cut-one", 4096) as shm:
        fdpass.send(a, shm)
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        before = open_fd_count()
        lowest_free = os.dup(0)  # the kernel gives the lowest free number
        os.close(lowest_free)
        resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, hard))  # room for none
        try:
            with pytest.raises(ashmem.MessageError, match="MSG_CTRUNC"):
                fdpass.recv(b, 1)
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        assert open_fd_count() == before


def test_datagram_timeout_between_messages_consumes_nothing() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with a, b, SharedMemory.create("later", 4096) as shm:
        b.settimeout(0.1)
        with pytest.raises(TimeoutError):
            fdpass.recv(b, 1)
        fdpass.send(a, shm)
        _, (got,) = fdpass.recv(b, 1)
        assert isinstance(got, SharedMemory)
        with got:
            assert got.name == "later"
