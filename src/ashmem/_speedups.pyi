import socket
from collections.abc import Callable

def recv_fds(
    sock: socket.socket, bufsize: int, ancbufsize: int, flags: int, /
) -> tuple[bytes, list[int] | None, int]: ...
def set_fallback(
    func: Callable[[socket.socket, int, int, int], tuple[bytes, list[int] | None, int]], /
) -> None: ...
