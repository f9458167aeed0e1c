import socket
from collections.abc import Callable

def recv_fds(
    sock: socket.socket, bufsize: int, ancbufsize: int, flags: int, /
) -> tuple[bytes, list[int] | None, int]: ...
def send_recv_fds(
    sock: socket.socket,
    data: bytes,
    send_flags: int,
    bufsize: int,
    ancbufsize: int,
    flags: int,
    /,
) -> tuple[bytes, list[int] | None, int]: ...
def set_fallback(
    recv: Callable[[socket.socket, int, int, int], tuple[bytes, list[int] | None, int]],
    send_recv: Callable[
        [socket.socket, bytes, int, int, int, int], tuple[bytes, list[int] | None, int]
    ],
    failed: type[OSError],
    /,
) -> None: ...
