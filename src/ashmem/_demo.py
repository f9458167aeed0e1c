"""``ashmem demo``: hand a MemoryFile to a service in another process, Android style.

The client (this process) creates a MemoryFile, writes a UTF-8 message into it, binds to the
"ashmem.demo" service (starting it in a new process if nobody serves it, as
``bindService(..., BIND_AUTO_CREATE)``) and calls ``transact`` with a Parcel holding the
region's descriptor and the message length. The service maps the region, reads the message,
writes its answer into the region right after the message and into the reply Parcel. The
client prints the message, the answer read back from the shared region, and the answer from
the Parcel, then stops the service.
"""

from __future__ import annotations

import os
import struct
import sys

from ._memory_file import MemoryFile
from .binder import (
    FIRST_CALL_TRANSACTION,
    Binder,
    Parcel,
    get_calling_pid,
    get_calling_uid,
    start_service,
)

SERVICE_NAME = "ashmem.demo"
#: Read the message, answer in the region and in the reply.
TRANSACTION_GREET = FIRST_CALL_TRANSACTION
_LENGTH = struct.Struct("<I")
_REGION_SIZE = 4096


class DemoService(Binder):
    """The service side: maps the region the caller sent and answers in it.

    Reply Parcel: the answer (string), then where the answer sits in the region (offset and
    length, ints). In the region, at that offset: a u32 byte count, then the UTF-8 answer.
    """

    descriptor = "ashmem.IDemo"

    def on_transact(self, code: int, data: Parcel, reply: Parcel, flags: int) -> bool:
        if code != TRANSACTION_GREET:
            return False
        with data.read_shared_memory() as shm:
            length = data.read_int()
            if not 0 <= length <= shm.size:
                raise ValueError(f"message length {length} is outside the {shm.size}-byte region")
            with shm.map_read_write() as mapping:
                message = bytes(mapping[:length]).decode("utf-8")
                answer = (
                    f"service pid {os.getpid()} read {len(message)} characters "
                    f"from caller pid {get_calling_pid()} (uid {get_calling_uid()}): "
                    f"{message.upper()!r}"
                ).encode()
                offset = length
                end = offset + _LENGTH.size + len(answer)
                if end > shm.size:
                    raise ValueError(f"no room for a {len(answer)}-byte answer in the region")
                mapping[offset : offset + _LENGTH.size] = _LENGTH.pack(len(answer))
                mapping[offset + _LENGTH.size : end] = answer
        reply.write_string(answer.decode("utf-8"))
        reply.write_int(offset)
        reply.write_int(_LENGTH.size + len(answer))
        return True


def main() -> int:
    """Run the demo; returns the exit status."""
    message = "Hello from the client, through a MemoryFile and a Parcel ✓"
    encoded = message.encode("utf-8")
    with MemoryFile("ashmem-demo", _REGION_SIZE) as memory:
        memory.write_bytes(encoded, 0, 0, len(encoded))
        print(f"client   pid {os.getpid()}: wrote {len(encoded)} bytes into {memory!r}")
        with start_service(DemoService, SERVICE_NAME) as service:
            how = "started" if service.started else "found running"
            print(f"client   : bound to service {SERVICE_NAME!r} ({how}, pid {service.pid})")
            with Parcel() as data, Parcel() as reply:
                data.write_shared_memory(memory)
                data.write_int(len(encoded))
                if not service.binder.transact(TRANSACTION_GREET, data, reply, timeout=30):
                    print("client   : the service does not know the transaction", file=sys.stderr)
                    return 1
                parcel_answer = reply.read_string()
                offset, size = reply.read_int(), reply.read_int()
            raw = bytearray(size)
            memory.read_bytes(raw, offset, 0, size)
            (count,) = _LENGTH.unpack_from(raw)
            region_answer = bytes(raw[_LENGTH.size : _LENGTH.size + count]).decode("utf-8")
            print(f"message  : {message}")
            print(f"region   : {region_answer}")
            print(f"parcel   : {parcel_answer}")
            code = service.stop()
        print(f"client   : service stopped (exit code {code})")
    ok = region_answer == parcel_answer and code in (0, None)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
